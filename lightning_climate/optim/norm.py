"""Selection of the affine parameters of normalisation layers (the parameters SAM-ON perturbs)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import timm.layers
from torch import nn

__all__ = ["NORM_TYPES", "NormFilter", "describe_selection", "is_norm_module", "norm_parameters"]

# timm norm layers that do not subclass a torch norm class (the others, e.g. timm's LayerNorm2d,
# GroupNorm1 and BatchNormAct2d, are caught through their torch base class).
_TIMM_NORMS = (
    "RmsNorm",
    "RmsNorm2d",
    "RmsNormFp32",
    "RmsNorm2dFp32",
    "SimpleNorm",
    "SimpleNorm2d",
    "SimpleNormFp32",
    "SimpleNorm2dFp32",
    "EvoNorm2dB0",
    "EvoNorm2dB1",
    "EvoNorm2dB2",
    "EvoNorm2dS0",
    "EvoNorm2dS0a",
    "EvoNorm2dS1",
    "EvoNorm2dS1a",
    "EvoNorm2dS2",
    "EvoNorm2dS2a",
    "FilterResponseNormAct2d",
    "FilterResponseNormTlu2d",
)

#: module classes whose own parameters count as normalisation parameters (subclasses included):
#: every BatchNorm / SyncBatchNorm / InstanceNorm (``_NormBase``), GroupNorm, LayerNorm, RMSNorm,
#: and timm's norm layers that have no torch base class.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
    *(getattr(timm.layers, name) for name in _TIMM_NORMS if hasattr(timm.layers, name)),
)

#: user filter ``(qualified module name, module) -> bool`` that replaces :func:`is_norm_module`.
NormFilter = Callable[[str, nn.Module], bool]


def is_norm_module(name: str, module: nn.Module) -> bool:
    """Default selection: ``module`` is an instance of one of :data:`NORM_TYPES`."""
    return isinstance(module, NORM_TYPES)


def norm_parameters(
    model: nn.Module, norm_filter: NormFilter | None = None
) -> dict[str, nn.Parameter]:
    """Trainable parameters owned directly by the normalisation modules of ``model``.

    Selection is by module type, not by parameter name, so layers need no particular naming.

    Args:
        model: the network.
        norm_filter: replaces :func:`is_norm_module`; called with each submodule's qualified
            name and the module, returns whether its own parameters are selected.

    Returns:
        Qualified parameter name -> parameter, in ``model.named_modules()`` order, each tensor
        once even when shared.
    """
    select = norm_filter or is_norm_module
    selected: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if not select(module_name, module):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                selected[f"{module_name}.{param_name}" if module_name else param_name] = param
    return selected


def describe_selection(model: nn.Module, selected: dict[str, nn.Parameter]) -> str:
    """One line for the log: how many tensors and scalars are selected, in which module types."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = sum(p.numel() for p in selected.values())
    ids = {id(p) for p in selected.values()}
    owners = Counter(
        type(module).__name__
        for module in model.modules()
        if any(id(p) in ids for p in module.parameters(recurse=False))
    )
    kinds = ", ".join(f"{n} x{c}" for n, c in sorted(owners.items()))
    share = 100.0 * count / max(total, 1)
    return (
        f"{len(selected)} tensors, {count:,} of {total:,} trainable parameters ({share:.3f}%) "
        f"in normalisation modules: {kinds or 'none'}"
    )

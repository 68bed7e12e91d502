"""SAM, ASAM and SAM-ON as a ``torch.optim.Optimizer`` whose ``step(closure)`` does both passes.

One step (Foret et al. 2021; Kwon et al. 2021; Mueller et al. 2023):

1. run the closure at ``w`` (forward, backward) -> gradient ``g``;
2. ascend to ``w + e`` with ``e = rho * g / ||g||`` (SAM) or ``e = rho * T^2 g / ||T g||`` with
   ``T = |w| + eta`` element-wise (ASAM), the norm taken over the perturbed tensors only;
   SAM-ON (``norm_only=True``) perturbs only the affine parameters of normalisation layers;
3. zero the gradients and run the closure again at ``w + e`` -> ``g_SAM``;
4. restore ``w`` exactly (from a copy of the perturbed tensors) and let the base optimizer step
   with ``g_SAM``.

Because the optimizer runs the closure itself (Lightning's closure has not run when ``step`` is
called), it works with Lightning's automatic optimization in ``32-true`` and ``bf16-mixed``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_climate.optim.norm import NormFilter, describe_selection, norm_parameters

__all__ = ["SAM", "in_perturbed_pass"]

_PERTURBED_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sam_perturbed_pass", default=False
)

_NO_CLOSURE = (
    "SAM.step() needs a closure that re-evaluates the loss (zero_grad, forward, backward). "
    "Lightning passes one in automatic optimization with precision '32-true' or 'bf16-mixed', "
    "but not with precision '16-mixed' (its GradScaler calls optimizer.step() without a "
    "closure): use precision='bf16-mixed' or '32-true'. Outside Lightning call "
    "optimizer.step(closure)."
)


def in_perturbed_pass() -> bool:
    """Whether the code runs inside SAM's second (perturbed) forward/backward.

    ``training_step`` can use it to update metrics or per-example records from the first pass
    only; :class:`SAM` already silences ``LightningModule.log``/``log_dict`` during that pass.
    """
    return _PERTURBED_PASS.get()


def _silent_log(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``LightningModule.log`` during the perturbed pass (logging is from pass 1)."""


class SAM(Optimizer):
    """Sharpness-aware minimisation around any base optimizer, with ASAM and SAM-ON variants.

    Args:
        params: parameters or parameter groups (groups may set their own ``rho``, ``adaptive``
            and ``eta``, and any option of the base optimizer).
        base_optimizer: called with the parameter groups to build the optimizer that takes the
            descent step, e.g. ``torch.optim.SGD`` or ``functools.partial(torch.optim.SGD,
            lr=0.1, momentum=0.9)``; YAML: ``{class_path: torch.optim.SGD, init_args: {...}}``.
            An already built optimizer over the same groups is wrapped (see :meth:`wrap`).
        rho: radius of the perturbation (SAM ~0.05; ASAM and SAM-ON need 5-10x larger).
        adaptive: ASAM, element-wise ``T = |w| + eta`` (applied to every perturbed tensor,
            biases included).
        norm_only: SAM-ON, perturb only the parameters of normalisation layers; needs
            :meth:`bind` (done by the package's tasks and by the SAM callback).
        eta: ASAM's offset, so parameters at 0 (e.g. fresh BatchNorm biases) are perturbed too.
        eps: added to the gradient norm in the denominator.
        norm_filter: with :meth:`bind`, replaces the default choice of normalisation modules
            (see :func:`lightning_climate.optim.norm.norm_parameters`).

    The closure must zero the gradients before its backward (Lightning's does). SAM itself zeroes
    them before the second pass. Under ``torch.distributed`` both passes are all-reduced, so a
    multi-process run equals a single-process run with the same global batch.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: OptimizerCallable = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        norm_only: bool = False,
        eta: float = 0.01,
        eps: float = 1e-12,
        norm_filter: NormFilter | None = None,
    ) -> None:
        if rho < 0:
            raise ValueError(f"SAM: rho must be >= 0, got {rho}.")
        if eta < 0:
            raise ValueError(f"SAM: eta must be >= 0, got {eta}.")
        if eps <= 0:
            raise ValueError(f"SAM: eps must be > 0, got {eps}.")
        if isinstance(base_optimizer, SAM):
            raise TypeError("SAM: base_optimizer is already a SAM optimizer; wrap it only once.")
        super().__init__(params, {"rho": rho, "adaptive": adaptive, "eta": eta})
        if isinstance(base_optimizer, Optimizer):
            if {id(p) for g in base_optimizer.param_groups for p in g["params"]} != {
                id(p) for g in self.param_groups for p in g["params"]
            }:
                raise ValueError("SAM: the wrapped optimizer must hold exactly `params`.")
            self.base_optimizer = base_optimizer
        else:
            self.base_optimizer = base_optimizer(self.param_groups)
        for group in self.base_optimizer.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        # One list of groups and one state for both, so schedulers, checkpoints and Lightning's
        # device moves act on the base optimizer through this wrapper.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = {**self.base_optimizer.defaults, **self.defaults}
        self.norm_only = norm_only
        self.eps = eps
        self.norm_filter = norm_filter
        self._module: nn.Module | None = None
        self._norm_ids: set[int] | None = None
        self._running_stat_modules: list[nn.modules.batchnorm._NormBase] = []

    @classmethod
    def wrap(cls, optimizer: Optimizer, **kwargs: Any) -> SAM:
        """Wrap a built optimizer (keeping its state, groups and attached schedulers)."""
        return cls(optimizer.param_groups, optimizer, **kwargs)

    def bind(self, module: nn.Module) -> SAM:
        """Attach the model: select SAM-ON's parameters, find the running statistics to freeze.

        Without it, BatchNorm running statistics are updated by both passes and ``norm_only``
        cannot be used. Logs the selection (rank 0).
        """
        self._module = module
        self._running_stat_modules = [
            m
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        ]
        if self.norm_only:
            selected = norm_parameters(module, self.norm_filter)
            owned = {id(p) for g in self.param_groups for p in g["params"]}
            self._norm_ids = {id(p) for p in selected.values()} & owned
            if not self._norm_ids:
                raise ValueError(
                    f"SAM(norm_only=True) found no normalisation parameters in "
                    f"{type(module).__name__} that this optimizer updates: add BatchNorm/"
                    "GroupNorm/LayerNorm layers, pass `norm_filter` to choose modules, or use "
                    "norm_only=False (full SAM)."
                )
            rank_zero_info(f"SAM-ON perturbs {describe_selection(module, selected)}.")
        return self

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (with SAM's defaults) once it exists."""
        base = self.__dict__.get("base_optimizer")
        if base is None:
            super().add_param_group(param_group)
            return
        base.add_param_group(param_group)
        for key in ("rho", "adaptive", "eta"):
            base.param_groups[-1].setdefault(key, self.defaults[key])

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups also carry ``rho``, ``adaptive``, ``eta``)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer and re-share its groups and state with this wrapper."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def _perturbed(self) -> list[tuple[Tensor, dict[str, Any]]]:
        """The (parameter, group) pairs that the ascent moves."""
        if self.norm_only and self._norm_ids is None:
            raise RuntimeError(
                "SAM(norm_only=True) does not know which parameters are normalisation "
                "parameters: call `optimizer.bind(model)` before training (lightning_climate "
                "tasks and the SharpnessAwareMinimization callback do it for you)."
            )
        return [
            (p, g)
            for g in self.param_groups
            for p in g["params"]
            if not self.norm_only or id(p) in self._norm_ids  # type: ignore[operator]
        ]

    def _trainer(self) -> Any:
        """The Lightning trainer of the bound module, if any."""
        try:
            return getattr(self._module, "trainer", None)
        except RuntimeError:  # a LightningModule that is not attached to a Trainer
            return None

    @contextlib.contextmanager
    def _first_pass(self, perturbed: list[tuple[Tensor, dict[str, Any]]]) -> Iterator[None]:
        """SAM-ON: compute weight gradients only for the perturbed parameters in pass 1.

        Under a multi-process Lightning strategy pass 1 then runs without DDP's gradient sync
        (parameters without gradients would stall its reducer) and the few perturbed gradients
        are averaged by hand, which equals DDP's average.
        """
        if not self.norm_only:
            yield
            return
        trainer = self._trainer()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and (
            trainer is None or not hasattr(trainer.strategy, "block_backward_sync")
        ):
            yield  # plain torch DDP: keep the full backward so its reducer sees every gradient
            return
        keep = {id(p) for p, _ in perturbed}
        frozen = [
            p
            for g in self.param_groups
            for p in g["params"]
            if p.requires_grad and id(p) not in keep
        ]
        for p in frozen:
            p.requires_grad_(False)
        try:
            if distributed:
                with trainer.strategy.block_backward_sync():
                    yield
                grads = [p.grad for p, _ in perturbed if p.grad is not None]
                if grads:
                    flat = torch.cat([g.flatten() for g in grads])
                    flat = trainer.strategy.reduce(flat, reduce_op="mean")
                    offset = 0
                    for g in grads:
                        g.copy_(flat[offset : offset + g.numel()].view_as(g))
                        offset += g.numel()
            else:
                yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    @contextlib.contextmanager
    def _second_pass(self) -> Iterator[None]:
        """Flag the perturbed pass, keep running statistics and silence ``self.log``."""
        token = _PERTURBED_PASS.set(True)
        stats = [
            {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}
            for m in self._running_stat_modules
        ]
        module = self._module
        silence = module is not None and hasattr(module, "log")
        if silence:
            module.log = _silent_log  # type: ignore[union-attr]
            module.log_dict = _silent_log  # type: ignore[union-attr]
        try:
            yield
        finally:
            _PERTURBED_PASS.reset(token)
            for m, saved in zip(self._running_stat_modules, stats, strict=True):
                for name, value in saved.items():
                    getattr(m, name).copy_(value)
            if silence:
                del module.log  # type: ignore[union-attr]
                del module.log_dict  # type: ignore[union-attr]

    def _check_trainer(self) -> None:
        trainer = self._trainer()
        if trainer is not None and trainer.accumulate_grad_batches > 1:
            raise RuntimeError(
                "SAM cannot be combined with Trainer(accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}): Lightning keeps the gradients of earlier "
                "micro-batches, which would mix unperturbed and perturbed gradients. Use "
                "accumulate_grad_batches=1 with a larger batch_size."
            )

    @torch.no_grad()
    def ascent(self) -> list[Tensor | None]:
        """Move the perturbed parameters to ``w + e`` from their current gradients.

        Returns:
            Copies of the original values (``None`` where a tensor had no gradient), for
            :meth:`restore`.
        """
        perturbed = self._perturbed()
        scaled = []
        for p, g in perturbed:
            if p.grad is None:
                continue
            scaled.append((p.abs() + g["eta"]) * p.grad if g["adaptive"] else p.grad)
        if not scaled:
            return [None] * len(perturbed)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in scaled]))
        backups: list[Tensor | None] = []
        for p, g in perturbed:
            if p.grad is None:
                backups.append(None)
                continue
            backups.append(p.detach().clone())
            e = p.grad * (g["rho"] / (norm + self.eps))
            if g["adaptive"]:
                e.mul_((p.abs() + g["eta"]).square())
            p.add_(e.to(p.dtype))
        return backups

    @torch.no_grad()
    def restore(self, backups: list[Tensor | None]) -> None:
        """Put back the values saved by :meth:`ascent` (exact copies, no subtraction)."""
        for (p, _), saved in zip(self._perturbed(), backups, strict=True):
            if saved is not None:
                p.copy_(saved)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run both passes of the closure and take the base optimizer's step.

        Returns:
            The closure's value at the unperturbed point (the loss to log), or ``None`` when the
            closure returned ``None`` (Lightning: ``training_step`` skipped the batch; no step).
        """
        if closure is None:
            raise RuntimeError(_NO_CLOSURE)
        self._check_trainer()
        perturbed = self._perturbed()
        with torch.enable_grad(), self._first_pass(perturbed):
            loss = closure()
        if loss is None:
            return None
        backups = self.ascent()
        try:
            self.zero_grad(set_to_none=True)
            with torch.enable_grad(), self._second_pass():
                closure()
        finally:
            self.restore(backups)
        self.base_optimizer.step()
        return loss

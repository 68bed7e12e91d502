"""Hard conservation layers for super-resolution (Harder et al., JMLR 2023).

Paper: "Hard-Constrained Deep Learning for Climate Downscaling".

Each layer maps the raw high-resolution output ``y_tilde`` of a network (B, C, H, W) and the
low-resolution input ``x`` (B, C, H/N, W/N) to ``y`` whose NxN block means equal ``x``: the
low-resolution field is the average pool of the high-resolution one, so "mass" is conserved. The
factor is inferred from the shapes (it may differ between height and width), so one model can be
called at several factors.

All arithmetic runs in at least float32 and the result is cast back to ``y_tilde``'s dtype. The
additive layers apply the additive shift a second time to remove what rounding left, so the block
means equal ``x`` to a few epsilon of the block's own magnitude, ``max(|x|, max |y|)``, for any
magnitude of ``y_tilde`` (one shift left an error of ``eps * |y_tilde|``, large when the raw output
is far larger than ``x``). The product layers have no such cancellation. In bfloat16 the final
cast bounds the error by the bfloat16 epsilon, 2**-7, relative to the output's magnitude.

Only floating-point tensors are accepted (integer outputs would be truncated). A NaN or Inf stays
in its block: that block's output holds NaN or Inf and the other blocks are unchanged; with
``check_finite=True`` a layer raises instead, naming itself and the offending input.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdditiveConstraint",
    "ConstraintName",
    "MultiplicativeConstraint",
    "ScaledAdditiveConstraint",
    "SoftmaxConstraint",
    "block_mean",
    "build_constraint",
    "check_inputs",
    "check_output",
    "infer_factor",
    "upsample_blocks",
]

ConstraintName = Literal["none", "add", "mult", "softmax", "scadd"]


def infer_factor(y_highres: Tensor, x_lowres: Tensor) -> tuple[int, int]:
    """Return the (height, width) upsampling factor that maps ``x_lowres`` onto ``y_highres``.

    Raises:
        ValueError: if the tensors are not 4-D, their batch or channel sizes differ, or the
            high-resolution size is not an integer multiple of the low-resolution size.
    """
    if y_highres.ndim != 4 or x_lowres.ndim != 4:
        raise ValueError(
            "constraint layers expect y_highres (B, C, H, W) and x_lowres (B, C, H/N, W/N); got "
            f"shapes {tuple(y_highres.shape)} and {tuple(x_lowres.shape)}. Add the missing batch "
            "or channel axis (e.g. `x.unsqueeze(1)`)."
        )
    if y_highres.shape[:2] != x_lowres.shape[:2]:
        raise ValueError(
            f"y_highres has (batch, channels) {tuple(y_highres.shape[:2])} but x_lowres has "
            f"{tuple(x_lowres.shape[:2])}: the model must predict one high-resolution channel per "
            "low-resolution input channel (set the model's out_channels to the input's channels)."
        )
    (hh, ww), (h, w) = y_highres.shape[-2:], x_lowres.shape[-2:]
    if h == 0 or w == 0 or hh % h or ww % w:
        raise ValueError(
            f"high-resolution size {(hh, ww)} is not an integer multiple of the low-resolution "
            f"size {(h, w)}; crop the high-resolution field to a multiple of the factor (e.g. "
            f"{(hh // max(h, 1) * h, ww // max(w, 1) * w)})."
        )
    return hh // h, ww // w


def block_mean(y: Tensor, factor: int | tuple[int, int]) -> Tensor:
    """Mean over non-overlapping ``factor`` blocks of the last two axes of ``y`` (any leading axes).

    Raises:
        ValueError: if a side is not divisible by its factor; crop the field first.
    """
    fh, fw = (factor, factor) if isinstance(factor, int) else factor
    h, w = y.shape[-2:]
    if fh < 1 or fw < 1:
        raise ValueError(f"block factors must be positive integers, got {factor}.")
    if h % fh or w % fw:
        raise ValueError(
            f"a field of {h}x{w} pixels cannot be split into {fh}x{fw} blocks; crop it to a "
            f"multiple of the factor or choose a factor that divides both sides."
        )
    if (fh, fw) == (1, 1):
        return y
    lead = y.shape[:-2]
    pooled = F.avg_pool2d(y.reshape(-1, 1, h, w), kernel_size=(fh, fw), stride=(fh, fw))
    return pooled.reshape(*lead, h // fh, w // fw)


def upsample_blocks(x: Tensor, factor: tuple[int, int]) -> Tensor:
    """Repeat every pixel of ``x`` over a ``factor`` block (nearest-neighbour upsampling)."""
    return x.repeat_interleave(factor[0], dim=-2).repeat_interleave(factor[1], dim=-1)


def _positive_eps(layer: str, eps: float) -> float:
    """Return ``eps`` as a float, or raise naming ``layer`` if it is not finite and positive."""
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not math.isfinite(eps)
        or eps <= 0
    ):
        raise ValueError(
            f"{layer}(eps=...) must be a finite positive number, got {eps!r}; the default is 1e-6."
        )
    return float(eps)


def _flag(layer: str, name: str, value: bool) -> bool:
    """Return ``value`` if it is a bool, or raise naming ``layer`` and the argument."""
    if not isinstance(value, bool):
        raise TypeError(f"{layer}({name}=...) must be True or False, got {value!r}.")
    return value


def _require_finite(layer: str, what: str, t: Tensor, fix: str) -> None:
    """Raise a ValueError naming ``layer`` if ``t`` holds NaN or Inf (one device sync)."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(
            f"{layer}: {what} has {int(bad.sum())} non-finite values (NaN or Inf) of "
            f"{t.numel()}. {fix}"
        )


def check_inputs(
    layer: str, y_highres: Tensor, x_lowres: Tensor | None, check_finite: bool
) -> None:
    """Refuse non-float inputs and, with ``check_finite``, NaN/Inf, naming ``layer``."""
    named = [("y_highres", y_highres)] + ([] if x_lowres is None else [("x_lowres", x_lowres)])
    for name, t in named:
        if not t.is_floating_point():
            raise TypeError(
                f"{layer} needs floating-point tensors, but {name} has dtype {t.dtype}: an "
                f"integer output would be truncated and lose the block means. Convert it "
                f"first, e.g. `{name}.float()`."
            )
    if check_finite:
        fix = "Find where the NaN/Inf enters (data, normalisation, a diverging model)."
        for name, t in named:
            _require_finite(layer, f"the input {name}", t, fix)


def check_output(layer: str, y: Tensor) -> None:
    """Raise naming ``layer`` if its output (from finite inputs) overflowed to NaN/Inf."""
    fix = (
        f"The inputs are finite, so the result overflowed {y.dtype}: rescale the data (e.g. "
        "min-max normalisation) or compute in float32."
    )
    _require_finite(layer, "the output", y, fix)


def _shift(y: Tensor, x: Tensor, factor: tuple[int, int]) -> Tensor:
    """Shift each block of ``y`` by ``x - mean(y)`` (the additive correction).

    Applied once to a raw output far larger than ``x``, it leaves an error of the order of
    ``eps * |mean(y)|``; the block means of the result are then computed to ``eps * max |y|``, so a
    second application brings them to ``x`` to the rounding of the output itself.
    """
    # In place on the fresh upsampled tensor: one large allocation instead of two.
    return upsample_blocks(x - block_mean(y, factor), factor).add_(y)


class _BlockConstraint(nn.Module):
    """Dtype and shape checks, the optional finiteness check, float32 upcast and the cast back.

    Args:
        check_finite: raise if an input or the output holds NaN or Inf (one device sync per
            call). Without it non-finite values stay inside their own blocks.
    """

    def __init__(self, check_finite: bool = False) -> None:
        super().__init__()
        self.check_finite = _flag(type(self).__name__, "check_finite", check_finite)

    def forward(self, y_highres: Tensor, x_lowres: Tensor) -> Tensor:
        """Return ``y`` with the block means of ``x_lowres`` (see the class docstring)."""
        layer = type(self).__name__
        factor = infer_factor(y_highres, x_lowres)
        check_inputs(layer, y_highres, x_lowres, self.check_finite)
        dtype = torch.promote_types(y_highres.dtype, torch.float32)
        y = self._constrain(y_highres.to(dtype), x_lowres.to(dtype), factor).to(y_highres.dtype)
        if self.check_finite:
            check_output(layer, y)
        return y

    def _constrain(self, y: Tensor, x: Tensor, factor: tuple[int, int]) -> Tensor:
        raise NotImplementedError


class AdditiveConstraint(_BlockConstraint):
    """AddCL: shift every block by the same amount, ``y = y_tilde + (x - mean(y_tilde))``.

    Valid for any real data; it does not preserve signs (no positivity guarantee). The shift is
    applied twice: the second removes the rounding left when the raw output is far from ``x``.

    Args:
        check_finite: raise on NaN/Inf in the inputs or the output, naming this layer.
    """

    def _constrain(self, y: Tensor, x: Tensor, factor: tuple[int, int]) -> Tensor:
        return _shift(_shift(y, x, factor), x, factor)


class MultiplicativeConstraint(_BlockConstraint):
    """MultCL: rescale every block, ``y = y_tilde * x / mean(y_tilde)``.

    Meant for positive network outputs (e.g. after a ReLU or softplus); then ``y >= 0`` whenever
    ``x >= 0``. A block whose mean is smaller than ``eps`` in magnitude cannot be rescaled stably;
    such blocks fall back to the additive correction, so the block mean is still exactly ``x``.

    Args:
        eps: smallest block-mean magnitude that is rescaled.
        check_finite: raise on NaN/Inf in the inputs or the output, naming this layer.
    """

    def __init__(self, eps: float = 1e-6, check_finite: bool = False) -> None:
        super().__init__(check_finite)
        self.eps = _positive_eps(type(self).__name__, eps)

    def _constrain(self, y: Tensor, x: Tensor, factor: tuple[int, int]) -> Tensor:
        mean = block_mean(y, factor)
        small = mean.abs() < self.eps
        # The unused branch must stay finite, or its gradient turns into NaN through torch.where.
        ratio = x / torch.where(small, torch.ones_like(mean), mean)
        scaled = y * upsample_blocks(ratio, factor)
        shifted = y + upsample_blocks(x - mean, factor)
        return torch.where(upsample_blocks(small, factor), shifted, scaled)


class SoftmaxConstraint(_BlockConstraint):
    """SmCL: ``y = x * exp(y_tilde) / mean(exp(y_tilde))`` over each block (Harder et al.'s default).

    The block maximum is subtracted before ``exp`` (the same value, no overflow for large logits),
    so outputs are finite and have the sign of ``x``: non-negative for non-negative ``x``. Factor 1
    returns ``x`` exactly. Negative ``x`` would give negative outputs, which defeats the purpose,
    so it is an error unless ``allow_negative=True``. Do not put this layer behind a z-score
    normaliser: it would then enforce ``y >= mean`` instead of ``y >= 0`` (use min-max scaling).

    Args:
        allow_negative: accept negative ``x`` (outputs then take the sign of their block's ``x``).
            The check costs one device synchronisation per call.
        check_finite: raise on NaN/Inf in the inputs or the output, naming this layer.
    """

    def __init__(self, allow_negative: bool = False, check_finite: bool = False) -> None:
        super().__init__(check_finite)
        self.allow_negative = _flag(type(self).__name__, "allow_negative", allow_negative)

    def _constrain(self, y: Tensor, x: Tensor, factor: tuple[int, int]) -> Tensor:
        if not self.allow_negative and bool((x < 0).any()):
            raise ValueError(
                f"SoftmaxConstraint got a low-resolution input with negative values (min "
                f"{x.min().item():.4g}); it is meant for non-negative quantities. Scale the data "
                "to [0, 1] (min-max normalisation), use AdditiveConstraint, or pass "
                "allow_negative=True."
            )
        block_max = F.max_pool2d(y, kernel_size=factor, stride=factor)
        weights = torch.exp(y - upsample_blocks(block_max, factor))
        return weights * upsample_blocks(x / block_mean(weights, factor), factor)


class ScaledAdditiveConstraint(_BlockConstraint):
    """ScAddCL (Geiss & Hardin's enforcement operator) for data scaled to [-1, 1].

    ``y = y_tilde + (x - m) * (s + y_tilde) / (s + m)`` with ``m = mean(y_tilde)`` and
    ``s = sign(m - x)``. If ``y_tilde`` and ``x`` lie in [-1, 1], so does ``y``. Outside that
    domain the denominator ``s + m`` can vanish; blocks where ``|s + m| < eps`` fall back to the
    additive correction, so the block mean is still exactly ``x``. The rounding left by large raw
    outputs is removed by one more additive shift (see the module docstring).

    Args:
        eps: smallest denominator magnitude that is used.
        check_finite: raise on NaN/Inf in the inputs or the output, naming this layer.
    """

    def __init__(self, eps: float = 1e-6, check_finite: bool = False) -> None:
        super().__init__(check_finite)
        self.eps = _positive_eps(type(self).__name__, eps)

    def _constrain(self, y: Tensor, x: Tensor, factor: tuple[int, int]) -> Tensor:
        mean = block_mean(y, factor)
        diff = x - mean
        # sign(m - x), with 0 (nothing to correct) mapped to +1 to keep the division defined.
        sign = torch.where(diff > 0, -torch.ones_like(diff), torch.ones_like(diff))
        denom = sign + mean
        small = denom.abs() < self.eps
        gain = diff / torch.where(small, torch.ones_like(denom), denom)
        scaled = y + upsample_blocks(gain, factor) * (upsample_blocks(sign, factor) + y)
        shifted = y + upsample_blocks(diff, factor)
        return _shift(torch.where(upsample_blocks(small, factor), shifted, scaled), x, factor)


_LAYERS: dict[str, type[nn.Module]] = {
    "add": AdditiveConstraint,
    "mult": MultiplicativeConstraint,
    "softmax": SoftmaxConstraint,
    "scadd": ScaledAdditiveConstraint,
}


def build_constraint(name: ConstraintName, **kwargs: Any) -> nn.Module | None:
    """Return the conservation layer called ``name``, or ``None`` for ``"none"``.

    Args:
        name: ``"none"``, ``"add"`` (AddCL), ``"mult"`` (MultCL), ``"softmax"`` (SmCL) or
            ``"scadd"`` (ScAddCL).
        **kwargs: passed to the layer, e.g. ``allow_negative=True`` for ``"softmax"``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name == "none":
        return None
    if name not in _LAYERS:
        raise ValueError(
            f"unknown constraint {name!r}; choose one of {['none', *_LAYERS]} "
            "(e.g. `constraint: softmax` in the model's init_args)."
        )
    return _LAYERS[name](**kwargs)

"""Resolution changes used by the downscaling models: exact Fourier interpolation and bicubic.

``fourier_resize`` is written here rather than taken from ``neuraloperator``: neuraloperator 2.0.0's
in-layer upsampling (``SpectralConv(..., output_shape=...)``) allocates the spectrum at the input size
and lets ``irfftn`` pad after the negative frequencies, which scrambles band-limited fields (63 %
relative error on a 16² -> 32² test field). Placing the negative frequencies at the end of an
output-sized spectrum, as below, reproduces any band-limited periodic field to round-off.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Interpolation", "fourier_resize", "resize", "target_size"]

InterpolationMode = Literal["fourier", "bicubic", "bilinear", "nearest"]


def target_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """Grid size ``size * factor``; raises if a side is not (within 1e-6) a whole number."""
    out = []
    for n in size:
        m = n * factor
        if abs(m - round(m)) > 1e-6 or round(m) < 1:
            raise ValueError(
                f"factor {factor} maps a side of {n} pixels to {m:g}, which is not a whole number "
                f"of pixels; choose a factor f such that {n}*f is an integer."
            )
        out.append(round(m))
    return out[0], out[1]


def _fold_axis(spec: Tensor, dim: int, n_in: int, n_out: int) -> Tensor:
    """Move the full-FFT axis ``dim`` from length ``n_in`` to ``n_out`` keeping each frequency's place."""
    keep = min(n_in, n_out)
    pos = (keep + 1) // 2  # frequencies 0 .. pos-1
    neg = keep // 2  # frequencies -neg .. -1
    shape = list(spec.shape)
    shape[dim] = n_out
    out = spec.new_zeros(shape)
    out.narrow(dim, 0, pos).copy_(spec.narrow(dim, 0, pos))
    if neg:
        out.narrow(dim, n_out - neg, neg).copy_(spec.narrow(dim, n_in - neg, neg))
    if keep % 2 == 0 and keep > 0:
        # The Nyquist frequency of the smaller grid stands for +keep/2 and -keep/2 at once.
        if n_out > n_in:
            nyq = spec.narrow(dim, keep // 2, 1) / 2
            out.narrow(dim, n_out - keep // 2, 1).copy_(nyq)
            out.narrow(dim, keep // 2, 1).copy_(nyq)
        elif n_out < n_in:
            both = spec.narrow(dim, keep // 2, 1) + spec.narrow(dim, n_in - keep // 2, 1)
            out.narrow(dim, n_out - keep // 2, 1).copy_(both)
    return out


def fourier_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample periodic fields ``x`` of shape (..., H, W) to (..., *size) by spectral zero-padding.

    Exact (to round-off) for fields whose spectrum fits the smaller grid; downsampling truncates the
    spectrum. The mean of the field is preserved exactly.
    """
    h_in, w_in = x.shape[-2:]
    h_out, w_out = size
    if (h_in, w_in) == (h_out, w_out):
        return x
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    spec = torch.fft.rfft2(xf, norm="forward")
    spec = _fold_axis(spec, -2, h_in, h_out)
    # Last (half-spectrum) axis: keep columns 0..min(w)//2; halve a shared Nyquist column when growing.
    keep = min(w_in, w_out) // 2 + 1
    out = spec.new_zeros((*spec.shape[:-1], w_out // 2 + 1))
    out[..., :keep] = spec[..., :keep]
    if w_in % 2 == 0 and w_out > w_in:
        out[..., w_in // 2] = spec[..., w_in // 2] / 2
    elif w_out % 2 == 0 and w_out < w_in:
        out[..., w_out // 2] = 2 * spec[..., w_out // 2].real
    return torch.fft.irfft2(out, s=(h_out, w_out), norm="forward").to(dtype)


def resize(x: Tensor, size: tuple[int, int], mode: InterpolationMode) -> Tensor:
    """Resize (B, C, H, W) fields to ``size`` with ``mode``."""
    if mode == "fourier":
        return fourier_resize(x, size)
    if mode in ("bicubic", "bilinear"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    raise ValueError(
        f"unknown interpolation mode {mode!r}; use 'fourier', 'bicubic', 'bilinear' or 'nearest'."
    )


class Interpolation(nn.Module):
    """Parameter-free baseline: upsample the low-resolution input by ``factor`` with ``mode``."""

    def __init__(self, mode: InterpolationMode = "bicubic") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor, factor: float) -> Tensor:
        """Return ``x`` (B, C, h, w) resized to (B, C, h*factor, w*factor)."""
        return resize(x, target_size(tuple(x.shape[-2:]), factor), self.mode)

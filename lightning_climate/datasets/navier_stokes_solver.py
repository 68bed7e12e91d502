"""Pseudo-spectral solver of 2-D Navier-Stokes vorticity on the periodic unit square.

The recipe is that of Li et al. (FNO): a Gaussian random field initial condition
``N(0, tau^(2alpha-2) (-Lap + tau^2 I)^(-alpha))`` with alpha = 2.5, tau = 7, the forcing
``0.1 (sin 2pi(x+y) + cos 2pi(x+y))``, and a pseudo-spectral solver with Crank-Nicolson diffusion,
explicit (forward Euler) advection and forcing and 2/3-rule dealiasing. Files are written by
:mod:`lightning_climate.datasets.navier_stokes_generate` and read by
:mod:`lightning_climate.datasets.navier_stokes`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_random_field", "li_forcing", "solve_vorticity"]


def _integer_wavenumbers(size: int, dtype: torch.dtype) -> Tensor:
    """Integer wavenumbers in FFT order: ``0, 1, ..., ceil(size/2)-1, -floor(size/2), ..., -1``."""
    return torch.cat([torch.arange(0, (size + 1) // 2), torch.arange(-(size // 2), 0)]).to(dtype)


def gaussian_random_field(
    num: int,
    size: int,
    alpha: float = 2.5,
    tau: float = 7.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Draw periodic Gaussian random fields ``N(0, sigma^2 (-Lap + tau^2 I)^(-alpha))`` on [0, 1)^2.

    Uses Li et al.'s scaling: ``sigma = tau^((2 alpha - d) / 2)`` with ``d = 2``, and Fourier
    coefficients ``s^2 sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha/2) xi_k`` with complex standard
    normal ``xi_k``; the field is the real part of their inverse FFT. The mean (k = 0) mode is zero,
    so every field has zero mean. The pointwise variance is
    ``sigma^2 sum_{k != 0} (4 pi^2 |k|^2 + tau^2)^(-alpha)`` (0.0343 for alpha = 2.5, tau = 7).

    Args:
        num: number of fields.
        size: grid points per side ``s``; the grid is ``x_i = i / s``.
        alpha: smoothness exponent alpha (> 1 for a field with finite variance in 2-D).
        tau: inverse length scale tau (> 0).
        generator: random generator, for reproducible draws.
        dtype: real floating dtype of the result.

    Returns:
        Tensor of shape ``(num, size, size)``.
    """
    if num < 1 or size < 2:
        raise ValueError(f"num must be >= 1 and size >= 2, got num={num}, size={size}.")
    if alpha <= 1.0 or tau <= 0.0:
        raise ValueError(
            f"alpha must be > 1 (finite variance in 2-D) and tau > 0, got alpha={alpha}, tau={tau}."
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a real floating dtype, got {dtype}.")
    k = _integer_wavenumbers(size, torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    sigma = tau ** (0.5 * (2.0 * alpha - 2.0))
    sqrt_eig = size**2 * math.sqrt(2.0) * sigma * (4.0 * math.pi**2 * k2 + tau**2) ** (-alpha / 2.0)
    sqrt_eig[0, 0] = 0.0
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    xi = torch.randn(num, size, size, dtype=complex_dtype, generator=generator)
    return torch.fft.ifft2(sqrt_eig.to(complex_dtype) * xi).real.to(dtype)


def li_forcing(size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Li et al.'s forcing ``0.1 (sin 2pi(x+y) + cos 2pi(x+y))`` on the grid ``x_i = i / size``.

    It has zero mean and lives on the Fourier shell ``|k|^2 = 2``, so ``f / (8pi^2nu)`` is an exact
    steady state of the forced equation.

    Returns:
        Tensor of shape ``(size, size)``, indexed ``[x, y]``.
    """
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}.")
    grid = torch.arange(size, dtype=torch.float64) / size
    phase = 2.0 * math.pi * (grid[:, None] + grid[None, :])
    return (0.1 * (torch.sin(phase) + torch.cos(phase))).to(dtype)


def _num_steps(t_final: float, dt: float, record_steps: int) -> int:
    """Number of solver steps, checked to be an integer multiple of ``record_steps``."""
    if not (math.isfinite(t_final) and t_final > 0 and math.isfinite(dt) and dt > 0):
        raise ValueError(f"t_final and dt must be positive, got t_final={t_final}, dt={dt}.")
    if record_steps < 1:
        raise ValueError(f"record_steps must be >= 1, got {record_steps}.")
    steps = round(t_final / dt)
    if steps < 1 or abs(steps * dt - t_final) > 1e-9 * t_final:
        raise ValueError(
            f"t_final={t_final} is not an integer multiple of dt={dt}; choose dt = t_final / n."
        )
    if steps % record_steps:
        raise ValueError(
            f"t_final/dt = {steps} steps is not divisible by record_steps={record_steps}; choose dt "
            f"so that t_final/(dt * record_steps) is an integer."
        )
    return steps


@torch.no_grad()
def solve_vorticity(
    w0: Tensor,
    forcing: Tensor | None,
    viscosity: float,
    t_final: float,
    dt: float,
    record_steps: int,
) -> Tensor:
    """Solve ``d_t w + u . grad w = nu Lap w + f`` on the periodic unit square, batched, spectrally.

    Velocity from the stream function ``-Lap psi = w``, ``u = (d_y psi, -d_x psi)``. Each step treats
    diffusion with Crank-Nicolson and advection and forcing with forward Euler; the advection term
    is dealiased by the 2/3 rule (``|k_x|, |k_y| <= N/3``). The mean vorticity is conserved exactly.
    Runs without autograd, in the dtype and on the device of ``w0`` (use float64 for data).

    Args:
        w0: initial vorticity ``(B, N, N)`` indexed ``[batch, x, y]`` on the grid ``x_i = i/N``.
        forcing: ``(N, N)`` or ``(B, N, N)``; ``None`` means no forcing.
        viscosity: kinematic viscosity nu (>= 0).
        t_final: final time; must be an integer multiple of ``dt * record_steps``.
        dt: time step.
        record_steps: number of equally spaced records; the first is at ``t_final / record_steps``.

    Returns:
        Tensor ``(B, record_steps, N, N)``: the vorticity at ``t_final * (r + 1) / record_steps``.

    Raises:
        ValueError: on bad shapes or time-step arguments.
        FloatingPointError: if the solution stops being finite (time step too large).
    """
    if w0.ndim != 3 or w0.shape[-1] != w0.shape[-2] or not w0.is_floating_point():
        raise ValueError(
            f"w0 must be a floating tensor of shape (batch, N, N), got {tuple(w0.shape)} "
            f"{w0.dtype}; add a batch dimension with w0[None] for a single field."
        )
    if not (math.isfinite(viscosity) and viscosity >= 0):
        raise ValueError(f"viscosity must be finite and >= 0, got {viscosity}.")
    steps = _num_steps(t_final, dt, record_steps)
    batch, n = w0.shape[0], w0.shape[-1]
    real, dev = w0.dtype, w0.device
    if forcing is None:
        forcing = w0.new_zeros(n, n)
    if forcing.shape not in ((n, n), (batch, n, n)):
        raise ValueError(
            f"forcing must have shape ({n}, {n}) or ({batch}, {n}, {n}) to match w0, got "
            f"{tuple(forcing.shape)}; build it with li_forcing({n}) or pass None."
        )

    kx = _integer_wavenumbers(n, real).to(dev)[:, None]  # full axis (x)
    ky = torch.arange(n // 2 + 1, dtype=real, device=dev)[None, :]  # rfft half axis (y)
    lap = 4.0 * math.pi**2 * (kx**2 + ky**2)  # symbol of -Lap
    inv_lap = torch.where(lap > 0, 1.0 / lap.clamp_min(1e-300), torch.zeros_like(lap))
    # first derivatives; the Nyquist wavenumber has no real derivative and is zeroed
    nyq_x = (kx.abs() == n / 2) if n % 2 == 0 else torch.zeros_like(kx, dtype=torch.bool)
    nyq_y = (ky == n / 2) if n % 2 == 0 else torch.zeros_like(ky, dtype=torch.bool)
    ddx = torch.where(nyq_x, 0.0, 2j * math.pi * kx)
    ddy = torch.where(nyq_y, 0.0, 2j * math.pi * ky)
    ddx, ddy = torch.broadcast_tensors(ddx, ddy)
    # u = d_y psi, v = -d_x psi, d_x w, d_y w, all from w_hat with one multiply and one inverse FFT
    ops = torch.stack([ddy * inv_lap, -ddx * inv_lap, ddx, ddy])[:, None]
    dealias = ((kx.abs() <= n / 3) & (ky <= n / 3)).to(real)
    half = 0.5 * dt * viscosity * lap
    keep = (1.0 - half) / (1.0 + half)
    gain = dt * dealias / (1.0 + half)

    f_h = torch.fft.rfft2(forcing)
    out = w0.new_empty(batch, record_steps, n, n)
    # Independent trajectories are solved in chunks whose spectral work arrays (4 complex fields
    # each) stay within ~1 MiB: torch's CPU FFTs slow down 2-3x per trajectory once the batch
    # leaves the cache (measured at 64^2: 0.09 ms per trajectory-step at 4, 0.24 ms at 16).
    chunk = max(1, _CHUNK_BYTES // (4 * n * (n // 2 + 1) * ops.element_size()))
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        f_chunk = f_h if f_h.ndim == 2 else f_h[start:stop]
        out[start:stop] = _integrate(
            w0[start:stop], dt * f_chunk / (1.0 + half), ops, keep, gain, steps, record_steps, dt
        )
    return out


_CHUNK_BYTES = 2**20


def _integrate(
    w0: Tensor,
    f_step: Tensor,
    ops: Tensor,
    keep: Tensor,
    gain: Tensor,
    steps: int,
    record_steps: int,
    dt: float,
) -> Tensor:
    """Time loop of :func:`solve_vorticity` for one chunk of trajectories."""
    n = w0.shape[-1]
    w_h = torch.fft.rfft2(w0)
    out = w0.new_empty(w0.shape[0], record_steps, n, n)
    per_record = steps // record_steps
    for step in range(1, steps + 1):
        fields = torch.fft.irfft2(ops * w_h, s=(n, n))
        advection = fields[0] * fields[2] + fields[1] * fields[3]
        w_h = keep * w_h - gain * torch.fft.rfft2(advection) + f_step
        if step % per_record == 0:
            w = torch.fft.irfft2(w_h, s=(n, n))
            if not torch.isfinite(w).all():
                raise FloatingPointError(
                    f"solve_vorticity diverged by t={step * dt:g} (explicit advection is unstable "
                    f"at dt={dt}); reduce dt."
                )
            out[:, step // per_record - 1] = w
    return out

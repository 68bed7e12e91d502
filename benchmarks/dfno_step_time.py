"""Training-step time of DFNO against neuraloperator's plain FNO of the same width at the target grid.

Both models map a 16² input to a 32² output on the same batch: DFNO by its convolutional encoder at
16², interpolation and Fourier layers at 32²; the plain FNO by running on the input upsampled to 32²
beforehand (the usual way to use an FNO for super-resolution). Prints milliseconds per step and the
ratio DFNO / FNO, measured in one run.

    python benchmarks/dfno_step_time.py [--batch 32] [--width 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from neuralop.models import FNO

from lightning_climate.models import DFNO


def step_time(model: torch.nn.Module, inputs: tuple, target: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(steps + 3):
        if i == 3:  # warm-up done
            start = time.perf_counter()
        opt.zero_grad()
        loss = F.mse_loss(model(*inputs), target)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--modes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    lr = torch.randn(args.batch, 1, 16, 16)
    hr = torch.randn(args.batch, 1, 32, 32)
    dfno = DFNO(hidden_channels=args.width, n_modes=(args.modes, args.modes), num_fourier_layers=2)
    fno = FNO(
        n_modes=(args.modes, args.modes),
        in_channels=1,
        out_channels=1,
        hidden_channels=args.width,
        n_layers=2,
    )
    upsampled = F.interpolate(lr, size=(32, 32), mode="bicubic", align_corners=False)
    t_dfno = step_time(dfno, (lr, 2), hr, args.steps)
    t_fno = step_time(fno, (upsampled,), hr, args.steps)
    n_dfno = sum(p.numel() for p in dfno.parameters())
    n_fno = sum(p.numel() for p in fno.parameters())
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, width {args.width}"
    )
    print(f"DFNO : {t_dfno:8.2f} ms/step  ({n_dfno} parameters)")
    print(f"FNO  : {t_fno:8.2f} ms/step  ({n_fno} parameters)")
    print(f"ratio DFNO / FNO = {t_dfno / t_fno:.2f}")


if __name__ == "__main__":
    main()

"""Step time of SGD, SAM and SAM-ON on a CIFAR-size ResNet-18 (CPU), in one run on one batch.

Compares our ``lightning_climate.optim.SAM`` (``step(closure)``) with a re-implementation, written
here, of the widely used open-source SAM loop (explicit ``first_step`` / ``second_step`` around two
forward-backward passes, the perturbation kept in the optimizer state, weights restored from a
saved copy, BatchNorm momentum set to 0 for the second pass). SAM-ON in that loop perturbs only the
normalisation parameters but still computes every gradient in the first backward, as the official
SAM-ON code does; ours computes only the normalisation gradients there.

Also times ``every_n_steps=2`` (a SAM step, then a plain step; timed as a pair and halved), under
autocast SGD / SAM / SAM-ON in bf16 and in fp16 with a GradScaler (our SAM through
``both_passes``, then unscale, step and update, as Lightning's 16-mixed plugin does), and the
phases a step is made of: a forward, a forward-backward, and a forward-backward that computes
only the normalisation gradients (the other parameters frozen, SAM-ON's first pass). From them
the floor of each ratio: SAM = one forward-backward more than SGD, SAM-ON = one
normalisation-only forward-backward more, so SAM-ON / SAM cannot go below
``(FB_norm + SGD) / (FB + SGD)`` whatever the wrapper does.

Robust under load: by default the clock is this process' CPU time (with one thread, the step's
time without the time other processes took the core away); every round times all variants back to back, in alternating order (forward,
then reversed), after warm-up rounds; each ratio is the median over rounds of the ratio within a
round (with the interquartile range), so a load change between rounds cancels.

    python benchmarks/sam_step_time.py --batch-size 8 --rounds 12 --low-precision bf16
    python benchmarks/sam_step_time.py --batch-size 2 --rounds 8 --low-precision fp16
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import Tensor, nn

from lightning_climate.optim import SAM, norm_parameters


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 convolution, no max-pool)."""
    model = timm.create_model("resnet18", num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class ReferenceSAM(torch.optim.Optimizer):
    """The common two-call SAM loop: ``first_step`` after the first backward, then ``second_step``."""

    def __init__(
        self, params: list[Tensor], base: Callable[..., torch.optim.Optimizer], rho: float
    ) -> None:
        super().__init__(params, {"rho": rho})
        self.base_optimizer = base(self.param_groups)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale.to(p))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def set_bn_momentum(model: nn.Module, momentum: float | None) -> list[float | None]:
    """Set every BatchNorm's momentum; return the previous values (the usual BN bypass)."""
    old = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            old.append(m.momentum)
            m.momentum = momentum
    return old


def restore_bn_momentum(model: nn.Module, old: list[float | None]) -> None:
    it = iter(old)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = next(it)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: CPU time of this process (other processes' load does not count; with one "
        "thread it is the step time); wall: elapsed time (a quiet machine, several threads)",
    )
    parser.add_argument(
        "--low-precision",
        nargs="*",
        default=["bf16", "fp16"],
        choices=["bf16", "fp16"],
        help="autocast variants to time as well (CPU fp16 is slow on most CPUs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    crit = nn.CrossEntropyLoss()
    sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)

    models = {}
    steps: dict[str, Callable[[], None]] = {}
    per_call: dict[str, int] = {}

    def add(
        name: str, make_step: Callable[[nn.Module], Callable[[], None]], calls: int = 1
    ) -> None:
        torch.manual_seed(0)
        model = cifar_resnet18().train()
        models[name] = model
        steps[name] = make_step(model)
        per_call[name] = calls

    def plain(model: nn.Module) -> Callable[[], None]:
        opt = sgd(model.parameters())

        def step() -> None:
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()

        return step

    def reference(norm_only: bool) -> Callable[[nn.Module], Callable[[], None]]:
        def build(model: nn.Module) -> Callable[[], None]:
            if norm_only:
                chosen = {id(p) for p in norm_parameters(model).values()}
                groups = [
                    {"params": [p for p in model.parameters() if id(p) in chosen]},
                    {"params": [p for p in model.parameters() if id(p) not in chosen], "rho": 0.0},
                ]
            else:
                groups = [{"params": list(model.parameters())}]
            opt = ReferenceSAM(groups, sgd, rho=args.rho)

            def step() -> None:
                crit(model(x), y).backward()
                opt.first_step(zero_grad=True)
                old = set_bn_momentum(model, 0.0)
                crit(model(x), y).backward()
                restore_bn_momentum(model, old)
                opt.second_step(zero_grad=True)

            return step

        return build

    def ours(norm_only: bool, every_n_steps: int = 1) -> Callable[[nn.Module], Callable[[], None]]:
        def build(model: nn.Module) -> Callable[[], None]:
            opt = SAM(
                model.parameters(),
                sgd,
                rho=args.rho,
                norm_only=norm_only,
                every_n_steps=every_n_steps,
            ).bind(model)

            def closure() -> Tensor:
                opt.zero_grad()
                loss = crit(model(x), y)
                loss.backward()
                return loss

            def step() -> None:
                for _ in range(every_n_steps):
                    opt.step(closure)

            return step

        return build

    def autocast(dtype: torch.dtype, sam: bool, norm_only: bool = False) -> Any:
        """SGD or our SAM under CPU autocast; fp16 steps through a GradScaler."""

        def build(model: nn.Module) -> Callable[[], None]:
            params = list(model.parameters())
            opt = (
                SAM(params, sgd, rho=args.rho, norm_only=norm_only).bind(model)
                if sam
                else sgd(params)
            )
            scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None

            def closure() -> Tensor:
                opt.zero_grad()
                with torch.autocast("cpu", dtype=dtype):
                    loss = crit(model(x), y)
                (loss if scaler is None else scaler.scale(loss)).backward()
                return loss

            def step() -> None:
                if scaler is None and sam:
                    opt.step(closure)
                    return
                if sam:
                    opt.both_passes(closure)
                else:
                    closure()
                if scaler is None:
                    opt.step()
                    return
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()

            return step

        return build

    def phase(norm_grads_only: bool, backward: bool = True) -> Any:
        """A forward (and backward) only: what one pass of a step costs, without an update."""

        def build(model: nn.Module) -> Callable[[], None]:
            chosen = {id(p) for p in norm_parameters(model).values()}
            frozen = (
                [p for p in model.parameters() if id(p) not in chosen] if norm_grads_only else []
            )

            def step() -> None:
                model.zero_grad(set_to_none=True)
                for p in frozen:
                    p.requires_grad_(False)
                loss = crit(model(x), y)
                if backward:
                    loss.backward()
                for p in frozen:
                    p.requires_grad_(True)

            return step

        return build

    add("SGD", plain)
    add("reference SAM loop", reference(False))
    add("reference SAM-ON loop", reference(True))
    add("ours SAM", ours(False))
    add("ours SAM-ON", ours(True))
    add("ours SAM every_n_steps=2", ours(False, every_n_steps=2), calls=2)
    add("phase forward", phase(False, backward=False))
    add("phase forward+backward", phase(False))
    add("phase forward+backward, norm grads", phase(True))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}
    for tag in args.low_precision:
        add(f"SGD {tag}", autocast(low[tag], sam=False))
        add(f"ours SAM {tag}", autocast(low[tag], sam=True))
        add(f"ours SAM-ON {tag}", autocast(low[tag], sam=True, norm_only=True))

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = time_round_robin(steps, per_call, args.rounds, args.warmup, clock)
    report(times, args)


def time_round_robin(
    steps: dict[str, Callable[[], None]],
    per_call: dict[str, int],
    rounds: int,
    warmup: int,
    clock: Callable[[], float],
) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round; the order alternates between rounds."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = clock()
            steps[name]()
            times[name].append((clock() - start) / per_call[name])
    return times


def within_rounds(
    times: dict[str, list[float]], formula: Callable[[dict[str, float]], float], fmt: str = ".3f"
) -> str:
    """Median over rounds of ``formula`` of one round's times, with its interquartile range."""
    values = [formula(dict(zip(times, r, strict=True))) for r in zip(*times.values(), strict=True)]
    if len(values) < 2:
        return f"{values[0]:{fmt}}"
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{med:{fmt}} (IQR {q1:{fmt}} to {q3:{fmt}})"


def report(times: dict[str, list[float]], args: argparse.Namespace) -> None:
    """Print the median time of each variant, the ratios and the floors from the phases."""
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"ResNet-18 (CIFAR stem), 32x32, batch {args.batch_size}, {args.threads} thread(s), CPU, "
        f"{args.rounds} rounds after {args.warmup} warm-up, {args.clock} clock"
    )
    for name, t in med.items():
        print(f"  {name:36s} {t:8.4f} s/step")
    rows = [
        ("ours SAM / SGD", "ours SAM", "SGD"),
        ("reference SAM / SGD", "reference SAM loop", "SGD"),
        ("ours SAM / reference SAM", "ours SAM", "reference SAM loop"),
        ("ours SAM-ON / ours SAM", "ours SAM-ON", "ours SAM"),
        ("ours SAM-ON / reference SAM-ON", "ours SAM-ON", "reference SAM-ON loop"),
        ("every_n_steps=2 / ours SAM", "ours SAM every_n_steps=2", "ours SAM"),
        ("every_n_steps=2 / SGD", "ours SAM every_n_steps=2", "SGD"),
    ]
    for tag in args.low_precision:
        rows += [
            (f"{tag}: ours SAM / SGD", f"ours SAM {tag}", f"SGD {tag}"),
            (f"{tag}: ours SAM-ON / ours SAM", f"ours SAM-ON {tag}", f"ours SAM {tag}"),
        ]
    for label, num, den in rows:
        print(f"  {label:36s} {within_rounds(times, lambda t, n=num, d=den: t[n] / t[d])}")
    f, fb = med["phase forward"], med["phase forward+backward"]
    fbn = med["phase forward+backward, norm grads"]
    print(
        f"Phases (median s): forward {f:.4f}, backward {fb - f:.4f}, of which weight gradients "
        f"{fb - fbn:.4f}; SAM-ON's first pass (norm gradients only) {fbn:.4f}"
    )
    fb_, fbn_ = "phase forward+backward", "phase forward+backward, norm grads"
    floors = [
        ("SAM / SGD = (FB + SGD) / SGD", lambda t: (t[fb_] + t["SGD"]) / t["SGD"]),
        (
            "SAM-ON / SAM = (FB_norm + SGD) / (FB + SGD)",
            lambda t: (t[fbn_] + t["SGD"]) / (t[fb_] + t["SGD"]),
        ),
        (
            "every_n_steps=2 / SAM = (FB / 2 + SGD) / (FB + SGD)",
            lambda t: (t[fb_] / 2 + t["SGD"]) / (t[fb_] + t["SGD"]),
        ),
    ]
    for label, formula in floors:
        print(f"  floor {label:50s} {within_rounds(times, formula)}")
    beyond = {
        "ours SAM": lambda t: t["ours SAM"] - t[fb_] - t["SGD"],
        "ours SAM-ON": lambda t: t["ours SAM-ON"] - t[fbn_] - t["SGD"],
    }
    for name, formula in beyond.items():
        print(f"  {name} beyond its floor (s/step) {within_rounds(times, formula, '+.4f')}")


if __name__ == "__main__":
    main()

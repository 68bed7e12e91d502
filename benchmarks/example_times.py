"""Wall time of every example config, from a fresh directory (data generation included), against the 3-minute target.

Each config runs as a user runs it (``lightning-climate fit --config examples/<name>.yaml``) in its own empty working
directory that links ``examples/`` and ``tests/`` from the checkout, so the first run's data generation is inside the
measured time. Configs that need files we cannot ship (CIFAR-100) are listed and skipped.

Usage::

    python benchmarks/example_times.py                 # every runnable example
    python benchmarks/example_times.py digits_sgd oc20_is2re
    python benchmarks/example_times.py --warm          # run each config twice, report the second (data present)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 180.0
NEEDS_DOWNLOAD = {
    "cifar100_wrn28_10_sam": "CIFAR-100 python files (GPU paper config)",
    "cifar100_wrn28_10_samon": "CIFAR-100 python files (GPU paper config)",
    "cifar100_wrn28_10_sgd": "CIFAR-100 python files (GPU paper config)",
}


def run_once(config: Path, workdir: Path) -> tuple[float, float, int, str]:
    """Run one ``fit``; return wall and CPU seconds (user + system of the run and its workers),
    exit code and the last lines of its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [shutil.which("lightning-climate") or "lightning-climate", "fit", "--config", str(config)],
        check=False,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return elapsed, cpu, proc.returncode, tail


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="example names without .yaml (default: all)")
    parser.add_argument(
        "--warm", action="store_true", help="also time a second run with the data already present"
    )
    args = parser.parse_args()

    configs = sorted((ROOT / "examples").glob("*.yaml"))
    if args.names:
        configs = [c for c in configs if c.stem in set(args.names)]
    print(
        f"{'example':32s} {'first wall (s)':>14s} {'first CPU (s)':>13s} {'warm wall (s)':>13s} "
        f"{'load before':>11s} {'target':>7s}  status"
    )
    for config in configs:
        if config.stem in NEEDS_DOWNLOAD:
            print(f"{config.stem:32s} skipped: needs {NEEDS_DOWNLOAD[config.stem]}")
            continue
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix=f"example_{config.stem}_") as tmp:
            work = Path(tmp)
            for name in ("examples", "tests"):
                (work / name).symlink_to(ROOT / name)
            first, cpu, code, tail = run_once(config, work)
            warm = run_once(config, work)[0] if args.warm and code == 0 else float("nan")
        slowest = max(first, warm) if args.warm else first
        verdict = "FAILED" if code else ("ok" if slowest <= TARGET_SECONDS else "SLOW")
        print(
            f"{config.stem:32s} {first:14.1f} {cpu:13.1f} {warm:13.1f} {load:11.2f} "
            f"{TARGET_SECONDS:7.0f}  {verdict}",
            flush=True,
        )
        if code:
            print("    " + tail.replace("\n", "\n    "), flush=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the largest run: {peak:.0f} MiB; load average now {os.getloadavg()[0]:.2f}")
    print("Wall times are only meaningful on an idle machine (load before close to 0).")


if __name__ == "__main__":
    main()

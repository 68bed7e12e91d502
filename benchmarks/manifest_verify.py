"""Cost of checking a download against its checksum manifest, against coreutils in the same run.

Writes ``--files`` random files of ``--megabytes`` in total and their ``SHA256SUMS`` and
``MD5SUMS``, then times, interleaved and best of ``--repeats`` (page cache warm):

* the peer, ``sha256sum -c`` / ``md5sum -c`` (C, what users run by hand);
* ``integrity.verify(manifest)``, hashing every file (hashlib, 1 MiB reads);
* ``integrity.verify(manifest, stamp=True)`` once the stamp exists: what every later run of a
  datamodule with ``manifest`` pays (one ``stat`` per file, no hashing).

    python benchmarks/manifest_verify.py --root /tmp/manifest_bench --megabytes 512
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from integrity_overhead import best_of  # interleaved best-of timing, shared by the benchmarks

from lightning_climate.datasets.integrity import verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/manifest_bench"))
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"part_{i:03d}.bin" for i in range(args.files)]
    size = args.megabytes * 2**20 // args.files
    for name in names:
        if not (args.root / name).is_file() or (args.root / name).stat().st_size != size:
            (args.root / name).write_bytes(rng.bytes(size))
    for tool, manifest in (("sha256sum", "SHA256SUMS"), ("md5sum", "MD5SUMS")):
        sums = subprocess.run([tool, *names], cwd=args.root, check=True, capture_output=True)
        (args.root / manifest).write_bytes(sums.stdout)
        (args.root / f"{manifest}.verified").unlink(missing_ok=True)
        assert verify(args.root / manifest, stamp=True).passed  # writes the stamp

    def coreutils(tool: str, manifest: str) -> Callable[[], object]:
        return lambda: subprocess.run(
            [tool, "--quiet", "-c", manifest], cwd=args.root, check=True, capture_output=True
        )

    runs = {
        "sha256sum -c": coreutils("sha256sum", "SHA256SUMS"),
        "verify sha256": lambda: verify(args.root / "SHA256SUMS"),
        "verify sha256, stamped": lambda: verify(args.root / "SHA256SUMS", stamp=True),
        "md5sum -c": coreutils("md5sum", "MD5SUMS"),
        "verify md5": lambda: verify(args.root / "MD5SUMS"),
        "verify md5, stamped": lambda: verify(args.root / "MD5SUMS", stamp=True),
    }
    times = best_of(args.repeats, runs)
    total = args.files * size / 2**20
    print(f"{args.files} files, {total:.0f} MiB, best of {args.repeats}")
    for name, seconds in times.items():
        peer = times["sha256sum -c" if "sha256" in name else "md5sum -c"]
        print(
            f"{name:24s} {seconds:8.3f} s  {total / seconds:9.0f} MiB/s  "
            f"time / coreutils {seconds / peer:8.4f}"
        )


if __name__ == "__main__":
    main()

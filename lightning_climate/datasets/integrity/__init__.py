"""Integrity of data files: free space before writing, checksum manifests, plausible values.

* :func:`require_free_space` refuses to start writing a file that the disk cannot hold, so a
  generator fails at once with the sizes and the fix instead of dying half-way;
* :func:`verify` checks downloaded files against a checksum manifest in the ``sha256sum`` /
  ``md5sum`` text format data providers publish (``<hex digest>  <relative path>`` per line; the
  BSD form ``SHA256 (<path>) = <hex digest>`` is read too) and reports missing and mismatching files;
  ``python -m lightning_climate.datasets.integrity MANIFEST [--root DIR]`` does the same from a shell;
  with ``stamp=True`` the digest found for each file is recorded in ``<manifest>.verified``
  (:mod:`.stamp`) and the file is not hashed again while its size and times are unchanged;
* :func:`check_plausible` refuses values outside the physical range of their variable
  (:data:`PLAUSIBLE_RANGES`), which catches gross corruption (flipped exponent bits, fill values
  read as data, wrong units) that a file format without checksums reads as valid numbers.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lightning_climate.datasets.integrity.stamp import (
    file_state,
    read_stamp,
    stamp_path,
    write_stamp,
)

__all__ = [
    "PLAUSIBLE_RANGES",
    "PlausibleRange",
    "VerifyReport",
    "check_plausible",
    "main",
    "read_manifest",
    "require_free_space",
    "verify",
]


@dataclass(frozen=True)
class PlausibleRange:
    """Physical bounds of a variable, deliberately wide: values outside are never real data."""

    low: float
    high: float
    units: str
    why: str


#: Variable name -> bounds: ClimateSet monthly means and ERA5 hourly values, in their files' units.
PLAUSIBLE_RANGES: dict[str, PlausibleRange] = {
    "tas": PlausibleRange(
        150.0, 350.0, "K", "near-surface air temperature; Earth's records are 184 K and 330 K"
    ),
    "pr": PlausibleRange(
        -1e-9,
        5e-3,
        "kg m-2 s-1",
        "precipitation is >= 0 (to 1e-9, i.e. 1e-4 mm/day of numerical noise) and a monthly mean "
        "below 432 mm/day",
    ),
    "CO2_sum": PlausibleRange(
        -1e-3,
        1e-3,
        "kg m-2 s-1",
        "|emission flux| <= 1e-3 (1000x the densest real cell); CO2 "
        "may be negative (carbon removal in the SSPs)",
    ),
    **{
        name: PlausibleRange(
            -1e-12,
            1e-3,
            "kg m-2 s-1",
            "emission flux >= 0 (to 1e-12 of regridding round-off) and <= 1e-3 (1000x the densest "
            "real cell)",
        )
        for name in ("BC_sum", "CH4_sum", "SO2_sum")
    },
    # ERA5 short names (hourly values as the CDS, ARCO-ERA5 and WeatherBench 2 store them)
    **{
        name: PlausibleRange(150.0, 350.0, "K", "temperature; Earth's records are 184 K and 330 K")
        for name in ("t2m", "d2m", "skt", "t")
    },
    "z": PlausibleRange(
        -1e4, 5e5, "m2 s-2", "geopotential of the 1000 to 1 hPa surfaces: about -5e3 to 4.8e5"
    ),
    **{
        name: PlausibleRange(-200.0, 200.0, "m s-1", "wind component; jet maxima are ~100 m/s")
        for name in ("u", "v", "u10", "v10", "u100", "v100")
    },
    "msl": PlausibleRange(8e4, 1.1e5, "Pa", "sea-level pressure; records are 870 and 1084 hPa"),
    "sp": PlausibleRange(3e4, 1.1e5, "Pa", "surface pressure; about 330 hPa on Everest"),
    **{
        name: PlausibleRange(-1e-3, 200.0, "kg m-2", "column water, >= 0; maxima ~100 kg m-2")
        for name in ("tcw", "tcwv")
    },
    "tp": PlausibleRange(-1e-6, 1.0, "m", "precipitation accumulated over hours, >= 0"),
    "q": PlausibleRange(-1e-4, 0.05, "kg kg-1", "specific humidity (ERA5 holds tiny negatives)"),
}


def check_plausible(values: np.ndarray, variable: str, source: str | os.PathLike[str]) -> None:
    """Raise if ``values`` of ``variable`` leave :data:`PLAUSIBLE_RANGES` (unknown names pass).

    Raises:
        ValueError: naming ``source``, the variable, the range found, the bounds and the fix.
    """
    bounds = PLAUSIBLE_RANGES.get(variable)
    if bounds is None or values.size == 0:
        return
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if bounds.low <= low and high <= bounds.high:
        return
    outside = int(((values < bounds.low) | (values > bounds.high)).sum())
    raise ValueError(
        f"{source}: {outside} values of {variable!r} lie outside its plausible range "
        f"{bounds.low:g}..{bounds.high:g} {bounds.units} ({bounds.why}); found {low:.6g}..{high:.6g}. "
        f"The file is damaged or in other units: download it again and check it against the "
        f"provider's checksums (`python -m lightning_climate.datasets.integrity MANIFEST`), or "
        f"convert it to {bounds.units}."
    )


def require_free_space(path: str | os.PathLike[str], needed: int, fix: str) -> None:
    """Raise before writing ``path`` if its disk has fewer than ``needed`` bytes free.

    Args:
        path: the file about to be written (its folder need not exist yet).
        needed: estimated size in bytes.
        fix: what the user can change, appended to the message.

    Raises:
        OSError: with ``errno.ENOSPC``, naming ``path``, the needed and free bytes and ``fix``.
    """
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"Not enough free space to write {path}: it needs about {needed} bytes "
            f"({_human(needed)}) and {folder} has {free} bytes ({_human(free)}) free. Free space "
            f"there or {fix}",
        )


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_GNU_LINE = re.compile(r"^\\?([0-9a-fA-F]+) [ *](.+)$")
_BSD_LINE = re.compile(r"^(MD5|SHA1|SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]+)$")


def read_manifest(path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Entries ``(algorithm, relative path, hex digest)`` of a checksum manifest.

    Reads ``sha256sum``/``md5sum`` output (``<digest>  <path>``, ``<digest> *<path>`` in binary
    mode) and the BSD ``<ALG> (<path>) = <digest>`` form; the algorithm of a bare digest follows
    from its length (32 md5, 40 sha1, 64 sha256, 128 sha512). Blank and ``#`` lines are skipped.

    Raises:
        ValueError: naming the manifest and line number of a line in neither form.
    """
    entries = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        gnu, bsd = _GNU_LINE.match(line), _BSD_LINE.match(line)
        if gnu and len(gnu.group(1)) in _ALGORITHMS:
            digest, name = gnu.group(1), gnu.group(2)
            entries.append((_ALGORITHMS[len(digest)], name, digest.lower()))
        elif bsd:
            entries.append((bsd.group(1).lower(), bsd.group(2), bsd.group(3).lower()))
        else:
            raise ValueError(
                f"{path}, line {number}: {raw!r} is not a checksum line; expected "
                f"'<md5|sha1|sha256|sha512 hex digest>  <path>' (sha256sum/md5sum output) or "
                f"'SHA256 (<path>) = <digest>'."
            )
    return entries


def _digest(path: Path, algorithm: str, progress: Callable[[int], object] | None = None) -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return hasher.hexdigest()


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: files that matched, are missing, or differ from the manifest."""

    manifest: Path
    root: Path
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: (relative path, algorithm, expected digest, actual digest)
    mismatched: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: the stamp written by ``verify(..., stamp=True)``, or ``None`` (not asked, or not writable)
    stamp: Path | None = None

    @property
    def passed(self) -> bool:
        """Whether every listed file exists and matches its digest."""
        return not self.missing and not self.mismatched

    def __str__(self) -> str:
        total = len(self.ok) + len(self.missing) + len(self.mismatched)
        head = (
            f"{self.manifest}: {len(self.ok)} of {total} files OK under {self.root}, "
            f"{len(self.missing)} missing, {len(self.mismatched)} damaged."
        )
        lines = [head]
        lines += [f"  MISSING  {name}" for name in self.missing]
        lines += [
            f"  DAMAGED  {name} ({alg} expected {expected}, got {actual})"
            for name, alg, expected, actual in self.mismatched
        ]
        if not self.passed:
            lines.append("  Download the missing and damaged files again, then re-run the check.")
        return "\n".join(lines)

    def raise_if_failed(self) -> VerifyReport:
        """Return ``self`` if every file passed, else raise ``ValueError`` with the report."""
        if not self.passed:
            raise ValueError(str(self))
        return self


def verify(
    manifest: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    stamp: bool = False,
    progress: bool = False,
) -> VerifyReport:
    """Check the files listed in a checksum manifest (see :func:`read_manifest`).

    Args:
        manifest: the provider's ``sha256sum``/``md5sum`` list.
        root: folder the listed paths are relative to; default the manifest's folder.
        stamp: reuse the digest an earlier check recorded for each file that has not changed
            since (size, times, inode), and record the digests found now (see :mod:`.stamp`).
        progress: show a progress bar over the bytes to hash.

    Returns:
        The :class:`VerifyReport` (files in manifest order); call ``.raise_if_failed()`` to turn
        failures into an error.
    """
    manifest = Path(manifest)
    base = Path(root) if root is not None else manifest.parent
    report = VerifyReport(manifest=manifest, root=base)
    known = read_stamp(manifest) if stamp else {}
    records: dict[str, dict] = {}
    entries = read_manifest(manifest)
    actual: list[str | None] = [None] * len(entries)  # digest of each entry, None if missing
    pending = []
    itself = {manifest.absolute(), stamp_path(manifest).absolute()}
    for i, (algorithm, name, expected) in enumerate(entries):
        path = base / name
        if path.absolute() in itself:
            raise ValueError(
                f"{manifest} lists {name}, i.e. itself or its stamp, which cannot match (a file "
                f"cannot hold its own checksum; `sha256sum * > {manifest.name}` run a second time "
                f"lists the manifest). Remove that line, or write the manifest with a file "
                f"pattern that leaves it out (e.g. `sha256sum *.nc > {manifest.name}`)."
            )
        if not path.is_file():
            continue
        key, state = str(path.absolute()), file_state(path, algorithm, expected)
        record = known.get(key, {})
        if {k: v for k, v in record.items() if k != "actual"} == state:
            actual[i], records[key] = record["actual"], record
        else:
            pending.append((i, path, key, state))
    total = sum(state["size"] for *_, state in pending)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"verify {manifest.name}",
        disable=not (progress and pending),
    ) as bar:  # fmt: skip
        for i, path, key, state in pending:
            algorithm, _, expected = entries[i]
            actual[i] = _digest(path, algorithm, bar.update)
            records[key] = {**state, "actual": actual[i]}
    for (algorithm, name, expected), digest in zip(entries, actual, strict=True):
        if digest is None:
            report.missing.append(name)
        elif digest == expected:
            report.ok.append(name)
        else:
            report.mismatched.append((name, algorithm, expected, digest))
    if stamp:
        report.stamp = write_stamp(manifest, records)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: verify a manifest, print the report, exit 1 if a file is missing or damaged."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_climate.datasets.integrity",
        description="Check downloaded files against a sha256sum/md5sum checksum manifest.",
    )
    parser.add_argument("manifest", type=Path, help="checksum list published with the data")
    parser.add_argument(
        "--root", type=Path, default=None, help="folder of the listed files (default: manifest's)"
    )
    parser.add_argument(
        "--stamp",
        action="store_true",
        help="record the intact files in MANIFEST.verified and skip them while they are unchanged",
    )
    args = parser.parse_args(argv)
    report = verify(args.manifest, args.root, stamp=args.stamp, progress=True)
    print(report)
    return 0 if report.passed else 1

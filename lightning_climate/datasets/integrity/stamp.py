"""Stamp of a verified checksum manifest, so that a second run does not hash the same files again.

The stamp ``<manifest>.verified`` is a small JSON file written atomically next to the manifest. For
each file checked it records the file's absolute path, size, modification and change times (ns),
inode, the algorithm and expected digest of its manifest line, and the digest found (``actual``).
That digest is reused without hashing only when all of these are unchanged: rewriting, replacing,
touching or moving the file, or changing its manifest line, makes the next check hash it again.
Recording damaged files too lets every process of a distributed run report the same failure from
the stamp alone. Delete the stamp to force a full check (e.g. after a disk error that left sizes
and times intact).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning_climate.utils import atomic_path

__all__ = ["STAMP_SUFFIX", "file_state", "read_stamp", "stamp_path", "write_stamp"]

#: appended to the manifest's file name to name its stamp.
STAMP_SUFFIX = ".verified"
_VERSION = 2


def stamp_path(manifest: str | os.PathLike[str]) -> Path:
    """Where the stamp of ``manifest`` lives: ``<manifest>.verified`` beside it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + STAMP_SUFFIX)


def file_state(path: Path, algorithm: str, digest: str) -> dict[str, Any]:
    """What identifies a file and its manifest line (expected ``digest``): any change means hash again."""
    stat = path.stat()
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "algorithm": algorithm,
        "digest": digest,
    }


def read_stamp(manifest: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Absolute path -> :func:`file_state` plus ``actual`` digest of every file last checked.

    An unreadable or foreign stamp counts as no stamp (the files are hashed again), never as a pass.
    """
    try:
        data = json.loads(stamp_path(manifest).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def write_stamp(manifest: str | os.PathLike[str], files: dict[str, dict[str, Any]]) -> Path | None:
    """Record ``files`` (as :func:`read_stamp` returns them) atomically; ``None`` if not writable."""
    path = stamp_path(manifest)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"version": _VERSION, "files": files}, indent=1))
    except OSError:
        return None
    return path

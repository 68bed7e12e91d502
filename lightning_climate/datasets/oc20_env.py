"""Read-only LMDB environments of OC20 files, shared per process and safe across ``fork``.

py-lmdb allows one open environment per file and process (LMDB's locks belong to the process), and
a forked child inherits that registry: a DataLoader worker could not open a file its parent had
open. So environments are opened lazily, shared by every dataset of the process (keyed by inode
and mtime, so a replaced file is opened afresh), and closed just before the process forks (they
are reopened on next use). A file that *other* code of the process holds open (the user's own
``lmdb.open``) cannot be opened a second time through py-lmdb: it is then read through
:class:`.oc20_lmdb_mmap.MappedLMDB`, a pure-Python reader of the mapped file, with a warning.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Any

from lightning_climate.datasets.oc20_lmdb_mmap import MappedLMDB
from lightning_climate.utils import lazy_import

__all__ = ["check_lmdb_size", "close_envs", "open_env"]

_LMDB_MAGIC = 0xBEEFC0DE
_ENVS: dict[tuple[str, int, int], Any] = {}


def check_lmdb_size(path: Path) -> None:
    """Refuse a truncated LMDB file before mapping it (reading past its end kills the process).

    The two meta pages of an LMDB file record its page size and last used page; the file must
    reach the end of that page.
    """
    fix = "download it again or regenerate it (lightning_climate.datasets.oc20_generate)"
    with open(path, "rb") as handle:
        head = handle.read(2 * 65536)
    size = path.stat().st_size
    if len(head) < 160 or struct.unpack_from("<I", head, 16)[0] != _LMDB_MAGIC:
        raise RuntimeError(f"{path} is not an LMDB file (bad header); {fix}.")
    page = struct.unpack_from("<I", head, 40)[0]
    metas = [struct.unpack_from("<QQ", head, offset + 136) for offset in (0, page)]
    if page < 512 or len(head) < page + 160:
        raise RuntimeError(f"{path} is truncated or corrupted (no second meta page); {fix}.")
    last_page, _ = max(metas, key=lambda meta: meta[1])
    if size < (last_page + 1) * page:
        raise RuntimeError(
            f"{path} is truncated: {size} bytes where its header announces "
            f"{(last_page + 1) * page}; {fix}."
        )


def open_env(path: Path) -> Any:
    """The process's read-only environment of ``path``, opened on first use."""
    stat = os.stat(path)  # one system call: a file replaced at the same path is seen as new
    key = (str(path), stat.st_ino, stat.st_mtime_ns)
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = _open_new_env(path)
    return env


def close_envs() -> None:
    """Close every environment this module opened (they reopen on next use)."""
    while _ENVS:
        _, env = _ENVS.popitem()
        env.close()


def _open_new_env(path: Path) -> Any:
    lmdb = lazy_import("lmdb")
    check_lmdb_size(path)
    try:
        return lmdb.open(
            str(path),
            subdir=False,
            readonly=True,
            lock=False,
            readahead=False,
            meminit=False,
            max_readers=126,
        )
    except lmdb.Error as err:
        if "already open in this process" in str(err):
            return _read_without_lmdb(path)
        raise RuntimeError(
            f"cannot open the LMDB file {path}: {err}. The file is corrupted or truncated; "
            "download it again or regenerate it (OC20DataModule.prepare_data / "
            "lightning_climate.datasets.oc20_generate)."
        ) from err


def _read_without_lmdb(path: Path) -> MappedLMDB:
    why = (
        f"{path} is already open in this process through another lmdb.Environment (py-lmdb "
        "allows one per file and process, and forked DataLoader workers inherit it)"
    )
    try:
        reader = MappedLMDB(path)
    except RuntimeError as err:
        raise RuntimeError(
            f"{why}, and the fallback reader cannot read it ({err}). Close that environment "
            "(env.close()) before reading the file with OC20LMDBDataset."
        ) from err
    warnings.warn(
        f"{why}; reading it with a slower pure-Python reader. Close that environment "
        "(env.close()) before creating the dataset for full speed.",
        stacklevel=4,
    )
    return reader


# a forked child must not inherit open environments: it could neither use nor reopen them
os.register_at_fork(before=close_envs)

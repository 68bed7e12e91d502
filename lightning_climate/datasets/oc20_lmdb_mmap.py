"""A read-only, pure-Python reader of LMDB data files, for files py-lmdb cannot open again.

py-lmdb refuses a second ``lmdb.Environment`` on a file that is already open in the process (for
instance by the user's own ``lmdb.open(...)`` in a notebook, or inherited by a forked worker).
Reading needs no lock, so this reader maps the file and walks LMDB's B+tree itself: the newer of
the two meta pages gives the main database's root; branch pages are searched by key (bytes order,
LMDB's default comparison); leaf values live inline or on overflow pages. It reads files in LMDB's
0.9 on-disk format (what OC20 ships and py-lmdb writes by default) with plain keys, which is all
OC20 needs. It is slower than py-lmdb per lookup, but a lookup is a small part of reading an entry.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["MappedLMDB"]

_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16
_NODE_HEADER = 8
_BRANCH, _LEAF = 0x01, 0x02
_BIGDATA, _SUBDATA_OR_DUP = 0x01, 0x06
_NO_ROOT = 2**64 - 1
_MAIN_DB = 16 + 4 + 4 + 8 + 8 + 48  # the main database record in a meta page
_UNSUPPORTED_DB_FLAGS = 0x04 | 0x08 | 0x10 | 0x20 | 0x40  # dupsort, integerkey, ...


class MappedLMDB:
    """The main database of an LMDB file, mapped read-only (``begin``/``get``/``stat`` like py-lmdb).

    Args:
        path: an LMDB data file (``subdir=False`` layout, as OC20's ``*.lmdb`` files).

    Raises:
        RuntimeError: the file is not an LMDB 0.9 data file, or uses features OC20 files do not.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        page = struct.unpack_from("<I", self._map, 40)[0]
        metas = []
        for offset in (0, page):
            magic, version = struct.unpack_from("<II", self._map, offset + 16)
            if magic != _MAGIC or version != 1:
                raise RuntimeError(f"{path} is not an LMDB 0.9 data file (version {version}).")
            flags = struct.unpack_from("<H", self._map, offset + _MAIN_DB + 4)[0]
            entries, root = struct.unpack_from("<QQ", self._map, offset + _MAIN_DB + 32)
            txnid = struct.unpack_from("<Q", self._map, offset + 144)[0]
            metas.append((txnid, flags, entries, root))
        _, flags, self._entries, self._root = max(metas)
        if flags & _UNSUPPORTED_DB_FLAGS:
            raise RuntimeError(f"{path} uses LMDB database flags {flags:#x}; not an OC20 file.")
        self._page = page

    def _node(self, base: int, k: int) -> tuple[int, int, int, int, int]:
        """Offset, ``mn_lo``, ``mn_hi``, ``mn_flags`` and key size of node ``k`` of a page."""
        offset = base + struct.unpack_from("<H", self._map, base + _PAGE_HEADER + 2 * k)[0]
        lo, hi, flags, ksize = struct.unpack_from("<HHHH", self._map, offset)
        return offset, lo, hi, flags, ksize

    def _key(self, offset: int, ksize: int) -> bytes:
        start = offset + _NODE_HEADER
        return self._map[start : start + ksize]

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None``."""
        pgno = self._root
        if pgno == _NO_ROOT:
            return None
        for _ in range(64):  # deeper than any real tree: a cycle means a damaged file
            base = pgno * self._page
            flags, lower = struct.unpack_from("<HH", self._map, base + 10)
            count = (lower - _PAGE_HEADER) >> 1
            if flags & _BRANCH:
                # the last child whose first key is <= key (the first child has no key)
                low, high = 1, count
                while low < high:
                    middle = (low + high) >> 1
                    offset, _, _, _, ksize = self._node(base, middle)
                    if self._key(offset, ksize) <= key:
                        low = middle + 1
                    else:
                        high = middle
                _, lo, hi, node_flags, _ = self._node(base, low - 1)
                pgno = lo | hi << 16 | node_flags << 32
            elif flags & _LEAF:
                return self._leaf_get(base, count, key)
            else:
                break
        raise RuntimeError(f"{self.path} has a damaged B-tree (page {pgno}).")

    def _leaf_get(self, base: int, count: int, key: bytes) -> bytes | None:
        low, high = 0, count
        while low < high:
            middle = (low + high) >> 1
            offset, lo, hi, flags, ksize = self._node(base, middle)
            found = self._key(offset, ksize)
            if found < key:
                low = middle + 1
            elif found > key:
                high = middle
            else:
                size = lo | hi << 16
                start = offset + _NODE_HEADER + ksize
                if flags & _SUBDATA_OR_DUP:
                    raise RuntimeError(f"{self.path} stores sub-databases; not an OC20 file.")
                if flags & _BIGDATA:
                    start = struct.unpack_from("<Q", self._map, start)[0] * self._page
                    start += _PAGE_HEADER
                if start + size > len(self._map):
                    raise RuntimeError(f"{self.path} is truncated (a value runs past its end).")
                return self._map[start : start + size]
        return None

    def stat(self) -> dict[str, int]:
        """``{"entries": ...}`` of the main database, as ``lmdb.Environment.stat``."""
        return {"entries": self._entries}

    def begin(self, **_: Any) -> Self:
        """A read "transaction": the mapped file itself (nothing to lock or release)."""
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def close(self) -> None:
        """Unmap the file."""
        self._map.close()

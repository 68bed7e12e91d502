"""A Zarr store of per-example records whose cost per appended record is constant.

Used by :class:`~lightning_climate.callbacks.DifficultyScores`. xarray reads the store as
``Dataset(dims=(epoch, index))`` (``xarray.open_zarr(path)``): coordinates ``epoch``,
``global_step(epoch)`` and ``index``, one float64 variable per score with NaN where a record has
no value, and the run's configuration in the attributes.

Why Zarr: every score variable is chunked one record per chunk, so an append writes one new chunk
per variable plus a few small metadata files, whatever the number of records already stored (a
NetCDF-4/HDF5 file can only be grown crash-safely by copying it). Crash safety comes from the
order of the writes: the new chunks and the per-array shapes are written first, and the record
becomes visible only when the consolidated metadata (``.zmetadata``, the single file xarray and
zarr read the layout from) is replaced atomically. A kill at any moment therefore leaves the
previous records readable and nothing of the half-written one visible; :meth:`RecordStore.repair`
removes its leftovers before the next append. zarr >= 3 writes every file of a local store through
a temporary file and a rename. The store uses the Zarr v2 format, whose consolidated metadata is
part of the format that every zarr and xarray version reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_climate.utils import lazy_import

__all__ = ["RecordStore"]

_COORDS = ("epoch", "global_step", "index")
_COORD_CHUNK = 1024  # records per chunk of epoch/global_step: rewriting one is a bounded cost


class RecordStore:
    """Append-only, crash-safe Zarr store of ``(epoch, index)`` records.

    Args:
        path: the store (a directory, conventionally named ``*.zarr``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._group: Any = None
        self._count = 0

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        """Whether a committed store is at :attr:`path`."""
        return (self.path / ".zmetadata").is_file()

    def attrs(self) -> dict[str, Any]:
        """The store's attributes as of the last committed record."""
        return dict(self._committed().attrs)

    def records(self) -> list[tuple[int, int]]:
        """``(epoch, global_step)`` of every committed record, in store order."""
        group = self._committed()
        epochs = group["epoch"][:].tolist()
        steps = group["global_step"][:].tolist()
        return list(zip(epochs, steps, strict=True))

    # ------------------------------------------------------------------ writing

    def create(self, index: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """Write a new store with no records; refuses to replace anything at :attr:`path`.

        The store is built in a temporary directory beside :attr:`path` and renamed into place,
        so a kill never leaves a half-created store there.
        """
        zarr = lazy_import("zarr")
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; RecordStore.create never replaces a file.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        )
        try:
            group = zarr.open_group(tmp, mode="w", zarr_format=2, attributes=_plain(attrs))
            group.create_array(
                "index",
                data=np.asarray(index, dtype=np.int64),
                chunks=(max(len(index), 1),),
                fill_value=None,  # no fill value: xarray must not mask example 0 or epoch 0
                attributes={"_ARRAY_DIMENSIONS": ["index"]},
            )
            for name in ("epoch", "global_step"):
                group.create_array(
                    name,
                    shape=(0,),
                    chunks=(_COORD_CHUNK,),
                    dtype="i8",
                    fill_value=None,
                    attributes={"_ARRAY_DIMENSIONS": ["epoch"]},
                )
            zarr.consolidate_metadata(str(tmp))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it ordinary rights
            os.rename(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._group, self._count = None, 0

    def append(
        self,
        epoch: int,
        global_step: int,
        values: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any],
    ) -> None:
        """Add one record; variables new to the store read as NaN in the earlier records.

        The record becomes visible atomically when the consolidated metadata is replaced; the
        store's attributes are then updated to ``attrs`` (the newest record's run description).
        """
        group = self._writable()
        size = group["index"].shape[0]
        bad = {n: np.shape(v) for n, v in values.items() if np.shape(v) != (size,)}
        if bad:
            raise ValueError(
                f"{self.path} holds {size} examples per record, but the values {bad} have other "
                "shapes; write a new store for a different scored split."
            )
        row = self._count
        for name in values:
            if name not in group:
                group.create_array(
                    name,
                    shape=(row, size),
                    chunks=(1, max(size, 1)),
                    dtype="f8",
                    fill_value=np.nan,
                    attributes={
                        "_ARRAY_DIMENSIONS": ["epoch", "index"],
                        "coordinates": "global_step",
                    },
                )
        for name, array in group.arrays():
            if name == "index":
                continue
            array.resize((row + 1, *array.shape[1:]))
            if name == "epoch":
                array[row] = epoch
            elif name == "global_step":
                array[row] = global_step
            else:  # a NaN row is not stored at all (zarr skips chunks equal to the fill value)
                array[row] = np.asarray(values.get(name, np.nan), dtype=np.float64)
        self._commit()
        self._count = row + 1
        if dict(group.attrs) != _plain(attrs):
            # after the commit: readers take the attributes from .zattrs, not from the
            # consolidated metadata, and must never see those of an uncommitted record
            group.attrs.update(_plain(attrs))

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` committed records (resuming from an earlier checkpoint)."""
        group = self._writable()
        if not 0 <= count <= self._count:
            raise ValueError(f"{self.path} holds {self._count} records; cannot keep {count}.")
        for name, array in group.arrays():
            if name != "index":
                array.resize((count, *array.shape[1:]))
        self._commit()
        self._count = count

    def repair(self) -> list[str]:
        """Remove what a killed writer left: uncommitted rows and temporary files.

        Returns:
            The removed leftovers (paths relative to the store's directory), for the log.
        """
        zarr = lazy_import("zarr")
        count = self._committed()["epoch"].shape[0]
        removed = []
        for tmp in sorted(self.path.parent.glob(f".{self.path.name}.*.tmp")):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
        for partial in sorted(self.path.rglob("*.partial")):  # zarr's temporary files
            partial.unlink(missing_ok=True)
            removed.append(str(partial.relative_to(self.path)))
        group = zarr.open_group(self.path, mode="r+", use_consolidated=False)
        for name, array in group.arrays():
            if name != "index" and array.shape[0] != count:
                array.resize((count, *array.shape[1:]))
                removed.append(f"{name}[{count}:]")
        if removed:
            self._commit()
        self._group, self._count = group, count
        return removed

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callback and its store; an open zarr group is reopened on demand
        return {**self.__dict__, "_group": None}

    # ----------------------------------------------------------------- helpers

    def _committed(self) -> Any:
        zarr = lazy_import("zarr")
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a record store (no .zmetadata).")
        return zarr.open_group(self.path, mode="r", use_consolidated=True)

    def _writable(self) -> Any:
        if self._group is None:
            self.repair()
        return self._group

    def _commit(self) -> None:
        """Make the written rows visible: replace the consolidated metadata (one atomic rename)."""
        lazy_import("zarr").consolidate_metadata(str(self.path))


def _plain(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as JSON values (numpy scalars, e.g. read from a NetCDF file, become Python ones)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in attrs.items()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Reader and writer of Open Catalyst 2020 (OC20) LMDB files.

OC20 ships each IS2RE split as one LMDB file (``data.lmdb``) and S2EF as a directory of LMDB
shards (``data.0000.lmdb``, ..., next to their ``*.lmdb-lock`` files and preprocessing logs, which
are ignored). Keys are the ASCII indices ``"0"`` ... ``"N-1"`` plus an optional ``"length"`` key;
each value is a pickled PyTorch Geometric ``Data``: PyG 1.x objects in the downloaded IS2RE files,
PyG 2 objects from fairchem's current ``AtomsToGraphs`` (uint8 ``atomic_numbers``,
``edge_distance_vec`` and ``nedges`` instead of ``distances``, numpy scalar energies). Field names
differ between generations (``y``/``energy``, ``force``/``forces``); we map them to ``energy`` and
``force``. Entries are validated and converted by :func:`.oc20_entry.entry_to_data`.

Pickles execute code when loaded, so upstream files are refused unless ``allow_pickle=True``, and
even then only the classes an OC20 entry contains are resolved (:mod:`.oc20_pickle`). Our own
pickle-free variant keeps the LMDB layout but stores each entry as a NumPy ``.npz`` archive
(decoded with size caps and CRC checks by :mod:`.oc20_npz`); :func:`write_oc20_lmdb` writes either
variant and :func:`convert_oc20_lmdb` turns upstream files into ours once.

Every sample is an :class:`OC20Data` (a PyG ``Data``) with ``index`` (position in the dataset),
``pos`` (N, 3) float32 Å, ``atomic_numbers`` (N,) int64, ``cell`` (1, 3, 3) float32 Å (rows are
lattice vectors), ``natoms`` (1,) int64, and when stored: ``tags`` (N,) int64 (0 sub-surface,
1 surface, 2 adsorbate), ``fixed`` (N,) bool, ``force`` (N, 3) float32 eV/Å, ``pos_relaxed``
(N, 3) float32 Å, ``y_init``/``y_relaxed``/``energy`` (1,) float32 eV, ``sid``/``fid`` (1,) int64,
and edges ``edge_index`` (2, E) int64 (row 0 neighbour, row 1 centre), ``cell_offsets`` (E, 3)
int64 and ``distances`` (E,) float32 Å.
"""

from __future__ import annotations

import bisect
import io
import os
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm import tqdm

from lightning_climate.datasets.oc20_entry import (
    DEFAULT_MAX_ATOMS,
    DEFAULT_MAX_ENTRY_BYTES,
    FIELD_ALIASES,
    OC20Data,
    as_numpy,
    entry_to_data,
    finite_scalar,
)
from lightning_climate.datasets.oc20_env import open_env
from lightning_climate.datasets.oc20_npz import NPZ_MAGIC, EntryTooLargeError, decode_npz
from lightning_climate.datasets.oc20_pickle import load_oc20_pickle
from lightning_climate.datasets.oc20_upstream import to_atoms_to_graphs_data, to_is2re_data
from lightning_climate.utils import atomic_path, lazy_import

__all__ = [
    "FIELD_ALIASES",
    "OC20Data",
    "OC20LMDBDataset",
    "convert_oc20_lmdb",
    "entry_to_data",
    "read_npz_batch",
    "write_oc20_lmdb",
]

_FORMAT_KEY = b"__lightning_climate_format__"
_FORMAT = b"oc20-npz-v1"
_LENGTH_KEY = b"length"
# commit the writer's transaction every so many bytes: LMDB holds a transaction's pages in memory,
# so one transaction for a whole converted split would need its size in RAM
_COMMIT_BYTES = 64 * 2**20


def _decode(
    payload: bytes | memoryview, where: str, allow_pickle: bool, max_bytes: int
) -> dict[str, Any]:
    """Turn one LMDB value (npz archive or pickled PyG ``Data``) into a field dict."""
    if len(payload) > max_bytes:
        raise EntryTooLargeError(
            f"{where} has {len(payload)} bytes, more than max_entry_bytes={max_bytes}; the entry "
            "is damaged or crafted. If it is genuine, raise the `max_entry_bytes` argument of "
            "OC20LMDBDataset."
        )
    if payload[:4] == NPZ_MAGIC:
        return decode_npz(payload, where, max_bytes)
    if not allow_pickle:
        raise PermissionError(
            f"{where} is a pickle (the upstream OC20 layout). Unpickling can execute code, so it "
            "is refused by default. If you trust the file, pass allow_pickle=True (only the "
            "classes OC20 entries contain are then allowed), or convert it once with "
            "lightning_climate.datasets.convert_oc20_lmdb(src, dst, allow_pickle=True)."
        )
    try:
        obj = load_oc20_pickle(payload)
        if not isinstance(obj, Data):
            raise TypeError(f"it holds a {type(obj).__name__}, not a PyG Data object")
        # PyG 1.x pickles restore their fields straight into __dict__, without a `_store`.
        fields = obj.__dict__ if "_store" not in obj.__dict__ else obj.to_dict()
        return {
            k: v
            for k, v in fields.items()
            if isinstance(k, str) and v is not None and not k.startswith("_")
        }
    except Exception as err:  # a damaged pickle can fail in many ways; all name the entry
        raise RuntimeError(
            f"{where} cannot be unpickled ({type(err).__name__}: {err}); the file is corrupted, "
            "truncated or not an OC20 LMDB. Download it again."
        ) from err


class OC20LMDBDataset(Dataset[OC20Data]):
    """OC20 systems read lazily from one LMDB file (IS2RE) or a directory of shards (S2EF).

    LMDB environments are opened on first access in each process (and shared by every dataset of
    that process), so the dataset can be handed to DataLoader worker processes. Every entry is
    validated when read (:func:`.oc20_entry.entry_to_data`): NaN/Inf, inconsistent shapes, unknown
    elements and oversized entries are refused with an error naming the entry and the file.

    Args:
        path: an ``.lmdb`` file or a directory of ``*.lmdb`` shards (other files are ignored).
        allow_pickle: accept upstream (pickled) entries; only for files you trust.
        required: fields every entry must have (e.g. ``("y_relaxed",)`` for IS2RE).
        transform: optional callable applied to each sample (e.g. a PyG transform).
        check_cell: refuse positions far outside the cell (a sign of unit errors).
        max_atoms: refuse entries with more atoms (OC20 has at most about 230).
        max_entry_bytes: refuse entries whose stored or decompressed size exceeds this, before
            allocating anything for them.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``*.lmdb`` file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        allow_pickle: bool = False,
        required: Sequence[str] = (),
        transform: Callable[[OC20Data], Any] | None = None,
        check_cell: bool = True,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.glob("*.lmdb") if p.is_file())
        elif self.path.is_file():
            self.files = [self.path]
        else:
            self.files = []
        if not self.files:
            raise FileNotFoundError(
                f"no OC20 LMDB at {self.path}: expected a .lmdb file or a directory of *.lmdb "
                "shards. Download OC20 there, or write a small data set with "
                "`python -m lightning_climate.datasets.oc20_generate --out <dir>` "
                "(OC20DataModule.prepare_data does this when generate=True)."
            )
        for name, value in (("max_atoms", max_atoms), ("max_entry_bytes", max_entry_bytes)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        self.allow_pickle = allow_pickle
        self.required = tuple(required)
        self.transform = transform
        self.check_cell = check_cell
        self.max_atoms = max_atoms
        self.max_entry_bytes = max_entry_bytes
        lengths = [_length(open_env(file), file) for file in self.files]
        self._offsets = np.cumsum([0, *lengths]).tolist()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, str, str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} OC20 systems")
        shard = bisect.bisect_right(self._offsets, index) - 1
        key = str(index - self._offsets[shard])
        return shard, key, f"entry {key} of {self.files[shard]}"

    def raw(self, index: int) -> dict[str, Any]:
        """The decoded fields of entry ``index`` before validation (used by the converter)."""
        shard, key, where = self._locate(index)
        lmdb = lazy_import("lmdb")
        try:
            # the value is decoded while the read transaction still maps it: no extra copy
            with open_env(self.files[shard]).begin(buffers=True) as txn:
                payload = txn.get(key.encode("ascii"))
                if payload is None:
                    raise RuntimeError(
                        f"{where} is missing although the file announces {len(self)} entries; "
                        "the file is truncated or its `length` key is wrong. Regenerate or "
                        "download it again."
                    )
                return _decode(payload, where, self.allow_pickle, self.max_entry_bytes)
        except lmdb.Error as err:
            raise RuntimeError(f"{where} cannot be read ({err}); the file is corrupted.") from err

    def target(self, index: int, key: str) -> float:
        """The finite per-graph number ``key`` (e.g. ``y_relaxed``) of entry ``index``.

        ``energy`` is also found under its older name ``y``.

        Raises:
            KeyError: the entry has no such field.
            ValueError: the value is NaN or Inf (naming the entry and the file).
        """
        fields = self.raw(index)
        where = self._locate(index)[2]
        names = [name for name, alias in FIELD_ALIASES.items() if alias == key]
        for name in (key, *names):
            if name in fields:
                return finite_scalar(fields[name], key, where)
        raise KeyError(f"{where} lacks the field {key!r} (it has {sorted(fields)}).")

    def __getitem__(self, index: int) -> Any:
        where = self._locate(index)[2]
        data = entry_to_data(
            self.raw(index), index, where, self.required, self.check_cell, self.max_atoms
        )
        return data if self.transform is None else self.transform(data)


def _length(env: Any, path: Path) -> int:
    with env.begin() as txn:
        fmt = txn.get(_FORMAT_KEY)
        stored = txn.get(_LENGTH_KEY)
        entries = env.stat()["entries"]
    if stored is not None:
        stored = bytes(stored)
        if fmt is not None:
            return int(stored.decode("ascii"))
        # Upstream writes a pickled int; the restricted unpickler resolves no class for it.
        value = load_oc20_pickle(stored)
        if not isinstance(value, int):
            raise RuntimeError(
                f"the `length` key of {path} is not an integer; the file is corrupt."
            )
        return value
    return entries - (fmt is not None)


def write_oc20_lmdb(
    path: str | os.PathLike[str],
    entries: Iterable[Mapping[str, Any]],
    format: Literal["npz", "pickle", "atoms_to_graphs"] = "npz",
    progress: bool = False,
) -> int:
    """Write OC20 entries (dicts of arrays) to one LMDB file, atomically.

    Args:
        path: destination ``.lmdb`` file; it appears only once complete.
        entries: one mapping per system with at least ``pos``, ``atomic_numbers`` and ``cell``.
        format: ``"npz"`` (ours, pickle-free), ``"pickle"`` (the downloaded IS2RE layout) or
            ``"atoms_to_graphs"`` (fairchem's current ``AtomsToGraphs`` defaults); the last two
            are pickled PyG ``Data`` with a pickled ``length`` key, readable by fairchem
            (:mod:`.oc20_upstream`).
        progress: show a tqdm bar.

    Returns:
        The number of entries written.
    """
    builders = {"pickle": to_is2re_data, "atoms_to_graphs": to_atoms_to_graphs_data}
    if format != "npz" and format not in builders:
        raise ValueError(f"format must be 'npz', 'pickle' or 'atoms_to_graphs', got {format!r}.")
    lmdb = lazy_import("lmdb")
    count = 0
    with atomic_path(path) as tmp:
        env = lmdb.open(str(tmp), subdir=False, map_size=1 << 40, lock=False, meminit=False)
        try:
            txn, pending = env.begin(write=True), 0
            for entry in tqdm(entries, desc=f"writing {Path(path).name}", disable=not progress):
                if format == "npz":
                    buffer = io.BytesIO()
                    np.savez(buffer, **{k: as_numpy(v) for k, v in entry.items()})
                    payload = buffer.getvalue()
                else:
                    payload = pickle.dumps(builders[format](entry), protocol=-1)
                txn.put(str(count).encode("ascii"), payload)
                count, pending = count + 1, pending + len(payload)
                if pending > _COMMIT_BYTES:  # a write transaction keeps its pages in memory
                    txn.commit()
                    txn, pending = env.begin(write=True), 0
            if format == "npz":
                txn.put(_FORMAT_KEY, _FORMAT)
                txn.put(_LENGTH_KEY, str(count).encode("ascii"))
            else:
                txn.put(_LENGTH_KEY, pickle.dumps(count, protocol=-1))
            txn.commit()
            env.sync()
        finally:
            env.close()
    return count


def convert_oc20_lmdb(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    allow_pickle: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Convert upstream (pickled) OC20 LMDB file(s) into our pickle-free layout.

    A single file is written to ``dst``; a directory of shards to ``dst/<same shard names>``.

    Args:
        src: an upstream ``.lmdb`` file or a directory of shards.
        dst: destination file or directory.
        allow_pickle: must be ``True`` to read pickled entries; only for files you trust.
        progress: show a tqdm bar per shard.

    Returns:
        The files written.
    """
    source = OC20LMDBDataset(src, allow_pickle=allow_pickle)
    written = []
    for shard, file in enumerate(source.files):
        target = Path(dst) / file.name if Path(src).is_dir() else Path(dst)
        start, stop = source._offsets[shard], source._offsets[shard + 1]
        entries = (source.raw(i) for i in range(start, stop))
        write_oc20_lmdb(target, entries, format="npz", progress=progress)
        written.append(target)
    return written


def read_npz_batch(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    """Split a collated, pickle-free OC20 batch (``.npz``) into one entry dict per system.

    The layout is that of ``shared/oc20_sample/is2re_bs3.npz``: per-atom and per-edge arrays
    concatenated over graphs, ``ptr``/``edge_ptr`` offsets, global ``edge_index``, and per-graph
    arrays (``cell`` (B, 3, 3), ``sid``, ``y_init``, ``y_relaxed``, ...). The entries can be
    written with :func:`write_oc20_lmdb` or turned into samples by :class:`OC20LMDBDataset`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no collated OC20 batch at {path}; check the path.")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key in ("ptr", "pos", "atomic_numbers", "cell"):
        if key not in arrays:
            raise KeyError(f"{path} lacks `{key}`; it is not a collated OC20 batch.")
    ptr, edge_ptr = arrays["ptr"], arrays.get("edge_ptr")
    num_atoms = int(ptr[-1])
    num_edges = int(edge_ptr[-1]) if edge_ptr is not None else -1
    entries = []
    for g in range(len(ptr) - 1):
        a, b = int(ptr[g]), int(ptr[g + 1])
        entry: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            if key in ("ptr", "edge_ptr", "neighbors"):
                continue
            if key == "edge_index" and edge_ptr is not None:
                entry[key] = value[:, edge_ptr[g] : edge_ptr[g + 1]] - a
            elif edge_ptr is not None and value.ndim >= 1 and value.shape[0] == num_edges:
                entry[key] = value[edge_ptr[g] : edge_ptr[g + 1]]
            elif value.ndim >= 1 and value.shape[0] == num_atoms:
                entry[key] = value[a:b]
            else:
                entry[key] = value[g]
        entries.append(entry)
    return entries

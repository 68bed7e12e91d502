"""Reader and writer of Open Catalyst 2020 (OC20) LMDB files.

OC20 ships each IS2RE split as one LMDB file (``data.lmdb``) and S2EF as a directory of LMDB
shards (``data.0000.lmdb``, ...). Keys are the ASCII indices ``"0"`` ... ``"N-1"`` plus an optional
``"length"`` key; each value is a pickled PyTorch Geometric ``Data`` (PyG 1.x objects in the
downloaded files, PyG 2 objects from newer preprocessing). Field names differ between the two
generations (``y``/``energy``, ``force``/``forces``); we map them to ``energy`` and ``force``.

Pickles execute code when loaded, so upstream files are refused unless ``allow_pickle=True``, and
even then only the classes an OC20 entry contains are resolved (:mod:`.oc20_pickle`). Our own
pickle-free variant keeps the LMDB layout but stores each entry as a NumPy ``.npz`` archive;
:func:`write_oc20_lmdb` writes either variant and :func:`convert_oc20_lmdb` turns upstream files
into ours once.

Every sample is an :class:`OC20Data` (a PyG ``Data``) with ``index`` (position in the dataset),
``pos`` (N, 3) Å, ``atomic_numbers`` (N,) long, ``cell`` (1, 3, 3) Å (rows are lattice vectors),
``natoms`` (1,), and when stored: ``tags`` (0 sub-surface, 1 surface, 2 adsorbate), ``fixed``
(bool), ``force`` (N, 3) eV/Å, ``pos_relaxed``, ``y_init``/``y_relaxed``/``energy`` (1,) eV,
``sid``/``fid`` (1,), and precomputed edges ``edge_index`` (2, E; row 0 neighbour, row 1 centre),
``cell_offsets`` (E, 3) and ``distances`` (E,).
"""

from __future__ import annotations

import bisect
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm import tqdm

from lightning_climate.datasets.oc20_pickle import load_oc20_pickle
from lightning_climate.utils import atomic_path, lazy_import

__all__ = [
    "FIELD_ALIASES",
    "OC20Data",
    "OC20LMDBDataset",
    "convert_oc20_lmdb",
    "read_npz_batch",
    "write_oc20_lmdb",
]

#: upstream field name -> the name our samples use.
FIELD_ALIASES = {"y": "energy", "forces": "force"}
_PER_GRAPH_FLOAT = ("y_init", "y_relaxed", "energy")
_PER_GRAPH_INT = ("sid", "fid")
_PER_ATOM = ("tags", "fixed", "force", "pos_relaxed")
_EDGE = ("edge_index", "cell_offsets", "distances")
_FORMAT_KEY = b"__lightning_climate_format__"
_FORMAT = b"oc20-npz-v1"
_LENGTH_KEY = b"length"
_MAX_Z = 118
_LMDB_MAGIC = 0xBEEFC0DE
# Positions further than this (in cell fractions) outside [0, 1) are almost surely a unit or
# cell error rather than an atom that drifted across a periodic boundary.
_CELL_TOLERANCE = 0.5


class OC20Data(Data):
    """PyG ``Data`` whose per-graph identifiers (``index``, ``sid``, ``fid``) are not offset.

    PyG increments every attribute whose name contains ``index`` by the number of nodes when it
    batches graphs; that is right for ``edge_index`` but would corrupt the dataset position.
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in ("index", "sid", "fid"):
            return 0
        return super().__inc__(key, value, *args, **kwargs)


def _check_lmdb_size(path: Path) -> None:
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


# py-lmdb refuses to open one file twice in a process, so environments are shared per process
# (keyed by inode and mtime, so a file replaced by a new version is opened afresh).
_ENVS: dict[tuple[int, str, int, int], Any] = {}


def _open_env(path: Path) -> Any:
    """The process's read-only environment of ``path``, opened on first use."""
    stat = path.stat()
    key = (os.getpid(), str(path.resolve()), stat.st_ino, stat.st_mtime_ns)
    if key not in _ENVS:
        _ENVS[key] = _open_new_env(path)
    return _ENVS[key]


def _open_new_env(path: Path) -> Any:
    lmdb = lazy_import("lmdb")
    _check_lmdb_size(path)
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
        raise RuntimeError(
            f"cannot open the LMDB file {path}: {err}. The file is corrupted or truncated; "
            "download it again or regenerate it (OC20DataModule.prepare_data / "
            "lightning_climate.datasets.oc20_generate)."
        ) from err


def _as_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return torch.as_tensor(np.asarray(value))


def _decode(payload: bytes, where: str, allow_pickle: bool) -> dict[str, Any]:
    """Turn one LMDB value (npz archive or pickled PyG ``Data``) into a field dict."""
    if payload[:2] == b"PK":
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise RuntimeError(
                f"{where} is a damaged npz archive ({err}); regenerate or re-convert the file."
            ) from err
    if not allow_pickle:
        raise PermissionError(
            f"{where} is a pickle (the upstream OC20 layout). Unpickling can execute code, so it "
            "is refused by default. If you trust the file, pass allow_pickle=True (only the "
            "classes OC20 entries contain are then allowed), or convert it once with "
            "lightning_climate.datasets.convert_oc20_lmdb(src, dst, allow_pickle=True)."
        )
    try:
        obj = load_oc20_pickle(payload)
    except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError) as err:
        raise RuntimeError(
            f"{where} cannot be unpickled ({type(err).__name__}: {err}); the file is corrupted, "
            "truncated or not an OC20 LMDB. Download it again."
        ) from err
    if not isinstance(obj, Data):
        raise TypeError(f"{where} holds a {type(obj).__name__}, not a PyG Data object.")
    # PyG 1.x pickles restore their fields straight into __dict__, without a `_store`.
    fields = obj.__dict__ if "_store" not in obj.__dict__ else obj.to_dict()
    return {k: v for k, v in fields.items() if v is not None and not k.startswith("_")}


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{where}: {message}")


def entry_to_data(
    entry: Mapping[str, Any],
    index: int,
    where: str,
    required: Sequence[str] = (),
    check_cell: bool = True,
) -> OC20Data:
    """Validate one decoded entry and build the sample (see the module docstring for its keys).

    Raises:
        KeyError: a required field is missing.
        ValueError: an unknown element, a cell of zero volume, atoms far outside the cell, or
            inconsistent shapes; each message names the entry and the fix.
    """
    fields = {FIELD_ALIASES.get(k, k): v for k, v in entry.items()}
    missing = [k for k in ("pos", "atomic_numbers", "cell", *required) if k not in fields]
    if missing:
        raise KeyError(
            f"{where} lacks the field(s) {missing} (it has {sorted(fields)}). Regenerate the "
            "file with these fields, or choose a task/target that does not need them."
        )
    pos = _as_tensor(fields["pos"]).to(torch.float32)
    _check(
        pos.ndim == 2 and pos.shape[1] == 3, where, f"pos has shape {tuple(pos.shape)}, not (N, 3)"
    )
    n = pos.shape[0]
    z_raw = _as_tensor(fields["atomic_numbers"]).reshape(-1)
    z = z_raw.round().long()
    _check(z.numel() == n, where, f"atomic_numbers has {z.numel()} entries for {n} positions")
    bad = (z < 1) | (z > _MAX_Z) | ((z_raw.double() - z.double()).abs() > 1e-3)
    if bool(bad.any()):
        raise ValueError(
            f"{where}: unknown element(s) {z_raw[bad].tolist()} in atomic_numbers; atomic numbers "
            f"must be integers 1..{_MAX_Z}. Fix the file (atomic numbers, not species indices)."
        )
    cell = _as_tensor(fields["cell"]).to(torch.float32).reshape(-1, 3, 3)[:1]
    volume = float(torch.linalg.det(cell[0].double()))
    if abs(volume) < 1e-6:
        raise ValueError(
            f"{where}: the cell {cell[0].tolist()} has zero volume; every OC20 system needs three "
            "independent lattice vectors (rows of `cell`, Å). Set the cell of the ASE Atoms."
        )
    if check_cell and n > 0:
        frac = torch.linalg.solve(cell[0].double().T, pos.double().T).T
        if bool(((frac < -_CELL_TOLERANCE) | (frac > 1 + _CELL_TOLERANCE)).any()):
            raise ValueError(
                f"{where}: atoms lie outside the cell (fractional coordinates from "
                f"{frac.min().item():.2f} to {frac.max().item():.2f}); wrap them into the cell "
                "(ase Atoms.wrap()), check that pos and cell are both in Å, or pass "
                "check_cell=False."
            )
    data = OC20Data(pos=pos, atomic_numbers=z, cell=cell, natoms=torch.tensor([n]))
    data.index = torch.tensor([index])
    for key in _PER_ATOM:
        if key in fields:
            value = _as_tensor(fields[key])
            _check(value.shape[0] == n, where, f"{key} has {value.shape[0]} rows for {n} atoms")
            if key == "tags":
                value = value.long()
            elif key == "fixed":
                value = value.bool()
            else:
                value = value.to(torch.float32)
            data[key] = value
    for key in _PER_GRAPH_FLOAT:
        if key in fields:
            data[key] = _as_tensor(fields[key]).to(torch.float32).reshape(1)
    for key in _PER_GRAPH_INT:
        if key in fields:
            data[key] = _as_tensor(fields[key]).long().reshape(1)
    present = [k for k in _EDGE if k in fields]
    if present:
        _check(
            len(present) == len(_EDGE),
            where,
            f"has {present} but not all of {list(_EDGE)}; store all three or none",
        )
        edge_index = _as_tensor(fields["edge_index"]).long()
        offsets = _as_tensor(fields["cell_offsets"]).long()
        distances = _as_tensor(fields["distances"]).to(torch.float32).reshape(-1)
        num_edges = edge_index.shape[1] if edge_index.ndim == 2 else -1
        _check(
            edge_index.shape[0] == 2
            and offsets.shape == (num_edges, 3)
            and distances.numel() == num_edges,
            where,
            "edge_index (2, E), cell_offsets (E, 3) and distances (E,) disagree in shape",
        )
        _check(
            num_edges == 0 or (int(edge_index.max()) < n and int(edge_index.min()) >= 0),
            where,
            f"edge_index refers to atoms outside 0..{n - 1}",
        )
        data.edge_index, data.cell_offsets, data.distances = edge_index, offsets, distances
    return data


class OC20LMDBDataset(Dataset[OC20Data]):
    """OC20 systems read lazily from one LMDB file (IS2RE) or a directory of shards (S2EF).

    LMDB environments are opened on first access in each process (and shared by every dataset of
    that process), so the dataset can be handed to DataLoader worker processes.

    Args:
        path: an ``.lmdb`` file or a directory of ``*.lmdb`` shards.
        allow_pickle: accept upstream (pickled) entries; only for files you trust.
        required: fields every entry must have (e.g. ``("y_relaxed",)`` for IS2RE).
        transform: optional callable applied to each sample (e.g. a PyG transform).
        check_cell: refuse positions far outside the cell (a sign of unit errors).

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
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(self.path.glob("*.lmdb"))
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
        self.allow_pickle = allow_pickle
        self.required = tuple(required)
        self.transform = transform
        self.check_cell = check_cell
        lengths = [_length(_open_env(file), file) for file in self.files]
        self._offsets = np.cumsum([0, *lengths]).tolist()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _env(self, shard: int) -> Any:
        return _open_env(self.files[shard])

    def raw(self, index: int) -> dict[str, Any]:
        """The decoded fields of entry ``index`` before validation (used by the converter)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} OC20 systems")
        shard = bisect.bisect_right(self._offsets, index) - 1
        key = str(index - self._offsets[shard])
        where = f"entry {key} of {self.files[shard]}"
        lmdb = lazy_import("lmdb")
        try:
            with self._env(shard).begin() as txn:
                payload = txn.get(key.encode("ascii"))
        except lmdb.Error as err:
            raise RuntimeError(f"{where} cannot be read ({err}); the file is corrupted.") from err
        if payload is None:
            raise RuntimeError(
                f"{where} is missing although the file announces {len(self)} entries; the file "
                "is truncated or its `length` key is wrong. Regenerate or download it again."
            )
        return _decode(bytes(payload), where, self.allow_pickle)

    def __getitem__(self, index: int) -> Any:
        shard = bisect.bisect_right(self._offsets, index) - 1
        where = f"entry {index - self._offsets[shard]} of {self.files[shard]}"
        data = entry_to_data(self.raw(index), index, where, self.required, self.check_cell)
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


def _to_pickle_entry(entry: Mapping[str, Any]) -> Data:
    """Build the PyG ``Data`` an upstream OC20 LMDB stores (float atomic numbers and ``fixed``)."""
    fields: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ("natoms", *_PER_GRAPH_INT):
            fields[key] = int(np.asarray(value).reshape(-1)[0])
        elif key in _PER_GRAPH_FLOAT or key == "y":
            fields[key] = float(np.asarray(value).reshape(-1)[0])
        elif key in ("atomic_numbers", "fixed"):
            fields[key] = _as_tensor(value).to(torch.float32)
        else:
            fields[key] = _as_tensor(value)
    return Data(**fields)


def write_oc20_lmdb(
    path: str | os.PathLike[str],
    entries: Iterable[Mapping[str, Any]],
    format: Literal["npz", "pickle"] = "npz",
    progress: bool = False,
) -> int:
    """Write OC20 entries (dicts of arrays) to one LMDB file, atomically.

    Args:
        path: destination ``.lmdb`` file; it appears only once complete.
        entries: one mapping per system with at least ``pos``, ``atomic_numbers`` and ``cell``.
        format: ``"npz"`` (ours, pickle-free) or ``"pickle"`` (the upstream layout: pickled PyG
            ``Data`` with a pickled ``length`` key, readable by fairchem).
        progress: show a tqdm bar.

    Returns:
        The number of entries written.
    """
    if format not in ("npz", "pickle"):
        raise ValueError(f"format must be 'npz' or 'pickle', got {format!r}.")
    lmdb = lazy_import("lmdb")
    count = 0
    with atomic_path(path) as tmp:
        env = lmdb.open(str(tmp), subdir=False, map_size=1 << 36, lock=False, meminit=False)
        try:
            with env.begin(write=True) as txn:
                for entry in tqdm(entries, desc=f"writing {Path(path).name}", disable=not progress):
                    if format == "npz":
                        buffer = io.BytesIO()
                        np.savez(buffer, **{k: _as_tensor(v).numpy() for k, v in entry.items()})
                        payload = buffer.getvalue()
                    else:
                        payload = pickle.dumps(_to_pickle_entry(entry), protocol=-1)
                    txn.put(str(count).encode("ascii"), payload)
                    count += 1
                if format == "npz":
                    txn.put(_FORMAT_KEY, _FORMAT)
                    txn.put(_LENGTH_KEY, str(count).encode("ascii"))
                else:
                    txn.put(_LENGTH_KEY, pickle.dumps(count, protocol=-1))
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

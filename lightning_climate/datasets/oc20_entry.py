"""Validation of one decoded OC20 entry and its conversion into a PyG sample.

Entries come from upstream pickles (PyG 1.x or 2.x ``Data``, fields as torch tensors, Python or
numpy scalars) or from our npz layout (numpy arrays). Both are checked the same way, in NumPy
(a few microseconds per check), before any tensor is built:

- shapes agree (``pos`` (N, 3), per-atom fields N rows, ``edge_index`` (2, E), ``cell_offsets``
  (E, 3), ...), N is at most ``max_atoms``, stored ``natoms`` / ``nedges`` match;
- atomic numbers are integers 1..118 (OC20 stores them as float32, fairchem's ``AtomsToGraphs``
  as uint8), the cell has a volume, atoms lie near the cell;
- positions, cell, energies, forces, relaxed positions, distances and ``edge_distance_vec`` are
  finite (NaN or Inf is refused, naming the entry and the field);
- edges refer to existing atoms. Entries written by ``AtomsToGraphs`` with its defaults store
  ``edge_index``, ``cell_offsets`` and ``edge_distance_vec`` but no ``distances``: the distances are
  then computed from ``pos``, ``cell`` and ``cell_offsets`` (OC20's convention
  ``|pos[j] + cell_offsets @ cell - pos[i]|`` in float32, equal to the distances the official
  IS2RE files store to 2.4e-6 Å), and ``edge_distance_vec`` must agree with the same vectors.
  Entries without any edges (S2EF written without ``--get-edges``) get their graph later from
  :class:`~lightning_climate.transforms.RadiusGraphPBC` (the datamodule does this).

Unknown fields (``stress``, ``pbc``, ``nedges`` after its check, ...) are not carried into the
sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from lightning_climate.datasets.oc20_npz import EntryTooLargeError

__all__ = [
    "DEFAULT_MAX_ATOMS",
    "DEFAULT_MAX_ENTRY_BYTES",
    "FIELD_ALIASES",
    "OC20Data",
    "as_numpy",
    "entry_to_data",
    "finite_scalar",
]

#: upstream field name -> the name our samples use.
FIELD_ALIASES = {"y": "energy", "forces": "force"}
#: default cap on the atoms of one entry (OC20 systems have at most about 230).
DEFAULT_MAX_ATOMS = 10_000
#: default cap on the (decompressed) bytes of one entry (a 230-atom IS2RE entry is about 60 kB).
DEFAULT_MAX_ENTRY_BYTES = 64 * 2**20
_PER_GRAPH_FLOAT = ("y_init", "y_relaxed", "energy")
_PER_GRAPH_ID = ("sid", "fid")
_MAX_Z = 118
# Positions further than this (in cell fractions) outside [0, 1) are almost surely a unit or
# cell error rather than an atom that drifted across a periodic boundary.
_CELL_TOLERANCE = 0.5
# edge_distance_vec is float32 arithmetic on the same numbers; more than this is another geometry
_VECTOR_TOLERANCE = 1e-3


class OC20Data(Data):
    """PyG ``Data`` whose per-graph identifiers (``index``, ``sid``, ``fid``) are not offset.

    PyG increments every attribute whose name contains ``index`` by the number of nodes when it
    batches graphs; that is right for ``edge_index`` but would corrupt the dataset position.
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in ("index", "sid", "fid"):
            return 0
        return super().__inc__(key, value, *args, **kwargs)


def as_numpy(value: Any) -> np.ndarray:
    """A tensor, array or number as a NumPy array (half precision widened to float32)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _finite(array: np.ndarray, name: str, where: str) -> None:
    # the sum is one pass in C; only a non-finite sum needs the exact (slower) test
    if (
        array.size
        and not math.isfinite(float(array.sum(dtype=np.float64)))
        and not np.isfinite(array).all()
    ):
        raise _fail(
            where,
            f"{name} holds NaN or Inf ({int((~np.isfinite(array)).sum())} value(s)); the entry "
            "is damaged or its calculation failed. Remove it from the file or recompute it.",
        )


def finite_scalar(value: Any, name: str, where: str) -> float:
    """A per-graph number (Python, numpy or a one-element tensor) as a finite float."""
    array = as_numpy(value).reshape(-1)
    if array.size != 1 or array.dtype.kind not in "biuf":
        raise _fail(where, f"{name} should be one number, got {array.size} values of {array.dtype}")
    result = float(array[0])
    if not math.isfinite(result):
        raise _fail(
            where,
            f"{name} is {result}; the entry is damaged or its calculation failed. Remove it from "
            "the file or recompute it.",
        )
    return result


def _integers(array: np.ndarray, name: str, where: str) -> np.ndarray:
    if array.dtype.kind in "biu":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind != "f":
        raise _fail(where, f"{name} has dtype {array.dtype}, not a number type")
    rounded = np.rint(array)
    if array.size and not (np.abs(array - rounded).max() <= 1e-3):  # also catches NaN
        raise _fail(where, f"{name} holds non-integer values")
    return rounded.astype(np.int64)


def _rows(array: np.ndarray, n: int, name: str, where: str) -> np.ndarray:
    if array.ndim == 0 or array.shape[0] != n:
        rows = array.shape[0] if array.ndim else "no"
        raise _fail(where, f"{name} has {rows} rows for {n} atoms")
    return array


def _atomic_numbers(raw: np.ndarray, n: int, where: str) -> np.ndarray:
    raw = raw.reshape(-1)
    if raw.size != n:
        raise _fail(where, f"atomic_numbers has {raw.size} entries for {n} positions")
    z = raw.astype(np.int64) if raw.dtype.kind in "biu" else np.rint(raw)
    bad = (z < 1) | (z > _MAX_Z)
    if raw.dtype.kind == "f":
        bad |= ~(np.abs(raw - z) <= 1e-3)
    if n and bad.any():
        raise ValueError(
            f"{where}: unknown element(s) {raw[bad].tolist()} in atomic_numbers; atomic numbers "
            f"must be integers 1..{_MAX_Z}. Fix the file (atomic numbers, not species indices)."
        )
    return z.astype(np.int64, copy=False)


def _edges(
    fields: Mapping[str, Any], pos: np.ndarray, cell: np.ndarray, where: str
) -> dict[str, Tensor]:
    """Checked ``edge_index``, ``cell_offsets`` and ``distances`` (computed if not stored)."""
    n = pos.shape[0]
    edge_index = _integers(as_numpy(fields["edge_index"]), "edge_index", where)
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise _fail(where, f"edge_index has shape {edge_index.shape}, not (2, E)")
    num_edges = edge_index.shape[1]
    if "cell_offsets" not in fields:
        raise _fail(
            where,
            "has edge_index but not cell_offsets; store both (fairchem AtomsToGraphs does) or "
            "neither (the graph is then built with RadiusGraphPBC)",
        )
    offsets = _integers(as_numpy(fields["cell_offsets"]), "cell_offsets", where)
    if offsets.shape != (num_edges, 3):
        raise _fail(
            where, f"edge_index (2, {num_edges}) and cell_offsets {offsets.shape} disagree in shape"
        )
    if "nedges" in fields and int(as_numpy(fields["nedges"]).reshape(-1)[0]) != num_edges:
        raise _fail(where, f"nedges is {fields['nedges']} but edge_index has {num_edges} edges")
    if num_edges and (edge_index.min() < 0 or edge_index.max() >= n):
        raise _fail(where, f"edge_index refers to atoms outside 0..{n - 1}")
    result = {
        "edge_index": torch.from_numpy(np.ascontiguousarray(edge_index)),
        "cell_offsets": torch.from_numpy(np.ascontiguousarray(offsets)),
    }
    stored_vec = fields.get("edge_distance_vec")
    if "distances" in fields:
        distances = as_numpy(fields["distances"]).astype(np.float32, copy=False).reshape(-1)
        if distances.size != num_edges:
            raise _fail(
                where, f"edge_index has {num_edges} edges but distances has {distances.size}"
            )
        _finite(distances, "distances", where)
    if "distances" not in fields or stored_vec is not None:
        # float32 like the stored positions: equal to the official distances to 2.4e-6 Å, the
        # same as float64 arithmetic; np.take is about twice as fast as fancy indexing here
        j, i = edge_index
        shift = offsets.astype(np.float32) @ cell[0]
        vec = np.take(pos, j, axis=0) - np.take(pos, i, axis=0) + shift
        if "distances" not in fields:
            distances = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        if stored_vec is not None:
            stored = as_numpy(stored_vec)
            if stored.shape != (num_edges, 3):
                raise _fail(where, f"edge_distance_vec has shape {stored.shape}, not (E, 3)")
            error = np.subtract(stored, vec, dtype=np.float32)
            # NaN never compares greater: a non-finite stored vector is caught by the test below
            worst = float(np.abs(error, out=error).max()) if num_edges else 0.0
            if not worst <= _VECTOR_TOLERANCE:
                _finite(stored, "edge_distance_vec", where)
                raise _fail(
                    where,
                    f"edge_distance_vec disagrees with pos, cell and cell_offsets (by {worst:.3g} "
                    "Å); the entry is damaged or was written with other positions. Rebuild it.",
                )
    result["distances"] = torch.from_numpy(distances)
    return result


def entry_to_data(
    entry: Mapping[str, Any],
    index: int,
    where: str,
    required: Sequence[str] = (),
    check_cell: bool = True,
    max_atoms: int = DEFAULT_MAX_ATOMS,
) -> OC20Data:
    """Validate one decoded entry and build the sample (see :mod:`.oc20` for its keys).

    Args:
        entry: field name -> array, tensor or number.
        index: position of the entry in the dataset (stored as ``index``).
        where: ``"entry K of FILE"``, used in error messages.
        required: fields the entry must have (after mapping ``y``/``forces``).
        check_cell: refuse positions far outside the cell.
        max_atoms: refuse entries with more atoms.

    Raises:
        KeyError: a required field is missing.
        EntryTooLargeError: more than ``max_atoms`` atoms.
        ValueError: an unknown element, NaN/Inf, a cell of zero volume, atoms far outside the
            cell, or inconsistent shapes; each message names the entry and the fix.
    """
    fields = {FIELD_ALIASES.get(k, k): v for k, v in entry.items()}
    missing = [k for k in ("pos", "atomic_numbers", "cell", *required) if k not in fields]
    if missing:
        raise KeyError(
            f"{where} lacks the field(s) {missing} (it has {sorted(fields)}). Regenerate the "
            "file with these fields, or choose a task/target that does not need them."
        )
    try:
        return _validated(fields, index, where, check_cell, max_atoms)
    except (TypeError, AttributeError, IndexError, OverflowError) as err:
        # a field of the wrong kind (a damaged pickle can hold anything): still name the entry
        raise ValueError(
            f"{where}: a field has an unexpected type or shape ({type(err).__name__}: {err}); "
            "the entry is damaged. Rebuild it or download the file again."
        ) from err


def _validated(
    fields: Mapping[str, Any], index: int, where: str, check_cell: bool, max_atoms: int
) -> OC20Data:
    pos = as_numpy(fields["pos"])
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.dtype.kind != "f":
        raise _fail(where, f"pos has shape {pos.shape} and dtype {pos.dtype}, not (N, 3) floats")
    n = pos.shape[0]
    if n > max_atoms:
        raise EntryTooLargeError(
            f"{where} has {n} atoms, more than max_atoms={max_atoms}; the entry is damaged or "
            "crafted. If it is genuine, raise the `max_atoms` argument of OC20LMDBDataset."
        )
    pos = pos.astype(np.float32, copy=False)
    _finite(pos, "pos", where)
    z = _atomic_numbers(as_numpy(fields["atomic_numbers"]), n, where)
    cell = as_numpy(fields["cell"]).astype(np.float32, copy=False)
    if cell.size < 9 or cell.size % 9:
        raise _fail(where, f"cell has shape {cell.shape}, not (1, 3, 3)")
    cell = cell.reshape(-1, 3, 3)[:1]
    _finite(cell, "cell", where)
    if "natoms" in fields and int(as_numpy(fields["natoms"]).reshape(-1)[0]) != n:
        raise _fail(where, f"natoms is {fields['natoms']} but pos has {n} rows")
    cell64 = cell[0].astype(np.float64)
    if abs(np.linalg.det(cell64)) < 1e-6:
        raise ValueError(
            f"{where}: the cell {cell[0].tolist()} has zero volume; every OC20 system needs three "
            "independent lattice vectors (rows of `cell`, Å). Set the cell of the ASE Atoms."
        )
    if check_cell and n:
        frac = pos @ np.linalg.inv(cell64)
        low, high = frac.min(), frac.max()
        if low < -_CELL_TOLERANCE or high > 1 + _CELL_TOLERANCE:
            raise ValueError(
                f"{where}: atoms lie outside the cell (fractional coordinates from {low:.2f} to "
                f"{high:.2f}); wrap them into the cell (ase Atoms.wrap()), check that pos and "
                "cell are both in Å, or pass check_cell=False."
            )
    out: dict[str, Any] = {
        "pos": torch.from_numpy(np.ascontiguousarray(pos)),
        "atomic_numbers": torch.from_numpy(z),
        "cell": torch.from_numpy(np.ascontiguousarray(cell)),
        "natoms": torch.tensor([n]),
        "index": torch.tensor([index]),
    }
    if "tags" in fields:
        tags = _rows(as_numpy(fields["tags"]), n, "tags", where)
        out["tags"] = torch.from_numpy(_integers(tags, "tags", where).reshape(-1))
    if "fixed" in fields:
        fixed = _rows(as_numpy(fields["fixed"]), n, "fixed", where).reshape(-1)
        out["fixed"] = torch.from_numpy(fixed != 0)
    for key in ("force", "pos_relaxed"):
        if key in fields:
            value = _rows(as_numpy(fields[key]), n, key, where).astype(np.float32, copy=False)
            if value.shape != (n, 3):
                raise _fail(where, f"{key} has shape {value.shape}, not ({n}, 3)")
            _finite(value, key, where)
            out[key] = torch.from_numpy(np.ascontiguousarray(value))
    for key in _PER_GRAPH_FLOAT:
        if key in fields:
            out[key] = torch.tensor([finite_scalar(fields[key], key, where)], dtype=torch.float32)
    for key in _PER_GRAPH_ID:
        if key in fields:
            value = as_numpy(fields[key])
            if value.dtype.kind == "U":  # AtomsToGraphs(sid=...) accepts any identifier
                out[key] = str(value.reshape(-1)[0])
            else:
                out[key] = torch.from_numpy(_integers(value, key, where).reshape(-1)[:1])
    if "edge_index" in fields:
        out.update(_edges(fields, pos, cell, where))
    elif "distances" in fields or "cell_offsets" in fields:
        raise _fail(where, "has cell_offsets or distances but no edge_index; store all or none")
    return OC20Data(**out)

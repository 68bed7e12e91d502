"""The PyG ``Data`` objects upstream OC20 LMDBs store, built from our entry dicts.

Two generations, used by :func:`.oc20.write_oc20_lmdb` to write files exactly as users have them:

- ``"pickle"``: the downloaded IS2RE/IS2RS files (2021): float32 ``atomic_numbers`` and ``fixed``,
  Python ``int``/``float`` per-graph values, stored ``distances``;
- ``"atoms_to_graphs"``: fairchem's current ``AtomsToGraphs`` defaults (``r_edges=True``,
  ``r_distances=False``): uint8 ``atomic_numbers``, int32 ``tags`` and ``fixed``, ``edge_index``,
  ``cell_offsets``, ``edge_distance_vec`` (float32 arithmetic, as upstream) and ``nedges`` but no
  ``distances``, numpy float64 energies and ``forces``; ``sid`` may be text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from lightning_climate.datasets.oc20_entry import as_numpy

__all__ = ["to_atoms_to_graphs_data", "to_is2re_data"]

_PER_GRAPH_FLOAT = ("y_init", "y_relaxed", "energy", "y")
_PER_GRAPH_INT = ("natoms", "sid", "fid", "nedges")


def _tensor(value: Any, dtype: np.dtype[Any] | None = None) -> torch.Tensor:
    array = as_numpy(value)
    return torch.from_numpy(np.ascontiguousarray(array if dtype is None else array.astype(dtype)))


def to_is2re_data(entry: Mapping[str, Any]) -> Data:
    """The ``Data`` of the downloaded OC20 IS2RE files (float atomic numbers and ``fixed``)."""
    fields: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _PER_GRAPH_INT:
            fields[key] = int(as_numpy(value).reshape(-1)[0])
        elif key in _PER_GRAPH_FLOAT:
            fields[key] = float(as_numpy(value).reshape(-1)[0])
        elif key in ("atomic_numbers", "fixed"):
            fields[key] = _tensor(value, np.float32)
        else:
            fields[key] = _tensor(value)
    return Data(**fields)


def to_atoms_to_graphs_data(entry: Mapping[str, Any]) -> Data:
    """The ``Data`` fairchem's ``AtomsToGraphs`` writes with its defaults (no ``distances``)."""
    pos = _tensor(entry["pos"], np.float32)
    cell = _tensor(entry["cell"], np.float32).view(1, 3, 3)
    data = Data(cell=cell, pos=pos, natoms=len(pos))
    for key, value in entry.items():
        if key in ("pos", "cell", "natoms", "distances", "nedges"):
            continue
        if key == "atomic_numbers":
            data[key] = _tensor(value, np.uint8)
        elif key in ("tags", "fixed"):
            data[key] = _tensor(value, np.int32)
        elif key == "force":
            data.forces = _tensor(value, np.float32)
        elif key in _PER_GRAPH_FLOAT:
            data[key] = np.float64(as_numpy(value).reshape(-1)[0])
        elif key in _PER_GRAPH_INT:
            scalar = as_numpy(value).reshape(-1)[0]
            data[key] = str(scalar) if isinstance(scalar, str) else int(scalar)
        else:
            data[key] = _tensor(value)
    if "edge_index" in entry:
        row, col = data.edge_index
        if "edge_distance_vec" not in entry:
            shift = data.cell_offsets.float().view(-1, 1, 3).bmm(cell.expand(len(row), 3, 3))
            data.edge_distance_vec = pos[row] - pos[col] + shift.view(-1, 3)
        data.nedges = int(data.edge_index.shape[1])
    return data

"""A restricted unpickler for the PyTorch Geometric ``Data`` pickles stored in OC20 LMDB files.

Upstream OC20 LMDBs store every entry as ``pickle.dumps(torch_geometric.data.Data)``. Unpickling
runs arbitrary code, so :func:`load_oc20_pickle` only resolves the handful of classes and functions
such an entry contains (PyG ``Data`` and its storages, torch tensor rebuilding, ``OrderedDict`` and
numpy scalars) and refuses everything else. Nested tensor storages are loaded with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["UnsafePickleError", "load_oc20_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle asks for a class that an OC20 entry never contains."""


def _storage_from_bytes(data: bytes) -> Any:
    # Replaces torch.storage._load_from_bytes, which calls torch.load(weights_only=False).
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed() -> dict[tuple[str, str], Any]:
    import numpy as np
    import torch_geometric.data.data as pyg_data
    import torch_geometric.data.storage as pyg_storage

    allowed: dict[tuple[str, str], Any] = {
        ("torch_geometric.data.data", "Data"): pyg_data.Data,
        ("torch_geometric.data.data", "DataEdgeAttr"): pyg_data.DataEdgeAttr,
        ("torch_geometric.data.data", "DataTensorAttr"): pyg_data.DataTensorAttr,
        ("torch_geometric.data.storage", "GlobalStorage"): pyg_storage.GlobalStorage,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "Size"): torch.Size,
    }
    # numpy scalars (an int64 ``sid`` or float64 energy) pickle through these two names.
    try:  # numpy >= 2 moved the module; pickles written by numpy 1 still name numpy.core
        scalar = importlib.import_module("numpy._core.multiarray").scalar
    except ModuleNotFoundError:
        scalar = importlib.import_module("numpy.core.multiarray").scalar
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("Int64DType", "Float64DType", "Float32DType", "Int32DType"):
        if hasattr(np.dtypes, name):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


class _OC20Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: OC20 entries only contain PyG Data, "
                "tensors and numbers. The file is not a plain OC20 LMDB (or was tampered with); "
                "do not load it."
            ) from None


def load_oc20_pickle(payload: bytes) -> Any:
    """Unpickle one OC20 LMDB value while refusing every class an OC20 entry does not contain.

    Args:
        payload: the raw bytes of an LMDB value.

    Raises:
        UnsafePickleError: the pickle references a class outside the allow-list.
    """
    return _OC20Unpickler(io.BytesIO(payload)).load()

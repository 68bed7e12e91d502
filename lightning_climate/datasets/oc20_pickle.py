"""A restricted unpickler for the PyTorch Geometric ``Data`` pickles stored in OC20 LMDB files.

Upstream OC20 LMDBs store every entry as ``pickle.dumps(torch_geometric.data.Data)``. Unpickling
runs arbitrary code, so :func:`load_oc20_pickle` only resolves the handful of classes and functions
such an entry contains (PyG ``Data`` and its storages, tensor rebuilding, ``OrderedDict`` and numpy
scalars) and refuses everything else.

Each tensor of such a pickle carries its storage as the bytes of a legacy ``torch.save`` file
(``torch.storage._load_from_bytes``, which upstream loads with ``weights_only=False``). We parse
that small format ourselves (a few tiny pickles that may name only a storage class, then the raw
little-endian elements): it is safe, about ten times faster than ``torch.load``, and bounds memory.
Every tensor must fit in the storage it was pickled with, so an entry cannot declare shapes that
would materialise more bytes than the entry itself holds.
"""

from __future__ import annotations

import importlib
import io
import pickle
import struct
from collections import OrderedDict
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["UnsafePickleError", "load_oc20_pickle"]

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle asks for a class that an OC20 entry never contains."""


class _StorageClass:
    """Stands for ``torch.<X>Storage`` inside a storage file: only its dtype is needed."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _StorageHeaderUnpickler(pickle.Unpickler):
    """Reads the small pickles of a legacy storage file; only storage classes resolve."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageClass(_STORAGE_DTYPES[name])
        raise UnsafePickleError(f"refusing to unpickle {module}.{name} inside a tensor storage")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected storage reference {pid!r}")
        kind, numel = pid[1], pid[4]
        if not isinstance(kind, _StorageClass) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"unexpected storage reference {pid!r}")
        return kind.dtype, numel


def _storage_from_bytes(data: bytes) -> Tensor:
    """The flat tensor of one legacy ``torch.save`` storage file (replaces ``_load_from_bytes``).

    Layout: pickles of the magic number, the protocol version and a system-info dict, then of the
    storage (a persistent id naming its class and element count), then of the key list; then, per
    key, the element count as an int64 and the raw elements.
    """
    stream = io.BytesIO(data)
    reader = _StorageHeaderUnpickler(stream)
    if reader.load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("a tensor storage is not a torch.save file")
    reader.load()  # protocol version
    info = reader.load()
    if not (isinstance(info, dict) and info.get("little_endian", True)):
        raise pickle.UnpicklingError("big-endian tensor storages are not supported")
    dtype, numel = reader.load()
    keys = reader.load()
    if not (isinstance(keys, list) and len(keys) == 1):
        raise pickle.UnpicklingError("a tensor storage file must hold exactly one storage")
    start = stream.tell()
    (stored,) = struct.unpack_from("<q", data, start)
    itemsize = dtype.itemsize
    stop = start + 8 + numel * itemsize
    if stored != numel or stop > len(data):
        raise pickle.UnpicklingError(
            f"a tensor storage announces {numel} elements but holds {len(data) - start - 8} bytes"
        )
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data[start + 8 : stop]), dtype=dtype)


def _rebuild_tensor(
    storage: Tensor,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Tensor:
    """A view of ``storage`` (replaces ``torch._utils._rebuild_tensor_v2``), bounded by it."""
    if not isinstance(storage, Tensor):
        raise pickle.UnpicklingError("a tensor is rebuilt from something other than a storage")
    numel = 1
    for dim in size:
        numel *= dim
    # as_strided checks the view stays inside the storage; the count check also refuses
    # zero-stride views that would materialise more elements than were stored
    if numel > storage.numel() or min(size, default=0) < 0:
        raise pickle.UnpicklingError(
            f"a tensor of shape {tuple(size)} is declared over a storage of "
            f"{storage.numel()} elements"
        )
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def _numpy_scalar(scalar: Any) -> Any:
    """The numpy scalar constructor, limited to plain numbers (a crafted dtype could be huge)."""

    def build(dtype: np.dtype[Any], data: bytes = b"") -> Any:
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or dtype.itemsize > 16:
            raise UnsafePickleError(f"refusing a numpy scalar of dtype {dtype!r}")
        if len(data) != dtype.itemsize:
            raise pickle.UnpicklingError(f"a numpy {dtype} scalar holds {len(data)} bytes")
        return scalar(dtype, data)

    return build


@cache
def _allowed() -> dict[tuple[str, str], Any]:
    import torch_geometric.data.data as pyg_data
    import torch_geometric.data.storage as pyg_storage

    allowed: dict[tuple[str, str], Any] = {
        ("torch_geometric.data.data", "Data"): pyg_data.Data,
        ("torch_geometric.data.data", "DataEdgeAttr"): pyg_data.DataEdgeAttr,
        ("torch_geometric.data.data", "DataTensorAttr"): pyg_data.DataTensorAttr,
        ("torch_geometric.data.storage", "GlobalStorage"): pyg_storage.GlobalStorage,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
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
        allowed[(module, "scalar")] = _numpy_scalar(scalar)
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("Int64DType", "Float64DType", "Float32DType", "Int32DType"):
        if hasattr(np.dtypes, name):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


class _OC20Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: OC20 entries only contain PyG Data, "
                "tensors and numbers. The file is not a plain OC20 LMDB (or was tampered with); "
                "do not load it."
            ) from None


def load_oc20_pickle(payload: bytes | memoryview) -> Any:
    """Unpickle one OC20 LMDB value while refusing every class an OC20 entry does not contain.

    Args:
        payload: the raw bytes of an LMDB value.

    Raises:
        UnsafePickleError: the pickle references a class outside the allow-list.
        pickle.UnpicklingError: a tensor does not fit in its storage, or a storage is malformed.
    """
    return _OC20Unpickler(io.BytesIO(payload)).load()

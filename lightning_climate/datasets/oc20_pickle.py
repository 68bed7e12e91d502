"""A restricted unpickler for the PyTorch Geometric ``Data`` pickles stored in OC20 LMDB files.

Upstream OC20 LMDBs store every entry as ``pickle.dumps(torch_geometric.data.Data)``. Unpickling
runs arbitrary code, so :func:`load_oc20_pickle` only resolves the handful of classes and functions
such an entry contains (PyG ``Data`` and its storages, tensor rebuilding, ``OrderedDict`` and numpy
scalars) and refuses everything else.

Each tensor of such a pickle carries its storage as the bytes of a legacy ``torch.save`` file
(``torch.storage._load_from_bytes``, which upstream loads with ``weights_only=False``). We parse
that small format ourselves (a few tiny pickles that may name only a storage class, then the raw
little-endian elements): it is safe, about ten times faster than ``torch.load``, and bounds memory.
Tensors come back as NumPy arrays, which the reader validates before it builds torch tensors once.
Every tensor must fit in the storage it was pickled with, so an entry cannot declare shapes that
would materialise more bytes than the entry itself holds.
"""

from __future__ import annotations

import importlib
import io
import math
import pickle
import struct
from collections import OrderedDict
from functools import cache
from typing import Any

import numpy as np
import torch

__all__ = ["UnsafePickleError", "load_oc20_pickle"]

_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle asks for a class that an OC20 entry never contains."""


class _StorageClass:
    """Stands for ``torch.<X>Storage`` inside a storage file: only its dtype is needed."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
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


def _storage_from_bytes(data: bytes) -> np.ndarray:
    """The flat array of one legacy ``torch.save`` storage file (replaces ``_load_from_bytes``).

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
    if stored != numel or start + 8 + numel * dtype.itemsize > len(data):
        raise pickle.UnpicklingError(
            f"a tensor storage announces {numel} elements but holds {len(data) - start - 8} bytes"
        )
    # a copy: aligned, writable, and independent of the pickle's buffer
    return np.frombuffer(data, dtype=dtype, count=numel, offset=start + 8).copy()


def _rebuild_tensor(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """The array a pickled tensor views (replaces ``torch._utils._rebuild_tensor_v2``).

    Entries come back as NumPy arrays (the reader validates them in NumPy and builds tensors
    once). The view must stay inside its storage and hold no more elements than it: a crafted
    entry cannot declare shapes that materialise more bytes than it stores.
    """
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("a tensor is rebuilt from something other than a storage")
    size, stride = tuple(size), tuple(stride)
    if len(stride) != len(size) or min((*size, *stride, offset), default=0) < 0:
        raise pickle.UnpicklingError(f"a tensor has shape {size}, strides {stride}")
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else 0
    if numel > storage.size or (numel and last >= storage.size):
        raise pickle.UnpicklingError(
            f"a tensor of shape {size} is declared over a storage of {storage.size} elements"
        )
    contiguous = tuple(math.prod(size[k + 1 :]) for k in range(len(size)))
    if stride == contiguous or numel == 0:
        return storage[offset : offset + numel].reshape(size)
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
    ).copy()


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

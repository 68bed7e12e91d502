"""Small helpers shared across the package: optional imports and atomic file writes."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["atomic_path", "lazy_exports", "lazy_import"]

# import name -> the pip requirement that provides it
_PIP_NAMES = {
    "xarray": "xarray",
    "h5netcdf": "h5netcdf",
    "h5py": "h5py",
    "netCDF4": "netCDF4",
    "lmdb": "lmdb",
    "ase": "ase",
    "zarr": "zarr",
}


def lazy_import(name: str) -> ModuleType:
    """Import an optional dependency, or raise an error that says how to install it.

    Args:
        name: module to import, e.g. ``"xarray"`` or ``"vesin_torch"``.

    Raises:
        ModuleNotFoundError: naming the pip requirement and the extra that includes it.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        pip_name = _PIP_NAMES.get(name, name.split(".")[0])
        raise ModuleNotFoundError(
            f"{name} is not installed and is required for this feature. Install it with "
            f"`pip install {pip_name}` or `pip install 'lightning-climate[datasets]'`."
        ) from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it into place only on success.

    An interrupted writer (exception, Ctrl-C) leaves no file at ``path`` that a later run would
    trust: the partial temporary file is removed and any earlier file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the permissions of an ordinary new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def lazy_exports(
    package: str, submodules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` (PEP 562) importing each public name on first use.

    A package ``__init__`` using them does not import every submodule (and its dependencies, e.g.
    PyG for OC20) when one of them is imported. ``submodules`` maps each public name to the
    submodule of ``package`` that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name not in submodules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodules[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(submodules))

    return __getattr__, __dir__

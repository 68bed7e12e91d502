"""Safe loading of neuraloperator's Navier-Stokes files ``nsforcing_{train,test}_{res}.pt``.

neuraloperator's ``NavierStokesDataset`` (Zenodo record 12825163, resolutions 128 and 1024) stores
each split as a ``torch.save`` dict with two float tensors of shape ``(N, s, s)``: ``x``, the model
input (the forcing term of the forcing -> vorticity task of the multigrid-TFNO paper), and ``y``,
the vorticity it produces at the final time. The files are loaded with
``torch.load(weights_only=True)`` (never full pickle), memory-mapped when the file is in torch's zip
format, so a 1024^2 file is not read whole. Train and test are separate files named after
neuraloperator's ``PTDataset`` convention ``<name>_{train,test}_<res>.pt``; :func:`paired_test_file`
gives the test file of a training file.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["NEURALOP_SUFFIXES", "load_neuralop_pt", "paired_test_file"]

NEURALOP_SUFFIXES = (".pt", ".pth")
"""File suffixes read as neuraloperator ``.pt`` files."""

_KEYS = ("x", "y")
_TRAIN_FILE = re.compile(r"^(?P<name>.+)_train_(?P<res>\d+)(?P<suffix>\.pth?)$")


def paired_test_file(path: str | os.PathLike[str]) -> Path | None:
    """``<name>_test_<res>.pt`` beside a ``<name>_train_<res>.pt`` file, or ``None`` for other names.

    The test file need not exist; e.g. ``nsforcing_train_128.pt`` -> ``nsforcing_test_128.pt``.
    """
    path = Path(path)
    match = _TRAIN_FILE.match(path.name)
    if match is None:
        return None
    return path.with_name(f"{match['name']}_test_{match['res']}{match['suffix']}")


def load_neuralop_pt(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load ``x`` and ``y`` of a neuraloperator ``.pt`` file without executing pickled code.

    Args:
        path: an ``nsforcing_{train,test}_{res}.pt`` file (or any file of that layout).

    Returns:
        ``{"x": (N, s, s), "y": (N, s, s)}`` as stored (memory-mapped where possible).

    Raises:
        ValueError: if the file is unreadable, needs full pickle, or has another layout; the message
            names the file and the fix.
    """
    path = Path(path)
    try:
        data = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as err:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if needs is None:
            raise ValueError(_unreadable(path)) from err
        raise ValueError(
            f"{path} can only be loaded with full pickle (it references {needs.group(1)}), which "
            f"can execute arbitrary code, so this reader refuses it (it uses "
            f"torch.load(weights_only=True)). If you trust the file's source, convert it once: "
            f"`d = torch.load(path, weights_only=False); torch.save({{'x': d['x'], 'y': d['y']}}, "
            f"new_path)` and read new_path."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(_unreadable(path)) from err
    if not isinstance(data, dict) or any(key not in data for key in _KEYS):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path} is not a neuraloperator Navier-Stokes file: it must hold a dict with tensors "
            f"`x` and `y` of shape (N, s, s), found {found}. Point `path` at an "
            f"nsforcing_{{train,test}}_<res>.pt file."
        )
    x, y = data["x"], data["y"]
    for key, value in (("x", x), ("y", y)):
        if not isinstance(value, Tensor) or value.ndim != 3 or not value.is_floating_point():
            what = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"`{key}` in {path} must be a floating tensor of shape (N, s, s), got {what}; "
                f"this is not a neuraloperator Navier-Stokes file."
            )
    if x.shape != y.shape:
        raise ValueError(
            f"`x` {tuple(x.shape)} and `y` {tuple(y.shape)} in {path} must have the same shape "
            f"(N, s, s); the file is damaged or of another data set."
        )
    return {"x": x, "y": y}


def _unreadable(path: Path) -> str:
    return (
        f"{path} could not be read as a torch .pt file (truncated or corrupt?). Download it again "
        f"(neuraloperator's nsforcing_<res>.tgz, Zenodo record 12825163) and extract it."
    )

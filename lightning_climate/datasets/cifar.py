"""Reader of the CIFAR-10/100 files users download, and a generator of small sets in that format.

Layouts read (the two official distributions; the binary one is preferred when both exist):

- binary: ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``, records of
  1 label byte + 3072 pixel bytes; ``cifar-100-binary/train.bin`` and ``test.bin``, records of
  2 label bytes (coarse, fine) + 3072 pixel bytes. Pixels are 1024 red, 1024 green, 1024 blue,
  row-major 32x32.
- python: ``cifar-10-batches-py/data_batch_{1..5}`` / ``test_batch`` and
  ``cifar-100-python/train`` / ``test``, pickled dicts with ``b"data"`` (uint8 N x 3072) and
  ``b"labels"`` / ``b"fine_labels"``. They are read with an unpickler that only allows numpy array
  reconstruction, so a tampered file cannot run code.

Run ``python -m lightning_climate.datasets.cifar --root DIR`` to write a small generated set.
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_climate.utils import atomic_path

__all__ = ["CIFAR_LAYOUTS", "read_cifar", "write_cifar"]

Variant = Literal[10, 100]
Split = Literal["train", "test"]

#: variant -> format -> (folder, train files, test files, label bytes per record)
CIFAR_LAYOUTS: dict[int, dict[str, tuple[str, list[str], list[str], int]]] = {
    10: {
        "binary": (
            "cifar-10-batches-bin",
            [f"data_batch_{i}.bin" for i in range(1, 6)],
            ["test_batch.bin"],
            1,
        ),
        "python": (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            1,
        ),
    },
    100: {
        "binary": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2),
        "python": ("cifar-100-python", ["train"], ["test"], 2),
    },
}
_PIXELS = 3 * 32 * 32
# numpy's array reconstruction (moved to numpy._core in numpy 2): all that CIFAR pickles need.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR file: only numpy arrays are "
                "expected. Use the binary CIFAR distribution if this file is not the official one."
            )
        return super().find_class(module, name)


def _find_layout(root: Path, variant: Variant) -> tuple[str, Path, list[str], list[str], int]:
    for fmt in ("binary", "python"):
        folder, train, test, label_bytes = CIFAR_LAYOUTS[variant][fmt]
        if (root / folder).is_dir():
            return fmt, root / folder, train, test, label_bytes
    folders = " or ".join(str(root / CIFAR_LAYOUTS[variant][f][0]) for f in ("binary", "python"))
    raise FileNotFoundError(
        f"CIFAR-{variant} not found: expected {folders}. Download the binary or python version of "
        f"CIFAR-{variant} and extract it into {root} (no download happens at run time), or write "
        f"a small generated set with `python -m lightning_climate.datasets.cifar --root {root} "
        f"--variant {variant}`."
    )


def read_cifar(
    root: str | Path, variant: Variant = 10, split: Split = "train"
) -> tuple[Tensor, Tensor]:
    """Read one split of CIFAR-10/100 from ``root``.

    Returns:
        ``uint8`` images ``(N, 3, 32, 32)`` and ``int64`` labels ``(N,)`` (fine labels for
        CIFAR-100), in file order.

    Raises:
        FileNotFoundError: naming the expected folders and how to provide them.
        ValueError: a file whose size or content does not match the format.
    """
    if variant not in CIFAR_LAYOUTS:
        raise ValueError(f"variant must be 10 or 100, got {variant!r}.")
    fmt, folder, train, test, label_bytes = _find_layout(Path(root), variant)
    images, labels = [], []
    for name in train if split == "train" else test:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"missing CIFAR file {path}; the extracted folder is incomplete."
            )
        if fmt == "binary":
            raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
            record = label_bytes + _PIXELS
            if raw.size % record:
                raise ValueError(
                    f"{path}: size {raw.size} is not a multiple of {record}-byte records."
                )
            raw = raw.reshape(-1, record)
            images.append(raw[:, label_bytes:])
            labels.append(raw[:, label_bytes - 1].astype(np.int64))
        else:
            with path.open("rb") as f:
                batch = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
            key = b"labels" if variant == 10 else b"fine_labels"
            if b"data" not in batch or key not in batch:
                raise ValueError(f"{path}: expected keys b'data' and {key!r}, got {list(batch)}.")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, _PIXELS))
            labels.append(np.asarray(batch[key], dtype=np.int64))
    image = torch.from_numpy(np.concatenate(images)).reshape(-1, 3, 32, 32)
    label = torch.from_numpy(np.concatenate(labels))
    if len(image) != len(label) or (len(label) and int(label.max()) >= variant):
        raise ValueError(f"{folder}: labels do not match CIFAR-{variant}.")
    return image, label


def write_cifar(
    root: str | Path,
    variant: Variant = 10,
    fmt: Literal["binary", "python"] = "binary",
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write a small CIFAR-format data set whose classes are learnable colour/stripe patterns.

    Class ``c`` has a mean colour and a stripe frequency drawn from ``seed``; each image adds
    noise. Files are written atomically in exactly the official layout of ``fmt``.

    Returns:
        The folder written (e.g. ``root/cifar-10-batches-bin``).
    """
    rng = np.random.default_rng(seed)
    folder_name, train_files, test_files, label_bytes = CIFAR_LAYOUTS[variant][fmt]
    folder = Path(root) / folder_name
    colours = rng.uniform(40, 215, size=(variant, 3))
    freqs = rng.uniform(0.2, 1.5, size=variant)
    yy = np.arange(32)[:, None] + np.zeros((1, 32))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % variant)  # balanced, like the real sets
        stripes = 30 * np.sin(freqs[labels][:, None, None] * yy[None])
        pixels = (
            colours[labels][:, :, None, None] + stripes[:, None] + rng.normal(0, 20, (n, 3, 32, 32))
        )
        return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, _PIXELS), labels

    for files, n in ((train_files, n_train), (test_files, n_test)):
        chunks = np.array_split(np.arange(n), len(files))
        data, labels = make(n)
        for name, idx in zip(files, chunks, strict=True):
            with atomic_path(folder / name) as tmp:
                if fmt == "binary":
                    head = np.stack(
                        [labels[idx] // 5 if variant == 100 else labels[idx]] * label_bytes, 1
                    )
                    head[:, -1] = labels[idx]
                    tmp.write_bytes(
                        np.concatenate([head.astype(np.uint8), data[idx]], axis=1).tobytes()
                    )
                else:
                    key = b"labels" if variant == 10 else b"fine_labels"
                    batch = {
                        b"batch_label": name.encode(),
                        key: labels[idx].tolist(),
                        b"data": data[idx],
                    }
                    with tmp.open("wb") as f:
                        pickle.dump(batch, f, protocol=2)
    return folder


def _main() -> None:
    parser = argparse.ArgumentParser(description="Write a small CIFAR-format data set.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--variant", type=int, choices=[10, 100], default=10)
    parser.add_argument("--format", choices=["binary", "python"], default="binary")
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = write_cifar(args.root, args.variant, args.format, args.n_train, args.n_test, args.seed)
    print(f"wrote {folder}")


if __name__ == "__main__":
    _main()

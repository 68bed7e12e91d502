from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_climate.datasets.cifar import read_cifar, write_cifar


@pytest.mark.parametrize("variant", [10, 100])
@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_generated_files_follow_official_layout(tmp_path: Path, variant: int, fmt: str) -> None:
    folder = write_cifar(tmp_path, variant, fmt, n_train=50, n_test=20, seed=1)
    names = sorted(p.name for p in folder.iterdir())
    expected = {
        (10, "binary"): [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ],
        (10, "python"): [
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
        ],
        (100, "binary"): ["test.bin", "train.bin"],
        (100, "python"): ["test", "train"],
    }[(variant, fmt)]
    assert names == expected
    images, labels = read_cifar(tmp_path, variant, "train")
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and int(labels.max()) < variant
    test_images, _ = read_cifar(tmp_path, variant, "test")
    assert len(test_images) == 20


def test_binary_record_layout_by_hand(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    pixels = np.arange(3072, dtype=np.int64) % 256
    record = np.concatenate([[7], pixels]).astype(np.uint8)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(record.tobytes())
    (folder / "test_batch.bin").write_bytes(record.tobytes())
    images, labels = read_cifar(tmp_path, 10, "train")
    assert labels.tolist() == [7] * 5
    # channel-major: the first 1024 bytes are red, row-major 32x32
    assert int(images[0, 0, 0, 1]) == 1
    assert int(images[0, 1, 0, 0]) == 1024 % 256
    assert int(images[0, 0, 1, 0]) == 32


def test_binary_and_python_formats_agree(tmp_path: Path) -> None:
    write_cifar(tmp_path / "a", 100, "binary", n_train=30, n_test=10, seed=4)
    write_cifar(tmp_path / "b", 100, "python", n_train=30, n_test=10, seed=4)
    for split in ("train", "test"):
        xa, ya = read_cifar(tmp_path / "a", 100, split)  # type: ignore[arg-type]
        xb, yb = read_cifar(tmp_path / "b", 100, split)  # type: ignore[arg-type]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


class Evil:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


def test_python_format_refuses_foreign_objects(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load builtins\.print"):
        read_cifar(tmp_path, 100, "train")


def test_missing_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-bin or .*cifar-10-batches-py"):
        read_cifar(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match=r"python -m lightning_climate\.datasets\.cifar"):
        read_cifar(tmp_path, 100)
    (tmp_path / "cifar-10-batches-bin").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data_batch_1\.bin"):
        read_cifar(tmp_path, 10)


def test_truncated_binary_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, 100, "binary", n_train=3, n_test=2)
    path = tmp_path / "cifar-100-binary" / "train.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="not a multiple of 3074-byte records"):
        read_cifar(tmp_path, 100)

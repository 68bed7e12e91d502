"""``OC20DataModule(manifest=...)`` checks real OC20 LMDBs laid out as fairchem's download has them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.datasets import write_oc20_lmdb
from lightning_climate.datasets.integrity.stamp import read_stamp
from lightning_climate.datasets.oc20 import read_npz_batch

#: three real OC20 IS2RE systems (a copy of shared/oc20_sample/is2re_bs3.npz)
SAMPLE = Path(__file__).parents[1] / "data" / "oc20" / "is2re_bs3.npz"


@pytest.fixture
def is2re(tmp_path: Path) -> Path:
    """``is2re/all/{train,val_id}/data.lmdb`` (pickled, as downloaded) and ``MD5SUMS`` of them."""
    sample = shutil.copy(SAMPLE, tmp_path / "is2re_bs3.npz")
    root = tmp_path / "is2re"
    entries = read_npz_batch(sample)
    write_oc20_lmdb(root / "all" / "train" / "data.lmdb", entries, format="pickle")
    write_oc20_lmdb(root / "all" / "val_id" / "data.lmdb", entries[:2], format="pickle")
    (root / "all" / "train" / "data.lmdb-lock").write_bytes(b"\0" * 64)  # changes on every open
    # what docs/oc20.md tells users to run once after extracting the archive
    sums = subprocess.run(
        "find . -name '*.lmdb' | sort | xargs md5sum", shell=True, cwd=root,
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    (root / "MD5SUMS").write_text(sums)
    return root


def datamodule(root: Path) -> OC20DataModule:
    return OC20DataModule(
        train_path=str(root / "all" / "train" / "data.lmdb"),
        val_paths={"val_id": str(root / "all" / "val_id" / "data.lmdb")},
        allow_pickle=True, batch_size=3, manifest=str(root / "MD5SUMS"),
    )  # fmt: skip


def test_intact_download_is_read_and_not_hashed_twice(is2re: Path, hashed_files: list[str]) -> None:
    assert [line.split()[1] for line in (is2re / "MD5SUMS").read_text().splitlines()] == [
        "./all/train/data.lmdb",
        "./all/val_id/data.lmdb",
    ]
    dm = datamodule(is2re)
    dm.prepare_data()
    assert hashed_files == ["data.lmdb", "data.lmdb"]
    dm.setup("fit")
    mean = dm.train_statistics()["y_relaxed_mean"].item()
    assert mean == pytest.approx((0.871002 + 0.587996 - 4.918020) / 3, abs=1e-5)
    assert next(iter(dm.val_dataloader()[0])).num_graphs == 2
    (is2re / "all" / "train" / "data.lmdb-lock").write_bytes(b"\1" * 64)  # not in the manifest
    again = datamodule(is2re)
    again.prepare_data()  # reading did not change the LMDBs: nothing is hashed again
    assert hashed_files == ["data.lmdb", "data.lmdb"]
    assert len(read_stamp(is2re / "MD5SUMS")) == 2


def test_damaged_and_missing_lmdbs_are_named(is2re: Path) -> None:
    datamodule(is2re).prepare_data()
    lmdb = is2re / "all" / "val_id" / "data.lmdb"
    raw = bytearray(lmdb.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    lmdb.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as error:
        datamodule(is2re).prepare_data()
    assert "OC20DataModule: the data does not match manifest=" in str(error.value)
    assert "DAMAGED  ./all/val_id/data.lmdb (md5 expected" in str(error.value)
    (is2re / "all" / "train" / "data.lmdb").unlink()
    with pytest.raises(ValueError, match=r"(?s)0 of 2 files OK.*MISSING  \./all/train/data\.lmdb"):
        datamodule(is2re).prepare_data()

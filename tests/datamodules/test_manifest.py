"""Every datamodule checks ``manifest`` in ``prepare_data``, before anything is read."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch import Trainer

from lightning_climate.datamodules import (
    CIFARDataModule,
    ClimateSetDataModule,
    ERA5DataModule,
    NavierStokesDataModule,
    OC20DataModule,
)
from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets import integrity
from lightning_climate.datasets.integrity.stamp import read_stamp, stamp_path

CONF = Path(__file__).parents[1] / "conf"


def flip_byte(path: Path, offset: int = 4096) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 0x20
    path.write_bytes(bytes(raw))


@pytest.fixture
def download(tmp_path: Path, navier_stokes_file: Path) -> Path:
    """A 'downloaded' data folder: a Navier–Stokes file and a README, with their SHA256SUMS."""
    folder = tmp_path / "download"
    folder.mkdir()
    shutil.copy(navier_stokes_file, folder / "ns.h5")
    (folder / "README").write_text("tiny generated Navier-Stokes data\n")
    sums = subprocess.run(
        ["sha256sum", "ns.h5", "README"], cwd=folder, check=True, capture_output=True, text=True
    ).stdout
    (folder / "SHA256SUMS").write_text(sums)
    return folder


def navier_stokes(folder: Path, manifest: Path | None) -> NavierStokesDataModule:
    return NavierStokesDataModule(
        root=folder / "ns.h5", resolution=16, val_fraction=0.25, test_fraction=0.25,
        manifest=manifest,
    )  # fmt: skip


#: every datamodule that reads downloaded files, built without reading anything
DATAMODULES: dict[str, Callable[[Path, Path], BaseDataModule]] = {
    "era5": lambda folder, m: ERA5DataModule(root=str(folder / "*.nc"), manifest=m),
    "oc20": lambda folder, m: OC20DataModule(train_path=str(folder / "data.lmdb"), manifest=m),
    "navier_stokes": navier_stokes,
    "climateset": lambda folder, m: ClimateSetDataModule(root=str(folder), manifest=m),
    "cifar": lambda folder, m: CIFARDataModule(root=folder, manifest=m),
}


def test_good_manifest_passes_and_the_stamp_skips_hashing(
    download: Path, hashed_files: list[str]
) -> None:
    manifest = download / "SHA256SUMS"
    dm = navier_stokes(download, manifest)
    dm.prepare_data()
    assert hashed_files == ["ns.h5", "README"]
    assert set(read_stamp(manifest)) == {str(download / "ns.h5"), str(download / "README")}
    dm.prepare_data()  # once per process
    again = navier_stokes(download, manifest)
    again.prepare_data()  # a new run: the stamp says both files are unchanged
    assert hashed_files == ["ns.h5", "README"]
    again.setup("fit")
    assert len(again.train_dataset) == 16  # 4 of 8 trajectories x 4 snapshots


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_a_flipped_byte_is_named_before_anything_is_read(download: Path, name: str) -> None:
    manifest = download / "SHA256SUMS"
    navier_stokes(download, manifest).prepare_data()  # stamped as intact
    flip_byte(download / "ns.h5")  # same size, but the times change: hashed again
    dm = DATAMODULES[name](download, manifest)
    with pytest.raises(ValueError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert f"{type(dm).__name__}: the data does not match manifest='{manifest}'" in message
    assert "1 of 2 files OK" in message and "DAMAGED  ns.h5 (sha256 expected" in message
    assert "download the files marked MISSING or DAMAGED again" in message
    assert "or remove `manifest` to skip the check" in message
    record = read_stamp(manifest)[str(download / "ns.h5")]
    assert record["actual"] != record["digest"]  # recorded as damaged: every rank reads it


def test_a_missing_listed_file_is_named(download: Path) -> None:
    (download / "README").unlink()
    with pytest.raises(ValueError, match=r"(?s)1 of 2 files OK.*  MISSING  README"):
        navier_stokes(download, download / "SHA256SUMS").prepare_data()


def test_manifest_paths_may_be_absolute_and_elsewhere(tmp_path: Path, download: Path) -> None:
    elsewhere = tmp_path / "sums" / "MD5SUMS"
    elsewhere.parent.mkdir()
    sums = subprocess.run(
        ["md5sum", str(download / "ns.h5")], check=True, capture_output=True, text=True
    ).stdout
    elsewhere.write_text(sums)
    dm = navier_stokes(download, elsewhere)
    dm.prepare_data()
    assert stamp_path(elsewhere).is_file() and list(read_stamp(elsewhere)) == [
        str(download / "ns.h5")
    ]


def test_bad_manifest_argument(download: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest='.*/nope' does not exist\. Point"):
        navier_stokes(download, download / "nope").prepare_data()
    empty = download / "EMPTY"
    empty.write_text("# no files\n")
    with pytest.raises(ValueError, match="lists no file; point it at a checksum list"):
        navier_stokes(download, empty).prepare_data()


def test_unwritable_stamp_warns(download: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(integrity, "write_stamp", lambda manifest, files: None)
    with pytest.warns(UserWarning, match="could not write the stamp next to .*every run hashes"):
        navier_stokes(download, download / "SHA256SUMS").prepare_data()


def test_trainer_stops_before_training(download: Path) -> None:
    from lightning_climate.models import SRCNN
    from lightning_climate.tasks import DownscalingTask

    flip_byte(download / "ns.h5")
    task = DownscalingTask(model=SRCNN(in_channels=1, factor=2, hidden_channels=4))
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, barebones=True)
    with pytest.raises(ValueError, match=r"DAMAGED  ns\.h5"):
        trainer.fit(task, navier_stokes(download, download / "SHA256SUMS"))
    assert trainer.global_step == 0


def test_yaml_route_through_the_cli(download: Path, run_cli: Callable) -> None:
    manifest = download / "SHA256SUMS"
    config = CONF / "navier_stokes_dfno.yaml"
    extra = ("--data.init_args.manifest", str(manifest))
    record = run_cli("test", config, *extra, root=download / "ns.h5")
    assert record["datamodule"].manifest == manifest
    assert set(read_stamp(manifest)) == {str(download / "ns.h5"), str(download / "README")}
    flip_byte(download / "README", 3)
    with pytest.raises(ValueError, match=r"DAMAGED  README \(sha256"):
        run_cli("test", config, *extra, root=download / "ns.h5")


def test_with_several_processes_every_rank_raises_from_the_stamp(
    download: Path, hashed_files: list[str]
) -> None:
    flip_byte(download / "ns.h5")
    rank0 = navier_stokes(download, download / "SHA256SUMS")
    rank0.trainer = SimpleNamespace(world_size=2)  # what prepare_data sees under DDP
    rank0.prepare_data()  # hashes, records, and leaves the raising to setup on every rank
    assert hashed_files == ["ns.h5", "README"]
    for dm in (rank0, navier_stokes(download, download / "SHA256SUMS")):  # rank 0, rank 1
        with pytest.raises(ValueError, match=r"DAMAGED  ns\.h5 \(sha256 expected"):
            dm.setup("fit")
    assert hashed_files == ["ns.h5", "README"]  # the other ranks only read the stamp
    assert rank0.train_dataset is None  # nothing was read

"""RecordStore: the append-only Zarr store behind DifficultyScores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lightning_climate.io import RecordStore

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

INDEX = np.array([0, 5, 8])


def read(path: Path) -> xr.Dataset:
    with xr.open_zarr(path) as ds:
        return ds.load()


def new_store(tmp_path: Path) -> RecordStore:
    store = RecordStore(tmp_path / "scores.zarr")
    store.create(INDEX, {"seed": 1, "title": "a"})
    return store


def test_records_read_back_as_xarray_dataset(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert store.records() == [] and read(store.path).sizes == {"epoch": 0, "index": 3}
    store.append(0, 0, {"loss": np.array([0.1, 0.2, 0.3])}, {"seed": 1, "title": "a"})
    store.append(1, 20, {"loss": np.array([1.0, 2.0, 3.0])}, {"seed": 1, "title": "b"})
    ds = read(store.path)
    assert dict(ds.sizes) == {"epoch": 2, "index": 3}
    assert list(ds.data_vars) == ["loss"]
    assert ds["epoch"].values.tolist() == [0, 1]  # integer coordinates, epoch 0 not masked
    assert ds["global_step"].values.tolist() == [0, 20] and "global_step" in ds.coords
    assert ds["index"].values.tolist() == [0, 5, 8]
    np.testing.assert_array_equal(ds["loss"].values, [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    assert ds.attrs == {"seed": 1, "title": "b"}  # the newest record's attributes
    assert store.records() == [(0, 0), (1, 20)]
    with xr.open_dataset(store.path, engine="zarr") as other:
        np.testing.assert_array_equal(other["loss"].values, ds["loss"].values)


def test_one_chunk_per_record(tmp_path: Path) -> None:
    """An append writes new chunks; the earlier records' chunk files stay untouched."""
    store = new_store(tmp_path)
    store.append(0, 1, {"loss": np.zeros(3) + 0.5}, {})
    first = store.path / "loss" / "0.0"
    stamp = first.stat().st_mtime_ns, first.read_bytes()
    for epoch in range(1, 4):
        store.append(epoch, epoch + 1, {"loss": np.full(3, float(epoch))}, {})
    assert (first.stat().st_mtime_ns, first.read_bytes()) == stamp
    assert sorted(p.name for p in (store.path / "loss").glob("[0-9]*")) == [
        "0.0",
        "1.0",
        "2.0",
        "3.0",
    ]
    assert json.loads((store.path / "loss" / ".zarray").read_text())["chunks"] == [1, 3]


def test_variable_first_seen_later_is_nan_in_earlier_records(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.append(0, 1, {"loss": np.zeros(3)}, {})
    store.append(1, 2, {"loss": np.ones(3), "grand": np.array([4.0, 5.0, 6.0])}, {})
    store.append(2, 3, {"loss": np.ones(3)}, {})
    grand = read(store.path)["grand"].values
    assert np.isnan(grand[0]).all() and np.isnan(grand[2]).all()
    np.testing.assert_array_equal(grand[1], [4.0, 5.0, 6.0])


class Killed(BaseException):
    """Stands for a kill: nothing after it runs."""


def test_interrupted_append_is_invisible_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path)
    store.append(0, 1, {"loss": np.zeros(3)}, {"n": 1})
    before = read(store.path)

    def kill(self: RecordStore) -> None:
        raise Killed

    monkeypatch.setattr(RecordStore, "_commit", kill)
    with pytest.raises(Killed):  # chunks and shapes of record 1 are written, the commit is not
        store.append(1, 2, {"loss": np.ones(3), "grand": np.ones(3)}, {"n": 2})
    monkeypatch.undo()
    (store.path / "loss" / "0.0.abc.partial").write_bytes(b"half")  # a chunk write cut short
    (tmp_path / ".scores.zarr.x1.tmp").mkdir()  # a store creation cut short
    after = read(store.path)
    assert after.identical(before)  # readers see the previous records only
    reopened = RecordStore(store.path)
    removed = reopened.repair()
    assert ".scores.zarr.x1.tmp" in removed and "loss/0.0.abc.partial" in removed
    assert "loss[1:]" in removed and "grand[1:]" in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.zarr"]
    reopened.append(1, 3, {"loss": np.full(3, 7.0)}, {"n": 3})
    ds = read(store.path)
    assert reopened.records() == [(0, 1), (1, 3)]
    np.testing.assert_array_equal(ds["loss"].values[1], [7.0, 7.0, 7.0])
    assert np.isnan(ds["grand"].values).all()  # the killed record's values never appear


def test_create_never_replaces_anything(tmp_path: Path) -> None:
    path = tmp_path / "scores.zarr"
    path.write_text("someone's file")
    with pytest.raises(
        FileExistsError, match=r"scores\.zarr exists; RecordStore\.create never replaces"
    ):
        RecordStore(path).create(INDEX, {})
    assert path.read_text() == "someone's file"


def test_append_with_wrong_number_of_examples_names_the_store(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.append(0, 1, {"loss": np.zeros(3)}, {})
    with pytest.raises(
        ValueError, match=r"scores\.zarr holds 3 examples per record.*'loss': \(4,\)"
    ):
        store.append(1, 2, {"loss": np.zeros(4)}, {})
    assert store.records() == [(0, 1)]


def test_truncate_drops_records_written_after_a_checkpoint(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.append(0, 5, {"loss": np.full(3, 0.0)}, {"seed": 7})
    store.append(1, 10, {"loss": np.full(3, 1.0), "vog": np.full(3, 9.0)}, {"seed": 7})
    store.append(2, 15, {"loss": np.full(3, 2.0)}, {"seed": 7})
    store.truncate(1)
    assert store.records() == [(0, 5)]
    store.append(1, 12, {"loss": np.full(3, 3.0)}, {"seed": 7})
    ds = read(store.path)
    assert store.records() == [(0, 5), (1, 12)]
    np.testing.assert_array_equal(ds["loss"].values[:, 0], [0.0, 3.0])
    assert np.isnan(ds["vog"].values).all()  # the dropped record's vog is gone, not resurrected
    with pytest.raises(ValueError, match="holds 2 records; cannot keep 5"):
        store.truncate(5)

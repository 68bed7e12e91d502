"""RecordFile: the append-only NetCDF file behind DifficultyScores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_climate.callbacks.record_file import RecordFile

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

INDEX = np.array([3, 5, 8])


def read(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def test_records_read_back_as_xarray_dataset(tmp_path: Path) -> None:
    file = RecordFile(tmp_path / "scores.nc")
    file.create(INDEX, 0, 10, {"loss": np.array([0.1, 0.2, 0.3])}, {"seed": 1, "title": "a"})
    file.append(1, 20, {"loss": np.array([1.0, 2.0, 3.0])}, {"seed": 1, "title": "b"})
    ds = read(file.path)
    assert dict(ds.sizes) == {"epoch": 2, "index": 3}
    assert list(ds.data_vars) == ["loss"]
    assert ds["global_step"].values.tolist() == [10, 20]
    assert "global_step" in ds.coords
    assert ds["index"].values.tolist() == [3, 5, 8]
    np.testing.assert_array_equal(ds["loss"].values, [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    assert ds.attrs == {"seed": 1, "title": "b"}  # the newest record's attributes
    assert file.records() == [(0, 10), (1, 20)]


def test_variable_first_seen_later_is_nan_in_earlier_records(tmp_path: Path) -> None:
    file = RecordFile(tmp_path / "scores.nc")
    file.create(INDEX, 0, 1, {"loss": np.zeros(3)}, {})
    file.append(1, 2, {"loss": np.ones(3), "grand": np.array([4.0, 5.0, 6.0])}, {})
    file.append(2, 3, {"loss": np.ones(3)}, {})
    grand = read(file.path)["grand"].values
    assert np.isnan(grand[0]).all() and np.isnan(grand[2]).all()
    np.testing.assert_array_equal(grand[1], [4.0, 5.0, 6.0])


def test_failed_append_leaves_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = RecordFile(tmp_path / "scores.nc")
    file.create(INDEX, 0, 1, {"loss": np.zeros(3)}, {})
    before = file.path.read_bytes()

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(RecordFile, "_put", crash)
    with pytest.raises(KeyboardInterrupt):
        file.append(1, 2, {"loss": np.ones(3)}, {})
    assert file.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.nc"]  # no temporary left


def test_append_with_wrong_number_of_examples_names_the_file(tmp_path: Path) -> None:
    file = RecordFile(tmp_path / "scores.nc")
    file.create(INDEX, 0, 1, {"loss": np.zeros(3)}, {})
    with pytest.raises(ValueError, match=r"scores\.nc holds 3 examples per record.*'loss': \(4,\)"):
        file.append(1, 2, {"loss": np.zeros(4)}, {})
    assert file.records() == [(0, 1)]


def test_keep_drops_records_written_after_a_checkpoint(tmp_path: Path) -> None:
    file = RecordFile(tmp_path / "scores.nc")
    file.create(INDEX, 0, 5, {"loss": np.full(3, 0.0)}, {"seed": 7})
    file.append(1, 10, {"loss": np.full(3, 1.0), "vog": np.full(3, 9.0)}, {"seed": 7})
    file.append(2, 15, {"loss": np.full(3, 2.0)}, {"seed": 7})
    file.keep([(0, 5), (2, 15)])
    ds = read(file.path)
    assert file.records() == [(0, 5), (2, 15)]
    np.testing.assert_array_equal(ds["loss"].values[:, 0], [0.0, 2.0])
    assert np.isnan(ds["vog"].values).all()
    assert ds.attrs["seed"] == 7
    file.append(3, 20, {"loss": np.full(3, 3.0)}, {"seed": 7})
    assert file.records() == [(0, 5), (2, 15), (3, 20)]

"""Each difficulty example YAML runs through the real CLI (one batch) and writes its score file."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
from conftest import EXAMPLES, RunCLI


@pytest.mark.parametrize(
    ("name", "architecture"),
    [("difficulty_digits_mlp.yaml", "ReLUMLP"), ("difficulty_digits_cnn.yaml", "ReLUCNN")],
)
def test_example_runs(name: str, architecture: str, tmp_path: Path, run_cli: RunCLI) -> None:
    run_cli("fit", EXAMPLES / name, "--trainer.fast_dev_run", "1", tiny=False)
    (path,) = tmp_path.rglob("difficulty_scores.zarr")
    with xr.open_zarr(path) as ds:
        assert ds.attrs["architecture"] == architecture
        assert ds.sizes["index"] == 1077  # the training split of the 1797 digits
        assert ds["epoch"].values.tolist() == [0]
        assert 0.0 <= float(ds["accuracy"].mean()) <= 1.0
        assert float(ds["vog"].max()) == 0.0  # a single checkpoint has no variance yet

"""ClimateSet reads one sample at a time: memory does not grow with the number of samples read."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from lightning_climate.datasets import ClimateSet, generate_climateset

YEARS = list(range(2015, 2023))
GRID = (32, 48)


def test_reading_every_sample_holds_about_one_sample(tmp_path: Path) -> None:
    generate_climateset(
        tmp_path, ["NorESM2-LM"], ["ssp126"], YEARS, grid_shape=GRID, progress=False
    )
    dataset = ClimateSet(tmp_path, ["NorESM2-LM"], ["ssp126"], YEARS)
    sample_bytes = 12 * (4 + 2) * GRID[0] * GRID[1] * 4  # float32 x and y of one year
    first = dataset[0]
    assert first["x"].nbytes + first["y"].nbytes == sample_bytes
    del first
    tracemalloc.start()  # numpy buffers (and so the samples' tensors) are traced
    try:
        for i in range(len(dataset)):
            sample = dataset[i]
            assert int(sample["year"]) == YEARS[i]
            del sample
        _, lazy_peak = tracemalloc.get_traced_memory()
        dataset.load_into_memory()  # the other way: every sample kept
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == 8
    assert lazy_peak < 3 * sample_bytes
    assert held >= len(dataset) * sample_bytes

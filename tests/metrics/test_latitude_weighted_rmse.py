from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_utils import free_port

from lightning_climate.metrics import LatitudeWeightedRMSE, latitude_weighted_mse, latitude_weights

LAT96 = np.linspace(-90, 90, 96)
LAT_WB = np.linspace(-87.1875, 87.1875, 32)


def reference(preds: np.ndarray, target: np.ndarray, lat: np.ndarray) -> float:
    """WeatherBench formula: weights cos(lat)/mean(cos(lat)) on the squared error, mean, sqrt."""
    w = np.cos(np.deg2rad(lat))
    w = w / w.mean()
    return float(np.sqrt(np.mean((preds - target) ** 2 * w[:, None])))


def test_weights_match_known_values() -> None:
    assert np.cos(np.deg2rad(LAT96)).mean() == pytest.approx(0.62993, abs=1e-5)
    assert np.cos(np.deg2rad(LAT_WB)).mean() == pytest.approx(0.63688, abs=1e-5)
    for lat in (LAT96, LAT_WB):
        w = latitude_weights(lat)
        assert w.mean().item() == pytest.approx(1.0) and w.min().item() >= 0.0
        np.testing.assert_allclose(
            w.numpy(), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean()
        )


def test_reference_code_weights_are_refused() -> None:
    # The ClimateSet training loss weighted the 144 longitude columns with cos(index degrees).
    raw = np.cos(np.pi * np.arange(144) / 180)
    assert raw.mean() == pytest.approx(0.2401, abs=1e-4)
    buggy = raw / raw.mean()
    assert buggy.max() == pytest.approx(4.16, abs=0.01)
    assert (buggy < 0).sum() == 53 and buggy.min() == pytest.approx(-3.33, abs=0.01)
    # Passing those "latitudes" (0..143) is an error instead of silent negative weights.
    with pytest.raises(ValueError, match=r"\[-90, 90\].*max 143.*not the longitude"):
        latitude_weights(np.arange(144.0))
    with pytest.raises(ValueError, match=r"\[-90, 90\]"):
        LatitudeWeightedRMSE(latitudes=[-100.0, 0.0])
    with pytest.raises(ValueError, match="non-empty"):
        latitude_weights([])


def test_constant_error_gives_the_constant_and_poles_count_less() -> None:
    metric = LatitudeWeightedRMSE(LAT96)
    metric.update(torch.zeros(3, 96, 144), torch.full((3, 96, 144), 1.75))
    assert metric.compute().item() == pytest.approx(1.75, rel=1e-6)
    polar, equator = torch.zeros(1, 96, 144), torch.zeros(1, 96, 144)
    polar[:, -5:] = 1.0
    equator[:, 45:50] = 1.0
    zero = torch.zeros(1, 96, 144)
    polar_rmse = LatitudeWeightedRMSE(LAT96)(polar, zero).item()
    equator_rmse = LatitudeWeightedRMSE(LAT96)(equator, zero).item()
    assert polar_rmse == pytest.approx(
        reference(polar[0].numpy(), zero[0].numpy(), LAT96), rel=1e-6
    )
    assert equator_rmse == pytest.approx(
        reference(equator[0].numpy(), zero[0].numpy(), LAT96), rel=1e-6
    )
    assert polar_rmse < 0.3 * equator_rmse
    # Unweighted, both bands would give the same RMSE.
    assert torch.sqrt((polar**2).mean()) == torch.sqrt((equator**2).mean())


def test_matches_numpy_over_uneven_batches_per_variable() -> None:
    rng = np.random.default_rng(0)
    preds = rng.normal(size=(7, 12, 2, 32, 64)) * np.array([1.0, 3.0])[:, None, None]
    target = rng.normal(size=preds.shape)
    metric = LatitudeWeightedRMSE(LAT_WB, num_outputs=2)
    for chunk in (slice(0, 3), slice(3, 4), slice(4, 7)):
        metric.update(
            torch.from_numpy(preds[chunk]).float(), torch.from_numpy(target[chunk]).float()
        )
    expected = [reference(preds[:, :, c], target[:, :, c], LAT_WB) for c in range(2)]
    np.testing.assert_allclose(metric.compute().numpy(), expected, rtol=1e-5)
    metric.reset()
    assert metric.weighted_sum.sum().item() == 0.0
    single = LatitudeWeightedRMSE(LAT_WB)
    single.update(torch.from_numpy(preds[:, :, 1]), torch.from_numpy(target[:, :, 1]))
    assert single.compute().item() == pytest.approx(expected[1], rel=1e-6)
    loss = latitude_weighted_mse(
        torch.from_numpy(preds[:, :, 1]),
        torch.from_numpy(target[:, :, 1]),
        latitude_weights(LAT_WB),
    )
    assert loss.item() == pytest.approx(expected[1] ** 2, rel=1e-6)


def test_shape_errors() -> None:
    metric = LatitudeWeightedRMSE(LAT_WB, num_outputs=2)
    with pytest.raises(ValueError, match=r"latitude axis .* 64 rows but 32 latitudes.*swapped"):
        metric.update(torch.zeros(1, 2, 64, 32), torch.zeros(1, 2, 64, 32))
    with pytest.raises(ValueError, match="Expected 2 variables on dim -3, got 3"):
        metric.update(torch.zeros(1, 3, 32, 64), torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match="differ"):
        metric.update(torch.zeros(1, 2, 32, 64), torch.zeros(2, 2, 32, 64))
    with pytest.raises(ValueError, match="num_outputs must be >= 1"):
        LatitudeWeightedRMSE(LAT_WB, num_outputs=0)


def test_patches_with_their_own_latitudes_equal_the_whole_grid() -> None:
    rng = np.random.default_rng(3)
    preds, target = rng.normal(size=(4, 2, 32, 64)), rng.normal(size=(4, 2, 32, 64))
    whole = LatitudeWeightedRMSE(LAT_WB, num_outputs=2)
    whole.update(torch.from_numpy(preds), torch.from_numpy(target))
    patched = LatitudeWeightedRMSE(num_outputs=2)
    for rows in (slice(0, 8), slice(8, 16), slice(16, 32)):  # uneven bands of rows
        for cols in (slice(0, 16), slice(16, 64)):
            lat = torch.from_numpy(np.tile(LAT_WB[rows], (4, 1)))  # (B, H) per sample
            patched.update(
                torch.from_numpy(preds[..., rows, cols]),
                torch.from_numpy(target[..., rows, cols]),
                latitudes=lat,
            )
    torch.testing.assert_close(patched.compute(), whole.compute())
    # (H,) latitudes shared by the batch give the same as the constructor's
    shared = LatitudeWeightedRMSE(num_outputs=2)
    shared.update(torch.from_numpy(preds), torch.from_numpy(target), latitudes=LAT_WB)
    torch.testing.assert_close(shared.compute(), whole.compute())


def test_per_update_latitude_errors() -> None:
    with pytest.raises(ValueError, match=r"no latitudes: pass `latitudes` to the constructor"):
        LatitudeWeightedRMSE().update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    metric = LatitudeWeightedRMSE()
    with pytest.raises(
        ValueError, match=r"\(H,\) or \(B, H\) with B = 2 samples, got shape \(3, 4\)"
    ):
        metric.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), latitudes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="has 4 rows but 5 latitudes"):
        metric.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), latitudes=torch.zeros(5))
    with pytest.raises(ValueError, match="not the longitude"):
        metric.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), latitudes=torch.arange(4.0) * 60)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rng = np.random.default_rng(1)
    preds = torch.from_numpy(rng.normal(size=(5, 3, 2, 32, 64)))
    target = torch.from_numpy(rng.normal(size=(5, 3, 2, 32, 64)))
    metric = LatitudeWeightedRMSE(LAT_WB, num_outputs=2)
    # Uneven shards: rank 0 sees samples 0..2 in two batches, rank 1 samples 3..4.
    shards = [[slice(0, 1), slice(1, 3)], [slice(3, 5)]][rank]
    # the same fields as northern and southern halves, each with its rows' latitudes
    halves = LatitudeWeightedRMSE(num_outputs=2)
    for part in shards:
        metric.update(preds[part], target[part])
        for rows in (slice(0, 16), slice(16, 32)):
            halves.update(
                preds[part][..., rows, :], target[part][..., rows, :], latitudes=LAT_WB[rows]
            )
    torch.save(metric.compute(), Path(out) / f"rank{rank}.pt")
    torch.save(halves.compute(), Path(out) / f"halves{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_two_processes_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rng = np.random.default_rng(1)
    preds, target = rng.normal(size=(5, 3, 2, 32, 64)), rng.normal(size=(5, 3, 2, 32, 64))
    single = LatitudeWeightedRMSE(LAT_WB, num_outputs=2)
    single.update(torch.from_numpy(preds), torch.from_numpy(target))
    expected = single.compute()
    for rank in range(2):
        for name in ("rank", "halves"):
            torch.testing.assert_close(
                torch.load(tmp_path / f"{name}{rank}.pt", weights_only=True), expected
            )
    np.testing.assert_allclose(
        expected.numpy(),
        [reference(preds[:, :, c], target[:, :, c], LAT_WB) for c in range(2)],
        rtol=1e-5,
    )

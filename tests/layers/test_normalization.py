import pytest
import torch

from lightning_climate.layers import Normalizer


def test_minmax_round_trip_and_range() -> None:
    norm = Normalizer("hr", "minmax")
    norm.fit({"hr_min": torch.tensor([-2.0, 10.0]), "hr_max": torch.tensor([2.0, 20.0])})
    x = torch.tensor([[-2.0, 10.0], [2.0, 20.0]]).view(2, 2, 1, 1)
    y = norm(x)
    assert torch.equal(y.flatten(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(norm.inverse(y), x)


def test_identity_until_fitted() -> None:
    norm = Normalizer("image")
    x = torch.randn(3, 2, 4, 4)
    assert not bool(norm.fitted)
    assert torch.equal(norm(x), x) and torch.equal(norm.inverse(x), x)


def test_zscore_matches_direct_standardisation() -> None:
    x = torch.randn(5, 3, 4, 4) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    norm = Normalizer("image")
    norm.fit({"image_mean": mean, "image_std": std})
    assert torch.equal(norm(x), (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))


def test_block_means_survive_normalisation() -> None:
    norm = Normalizer("hr", "minmax", eps=1e-5)
    norm.fit({"hr_min": torch.tensor([-3.0]), "hr_max": torch.tensor([5.0])})
    hr = torch.randn(2, 1, 8, 8)
    pool = torch.nn.functional.avg_pool2d
    assert torch.allclose(pool(norm(hr), 4), norm(pool(hr, 4)), atol=1e-6)


def test_grouped_statistics_per_sample_and_climatology() -> None:
    mean = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # (models, channels)
    std = torch.tensor([[1.0, 2.0], [4.0, 8.0]])
    norm = Normalizer("y", channel_dim=2, grouped=True)
    norm.fit({"y_mean": mean, "y_std": std})
    y = torch.randn(3, 12, 2, 4, 5)
    group = torch.tensor([1, 0, 1])
    expected = (y - mean[group][:, None, :, None, None]) / std[group][:, None, :, None, None]
    assert torch.equal(norm(y, group), expected)
    torch.testing.assert_close(norm.inverse(norm(y, group), group), y)
    climatology = torch.randn(2, 12, 2, 4, 5)
    grid = Normalizer("y", channel_dim=2, grouped=True)
    grid.set_statistics(climatology, torch.ones_like(climatology))
    assert torch.equal(grid(y, group), y - climatology[group])


def test_shared_channels_keep_an_order() -> None:
    norm = Normalizer("hr", "minmax", share_channels=True)
    norm.fit({"hr_min": torch.tensor([0.0, 5.0]), "hr_max": torch.tensor([10.0, 20.0])})
    low, high = torch.full((1, 1, 2, 2), 6.0), torch.full((1, 1, 2, 2), 7.0)
    out = norm(torch.cat([low, high], dim=1))
    assert torch.equal(out[:, 0], torch.full((1, 2, 2), 0.3))
    assert bool((out[:, 0] <= out[:, 1]).all())


def test_statistics_travel_with_the_state_dict_whatever_their_shape() -> None:
    norm = Normalizer("y", channel_dim=2, grouped=True)
    norm.set_statistics(torch.randn(2, 12, 2, 4, 5), torch.rand(2, 12, 2, 4, 5) + 0.5)
    fresh = Normalizer("y", channel_dim=2, grouped=True)
    fresh.load_state_dict(norm.state_dict())
    assert torch.equal(fresh.shift, norm.shift) and bool(fresh.fitted)


def test_errors_name_the_statistic_and_the_fix() -> None:
    norm = Normalizer("hr", "minmax")
    with pytest.raises(KeyError, match=r"\['hr_min', 'hr_max'\].*provides \['y_mean'\]"):
        norm.fit({"y_mean": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"not finite.*NaN or Inf"):
        Normalizer("x").fit({"x_mean": torch.tensor([float("nan")]), "x_std": torch.ones(1)})
    with pytest.raises(ValueError, match=r"not positive.*minmax"):
        Normalizer("x").fit({"x_mean": torch.zeros(1), "x_std": torch.zeros(1)})
    with pytest.raises(ValueError, match="pass the batch's group ids"):
        grouped = Normalizer("y", grouped=True)
        grouped.fit({"y_mean": torch.zeros(2, 1), "y_std": torch.ones(2, 1)})
        grouped(torch.zeros(2, 1))
    per_model = Normalizer("y", channel_dim=2)
    per_model.fit({"y_mean": torch.zeros(2, 3), "y_std": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*grouped=True"):
        per_model(torch.zeros(4, 12, 3, 5, 6))
    with pytest.raises(ValueError, match="share_channels needs method='minmax'"):
        Normalizer("x", share_channels=True)
    with pytest.raises(ValueError, match="eps must be finite"):
        Normalizer("x", "minmax", eps=float("nan"))

import pytest
import torch

from lightning_climate.layers import MinMaxNormalizer


def test_round_trip_and_range() -> None:
    norm = MinMaxNormalizer(2, eps=0.0)
    norm.set_statistics(torch.tensor([-2.0, 10.0]), torch.tensor([2.0, 20.0]))
    x = torch.tensor([[-2.0, 10.0], [2.0, 20.0]]).view(2, 2, 1, 1)
    y = norm(x)
    assert torch.allclose(y.flatten(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(norm.inverse(y), x)


def test_block_means_survive_normalisation() -> None:
    norm = MinMaxNormalizer(1)
    norm.set_statistics(torch.tensor([-3.0]), torch.tensor([5.0]))
    hr = torch.randn(2, 1, 8, 8)
    pool = torch.nn.functional.avg_pool2d
    assert torch.allclose(pool(norm(hr), 4), norm(pool(hr, 4)), atol=1e-6)


def test_statistics_are_checkpointed_buffers() -> None:
    norm = MinMaxNormalizer(1)
    norm.set_statistics(torch.tensor([1.0]), torch.tensor([4.0]))
    fresh = MinMaxNormalizer(1)
    fresh.load_state_dict(norm.state_dict())
    assert fresh.minimum.item() == 1.0 and fresh.maximum.item() == 4.0


def test_errors() -> None:
    norm = MinMaxNormalizer(2)
    with pytest.raises(ValueError, match="2 channels"):
        norm.set_statistics(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="maximum must be >="):
        norm.set_statistics(torch.ones(2), torch.zeros(2))

import pytest
import torch

from lightning_climate.datasets.downscaling import BlockMeanPairs
from lightning_climate.layers.constraints import block_mean


def test_block_mean_value() -> None:
    x = torch.arange(16.0).view(1, 4, 4)
    assert torch.equal(block_mean(x, 2), torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))
    assert torch.equal(block_mean(x, 1), x)


def test_block_mean_errors() -> None:
    with pytest.raises(ValueError, match="cannot be split into 3x3 blocks"):
        block_mean(torch.zeros(1, 4, 4), 3)
    with pytest.raises(ValueError, match="positive integers"):
        block_mean(torch.zeros(1, 4, 4), 0)


def test_pairs_are_consistent_block_means() -> None:
    fields = torch.randn(5, 1, 16, 16)
    pairs = BlockMeanPairs(lambda i: fields[i], indices=[4, 1], hr_factor=2, lr_factor=4)
    assert len(pairs) == 2
    sample = pairs[0]
    assert sample["index"].item() == 4
    assert sample["hr"].shape == (1, 8, 8) and sample["lr"].shape == (1, 2, 2)
    assert torch.allclose(sample["hr"], block_mean(fields[4], 2))
    assert torch.allclose(block_mean(sample["hr"], 4), sample["lr"])

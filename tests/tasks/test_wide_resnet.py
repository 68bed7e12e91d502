from __future__ import annotations

import pytest
import torch

from lightning_climate.models import WideResNet
from lightning_climate.optim import norm_parameters


def test_wrn_28_10_sizes_match_the_paper_architecture() -> None:
    model = WideResNet(28, 10, num_classes=100)
    # 36.5 M parameters; SAM-ON perturbs 17,952 of them (0.049 %)
    assert sum(p.numel() for p in model.parameters()) == 36_536_884
    assert sum(p.numel() for p in norm_parameters(model).values()) == 17_952


def test_small_wrn_forward() -> None:
    model = WideResNet(10, 1, num_classes=7, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(
    ("depth", "k", "match"), [(12, 1, "depth must be 6n"), (10, 0, "widen_factor")]
)
def test_bad_arguments(depth: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WideResNet(depth, k)

from __future__ import annotations

import logging

import pytest
import timm.layers
import torch
from torch import nn

from lightning_climate.optim import SAM, norm_parameters
from lightning_climate.optim.norm import describe_selection


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.inorm_plain = nn.InstanceNorm2d(4)  # no affine parameters
        self.ln = nn.LayerNorm(4)
        self.timm_ln2d = timm.layers.LayerNorm2d(4)
        self.timm_rms = timm.layers.RmsNorm(4)
        self.timm_bnact = timm.layers.BatchNormAct2d(4)
        self.head = nn.Linear(4, 2)


def test_selects_every_norm_type_by_module_not_name() -> None:
    model = Mixed()
    selected = norm_parameters(model)
    expected = {
        "bn.weight",
        "bn.bias",
        "gn.weight",
        "gn.bias",
        "inorm.weight",
        "inorm.bias",
        "ln.weight",
        "ln.bias",
        "timm_ln2d.weight",
        "timm_ln2d.bias",
        "timm_rms.weight",
        "timm_bnact.weight",
        "timm_bnact.bias",
    }
    assert set(selected) == expected
    for name, param in selected.items():
        assert param is model.get_parameter(name)


def test_filter_overrides_selection_and_frozen_are_skipped() -> None:
    model = Mixed()
    model.ln.weight.requires_grad_(False)
    only_ln = norm_parameters(model, norm_filter=lambda name, m: name == "ln")
    assert list(only_ln) == ["ln.bias"]
    by_name = norm_parameters(model, norm_filter=lambda name, m: name == "head")
    assert set(by_name) == {"head.weight", "head.bias"}


def test_shared_parameter_counted_once_and_description() -> None:
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(bn, nn.Linear(3, 3), bn)
    selected = norm_parameters(model)
    assert list(selected) == ["0.weight", "0.bias"]
    text = describe_selection(model, selected)
    # 6 of 6 + 12 trainable scalars
    assert text.startswith("2 tensors, 6 of 18 trainable parameters (33.333%)")
    assert "BatchNorm1d x1" in text


def test_timm_resnet_and_vit_selection_sizes() -> None:
    resnet = timm.create_model("resnet18", num_classes=10)
    bn_params = sum(m.weight.numel() * 2 for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(p.numel() for p in norm_parameters(resnet).values()) == bn_params
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10, depth=2
    )
    # two LayerNorms per block plus the final norm, each weight + bias of width 192
    assert sum(p.numel() for p in norm_parameters(vit).values()) == (2 * 2 + 1) * 2 * 192
    assert torch.is_tensor(next(iter(norm_parameters(vit).values())))


def test_bind_reports_selection(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with caplog.at_level(logging.INFO):
        SAM(model.parameters(), torch.optim.SGD, norm_only=True).bind(model)
    assert "SAM-ON perturbs 2 tensors, 8 of 24 trainable parameters (33.333%)" in caplog.text
    assert "LayerNorm x1" in caplog.text

from __future__ import annotations

import pytest
import torch

from lightning_climate.models import CNNLSTM, SuperEmulator, UNet, ViTEmulator
from lightning_climate.models.unet import pad_globe


@pytest.mark.parametrize(
    "model",
    [
        UNet(4, 3, base_channels=4, depth=2),
        CNNLSTM(4, 3, height=10, width=14, filters=5, hidden=6),
        ViTEmulator(4, 3, height=10, width=14, patch_size=4, embed_dim=16, depth=1, num_heads=2),
    ],
    ids=["unet", "cnn_lstm", "vit"],
)
def test_shapes_on_odd_grids_and_errors(model: torch.nn.Module) -> None:
    x = torch.randn(2, 5, 4, 10, 14)
    assert model(x).shape == (2, 5, 3, 10, 14)
    with pytest.raises(ValueError, match=r"Expected \(B, T, 4, H, W\)"):
        model(torch.randn(2, 5, 3, 10, 14))


def test_months_are_independent_in_unet_and_vit_but_not_in_cnn_lstm() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, 8, 12)
    y = x.clone()
    y[:, 0] += 1.0  # perturb the first month only
    for model in (
        UNet(4, 2, base_channels=4, depth=1),
        ViTEmulator(4, 2, 8, 12, patch_size=4, embed_dim=16, depth=1, num_heads=2),
    ):
        model.eval()
        torch.testing.assert_close(model(x)[:, 1:], model(y)[:, 1:])
    lstm = CNNLSTM(4, 2, 8, 12, filters=4, hidden=5).eval()
    assert not torch.allclose(lstm(x)[:, 1:], lstm(y)[:, 1:])  # the LSTM carries the past forward
    torch.testing.assert_close(
        lstm(x)[:, 0], lstm(torch.cat([x[:, :1], y[:, 1:]], 1))[:, 0]
    )  # but not the future


def test_pad_globe_wraps_longitude() -> None:
    x = torch.arange(2 * 3, dtype=torch.float32).reshape(1, 1, 2, 3)
    padded, size = pad_globe(x, 4)
    assert size == (2, 3) and padded.shape == (1, 1, 4, 4)
    torch.testing.assert_close(padded[0, 0, :2, 3], x[0, 0, :, 0])  # column 3 is longitude 0 again
    torch.testing.assert_close(padded[0, 0, 3, :3], x[0, 0, 1])  # latitude edge replicated


def test_vit_token_grid_of_the_paper() -> None:
    model = ViTEmulator(
        4, 2, height=96, width=144, patch_size=16, embed_dim=32, depth=1, num_heads=2
    )
    assert model.grid == (6, 9)
    assert model.encoder.patch_embed.num_patches == 54


def test_super_emulator_uses_each_samples_own_head() -> None:
    torch.manual_seed(0)
    backbone = UNet(4, 6, base_channels=4, depth=1)
    model = SuperEmulator(backbone, num_climate_models=3, feature_channels=6, out_channels=2).eval()
    x = torch.randn(4, 3, 4, 8, 12)
    model_id = torch.tensor([2, 0, 2, 1])
    out = model(x, model_id)
    features = backbone(x)
    for i, m in enumerate(model_id.tolist()):
        expected = model.heads[m](features[i])  # (T, F, H, W) as a batch of months
        torch.testing.assert_close(out[i], expected)
    # Gradients reach only the heads of the climate models present in the batch.
    model(x[:2], torch.tensor([0, 0])).sum().backward()
    assert model.heads[0][0].weight.grad is not None
    assert model.heads[1][0].weight.grad is None and model.heads[2][0].weight.grad is None
    with pytest.raises(ValueError, match="out of range for 3 heads"):
        model(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"model_id must have shape \(4,\)"):
        model(x, torch.tensor([0, 1]))

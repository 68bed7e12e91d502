"""Numbers of the difficulty scores against closed forms and independent references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_climate.analysis.scores import (
    VoGAccumulator,
    forgetting_statistics,
    grand,
    grand_loop,
    input_gradients,
    knn_predict,
    output_scores,
    prediction_depth,
)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_uniform_prediction(num_classes: int) -> None:
    scores = output_scores(torch.zeros(3, num_classes), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(
        scores["el2n"], torch.full((3,), math.sqrt(1 - 1 / num_classes), dtype=torch.float64)
    )
    torch.testing.assert_close(
        scores["entropy"], torch.full((3,), math.log(num_classes), dtype=torch.float64)
    )
    torch.testing.assert_close(scores["margin"], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(
        scores["loss"], torch.full((3,), math.log(num_classes), dtype=torch.float64)
    )
    torch.testing.assert_close(
        scores["confidence"], torch.full((3,), 1 / num_classes, dtype=torch.float64)
    )


def test_confident_correct_and_wrong() -> None:
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0]])
    scores = output_scores(logits, torch.tensor([0, 0]))
    assert scores["el2n"][0] == pytest.approx(0.0, abs=1e-12)
    assert scores["margin"][0] == pytest.approx(1.0)
    assert scores["accuracy"].tolist() == [1.0, 0.0]
    assert scores["margin"][1] == pytest.approx(-1.0)
    assert scores["el2n"][1] == pytest.approx(math.sqrt(2.0))
    assert scores["max_confidence"][1] == pytest.approx(1.0)


def test_margin_against_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen)
    target = torch.randint(0, 7, (50,), generator=gen)
    p = torch.softmax(logits.double(), 1)
    expected = []
    for row, y in zip(p, target, strict=True):
        others = torch.cat([row[:y], row[y + 1 :]])
        expected.append(row[y] - others.max())
    torch.testing.assert_close(output_scores(logits, target)["margin"], torch.stack(expected))


def test_bad_shapes_name_the_fix() -> None:
    with pytest.raises(ValueError, match="logits of shape"):
        output_scores(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        output_scores(torch.zeros(3, 4), torch.zeros(3, 4))


def test_grand_linear_softmax_closed_form() -> None:
    # for logits = Wx + b the per-example gradient is (p - y) [x, 1]^T, so GraNd = EL2N * sqrt(|x|^2 + 1)
    torch.manual_seed(0)
    model = nn.Linear(7, 10).double()
    x = torch.randn(12, 7, dtype=torch.float64)
    y = torch.randint(0, 10, (12,))
    el2n = output_scores(model(x), y)["el2n"]
    expected = el2n * (x.square().sum(1) + 1).sqrt()
    torch.testing.assert_close(grand(model, x, y), expected)


def test_grand_vmap_matches_loop_and_chunks() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).eval()
    x = torch.randn(9, 1, 8, 8)
    y = torch.randint(0, 5, (9,))
    reference = grand_loop(model, x, y)
    torch.testing.assert_close(grand(model, x, y), reference, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grand(model, x, y, chunk_size=4), reference, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_grand_ignores_frozen_parameters() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    torch.testing.assert_close(grand(model, x, y), grand_loop(model, x, y), rtol=1e-5, atol=1e-7)


def test_input_gradients_match_finite_differences() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    y = torch.tensor([0, 2])
    g = input_gradients(model, x, y)
    eps = 1e-6
    for i in range(2):
        for j in range(4):
            dx = torch.zeros_like(x)
            dx[i, j] = eps
            up = torch.softmax(model(x + dx), 1)[i, y[i]]
            down = torch.softmax(model(x - dx), 1)[i, y[i]]
            assert g[i, j].item() == pytest.approx(((up - down) / (2 * eps)).item(), abs=1e-8)


def test_vog_welford_matches_numpy_variance() -> None:
    gen = torch.Generator().manual_seed(4)
    grads = torch.randn(5, 6, 3, 4, 4, generator=gen)  # checkpoints, examples, channels, H, W
    acc = VoGAccumulator(6)
    for k in range(5):
        acc.update(torch.arange(6), grads[k])
    expected = grads.double().mean(2).var(0, unbiased=False).flatten(1).mean(1)
    torch.testing.assert_close(acc.compute(), expected)
    restored = VoGAccumulator(0)
    restored.load_state_dict(acc.state_dict())
    torch.testing.assert_close(restored.compute(), expected)


def test_vog_zero_for_constant_gradients_and_nan_when_unseen() -> None:
    acc = VoGAccumulator(3)
    g = torch.randn(2, 1, 4, 4)
    for _ in range(3):
        acc.update(torch.tensor([0, 2]), g)
    vog = acc.compute()
    assert vog[0] == pytest.approx(0.0, abs=1e-15) and vog[2] == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(vog[1])


def test_forgetting_statistics_reference_traces() -> None:
    trace = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1], [0] * 8]).T
    stats = forgetting_statistics(trace)
    assert stats["forgetting"].tolist() == [2, 0, 0]
    assert stats["first_learned"].tolist() == [1, 0, 8]
    assert stats["first_unforgettable"].tolist() == [7, 0, 8]
    assert stats["unforgettable"].tolist() == [0, 1, 0]
    short = forgetting_statistics(torch.tensor([[0, 1], [0, 1], [0, 1]]))
    assert short["first_learned"].tolist() == [3, 0]


def test_knn_predict_leave_one_out() -> None:
    features = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    # two nearest others vote, ties go to class 0: point 3 (5.0) sees 5.1 (1) and 9.0 (0) -> 0;
    # point 5 (9.0) sees 5.1 and 5.0 (both 1) -> 1; point 2 (0.2) sees 0.1 and 0.0 (both 0) -> 0
    assert knn_predict(features, labels, k=2).tolist() == [0, 0, 0, 0, 0, 1]
    assert knn_predict(features, labels, k=2, chunk_size=4).tolist() == [0, 0, 0, 0, 0, 1]
    # with k=1 every point copies its nearest neighbour
    assert knn_predict(features, labels, k=1).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="k-NN needs"):
        knn_predict(features, labels, k=6)


def test_prediction_depth() -> None:
    probes = torch.tensor([[1, 0, 1, 2], [1, 1, 0, 2], [1, 1, 1, 0]])
    final = torch.tensor([1, 1, 1, 2])
    # example 0: all agree -> 0; 1: agree from layer 1 -> 1; 2: from layer 2 -> 2; 3: last disagrees -> 3
    assert prediction_depth(probes, final).tolist() == [0, 1, 2, 3]

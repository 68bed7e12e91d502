"""Tests of the CDSD model: distributions, mixing constraint, graph masking and ELBO terms."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_climate.models.cdsd import (
    CDSD,
    gaussian_kl,
    gaussian_log_likelihood,
    gumbel_sigmoid,
)


def test_gumbel_sigmoid_hard_samples_are_bernoulli_with_sigmoid_probability() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5]).expand(20000, 3)
    samples = gumbel_sigmoid(logits, temperature=0.3, hard=True)
    assert set(samples.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(samples.mean(0), torch.sigmoid(logits[0]), atol=0.015, rtol=0)


def test_gumbel_sigmoid_soft_is_in_unit_interval_and_hard_passes_gradients() -> None:
    logits = torch.zeros(100, requires_grad=True)
    soft = gumbel_sigmoid(logits, temperature=0.5)
    assert ((soft > 0) & (soft < 1)).all()
    gumbel_sigmoid(logits, temperature=0.5, hard=True).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature must be positive"):
        gumbel_sigmoid(logits, temperature=0.0)


def test_gaussian_kl_and_log_likelihood_match_torch_distributions() -> None:
    torch.manual_seed(0)
    mq, lq, mp, lp, x = torch.randn(5, 7)
    ref_kl = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp()))
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), ref_kl)
    assert (gaussian_kl(mq, lq, mp, lp) >= 0).all()
    torch.testing.assert_close(gaussian_kl(mq, lq, mq, lq), torch.zeros(7))
    ref_ll = Normal(mq, (0.5 * lq).exp()).log_prob(x)
    torch.testing.assert_close(gaussian_log_likelihood(x, mq, lq), ref_ll)


def test_orthogonality_residual_is_zero_exactly_for_a_partition() -> None:
    model = CDSD(num_variables=2, num_locations=6, num_latents=3)
    assert (model.mixing >= 0).all()
    assert model.orthogonality_residual().shape == (2, 3, 3)
    assert model.orthogonality_residual().norm() > 0.1  # the reference initialisation is dense
    partition = torch.zeros(2, 6, 3)
    for v in range(2):
        for j in range(6):
            partition[v, j, j % 3] = 1 / 2**0.5  # two cells per latent, unit-norm columns
    with torch.no_grad():
        model.mixing.copy_(partition)
    assert model.orthogonality_residual().abs().max() < 1e-6


def test_project_mixing_clamps_negatives_to_exact_zero() -> None:
    model = CDSD(num_variables=1, num_locations=5, num_latents=2)
    with torch.no_grad():
        model.mixing.sub_(0.5)
    negative = model.mixing < 0
    kept = model.mixing.detach().clone()
    model.project_mixing()
    assert (model.mixing[negative] == 0).all()
    assert torch.equal(model.mixing[~negative], kept[~negative])


def test_encode_decode_use_the_mixing_per_variable() -> None:
    model = CDSD(num_variables=2, num_locations=4, num_latents=3)
    x = torch.randn(5, 2, 4)
    z = model.encode(x)
    assert z.shape == (5, 6)
    torch.testing.assert_close(z[:, 3:], x[:, 1] @ model.mixing[1])
    torch.testing.assert_close(model.decode(z)[:, 0], z[:, :3] @ model.mixing[0].T)


@pytest.mark.parametrize("hidden", [0, 8])
def test_transition_only_sees_parents_in_the_graph(hidden: int) -> None:
    torch.manual_seed(0)
    model = CDSD(
        num_variables=1, num_locations=8, num_latents=3, num_lags=2, transition_hidden=hidden
    )
    past = torch.randn(4, 2, 3, requires_grad=True)
    graph = torch.zeros(4, 2, 3, 3)
    graph[:, 1, 0, 2] = 1.0  # latent 0 at lag 2 causes latent 2
    mean = model.transition_mean(past, graph)
    assert mean.shape == (4, 3)
    (grad,) = torch.autograd.grad(mean[:, 2].sum(), past, retain_graph=True)
    assert grad[:, 1, 0].abs().min() > 0
    grad[:, 1, 0] = 0
    assert grad.abs().max() == 0
    (grad_other,) = torch.autograd.grad(mean[:, :2].sum(), past)
    assert grad_other.abs().max() == 0


def test_forward_terms_and_prediction_shapes() -> None:
    torch.manual_seed(0)
    model = CDSD(num_variables=2, num_locations=10, num_latents=3, num_lags=2)
    x = torch.randn(4, 5, 2, 10)
    out = model(x)
    assert out.reconstruction_mean.shape == (4, 3, 2, 10)
    assert out.prediction_mean.shape == (4, 3, 2, 10)
    assert out.kl >= 0
    # In evaluation the latents are the posterior means, so the reconstruction is W Wᵀ x.
    model.eval()
    out = model(x)
    expected = torch.einsum("btvn,vnk,vmk->btvm", x[:, 2:], model.mixing, model.mixing)
    torch.testing.assert_close(out.reconstruction_mean, expected)
    ll = gaussian_log_likelihood(x[:, 2:], expected, model.decoder_logvar).sum((-1, -2)).mean()
    torch.testing.assert_close(out.reconstruction, ll)


def test_bad_shapes_and_arguments_name_the_fix() -> None:
    model = CDSD(num_variables=1, num_locations=10, num_latents=3, num_lags=2)
    with pytest.raises(ValueError, match=r"shape \(B, T, 1, 10\).*num_locations"):
        model(torch.randn(2, 3, 1, 11))
    with pytest.raises(ValueError, match="lengthen the data windows or lower num_lags"):
        model(torch.randn(2, 2, 1, 10))
    with pytest.raises(ValueError, match="must not exceed num_locations"):
        CDSD(num_variables=1, num_locations=3, num_latents=4)
    with pytest.raises(ValueError, match="num_lags must be an integer >= 1"):
        CDSD(num_variables=1, num_locations=3, num_latents=2, num_lags=0)


def test_training_samples_graphs_and_gradients_reach_the_logits() -> None:
    torch.manual_seed(0)
    model = CDSD(
        num_variables=1, num_locations=8, num_latents=3, hard_graph=True, graph_init_logit=0.0
    )
    graph = model.sample_graph(500)
    assert graph.shape == (500, 1, 3, 3) and set(graph.unique().tolist()) == {0.0, 1.0}
    assert abs(graph.mean().item() - 0.5) < 0.03
    out = model(torch.randn(4, 3, 1, 8))
    (-(out.reconstruction - out.kl)).backward()
    assert model.graph_logits.grad is not None and model.graph_logits.grad.abs().sum() > 0
    assert model.mixing.grad is not None
    model.eval()
    torch.testing.assert_close(model.sample_graph(2), torch.full((2, 1, 3, 3), 0.5))


def test_forward_matches_a_loop_over_targets_and_lags() -> None:
    torch.manual_seed(0)
    model = CDSD(num_variables=2, num_locations=5, num_latents=2, num_lags=3, transition_hidden=4)
    with torch.no_grad():
        model.graph_logits.normal_()
        model.encoder_logvar.normal_(0, 0.3)
        model.transition_logvar.normal_(0, 0.3)
    model.eval()  # posterior means and edge probabilities: deterministic
    x = torch.randn(2, 6, 2, 5)
    out = model(x)
    probs = model.edge_probabilities()
    kls, preds = [], []
    for t in range(3, 6):
        z = [model.encode(x[:, t - lag]) for lag in (1, 2, 3)]  # lag 1 first
        past = torch.stack(z, dim=1)
        mean_p = model.transition_mean(past, probs.expand(2, *probs.shape))
        mean_q = model.encode(x[:, t])
        kls.append(
            gaussian_kl(mean_q, model.encoder_logvar, mean_p, model.transition_logvar).sum(-1)
        )
        preds.append(model.decode(mean_p))
    torch.testing.assert_close(out.kl, torch.stack(kls, 1).mean())
    torch.testing.assert_close(out.prediction_mean, torch.stack(preds, 1))

"""CDSD: causal discovery with single-parent decoding on gridded time series.

The model of Brouillard et al. (2024), used on climate model output by Boussard et al. (2023):

* a non-negative mixing ``W`` (one ``(num_locations, num_latents)`` matrix per variable) maps
  latents to grid cells, ``x_t ≈ W z_t``. The encoder is tied: ``E[z_t | x_t] = Wᵀ x_t``. ``W`` is
  kept ``>= 0`` by projection after every optimizer step (:meth:`CDSD.project_mixing`) and pushed
  towards ``WᵀW = I`` by an augmented Lagrangian (:meth:`CDSD.orthogonality_residual`). Together
  these leave each grid cell with at most one latent parent, so latents are disjoint regions.
* a lagged causal graph ``G[k, i, j] = 1`` when latent ``i`` at time ``t - k - 1`` causes latent
  ``j`` at time ``t``, sampled with a Gumbel-sigmoid from learnable logits.
* a Gaussian transition ``p(z_t | z_{t-τ..t-1})`` whose mean for latent ``j`` only sees the parents
  the sampled graph gives it (a linear map or a small MLP per latent).

Training maximises the ELBO ``E_q[log p(x_t | z_t)] - KL(q(z_t | x_t) || p(z_t | z_{<t}))`` for
every target ``t`` of a window that has ``num_lags`` frames before it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["CDSD", "CDSDOutput", "gaussian_kl", "gaussian_log_likelihood", "gumbel_sigmoid"]

_LOG_2PI = math.log(2 * math.pi)


def gumbel_sigmoid(logits: Tensor, temperature: float = 1.0, hard: bool = False) -> Tensor:
    """Sample a relaxed Bernoulli with ``P(sample > 0.5) = sigmoid(logits)``.

    Adds logistic noise ``log u - log(1 - u)`` to the logits and squashes with a tempered sigmoid.
    With ``hard=True`` the forward value is the exact 0/1 sample while gradients flow through the
    relaxed one (straight-through estimator).

    Args:
        logits: edge logits of any shape.
        temperature: relaxation temperature; lower values give samples closer to 0/1.
        hard: return 0/1 samples with straight-through gradients.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def gaussian_kl(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p)))`` per element (closed form)."""
    return 0.5 * (
        logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p) ** 2) / logvar_p.exp() - 1.0
    )


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """``log N(x; mean, exp(logvar))`` per element."""
    return -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 / logvar.exp())


class CDSDOutput(NamedTuple):
    """Terms of one CDSD forward pass, each averaged over samples and target times.

    Attributes:
        reconstruction: ``E_q[log p(x_t | z_t)]`` summed over variables and locations.
        kl: ``KL(q(z_t | x_t) || p(z_t | z_{<t}))`` summed over latents (always ``>= 0``).
        reconstruction_mean: decoded mean of the target frames, ``(B, targets, V, N)``.
        prediction_mean: decoded transition mean (a one-step forecast), ``(B, targets, V, N)``.
    """

    reconstruction: Tensor
    kl: Tensor
    reconstruction_mean: Tensor
    prediction_mean: Tensor


class CDSD(nn.Module):
    """Latent causal model with non-negative single-parent mixing and a lagged latent graph.

    Inputs are windows ``x`` of shape ``(B, T, V, N)``: ``T >= num_lags + 1`` time steps, ``V``
    variables and ``N`` grid locations (flatten a ``(H, W)`` grid to ``N = H * W``). Each variable
    has its own ``num_latents`` latents, so the graph has ``V * num_latents`` nodes.

    Args:
        num_variables: ``V``, variables (channels) per time step.
        num_locations: ``N``, grid cells per variable.
        num_latents: latents per variable.
        num_lags: ``τ``, how many past steps can cause the present.
        transition_hidden: width of the per-latent transition MLP; ``0`` makes it linear.
        graph_init_logit: initial logit of every edge (CDSD starts dense, at 5).
        temperature: Gumbel-sigmoid temperature of the sampled graph.
        hard_graph: sample 0/1 graphs with straight-through gradients instead of relaxed ones.
    """

    def __init__(
        self,
        num_variables: int,
        num_locations: int,
        num_latents: int,
        num_lags: int = 1,
        transition_hidden: int = 0,
        graph_init_logit: float = 5.0,
        temperature: float = 0.5,
        hard_graph: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_variables", num_variables, 1),
            ("num_locations", num_locations, 1),
            ("num_latents", num_latents, 1),
            ("num_lags", num_lags, 1),
            ("transition_hidden", transition_hidden, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}.")
        if num_latents > num_locations:
            raise ValueError(
                f"num_latents ({num_latents}) must not exceed num_locations ({num_locations}): "
                "orthogonal non-negative columns need disjoint sets of grid cells."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.num_variables = num_variables
        self.num_locations = num_locations
        self.num_latents = num_latents
        self.num_lags = num_lags
        self.temperature = temperature
        self.hard_graph = hard_graph
        nodes = num_variables * num_latents
        self.num_nodes = nodes

        # Uniform in [0.1, 1] / num_latents as in the reference: positive, far from any partition.
        mixing = torch.empty(num_variables, num_locations, num_latents).uniform_(0.1, 1.0)
        self.mixing = nn.Parameter(mixing / num_latents)
        self.encoder_logvar = nn.Parameter(torch.zeros(nodes))
        self.decoder_logvar = nn.Parameter(torch.zeros(num_variables, num_locations))
        self.transition_logvar = nn.Parameter(torch.zeros(nodes))
        self.graph_logits = nn.Parameter(torch.full((num_lags, nodes, nodes), graph_init_logit))

        # Transition: one independent model per child latent j, over its masked past (lag, parent).
        fan_in = num_lags * nodes
        width = transition_hidden or 1
        bound = 1.0 / math.sqrt(fan_in)
        self.transition_weight = nn.Parameter(
            torch.empty(nodes, fan_in, width).uniform_(-bound, bound)
        )
        self.transition_bias = nn.Parameter(torch.zeros(nodes, width))
        if transition_hidden:
            out_bound = 1.0 / math.sqrt(transition_hidden)
            self.transition_out = nn.Parameter(
                torch.empty(nodes, transition_hidden).uniform_(-out_bound, out_bound)
            )
            self.transition_out_bias = nn.Parameter(torch.zeros(nodes))
        else:
            self.register_parameter("transition_out", None)
            self.register_parameter("transition_out_bias", None)

    # ----------------------------------------------------------------------------- mixing
    @torch.no_grad()
    def project_mixing(self) -> None:
        """Project ``W`` onto ``W >= 0`` in place; call after every optimizer step."""
        self.mixing.clamp_(min=0.0)

    def orthogonality_residual(self) -> Tensor:
        """``WᵀW - I`` per variable, ``(V, num_latents, num_latents)``; zero when satisfied."""
        gram = self.mixing.transpose(1, 2) @ self.mixing
        return gram - torch.eye(self.num_latents, dtype=gram.dtype, device=gram.device)

    def encode(self, x: Tensor) -> Tensor:
        """Posterior means ``Wᵀ x`` of ``x`` ``(..., V, N)``, as ``(..., V * num_latents)``."""
        z = torch.einsum("...vn,vnk->...vk", x, self.mixing)
        return z.flatten(-2)

    def decode(self, z: Tensor) -> Tensor:
        """Observation means ``W z`` ``(..., V, N)`` of latents ``(..., V * num_latents)``."""
        z = z.unflatten(-1, (self.num_variables, self.num_latents))
        return torch.einsum("...vk,vnk->...vn", z, self.mixing)

    # ----------------------------------------------------------------------------- graph
    def edge_probabilities(self) -> Tensor:
        """``sigmoid(graph_logits)``, ``(num_lags, nodes, nodes)``, indexed ``[lag-1, cause, effect]``."""
        return torch.sigmoid(self.graph_logits)

    def sample_graph(self, batch_size: int) -> Tensor:
        """One graph per sample, ``(batch_size, num_lags, nodes, nodes)``.

        Training samples with the Gumbel-sigmoid; evaluation uses the edge probabilities
        themselves, so validation losses are deterministic.
        """
        logits = self.graph_logits.expand(batch_size, *self.graph_logits.shape)
        if self.training:
            return gumbel_sigmoid(logits, self.temperature, self.hard_graph)
        return torch.sigmoid(logits)

    def transition_mean(self, past: Tensor, graph: Tensor) -> Tensor:
        """Mean of ``z_t`` from past latents.

        Args:
            past: ``(B, num_lags, nodes)``, lag 1 first.
            graph: ``(B, num_lags, nodes, nodes)`` indexed ``[b, lag-1, cause, effect]``.

        Returns:
            ``(B, nodes)``.
        """
        # masked[b, j, k, i] = graph[b, k, i, j] * past[b, k, i]: what child j may see.
        masked = graph.permute(0, 3, 1, 2) * past.unsqueeze(1)
        hidden = torch.einsum("bjm,jmh->bjh", masked.flatten(2), self.transition_weight)
        hidden = hidden + self.transition_bias
        if self.transition_out is None:
            return hidden.squeeze(-1)
        hidden = F.leaky_relu(hidden)
        return torch.einsum("bjh,jh->bj", hidden, self.transition_out) + self.transition_out_bias

    # ----------------------------------------------------------------------------- ELBO
    def forward(self, x: Tensor) -> CDSDOutput:
        """ELBO terms of windows ``x`` of shape ``(B, T, V, N)`` for targets ``t = τ .. T-1``."""
        if x.ndim != 4 or x.shape[2:] != (self.num_variables, self.num_locations):
            raise ValueError(
                f"CDSD expects windows of shape (B, T, {self.num_variables}, "
                f"{self.num_locations}) (batch, time, variables, locations); got "
                f"{tuple(x.shape)}. Set num_variables/num_locations to match the data."
            )
        batch, steps = x.shape[:2]
        lags = self.num_lags
        if steps < lags + 1:
            raise ValueError(
                f"windows have {steps} time steps but num_lags={lags} needs at least {lags + 1}; "
                "lengthen the data windows or lower num_lags."
            )
        mean_q = self.encode(x)  # (B, T, D)
        std_q = (0.5 * self.encoder_logvar).exp()
        z = mean_q + std_q * torch.randn_like(mean_q) if self.training else mean_q

        targets = steps - lags
        # past[b, s, k] = z[b, s + lags - 1 - k]: lag k + 1 before target s + lags.
        windows = z.unfold(1, lags + 1, 1)  # (B, targets, D, lags + 1), oldest first
        past = windows[..., :lags].flip(-1).transpose(-1, -2).reshape(batch * targets, lags, -1)
        graph = self.sample_graph(batch * targets)
        mean_p = self.transition_mean(past, graph).view(batch, targets, -1)

        logvar_q = self.encoder_logvar.expand_as(mean_p)
        logvar_p = self.transition_logvar.expand_as(mean_p)
        kl = gaussian_kl(mean_q[:, lags:], logvar_q, mean_p, logvar_p).sum(-1)

        x_target = x[:, lags:]
        recon_mean = self.decode(z[:, lags:])
        loglik = gaussian_log_likelihood(x_target, recon_mean, self.decoder_logvar).sum((-1, -2))
        return CDSDOutput(
            reconstruction=loglik.mean(),
            kl=kl.mean(),
            reconstruction_mean=recon_mean,
            prediction_mean=self.decode(mean_p),
        )

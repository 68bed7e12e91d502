"""Graph-recovery metrics for causal discovery: SHD, edge precision, recall and F1.

Every metric keeps the same sum-reduced sufficient statistics (true/false positive and negative
edge counts, and the number of graphs), so results are exact under DDP. Each ``update`` scores one
predicted graph against its true graph; the graphs may have any shape (``(lags, nodes, nodes)`` for
lagged graphs) and entries are edges when ``>= threshold``.

For lagged graphs the direction of an edge is fixed by time, so the structural Hamming distance is
the number of edge insertions plus deletions, ``FP + FN`` (no reversals exist). Latent variables
are only identified up to a permutation: align a learned graph to the truth first with
:func:`match_latents` and :func:`permute_graph`.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "EdgeF1Score",
    "EdgePrecision",
    "EdgeRecall",
    "StructuralHammingDistance",
    "edge_counts",
    "match_latents",
    "permute_graph",
]


def edge_counts(preds: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """``[TP, FP, FN, TN]`` edge counts of ``preds`` against ``target`` (same shape)."""
    if preds.shape != target.shape:
        raise ValueError(
            f"predicted graph {tuple(preds.shape)} and true graph {tuple(target.shape)} differ in "
            "shape; align them (same lags and nodes) before scoring."
        )
    pred = preds >= threshold
    true = target >= threshold
    tp = (pred & true).sum()
    fp = (pred & ~true).sum()
    fn = (~pred & true).sum()
    tn = (~pred & ~true).sum()
    return torch.stack([tp, fp, fn, tn])


def match_latents(mixing: Tensor, true_mixing: Tensor) -> Tensor:
    """Match learned latents to true ones by the overlap of their mixing columns.

    Within each variable, the cosine similarity between learned and true columns is maximised
    with the Hungarian algorithm (one-to-one assignment).

    Args:
        mixing: learned ``(V, N, K)`` mixing.
        true_mixing: true ``(V, N, K)`` mixing.

    Returns:
        ``perm`` of length ``V * K``: true node ``j`` corresponds to learned node ``perm[j]``.
    """
    if mixing.shape != true_mixing.shape:
        raise ValueError(
            f"learned mixing {tuple(mixing.shape)} and true mixing {tuple(true_mixing.shape)} "
            "differ; use as many latents per variable as the truth has to score the graph."
        )
    variables, _, latents = mixing.shape
    learned = torch.nn.functional.normalize(mixing.detach().double().cpu(), dim=1)
    true = torch.nn.functional.normalize(true_mixing.detach().double().cpu(), dim=1)
    perm = torch.empty(variables * latents, dtype=torch.long)
    for v in range(variables):
        similarity = (true[v].T @ learned[v]).abs().numpy()  # (true K, learned K)
        rows, cols = linear_sum_assignment(similarity, maximize=True)
        perm[v * latents + torch.as_tensor(rows)] = v * latents + torch.as_tensor(cols)
    return perm


def permute_graph(graph: Tensor, perm: Tensor) -> Tensor:
    """Reorder the last two (node) axes of ``graph`` so node ``j`` becomes ``perm[j]``'s."""
    perm = perm.to(graph.device)
    return graph.index_select(-2, perm).index_select(-1, perm)


class _EdgeCountMetric(Metric):
    """Shared state: summed ``[TP, FP, FN, TN]`` and the number of graphs scored."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, threshold: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("counts", default=torch.zeros(4, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("graphs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Score one predicted graph against its true graph."""
        self.counts += edge_counts(preds, target, self.threshold).to(self.counts.device)
        self.graphs += 1


class StructuralHammingDistance(_EdgeCountMetric):
    """Mean number of edge insertions and deletions (``FP + FN``) per graph; lower is better."""

    higher_is_better = False

    def compute(self) -> Tensor:
        """Mean SHD over the graphs seen."""
        return (self.counts[1] + self.counts[2]).double() / self.graphs.clamp(min=1)


class EdgePrecision(_EdgeCountMetric):
    """Share of predicted edges that are true, ``TP / (TP + FP)`` (0 with no predicted edge)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        """Precision over all edges seen."""
        return self.counts[0].double() / (self.counts[0] + self.counts[1]).clamp(min=1)


class EdgeRecall(_EdgeCountMetric):
    """Share of true edges that are predicted, ``TP / (TP + FN)`` (0 with no true edge)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        """Recall over all edges seen."""
        return self.counts[0].double() / (self.counts[0] + self.counts[2]).clamp(min=1)


class EdgeF1Score(_EdgeCountMetric):
    """``2 TP / (2 TP + FP + FN)``, the harmonic mean of edge precision and recall."""

    higher_is_better = True

    def compute(self) -> Tensor:
        """F1 over all edges seen."""
        tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
        return 2 * tp.double() / (2 * tp + fp + fn).clamp(min=1)

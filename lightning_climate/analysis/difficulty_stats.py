"""Statistics of many runs' difficulty scores: consistency, PCA and architecture fingerprinting.

Every function works on :class:`~lightning_climate.analysis.difficulty_runs.ScoreRuns` (one value
per run and example) and never builds a ``runs x examples x scores`` array: PCA accumulates the
``scores x scores`` covariance of the run averages, and the permutation test and the classifier
stream over blocks of examples (:data:`BLOCK_BYTES` of working memory each), so 1.28 M examples
cost what the ``ScoreRuns`` arrays themselves cost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import rankdata

from lightning_climate.analysis.difficulty_runs import ScoreRuns

__all__ = [
    "PCAResult",
    "classify_architecture",
    "consistency_table",
    "fingerprint",
    "min_attainable_p",
    "pca",
    "spearman",
    "variance_decomposition",
]

#: working memory of one block of the permutation test (permutation chunk x examples x scores).
BLOCK_BYTES = 64 * 2**20
_PERMUTATION_CHUNK = 100


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation with average ranks for ties, over examples finite in both."""
    keep = np.isfinite(a) & np.isfinite(b)
    ra, rb = rankdata(a[keep]), rankdata(b[keep])
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _mean_pairwise(values: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    rhos = [spearman(values[i], values[j]) for i, j in pairs]
    return float(np.nanmean(rhos)) if rhos else float("nan")


def variance_decomposition(values: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    """Fractions of the total sum of squares of ``(R, N)`` values due to examples, architecture, seed.

    ``x[r, n] - mean = (mean_n - mean) + (mean_{a(r), n} - mean_n) + (x[r, n] - mean_{a(r), n})``;
    the three parts are orthogonal, so the fractions ``example``, ``architecture`` (architecture
    and architecture x example) and ``seed`` (runs of one architecture) sum to 1.
    """
    x = np.asarray(values, dtype=np.float64)
    labels = np.asarray(groups)
    mean_n = x.mean(0)
    group_mean = np.empty_like(x)
    for g in np.unique(labels):
        group_mean[labels == g] = x[labels == g].mean(0)
    total = ((x - x.mean()) ** 2).sum()
    if total == 0:
        return {"example": float("nan"), "architecture": float("nan"), "seed": float("nan")}
    return {
        "example": float(x.shape[0] * ((mean_n - x.mean()) ** 2).sum() / total),
        "architecture": float(((group_mean - mean_n) ** 2).sum() / total),
        "seed": float(((x - group_mean) ** 2).sum() / total),
    }


def consistency_table(
    runs: ScoreRuns, transform: Literal["rank", "raw"] = "rank"
) -> list[dict[str, float | str | int]]:
    """One row per score: correlations across seeds/architectures and the variance decomposition.

    Columns: ``within_arch`` (mean Spearman between two runs of one architecture),
    ``across_arch`` (between runs of different architectures), ``split_half`` (between the means
    of two disjoint halves of the runs, alternating within each architecture),
    ``runs_for_0.9`` (Spearman-Brown ``k = 9 (1 - r) / r`` from ``within_arch``), and the
    fractions of :func:`variance_decomposition`.
    """
    values = runs.transformed(transform)
    groups = runs.groups
    pairs = list(itertools.combinations(range(len(groups)), 2))
    within = [(i, j) for i, j in pairs if groups[i] == groups[j]]
    across = [(i, j) for i, j in pairs if groups[i] != groups[j]]
    half_a = [
        r for g in dict.fromkeys(groups) for r in [i for i, x in enumerate(groups) if x == g][0::2]
    ]
    half_b = [r for r in range(len(groups)) if r not in half_a]
    rows: list[dict[str, float | str | int]] = []
    for name, v in values.items():
        r1 = _mean_pairwise(v, within)
        split = spearman(v[half_a].mean(0), v[half_b].mean(0)) if half_b else float("nan")
        runs_needed = 9 * (1 - r1) / r1 if r1 > 0 else float("inf")
        rows.append(
            {
                "score": name,
                "runs": len(groups),
                "within_arch": r1,
                "across_arch": _mean_pairwise(v, across),
                "split_half": split,
                "runs_for_0.9": runs_needed,
                **{f"var_{k}": f for k, f in variance_decomposition(v, groups).items()},
            }
        )
    return rows


@dataclass
class PCAResult:
    """PCA of the standardised run-averaged score matrix."""

    names: list[str]
    explained_variance_ratio: np.ndarray
    loadings: np.ndarray  # (components, scores)


def pca(runs: ScoreRuns, transform: Literal["rank", "raw"] = "rank") -> PCAResult:
    """PCA over scores of the ``examples x scores`` matrix of run averages (columns z-scored).

    Exact, from the ``scores x scores`` correlation matrix accumulated over blocks of examples
    (the eigenvectors of ``ZᵀZ`` are the right singular vectors of ``Z``). Examples with a
    non-finite average are left out; constant columns are dropped. The sign of each component is
    fixed so its largest loading is positive.
    """
    values = runs.transformed(transform)
    means = {n: np.nanmean(v, 0) for n, v in values.items()}
    finite = np.logical_and.reduce([np.isfinite(m) for m in means.values()])
    names = [n for n, m in means.items() if m[finite].std() > 0]
    centre = np.array([means[n][finite].mean() for n in names])
    scale = np.array([means[n][finite].std() for n in names])
    gram = np.zeros((len(names), len(names)))
    for block in _blocks(len(finite), len(names)):
        keep = finite[block]
        z = (np.stack([means[n][block][keep] for n in names], 1) - centre) / scale
        gram += z.T @ z
    eigenvalues, vectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, loadings = eigenvalues[order].clip(min=0), vectors[:, order].T
    signs = np.sign(loadings[np.arange(len(loadings)), np.abs(loadings).argmax(1)])
    return PCAResult(names, eigenvalues / eigenvalues.sum(), loadings * signs[:, None])


def _blocks(num_examples: int, width: int) -> Iterator[slice]:
    """Slices of examples whose ``permutation chunk x block x width`` float64 fits BLOCK_BYTES."""
    size = max(1, BLOCK_BYTES // (8 * _PERMUTATION_CHUNK * max(width, 1)))
    for start in range(0, num_examples, size):
        yield slice(start, min(start + size, num_examples))


class _Standardised:
    """Scores z-scored over runs and examples (NaN -> 0), served a block of examples at a time."""

    def __init__(self, runs: ScoreRuns, transform: Literal["rank", "raw"]) -> None:
        self.values = list(runs.transformed(transform).values())
        self.centre = [float(np.nanmean(v)) for v in self.values]
        self.scale = [float(np.nanstd(v)) for v in self.values]
        self.num_examples = len(runs.index)

    def block(self, examples: slice | np.ndarray) -> np.ndarray:
        """``(R, n, S)`` standardised scores of the chosen examples."""
        cols = []
        for v, c, s in zip(self.values, self.centre, self.scale, strict=True):
            part = v[:, examples]
            cols.append(np.nan_to_num((part - c) / s) if s > 0 else np.zeros_like(part))
        return np.stack(cols, axis=2)


def _group_statistic(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per example: sqrt of the run-weighted spread of the group means, normed over scores.

    For two groups of runs this is ``||mean_A - mean_B|| * sqrt(n_A n_B) / n``.
    Works on ``(P, R)`` label matrices (one permutation per row) for the null distribution.
    """
    labels = np.atleast_2d(labels)
    total = x.mean(0)  # (N, S)
    stat = np.zeros((labels.shape[0], x.shape[1]))
    for g in np.unique(labels):
        mask = (labels == g).astype(np.float64)  # (P, R)
        count = mask.sum(1)  # (P,)
        mean = np.einsum("pr,rns->pns", mask, x) / count[:, None, None]
        stat += count[:, None] / x.shape[0] * ((mean - total) ** 2).sum(2)
    return np.sqrt(stat)


def _statistic(data: _Standardised, runs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The observed statistic of every example, over the chosen runs, block by block."""
    out = np.empty(data.num_examples)
    for block in _blocks(data.num_examples, len(data.values)):
        out[block] = _group_statistic(data.block(block)[runs], labels)[0]
    return out


def fingerprint(
    runs: ScoreRuns,
    num_permutations: int = 1000,
    seed: int = 0,
    transform: Literal["rank", "raw"] = "rank",
) -> dict[str, np.ndarray]:
    """Per-example permutation test of "this example's scores depend on the architecture".

    The statistic is the spread of the per-architecture mean score vectors (all scores,
    standardised, combined with a Euclidean norm). Its null distribution comes from
    ``num_permutations`` random re-assignments of runs to architectures (group sizes kept, the
    same permutation for every example). The p-value is ``(1 + #{null >= observed}) / (1 + P)``;
    ``q_value`` is the Benjamini-Hochberg adjustment over examples.

    Returns:
        ``index``, ``statistic``, ``p_value`` and ``q_value``, each ``(N,)``.
    """
    labels = np.asarray(runs.groups)
    if len(set(runs.groups)) < 2:
        raise ValueError("Fingerprinting needs runs of at least two architectures.")
    if num_permutations < 1:
        raise ValueError(f"num_permutations must be >= 1, got {num_permutations}.")
    data = _Standardised(runs, transform)
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(labels) for _ in range(num_permutations)])
    observed = np.empty(data.num_examples)
    exceed = np.zeros(data.num_examples)
    for block in _blocks(data.num_examples, len(data.values)):
        x = data.block(block)
        observed[block] = _group_statistic(x, labels)[0]
        for start in range(0, num_permutations, _PERMUTATION_CHUNK):
            null = _group_statistic(x, perms[start : start + _PERMUTATION_CHUNK])
            exceed[block] += (null >= observed[block] - 1e-12).sum(0)
    p = (1 + exceed) / (1 + num_permutations)
    return {"index": runs.index, "statistic": observed, "p_value": p, "q_value": _bh(p)}


def min_attainable_p(groups: Sequence[str]) -> float:
    """Smallest p-value the permutation test can reach with these runs (its resolution).

    The statistic does not change when the runs of one group are reordered, nor when groups of
    equal size swap labels, so only ``n! / prod(n_g!) / prod(m_k!)`` assignments are distinct
    (``m_k`` groups share size ``k``); with exact enumeration the observed one has p = 1 / that.
    """
    sizes = [groups.count(g) for g in dict.fromkeys(groups)]
    distinct = math.factorial(len(groups))
    for size in sizes:
        distinct //= math.factorial(size)
    for size in set(sizes):
        distinct //= math.factorial(sizes.count(size))
    return 1.0 / distinct


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values."""
    n = len(p)
    order = np.argsort(p)
    adjusted = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def classify_architecture(
    runs: ScoreRuns, top_k: int = 20, transform: Literal["rank", "raw"] = "rank"
) -> float:
    """Leave-one-run-out accuracy of predicting a run's architecture from ``top_k`` examples.

    For each held-out run the most architecture-sensitive examples are chosen from the *other*
    runs only (largest fingerprint statistic), and the run is assigned to the architecture whose
    mean score vector on those examples is nearest (Euclidean).
    """
    data = _Standardised(runs, transform)
    labels = np.asarray(runs.groups)
    correct = 0
    for r in range(len(labels)):
        rest = np.arange(len(labels)) != r
        if len(set(labels[rest])) < 2:
            raise ValueError("Every architecture needs at least 2 runs for leave-one-run-out.")
        stat = _statistic(data, rest, labels[rest])
        top = np.sort(np.argsort(stat)[::-1][:top_k])
        x = data.block(top)
        distances = {
            g: np.linalg.norm(x[r] - x[rest & (labels == g)].mean(0))
            for g in np.unique(labels[rest])
        }
        correct += min(distances, key=distances.__getitem__) == labels[r]
    return correct / len(labels)

"""Consistency of difficulty scores across runs, and architecture fingerprinting.

Reads the NetCDF files written by :class:`~lightning_climate.callbacks.DifficultyScores` (one per
run) and follows the methodology of Kwok et al., "Dataset Difficulty and the Role of Inductive
Bias" (2024):

* **variance across seeds and architectures**: mean pairwise Spearman correlation of a score
  between runs of the same architecture (test-retest) and of different architectures, split-half
  correlation of run averages, the Spearman-Brown number of runs for a reliability of 0.9, and a
  decomposition of the score's variance into example, architecture (x example) and seed parts;
* **one notion of difficulty**: PCA of the run-averaged ``examples x scores`` matrix;
* **fingerprinting**: a per-example permutation test of whether two or more architectures score
  an example differently (Manhattan plot), and leave-one-run-out classification of a run's
  architecture from its scores on the most sensitive examples.

Every score is first reduced over the recorded epochs (mean over epochs, or the last record for
the cumulative scores ``forgetting``, ``first_learned``, ``first_unforgettable``,
``unforgettable`` and ``vog``) and then, by default, turned into per-run ranks scaled to
``[0, 1]`` (average ranks for ties), so scores on different scales can be compared.

Command line::

    python -m lightning_climate.analysis.difficulty runs/*.nc --out analysis/ --group-by architecture

writes ``consistency.csv``/``consistency.md``, ``fingerprint.csv`` and the plots
``consistency.png``, ``score_correlation.png``, ``pca.png`` and ``manhattan.png``.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.stats import rankdata

from lightning_climate.utils import atomic_path, lazy_import

__all__ = [
    "PCAResult",
    "ScoreRuns",
    "classify_architecture",
    "consistency_table",
    "fingerprint",
    "load_runs",
    "main",
    "markdown_table",
    "min_attainable_p",
    "pca",
    "spearman",
    "variance_decomposition",
    "write_report",
]

_LAST_RECORD = ("forgetting", "first_learned", "first_unforgettable", "unforgettable", "vog")


@dataclass
class ScoreRuns:
    """Scores of ``R`` runs on the same ``N`` examples.

    Attributes:
        scores: score name -> ``(R, N)`` array (one value per run and example).
        groups: architecture (or other grouping attribute) of each run.
        seeds: seed of each run (``-1`` when unknown).
        index: ``(N,)`` example indices shared by all runs.
    """

    scores: dict[str, np.ndarray]
    groups: list[str]
    seeds: list[int]
    index: np.ndarray

    def transformed(self, transform: Literal["rank", "raw"] = "rank") -> dict[str, np.ndarray]:
        """Per-run ranks scaled to [0, 1] (``"rank"``), or the raw values."""
        if transform == "raw":
            return self.scores
        out = {}
        for name, values in self.scores.items():
            ranks = rankdata(values, axis=1, nan_policy="omit")
            out[name] = (ranks - 1) / max(values.shape[1] - 1, 1)
        return out


def load_runs(
    paths: Sequence[str | Path],
    scores: Sequence[str] | None = None,
    group_by: str = "architecture",
    epochs: Sequence[int] | None = None,
) -> ScoreRuns:
    """Read score files and reduce each score over epochs to one value per run and example.

    Args:
        paths: NetCDF files written by ``DifficultyScores``.
        scores: scores to keep; default: those present in every file.
        group_by: file attribute naming the architecture (or any grouping) of a run.
        epochs: keep only these recorded epochs before reducing; default all.

    Raises:
        FileNotFoundError: for a missing file; ValueError for files over different examples or
            without the grouping attribute.
    """
    xr = lazy_import("xarray")
    if len(paths) < 2:
        raise ValueError(f"The analysis needs at least 2 score files, got {len(paths)}.")
    datasets = []
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(
                f"Score file {path} not found; train with the DifficultyScores callback (its "
                "`path` argument) to write it."
            )
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            datasets.append(ds.load())
    names = scores or sorted(set.intersection(*(set(ds.data_vars) for ds in datasets)))
    index = datasets[0]["index"].values
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    groups, seeds = [], []
    for path, ds in zip(paths, datasets, strict=True):
        if not np.array_equal(ds["index"].values, index):
            raise ValueError(
                f"{path} scores other examples than {paths[0]}; use runs on one split."
            )
        if group_by not in ds.attrs:
            raise ValueError(
                f"{path} has no attribute '{group_by}'; choose --group-by from {sorted(ds.attrs)} "
                "or pass run_attrs={'architecture': ...} to DifficultyScores."
            )
        groups.append(str(ds.attrs[group_by]))
        seeds.append(int(ds.attrs.get("seed", -1)))
        if epochs is not None:
            ds = ds.isel(epoch=np.isin(ds["epoch"].values, list(epochs)))
        for name in names:
            if name not in ds:
                raise ValueError(f"{path} has no score '{name}'; it has {sorted(ds.data_vars)}.")
            data = ds[name].values
            done = np.isfinite(data).any(axis=1)
            if not done.any():
                raise ValueError(f"{path}: score '{name}' was never computed in the chosen epochs.")
            if name in _LAST_RECORD:
                values[name].append(data[np.flatnonzero(done)[-1]])
            else:
                values[name].append(np.nanmean(data[done], axis=0))
    return ScoreRuns({n: np.stack(v) for n, v in values.items()}, groups, seeds, index)


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

    Constant columns are dropped. The sign of each component is fixed so its largest loading is
    positive.
    """
    values = runs.transformed(transform)
    names = [n for n, v in values.items() if np.nanstd(np.nanmean(v, 0)) > 0]
    matrix = np.stack([np.nanmean(values[n], 0) for n in names], axis=1)
    matrix = matrix[np.isfinite(matrix).all(1)]
    z = (matrix - matrix.mean(0)) / matrix.std(0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    return PCAResult(names, s**2 / (s**2).sum(), vt * signs[:, None])


def _standardised_stack(runs: ScoreRuns, transform: Literal["rank", "raw"]) -> np.ndarray:
    """``(R, N, S)`` scores, each z-scored over runs and examples, NaN set to 0."""
    values = runs.transformed(transform)
    cols = []
    for v in values.values():
        sd = np.nanstd(v)
        cols.append(np.nan_to_num((v - np.nanmean(v)) / sd) if sd > 0 else np.zeros_like(v))
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
    x = _standardised_stack(runs, transform)
    observed = _group_statistic(x, labels)[0]
    rng = np.random.default_rng(seed)
    exceed = np.zeros(x.shape[1])
    for start in range(0, num_permutations, 100):
        perms = np.stack(
            [rng.permutation(labels) for _ in range(min(100, num_permutations - start))]
        )
        exceed += (_group_statistic(x, perms) >= observed - 1e-12).sum(0)
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
    x = _standardised_stack(runs, transform)
    labels = np.asarray(runs.groups)
    correct = 0
    for r in range(len(labels)):
        rest = np.arange(len(labels)) != r
        if len(set(labels[rest])) < 2:
            raise ValueError("Every architecture needs at least 2 runs for leave-one-run-out.")
        stat = _group_statistic(x[rest], labels[rest])[0]
        top = np.argsort(stat)[::-1][:top_k]
        distances = {
            g: np.linalg.norm(x[r, top] - x[rest & (labels == g)][:, top].mean(0))
            for g in np.unique(labels[rest])
        }
        correct += min(distances, key=distances.__getitem__) == labels[r]
    return correct / len(labels)


# ---------------------------------------------------------------------------- output


def _write_csv(path: Path, rows: list[dict[str, float | str | int]]) -> None:
    with atomic_path(path) as tmp:
        lines = [",".join(rows[0])]
        lines += [",".join(_fmt(v) for v in row.values()) for row in rows]
        tmp.write_text("\n".join(lines) + "\n")


def _fmt(value: float | str) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, float | str | int]]) -> str:
    """The rows as a GitHub markdown table."""
    head = "| " + " | ".join(rows[0]) + " |"
    sep = "|" + "---|" * len(rows[0])
    body = ["| " + " | ".join(_fmt(v) for v in row.values()) + " |" for row in rows]
    return "\n".join([head, sep, *body]) + "\n"


def _save(fig: object, path: Path) -> None:
    plt = lazy_import("matplotlib.pyplot")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)  # type: ignore[attr-defined]
    plt.close(fig)


def write_report(
    runs: ScoreRuns,
    out: str | Path,
    num_permutations: int = 1000,
    seed: int = 0,
    top_k: int = 20,
    transform: Literal["rank", "raw"] = "rank",
) -> list[dict[str, float | str | int]]:
    """Write the tables and PNG plots of the analysis to ``out`` and return the consistency rows."""
    matplotlib = lazy_import("matplotlib")
    matplotlib.use("agg")
    plt = lazy_import("matplotlib.pyplot")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = consistency_table(runs, transform)
    _write_csv(out / "consistency.csv", rows)
    with atomic_path(out / "consistency.md") as tmp:
        tmp.write_text(markdown_table(rows))
    names = [str(r["score"]) for r in rows]

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 4))
    width = 0.27
    pos = np.arange(len(names))
    for k, key in enumerate(["within_arch", "across_arch", "split_half"]):
        ax.bar(pos + (k - 1) * width, [float(r[key]) for r in rows], width, label=key)
    ax.set_xticks(pos, names, rotation=45, ha="right")
    ax.set_ylabel("Spearman correlation")
    ax.set_ylim(top=1.2)
    ax.legend(loc="upper center", ncol=3)
    fig.tight_layout()
    _save(fig, out / "consistency.png")

    values = runs.transformed(transform)
    averaged = {n: np.nanmean(v, 0) for n, v in values.items()}
    corr = np.array([[spearman(averaged[a], averaged[b]) for b in names] for a in names])
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(names), 1 + 0.5 * len(names)))
    image = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="Spearman (run averages)")
    fig.tight_layout()
    _save(fig, out / "score_correlation.png")

    result = pca(runs, transform)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(range(1, len(result.explained_variance_ratio) + 1), result.explained_variance_ratio)
    ax1.set_xlabel("component")
    ax1.set_ylabel("explained variance ratio")
    ax2.bar(result.names, result.loadings[0])
    ax2.set_ylabel("PC1 loading")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    _save(fig, out / "pca.png")

    if len(set(runs.groups)) >= 2:
        fp = fingerprint(runs, num_permutations, seed, transform)
        fp_rows: list[dict[str, float | str | int]] = [
            {"index": int(i), "statistic": float(s), "p_value": float(p), "q_value": float(q)}
            for i, s, p, q in zip(*fp.values(), strict=True)
        ]
        _write_csv(out / "fingerprint.csv", fp_rows)
        fig, ax = plt.subplots(figsize=(10, 3.5))
        ax.scatter(fp["index"], -np.log10(fp["p_value"]), s=4)
        ax.axhline(-np.log10(0.05), color="k", ls="--", lw=1, label="p = 0.05")
        significant = fp["p_value"][fp["q_value"] <= 0.05]
        if len(significant):
            ax.axhline(-np.log10(significant.max()), color="r", lw=1, label="BH q = 0.05")
        ax.set_xlabel("example index")
        ax.set_ylabel("-log10 p (architecture)")
        ax.legend()
        fig.tight_layout()
        _save(fig, out / "manhattan.png")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: ``python -m lightning_climate.analysis.difficulty FILES --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_climate.analysis.difficulty", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", help="score files written by DifficultyScores")
    parser.add_argument("--out", required=True, help="directory for the tables and PNG plots")
    parser.add_argument(
        "--group-by", default="architecture", help="file attribute of a run's group"
    )
    parser.add_argument("--scores", nargs="*", default=None, help="scores to analyse (default all)")
    parser.add_argument(
        "--epochs", nargs="*", type=int, default=None, help="recorded epochs to use"
    )
    parser.add_argument("--permutations", type=int, default=1000, help="permutations per test")
    parser.add_argument("--top-k", type=int, default=20, help="examples for the classifier")
    parser.add_argument("--transform", choices=["rank", "raw"], default="rank")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = load_runs(args.files, args.scores, args.group_by, args.epochs)
    rows = write_report(runs, args.out, args.permutations, args.seed, args.top_k, args.transform)
    print(markdown_table(rows), end="")
    if len(set(runs.groups)) >= 2:
        print(
            f"fingerprint: smallest attainable permutation p with these runs = "
            f"{min_attainable_p(runs.groups):.4g} (add runs per architecture to resolve less)"
        )
    if len(set(runs.groups)) >= 2 and all(runs.groups.count(g) >= 2 for g in set(runs.groups)):
        accuracy = classify_architecture(runs, args.top_k, args.transform)
        print(
            f"leave-one-run-out architecture accuracy (top {args.top_k} examples): {accuracy:.3f}"
        )


if __name__ == "__main__":
    main()

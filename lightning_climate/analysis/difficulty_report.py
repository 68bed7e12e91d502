"""Tables and PNG plots of the difficulty analysis (``python -m lightning_climate.analysis.difficulty``).

Written files: ``consistency.csv``/``consistency.md``, ``fingerprint.csv``, ``consistency.png``,
``score_correlation.png``, ``pca.png`` and ``manhattan.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_climate.analysis.difficulty_runs import ScoreRuns
from lightning_climate.analysis.difficulty_stats import (
    consistency_table,
    fingerprint,
    pca,
    spearman,
)
from lightning_climate.utils import atomic_path, lazy_import

__all__ = ["markdown_table", "write_report"]


def _write_csv(path: Path, rows: list[dict[str, float | str | int]]) -> None:
    with atomic_path(path) as tmp:
        lines = [",".join(rows[0])]
        lines += [",".join(_fmt(v) for v in row.values()) for row in rows]
        tmp.write_text("\n".join(lines) + "\n")


def _write_fingerprint(path: Path, fp: dict[str, np.ndarray]) -> None:
    """The per-example test results as CSV, written by numpy in one pass (no row objects)."""
    table = np.column_stack([fp["index"], fp["statistic"], fp["p_value"], fp["q_value"]])
    with atomic_path(path) as tmp:
        np.savetxt(
            tmp,
            table,
            fmt=["%d", "%.4g", "%.4g", "%.4g"],
            delimiter=",",
            header="index,statistic,p_value,q_value",
            comments="",
        )


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
        _write_fingerprint(out / "fingerprint.csv", fp)
        fig, ax = plt.subplots(figsize=(10, 3.5))
        # one rasterised point per example: a 1.28 M-point scatter as vectors would not fit
        ax.plot(fp["index"], -np.log10(fp["p_value"]), ",", rasterized=True)
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

"""Consistency of difficulty scores across runs, and architecture fingerprinting.

Reads the Zarr stores (and the NetCDF files of earlier versions) written by
:class:`~lightning_climate.callbacks.DifficultyScores` (one per run), one record at a time, and
follows the methodology of Kwok et al., "Dataset Difficulty and the Role of Inductive
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
``[0, 1]`` (average ranks for ties), so scores on different scales can be compared. The parts:
:mod:`.difficulty_runs` (reading), :mod:`.difficulty_stats` (statistics, streamed over blocks of
examples) and :mod:`.difficulty_report` (tables and plots).

Command line::

    python -m lightning_climate.analysis.difficulty runs/*.zarr --out analysis/ --group-by architecture

writes ``consistency.csv``/``consistency.md``, ``fingerprint.csv`` and the plots
``consistency.png``, ``score_correlation.png``, ``pca.png`` and ``manhattan.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning_climate.analysis.difficulty_report import markdown_table, write_report
from lightning_climate.analysis.difficulty_runs import ScoreRuns, load_runs
from lightning_climate.analysis.difficulty_stats import (
    PCAResult,
    classify_architecture,
    consistency_table,
    fingerprint,
    min_attainable_p,
    pca,
    spearman,
    variance_decomposition,
)

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

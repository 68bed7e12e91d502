"""SchNet forward+backward time with each PhAST rewiring against the full graph, same batch.

Batch: the 3 real OC20 systems (tests/data/oc20), replicated 4 times (12 graphs). SchNet as in
the OC20 IS2RE configs (hidden 384, 128 filters, 4 interactions, 100 Gaussians, cutoff 6 Å).
Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_rewiring.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from lightning_climate.datasets.oc20 import entry_to_data, read_npz_batch
from lightning_climate.models import CatalystModel
from lightning_climate.transforms import (
    OneSupernodePerAtomType,
    OneSupernodePerGraph,
    RemoveAdsorbateCatalystEdges,
    RemoveTag0,
)

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "oc20" / "is2re_bs3.npz"


def main() -> None:
    torch.manual_seed(0)
    graphs = [entry_to_data(e, i, f"graph {i}") for i, e in enumerate(read_npz_batch(SAMPLE))] * 4
    model = CatalystModel(384, 128, 4, 100, 6.0)
    variants = {
        "full graph": None,
        "remove tag 0": RemoveTag0(),
        "one super-node per graph": OneSupernodePerGraph(),
        "one super-node per atom type": OneSupernodePerAtomType(),
        "disconnected (ads-cat edges removed)": RemoveAdsorbateCatalystEdges(),
    }
    baseline = None
    print("| graph | atoms | edges | fwd+bwd (ms) | speed-up vs full |")
    print("|---|---|---|---|---|")
    for name, transform in variants.items():
        batch = Batch.from_data_list(
            [g.clone() if transform is None else transform(g.clone()) for g in graphs]
        )

        def step(batch: Batch = batch) -> None:
            model.zero_grad()
            model(batch)["energy"].sum().backward()

        step()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        best = min(times)
        baseline = baseline or best
        print(
            f"| {name} | {batch.num_nodes} | {batch.edge_index.shape[1]} | {1e3 * best:.1f} | "
            f"{baseline / best:.2f}x |"
        )


if __name__ == "__main__":
    main()

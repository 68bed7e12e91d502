"""Data-loading throughput of the OC20 LMDB reader (our npz entries and upstream pickles).

Writes the 3 real OC20 systems 200 times (600 entries, stored edges included) in both layouts,
then reads every sample through OC20LMDBDataset and through a PyG-collated DataLoader.
Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_lmdb.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader
from torch_geometric.loader.dataloader import Collater

from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "oc20" / "is2re_bs3.npz"


def main() -> None:
    entries = read_npz_batch(SAMPLE) * 200
    print("| layout | file size (MB) | samples/s (dataset) | samples/s (DataLoader, batch 16) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("npz", "pickle"):
            path = Path(tmp) / f"{layout}.lmdb"
            write_oc20_lmdb(path, entries, format=layout)
            dataset = OC20LMDBDataset(path, allow_pickle=layout == "pickle")
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset[i]
            per_sample = len(dataset) / (time.perf_counter() - start)
            loader = DataLoader(dataset, batch_size=16, collate_fn=Collater(None))
            start = time.perf_counter()
            for _ in loader:
                pass
            batched = len(dataset) / (time.perf_counter() - start)
            size = path.stat().st_size / 1e6
            print(f"| {layout} | {size:.1f} | {per_sample:.0f} | {batched:.0f} |")


if __name__ == "__main__":
    main()

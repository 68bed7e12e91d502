"""Data-loading throughput of the OC20 LMDB reader against a plain ``lmdb`` + ``pickle.loads`` reader.

The 3 real OC20 systems of ``tests/data/oc20`` are written ``--copies`` times in three layouts:

- ``pickle``: the downloaded IS2RE layout (pickled PyG ``Data``, stored ``distances``);
- ``atoms_to_graphs``: fairchem's current ``AtomsToGraphs`` defaults (pickled, uint8 atomic
  numbers, ``edge_distance_vec``, no ``distances``: our reader computes them);
- ``npz``: our pickle-free layout.

The peer is what fairchem's ``LmdbDataset`` does per entry, with no checks at all: ``txn.get`` then
full ``pickle.loads`` of the downloaded layout (its own copy of the ``pickle`` file). ``OC20LMDBDataset`` runs every check (shapes, elements, NaN/Inf, cell,
size caps, CRC for npz, restricted unpickling). Both go through the same PyG collater in a
DataLoader (batch 16) with 0, 2 and 4 workers (persistent; the first epoch is a warm-up); epochs of
every reader are interleaved and the best of ``--repeats`` is kept, so machine load hits all alike.
``ratio`` is our samples/s over the peer's at the same worker count (>= 0.8 is the target).

``--scale`` also reads a file several times larger than the reader's memory and reports the peak
anonymous RSS (``RssAnon``: the mapped file's pages are page cache, not the reader's memory).

Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_lmdb.py [--copies 400] [--repeats 3] [--scale]``.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data
from torch_geometric.loader.dataloader import Collater

from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "oc20" / "is2re_bs3.npz"


class PlainPickleReader(Dataset[Data]):
    """The peer, as fairchem's ``LmdbDataset``: one environment, ``txn.get``, ``pickle.loads``.

    The environment is opened once and inherited by forked workers (py-lmdb refuses to reopen it
    there).
    """

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False,
            max_readers=1,
        )  # fmt: skip
        with self.env.begin() as txn:
            self.length = pickle.loads(txn.get(b"length"))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Data:
        with self.env.begin() as txn:
            return pickle.loads(txn.get(str(index).encode("ascii")))


def _atoms_to_graphs(entry: dict[str, np.ndarray]) -> Data:
    """An entry with the fields and dtypes of fairchem ``AtomsToGraphs`` defaults."""
    pos = torch.from_numpy(entry["pos"])
    cell = torch.from_numpy(entry["cell"]).view(1, 3, 3)
    edge_index = torch.from_numpy(entry["edge_index"])
    offsets = torch.from_numpy(entry["cell_offsets"])
    row, col = edge_index
    return Data(
        cell=cell,
        pos=pos,
        atomic_numbers=torch.from_numpy(entry["atomic_numbers"]).to(torch.uint8),
        natoms=len(pos),
        tags=torch.from_numpy(entry["tags"]).to(torch.int32),
        fixed=torch.from_numpy(entry["fixed"]).to(torch.int32),
        sid=int(entry["sid"]),
        y_init=np.float64(entry["y_init"]),
        y_relaxed=np.float64(entry["y_relaxed"]),
        edge_index=edge_index,
        cell_offsets=offsets,
        edge_distance_vec=pos[row] - pos[col] + offsets.float() @ cell[0],
        nedges=edge_index.shape[1],
    )


def _write_pickles(path: Path, items: list[Data]) -> None:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 34, lock=False, meminit=False)
    with env.begin(write=True) as txn:
        for i, item in enumerate(items):
            txn.put(str(i).encode("ascii"), pickle.dumps(item, protocol=-1))
        txn.put(b"length", pickle.dumps(len(items), protocol=-1))
    env.close()


def _loader(dataset: Dataset[Any], workers: int) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=16,
        num_workers=workers,
        collate_fn=Collater(None),
        persistent_workers=workers > 0,
    )


def _epoch(loader: DataLoader[Any]) -> float:
    start = time.perf_counter()
    count = sum(int(batch.num_graphs) for batch in loader)
    return count / (time.perf_counter() - start)


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(root: Path, copies: int, repeats: int) -> None:
    """Print samples/s of ours and of the peer for each layout and worker count."""
    entries = read_npz_batch(SAMPLE) * copies
    write_oc20_lmdb(root / "npz.lmdb", entries, format="npz")
    write_oc20_lmdb(root / "pickle.lmdb", entries, format="pickle")
    shutil.copy(root / "pickle.lmdb", root / "peer.lmdb")
    _write_pickles(root / "atoms_to_graphs.lmdb", [_atoms_to_graphs(e) for e in entries])
    print(f"{len(entries)} real OC20 systems per epoch; best of {repeats} interleaved epochs")
    print("| layout | workers | MB | ours (samples/s) | peer (samples/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for workers in (0, 2, 4):
        loaders = {"peer": _loader(PlainPickleReader(root / "peer.lmdb"), workers)}
        for layout in ("npz", "pickle", "atoms_to_graphs"):
            dataset = OC20LMDBDataset(root / f"{layout}.lmdb", allow_pickle=layout != "npz")
            loaders[layout] = _loader(dataset, workers)
        best = dict.fromkeys(loaders, 0.0)
        for loader in loaders.values():
            _epoch(loader)  # warm-up: workers start, pages are mapped
        for _ in range(repeats):
            for name, loader in loaders.items():
                best[name] = max(best[name], _epoch(loader))
        for layout in ("npz", "pickle", "atoms_to_graphs"):
            size = (root / f"{layout}.lmdb").stat().st_size / 1e6
            ratio = best[layout] / best["peer"]
            print(
                f"| {layout} | {workers} | {size:.0f} | {best[layout]:.0f} | {best['peer']:.0f} "
                f"| {ratio:.2f} |"
            )
        del loaders


def scale(root: Path, gigabytes: float) -> None:
    """Read a file several times the reader's memory; print throughput and peak RssAnon."""
    entries = read_npz_batch(SAMPLE)
    per_entry = 40_000  # about the mean npz entry of the three systems
    count = int(gigabytes * 1e9 / per_entry)
    path = root / "large.lmdb"
    write_oc20_lmdb(path, (entries[i % 3] for i in range(count)), format="npz")
    size = path.stat().st_size / 1e6
    dataset = OC20LMDBDataset(path)
    before = _rss_anon_mb()
    peak = before
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
        if i % 1000 == 0:
            peak = max(peak, _rss_anon_mb())
    rate = len(dataset) / (time.perf_counter() - start)
    print(
        f"large file: {size:.0f} MB, {len(dataset)} entries, {rate:.0f} samples/s (0 workers); "
        f"reader RssAnon {before:.0f} MB before, peak {peak:.0f} MB "
        f"(file / peak = {size / peak:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=400, help="copies of the 3 real systems")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per reader")
    parser.add_argument("--scale", type=float, default=0.0, help="also read a file of this many GB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        throughput(Path(tmp), args.copies, args.repeats)
        if args.scale > 0:
            scale(Path(tmp), args.scale)


if __name__ == "__main__":
    main()

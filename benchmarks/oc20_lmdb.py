"""Data-loading throughput of the OC20 LMDB reader against a plain ``lmdb`` + ``pickle.loads`` reader.

The 3 real OC20 systems of ``tests/data/oc20`` are written ``--copies`` times in three layouts:

- ``pickle``: the downloaded IS2RE layout (pickled PyG ``Data``, stored ``distances``);
- ``atoms_to_graphs``: fairchem's current ``AtomsToGraphs`` defaults (pickled, uint8 atomic
  numbers, ``edge_distance_vec``, no ``distances``: our reader computes them);
- ``npz``: our pickle-free layout.

The peer is what fairchem's ``LmdbDataset`` does per entry, with no checks at all: ``txn.get`` then
full ``pickle.loads`` of the downloaded layout (its own copy of the ``pickle`` file). ``OC20LMDBDataset`` runs every check (shapes, elements, NaN/Inf, cell,
size caps, CRC for npz, restricted unpickling). Both go through the same PyG collater in a
DataLoader (batch 16) with 0, 2 and 4 workers; epochs of every reader are interleaved after a
warm-up epoch and the best of ``--repeats`` is kept. Throughput is given per wall-clock second and
per CPU second summed over the main process and its workers; ``ratio per core`` is ours over the
peer's per CPU second at the same worker count (>= 0.8 is the target). On a machine shared with
other jobs the wall-clock numbers swing with the load; the per-core numbers do not.

``--scale GB`` also writes the systems into files of about GB gigabytes (npz and pickle), several
times the reader's memory, reads them once and reports the anonymous RSS before and at its peak
(``RssAnon``: the mapped file's pages are page cache, not the reader's memory).

Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_lmdb.py [--copies 400] [--repeats 3] [--scale 2]``.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import pickle
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data
from torch_geometric.loader.dataloader import Collater

from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "oc20" / "is2re_bs3.npz"
LAYOUTS = ("npz", "pickle", "atoms_to_graphs")


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


def _loader(dataset: Dataset[Any], workers: int) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=Collater(None))


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the finished DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _epoch(loader: DataLoader[Any]) -> tuple[float, float]:
    """Samples per wall-clock second and per CPU second (all processes) of one epoch."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    count = sum(int(batch.num_graphs) for batch in loader)  # the workers exit at the end
    return count / (time.perf_counter() - wall), count / (_cpu_seconds() - cpu)


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(root: Path, copies: int, repeats: int) -> None:
    """Print samples/s of ours and of the peer for each layout and worker count."""
    entries = read_npz_batch(SAMPLE) * copies
    for layout in LAYOUTS:
        write_oc20_lmdb(root / f"{layout}.lmdb", entries, format=layout)
    shutil.copy(root / "pickle.lmdb", root / "peer.lmdb")
    print(f"{len(entries)} real OC20 systems per epoch; best of {repeats} interleaved epochs")
    print(
        "| layout | workers | MB | ours (samples/s) | peer (samples/s) | ours (samples/CPU-s) "
        "| peer (samples/CPU-s) | ratio per core |"
    )
    print("|---|---|---|---|---|---|---|---|")
    datasets: dict[str, Dataset[Any]] = {"peer": PlainPickleReader(root / "peer.lmdb")}
    for layout in LAYOUTS:
        datasets[layout] = OC20LMDBDataset(root / f"{layout}.lmdb", allow_pickle=layout != "npz")
    for workers in (0, 2, 4):
        loaders = {name: _loader(dataset, workers) for name, dataset in datasets.items()}
        for loader in loaders.values():
            _epoch(loader)  # warm-up: pages are mapped, caches filled
        wall, cpu = dict.fromkeys(loaders, 0.0), dict.fromkeys(loaders, 0.0)
        for _ in range(repeats):
            for name, loader in loaders.items():
                rate, per_cpu = _epoch(loader)
                wall[name], cpu[name] = max(wall[name], rate), max(cpu[name], per_cpu)
        for layout in LAYOUTS:
            size = (root / f"{layout}.lmdb").stat().st_size / 1e6
            print(
                f"| {layout} | {workers} | {size:.0f} | {wall[layout]:.0f} | {wall['peer']:.0f} "
                f"| {cpu[layout]:.0f} | {cpu['peer']:.0f} | {cpu[layout] / cpu['peer']:.2f} |"
            )


def _write_large(root: Path, count: int) -> None:
    entries = read_npz_batch(SAMPLE)
    for layout in ("npz", "pickle"):
        stream = (entries[i % 3] for i in range(count))
        write_oc20_lmdb(root / f"large_{layout}.lmdb", stream, format=layout)
    shutil.copy(root / "large_pickle.lmdb", root / "large_peer.lmdb")


def _read_all(name: str, path: Path, results: Any) -> None:
    before = peak = _rss_anon_mb()
    reader = PlainPickleReader(path) if name == "peer" else OC20LMDBDataset(path, allow_pickle=True)
    start = time.perf_counter()
    for i in range(len(reader)):
        reader[i]
        if i % 500 == 0:
            peak = max(peak, _rss_anon_mb())
    results.put((name, len(reader) / (time.perf_counter() - start), before, peak))


def scale(root: Path, gigabytes: float) -> None:
    """Read files several times the reader's memory; print throughput and RssAnon growth.

    The files are written, and each reader runs, in a fresh forked process, so no reader inherits
    another's (or the writer's) heap.
    """
    sizes = []
    for entry in read_npz_batch(SAMPLE):
        buffer = io.BytesIO()
        np.savez(buffer, **entry)
        sizes.append(len(buffer.getvalue()))
    context = multiprocessing.get_context("fork")
    writer = context.Process(
        target=_write_large, args=(root, int(gigabytes * 1e9 / np.mean(sizes)))
    )
    writer.start()
    writer.join()
    results = context.Queue()
    print("| reader (0 workers) | file (MB) | samples/s | RssAnon at start (MB) | peak (MB) |")
    print("|---|---|---|---|---|")
    for name, layout in (("peer", "peer"), ("ours", "npz"), ("ours", "pickle")):
        path = root / f"large_{layout}.lmdb"
        process = context.Process(target=_read_all, args=(name, path, results))
        process.start()
        _, rate, before, peak = results.get()
        process.join()
        size = path.stat().st_size / 1e6
        label = "peer (pickle)" if name == "peer" else f"ours ({layout})"
        print(f"| {label} | {size:.0f} | {rate:.0f} | {before:.0f} | {peak:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--copies", type=int, default=400, help="copies of the 3 real systems (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per reader")
    parser.add_argument("--scale", type=float, default=0.0, help="also read a file of this many GB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.copies > 0:
            throughput(Path(tmp), args.copies, args.repeats)
        if args.scale > 0:
            scale(Path(tmp), args.scale)


if __name__ == "__main__":
    main()

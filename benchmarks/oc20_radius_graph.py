"""Time RadiusGraphPBC against raw vesin and ASE's neighbour list, in one run.

"all pairs" is the wrapper with ``max_neighbors=None`` (conversions, OC20 edge direction, integer
offsets); "nearest 50" adds OC20's truncation, which needs a sort by (centre, distance) that vesin
does not do. Systems: the 3 real OC20 sample systems (tests/data/oc20) and larger periodic cells (a 6x6x4 Pt(111)
slab with an adsorbate, 144+ atoms, and a 4x4x4 fcc Cu bulk, 256 atoms). Cutoff 6 Å; our wrapper
also applies OC20's conventions (edge direction, 50-nearest truncation, differentiable distances).
Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_radius_graph.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import vesin_torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111
from ase.neighborlist import neighbor_list

from lightning_climate.datasets.oc20 import read_npz_batch
from lightning_climate.transforms import radius_graph_pbc

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "oc20" / "is2re_bs3.npz"


def best_of(fn: Callable[[], object], repeat: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def systems() -> dict[str, Atoms]:
    out = {}
    for i, e in enumerate(read_npz_batch(SAMPLE)):
        out[f"OC20 sample {i} ({len(e['pos'])} atoms)"] = Atoms(
            numbers=e["atomic_numbers"], positions=e["pos"], cell=e["cell"], pbc=True
        )
    slab = fcc111("Pt", size=(6, 6, 4), vacuum=7.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.pbc = True
    out[f"Pt(111) 6x6x4 + O ({len(slab)} atoms)"] = slab
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    out[f"Cu bulk 4x4x4 ({len(cu)} atoms)"] = cu
    return out


def main() -> None:
    print(
        "| system | ours, all pairs (ms) | ours, nearest 50 (ms) | raw vesin (ms) | ASE (ms) "
        "| all / vesin | nearest 50 / vesin | ASE / ours (nearest 50) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, atoms in systems().items():
        pos = torch.tensor(atoms.positions, dtype=torch.float32)
        cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float32)
        ptr = torch.tensor([0, len(atoms)])
        nl = vesin_torch.NeighborList(cutoff=6.0, full_list=True)
        pos64, cell64 = pos.double(), cell.double()
        t_all = best_of(lambda p=pos, c=cell, r=ptr: radius_graph_pbc(p, c, r, 6.0, None))
        t_ours = best_of(lambda p=pos, c=cell, r=ptr: radius_graph_pbc(p, c, r, 6.0, 50))
        t_vesin = best_of(lambda n=nl, p=pos64, c=cell64: n.compute(p, c, True, "ijSd"))
        t_ase = best_of(lambda a=atoms: neighbor_list("ijS", a, 6.0), repeat=3)
        print(
            f"| {name} | {1e3 * t_all:.2f} | {1e3 * t_ours:.2f} | {1e3 * t_vesin:.2f} "
            f"| {1e3 * t_ase:.2f} | {t_all / t_vesin:.2f} | {t_ours / t_vesin:.2f} "
            f"| {t_ase / t_ours:.1f} |"
        )


if __name__ == "__main__":
    main()

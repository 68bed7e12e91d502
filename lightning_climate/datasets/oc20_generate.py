"""Generator of small OC20-format data sets: adsorbates on metal slabs relaxed with ASE's EMT.

Each system is an fcc(111) or fcc(100) slab of one metal (``ase.build``), with a small adsorbate
(H, C, N, O, OH, CO, NH, CH) placed at a random site, height and tilt. The sub-surface layers are
fixed, and the system is relaxed with BFGS on the EMT potential, which covers exactly these elements.
What is written follows the OC20 layout:

- ``is2re/data.lmdb``: one entry per system with initial and relaxed positions, DFT-style forces of
  the initial structure (EMT here), OC20 tags (0 sub-surface, 1 surface, 2 adsorbate, remapped from
  ASE's 1 = top layer / 0 = adsorbate convention), ``fixed``, the cell, ``sid``, the referenced
  energies ``y_init``/``y_relaxed`` and precomputed edges (6 Å, 50 neighbours);
- ``s2ef/data.0000.lmdb``: the frames of every relaxation with ``energy``, ``force``, ``sid`` and
  ``fid``.

Energies are referenced like OC20's adsorption energies, E(slab+adsorbate) - E(relaxed clean slab)
- sum of gas-phase references (H from H2, O from H2O - H2, N from N2, C from CO - O), all with EMT,
and systems with |E| > 10 eV are dropped as in OC20. Run it as
``python -m lightning_climate.datasets.oc20_generate --out data/oc20 --num-systems 200``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from lightning_climate.datasets.oc20 import write_oc20_lmdb
from lightning_climate.transforms.pbc import radius_graph_pbc
from lightning_climate.utils import lazy_import

__all__ = ["ADSORBATES", "METALS", "generate_oc20", "main"]

#: fcc metals the EMT potential describes.
METALS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
#: adsorbates as (symbol, offset in Å from the binding atom), binding atom first.
ADSORBATES: dict[str, tuple[tuple[str, tuple[float, float, float]], ...]] = {
    "H": (("H", (0.0, 0.0, 0.0)),),
    "C": (("C", (0.0, 0.0, 0.0)),),
    "N": (("N", (0.0, 0.0, 0.0)),),
    "O": (("O", (0.0, 0.0, 0.0)),),
    "OH": (("O", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 0.97))),
    "CO": (("C", (0.0, 0.0, 0.0)), ("O", (0.0, 0.0, 1.15))),
    "NH": (("N", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 1.02))),
    "CH": (("C", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 1.09))),
}
_SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
_MAX_ABS_ENERGY = 10.0


def _relax(atoms: Any, fmax: float, steps: int) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Relax ``atoms`` in place with BFGS; return (positions, energy, forces) of every frame.

    Forces are those of every atom, fixed ones included, as OC20 stores them.
    """
    optimize = lazy_import("ase.optimize")
    frames = []
    optimizer = optimize.BFGS(atoms, logfile=None)
    for _ in optimizer.irun(fmax=fmax, steps=steps):
        frames.append(
            (
                atoms.get_positions(),
                atoms.get_potential_energy(),
                atoms.get_forces(apply_constraint=False),
            )
        )
    return frames


def _gas_references() -> dict[str, float]:
    build, emt = lazy_import("ase.build"), lazy_import("ase.calculators.emt")
    energy = {}
    for name in ("H2", "H2O", "N2", "CO"):
        molecule = build.molecule(name)
        molecule.center(vacuum=5.0)
        molecule.calc = emt.EMT()
        _relax(molecule, fmax=0.01, steps=200)
        energy[name] = molecule.get_potential_energy()
    mu_o = energy["H2O"] - energy["H2"]
    return {"H": energy["H2"] / 2, "O": mu_o, "N": energy["N2"] / 2, "C": energy["CO"] - mu_o}


def _slab(metal: str, facet: str, size: Sequence[int], vacuum: float) -> Any:
    build = lazy_import("ase.build")
    slab = (build.fcc111 if facet == "111" else build.fcc100)(
        metal, size=tuple(size), vacuum=vacuum
    )
    slab.pbc = True  # OC20 treats the vacuum direction as periodic too
    return slab


def _fix_subsurface(atoms: Any, tags: np.ndarray) -> None:
    constraints = lazy_import("ase.constraints")
    atoms.set_constraint(constraints.FixAtoms(indices=np.flatnonzero(tags == 0)))


def _system(
    rng: np.random.Generator,
    metals: Sequence[str],
    adsorbates: Sequence[str],
    size: Sequence[int],
    vacuum: float,
    slab_energy: dict[tuple[str, str], float],
    references: dict[str, float],
    fmax: float,
    steps: int,
) -> tuple[dict[str, Any], list[tuple[np.ndarray, float, np.ndarray]]]:
    build, emt, ase = (
        lazy_import("ase.build"),
        lazy_import("ase.calculators.emt"),
        lazy_import("ase"),
    )
    metal = str(rng.choice(metals))
    facet = str(rng.choice(("111", "100")))
    name = str(rng.choice(adsorbates))
    site = str(rng.choice(_SITES[facet]))
    if (metal, facet) not in slab_energy:
        clean = _slab(metal, facet, size, vacuum)
        clean_tags = np.where(clean.get_tags() == 1, 1, 0)
        _fix_subsurface(clean, clean_tags)
        clean.calc = emt.EMT()
        _relax(clean, fmax, steps)
        slab_energy[metal, facet] = clean.get_potential_energy()
    atoms = _slab(metal, facet, size, vacuum)
    # random tilt about a random horizontal axis (<= 30 degrees), then random placement
    parts = ADSORBATES[name]
    offsets = np.array([offset for _, offset in parts])
    tilt, azimuth = np.deg2rad(rng.uniform(0, 30)), rng.uniform(0, 2 * np.pi)
    axis = np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(tilt) * cross + (1 - np.cos(tilt)) * cross @ cross
    molecule = ase.Atoms([s for s, _ in parts], positions=offsets @ rotation.T)
    jitter = rng.normal(0.0, 0.25, size=2)
    build.add_adsorbate(atoms, molecule, height=rng.uniform(1.3, 2.3), position=site, offset=None)
    atoms.positions[-len(parts) :, :2] += jitter
    atoms.wrap()
    ase_tags = atoms.get_tags()  # ASE: 1 = top layer, 2.. deeper, adsorbate 0
    tags = np.where(ase_tags == 0, 2, np.where(ase_tags == 1, 1, 0))
    _fix_subsurface(atoms, tags)
    atoms.calc = emt.EMT()
    frames = _relax(atoms, fmax, steps)
    reference = slab_energy[metal, facet] + sum(references[s] for s, _ in parts)
    first_pos, first_energy, first_force = frames[0]
    entry = {
        "pos": first_pos,
        "pos_relaxed": atoms.get_positions(),
        "atomic_numbers": atoms.get_atomic_numbers(),
        "tags": tags,
        "fixed": (tags == 0).astype(np.float32),
        "force": first_force,
        "cell": np.asarray(atoms.cell)[None],
        "natoms": len(atoms),
        "y_init": first_energy - reference,
        "y_relaxed": atoms.get_potential_energy() - reference,
    }
    referenced = [(p, e - reference, f) for p, e, f in frames]
    return entry, referenced


def generate_oc20(
    root: str | os.PathLike[str],
    num_systems: int = 64,
    seed: int = 0,
    metals: Sequence[str] = METALS,
    adsorbates: Sequence[str] = tuple(ADSORBATES),
    size: Sequence[int] = (2, 2, 3),
    vacuum: float = 7.0,
    fmax: float = 0.05,
    steps: int = 100,
    format: Literal["npz", "pickle"] = "npz",
    s2ef: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Relax ``num_systems`` adsorbate/slab systems with EMT and write them in the OC20 layout.

    Args:
        root: output directory; ``root/is2re/data.lmdb`` and ``root/s2ef/data.0000.lmdb``.
        num_systems: systems to write (systems with |E_ads| > 10 eV are redrawn).
        seed: seed of the random choices; the same seed gives the same files.
        metals: fcc metals to draw from (EMT: Al, Ni, Cu, Pd, Ag, Pt, Au).
        adsorbates: names from :data:`ADSORBATES`.
        size: slab repetitions (a, b, layers); the top layer is the surface (tag 1).
        vacuum: vacuum (Å) on each side of the slab.
        fmax: force threshold (eV/Å) of the relaxation.
        steps: maximum BFGS steps.
        format: ``"npz"`` (pickle-free) or ``"pickle"`` (exactly the upstream files).
        s2ef: also write the relaxation frames as an S2EF shard.
        progress: show a tqdm bar.

    Returns:
        The written paths by task (``"is2re"``, and ``"s2ef"`` when requested).
    """
    if num_systems < 1:
        raise ValueError(f"num_systems must be >= 1, got {num_systems}.")
    unknown = sorted(set(metals) - set(METALS)) + sorted(set(adsorbates) - set(ADSORBATES))
    if unknown:
        raise ValueError(
            f"EMT cannot describe {unknown}; choose metals from {METALS} and adsorbates from "
            f"{tuple(ADSORBATES)}."
        )
    if len(size) != 3 or min(size) < 1 or size[2] < 2:
        raise ValueError(f"size must be (a, b, layers) with at least 2 layers, got {size}.")
    references = _gas_references()
    slab_energy: dict[tuple[str, str], float] = {}
    entries: list[dict[str, Any]] = []
    frames: list[dict[str, Any]] = []
    attempt = 0
    with tqdm(total=num_systems, desc="relaxing OC20 systems (EMT)", disable=not progress) as bar:
        while len(entries) < num_systems:
            if attempt > 10 * num_systems:
                raise RuntimeError("too many systems exceeded |E| > 10 eV; check the settings.")
            rng = np.random.default_rng([seed, attempt])
            attempt += 1
            entry, trajectory = _system(
                rng, metals, adsorbates, size, vacuum, slab_energy, references, fmax, steps
            )
            if abs(entry["y_relaxed"]) > _MAX_ABS_ENERGY:
                continue
            sid = len(entries)
            entry["sid"] = sid
            pos = torch.as_tensor(entry["pos"], dtype=torch.float32)
            cell = torch.as_tensor(entry["cell"], dtype=torch.float32)
            edge_index, offsets, dist = radius_graph_pbc(
                pos, cell, torch.tensor([0, pos.shape[0]]), 6.0, 50
            )
            entry.update(edge_index=edge_index, cell_offsets=offsets, distances=dist.detach())
            entries.append(entry)
            for fid, (frame_pos, energy, force) in enumerate(trajectory):
                frames.append(
                    {
                        "pos": frame_pos,
                        "atomic_numbers": entry["atomic_numbers"],
                        "tags": entry["tags"],
                        "fixed": entry["fixed"],
                        "cell": entry["cell"],
                        "natoms": entry["natoms"],
                        "energy": energy,
                        "force": force,
                        "sid": sid,
                        "fid": fid,
                    }
                )
            bar.update()
    root = Path(root)
    written = {"is2re": root / "is2re" / "data.lmdb"}
    write_oc20_lmdb(written["is2re"], entries, format=format)
    if s2ef:
        written["s2ef"] = root / "s2ef" / "data.0000.lmdb"
        write_oc20_lmdb(written["s2ef"], frames, format=format)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (``python -m lightning_climate.datasets.oc20_generate``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-systems", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=3, default=(2, 2, 3))
    parser.add_argument("--format", choices=("npz", "pickle"), default="npz")
    parser.add_argument("--no-s2ef", action="store_true", help="skip the S2EF frames")
    args = parser.parse_args(argv)
    written = generate_oc20(
        args.out,
        args.num_systems,
        args.seed,
        size=args.size,
        format=args.format,
        s2ef=not args.no_s2ef,
    )
    for task, path in written.items():
        print(f"{task}: {path}")


if __name__ == "__main__":
    main()

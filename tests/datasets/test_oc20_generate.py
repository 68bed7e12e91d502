from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT

from lightning_climate.datasets import OC20LMDBDataset, generate_oc20

KW = {"num_systems": 3, "size": (2, 2, 2), "steps": 30, "progress": False}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oc20gen")
    generate_oc20(root, seed=3, **KW)
    return root


def test_systems_follow_the_oc20_conventions(generated: Path) -> None:
    dataset = OC20LMDBDataset(generated / "is2re", required=("y_relaxed", "y_init", "pos_relaxed"))
    assert len(dataset) == 3
    for i in range(3):
        s = dataset[i]
        assert set(s.tags.tolist()) == {0, 1, 2}
        assert torch.equal(s.fixed, s.tags == 0)
        # 2x2 surface layer on top of 2x2 sub-surface layer
        assert int((s.tags == 1).sum()) == 4 and int((s.tags == 0).sum()) == 4
        assert set(s.atomic_numbers[s.tags == 2].tolist()) <= {1, 6, 7, 8}
        # fixed atoms do not move; the relaxation lowers the energy
        assert torch.allclose(s.pos_relaxed[s.fixed], s.pos[s.fixed])
        assert s.y_relaxed.item() <= s.y_init.item() + 1e-6
        assert abs(s.y_relaxed.item()) < 10
        # precomputed OC20 edges: 6 Å, at most 50 per centre
        assert int(torch.bincount(s.edge_index[1]).max()) <= 50
        assert float(s.distances.max()) <= 6.0


def test_forces_are_the_emt_forces_of_the_initial_structure(generated: Path) -> None:
    sample = OC20LMDBDataset(generated / "is2re")[1]
    atoms = Atoms(
        numbers=sample.atomic_numbers.numpy(),
        positions=sample.pos.double().numpy(),
        cell=sample.cell[0].double().numpy(),
        pbc=True,
    )
    atoms.calc = EMT()
    np.testing.assert_allclose(atoms.get_forces(), sample.force.numpy(), atol=1e-4)


def test_s2ef_frames_reference_the_same_energies(generated: Path) -> None:
    is2re = OC20LMDBDataset(generated / "is2re")
    s2ef = OC20LMDBDataset(generated / "s2ef", required=("energy", "force"))
    frames = [s2ef[i] for i in range(len(s2ef))]
    for sid in range(3):
        own = [f for f in frames if f.sid.item() == sid]
        assert [f.fid.item() for f in own] == list(range(len(own)))
        assert own[0].energy.item() == pytest.approx(is2re[sid].y_init.item(), abs=1e-5)
        assert own[-1].energy.item() == pytest.approx(is2re[sid].y_relaxed.item(), abs=1e-5)


def test_same_seed_same_files_and_pickle_layout(tmp_path: Path, generated: Path) -> None:
    generate_oc20(tmp_path, seed=3, format="pickle", s2ef=False, **KW)
    again = OC20LMDBDataset(tmp_path / "is2re", allow_pickle=True)
    first = OC20LMDBDataset(generated / "is2re")
    for i in range(3):
        assert torch.equal(again[i].pos, first[i].pos)
        assert again[i].y_relaxed.item() == pytest.approx(first[i].y_relaxed.item(), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metals": ("Fe",)}, "EMT cannot describe"),
        ({"adsorbates": ("CH4",)}, "EMT cannot describe"),
        ({"num_systems": 0}, "num_systems"),
        ({"size": (2, 2, 1)}, "at least 2 layers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_oc20(tmp_path, **{**KW, **kwargs})

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.datasets import OC20LMDBDataset, generate_oc20, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch

SAMPLE = Path(__file__).parents[1] / "data" / "oc20" / "is2re_bs3.npz"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oc20dm")
    generate_oc20(path, num_systems=16, seed=1, size=(2, 2, 2), steps=20, progress=False)
    return path


def test_splits_are_disjoint_grouped_and_ood_by_element_sets(root: Path) -> None:
    dm = OC20DataModule(root=str(root), ood_fraction=0.3, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    splits = dm.split_indices
    every = [i for v in splits.values() for i in v]
    assert sorted(every) == list(range(16))  # a partition of the systems
    dataset = dm.train_dataset.dataset
    ads = {
        i: frozenset(dataset[i].atomic_numbers[dataset[i].tags == 2].tolist()) for i in range(16)
    }
    cat = {
        i: frozenset(dataset[i].atomic_numbers[dataset[i].tags != 2].tolist()) for i in range(16)
    }
    seen_ads = {ads[i] for i in splits["train"]}
    seen_cat = {cat[i] for i in splits["train"]}
    for name in ("val_ood_ads", "test_ood_ads"):
        assert all(ads[i] not in seen_ads for i in splits[name])
    for name in ("val_ood_cat", "test_ood_cat"):
        assert all(cat[i] not in seen_cat for i in splits[name])
    for name in ("val_ood_both", "test_ood_both"):
        assert all(cat[i] not in seen_cat and ads[i] not in seen_ads for i in splits[name])
    assert any(splits[k] for k in ("val_ood_ads", "val_ood_cat", "val_ood_both"))
    # same seed, same split on every rank
    again = OC20DataModule(root=str(root), ood_fraction=0.3, val_fraction=0.2, test_fraction=0.2)
    again.setup("fit")
    assert again.split_indices == splits


def test_target_statistics_come_from_the_training_split(root: Path) -> None:
    dm = OC20DataModule(root=str(root))
    dm.setup("fit")
    targets = torch.tensor(
        [dm.train_dataset[i].y_relaxed.item() for i in range(len(dm.train_dataset))]
    ).double()
    stats = dm.train_statistics()
    assert set(stats) == {"y_relaxed_mean", "y_relaxed_std"}
    assert stats["y_relaxed_mean"].item() == pytest.approx(targets.mean().item(), abs=1e-6)
    assert stats["y_relaxed_std"].item() == pytest.approx(targets.std().item(), abs=1e-6)
    every = torch.tensor([dm.train_dataset.dataset[i].y_relaxed.item() for i in range(16)])
    assert stats["y_relaxed_mean"].item() != pytest.approx(every.double().mean().item(), abs=1e-6)
    # samples keep the physical target (eV), they are not standardised
    assert dm.train_dataset[0].y_relaxed.item() == pytest.approx(targets[0].item())
    fixed = OC20DataModule(
        root=str(root), target_mean=-1.525913953781128, target_std=2.279365062713623
    )
    fixed_stats = fixed.train_statistics()  # no pass over the targets, but the same names
    assert fixed_stats["y_relaxed_mean"].item() == pytest.approx(-1.525913953781128)
    assert fixed_stats["y_relaxed_std"].item() == pytest.approx(2.279365062713623)
    saved = fixed.state_dict()
    assert set(saved) == {"train_statistics"}
    assert saved["train_statistics"]["y_relaxed_std"].item() == pytest.approx(2.279365062713623)
    restored = OC20DataModule(root=str(root))
    restored.load_state_dict(saved)
    assert restored.train_statistics()["y_relaxed_mean"].item() == pytest.approx(-1.525913953781128)
    s2ef = OC20DataModule(root=str(root), task="s2ef")
    with pytest.raises(
        ValueError,
        match=r"statistics are \['y_relaxed_mean', 'y_relaxed_std'\] but this configuration has \['energy_mean', 'energy_std'\]",
    ):
        s2ef.load_state_dict(saved)


def test_loaders_batch_pyg_graphs_with_index(root: Path) -> None:
    dm = OC20DataModule(root=str(root), batch_size=4, rewiring="remove_tag0")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch) and batch.num_graphs == 4
    assert set(batch.index.tolist()) <= set(dm.split_indices["train"])
    assert bool((batch.tags != 0).all())  # rewired in the workers' transform
    names = dm.dataloader_names("val")
    assert names[0] == "id" and len(dm.val_dataloader()) == len(names)
    assert set(names) <= {"id", "ood_ads", "ood_cat", "ood_both"}
    assert dm.dataloader_names("test")[0] == "id"


def test_s2ef_frames_get_graphs_and_stay_with_their_system(root: Path) -> None:
    dm = OC20DataModule(root=str(root), task="s2ef", batch_size=8)
    dm.setup("fit")
    base = dm.train_dataset.dataset
    sid = {i: base.raw(i)["sid"].item() for i in range(len(base))}
    train_sids = {sid[i] for i in dm.split_indices["train"]}
    for name in ("val_id", "test_id"):
        assert not train_sids & {sid[i] for i in dm.split_indices[name]}
    batch = next(iter(dm.train_dataloader()))
    assert batch.edge_index.shape[1] > 0 and batch.force.shape == (batch.num_nodes, 3)
    energies = torch.tensor([base.target(i, "energy") for i in dm.split_indices["train"]])
    stats = dm.train_statistics()
    assert set(stats) == {"energy_mean", "energy_std"}
    assert stats["energy_mean"].item() == pytest.approx(energies.double().mean().item(), abs=1e-6)


def test_real_file_mode_with_upstream_pickles(tmp_path: Path) -> None:
    write_oc20_lmdb(tmp_path / "val_id.lmdb", read_npz_batch(SAMPLE), format="pickle")
    write_oc20_lmdb(tmp_path / "train.lmdb", read_npz_batch(SAMPLE))
    dm = OC20DataModule(
        train_path=str(tmp_path / "train.lmdb"),
        val_paths={"val_id": str(tmp_path / "val_id.lmdb")},
        allow_pickle=True,
        batch_size=3,
    )
    dm.setup("fit")
    assert dm.dataloader_names("val") == ["id"]  # "val_id" and "id" name the same loader
    mean = dm.train_statistics()["y_relaxed_mean"].item()
    assert mean == pytest.approx((0.871002 + 0.587996 - 4.918020) / 3, abs=1e-5)
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch.edge_index.shape[1] == 11596  # stored edges are kept by default


def test_missing_data_and_bad_arguments(tmp_path: Path) -> None:
    dm = OC20DataModule(root=str(tmp_path))
    assert not dm.generate  # generation is opt-in
    with pytest.raises(
        FileNotFoundError,
        match=r"no OC20 LMDB files at .*is2re\. Point `root` at your copy, or set generate=True",
    ):
        dm.prepare_data()
    assert not (tmp_path / "is2re").exists()
    with pytest.raises(FileNotFoundError, match="oc20_generate"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="rewiring must be"):
        OC20DataModule(rewiring="supernode")
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        OC20DataModule(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="task must be"):
        OC20DataModule(task="is2rs")
    with pytest.raises(ValueError, match="target_std must be positive"):
        OC20DataModule(target_std=0.0)


def test_dataset_used_by_datamodule_is_the_lmdb_reader(root: Path) -> None:
    dm = OC20DataModule(root=str(root))
    dm.setup("fit")
    assert isinstance(dm.train_dataset.dataset, OC20LMDBDataset)

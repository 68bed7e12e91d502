"""OC20 datamodule: IS2RE / S2EF graphs with system splits and OOD splits by element sets.

Two ways to get data:

- **real OC20**: give ``train_path`` and ``val_paths`` / ``test_paths`` (name -> LMDB file or shard
  directory), e.g. ``{"val_id": ".../val_id/data.lmdb", "val_ood_ads": ...}``; set
  ``target_mean=-1.525913953781128, target_std=2.279365062713623`` (OC20's IS2RE statistics) to
  skip the pass over the training set;
- **generated**: leave ``train_path`` unset; ``prepare_data`` writes ``root/<task>`` with the EMT
  generator when ``generate=True``, and ``setup`` splits it. Systems are grouped by ``sid`` (the
  frames of one relaxation never straddle splits). Adsorbate element sets and catalyst element sets
  are held out at random (``ood_fraction`` of the distinct sets each) to form, like OC20,
  ``ood_ads``, ``ood_cat`` and ``ood_both`` systems, each halved into a validation and a test set;
  the remaining systems are split into train / ``val_id`` / ``test_id``.

Loaders are named ``id``, ``ood_ads``, ``ood_cat``, ``ood_both`` in both the validation and the
test split, so tasks log ``val_id_energy_mae``, ``test_ood_ads_energy_mae``, ...

Samples are PyG ``Data`` (:class:`~lightning_climate.datasets.oc20.OC20Data`, with ``index``) and
are batched with PyG's collater. :meth:`~OC20DataModule.train_statistics` gives the mean and std
of the energy target over the training split (``y_relaxed_mean``/``y_relaxed_std`` for IS2RE,
``energy_mean``/``energy_std`` for S2EF), or the fixed ``target_mean``/``target_std``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torch_geometric.loader.dataloader import Collater
from torch_geometric.transforms import Compose

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets.oc20 import OC20LMDBDataset
from lightning_climate.datasets.oc20_generate import generate_oc20
from lightning_climate.transforms.pbc import RadiusGraphPBC
from lightning_climate.transforms.rewiring import (
    OneSupernodePerAtomType,
    OneSupernodePerGraph,
    RemoveAdsorbateCatalystEdges,
    RemoveTag0,
)

__all__ = ["OC20DataModule"]

Rewiring = Literal["none", "remove_tag0", "supernode_per_graph", "supernode_per_atom_type"]
_REWIRINGS = {
    "remove_tag0": RemoveTag0,
    "supernode_per_graph": OneSupernodePerGraph,
    "supernode_per_atom_type": OneSupernodePerAtomType,
}
_TARGET = {"is2re": "y_relaxed", "s2ef": "energy"}


def _groups(
    dataset: OC20LMDBDataset,
) -> tuple[np.ndarray, list[frozenset[int]], list[frozenset[int]]]:
    """Per entry: its system id, adsorbate element set and catalyst element set."""
    sids, ads, cat = [], [], []
    for i in range(len(dataset)):
        raw = dataset.raw(i)
        if "tags" not in raw:
            raise KeyError(
                f"entry {i} of {dataset.path} has no `tags`; OOD splits need OC20 tags "
                "(0/1 catalyst, 2 adsorbate). Provide train_path/val_paths instead."
            )
        z = np.asarray(raw["atomic_numbers"]).round().astype(int)
        tags = np.asarray(raw["tags"])
        sids.append(int(np.asarray(raw.get("sid", i)).reshape(-1)[0]))
        ads.append(frozenset(z[tags == 2].tolist()))
        cat.append(frozenset(z[tags != 2].tolist()))
    return np.asarray(sids), ads, cat


def _loader_names(paths: Mapping[str, str] | None, split: str) -> dict[str, str]:
    """Loader name -> path, without a leading ``"{split}_"`` (``val_id`` and ``id`` both give ``id``)."""
    return {name.removeprefix(f"{split}_"): path for name, path in (paths or {}).items()}


class OC20DataModule(BaseDataModule):
    """OC20 IS2RE/S2EF data as PyG graphs (see the module docstring).

    Args:
        root: directory of generated data (``root/is2re``, ``root/s2ef``).
        task: ``"is2re"`` (target ``y_relaxed``) or ``"s2ef"`` (``energy`` and ``force``).
        train_path: LMDB file or shard directory of the training split (real data mode).
        val_paths: name -> LMDB of each validation split (real data mode).
        test_paths: name -> LMDB of each test split (real data mode).
        generate: let ``prepare_data`` write ``root/<task>`` with the EMT generator if missing
            (without it, missing generated data is an error naming ``root``).
        num_systems: systems to generate.
        val_fraction: share of in-domain systems for ``val_id`` (generated mode).
        test_fraction: share of in-domain systems for ``test_id`` (generated mode).
        ood_fraction: share of distinct adsorbate / catalyst element sets held out.
        rewiring: PhAST rewiring applied to every sample.
        disconnected: remove the adsorbate-catalyst edges (Carbonero et al.).
        recompute_graph: build edges with :class:`RadiusGraphPBC` even where edges are stored
            (entries without edges, such as S2EF frames, always get them).
        cutoff: radius (Å) of the graph and of super-node edges.
        max_neighbors: neighbours per centre when the graph is recomputed.
        target_mean: fixed energy mean (eV); ``None`` computes it on the training split.
        target_std: fixed energy std (eV); ``None`` computes it on the training split.
        allow_pickle: read upstream pickled LMDBs (trusted files only).
        batch_size: graphs per batch.
        num_workers: DataLoader workers.
        seed: seed of the splits.
        data_seed: seed of the generated systems.
        manifest: checksum list (``md5sum``/``sha256sum`` output) of the LMDB files, checked in
            ``prepare_data`` before anything is read (see :meth:`BaseDataModule.verify_manifest`
            and docs/oc20.md for how to write one for a download).
    """

    data_name = "OC20 LMDB files"
    statistics_arguments = "task"

    collate_fn = Collater(dataset=None)

    def __init__(
        self,
        root: str = "data/oc20",
        task: Literal["is2re", "s2ef"] = "is2re",
        train_path: str | None = None,
        val_paths: dict[str, str] | None = None,
        test_paths: dict[str, str] | None = None,
        generate: bool = False,
        num_systems: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        ood_fraction: float = 0.2,
        rewiring: Rewiring = "none",
        disconnected: bool = False,
        recompute_graph: bool = False,
        cutoff: float = 6.0,
        max_neighbors: int = 50,
        target_mean: float | None = None,
        target_std: float | None = None,
        allow_pickle: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        data_seed: int = 0,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, manifest=manifest
        )
        if task not in _TARGET:
            raise ValueError(f"task must be 'is2re' or 's2ef', got {task!r}.")
        if rewiring != "none" and rewiring not in _REWIRINGS:
            raise ValueError(
                f"rewiring must be 'none' or one of {sorted(_REWIRINGS)}, got {rewiring!r}."
            )
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if val_fraction + test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave systems for training (< 1).")
        if not 0 <= ood_fraction < 1:
            raise ValueError(f"ood_fraction must be in [0, 1), got {ood_fraction}.")
        if target_std is not None and target_std <= 0:
            raise ValueError(f"target_std must be positive, got {target_std}.")
        self.root = Path(root)
        self.task = task
        self.train_path = train_path
        self.val_paths = _loader_names(val_paths, "val")
        self.test_paths = _loader_names(test_paths, "test")
        self.data_seed = data_seed
        self.generate = generate
        self.num_systems = num_systems
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.ood_fraction = ood_fraction
        self.allow_pickle = allow_pickle
        self.target_key = _TARGET[task]
        self.target_mean = target_mean
        self.target_std = target_std
        # builds edges for entries without stored ones (S2EF), or for all with recompute_graph
        steps: list[Any] = [RadiusGraphPBC(cutoff, max_neighbors, overwrite=recompute_graph)]
        if rewiring != "none":
            steps.append(
                _REWIRINGS[rewiring](cutoff=cutoff) if rewiring != "remove_tag0" else RemoveTag0()
            )
        if disconnected:
            steps.append(RemoveAdsorbateCatalystEdges())
        self.transform = Compose(steps)

    @property
    def data_path(self) -> Path:
        """Where the generated data of :attr:`task` lives."""
        return self.root / self.task

    def prepare_data(self) -> None:
        """Write the generated data set if it is missing and ``generate`` is set (files only)."""
        if self.train_path is not None or any(self.data_path.glob("*.lmdb")):
            return
        if not self.generate:
            raise self.missing_data_error(self.data_path)
        generate_oc20(self.root, num_systems=self.num_systems, seed=self.data_seed, s2ef=True)

    def _dataset(self, path: str | os.PathLike[str]) -> OC20LMDBDataset:
        required = (self.target_key, "force") if self.task == "s2ef" else (self.target_key,)
        return OC20LMDBDataset(
            path, allow_pickle=self.allow_pickle, required=required, transform=self.transform
        )

    def _split_generated(self) -> None:
        dataset = self._dataset(self.data_path)
        sids, ads, cat = _groups(dataset)
        rng = np.random.default_rng(self.seed)

        def held_out(sets: Sequence[frozenset[int]]) -> set[frozenset[int]]:
            distinct = sorted(set(sets), key=sorted)
            count = round(self.ood_fraction * len(distinct))
            chosen = rng.choice(len(distinct), size=count, replace=False) if count else []
            return {distinct[k] for k in chosen}

        ads_out, cat_out = held_out(ads), held_out(cat)
        pools: dict[str, list[int]] = {"id": [], "ood_ads": [], "ood_cat": [], "ood_both": []}
        for i in range(len(dataset)):
            a, c = ads[i] in ads_out, cat[i] in cat_out
            pools["ood_both" if a and c else "ood_ads" if a else "ood_cat" if c else "id"].append(i)
        # in-domain: split by system id so frames of one relaxation stay together
        systems = np.unique(sids[pools["id"]])
        rng.shuffle(systems)
        n_val = round(self.val_fraction * len(systems))
        n_test = round(self.test_fraction * len(systems))
        val_sys, test_sys = set(systems[:n_val]), set(systems[n_val : n_val + n_test])
        split = {"train": [], "val_id": [], "test_id": []}
        for i in pools["id"]:
            s = sids[i]
            split["val_id" if s in val_sys else "test_id" if s in test_sys else "train"].append(i)
        if not split["train"]:
            raise ValueError(
                f"no training systems left among {len(dataset)}; generate more (num_systems) or "
                "lower val_fraction, test_fraction and ood_fraction."
            )
        self.train_dataset = Subset(dataset, split["train"])
        val: dict[str, Dataset[Any]] = {"id": Subset(dataset, split["val_id"])}
        test: dict[str, Dataset[Any]] = {"id": Subset(dataset, split["test_id"])}
        for name in ("ood_ads", "ood_cat", "ood_both"):
            pool_sys = np.unique(sids[pools[name]])
            rng.shuffle(pool_sys)
            half = set(pool_sys[: (len(pool_sys) + 1) // 2])
            val[name] = Subset(dataset, [i for i in pools[name] if sids[i] in half])
            test[name] = Subset(dataset, [i for i in pools[name] if sids[i] not in half])
        self.val_dataset = {k: v for k, v in val.items() if len(v) > 0}
        self.test_dataset = {k: v for k, v in test.items() if len(v) > 0}
        self.split_indices = {
            "train": split["train"],
            **{f"val_{k}": list(v.indices) for k, v in val.items()},
            **{f"test_{k}": list(v.indices) for k, v in test.items()},
        }

    def setup(self, stage: str | None = None) -> None:
        """Build the splits (fixed seed, identical on every rank) and the target statistics."""
        if self.train_path is None:
            self._split_generated()
        else:
            self.train_dataset = self._dataset(self.train_path)
            self.val_dataset = {k: self._dataset(v) for k, v in self.val_paths.items()} or None
            self.test_dataset = {k: self._dataset(v) for k, v in self.test_paths.items()} or None
        self.predict_dataset = self.test_dataset

    def compute_train_statistics(self) -> dict[str, torch.Tensor]:
        """Mean and std of the energy target (``y_relaxed_*`` or ``energy_*``), or the fixed ones."""
        mean, std = self.target_mean, self.target_std
        if mean is None or std is None:
            targets = self._training_targets()
            if mean is None:
                mean = float(targets.mean())
            if std is None:
                std = float(targets.std()) if targets.numel() > 1 else 1.0
                std = std if std > 0 else 1.0
        key = self.target_key
        return {f"{key}_mean": torch.tensor(mean), f"{key}_std": torch.tensor(std)}

    def statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """Two scalars."""
        return {f"{self.target_key}_mean": (), f"{self.target_key}_std": ()}

    def _training_targets(self) -> torch.Tensor:
        assert self.train_dataset is not None
        if isinstance(self.train_dataset, Subset):
            base, indices = self.train_dataset.dataset, list(self.train_dataset.indices)
        else:
            base, indices = self.train_dataset, list(range(len(self.train_dataset)))  # type: ignore[arg-type]
        assert isinstance(base, OC20LMDBDataset)
        # a NaN/Inf target is an error naming the entry and file, never a NaN statistic
        values = [base.target(i, self.target_key) for i in indices]
        return torch.tensor(values, dtype=torch.float64)

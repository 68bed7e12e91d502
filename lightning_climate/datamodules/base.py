"""Base class shared by every datamodule of the package, and the contract tasks rely on.

It follows torchgeo's ``BaseDataModule``: ``prepare_data`` only writes files, ``setup`` builds the
per-split datasets (``train_dataset``, ``val_dataset``, ``test_dataset``, ``predict_dataset``) with
a fixed seed on every rank, and one ``_dataloader_factory`` builds every loader.

What a task may read from any datamodule of the package (and nothing else):

- :meth:`BaseDataModule.train_statistics`: statistics of the training split only, named
  ``{batch key}_{statistic}`` (``hr_min``, ``y_mean``, ``image_std``, ...), computed once and
  saved in checkpoints through :meth:`~BaseDataModule.state_dict`;
- :attr:`BaseDataModule.channels`: names of the channels of the modelled field, or ``None``;
- :attr:`BaseDataModule.latitudes`: latitudes (degrees) of the grid rows, or ``None``;
- :meth:`BaseDataModule.dataloader_names`: the name of every loader of a split;
- :meth:`BaseDataModule.ground_truth`: a known causal graph and mixing, for synthetic data.

Vocabulary shared by the subclasses: ``root`` is where the data lives (a directory, or a file
for single-file data sets); ``generate=True`` lets ``prepare_data`` write a generated data set
in the real on-disk format into ``root`` when it is missing (never overwriting), while with
``generate=False`` missing data is an error naming ``root``; ``seed`` seeds the splits and
``data_seed`` the generator; ``manifest`` is a checksum list (``sha256sum``/``md5sum`` output)
of the downloaded files, checked at the end of every ``prepare_data`` (see
:meth:`BaseDataModule.verify_manifest`).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_climate.datamodules.sampler import ResumableDataLoader, ResumableSampler
from lightning_climate.datasets.integrity import verify

__all__ = ["BaseDataModule", "Split", "renamed_argument"]

Split = Literal["train", "val", "test", "predict"]


def renamed_argument(owner: str, old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """``new_value``, or ``old_value`` with a deprecation warning when the old name was used."""
    if old_value is None:
        return new_value
    warnings.warn(
        f"{owner}({old}=...) is deprecated and will be removed in the next version; use "
        f"{new}={old_value!r} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


class BaseDataModule(LightningDataModule):
    """Datamodule whose subclasses fill the per-split datasets in ``setup`` (see the module doc).

    A split's dataset may also be a mapping ``name -> Dataset`` (for example one test set per
    downscaling factor); its loaders are then returned as a list in that order, and the names are
    available from :meth:`dataloader_names` so tasks log each under its own name.

    Subclasses that provide statistics override :meth:`compute_train_statistics`, and may
    override :meth:`statistics_shapes` so a checkpoint made with another configuration is refused.

    ``manifest`` is checked by :meth:`verify_manifest` at the end of ``prepare_data`` (Lightning
    runs it on one process per node, before any ``setup``) and again, from the stamp without
    hashing, at the start of ``setup`` on every process: subclasses write their own hooks and
    :meth:`__init_subclass__` adds the check to them. In a run of several processes the failure is
    raised from ``setup`` by every rank, so the message is never hidden behind another rank's
    "connection closed".

    Args:
        batch_size: samples per batch in every split.
        num_workers: worker processes of each :class:`~torch.utils.data.DataLoader`.
        seed: seed of every random split, identical on all ranks.
        manifest: checksum list of the data files (``sha256sum``/``md5sum`` output or BSD
            ``--tag`` lines; relative paths are relative to the manifest's folder), or ``None``.
    """

    #: collate function handed to every loader; ``None`` uses PyTorch's default (dicts of tensors).
    collate_fn: Callable[[list[Any]], Any] | None = None
    #: names of the channels of the modelled field (set in ``setup``), or ``None``.
    channels: list[str] | None = None
    #: latitudes (degrees) of the grid rows (set in ``setup``), or ``None`` for non-gridded data.
    latitudes: Tensor | None = None
    #: data set name used in error messages.
    data_name: ClassVar[str] = "data"
    #: the arguments that decide the statistics' names and shapes, named in mismatch errors.
    statistics_arguments: ClassVar[str] = "variables, models, normalisation"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Add the manifest check to the ``prepare_data`` and ``setup`` a subclass defines."""
        super().__init_subclass__(**kwargs)
        prepare, setup = cls.__dict__.get("prepare_data"), cls.__dict__.get("setup")
        if prepare is not None:

            @functools.wraps(prepare)
            def prepare_data(self: BaseDataModule) -> None:
                prepare(self)
                self._verify_in_prepare_data()

            cls.prepare_data = prepare_data  # type: ignore[method-assign]
        if setup is not None:

            @functools.wraps(setup)
            def checked_setup(self: BaseDataModule, *args: Any, **kwargs: Any) -> None:
                self.verify_manifest()
                setup(self, *args, **kwargs)

            cls.setup = checked_setup  # type: ignore[method-assign]

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.manifest = None if manifest is None else Path(manifest)
        self._manifest_verified = False
        self.train_dataset: Dataset[Any] | None = None
        self.val_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None
        self.test_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None
        self.predict_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None
        self._train_statistics: dict[str, Tensor] | None = None
        self._unchecked_statistics = False

    # ------------------------------------------------------------------ the contract with tasks
    def compute_train_statistics(self) -> dict[str, Tensor]:
        """Statistics of the training split, named ``{batch key}_{statistic}``; none by default."""
        return {}

    def statistics_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Expected shape of every statistic under this configuration, or ``None`` if unknown."""
        return None

    def train_statistics(self) -> dict[str, Tensor]:
        """Training-split statistics, computed on first use (``setup('fit')`` if needed), cached."""
        if self._train_statistics is None:
            if self.train_dataset is None:
                self.setup("fit")
            stats = {k: torch.as_tensor(v) for k, v in self.compute_train_statistics().items()}
            self._check_shapes(stats, "computed")
            self._train_statistics = stats
        elif self._unchecked_statistics and self.statistics_shapes() is not None:
            # loaded before setup, when the shapes were not known yet: check them now
            self._check_shapes(self._train_statistics, "checkpoint")
            self._unchecked_statistics = False
        return self._train_statistics

    def state_dict(self) -> dict[str, Any]:
        """The training statistics once computed; Lightning saves them in every checkpoint."""
        if self._train_statistics is None:
            return {}
        return {"train_statistics": {k: v.clone() for k, v in self._train_statistics.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore saved statistics after checking their names and shapes fit this configuration."""
        saved = state_dict.get("train_statistics")
        if not saved:
            return
        stats = {k: torch.as_tensor(v).clone() for k, v in saved.items()}
        self._check_shapes(stats, "checkpoint")
        if self._train_statistics is not None:
            self._check_against(stats, self._train_statistics)
        self._train_statistics = stats
        self._unchecked_statistics = self.statistics_shapes() is None

    def _check_shapes(self, stats: Mapping[str, Tensor], origin: str) -> None:
        expected = self.statistics_shapes()
        if expected is not None:
            self._check_against(stats, {k: torch.empty(v) for k, v in expected.items()}, origin)

    def _check_against(
        self,
        stats: Mapping[str, Tensor],
        reference: Mapping[str, Tensor],
        origin: str = "checkpoint",
    ) -> None:
        name = type(self).__name__
        if set(stats) != set(reference):
            raise ValueError(
                f"{name}: the {origin} statistics are {sorted(stats)} but this configuration has "
                f"{sorted(reference)}; use the datamodule arguments the checkpoint was made with."
            )
        for key, value in stats.items():
            if tuple(value.shape) != tuple(reference[key].shape):
                raise ValueError(
                    f"{name}: the {origin} statistic {key!r} has shape {tuple(value.shape)}, this "
                    f"configuration expects {tuple(reference[key].shape)}; use the datamodule "
                    f"arguments ({self.statistics_arguments}) the checkpoint was made with."
                )

    def ground_truth(self) -> tuple[Tensor, Tensor] | None:
        """The true latent graph and mixing of synthetic data, or ``None`` (real data)."""
        return None

    # ------------------------------------------------------------------ files
    def prepare_data(self) -> None:
        """Write nothing; check ``manifest`` (subclasses that write files override this)."""
        self._verify_in_prepare_data()

    def _verify_in_prepare_data(self) -> None:
        trainer = self.trainer
        try:
            self.verify_manifest()
        except (OSError, ValueError):
            if trainer is None or trainer.world_size == 1:
                raise
            # Several processes: the others wait in a barrier, and whichever rank's error is shown
            # first would hide this one. The stamp now holds every digest, so every rank raises
            # this error from it in `setup` instead.

    def verify_manifest(self) -> None:
        """Check every file of ``manifest`` against its checksum before anything is read.

        Files unchanged (size, times, inode) since an earlier check are not hashed again: the
        check records every digest it finds in ``<manifest>.verified`` (written atomically next to
        the manifest; delete it to hash everything again). Passes once per process.

        Raises:
            FileNotFoundError: if ``manifest`` does not exist.
            ValueError: naming every listed file that is missing or whose checksum differs, and
                the fix; or if the manifest lists no file.
        """
        if self.manifest is None or self._manifest_verified:
            return
        name = type(self).__name__
        if not self.manifest.is_file():
            raise FileNotFoundError(
                f"{name}: manifest={str(self.manifest)!r} does not exist. Point `manifest` at "
                "the checksum list of your download (e.g. written by `sha256sum FILES > "
                "SHA256SUMS` in the data folder), or remove the argument."
            )
        report = verify(self.manifest, stamp=True, progress=True)
        checked = len(report.ok) + len(report.missing) + len(report.mismatched)
        if not checked:
            raise ValueError(
                f"{name}: manifest={str(self.manifest)!r} lists no file; point it at a checksum "
                "list (`<digest>  <path>` lines), or remove the argument."
            )
        if not report.passed:
            raise ValueError(
                f"{name}: the data does not match manifest={str(self.manifest)!r}, so nothing "
                f"was read.\n{report}\nFix: download the files marked MISSING or DAMAGED again "
                "(only they are hashed on the next run), or remove `manifest` to skip the check."
            )
        if report.stamp is None:
            rank_zero_warn(
                f"{name}: could not write the stamp next to {self.manifest} (read-only folder?), "
                "so every run hashes all its files again; copy the manifest to a writable folder "
                "and use absolute paths in it to avoid that."
            )
        rank_zero_info(f"{name}: {checked} files match {self.manifest}")
        self._manifest_verified = True

    # ------------------------------------------------------------------ shared helpers
    def missing_data_error(self, path: str | os.PathLike[str]) -> FileNotFoundError:
        """The error for data that is not at ``path``: how to point at it or generate it."""
        return FileNotFoundError(
            f"{type(self).__name__}: no {self.data_name} at {Path(path)}. Point `root` at your "
            "copy, or set generate=True to let prepare_data write a generated data set in the "
            "same format there."
        )

    # ------------------------------------------------------------------ loaders
    def _split_datasets(self, split: Split) -> Dataset[Any] | Mapping[str, Dataset[Any]]:
        dataset = getattr(self, f"{split}_dataset")
        if dataset is None:
            raise MisconfigurationException(
                f"{type(self).__name__}.setup() did not define `{split}_dataset`; "
                f"call `setup('{'fit' if split in ('train', 'val') else split}')` first, or this "
                f"datamodule has no {split} split."
            )
        return dataset

    def dataloader_names(self, split: Split) -> list[str]:
        """Names of the loaders of ``split``: the mapping's keys, or ``[split]`` for one dataset."""
        dataset = self._split_datasets(split)
        return list(dataset) if isinstance(dataset, Mapping) else [split]

    def _dataloader_factory(self, split: Split) -> DataLoader[Any] | list[DataLoader[Any]]:
        dataset = self._split_datasets(split)

        def build(ds: Dataset[Any]) -> DataLoader[Any]:
            kwargs: dict[str, Any] = {
                "batch_size": self.batch_size,
                "num_workers": self.num_workers,
                "collate_fn": self.collate_fn,
            }
            if split != "train":
                return DataLoader(ds, persistent_workers=self.num_workers > 0, **kwargs)
            # seeded by (seed_everything, epoch, rank) and resumable mid-epoch: exact resumes
            trainer = self.trainer
            ranks = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
            return ResumableDataLoader(ds, sampler=ResumableSampler(ds, *ranks), **kwargs)

        if isinstance(dataset, Mapping):
            return [build(ds) for ds in dataset.values()]
        return build(dataset)

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled loader of the training split."""
        loader = self._dataloader_factory("train")
        assert isinstance(loader, DataLoader)
        return loader

    def val_dataloader(self) -> DataLoader[Any] | list[DataLoader[Any]]:
        """Loader(s) of the validation split."""
        return self._dataloader_factory("val")

    def test_dataloader(self) -> DataLoader[Any] | list[DataLoader[Any]]:
        """Loader(s) of the test split, one per named test set."""
        return self._dataloader_factory("test")

    def predict_dataloader(self) -> DataLoader[Any] | list[DataLoader[Any]]:
        """Loader(s) of the prediction split."""
        return self._dataloader_factory("predict")

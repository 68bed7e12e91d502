"""Base class shared by every datamodule of the package.

It follows torchgeo's ``BaseDataModule``: ``prepare_data`` only writes files, ``setup`` builds the
per-split datasets (``train_dataset``, ``val_dataset``, ``test_dataset``, ``predict_dataset``) with
a fixed seed on every rank, and one ``_dataloader_factory`` builds every loader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Dataset

from lightning_climate.datamodules.sampler import ResumableDataLoader, ResumableSampler

__all__ = ["BaseDataModule"]

Split = Literal["train", "val", "test", "predict"]


class BaseDataModule(LightningDataModule):
    """Datamodule whose subclasses only have to fill the per-split dataset attributes in ``setup``.

    A split's dataset may also be a mapping ``name -> Dataset`` (for example one test set per
    downscaling factor); its loaders are then returned as a list in that order, and the names are
    available from :meth:`dataloader_names` so tasks can log each under its own name.

    Args:
        batch_size: samples per batch in every split.
        num_workers: worker processes of each :class:`~torch.utils.data.DataLoader`.
        seed: seed of every random split, identical on all ranks.
    """

    #: collate function handed to every loader; ``None`` uses PyTorch's default (dicts of tensors).
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: Dataset[Any] | None = None
        self.val_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None
        self.test_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None
        self.predict_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None

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

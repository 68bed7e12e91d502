"""Navier–Stokes vorticity downscaling: low-resolution block means to high-resolution fields."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_climate.datamodules.base import BaseDataModule, renamed_argument
from lightning_climate.datasets.downscaling import BlockMeanPairs
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.datasets.navier_stokes_generate import generate_navier_stokes
from lightning_climate.datasets.navier_stokes_neuralop import paired_test_file
from lightning_climate.layers.constraints import block_mean

__all__ = ["NavierStokesDataModule"]

_FILE_SUFFIXES = (".h5", ".hdf5", ".mat", ".pt", ".pth")


class NavierStokesDataModule(BaseDataModule):
    """Pairs of low- and high-resolution 2-D vorticity snapshots for downscaling.

    Every recorded snapshot of every trajectory is a sample ``{"lr": (1, r/f, r/f), "hr": (1, r, r),
    "index": i}`` with ``r = resolution`` and ``f = factor``, where ``index = trajectory * steps + step``
    and every coarser grid is a block mean of the stored field, so the block mean of ``hr`` is
    exactly ``lr``. Trajectories, not snapshots, are split between train, validation and test
    (snapshots of one flow are strongly correlated), with a fixed seed on every rank.

    The test split is evaluated at every factor of ``test_factors`` from the same low-resolution
    input, e.g. ``(1, 2, 4)`` for the 1×, learned 2× and zero-shot 4× protocol of DFNO; the test
    sets are named ``x1``, ``x2``, ``x4``.

    Separate test file: neuraloperator publishes train and test as two files. When ``root`` is an
    ``<name>_train_<res>.pt`` file (e.g. ``nsforcing_train_128.pt``) or a folder holding one, the
    test split is the matching ``<name>_test_<res>.pt`` beside it (an error if it is missing),
    and the training file is split into train and validation only (``val_fraction``, ``seed``);
    ``test_root`` names another test file (any format read here), and ``test_fraction > 0``
    splits the test set off ``root`` instead. Test samples are indexed after the training file's:
    ``index = train_samples + position in the test file``.

    Data (``root``): a folder, into which ``prepare_data`` writes a set made by the
    pseudo-spectral solver of :mod:`lightning_climate.datasets.navier_stokes_solver` when
    ``generate=True`` (once; the file name records every generator argument, and later runs reuse
    it); or an existing file: an HDF5 file of that generator, a published FNO ``.mat`` file
    (``NavierStokes_V1e-3_N5000_T50.mat`` and friends) or one of neuraloperator's
    ``nsforcing_{train,test}_{res}.pt`` files (by suffix; its vorticity ``y`` is downscaled, one
    snapshot per sample).

    Statistics (:meth:`train_statistics`): ``hr_min`` and ``hr_max`` of the training targets.

    Args:
        root: folder of generated files, or an existing data file.
        resolution: grid of the training targets ``hr``.
        factor: training downscaling factor; the input grid is ``resolution // factor``.
        test_factors: factors of the test sets, all from the same input grid.
        num_trajectories: trajectories to generate.
        file_resolution: grid of the generated file (``resolution`` and each test grid must divide it).
        viscosity: kinematic viscosity of the generated flows.
        t_final: simulated time of each trajectory.
        record_steps: snapshots recorded per trajectory (every ``t_final / record_steps``).
        dt: solver time step.
        data_seed: seed of the generated initial conditions.
        val_fraction: fraction of trajectories for validation.
        test_fraction: fraction of trajectories of ``root`` for testing; ``None`` means 0.15, or
            0 when the test split is a separate file (``test_root`` or a paired
            ``<name>_test_<res>.pt``); a value above 0 turns the pairing off.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the trajectory split.
        generate: let ``prepare_data`` write the generated file into the folder ``root``.
        data_dir: deprecated name of ``root`` (a folder).
        path: deprecated name of ``root`` (a file).
        test_root: a separate test file; ``None`` pairs neuraloperator's files (see above).
        manifest: checksum list (``sha256sum``/``md5sum`` output) of the data files, checked in
            ``prepare_data`` before anything is read (see :meth:`BaseDataModule.verify_manifest`).
    """

    data_name = "Navier–Stokes data file"

    def __init__(
        self,
        root: str | os.PathLike[str] = "data/navier_stokes",
        resolution: int = 32,
        factor: int = 2,
        test_factors: Sequence[int] = (1, 2, 4),
        num_trajectories: int = 100,
        file_resolution: int = 64,
        viscosity: float = 1e-3,
        t_final: float = 10.0,
        record_steps: int = 10,
        dt: float = 1e-2,
        data_seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        generate: bool = False,
        data_dir: str | os.PathLike[str] | None = None,
        path: str | os.PathLike[str] | None = None,
        test_root: str | os.PathLike[str] | None = None,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, manifest=manifest
        )
        root = renamed_argument(type(self).__name__, "data_dir", data_dir, "root", root)
        root = renamed_argument(type(self).__name__, "path", path, "root", root)
        self.root = Path(root)
        if test_root is not None and test_fraction:
            raise ValueError(
                f"test_root={str(test_root)!r} is the test split and test_fraction={test_fraction} "
                "would split another one off root; remove one of the two arguments."
            )
        self.test_root = None if test_root is None else Path(test_root)
        self._split_test_off_root = bool(test_fraction)
        if test_fraction is None:
            test_fraction = 0.0 if self.test_file is not None else 0.15
        for name, value in (
            ("resolution", resolution),
            ("num_trajectories", num_trajectories),
            ("file_resolution", file_resolution),
            ("record_steps", record_steps),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        for name, value in (("viscosity", viscosity), ("t_final", t_final), ("dt", dt)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}.")
        if factor < 1 or resolution % factor:
            raise ValueError(
                f"factor={factor} must be a positive integer dividing resolution={resolution}; "
                f"choose e.g. resolution={resolution - resolution % max(factor, 1) or factor}."
            )
        if not test_factors or any(int(f) != f or f < 1 for f in test_factors):
            raise ValueError(f"test_factors must be positive integers, got {list(test_factors)}.")
        if (
            not 0 <= val_fraction < 1
            or not 0 <= test_fraction < 1
            or val_fraction + test_fraction >= 1
        ):
            raise ValueError(
                "val_fraction and test_fraction must be in [0, 1) and sum to less than 1, got "
                f"{val_fraction} and {test_fraction}."
            )
        self.resolution = resolution
        self.factor = factor
        self.lr_resolution = resolution // factor
        self.test_factors = [int(f) for f in test_factors]
        if not self.is_file:
            self._check_grid_sizes(file_resolution, f"file_resolution={file_resolution}")
        self.num_trajectories = num_trajectories
        self.file_resolution = file_resolution
        self.viscosity = viscosity
        self.t_final = t_final
        self.record_steps = record_steps
        self.dt = dt
        self.data_seed = data_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.generate = generate
        self._trajectories: NavierStokesTrajectories | None = None
        self._test_trajectories: NavierStokesTrajectories | None = None

    def _given_file(self) -> Path | None:
        """``root`` if it names a data file (by suffix), or the one ``*_train_<res>.pt`` in it."""
        if self.root.suffix.lower() in _FILE_SUFFIXES:
            return self.root
        found = sorted(p for p in self.root.glob("*_train_*.pt*") if paired_test_file(p))
        if len(found) > 1:
            raise ValueError(
                f"root={str(self.root)!r} holds several training files "
                f"{[p.name for p in found]}; point `root` at the one to train on."
            )
        return found[0] if found else None

    @property
    def is_file(self) -> bool:
        """Whether ``root`` names a data file, or a folder holding a ``*_train_<res>.pt`` file."""
        return self._given_file() is not None

    @property
    def test_file(self) -> Path | None:
        """The separate test file: ``test_root``, or the ``<name>_test_<res>.pt`` paired with root."""
        if self.test_root is not None or self._split_test_off_root:
            return self.test_root
        given = self._given_file()
        return None if given is None else paired_test_file(given)

    @property
    def file_path(self) -> Path:
        """The data file: ``root`` if it is a file, else the generated file named after its parameters."""
        given = self._given_file()
        if given is not None:
            return given
        name = (
            f"ns_res{self.file_resolution}_nu{self.viscosity:g}_T{self.t_final:g}"
            f"_steps{self.record_steps}_dt{self.dt:g}_n{self.num_trajectories}_seed{self.data_seed}.h5"
        )
        return self.root / name

    def prepare_data(self) -> None:
        """Generate the data file if it is missing and ``generate`` is set (never overwrites)."""
        if self.file_path.exists():
            rank_zero_info(f"Navier–Stokes data: reusing {self.file_path}")
            self._check_test_file()
            return
        if self.is_file or not self.generate:
            raise self.missing_data_error(self.file_path)
        rank_zero_info(f"Navier–Stokes data: generating {self.file_path}")
        generate_navier_stokes(
            self.file_path,
            num_trajectories=self.num_trajectories,
            resolution=self.file_resolution,
            viscosity=self.viscosity,
            t_final=self.t_final,
            record_steps=self.record_steps,
            dt=self.dt,
            seed=self.data_seed,
        )

    def _check_test_file(self) -> None:
        test = self.test_file
        if test is None or test.is_file():
            return
        if self.test_root is not None:
            raise FileNotFoundError(
                f"{type(self).__name__}: test_root={str(test)!r} does not exist; point it at "
                "your test file, or remove it to split a test set off root (test_fraction)."
            )
        raise FileNotFoundError(
            f"{type(self).__name__}: the test split of {self.file_path.name} is {test.name}, which "
            f"is not in {test.parent}. Put it there (neuraloperator ships both files in one "
            f"archive, e.g. nsforcing_128.tgz), point test_root at your copy, or set test_fraction "
            f"(e.g. 0.15) to split a test set off the training file instead."
        )

    def _check_grid_sizes(self, grid: int, source: str, test_only: bool = False) -> None:
        grids = {} if test_only else {"resolution": self.resolution}
        grids.update({f"test factor {f}": self.lr_resolution * f for f in self.test_factors})
        bad = {what: size for what, size in grids.items() if grid % size}
        if bad:
            raise ValueError(
                f"{source} holds {grid}x{grid} fields, which cannot be block-averaged to the grid "
                f"of {', '.join(f'the {w} ({s}x{s})' for w, s in bad.items())}; choose "
                f"resolution, factor and test_factors whose grids divide {grid} (e.g. "
                f"test_factors={[f for f in self.test_factors if grid % (self.lr_resolution * f) == 0]})."
            )

    def _check_grids(self, trajectories: NavierStokesTrajectories) -> None:
        self._check_grid_sizes(trajectories.resolution, str(trajectories.path))

    def _split(self, num: int) -> dict[str, list[int]]:
        order = torch.randperm(num, generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = round(self.val_fraction * num)
        n_test = round(self.test_fraction * num)
        if (
            num - n_val - n_test < 1
            or (self.val_fraction and not n_val)
            or (self.test_fraction and not n_test)
        ):
            raise ValueError(
                f"{num} trajectories are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction}; generate more (num_trajectories) or change them."
            )
        return {
            "test": sorted(order[:n_test]),
            "val": sorted(order[n_test : n_test + n_val]),
            "train": sorted(order[n_test + n_val :]),
        }

    def setup(self, stage: str) -> None:
        """Open the file(s), split trajectories and build the per-split datasets."""
        if not self.file_path.exists():
            raise self.missing_data_error(self.file_path)
        self._check_test_file()
        trajectories = NavierStokesTrajectories(self.file_path)
        self._check_grids(trajectories)
        self._trajectories = trajectories
        steps = trajectories.num_steps
        splits = self._split(trajectories.num_trajectories)
        samples = {k: [t * steps + s for t in v for s in range(steps)] for k, v in splits.items()}
        grids = dict.fromkeys(("train", "val", "test"), trajectories.resolution)
        self._test_trajectories = None
        if self.test_file is not None:
            test = NavierStokesTrajectories(self.test_file)
            self._check_grid_sizes(test.resolution, str(test.path), test_only=True)
            self._test_trajectories = test
            offset = len(trajectories) * steps
            samples["test"] = [offset + i for i in range(len(test) * test.num_steps)]
            grids["test"] = test.resolution

        def pairs(split: str, hr_grid: int, lr_factor: int) -> BlockMeanPairs:
            return BlockMeanPairs(
                self._snapshot, samples[split], grids[split] // hr_grid, lr_factor
            )

        self.train_dataset = pairs("train", self.resolution, self.factor)
        self.val_dataset = pairs("val", self.resolution, self.factor)
        self.test_dataset = {
            f"x{f}": pairs("test", self.lr_resolution * f, f) for f in self.test_factors
        }
        self.predict_dataset = self.test_dataset
        self._train_indices = samples["train"]

    def _snapshot(self, index: int) -> torch.Tensor:
        """Snapshot ``index``: of the training file, or past its end of the separate test file."""
        reader = self._trajectories
        assert reader is not None
        if index >= len(reader) * reader.num_steps:
            index -= len(reader) * reader.num_steps
            reader = self._test_trajectories
            assert reader is not None
        steps = reader.num_steps
        return reader.snapshot(index // steps, index % steps).unsqueeze(0)

    def compute_train_statistics(self) -> dict[str, torch.Tensor]:
        """``hr_min`` and ``hr_max`` (per channel) of the training targets at ``resolution``."""
        assert self._trajectories is not None
        steps = self._trajectories.num_steps
        hr_factor = self._trajectories.resolution // self.resolution
        lo, hi = float("inf"), float("-inf")
        for t in sorted({i // steps for i in self._train_indices}):
            hr = block_mean(self._trajectories[t], hr_factor)
            lo, hi = min(lo, hr.min().item()), max(hi, hr.max().item())
        return {"hr_min": torch.tensor([lo]), "hr_max": torch.tensor([hi])}

    def statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """One channel of vorticity."""
        return {"hr_min": (1,), "hr_max": (1,)}

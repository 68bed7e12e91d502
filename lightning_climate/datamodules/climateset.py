"""LightningDataModule of the ClimateSet emulation benchmark (single and super emulator).

Public interface (also used by the causal-discovery task):

* ``setup("fit")`` fills ``train_dataset`` and ``val_dataset`` (:class:`ClimateSet` instances)
  from ``train_scenarios`` x ``train_years``; ``setup("test")``/``setup("predict")`` fill
  ``test_dataset``/``predict_dataset`` with a mapping ``"{scenario}_{climate_model}" ->
  ClimateSet`` over ``test_scenarios`` x ``test_years``, so each climate model is evaluated apart.
* Samples (see :class:`~lightning_climate.datasets.ClimateSet`) are dicts of tensors: ``x``
  float32 (12, C_in, H, W) forcings (plus a last cumulative-CO2 channel with
  ``cumulative_co2=True``), ``y`` float32 (12 or 1, C_out, H, W) outputs, ``model_id``,
  ``year`` and ``index`` int64 scalars, in physical units.
* Contract with tasks: :attr:`channels` are ``out_vars``, :attr:`latitudes` come from the files,
  and :meth:`~ClimateSetDataModule.train_statistics` gives per-climate-model ``x_mean``,
  ``x_std`` ((M, C_in)), ``y_mean`` ((M, C_out), or the climatology (M, T, C_out, H, W) with
  ``normalization="climatology"``) and ``y_std`` ((M, C_out)) from the training split only; tasks
  normalise with them (grouped by ``model_id``) and checkpoints carry them.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_climate.datamodules.base import BaseDataModule
from lightning_climate.datasets.climateset import (
    CUMULATIVE_CO2,
    HISTORICAL_YEARS,
    INPUT_VARS,
    OUTPUT_VARS,
    ClimateSet,
)
from lightning_climate.datasets.climateset_generate import generate_climateset

__all__ = ["ClimateSetDataModule", "split_train_val"]


def split_train_val(
    years: Sequence[int], n_samples: int, val_fraction: float, mode: str, seed: int
) -> tuple[list[int], list[int]]:
    """Split sample positions of a pool of consecutive-``years`` blocks into train and validation.

    The pool is ordered as blocks of ``len(years)`` samples, one block per (model, member,
    scenario). ``"blocked"`` validates on the last ``max(1, round(val_fraction * len(years)))`` years of
    every block (no year of a validation window is next to a training year of the same run except
    at the block edge). ``"random"`` draws ``floor(val_fraction * n_samples)`` samples with a
    seeded generator, as the reference code did (258 samples -> 233 / 25).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if mode == "random":
        order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = math.floor(val_fraction * n_samples)
        if n_val == 0:
            raise ValueError(f"val_fraction {val_fraction} of {n_samples} samples holds out none.")
        return sorted(order[n_val:]), sorted(order[:n_val])
    if mode != "blocked":
        raise ValueError(f"val_split must be 'blocked' or 'random', got {mode!r}.")
    n_years = len(years)
    n_val = max(1, round(val_fraction * n_years))
    if n_val >= n_years:
        raise ValueError(f"val_fraction {val_fraction} leaves no training year of {n_years}.")
    train, val = [], []
    for i in range(n_samples):
        (val if i % n_years >= n_years - n_val else train).append(i)
    return train, val


def _year_range(span: Sequence[int], name: str) -> list[int]:
    if len(span) != 2 or span[0] > span[1]:
        raise ValueError(f"{name} must be [first_year, last_year] (inclusive), got {list(span)}.")
    return list(range(int(span[0]), int(span[1]) + 1))


class ClimateSetDataModule(BaseDataModule):
    """ClimateSet emulation: 12 months of forcings -> 12 months of climate-model outputs.

    Defaults are the benchmark's: inputs ``BC_sum, CH4_sum, CO2_sum, SO2_sum``, outputs ``tas,
    pr``, train on ssp126/ssp370/ssp585 and test on ssp245, 2015-2100, batch size 4. Several
    ``climate_models`` give the super-emulator setting: every sample carries its ``model_id`` and
    training batches mix the models.

    Args:
        root: folder with ``inputs/`` and ``outputs/`` in the published layout.
        climate_models: CMIP6 model names; ``model_id`` is the position in this list.
        members: ensemble members of every model; ``None`` takes the first in sorted order.
        in_vars: forcing variables, any subset by name.
        out_vars: output variables, any subset by name.
        train_scenarios: scenarios of the train and validation splits.
        test_scenarios: held-out scenarios of the test (and predict) split.
        train_years: first and last (inclusive) training year.
        test_years: first and last (inclusive) test year.
        val_fraction: share of the training years (``blocked``) or samples (``random``) held out.
        val_split: ``"blocked"`` (last years of every run, leak-free) or ``"random"`` (paper).
        seq_to_seq: predict all 12 months (``True``) or only the last one.
        in_memory: read every sample once in ``setup`` and keep it in RAM (small data); the
            default reads each sample's files lazily, so memory does not grow with the data.
        normalization: ``"variable"`` z-scores ``y`` with one mean and std per variable (the
            paper); ``"climatology"`` subtracts the training mean of every (month, lat, lon) cell
            and divides by the per-variable std of the anomalies, so a model learns the forced
            response and predicting zeros equals the climatology baseline.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (files are opened per sample, fork-safe).
        seed: seed of the random validation split.
        generate: write a generated ClimateSet tree under ``root`` in ``prepare_data`` (demo).
        generate_grid_shape: (lat, lon) size of the generated grid.
        cumulative_co2: add an input channel after ``in_vars``: the global CO2 emitted from 1850
            to the end of the sample's year (GtCO2), normalised with its training statistics like
            the other inputs. It needs the ``CO2_sum`` files of every historical year (1850-2014)
            and of every SSP year from 2015 up to the last year used (``generate`` writes them).
        train_historical_years: first and last (inclusive) year of ``historical`` when it is
            among ``train_scenarios`` (upstream's ``train_historical_years``, e.g. 1850-2010),
            while ``train_years`` are the SSPs' years; ``None`` uses ``train_years`` for it too.
        manifest: checksum list (``sha256sum``/``md5sum`` output) of the files under ``root``, checked in
            ``prepare_data`` before anything is read (see :meth:`BaseDataModule.verify_manifest`).
    """

    data_name = "ClimateSet tree"
    statistics_arguments = (
        "climate_models, in_vars, out_vars, cumulative_co2, normalization, seq_to_seq"
    )

    def __init__(
        self,
        root: str = "data/climateset",
        climate_models: Sequence[str] = ("NorESM2-LM",),
        members: Sequence[str] | None = None,
        in_vars: Sequence[str] = INPUT_VARS,
        out_vars: Sequence[str] = OUTPUT_VARS,
        train_scenarios: Sequence[str] = ("ssp126", "ssp370", "ssp585"),
        test_scenarios: Sequence[str] = ("ssp245",),
        train_years: Sequence[int] = (2015, 2100),
        test_years: Sequence[int] = (2015, 2100),
        val_fraction: float = 0.1,
        val_split: Literal["blocked", "random"] = "blocked",
        seq_to_seq: bool = True,
        in_memory: bool = False,
        normalization: Literal["variable", "climatology"] = "variable",
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        generate: bool = False,
        generate_grid_shape: Sequence[int] = (96, 144),
        cumulative_co2: bool = False,
        train_historical_years: Sequence[int] | None = None,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, manifest=manifest
        )
        self.root = Path(root)
        self.climate_models = list(climate_models)
        self.members = None if members is None else list(members)
        self.in_vars, self.out_vars = list(in_vars), list(out_vars)
        self.train_scenarios, self.test_scenarios = list(train_scenarios), list(test_scenarios)
        self.train_years = _year_range(train_years, "train_years")
        self.test_years = _year_range(test_years, "test_years")
        split_train_val(self.train_years, len(self.train_years), val_fraction, val_split, seed)
        self.val_fraction, self.val_split = val_fraction, val_split
        self.seq_to_seq = seq_to_seq
        self.in_memory = in_memory
        if normalization not in ("variable", "climatology"):
            raise ValueError(
                f"normalization must be 'variable' or 'climatology', got {normalization!r}."
            )
        self.normalization = normalization
        self.generate = generate
        if len(generate_grid_shape) != 2:
            raise ValueError(f"generate_grid_shape must be (lat, lon), got {generate_grid_shape}.")
        self.generate_grid_shape = (int(generate_grid_shape[0]), int(generate_grid_shape[1]))
        self.cumulative_co2 = cumulative_co2
        self.train_historical_years = (
            None
            if train_historical_years is None
            else _year_range(train_historical_years, "train_historical_years")
        )
        if self.train_historical_years is not None:
            n_hist = len(self.train_historical_years)
            split_train_val(self.train_historical_years, n_hist, val_fraction, val_split, seed)
        self.channels = list(self.out_vars)
        self.longitudes: np.ndarray | None = None

    def prepare_data(self) -> None:
        """Write the generated tree when ``generate`` is set; real data is never touched."""
        if not self.generate:
            return
        scenarios = sorted(set(self.train_scenarios + self.test_scenarios))
        jobs = [(scenarios, sorted(set(self.train_years + self.test_years)))]
        if self.train_historical_years is not None and "historical" in scenarios:
            jobs = [([s for s in scenarios if s != "historical"], jobs[0][1])]
            historical_years = set(self.train_historical_years)
            if "historical" in self.test_scenarios:
                historical_years |= set(self.test_years)
            jobs.append((["historical"], sorted(historical_years)))
        for job_scenarios, job_years in jobs:
            generate_climateset(
                self.root,
                climate_models=self.climate_models,
                scenarios=job_scenarios,
                years=job_years,
                members=self.members or ("r1i1p1f1",),
                grid_shape=self.generate_grid_shape,
                in_vars=self.in_vars,
                out_vars=self.out_vars,
            )
        if not self.cumulative_co2:
            return
        # The CO2 maps of every year the running sums pass through, not only the split's years.
        ssp_years = range(HISTORICAL_YEARS.stop, max(self.train_years + self.test_years) + 1)
        co2_jobs = [(["historical"], HISTORICAL_YEARS)]
        if ssp_years:
            co2_jobs.append(([s for s in scenarios if s != "historical"], ssp_years))
        for co2_scenarios, years in co2_jobs:
            generate_climateset(
                self.root,
                scenarios=co2_scenarios,
                years=years,
                grid_shape=self.generate_grid_shape,
                in_vars=["CO2_sum"],
                out_vars=[],
            )

    @property
    def input_names(self) -> list[str]:
        """Channels of ``x``: ``in_vars``, then ``CO2_cumulative`` with ``cumulative_co2``."""
        return self.in_vars + ([CUMULATIVE_CO2] if self.cumulative_co2 else [])

    def _dataset(
        self,
        scenarios: Sequence[str],
        years: Sequence[int],
        historical_years: Sequence[int] | None = None,
    ) -> ClimateSet:
        dataset = ClimateSet(
            self.root,
            climate_models=self.climate_models,
            scenarios=scenarios,
            years=years,
            members=self.members,
            in_vars=self.in_vars,
            out_vars=self.out_vars,
            seq_to_seq=self.seq_to_seq,
            cumulative_co2=self.cumulative_co2,
            historical_years=historical_years,
        )
        self.latitudes = torch.as_tensor(np.asarray(dataset.latitudes), dtype=torch.float64)
        self.longitudes = dataset.longitudes
        return dataset.load_into_memory() if self.in_memory else dataset

    def _train_val(self) -> tuple[ClimateSet, ClimateSet]:
        pool = self._dataset(self.train_scenarios, self.train_years, self.train_historical_years)
        if self.val_split == "random" or self.train_historical_years is None:
            train, val = split_train_val(
                self.train_years, len(pool), self.val_fraction, self.val_split, self.seed
            )
            return pool.subset(train), pool.subset(val)
        # Runs (model, member, scenario) differ in length: hold out the last years of each.
        train, val, start = [], [], 0
        for (_, _, scenario), run in itertools.groupby(
            pool.keys, lambda k: (k.model_id, k.member, k.scenario)
        ):
            years = pool.scenario_years(scenario)
            run_train, run_val = split_train_val(
                years, len(years), self.val_fraction, "blocked", self.seed
            )
            train += [start + i for i in run_train]
            val += [start + i for i in run_val]
            start += len(list(run))
        return pool.subset(train), pool.subset(val)

    def setup(self, stage: str) -> None:
        """Build the splits of ``stage`` (statistics are computed on first use, see the base class)."""
        if stage in ("fit", "validate"):
            self.train_dataset, self.val_dataset = self._train_val()
            if not len(self.val_dataset):
                raise ValueError(
                    f"val_fraction={self.val_fraction} holds out no sample; raise it or use more years."
                )
        if stage in ("test", "predict"):
            # One pool keeps every sample's global model_id; each loader holds one (scenario, model).
            pool = self._dataset(self.test_scenarios, self.test_years)
            tests = {
                f"{scenario}_{model}": pool.subset(
                    [
                        i
                        for i, key in enumerate(pool.keys)
                        if key.scenario == scenario and key.climate_model == model
                    ]
                )
                for scenario in self.test_scenarios
                for model in self.climate_models
            }
            if stage == "test":
                self.test_dataset = tests
            else:
                self.predict_dataset = tests

    def compute_train_statistics(self) -> dict[str, Tensor]:
        """Per-model, per-variable mean and std of ``x`` and ``y`` over the training split (float64).

        Per-sample moments are merged with Chan et al.'s pairwise update, which stays exact in
        float64 where the one-pass E[x^2] - E[x]^2 would cancel (e.g. tas ~ 280 K, std ~ 15 K).
        """
        dataset = self.train_dataset
        assert dataset is not None
        n_models = len(self.climate_models)
        acc = {
            name: [torch.zeros(n_models, c, dtype=torch.float64) for _ in range(3)]
            for name, c in (("in", len(self.input_names)), ("out", len(self.out_vars)))
        }
        pixel: dict[str, Tensor] = {}
        loader = DataLoader(dataset, batch_size=1, num_workers=self.num_workers)
        for sample in loader:
            m = int(sample["model_id"])
            if self.normalization == "climatology":
                y = sample["y"][0].double()
                if not pixel:
                    pixel = {k: y.new_zeros(n_models, *y.shape) for k in ("sum", "sq")}
                    pixel["n"] = torch.zeros(n_models, dtype=torch.float64)
                pixel["sum"][m] += y
                pixel["sq"][m] += y**2
                pixel["n"][m] += 1
            for name, key in (("in", "x"), ("out", "y")):
                values = sample[key][0].double().transpose(0, 1).flatten(1)  # (C, N)
                count, mean, m2 = acc[name]
                n_b = values.shape[1]
                mean_b = values.mean(1)
                m2_b = ((values - mean_b[:, None]) ** 2).sum(1)
                total = count[m] + n_b
                delta = mean_b - mean[m]
                mean[m] += delta * n_b / total
                m2[m] += m2_b + delta**2 * count[m] * n_b / total
                count[m] = total
        stats: dict[str, Tensor] = {}
        for name in ("in", "out"):
            count, mean, m2 = acc[name]
            missing = [self.climate_models[i] for i in range(n_models) if count[i, 0] == 0]
            if missing:
                raise ValueError(
                    f"No training sample of climate model(s) {missing}; add their files."
                )
            std = (m2 / count).sqrt()
            if (std == 0).any():
                raise ValueError(
                    f"A training variable is constant (std 0) in {name}puts: {std.tolist()}."
                )
            key = "x" if name == "in" else "y"
            stats[f"{key}_mean"], stats[f"{key}_std"] = mean, std
        if pixel:
            n = pixel["n"].view(-1, 1, 1, 1, 1)
            climatology = pixel["sum"] / n  # (M, T, C, H, W)
            anomaly_var = (pixel["sq"] / n - climatology**2).clamp_min(0.0).mean(dim=(1, 3, 4))
            if (anomaly_var == 0).any():
                raise ValueError(
                    "Anomalies from the climatology are all zero for a variable; use "
                    "normalization='variable' or more training years."
                )
            stats["y_mean"], stats["y_std"] = climatology, anomaly_var.sqrt()
        return stats

    def statistics_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Shapes under this configuration; the climatology's grid is known once set up."""
        n_models, n_in, n_out = len(self.climate_models), len(self.input_names), len(self.out_vars)
        shapes: dict[str, tuple[int, ...]] = {
            "x_mean": (n_models, n_in),
            "x_std": (n_models, n_in),
            "y_mean": (n_models, n_out),
            "y_std": (n_models, n_out),
        }
        if self.normalization == "climatology":
            if self.latitudes is None or self.longitudes is None:
                return None
            months = 12 if self.seq_to_seq else 1
            grid = (len(self.latitudes), len(self.longitudes))
            shapes["y_mean"] = (n_models, months, n_out, *grid)
        return shapes

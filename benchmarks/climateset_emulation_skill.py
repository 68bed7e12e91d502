"""Does a trained emulator beat climatology on the held-out scenario? Test RMSE (physical units) ratios.

The climatology baseline predicts, for every test year, the training mean of each (month, lat,
lon) cell of the same climate model: it knows the seasonal cycle and the geography but not the
forcing. An emulator that learned the emission -> climate response must beat it on ssp245, whose
warming differs from the training years'.

    lightning-climate fit --config examples/climateset_unet.yaml --trainer.default_root_dir runs/unet
    python benchmarks/climateset_emulation_skill.py runs/unet/lightning_logs/version_0
    # the validation block of a training scenario (years never trained on):
    python benchmarks/climateset_emulation_skill.py runs/unet/... --test-scenarios ssp585 --test-years 2092 2100

With or without the cumulative-CO2 channel (same seed and epochs; one ratio column per run, on
ssp245 and on the held-out last years of every training scenario):

    lightning-climate fit --config examples/climateset_unet.yaml --trainer.default_root_dir runs/a
    lightning-climate fit --config examples/climateset_unet_cumco2.yaml --trainer.default_root_dir runs/b
    python benchmarks/climateset_emulation_skill.py runs/a/lightning_logs/version_0 \
        runs/b/lightning_logs/version_0 --validation-blocks
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Trainer

from lightning_climate import models
from lightning_climate.datamodules import ClimateSetDataModule
from lightning_climate.datamodules.climateset import split_train_val
from lightning_climate.metrics import LatitudeWeightedRMSE
from lightning_climate.tasks import EmulationTask


def build(spec: dict) -> torch.nn.Module:
    """Instantiate ``{class_path, init_args}`` of a model of this package (nested specs too)."""
    cls = getattr(models, spec["class_path"].rsplit(".", 1)[-1])
    args = {
        k: build(v) if isinstance(v, dict) and "class_path" in v else v
        for k, v in spec["init_args"].items()
    }
    return cls(**args)


def skill(
    run_dir: Path, data_args: dict, test_sets: list[tuple[list[str], list[int]]]
) -> dict[tuple[str, str], tuple[float, float]]:
    """(test set, var) -> (emulator RMSE, climatology RMSE) of the last checkpoint of ``run_dir``."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    ckpt = max((run_dir / "checkpoints").glob("*.ckpt"))
    task = EmulationTask.load_from_checkpoint(
        ckpt, model=build(config["model"]["init_args"]["model"])
    )
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for scenarios, years in test_sets:
        dm = ClimateSetDataModule(
            **(data_args | {"test_scenarios": scenarios, "test_years": [years[0], years[-1]]})
        )
        results = trainer.test(task, datamodule=dm, ckpt_path=ckpt, verbose=False)
        dm.setup("fit")
        for (name, test), result in zip(dm.test_dataset.items(), results, strict=True):
            model_id = int(test[0]["model_id"])
            train_y = torch.stack(
                [s["y"] for s in dm.train_dataset if int(s["model_id"]) == model_id]
            )
            climatology = train_y.double().mean(0)  # (12, C, H, W)
            label = f"{name} {years[0]}-{years[-1]}"
            for channel, var in enumerate(dm.out_vars):
                metric = LatitudeWeightedRMSE(dm.latitudes)
                for sample in test:
                    metric.update(
                        climatology[None, :, channel], sample["y"][None, :, channel].double()
                    )
                out[(label, var)] = (result[f"test_{name}_LatRMSE_{var}"], metric.compute().item())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        help="log folders holding config.yaml and checkpoints/ (several: one column each)",
    )
    parser.add_argument("--root", help="override the data root of the configs")
    parser.add_argument("--test-scenarios", nargs="+", help="override the test scenarios")
    parser.add_argument(
        "--test-years", nargs=2, type=int, help="override the first and last test year"
    )
    parser.add_argument(
        "--validation-blocks",
        action="store_true",
        help="also test on the held-out last years of every training scenario (val_split blocked)",
    )
    args = parser.parse_args()
    config = yaml.safe_load((args.run_dirs[0] / "config.yaml").read_text())
    data_args = dict(config["data"]["init_args"]) | ({"root": args.root} if args.root else {})
    data_args["generate"] = False
    scenarios = args.test_scenarios or list(data_args.get("test_scenarios", ["ssp245"]))
    span = args.test_years or data_args.get("test_years", [2015, 2100])
    test_sets = [(scenarios, list(range(span[0], span[1] + 1)))]
    if args.validation_blocks:
        train_years = ClimateSetDataModule(**data_args).train_years
        _, val = split_train_val(
            train_years, len(train_years), data_args.get("val_fraction", 0.1), "blocked", 0
        )
        test_sets.append(
            (
                list(data_args.get("train_scenarios", ["ssp126", "ssp370", "ssp585"])),
                [train_years[i] for i in val],
            )
        )
    runs = []
    for run_dir in args.run_dirs:
        run_config = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]
        keep = {"cumulative_co2": run_config.get("cumulative_co2", False)}
        runs.append(skill(run_dir, data_args | keep, test_sets))
        print(f"{run_dir}: cumulative_co2={keep['cumulative_co2']}")
    print("test RMSE / climatology RMSE (physical units; below 1 beats climatology)")
    print(f"{'test set':40s} var  " + "  ".join(f"run {i}" for i in range(len(runs))))
    for label, var in runs[0]:
        ratios = [run[(label, var)][0] / run[(label, var)][1] for run in runs]
        print(f"{label:40s} {var:4s} " + "  ".join(f"{r:5.3f}" for r in ratios))


if __name__ == "__main__":
    main()

"""Does a trained emulator beat climatology on the held-out scenario? Test RMSE (physical units) ratios.

The climatology baseline predicts, for every test year, the training mean of each (month, lat,
lon) cell of the same climate model: it knows the seasonal cycle and the geography but not the
forcing. An emulator that learned the emission -> climate response must beat it on ssp245, whose
warming differs from the training years'.

    lightning-climate fit --config examples/climateset_unet.yaml --trainer.default_root_dir runs/unet
    python benchmarks/climateset_emulation_skill.py runs/unet/lightning_logs/version_0
    # the validation block of a training scenario (years never trained on):
    python benchmarks/climateset_emulation_skill.py runs/unet/... --test-scenarios ssp585 --test-years 2092 2100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Trainer

from lightning_climate import models
from lightning_climate.datamodules import ClimateSetDataModule
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dir", type=Path, help="log folder holding config.yaml and checkpoints/"
    )
    parser.add_argument("--root", help="override the data root of the config")
    parser.add_argument("--test-scenarios", nargs="+", help="override the test scenarios")
    parser.add_argument(
        "--test-years", nargs=2, type=int, help="override the first and last test year"
    )
    args = parser.parse_args()
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    data_args = dict(config["data"]["init_args"]) | ({"root": args.root} if args.root else {})
    if args.test_scenarios:
        data_args["test_scenarios"] = args.test_scenarios
    if args.test_years:
        data_args["test_years"] = args.test_years
    data_args["generate"] = False
    dm = ClimateSetDataModule(**data_args)
    ckpt = max((args.run_dir / "checkpoints").glob("*.ckpt"))
    task = EmulationTask.load_from_checkpoint(
        ckpt, model=build(config["model"]["init_args"]["model"])
    )
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    results = trainer.test(task, datamodule=dm, ckpt_path=ckpt, verbose=False)
    dm.setup("fit")
    print(f"checkpoint {ckpt.name}; test RMSE in physical units (tas K, pr mm/day)")
    print("test set                       var   emulator  climatology  ratio")
    for (name, test), result in zip(dm.test_dataset.items(), results, strict=True):
        model_id = int(test[0]["model_id"])
        train_y = torch.stack([s["y"] for s in dm.train_dataset if int(s["model_id"]) == model_id])
        climatology = train_y.double().mean(0)  # (12, C, H, W)
        for channel, var in enumerate(dm.out_vars):
            metric = LatitudeWeightedRMSE(dm.latitudes)
            for sample in test:
                metric.update(climatology[None, :, channel], sample["y"][None, :, channel].double())
            base = metric.compute().item()
            emulator = result[f"test_{name}_RMSE_{var}"]
            scale = 86400.0 if var == "pr" else 1.0
            print(
                f"{name:30s} {var:4s} {emulator * scale:9.4f} {base * scale:12.4f} {emulator / base:6.2f}"
            )


if __name__ == "__main__":
    main()

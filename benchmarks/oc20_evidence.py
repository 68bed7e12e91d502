"""Evidence for issue 8: IS2RE on the generated OC20-format data, with and without PhAST and with
each catalyst-adsorbate modification, side by side with the zero and mean predictors.

Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_evidence.py --root data/oc20 --epochs 25``
(the data is generated into ``--root`` when missing). Prints a Markdown table (energy MAE and EwT on val_id and the OOD splits, seconds per epoch).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from epoch_timer import EpochTimer
from lightning.pytorch import Trainer, seed_everything

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.models import CatalystModel
from lightning_climate.tasks import CatalystTask

CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "SchNet (full graph)": ({}, {}),
    "PhAST rewiring (remove tag 0)": ({"rewiring": "remove_tag0"}, {}),
    "PhAST (rewiring + embeddings + weighted head)": (
        {"rewiring": "remove_tag0"},
        {"phast_embedding": True, "energy_head": "weighted_final"},
    ),
    "1. disconnected graph": ({"disconnected": True}, {}),
    "2. + separate pooling": ({"disconnected": True}, {"ads_cat": "separate_pooling"}),
    "3. + independent backbones": ({"disconnected": True}, {"ads_cat": "independent"}),
    "4. + bipartite attention": ({"disconnected": True}, {"ads_cat": "attention"}),
    "FAENet-style SchNet (2D frame averaging)": ({}, {"frame_averaging": "2D"}),
    "DimeNet++": ({}, {"backbone": "dimenet++"}),
}


def constant_predictor(dm: OC20DataModule, value: float) -> dict[str, float]:
    """Energy MAE and EwT of one constant on every validation loader, named as the task logs them."""
    out = {}
    for name, dataset in dm.val_dataset.items():
        y = torch.tensor([dataset[i].y_relaxed.item() for i in range(len(dataset))])
        err = (y - value).abs()
        out[f"val_{name}_energy_mae"] = float(err.mean())
        out[f"val_{name}_energy_ewt"] = float((err < 0.02).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="data/oc20")
    parser.add_argument("--num-systems", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="run only the configs whose label starts so")
    args = parser.parse_args()
    rows = []
    names: list[str] = []
    for label, (data_kw, model_kw) in CONFIGS.items():
        if args.only and not any(label.startswith(prefix) for prefix in args.only):
            continue
        seed_everything(0)
        dm = OC20DataModule(
            root=args.root, generate=True, num_systems=args.num_systems, batch_size=16, **data_kw
        )
        dm.prepare_data()
        dm.setup("fit")
        names = [f"val_{name}" for name in dm.val_dataset]
        if not rows:
            train_mean = float(dm.train_statistics()["y_relaxed_mean"])
            rows.append(("zero predictor", constant_predictor(dm, 0.0), float("nan")))
            rows.append(("train-mean predictor", constant_predictor(dm, train_mean), float("nan")))
        model = CatalystModel(
            hidden_channels=args.hidden, num_filters=args.hidden, num_interactions=3, **model_kw
        )
        task = CatalystTask(model)
        timer = EpochTimer()
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=args.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            num_sanity_val_steps=0,
            check_val_every_n_epoch=args.epochs,
        )
        trainer.fit(task, dm)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        rows.append((label, metrics, timer.steady_mean()))
        print(label, {k: round(v, 4) for k, v in metrics.items() if "energy" in k}, flush=True)
    header = "| model | " + " | ".join(f"{n} MAE (eV) | {n} EwT" for n in names) + " | s/epoch |"
    print(header)
    print("|" + "---|" * (2 * len(names) + 2))
    for label, metrics, seconds in rows:
        cells = " | ".join(
            f"{metrics.get(f'{n}_energy_mae', float('nan')):.3f} | {metrics.get(f'{n}_energy_ewt', float('nan')):.3f}"
            for n in names
        )
        print(f"| {label} | {cells} | {seconds:.2f} |")


if __name__ == "__main__":
    main()

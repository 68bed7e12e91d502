"""Evidence for the pooling energy head: the IS2RE pooling example against the same config with
the plain sum head (and PhAST's weighted head), same seed and epochs.

Builds exactly what ``lightning-climate fit --config examples/oc20_is2re_phast_pooling.yaml``
builds (seed, data, model, optimizer, trainer settings from the YAML), only without loggers and
checkpoints, and with ``energy_head`` (and the pooling arguments) swapped per row.

Run: ``OMP_NUM_THREADS=1 python benchmarks/oc20_pooling_evidence.py --root data/oc20``.
Prints a Markdown table: energy MAE and EwT of every validation set after the last epoch, the
last training aux loss, and seconds per epoch (training + validation, first epoch excluded).
It also prints how dense the graphs are and, for the pooling head, what the learned assignment
looks like on ``val_id`` (row entropy over log K: 1 = uniform, 0 = hard; mean share of the
largest cluster: 1 = everything in one cluster).
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from epoch_timer import EpochTimer
from lightning.pytorch import Trainer, seed_everything

from lightning_climate.datamodules import OC20DataModule
from lightning_climate.models import CatalystModel, PoolingEnergyHead
from lightning_climate.models.pooling import dense_adjacency
from lightning_climate.models.schnet import Graph
from lightning_climate.tasks import CatalystTask

EXAMPLE = Path(__file__).parents[1] / "examples" / "oc20_is2re_phast_pooling.yaml"
HEADS: dict[str, dict[str, Any]] = {
    "pooling (K=4, mixing 0.5)": {"energy_head": "pooling"},
    "sum": {"energy_head": "sum"},
    "weighted_final (PhAST example)": {"energy_head": "weighted_final"},
}


def graph_density(dm: OC20DataModule) -> str:
    """Atoms per graph and density of the binary adjacency on the training split."""
    atoms, density = [], []
    for batch in dm.train_dataloader():
        graph = Graph.from_data(batch)
        counts = torch.bincount(graph.batch, minlength=graph.num_graphs)
        adj = dense_adjacency(
            graph.edge_index, graph.batch, graph.num_graphs, int(counts.max()), torch.float64
        )
        atoms += counts.tolist()
        density += (adj.sum((1, 2)) / (counts * (counts - 1)).clamp_min(1)).tolist()
    return (
        f"training graphs: {min(atoms)}-{max(atoms)} atoms (mean {sum(atoms) / len(atoms):.1f}), "
        f"adjacency density {min(density):.2f}-{max(density):.2f}"
    )


@torch.no_grad()
def assignment_summary(task: CatalystTask, dm: OC20DataModule) -> str:
    """Row entropy / log K and the largest cluster's share of the atoms on ``val_id``."""
    head = task.model.energy
    assert isinstance(head, PoolingEnergyHead)
    task.eval()
    entropy, largest = [], []
    for batch in dm.val_dataloader()[0]:
        graph = Graph.from_data(batch)
        _, h = task.model.backbone(graph)
        s = head(h, graph.batch, graph.num_graphs, graph.edge_index).assignment
        entropy.append(float(-(s * s.clamp_min(1e-12).log()).sum(-1).mean()) / math.log(s.shape[1]))
        for g in range(graph.num_graphs):
            mass = s[graph.batch == g].sum(0)
            largest.append(float(mass.max() / mass.sum()))
    return (
        f"val_id assignment: entropy/log K {sum(entropy) / len(entropy):.3f}, "
        f"largest cluster share {sum(largest) / len(largest):.3f}"
    )


def run(config: dict[str, Any], root: str, head: dict[str, Any]) -> tuple[dict[str, float], float]:
    seed_everything(config["seed_everything"])
    task_args = dict(config["model"]["init_args"])
    optimizer = task_args.pop("optimizer")
    model_config = task_args.pop("model")
    if model_config["class_path"].rsplit(".", 1)[-1] != "CatalystModel":
        raise ValueError(
            f"--config: the task's model is {model_config['class_path']}; this benchmark swaps "
            "the energy head of a CatalystModel, so give a config whose model is CatalystModel."
        )
    # the pool_* model arguments are read by the pooling head only
    model = CatalystModel(**{**model_config["init_args"], **head})
    opt_class = getattr(torch.optim, optimizer["class_path"].rsplit(".", 1)[-1])
    task = CatalystTask(
        model, **task_args, optimizer=functools.partial(opt_class, **optimizer["init_args"])
    )
    dm = OC20DataModule(**{**config["data"]["init_args"], "root": root})
    timer = EpochTimer()
    trainer = Trainer(
        **config["trainer"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(task, dm)
    print(graph_density(dm), flush=True)
    if head["energy_head"] == "pooling":
        print(assignment_summary(task, dm), flush=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, timer.steady_mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="data/oc20")
    parser.add_argument("--config", default=str(EXAMPLE))
    parser.add_argument("--only", nargs="*", help="run only the heads whose label starts so")
    parser.add_argument("--seed", type=int, help="replace the YAML's seed_everything")
    parser.add_argument("--rewiring", help="replace the YAML's data rewiring (e.g. none)")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    if args.seed is not None:
        config["seed_everything"] = args.seed
    if args.rewiring is not None:
        config["data"]["init_args"]["rewiring"] = args.rewiring
    names = ["val_id", "val_ood_ads", "val_ood_cat", "val_ood_both"]
    rows = []
    for label, head in HEADS.items():
        if args.only and not any(label.startswith(prefix) for prefix in args.only):
            continue
        metrics, seconds = run(config, args.root, head)
        rows.append((label, metrics, seconds))
        print(label, {k: round(v, 4) for k, v in sorted(metrics.items())}, flush=True)
    print("| energy head | " + " | ".join(f"{n} MAE (eV) | {n} EwT" for n in names), end="")
    print(" | train aux loss | s/epoch |")
    print("|" + "---|" * (2 * len(names) + 3))
    for label, metrics, seconds in rows:
        cells = " | ".join(
            f"{metrics.get(f'{n}_energy_mae', float('nan')):.3f} | "
            f"{metrics.get(f'{n}_energy_ewt', float('nan')):.3f}"
            for n in names
        )
        aux = metrics.get("train_aux_loss", float("nan"))
        print(f"| {label} | {cells} | {aux:.3f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()

"""The "use it with your own LightningModule" examples of the docs run as written and do what they say.

Each test takes the first ``python`` block after a heading of a doc, runs it with ``exec`` in a
temporary folder and checks what it leaves behind against a value computed another way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import xarray as xr
from torch import nn

from lightning_climate.analysis.scores import output_scores

DOCS = Path(__file__).parents[1] / "docs"


def snippet(doc: str, heading: str) -> str:
    """The first ``python`` code block after the markdown heading ``heading`` in ``docs/<doc>``."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, flags=re.MULTILINE)
    assert match is not None, f"docs/{doc} has no heading {heading!r}"
    block = re.search(r"^```python\n(.*?)^```", text[match.end() :], flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"docs/{doc}: no python block after {heading!r}"
    return block.group(1)


def check_difficulty_scores(ns: dict[str, Any], tmp_path: Path) -> None:
    """Eval scores are the final model's; training scores obey the definitions' identities."""
    model = ns["trainer"].lightning_module.eval()
    with torch.no_grad():
        final = output_scores(model(ns["x"]), ns["y"])
    with (
        xr.open_zarr(tmp_path / "eval.zarr") as after,
        xr.open_zarr(tmp_path / "training.zarr") as during,
    ):
        assert after["index"].values.tolist() == during["index"].values.tolist() == list(range(300))
        assert during["global_step"].values.tolist() == [10, 20]  # 300 examples, batch 32
        assert during.attrs["conventions"].startswith("training mode")
        assert set(after.data_vars) == {"loss", "accuracy", "confidence", "margin", "el2n"}
        for name in after.data_vars:
            last = torch.from_numpy(after[name].values[-1])
            assert torch.allclose(last, final[name], rtol=1e-5, atol=1e-7), name
        loss, p_y = during["loss"].values, during["confidence"].values
        assert abs(loss + torch.log(torch.from_numpy(p_y)).numpy()).max() < 1e-9
        assert ((during["margin"].values > 0) == (during["accuracy"].values == 1)).all()
        # scored with the weights before each step, not the end-of-epoch model
        assert abs(loss[-1] - after["loss"].values[-1]).max() > 1e-3


def check_constraint_monitor(ns: dict[str, Any], tmp_path: Path) -> None:
    """The logged violation is the block-mean error of the trained model on the validation data."""
    metrics, model = ns["trainer"].callback_metrics, ns["model"].eval()
    diffs = []
    with torch.no_grad():
        for batch in ns["val"]:
            diffs.append((nn.functional.avg_pool2d(model(batch["lr"]), 2) - batch["lr"]).abs())
    diff = torch.cat(diffs).double()
    assert float(diff.max()) > 1e-3  # an unconstrained model violates the constraint
    assert float(metrics["val_constraint_violation_mean"]) == pytest.approx(
        float(diff.mean()), rel=1e-5
    )
    assert float(metrics["val_constraint_violation_max"]) == pytest.approx(
        float(diff.max()), rel=1e-5
    )
    assert [h["epoch"] for h in ns["monitor"].history] == [0.0, 1.0, 2.0]


def check_downscaling_report(ns: dict[str, Any], tmp_path: Path) -> None:
    """One row per test set, the x2 MSE recomputed from the test loader, a PNG figure on disk."""
    report, model = ns["report"], ns["model"].eval()
    assert list(report.results) == ["x1", "x2", "x4"]
    assert report.results["x1"]["base_MSE"] == pytest.approx(
        0.0, abs=1e-12
    )  # bicubic at 1x is exact
    loader = ns["data"].test_dataloader()[ns["data"].dataloader_names("test").index("x2")]
    with torch.no_grad():
        errors = [(model(b["lr"], 2) - b["hr"]).pow(2).flatten() for b in loader]
    assert report.results["x2"]["MSE"] == pytest.approx(float(torch.cat(errors).mean()), rel=1e-4)
    assert report.format_table().count("\n") == 4  # header, rule, three test sets
    assert report.figure_path == Path("report/downscaling_report.png")
    assert (tmp_path / report.figure_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_functional_dimension(ns: dict[str, Any], tmp_path: Path) -> None:
    """The logged rank is the rank of the parameter Jacobian, built here with torch.func."""
    mlp = ns["trainer"].lightning_module.mlp.double()
    params = {k: v.detach() for k, v in mlp.named_parameters()}
    bound = sum(p.numel() for p in params.values()) - mlp[0].out_features
    points = torch.randn(410, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(mlp, p, (points,)))(params)
    rank = torch.linalg.matrix_rank(torch.cat([j.reshape(410, -1) for j in jac.values()], 1))
    metrics = ns["trainer"].callback_metrics
    assert float(metrics["fdim/bound"]) == bound == 33
    assert float(metrics["fdim/rank"]) == int(rank) <= bound
    assert float(metrics["fdim/gap"]) == bound - int(rank)
    assert [h["epoch"] for h in ns["fdim"].history] == [1.0, 3.0]


def check_exact_resume(ns: dict[str, Any], tmp_path: Path) -> None:
    """The example's own asserts compare the weights; its checkpoints load with weights_only=True."""
    names = {p.name for p in (tmp_path / "ckpts").iterdir()}
    assert {"epoch=0-step=4.ckpt", "epoch=2-step=12.ckpt"} <= names
    ckpt = torch.load(tmp_path / "ckpts" / "epoch=2-step=12.ckpt", weights_only=True)
    final = ns["straight"].state_dict()
    assert ckpt["state_dict"].keys() == final.keys()
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in final.items())


def check_own_classifier(ns: dict[str, Any], tmp_path: Path) -> None:
    """The module standardised with the training pixels of sklearn's digits and learned them."""
    from sklearn.datasets import load_digits

    train = ns["data"].split_indices()["train"]
    pixels = torch.as_tensor(load_digits().images[train], dtype=torch.float32) / 16.0
    model = ns["model"].eval()
    assert float(model.mean) == pytest.approx(float(pixels.mean()), rel=1e-5)
    assert float(model.std) == pytest.approx(float(pixels.std()), rel=1e-5)
    correct = []
    with torch.no_grad():
        for batch in ns["data"].test_dataloader():
            correct.append(model(batch["image"]).argmax(1) == batch["label"])
    accuracy = float(torch.cat(correct).float().mean())
    assert float(ns["trainer"].callback_metrics["test_acc"]) == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.9


def check_sam_callback(ns: dict[str, Any], tmp_path: Path) -> None:
    """SAM-ON wrapped the module's SGD; two passes per step, one BatchNorm update per step."""
    from lightning_climate.optim import SAM

    trainer, model = ns["trainer"], ns["model"]
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, SAM) and optimizer.norm_only
    assert isinstance(optimizer.base_optimizer, torch.optim.SGD)
    assert trainer.global_step == 2 * 17  # 1077 training digits in batches of 64
    assert int(model.net[1].num_batches_tracked) == trainer.global_step
    perturbed = {id(p) for p, _ in optimizer._perturbed()}
    assert perturbed == {id(p) for p in model.net[1].parameters()}


CASES: list[tuple[str, str, Callable[[dict[str, Any], Path], None]]] = [
    (
        "difficulty.md",
        "DifficultyScores: use it with your own LightningModule",
        check_difficulty_scores,
    ),
    (
        "constraints.md",
        "ConstraintMonitor: use it with your own LightningModule",
        check_constraint_monitor,
    ),
    (
        "navier_stokes.md",
        "DownscalingReport: use it with your own LightningModule",
        check_downscaling_report,
    ),
    (
        "difficulty.md",
        "FunctionalDimension: use it with your own LightningModule",
        check_functional_dimension,
    ),
    ("resume.md", "Use it with your own LightningModule", check_exact_resume),
    ("images.md", "Use it with your own LightningModule", check_own_classifier),
    (
        "sam.md",
        "SharpnessAwareMinimization: use it with your own LightningModule",
        check_sam_callback,
    ),
]


@pytest.mark.parametrize(("doc", "heading", "check"), CASES, ids=[c[0] for c in CASES])
def test_docs_snippet_runs(
    doc: str,
    heading: str,
    check: Callable[[dict[str, Any], Path], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = snippet(doc, heading)
    assert len(code.splitlines()) <= 45, f"the example in docs/{doc} grew past 45 lines"
    monkeypatch.chdir(tmp_path)  # the examples write checkpoints, data and figures to ./
    namespace: dict[str, Any] = {"__name__": f"docs_{Path(doc).stem}"}
    exec(compile(code, f"docs/{doc}", "exec"), namespace)  # noqa: S102 (our own docs)
    check(namespace, tmp_path)

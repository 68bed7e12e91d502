"""Every example config trains with exactly the optimizer its YAML describes.

jsonargparse keeps the init_args of a default class across a ``class_path`` change
(jsonargparse#460): with ``optimizer: torch.optim.AdamW`` as the tasks' default, a YAML choosing
``torch.optim.Adam`` silently trained with AdamW's ``weight_decay=0.01`` as L2 on Adam, which
decayed the SR-CNN examples' weights to 1e-16. The tasks now default to ``None``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import EXAMPLES
from torch import nn

from lightning_climate.main import main
from lightning_climate.tasks import DownscalingTask

CONFIGS = sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "paper").glob("*.yaml"))


def _class_defaults(class_path: str) -> dict[str, Any]:
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    return {
        k: p.default
        for k, p in inspect.signature(cls).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _optimizer_sections(resolved: dict, source: dict) -> list[tuple[dict, dict]]:
    """(resolved, as written) pairs of the model's optimizer and a SAM's base optimizer."""
    pairs = []
    res = resolved["model"]["init_args"].get("optimizer")
    src = (source.get("model", {}).get("init_args", {}) or {}).get("optimizer") or {}
    while isinstance(res, dict):
        pairs.append((res, src))
        res = res.get("init_args", {}).get("base_optimizer")
        src = (src.get("init_args", {}) or {}).get("base_optimizer") or {}
    return pairs


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_resolved_optimizer_is_what_the_yaml_says(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    for res, src in _optimizer_sections(resolved, source):
        written = src.get("init_args", {}) or {}
        defaults = _class_defaults(res["class_path"])
        for key, value in (res.get("init_args") or {}).items():
            if key == "base_optimizer":
                continue
            expected = written.get(key, defaults.get(key))
            if isinstance(expected, tuple):
                expected = list(expected)
            assert value == expected, (
                f"{config.name}: {res['class_path']}({key}={value!r}) but the YAML gives "
                f"{written.get(key, '(nothing)')!r} and the class default is {defaults.get(key)!r}"
            )


def test_task_without_optimizer_uses_adamw_with_its_defaults() -> None:
    task = DownscalingTask(nn.Conv2d(1, 1, 1))
    optimizer = task.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["weight_decay"] == 0.01 and optimizer.defaults["lr"] == 1e-3
    chosen = DownscalingTask(nn.Conv2d(1, 1, 1), optimizer=functools.partial(torch.optim.Adam))
    assert chosen.configure_optimizers().defaults["weight_decay"] == 0


def test_sam_base_optimizer_in_yaml_gets_its_own_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SAM's default base optimizer (SGD, weight_decay=0) must not leak into AdamW's 0.01."""
    config = tmp_path / "sam_adamw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "ClassificationTask",
                    "init_args": {
                        "model": {"class_path": "lightning_climate.models.ReLUMLP"},
                        "optimizer": {
                            "class_path": "lightning_climate.optim.SAM",
                            "init_args": {
                                "base_optimizer": {
                                    "class_path": "torch.optim.AdamW",
                                    "init_args": {"lr": 0.01},
                                }
                            },
                        },
                    },
                },
                "data": {"class_path": "DigitsDataModule"},
            }
        )
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    base = resolved["model"]["init_args"]["optimizer"]["init_args"]["base_optimizer"]
    assert base["class_path"] == "torch.optim.AdamW"
    assert base["init_args"]["weight_decay"] == 0.01 and base["init_args"]["lr"] == 0.01

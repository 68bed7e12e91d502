"""The "use it with your own LightningModule" example of docs/resume.md runs and holds."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "resume.md"


def test_docs_example_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "example.py").write_text(code)
    monkeypatch.chdir(tmp_path)  # the example writes its checkpoints to ./ckpts
    runpy.run_path(str(tmp_path / "example.py"))  # its asserts compare the weights bit for bit
    names = {p.name for p in (tmp_path / "ckpts").iterdir()}
    assert {"epoch=0-step=4.ckpt", "epoch=2-step=12.ckpt"} <= names

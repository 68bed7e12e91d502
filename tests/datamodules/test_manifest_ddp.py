"""``manifest`` under two-process DDP: a damaged file stops every rank before training."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

CONFIG = Path(__file__).parents[1] / "conf" / "navier_stokes_dfno.yaml"
DDP = ("--trainer.devices", "2", "--trainer.strategy", "ddp_spawn", "--trainer.max_steps", "2")


@pytest.mark.ddp
def test_a_damaged_file_stops_both_processes(
    tmp_path: Path, navier_stokes_file: Path, run_cli: Callable
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(navier_stokes_file, data / "ns.h5")
    sums = subprocess.run(
        ["sha256sum", "ns.h5"], cwd=data, check=True, capture_output=True, text=True
    ).stdout
    (data / "SHA256SUMS").write_text(sums)
    manifest = ("--data.init_args.manifest", str(data / "SHA256SUMS"))
    raw = bytearray((data / "ns.h5").read_bytes())
    raw[-100] ^= 0x08
    (data / "ns.h5").write_bytes(bytes(raw))
    with pytest.raises(Exception, match=r"DAMAGED  ns\.h5 \(sha256 expected"):
        run_cli("fit", CONFIG, *manifest, *DDP, root=data / "ns.h5", tiny=False)

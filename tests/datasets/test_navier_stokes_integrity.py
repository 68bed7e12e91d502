"""Navier-Stokes files against full disks and damaged bytes."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from lightning_climate.datasets import integrity
from lightning_climate.datasets.navier_stokes import NavierStokesTrajectories
from lightning_climate.datasets.navier_stokes_generate import (
    estimated_size,
    generate_navier_stokes,
)

SMALL = {"resolution": 8, "t_final": 0.2, "record_steps": 2, "dt": 0.05, "progress": False}


def test_estimated_size_bounds_the_written_file(tmp_path: Path) -> None:
    for n, steps in ((1, 2), (5, 4)):
        params = {**SMALL, "record_steps": steps}
        path = generate_navier_stokes(tmp_path / f"ns_{n}.h5", n, **params)
        estimate = estimated_size(n, SMALL["resolution"], steps)
        fields = 4 * n * (steps + 1) * SMALL["resolution"] ** 2
        assert fields < path.stat().st_size <= estimate <= fields + 2**20 + 1000


def test_full_disk_is_refused_before_solving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    seen = []

    def nearly_full(folder: str | Path) -> object:
        seen.append(Path(folder))
        usage = real(folder)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr(integrity.shutil, "disk_usage", nearly_full)
    solved = []
    monkeypatch.setattr(
        "lightning_climate.datasets.navier_stokes_generate.solve_vorticity",
        lambda *a, **k: solved.append(1),
    )
    target = tmp_path / "new" / "deeper" / "ns.h5"  # folders that do not exist yet
    needed = estimated_size(40, 64, 10)
    with pytest.raises(OSError, match=r"Not enough free space to write .*ns\.h5") as info:
        generate_navier_stokes(target, 40, resolution=64, record_steps=10, dt=0.01, progress=False)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert f"needs about {needed} bytes" in message and "has 1000 bytes (1000.0 B) free" in message
    assert "write elsewhere" in message and "num_trajectories" in message
    assert seen == [tmp_path] and not solved  # the nearest existing folder; nothing was solved
    assert list(tmp_path.iterdir()) == []


def test_enough_space_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needed = estimated_size(1, SMALL["resolution"], SMALL["record_steps"])
    real = shutil.disk_usage

    def just_enough(folder: str | Path) -> object:
        usage = real(folder)
        return type(usage)(usage.total, usage.total - needed, needed)

    monkeypatch.setattr(integrity.shutil, "disk_usage", just_enough)
    assert generate_navier_stokes(tmp_path / "ns.h5", 1, **SMALL).is_file()


def test_flipped_bytes_are_a_checksum_error_naming_the_file(tmp_path: Path) -> None:
    path = generate_navier_stokes(tmp_path / "ns.h5", 3, **SMALL)
    before = NavierStokesTrajectories(path)
    intact = [before[0], before[2]]
    with h5py.File(path, "r") as file:
        assert all(file[key].fletcher32 for key in ("vorticity", "w0", "t"))
        chunk = file["vorticity"].id.get_chunk_info(1)  # trajectory 1
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset + chunk.size // 3] ^= 0x01  # one low mantissa bit: a plausible value
    path.write_bytes(bytes(raw))
    data = NavierStokesTrajectories(path)
    assert torch.equal(data[0], intact[0]) and torch.equal(data[2], intact[1])
    with pytest.raises(
        ValueError, match=r"ns\.h5: reading `vorticity` failed.*fletcher32 checksum"
    ):
        data[1]

"""Checksum manifests as data providers publish them, and plausibility ranges."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_climate.datasets.integrity import (
    PLAUSIBLE_RANGES,
    check_plausible,
    main,
    read_manifest,
    verify,
)

FILES = {"inputs/BC_sum_2015.nc": 3000, "outputs/tas/tas_2015.nc": 5000, "README": 40}


@pytest.fixture
def download(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, size in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(size))
    return tmp_path


def coreutils(tool: str, root: Path, *flags: str) -> str:
    """The manifest the provider's own tool writes (relative paths, as published)."""
    return subprocess.run(
        [tool, *flags, *FILES], cwd=root, check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize(
    ("tool", "flags", "algorithm"),
    [("sha256sum", (), "sha256"), ("md5sum", ("-b",), "md5"), ("sha256sum", ("--tag",), "sha256")],
)
def test_manifests_of_coreutils_verify(
    download: Path, tool: str, flags: tuple, algorithm: str
) -> None:
    manifest = download / "SHA256SUMS"
    manifest.write_text("# published checksums\n\n" + coreutils(tool, download, *flags))
    assert [(alg, name) for alg, name, _ in read_manifest(manifest)] == [
        (algorithm, name) for name in FILES
    ]
    report = verify(manifest)
    assert report.passed and report.ok == list(FILES) and report.raise_if_failed() is report
    assert str(report).startswith(f"{manifest}: 3 of 3 files OK under {download}, 0 missing")


def test_missing_and_damaged_files_are_reported(
    download: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("manifests") / "checksums.sha256"
    elsewhere.write_text(coreutils("sha256sum", download))
    damaged = download / "outputs/tas/tas_2015.nc"
    raw = bytearray(damaged.read_bytes())
    raw[1234] ^= 0x10
    damaged.write_bytes(bytes(raw))
    (download / "README").unlink()
    sha256sum = subprocess.run(["sha256sum", damaged], check=True, capture_output=True, text=True)
    report = verify(elsewhere, root=download)
    assert not report.passed
    assert report.ok == ["inputs/BC_sum_2015.nc"] and report.missing == ["README"]
    ((name, alg, expected, got),) = report.mismatched
    assert (name, alg) == ("outputs/tas/tas_2015.nc", "sha256") and expected != got
    assert got == sha256sum.stdout.split()[0]  # what sha256sum says of the damaged file
    text = str(report)
    assert "1 of 3 files OK" in text and "1 missing, 1 damaged" in text
    assert "  MISSING  README" in text and f"  DAMAGED  {name} (sha256 expected {expected}" in text
    assert "Download the missing and damaged files again" in text
    with pytest.raises(ValueError, match="MISSING  README"):
        report.raise_if_failed()


def test_command_line(download: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = download / "MD5SUMS"
    manifest.write_text(coreutils("md5sum", download))
    assert main([str(manifest)]) == 0
    assert "3 of 3 files OK" in capsys.readouterr().out
    (download / "inputs/BC_sum_2015.nc").write_bytes(b"truncated")
    assert main([str(manifest), "--root", str(download)]) == 1
    assert "DAMAGED  inputs/BC_sum_2015.nc (md5" in capsys.readouterr().out


@pytest.mark.slow  # imports the whole package in a fresh interpreter
def test_python_dash_m(download: Path) -> None:
    manifest = download / "SHA256SUMS"
    manifest.write_text(coreutils("sha256sum", download))
    (download / "README").unlink()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "lightning_climate.datasets.integrity", str(manifest)],
        check=False, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 1 and "MISSING  README" in done.stdout
    assert "RuntimeWarning" not in done.stderr


def test_bad_manifest_line_names_its_number(tmp_path: Path) -> None:
    manifest = tmp_path / "SUMS"
    manifest.write_text(f"{'0' * 64}  ok.nc\nnot a checksum line\n")
    with pytest.raises(ValueError, match=r"SUMS, line 2: 'not a checksum line' is not a checksum"):
        read_manifest(manifest)


def test_plausibility_ranges() -> None:
    tas = np.full((12, 3, 4), 288.0, dtype=np.float32)
    check_plausible(tas, "tas", "f.nc")
    check_plausible(tas * 1e6, "unknown_variable", "f.nc")  # no range, no check
    tas[0, 0, 0] = 2.7e8  # an exponent bit flipped
    with pytest.raises(ValueError, match=r"f\.nc: 1 values of 'tas' .* 150\.\.350 K .*2\.7e\+08"):
        check_plausible(tas, "tas", "f.nc")
    assert PLAUSIBLE_RANGES["pr"].low <= 0 < PLAUSIBLE_RANGES["pr"].high
    with pytest.raises(ValueError, match="'SO2_sum' lie outside"):
        check_plausible(np.array([1e-10, -1e-6]), "SO2_sum", "so2.nc")
    check_plausible(np.array([1e-10, -1e-6]), "CO2_sum", "co2.nc")  # carbon removal is real

"""``verify(..., stamp=True)``: files found intact are not hashed_files again while they are unchanged."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lightning_climate.datasets import integrity
from lightning_climate.datasets.integrity import verify
from lightning_climate.datasets.integrity.stamp import read_stamp, stamp_path

FILES = {"a.nc": 3000, "sub/b.nc": 5000, "c.nc": 70}


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for name, size in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(rng.bytes(size))
    sums = subprocess.run(
        ["sha256sum", *FILES], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    path = tmp_path / "SHA256SUMS"
    path.write_text(sums)
    return path


def test_second_check_hashes_nothing(manifest: Path, hashed_files: list[str]) -> None:
    first = verify(manifest, stamp=True)
    assert first.passed and first.ok == list(FILES) and first.stamp == stamp_path(manifest)
    assert hashed_files == ["a.nc", "b.nc", "c.nc"]
    recorded = read_stamp(manifest)
    assert set(recorded) == {str((manifest.parent / n).absolute()) for n in FILES}
    assert recorded[str(manifest.parent / "c.nc")]["size"] == 70
    hashed_files.clear()
    second = verify(manifest, stamp=True)
    assert second.passed and second.ok == list(FILES) and hashed_files == []
    assert verify(manifest).passed and hashed_files == list(
        map(os.path.basename, FILES)
    )  # no stamp


def test_changed_files_and_lines_are_hashed_again(manifest: Path, hashed_files: list[str]) -> None:
    verify(manifest, stamp=True)
    damaged = manifest.parent / "sub/b.nc"
    raw = bytearray(damaged.read_bytes())
    raw[100] ^= 0x01  # same size; a later write changes the times
    stat = damaged.stat()
    damaged.write_bytes(bytes(raw))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime back
    hashed_files.clear()
    report = verify(manifest, stamp=True)
    assert hashed_files == ["b.nc"] and report.ok == ["a.nc", "c.nc"]
    assert [m[0] for m in report.mismatched] == ["sub/b.nc"]
    record = read_stamp(manifest)[str(damaged.absolute())]  # recorded with the digest found
    assert record["actual"] == report.mismatched[0][3] != record["digest"]
    hashed_files.clear()
    again = verify(manifest, stamp=True)  # reported again from the stamp alone
    assert hashed_files == [] and again.mismatched == report.mismatched
    # a changed manifest line (another digest for an unchanged file) is checked again too
    lines = manifest.read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    manifest.write_text("\n".join(lines) + "\n")
    hashed_files.clear()
    report = verify(manifest, stamp=True)
    assert hashed_files == ["a.nc"] and [m[0] for m in report.mismatched] == [
        "a.nc",
        "sub/b.nc",
    ]


@pytest.mark.parametrize("content", ["not json", '{"version": 99, "files": {}}', "[]"])
def test_unreadable_or_foreign_stamp_means_hash_again(
    manifest: Path, hashed_files: list[str], content: str
) -> None:
    stamp_path(manifest).write_text(content)
    assert verify(manifest, stamp=True).passed and len(hashed_files) == 3
    assert json.loads(stamp_path(manifest).read_text())["version"] == 2  # rewritten


def test_forged_stamp_entry_for_another_digest_is_not_trusted(
    manifest: Path, hashed_files: list[str]
) -> None:
    verify(manifest, stamp=True)
    data = json.loads(stamp_path(manifest).read_text())
    for state in data["files"].values():
        state["digest"] = state["actual"] = "f" * 64  # checked against another manifest
    stamp_path(manifest).write_text(json.dumps(data))
    hashed_files.clear()
    assert verify(manifest, stamp=True).passed and len(hashed_files) == 3


def test_command_line_stamp(manifest: Path, hashed_files: list[str]) -> None:
    assert integrity.main([str(manifest), "--stamp"]) == 0 and len(hashed_files) == 3
    assert integrity.main([str(manifest), "--stamp"]) == 0 and len(hashed_files) == 3  # none again
    (manifest.parent / "c.nc").unlink()
    assert integrity.main([str(manifest), "--stamp"]) == 1


def test_a_manifest_listing_itself_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.nc").write_bytes(b"0123")
    for _ in range(2):  # the second run lists the first manifest
        subprocess.run("sha256sum * > SHA256SUMS", shell=True, cwd=tmp_path, check=True)
    with pytest.raises(
        ValueError, match=r"SHA256SUMS lists SHA256SUMS, i\.e\. itself or its stamp"
    ):
        verify(tmp_path / "SHA256SUMS")
    (tmp_path / "SHA256SUMS.verified").write_text("{}")
    subprocess.run(
        "sha256sum data.nc *.verified > SHA256SUMS", shell=True, cwd=tmp_path, check=True
    )
    with pytest.raises(ValueError, match=r"lists SHA256SUMS\.verified, i\.e\. itself"):
        verify(tmp_path / "SHA256SUMS", stamp=True)

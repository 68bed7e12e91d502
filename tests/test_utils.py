import os
import stat
from pathlib import Path

import pytest

from lightning_climate.utils import atomic_path, lazy_import


def test_atomic_path_writes_with_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_path_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_lazy_import_names_the_package() -> None:
    assert lazy_import("math").sqrt(4) == 2
    with pytest.raises(ModuleNotFoundError, match=r"pip install no_such_module_xyz"):
        lazy_import("no_such_module_xyz")

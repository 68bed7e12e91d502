"""Caps on what one OC20 entry may allocate, and damaged or crafted entries."""

from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
import zlib
from collections import OrderedDict
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from conftest import OC20_SAMPLE
from torch_geometric.data import Data

from lightning_climate.datasets import OC20LMDBDataset, write_oc20_lmdb
from lightning_climate.datasets.oc20 import read_npz_batch
from lightning_climate.datasets.oc20_npz import DamagedEntryError, EntryTooLargeError

MB = 2**20


@pytest.fixture(scope="module")
def entry() -> dict[str, np.ndarray]:
    return read_npz_batch(OC20_SAMPLE)[2]  # 24 atoms, 386 edges


def _write_values(path: Path, values: list[bytes]) -> None:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 28, lock=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode(), value)
    env.close()


def _npy(descr: str, shape: tuple[int, ...], data: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def _zip(members: dict[str, tuple[bytes, bytes, int]]) -> bytes:
    """A ZIP archive of name -> (stored bytes, uncompressed bytes for the CRC, declared size)."""
    out, directory = io.BytesIO(), io.BytesIO()
    for name, (stored, plain, size) in members.items():
        method = 0 if stored is plain else 8
        crc, offset = zlib.crc32(plain), out.tell()
        fields = (20, 0, method, 0, 0, crc, len(stored), size, len(name), 0)
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name.encode() + stored)
        directory.write(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, offset)
            + name.encode()
        )
    start, size = out.tell(), directory.tell()
    count = len(members)
    tail = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, start, 0)
    return out.getvalue() + directory.getvalue() + tail


def _entry_npz(entry: dict[str, np.ndarray], **replace: tuple[bytes, bytes, int]) -> bytes:
    members = {}
    for key, value in entry.items():
        buffer = io.BytesIO()
        np.save(buffer, value)
        plain = buffer.getvalue()
        members[f"{key}.npy"] = (plain, plain, len(plain))
    members.update({f"{k}.npy": v for k, v in replace.items()})
    return _zip(members)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """96 MB of zeros deflated into about 100 kB."""
    compressor, chunk = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), bytes(MB)
    parts = [compressor.compress(chunk) for _ in range(96)]
    return b"".join(parts) + compressor.flush()


def _peak_mb(function, error: type[Exception]) -> float:
    """Peak traced allocation (MB) of ``function``, which must raise ``error``."""
    tracemalloc.start()
    try:
        with pytest.raises(error):
            function()
        return tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def test_our_writer_is_read_back_by_the_handmade_archive_reader(tmp_path: Path, entry) -> None:
    # the crafted archives below differ from real ones only where the test says
    _write_values(tmp_path / "ok.lmdb", [_entry_npz(entry)])
    sample = OC20LMDBDataset(tmp_path / "ok.lmdb")[0]
    np.testing.assert_array_equal(sample.pos.numpy(), entry["pos"])


def test_header_declaring_a_huge_shape_allocates_nothing(tmp_path: Path, entry) -> None:
    forged = _npy("<f8", (10**9, 3), entry["pos"].astype(np.float64).tobytes())
    _write_values(tmp_path / "huge.lmdb", [_entry_npz(entry, pos=(forged, forged, len(forged)))])
    dataset = OC20LMDBDataset(tmp_path / "huge.lmdb")
    with pytest.raises(
        DamagedEntryError, match=r"entry 0 of .*huge.lmdb .*shape \(1000000000, 3\)"
    ):
        dataset[0]
    assert _peak_mb(lambda: dataset[0], DamagedEntryError) < 5


def test_zip_bomb_is_refused_from_its_declared_size(tmp_path: Path, entry, bomb) -> None:
    assert len(bomb) < MB
    plain = _npy("<f8", (12 * MB,), b"")  # CRC of a prefix: the size check comes first
    _write_values(
        tmp_path / "bomb.lmdb", [_entry_npz(entry, pos=(bomb, plain, 96 * MB + len(plain)))]
    )
    dataset = OC20LMDBDataset(tmp_path / "bomb.lmdb")
    with pytest.raises(EntryTooLargeError, match=r"more than 67108864 bytes .*max_entry_bytes"):
        dataset[0]
    assert _peak_mb(lambda: dataset[0], EntryTooLargeError) < 5


def test_zip_bomb_lying_about_its_size_stops_inflating(tmp_path: Path, entry, bomb) -> None:
    _write_values(tmp_path / "liar.lmdb", [_entry_npz(entry, pos=(bomb, b"", 1000))])
    dataset = OC20LMDBDataset(tmp_path / "liar.lmdb")
    with pytest.raises(DamagedEntryError, match="inflates to more than its declared size"):
        dataset[0]
    assert _peak_mb(lambda: dataset[0], DamagedEntryError) < 5


def test_flipped_byte_fails_the_checksum(tmp_path: Path, entry) -> None:
    payload = bytearray(_entry_npz(entry))
    where = payload.find(entry["pos"].tobytes()) + 17
    payload[where] ^= 0x20
    _write_values(tmp_path / "flip.lmdb", [bytes(payload)])
    with pytest.raises(DamagedEntryError, match=r"pos.npy fails its CRC-32 check"):
        OC20LMDBDataset(tmp_path / "flip.lmdb")[0]


class _HugeView:
    """Pickles as a tensor of 10**9 elements viewing a one-element storage with stride 0."""

    def __reduce__(self):
        args = (torch.zeros(1)._typed_storage(), 0, (10**9,), (0,), False, OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


def test_pickled_tensor_larger_than_its_storage_is_refused(tmp_path: Path, entry) -> None:
    data = Data(**{k: torch.as_tensor(np.asarray(v)) for k, v in entry.items()})
    data.forces = _HugeView()
    payload = pickle.dumps(data, protocol=-1)
    assert len(payload) < MB
    _write_values(tmp_path / "view.lmdb", [payload])
    dataset = OC20LMDBDataset(tmp_path / "view.lmdb", allow_pickle=True)
    with pytest.raises(
        RuntimeError, match=r"shape \(1000000000,\) is declared over a storage of 1"
    ):
        dataset[0]
    assert _peak_mb(lambda: dataset[0], RuntimeError) < 5


def test_atom_and_size_caps_name_their_override(tmp_path: Path, entry) -> None:
    write_oc20_lmdb(tmp_path / "data.lmdb", [entry])
    with pytest.raises(EntryTooLargeError, match=r"entry 0 of .* 24 atoms, more than max_atoms=23"):
        OC20LMDBDataset(tmp_path / "data.lmdb", max_atoms=23)[0]
    assert OC20LMDBDataset(tmp_path / "data.lmdb", max_atoms=24)[0].natoms.item() == 24
    with pytest.raises(EntryTooLargeError, match=r"bytes, more than max_entry_bytes=1000;"):
        OC20LMDBDataset(tmp_path / "data.lmdb", max_entry_bytes=1000)[0]
    with pytest.raises(ValueError, match="max_atoms must be a positive integer"):
        OC20LMDBDataset(tmp_path / "data.lmdb", max_atoms=0)


@pytest.mark.parametrize("layout", ["npz", "pickle"])
def test_random_flipped_bytes_fail_naming_the_entry_or_read_the_same(
    tmp_path: Path, entry, layout: str
) -> None:
    write_oc20_lmdb(tmp_path / "good.lmdb", [entry], format=layout)
    env = lmdb.open(str(tmp_path / "good.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        payload = txn.get(b"0")
    env.close()
    reference = OC20LMDBDataset(tmp_path / "good.lmdb", allow_pickle=True)[0]
    rng = np.random.default_rng(0)
    failures = 0
    for trial, where in enumerate(rng.integers(0, len(payload), size=40)):
        damaged = bytearray(payload)
        damaged[where] ^= 1 << int(rng.integers(0, 8))
        _write_values(tmp_path / f"flip{trial}.lmdb", [bytes(damaged)])
        try:
            sample = OC20LMDBDataset(tmp_path / f"flip{trial}.lmdb", allow_pickle=True)[0]
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            assert f"entry 0 of {tmp_path / f'flip{trial}.lmdb'}" in str(err)
            failures += 1
            continue
        if layout == "npz":  # bytes the CRC does not cover are ZIP metadata we do not use
            for key in ("pos", "edge_index", "force", "distances", "y_relaxed"):
                assert torch.equal(sample[key], reference[key])
    assert failures >= (30 if layout == "npz" else 1)

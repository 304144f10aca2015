"""The payload's parts: whatever pieces the sealed stream arrives in, the parts hold exactly its bytes, in
order, none larger than the part size, each volume filled before the next, and the hashes are the files'
— with O_DIRECT (block-aligned writes, unaligned tail) and without."""

from __future__ import annotations

import hashlib
import itertools
import mmap
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.volumes import WRITE_BUFFER, Layout, PartWriter, file_sha256
from tests.media.conftest import fail_disk_writes_after


def _write(root: Path, pieces: list[bytes], *, part_size: int, room: int | None, direct: bool) -> PartWriter:
    w = PartWriter(
        Layout(root, multi=room is not None),
        "bundles.ndjson",
        part_size=part_size,
        volume_room=room,
        direct=direct,
    )
    for p in pieces:
        w.write(p)
    w.close()
    return w


@pytest.mark.parametrize("direct", [True, False])
@settings(max_examples=12, deadline=None)
@given(
    size=st.integers(1, 150_000),
    cuts=st.lists(st.integers(1, 150_000), max_size=6),
    part_size=st.sampled_from([12_288, 30_000, 1 << 20]),
    room=st.sampled_from([None, 50_000, 100_000]),
)
def test_parts_hold_the_stream_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    direct: bool,
    size: int,
    cuts: list[int],
    part_size: int,
    room: int | None,
) -> None:
    root = tmp_path_factory.mktemp("parts")
    data = random.Random(size).randbytes(size)
    points = sorted({0, size, *(c for c in cuts if c < size)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    w = _write(root, pieces, part_size=part_size, room=room, direct=direct)
    layout = Layout(root, multi=room is not None)
    joined = b""
    for i, part in enumerate(w.parts):
        path = layout.root(part.volume) / part.path
        body = path.read_bytes()
        assert part.index == i and len(body) == part.size <= part_size
        assert part.sha256 == hashlib.sha256(body).hexdigest() == file_sha256(path)[1]
        joined += body
    assert joined == data
    volumes = [p.volume for p in w.parts]
    assert volumes == sorted(volumes)  # filled in order
    if room is not None:
        for v in set(volumes):
            assert sum(p.size for p in w.parts if p.volume == v) <= room
    assert not list(root.rglob("*.tmp"))


def test_an_aborted_part_leaves_nothing(tmp_path: Path) -> None:
    w = PartWriter(Layout(tmp_path, multi=False), "x", part_size=1 << 20, volume_room=None)
    w.write(b"a" * 5000)
    w.abort()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_failed_write_on_the_io_thread_surfaces_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = fail_disk_writes_after(monkeypatch, 1)
    w = PartWriter(Layout(tmp_path, multi=False), "x", part_size=1 << 30, volume_room=None)
    with pytest.raises(OSError, match="No space"):
        for _ in range(8):
            w.write(bytes(WRITE_BUFFER))
        w.close()
    w.abort()
    assert attempts() >= 2
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("size", [0, 1, 8192, 8193, 50_001])
def test_file_sha256_reads_ahead_and_still_hashes_the_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    data = random.Random(size).randbytes(size)
    path.write_bytes(data)
    seen: list[int] = []
    assert file_sha256(path, bytearray(4096), seen.append) == (size, hashlib.sha256(data).hexdigest())
    assert sum(seen) == size and all(0 < n <= 4096 for n in seen)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("part_size", [12_288, 30_000, 1 << 20])
def test_lent_pieces_are_written_from_where_they_are_and_exactly(
    tmp_path: Path, direct: bool, part_size: int
) -> None:
    """Pieces lent page-aligned (as the disk writer seals its segments) reach the parts exactly: whole
    blocks are written from the lender's memory, so once the writes returned are done, reusing that
    memory changes nothing; the rest (unaligned sizes, a part that ends mid-piece) is copied."""
    rnd = random.Random(part_size)
    slot = mmap.mmap(-1, 4 * 4096)
    w = PartWriter(Layout(tmp_path, multi=False), "x", part_size=part_size, volume_room=None, direct=direct)
    sent, lent = b"", 0
    for size in [8192, 4096, 12_288, 100, 8192, 5000, 16_384] * 3:
        piece = rnd.randbytes(size)
        slot[:size] = piece
        writes = w.write(memoryview(slot)[:size], aligned=True)
        for pending in writes:
            pending.result()
        lent += len(writes)
        slot[:size] = bytes(size)  # the slot is reused: the part must not see it
        sent += piece
    w.close()
    bodies = [(tmp_path / p.path).read_bytes() for p in w.parts]
    assert b"".join(bodies) == sent
    assert lent > 0
    for part, body in zip(w.parts, bodies, strict=True):
        assert len(body) == part.size <= part_size
        assert part.sha256 == hashlib.sha256(body).hexdigest()
    assert all(p.size % 4096 == 0 for p in w.parts[:-1])  # parts end on blocks: the next starts aligned

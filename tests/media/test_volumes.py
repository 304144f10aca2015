"""The payload's parts: whatever pieces the sealed stream arrives in, the parts hold exactly its bytes, in
order, none larger than the part size, each volume filled before the next, and the hashes are the files'
— with O_DIRECT (block-aligned writes, unaligned tail) and without."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.volumes import Layout, PartWriter, file_sha256


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

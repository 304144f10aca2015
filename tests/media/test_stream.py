"""The segmented AEAD stream (media/stream.py): any plaintext round-trips, whatever the pieces it is fed
in; any change, truncation, extension, reorder or swap of the ciphertext fails; so do another key or
another logical name."""

from __future__ import annotations

import io
import itertools
import os
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from media.pipeline import Compressor, SealPipeline
from media.stream import (
    TAG_BYTES,
    SegmentSealer,
    StreamDecryptor,
    StreamEncryptor,
    StreamError,
    ciphertext_size,
    decrypt_chunks,
    encrypt_all,
)

KEY = bytes(range(32))
NAME = "bundles.ndjson"
SEG = 64

plaintexts = st.binary(min_size=0, max_size=6 * SEG + 7)


def _decrypt(sealed: bytes, *, key: bytes = KEY, name: str = NAME, pieces: int = 1) -> bytes:
    step = max(1, -(-len(sealed) // pieces))
    chunks = [sealed[i : i + step] for i in range(0, len(sealed), step)]
    return b"".join(decrypt_chunks(key, name, chunks, SEG))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=150, deadline=None)
@given(plaintexts, st.lists(st.integers(0, 6 * SEG + 7), max_size=8), st.integers(1, 9))
def test_any_plaintext_round_trips_whatever_the_pieces(data: bytes, cuts: list[int], pieces: int) -> None:
    enc = StreamEncryptor(KEY, NAME, SEG)
    sealed = b"".join(enc.update(p) for p in _split(data, cuts)) + enc.finish()
    assert len(sealed) == ciphertext_size(len(data), SEG)
    assert sealed == encrypt_all(KEY, NAME, data, SEG)  # cutting is deterministic, nonces are not random
    assert _decrypt(sealed, pieces=pieces) == data


@settings(max_examples=150, deadline=None)
@given(plaintexts, st.data())
def test_any_single_byte_change_fails(data: bytes, draw: st.DataObject) -> None:
    sealed = bytearray(encrypt_all(KEY, NAME, data, SEG))
    at = draw.draw(st.integers(0, len(sealed) - 1))
    sealed[at] ^= draw.draw(st.integers(1, 255))
    with pytest.raises(StreamError):
        _decrypt(bytes(sealed))


@settings(max_examples=150, deadline=None)
@given(plaintexts, st.data())
def test_any_truncation_fails(data: bytes, draw: st.DataObject) -> None:
    sealed = encrypt_all(KEY, NAME, data, SEG)
    keep = draw.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(StreamError):
        _decrypt(sealed[:keep])


@settings(max_examples=100, deadline=None)
@given(plaintexts, st.binary(min_size=1, max_size=2 * SEG))
def test_anything_appended_fails(data: bytes, extra: bytes) -> None:
    sealed = encrypt_all(KEY, NAME, data, SEG)
    with pytest.raises(StreamError):
        _decrypt(sealed + extra)
    with pytest.raises(StreamError):  # even a whole valid stream appended
        _decrypt(sealed + encrypt_all(KEY, NAME, data, SEG))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(SEG + 1, 6 * SEG + 7),
    st.lists(st.integers(1, 6 * SEG + 6 * TAG_BYTES), min_size=1, max_size=5),
    st.data(),
)
def test_parts_put_back_in_another_order_fail(size: int, cuts: list[int], draw: st.DataObject) -> None:
    sealed = encrypt_all(KEY, NAME, random.Random(size).randbytes(size), SEG)
    parts = _split(sealed, cuts)
    if len(parts) < 2:
        parts = _split(sealed, [len(sealed) // 2])
    order = draw.draw(st.permutations(range(len(parts))).filter(lambda p: list(p) != sorted(p)))
    shuffled = b"".join(parts[i] for i in order)
    if shuffled == sealed:  # equal parts swapped: the same bytes, nothing to detect
        return
    with pytest.raises(StreamError):
        _decrypt(shuffled)


def test_two_whole_segments_swapped_fail() -> None:
    data = os.urandom(3 * SEG + 5)
    sealed = encrypt_all(KEY, NAME, data, SEG)
    full = SEG + TAG_BYTES
    a, b, rest = sealed[:full], sealed[full : 2 * full], sealed[2 * full :]
    with pytest.raises(StreamError, match="segment 0"):
        _decrypt(b + a + rest)


def test_dropping_the_last_segment_at_a_boundary_fails() -> None:
    data = os.urandom(2 * SEG)  # two full segments, the second flagged last
    sealed = encrypt_all(KEY, NAME, data, SEG)
    with pytest.raises(StreamError, match="segment 0"):
        _decrypt(sealed[: SEG + TAG_BYTES])  # the first segment was sealed as not-last


def test_another_key_or_logical_name_fails() -> None:
    sealed = encrypt_all(KEY, NAME, b"payload", SEG)
    with pytest.raises(StreamError):
        _decrypt(sealed, key=bytes(32))
    with pytest.raises(StreamError):
        _decrypt(sealed, name="other.ndjson")


def test_an_empty_plaintext_is_one_authenticated_segment() -> None:
    sealed = encrypt_all(KEY, NAME, b"", SEG)
    assert len(sealed) == TAG_BYTES
    assert _decrypt(sealed) == b""
    with pytest.raises(StreamError, match="truncated"):
        _decrypt(b"")


def test_misuse_is_refused() -> None:
    sealer = SegmentSealer(KEY, NAME, SEG)
    with pytest.raises(ValueError):
        sealer.seal(0, b"short", last=False)
    with pytest.raises(ValueError):
        SegmentSealer(b"short key", NAME, SEG)
    with pytest.raises(ValueError):
        SegmentSealer(KEY, NAME, 8)
    enc = StreamEncryptor(KEY, NAME, SEG)
    enc.finish()
    with pytest.raises(ValueError):
        enc.update(b"more")
    dec = StreamDecryptor(KEY, NAME, SEG)
    dec.update(encrypt_all(KEY, NAME, b"x", SEG))
    dec.finish()
    with pytest.raises(StreamError):
        dec.update(b"after the end")


@settings(max_examples=60, deadline=None)
@given(plaintexts, st.lists(st.integers(0, 6 * SEG + 7), max_size=8), st.integers(2, 4))
def test_the_writers_threaded_pipeline_seals_exactly_as_the_stream_encryptor(
    data: bytes, cuts: list[int], depth: int
) -> None:
    out: list[bytes] = []
    pipeline = SealPipeline(
        SegmentSealer(KEY, NAME, SEG), lambda b: out.append(bytes(b)), plain=depth, sealed=6 - depth
    )
    for piece in _split(data, cuts):
        pipeline.write(piece)
    assert pipeline.finish() == len(data)
    assert b"".join(out) == encrypt_all(KEY, NAME, data, SEG)
    assert [len(c) for c in out[:-1]] == [SEG + TAG_BYTES] * (len(out) - 1)


BLOCK = 48  # compressed blocks smaller than a segment, and larger


def _frames(data: bytes) -> list[bytes]:
    """The zstd frames of a compressed stream, each checked to hold at most :data:`BLOCK` bytes."""
    frames = []
    while data:
        size = zstandard.frame_content_size(data)
        assert 0 < size <= BLOCK
        dctx = zstandard.ZstdDecompressor().decompressobj()
        out = dctx.decompress(data)
        assert len(out) == size
        rest = dctx.unused_data
        frames.append(data[: len(data) - len(rest)])
        data = rest
    return frames


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(plaintexts, st.lists(st.sampled_from([b"{}", b"\n", b"abc", b"x" * 30])).map(b"".join)),
    st.lists(st.integers(0, 6 * SEG + 7), max_size=8),
    st.integers(1, 3),
)
def test_the_compressor_makes_one_frame_a_block_in_order_whatever_the_pieces(
    data: bytes, cuts: list[int], threads: int
) -> None:
    """Blocks compressed by several threads at once still reach the seal pipeline in order: the sealed
    stream decrypts to zstd frames, one per block (none for nothing), that decompress to the input."""
    out: list[bytes] = []
    seal = SealPipeline(SegmentSealer(KEY, NAME, SEG), lambda b: out.append(bytes(b)), plain=2, sealed=3)
    pipeline = Compressor(seal, block=BLOCK, threads=threads)
    for piece in _split(data, cuts):
        pipeline.write(piece)
    assert pipeline.finish() == len(data)
    compressed = _decrypt(b"".join(out))
    assert len(compressed) == seal.size
    frames = _frames(compressed)
    assert len(frames) == -(-len(data) // BLOCK)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed), read_across_frames=True)
    assert reader.read() == data


def _compressed(feed: list[tuple[bool, bytes]], threads: int = 2) -> bytes:
    """The compressed stream of ``feed``: ``(True, bundle)`` lent as a line, ``(False, data)`` written."""
    out: list[bytes] = []
    seal = SealPipeline(SegmentSealer(KEY, NAME, SEG), lambda b: out.append(bytes(b)), plain=2, sealed=3)
    pipeline = Compressor(seal, block=BLOCK, threads=threads)
    for as_line, data in feed:
        if as_line:
            pipeline.line(data)
        else:
            pipeline.write(data)
    assert pipeline.finish() == sum(len(d) + as_line for as_line, d in feed)
    return _decrypt(b"".join(out))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=3 * BLOCK)), max_size=12), st.integers(1, 3))
def test_bundles_lent_line_by_line_compress_as_the_same_bytes_written(
    feed: list[tuple[bool, bytes]], threads: int
) -> None:
    """Lines lent to the compressor (blocks ending inside a line or its newline, lines after written
    bytes and before them) make the very frames of the same bytes written in one piece."""
    plain = b"".join(d + b"\n" if as_line else d for as_line, d in feed)
    lent = _compressed(feed, threads)
    assert lent == _compressed([(False, plain)], 1)
    assert len(_frames(lent)) == -(-len(plain) // BLOCK)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(lent), read_across_frames=True)
    assert reader.read() == plain


def test_a_failing_sink_stops_the_compressor_with_its_error() -> None:
    def full_disk(_: memoryview) -> None:
        raise OSError(28, "No space left on device")

    seal = SealPipeline(SegmentSealer(KEY, NAME, SEG), full_disk, plain=2, sealed=2)
    pipeline = Compressor(seal, block=BLOCK, threads=2)
    noise = random.Random(3)
    with pytest.raises(OSError, match="No space"):
        for _ in range(50):
            pipeline.write(noise.randbytes(BLOCK))
        pipeline.finish()
    pipeline.abort()


def test_a_sealed_buffer_waits_for_the_writes_still_reading_it(tmp_path: Path) -> None:
    """The sink may lend each segment's ciphertext to writes that finish later (as the parts writer
    does): the pipeline seals into that buffer again only once they are done.  Read from a file, the
    plaintext goes straight into the segment buffers, in pieces of at most a segment."""
    data = random.Random(5).randbytes(20 * SEG + 3)
    (tmp_path / "plain").write_bytes(data)
    out: list[bytes] = []
    with ThreadPoolExecutor(1) as disk:

        def later(view: memoryview) -> list[Future[None]]:
            def write() -> None:
                time.sleep(0.001)
                out.append(bytes(view))

            return [disk.submit(write)]

        pipeline = SealPipeline(SegmentSealer(KEY, NAME, SEG), later, plain=2, sealed=3)
        with open(tmp_path / "plain", "rb", buffering=0) as f:
            pieces = [end - start for _, start, end in pipeline.read(f)]
        assert pipeline.finish() == len(data)
    assert b"".join(out) == encrypt_all(KEY, NAME, data, SEG)
    assert sum(pieces) == len(data) and max(pieces) <= SEG


def test_a_failing_sink_stops_the_pipeline_with_its_error() -> None:
    def full_disk(_: memoryview) -> None:
        raise OSError(28, "No space left on device")

    pipeline = SealPipeline(SegmentSealer(KEY, NAME, SEG), full_disk, plain=2, sealed=2)
    with pytest.raises(OSError, match="No space"):
        for _ in range(10):
            pipeline.write(b"x" * SEG)
        pipeline.finish()
    pipeline.abort()


def test_seal_into_is_seal() -> None:
    sealer = SegmentSealer(KEY, NAME, SEG)
    out = bytearray(SEG + TAG_BYTES)
    sealer.seal_into(3, b"y" * SEG, out, False)
    assert bytes(out) == sealer.seal(3, b"y" * SEG, False)
    with pytest.raises(ValueError):
        sealer.seal_into(3, b"y" * SEG, bytearray(SEG), False)
    with pytest.raises(ValueError):
        sealer.seal_into(3, b"y", bytearray(1 + TAG_BYTES), False)

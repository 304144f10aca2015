"""The disk writer on its own (no restore folder): bundles fed one by one or as NDJSON pieces cut anywhere
make the same sealed payload; the payload decrypts to exactly the bundles; and with no plaintext hash in
the manifest, ``media open`` still refuses a payload changed after verification (the AEAD stream does)."""

from __future__ import annotations

import copy
import io
import itertools
import mmap
import os
import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from hakobune.errors import ConfigError
from hakobune.keys import RecipientPrivateKey, SigningKey
from media.crypto import new_disk_key, subkey, wrap_to_passphrase, wrap_to_recipient
from media.manifest import MANIFEST_NAME, PAYLOAD_NAME, Manifest, TrustAnchor, canonical, parse_manifest
from media.open import _decrypt
from media.stream import StreamError, ciphertext_size, decrypt_chunks, encrypt_all
from media.verify import verify_disk
from media.volumes import MIN_VOLUME_SIZE
from media.write import DiskInfo, DiskWriter, new_disk_id
from tests.media.conftest import TEST_ITERATIONS, fail_disk_writes_after

SEGMENT = 256
PART = 3000
KEY = SigningKey.generate()


def _info(disk_key: bytes) -> DiskInfo:
    disk_id = new_disk_id()
    recipient = RecipientPrivateKey.generate().public
    return DiskInfo(
        disk_id=disk_id,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        hospital="9990000002",
        order_id="RO-TEST",
        order_sha256="0" * 64,
        recipient_id="9990000099",
        recipient_name="test",
        recipient_key=recipient,
        recipient_wrap=wrap_to_recipient(disk_key, disk_id, recipient),
        passphrase_wrap=wrap_to_passphrase(disk_key, disk_id, "ABCD-EFGH", TEST_ITERATIONS),
    )


def _bundles(n: int) -> list[bytes]:
    """Bundles padded with random hex: compressed to about half, so that a few make many segments."""
    rnd = random.Random(n)
    return [
        b'{"resourceType":"Bundle","id":"%d","pad":"%s"}'
        % (i, rnd.randbytes(rnd.randint(0, 450)).hex().encode())
        for i in range(n)
    ]


def _writer(out: Path, disk_key: bytes, info: DiskInfo) -> DiskWriter:
    return DiskWriter(out, info, disk_key, segment_size=SEGMENT, part_size=PART)


def _payload(out: Path, manifest: Manifest, disk_key: bytes) -> bytes:
    (lf,) = manifest.logical_files
    sealed = [(out / p.path).read_bytes() for p in lf.parts]
    assert sum(map(len, sealed)) == ciphertext_size(lf.compressed_size, SEGMENT)
    key = subkey(disk_key, manifest.disk_id, f"file {PAYLOAD_NAME}")
    frames = b"".join(decrypt_chunks(key, PAYLOAD_NAME, sealed, SEGMENT))
    assert len(frames) == lf.compressed_size
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True).read()
    assert len(plain) == lf.size
    return plain


def _manifest(out: Path) -> Manifest:
    return parse_manifest((out / MANIFEST_NAME).read_bytes(), str(out))


@pytest.mark.parametrize("count", [0, 1, 40])
def test_ndjson_pieces_and_single_bundles_make_the_same_disk_payload(tmp_path: Path, count: int) -> None:
    bundles = _bundles(count)
    ndjson = b"".join(b + b"\n" for b in bundles)
    disk_key = new_disk_key()
    info = _info(disk_key)
    one = _writer(tmp_path / "one", disk_key, info)
    for i, b in enumerate(bundles):
        one.add(str(i), b)
    one.finish(KEY)
    many = _writer(tmp_path / "many", disk_key, info)
    rnd = random.Random(count)
    cuts = sorted({0, len(ndjson), *(rnd.randrange(len(ndjson) + 1) for _ in range(12))})
    for start, end in itertools.pairwise(cuts):
        piece = ndjson[start:end]
        many.add_ndjson(bytearray(piece) if start % 2 else piece)
    result = many.finish(KEY)
    mapped = _writer(tmp_path / "mapped", disk_key, info)
    (tmp_path / "bundles.ndjson").write_bytes(ndjson)
    with open(tmp_path / "bundles.ndjson", "rb") as f:
        step = mmap.ALLOCATIONGRANULARITY
        for at in range(0, len(ndjson), step):
            with mmap.mmap(f.fileno(), min(step, len(ndjson) - at), access=mmap.ACCESS_READ, offset=at) as m:
                mapped.add_ndjson(m)
    mapped.finish(KEY)
    read = _writer(tmp_path / "read", disk_key, info)
    with open(tmp_path / "bundles.ndjson", "rb", buffering=0) as f:
        read.add_ndjson_file(f)
    read.finish(KEY)
    m1, m2, m3, m4 = (_manifest(tmp_path / name) for name in ("one", "many", "mapped", "read"))
    assert m1.patients == m2.patients == m3.patients == m4.patients == result.patients == count
    assert m1.doc["files"] == m2.doc["files"] == m3.doc["files"] == m4.doc["files"]  # same parts, hashes
    assert _payload(tmp_path / "many", m2, disk_key) == ndjson
    assert "sha256" not in m2.doc["files"][0]  # the plaintext is not hashed: the stream authenticates it


def test_add_ndjson_needs_whole_lines_and_no_viewer(tmp_path: Path) -> None:
    disk_key = new_disk_key()
    w = _writer(tmp_path / "open-line", disk_key, _info(disk_key))
    w.add_ndjson(b'{"a":1}\n{"b":')
    with pytest.raises(ValueError, match="newline"):
        w.finish(KEY)
    assert not (tmp_path / "open-line").exists()

    class NoViewer:
        def add(self, patient_id: str, bundle: bytes) -> None: ...
        def close(self) -> list[str]:
            return []

        def abort(self) -> None: ...

    w = DiskWriter(tmp_path / "viewer", _info(disk_key), disk_key, viewer=lambda root: NoViewer())
    with pytest.raises(ConfigError, match="one by one"):
        w.add_ndjson(b"{}\n")
    w.abort()


def test_a_failed_disk_write_reaches_the_caller_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refusing a write on the I/O thread (segments of 4 KiB sealed: written from where they
    were sealed, in batches) stops the writer with that error, and abort leaves nothing."""
    attempts = fail_disk_writes_after(monkeypatch, 2)
    disk_key = new_disk_key()
    w = DiskWriter(tmp_path / "d", _info(disk_key), disk_key, segment_size=4096 - 16)
    noise = random.Random(1)
    with pytest.raises(OSError, match="No space"):
        for _ in range(300):
            w.add_ndjson(noise.randbytes(2000).hex().encode() + b"\n")
        w.finish(KEY)
    w.abort()
    assert attempts() > 2
    assert not (tmp_path / "d").exists()


def _sealed_disk(tmp_path: Path) -> tuple[Path, Manifest, bytes]:
    disk_key = new_disk_key()
    w = _writer(tmp_path / "disk", disk_key, _info(disk_key))
    for i, b in enumerate(_bundles(30)):
        w.add(str(i), b)
    w.finish(KEY)
    return tmp_path / "disk", _manifest(tmp_path / "disk"), disk_key


def _open_payload(disk: Path, manifest: Manifest, disk_key: bytes, tmp_path: Path) -> None:
    out = tmp_path / "opened"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    _decrypt(manifest, {1: disk}, disk_key, out, lambda n: None)


def _segments(part: Path) -> list[bytes]:
    data = part.read_bytes()
    step = SEGMENT + 16
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.mark.parametrize("change", ["swap", "drop-last", "flip", "append"])
def test_open_refuses_a_payload_changed_after_verification(tmp_path: Path, change: str) -> None:
    """What open decrypts is checked by the stream itself, not by the (verified earlier) hashes."""
    disk, manifest, disk_key = _sealed_disk(tmp_path)
    _open_payload(disk, manifest, disk_key, tmp_path)  # unchanged: opens
    parts = [disk / p.path for p in manifest.logical_files[0].parts]
    first, last = parts[0], parts[-1]
    if change == "swap":  # two whole segments trade places
        segs = _segments(first)
        segs[0], segs[1] = segs[1], segs[0]
        first.write_bytes(b"".join(segs))
    elif change == "drop-last":  # truncated at a segment boundary
        segs = _segments(last)
        last.write_bytes(b"".join(segs[:-1]))
    elif change == "flip":
        data = bytearray(last.read_bytes())
        data[len(data) // 2] ^= 1
        last.write_bytes(bytes(data))
    else:
        with open(last, "ab") as f:
            f.write(os.urandom(SEGMENT + 16))
    with pytest.raises(StreamError):
        _open_payload(disk, manifest, disk_key, tmp_path)


def _resealed(tmp_path: Path, frames: bytes, size: int, compressed: int | None = None) -> None:
    """Open a disk whose payload is ``frames`` (sealed under its key, as one part) and whose manifest says
    ``size`` bytes, ``compressed`` (default: the frames' length) of them compressed."""
    disk, manifest, disk_key = _sealed_disk(tmp_path)
    (lf,) = manifest.logical_files
    for p in lf.parts:
        (disk / p.path).unlink()
    key = subkey(disk_key, manifest.disk_id, f"file {PAYLOAD_NAME}")
    (disk / lf.parts[0].path).write_bytes(encrypt_all(key, PAYLOAD_NAME, frames, SEGMENT))
    doc = copy.deepcopy(manifest.doc)
    entry = doc["files"][0]
    entry["size"], entry["parts"] = size, entry["parts"][:1]
    entry["compression"]["size"] = len(frames) if compressed is None else compressed
    _open_payload(disk, Manifest(doc, canonical(doc)), disk_key, tmp_path)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


LINES = b'{"resourceType":"Bundle","id":"1"}\n' * 20


def test_open_takes_any_zstd_frames_the_manifest_accounts_for(tmp_path: Path) -> None:
    frames = _zstd(LINES[:100]) + _zstd(LINES[100:])
    _resealed(tmp_path, frames, len(LINES))
    assert (tmp_path / "opened" / PAYLOAD_NAME).read_bytes() == LINES


@pytest.mark.parametrize(
    ("frames", "size", "compressed", "reason"),
    [
        (b"not zstd at all, but sealed with the disk key", 100, None, "does not decompress"),
        (_zstd(LINES) + b"trailing bytes", len(LINES), None, "does not decompress"),
        (_zstd(LINES)[:-5], len(LINES), None, "bytes decrypted, the manifest says"),  # (zstd: no error)
        (_zstd(LINES), len(LINES) - 1, None, "more than the"),
        (_zstd(LINES), len(LINES) + 1, None, "bytes decrypted, the manifest says"),
        (_zstd(LINES), len(LINES), len(_zstd(LINES)) + 1, "compressed bytes decrypted"),
    ],
    ids=["not-zstd", "trailing", "cut-frame", "longer", "shorter", "compressed-size"],
)
def test_open_refuses_frames_that_do_not_decompress_to_what_the_manifest_says(
    tmp_path: Path, frames: bytes, size: int, compressed: int | None, reason: str
) -> None:
    with pytest.raises(StreamError, match=reason):
        _resealed(tmp_path, frames, size, compressed)


class _BigViewer:
    """A stand-in for the offline viewer: one file of ``size`` bytes at the volume-1 root."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size

    def add(self, patient_id: str, bundle: bytes, summary: object = None) -> None: ...

    def close(self) -> list[str]:
        (self.root / "viewer.html").write_bytes(random.Random(2).randbytes(self.size))
        return ["viewer.html"]

    def abort(self) -> None:
        (self.root / "viewer.html").unlink(missing_ok=True)


def test_a_volume_without_payload_parts_tells_only_the_checks_that_work(tmp_path: Path) -> None:
    """When the viewer leaves volume 1 no room for a part, its payload manifest is empty, which
    ``sha256sum -c`` refuses: its README names only the tag manifest's check, and that one passes."""
    disk_key = new_disk_key()
    w = DiskWriter(
        tmp_path / "disk",
        _info(disk_key),
        disk_key,
        segment_size=SEGMENT,
        part_size=PART,
        max_volume=MIN_VOLUME_SIZE,
        viewer=lambda root: _BigViewer(root, MIN_VOLUME_SIZE - 12_000),
    )
    for i, b in enumerate(_bundles(80)):
        w.add(str(i), b)
    result = w.finish(KEY)
    assert len(result.roots) >= 2
    first, *others = result.roots
    assert (first / "manifest-sha256.txt").read_bytes() == b""
    for root in result.roots:
        readme = (root / "README.txt").read_text(encoding="utf-8")
        listings = ["tagmanifest-sha256.txt"] + (["manifest-sha256.txt"] if root in others else [])
        assert ("sha256sum -c manifest-sha256.txt" in readme) == (root in others)
        for listing in listings:
            run = subprocess.run(["sha256sum", "-c", listing], cwd=root, capture_output=True, text=True)
            assert run.returncode == 0, run.stdout + run.stderr
    report = verify_disk(result.roots, TrustAnchor.of_key(KEY.public))
    assert report.ok, report.problems

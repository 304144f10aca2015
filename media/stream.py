"""The segmented AEAD stream that carries a disk's payload (``bundles.ndjson``), after the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizár (2015).

The plaintext is cut into segments of ``segment_size`` bytes (the last one shorter, possibly empty); each
segment is sealed on its own with AES-256-GCM::

    key   = subkey(disk key, disk id, "file <logical name>")          (media.crypto)
    nonce = segment index as 11 bytes, big-endian || 0x01 for the last segment, else 0x00
    aad   = "hakobune-media-v1 stream <logical name>"
    out   = AES-256-GCM(key, nonce, segment, aad)                       (segment + 16-byte tag)

and the ciphertext is the concatenation.  Every segment but the last has exactly ``segment_size`` bytes
of plaintext, so a reader finds segment boundaries without any framing.  Because the index and the
last-segment flag are in the nonce, moving, dropping, repeating or swapping segments (or whole parts of
the file), truncating the stream at a segment boundary, or appending to it all make some segment fail to
authenticate; the logical name in the key and the associated data keeps a file from passing for
another.  Segments are independent: the writer seals them in a thread of their own, beside the one that
cuts the plaintext and those that hash and write the ciphertext.
"""

from __future__ import annotations

from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from media.crypto import KEY_BYTES, LABEL

TAG_BYTES = 16
#: Plaintext bytes per segment on disks this writer makes (the manifest records the size used): 4 MiB
#: less the tag, so that a sealed segment is exactly 4 MiB, whole 4 KiB blocks at block offsets, which
#: the disk writer writes with O_DIRECT from where it sealed them, without a copy (and large enough that
#: handing segments from thread to thread costs little).
SEGMENT_SIZE = (4 << 20) - TAG_BYTES
#: Sizes a reader accepts from a manifest: small ones are for tests, large ones would cost memory.
MIN_SEGMENT = 16
MAX_SEGMENT = 64 << 20
_MAX_INDEX = 1 << 88


class StreamError(ValueError):
    """The stream does not decrypt: a wrong key, or a segment altered, moved, dropped or added."""


def stream_aad(name: str) -> bytes:
    return f"{LABEL} stream {name}".encode()


def segment_nonce(index: int, last: bool) -> bytes:
    if not 0 <= index < _MAX_INDEX:
        raise ValueError("segment index out of range")
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def ciphertext_size(plaintext_size: int, segment_size: int) -> int:
    """The size of the sealed stream of ``plaintext_size`` bytes (at least one, possibly empty, segment)."""
    segments = max(1, -(-plaintext_size // segment_size))
    return plaintext_size + TAG_BYTES * segments


def check_segment_size(segment_size: int) -> int:
    if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise ValueError(f"segment size {segment_size} is outside {MIN_SEGMENT}..{MAX_SEGMENT}")
    return segment_size


class SegmentSealer:
    """Seals and opens single segments of one logical file (thread-safe: AESGCM objects are)."""

    def __init__(self, key: bytes, name: str, segment_size: int = SEGMENT_SIZE) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("stream key must be 32 bytes")
        self.segment_size = check_segment_size(segment_size)
        self._aead = AESGCM(key)
        self._aad = stream_aad(name)

    def _check_plaintext(self, plaintext: bytes | bytearray | memoryview, last: bool) -> None:
        if len(plaintext) > self.segment_size or (not last and len(plaintext) != self.segment_size):
            raise ValueError("only the last segment may be shorter than the segment size")

    def seal(self, index: int, plaintext: bytes | memoryview, last: bool) -> bytes:
        self._check_plaintext(plaintext, last)
        return self._aead.encrypt(segment_nonce(index, last), plaintext, self._aad)

    def seal_into(
        self, index: int, plaintext: bytes | bytearray | memoryview, out: bytearray | memoryview, last: bool
    ) -> None:
        """:meth:`seal` into ``out`` (exactly ``len(plaintext) + TAG_BYTES`` bytes): no new buffer, and
        unlike ``encrypt``, ``encrypt_into`` releases the GIL while it works (the disk writer's thread)."""
        self._check_plaintext(plaintext, last)
        if len(out) != len(plaintext) + TAG_BYTES:
            raise ValueError("the output buffer must be the segment's size plus the tag")
        self._aead.encrypt_into(segment_nonce(index, last), plaintext, self._aad, out)

    def open(self, index: int, ciphertext: bytes, last: bool) -> bytes:
        if len(ciphertext) < TAG_BYTES or len(ciphertext) > self.segment_size + TAG_BYTES:
            raise StreamError(f"segment {index}: wrong size ({len(ciphertext)} bytes)")
        if not last and len(ciphertext) != self.segment_size + TAG_BYTES:
            raise StreamError(f"segment {index}: short segment before the end of the stream")
        try:
            return self._aead.decrypt(segment_nonce(index, last), ciphertext, self._aad)
        except InvalidTag:
            raise StreamError(
                f"segment {index}{' (last)' if last else ''} does not authenticate: wrong key, or the "
                "stream was altered, reordered, truncated or extended"
            ) from None


class StreamEncryptor:
    """Sequential sealing: :meth:`update` returns the ciphertext of every segment known not to be the
    last, :meth:`finish` the last one.  (The disk writer makes the same cut with sealing in a thread.)"""

    def __init__(self, key: bytes, name: str, segment_size: int = SEGMENT_SIZE) -> None:
        self._sealer = SegmentSealer(key, name, segment_size)
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def update(self, data: bytes) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._buf += data
        seg = self._sealer.segment_size
        out: list[bytes] = []
        while len(self._buf) > seg:  # strictly more: the segment is known not to be the last
            out.append(self._sealer.seal(self._index, bytes(self._buf[:seg]), False))
            del self._buf[:seg]
            self._index += 1
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._done = True
        last = self._sealer.seal(self._index, bytes(self._buf), True)
        self._buf.clear()
        return last


class StreamDecryptor:
    """The reverse: feed ciphertext in pieces of any size; :meth:`finish` checks the stream really ended
    with its last segment.  Holds at most two segments of ciphertext."""

    def __init__(self, key: bytes, name: str, segment_size: int = SEGMENT_SIZE) -> None:
        self._sealer = SegmentSealer(key, name, segment_size)
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def update(self, data: bytes) -> bytes:
        if self._done:
            raise StreamError("data after the end of the stream")
        self._buf += data
        full = self._sealer.segment_size + TAG_BYTES
        out: list[bytes] = []
        while len(self._buf) > full:  # more follows: this one is not the last segment
            out.append(self._sealer.open(self._index, bytes(self._buf[:full]), False))
            del self._buf[:full]
            self._index += 1
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            raise StreamError("stream already finished")
        self._done = True
        if len(self._buf) < TAG_BYTES:
            raise StreamError(f"segment {self._index}: the stream is truncated")
        plain = self._sealer.open(self._index, bytes(self._buf), True)
        self._buf.clear()
        return plain


def encrypt_all(key: bytes, name: str, plaintext: bytes, segment_size: int = SEGMENT_SIZE) -> bytes:
    """The whole sealed stream of ``plaintext`` (tests and test vectors)."""
    enc = StreamEncryptor(key, name, segment_size)
    return enc.update(plaintext) + enc.finish()


def decrypt_chunks(
    key: bytes, name: str, chunks: Iterator[bytes] | list[bytes], segment_size: int = SEGMENT_SIZE
) -> Iterator[bytes]:
    """Plaintext pieces of the stream read as ``chunks``; :class:`StreamError` on any defect (pieces
    already yielded are then not to be trusted as a whole: write them somewhere temporary)."""
    dec = StreamDecryptor(key, name, segment_size)
    for chunk in chunks:
        piece = dec.update(chunk)
        if piece:
            yield piece
    yield dec.finish()

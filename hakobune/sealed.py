"""The sealed changeset format (DESIGN §5; byte-by-byte in ``docs/format.md``).

::

    magic "HKBNCS" 00 01 (8 bytes) | u32 header length | header (canonical JSON) | Ed25519 signature (64)
    | key table: key_count entries of 124 bytes | payload: frames

All integers are big-endian.  The signature covers magic, length and header; the header commits to the
key table (SHA-256 over each entry's token, key id and the SHA-256 of its wrapped key) and to the payload
(length and SHA-256), so one signature check and two streamed hashes verify the whole file.  The
*changeset hash* (the chain link, ``prev`` of the next changeset) is SHA-256 over magic, length and header.

Key table entry: patient token (16) | key id (16) | SHA-256 of the wrapped key (32) | wrapped key (60 =
AES-256-GCM nonce 12 + ciphertext 32 + tag 16, under the epoch key).  Crypto-shredding a patient
overwrites the 60 wrapped bytes with zeros; the entry's digest stays, so the file still verifies, but
nobody can decrypt that patient's frames any more.

Frame: u32 length of what follows | u32 key-table index | nonce (12) | AES-256-GCM ciphertext + tag of
the zstd-compressed operations, with associated data binding it to hospital, stream, sequence, frame
number, token and key id.  Operations are JSON lines: ``{"put":<record>}`` or ``{"del":<record key>}``.

The epoch key (32 bytes) is sealed in the header with HPKE to the recipient (the hospital's release key
for the clinical stream, the analysis center's key for research).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hakobune.errors import HakobuneError, InputError
from hakobune.keys import (
    RecipientPrivateKey,
    RecipientPublicKey,
    SigningKey,
    SuiteName,
    VerifyKey,
    check_suite,
)
from hakobune.naming import Stream, check_hospital_id, check_stream

MAGIC = b"HKBNCS\x00\x01"
FORMAT = "hakobune-changeset"
VERSION = 1
SIGNATURE_SIZE = 64
TOKEN_SIZE = 16
KID_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
DATA_KEY_SIZE = 32
WRAPPED_SIZE = NONCE_SIZE + DATA_KEY_SIZE + TAG_SIZE
ENTRY_SIZE = TOKEN_SIZE + KID_SIZE + 32 + WRAPPED_SIZE
FRAME_OVERHEAD = 4 + NONCE_SIZE + TAG_SIZE  # key index, nonce, tag
MAX_HEADER = 1 << 20
MAX_FRAME = 16 << 20
#: Plaintext operations per frame before it is compressed and sealed.
FRAME_TARGET = 1 << 20
ZERO_HASH = "0" * 64
SHREDDED = bytes(WRAPPED_SIZE)

Kind = Literal["baseline", "incremental"]
_READ = 1 << 20


class Incomplete(InputError):
    """The file is shorter than its own header says: an upload still in progress, or a truncated file."""


# --- keys inside a changeset -------------------------------------------------------------------------------


def _epoch_info(hospital: str, stream: str, epoch_id: bytes) -> bytes:
    return b"hakobune/epoch/v1\x00" + hospital.encode() + b"\x00" + stream.encode() + b"\x00" + epoch_id


@dataclass(frozen=True, repr=False)
class Epoch:
    """A hospital's epoch key for one stream, and that key sealed to the recipient.  Patient keys are
    wrapped under it; re-baselines start a new epoch."""

    id: bytes
    key: bytes
    sealed: bytes

    @classmethod
    def create(cls, recipient: RecipientPublicKey, hospital: str, stream: Stream) -> Epoch:
        epoch_id, key = os.urandom(16), os.urandom(32)
        return cls(epoch_id, key, recipient.seal(key, _epoch_info(hospital, stream, epoch_id)))

    @classmethod
    def unseal(
        cls, epoch_id: bytes, sealed: bytes, private: RecipientPrivateKey, hospital: str, stream: Stream
    ) -> Epoch | None:
        """The epoch whose sealed key is ``sealed``; None if ``private`` is not the key it was sealed to."""
        key = private.open(sealed, _epoch_info(hospital, stream, epoch_id))
        if key is None or len(key) != 32:
            return None
        return cls(epoch_id, key, sealed)

    def __repr__(self) -> str:
        return f"Epoch(id={self.id.hex()})"


def _wrap_aad(epoch_id: bytes, token: bytes, kid: bytes) -> bytes:
    return b"hakobune/pkey/v1\x00" + epoch_id + token + kid


def wrap_patient_key(epoch: Epoch, token: bytes, kid: bytes, key: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(epoch.key).encrypt(nonce, key, _wrap_aad(epoch.id, token, kid))


def unwrap_patient_key(epoch: Epoch, token: bytes, kid: bytes, wrapped: bytes) -> bytes | None:
    if wrapped == SHREDDED:
        return None
    try:
        return AESGCM(epoch.key).decrypt(
            wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], _wrap_aad(epoch.id, token, kid)
        )
    except InvalidTag:
        return None


def _frame_aad(hospital: str, stream: str, sequence: int, index: int, token: bytes, kid: bytes) -> bytes:
    return (
        b"hakobune/frame/v1\x00"
        + hospital.encode()
        + b"\x00"
        + stream.encode()
        + b"\x00"
        + struct.pack(">QI", sequence, index)
        + token
        + kid
    )


def _entry_digest_part(entry: bytes) -> bytes:
    return entry[: TOKEN_SIZE + KID_SIZE + 32]


# --- header ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    hospital: str
    stream: Stream
    sequence: int
    prev: str
    kind: Kind
    created_at: str
    suite: SuiteName
    recipient: str
    signer: str
    epoch_id: str
    epoch_sealed: bytes
    key_count: int
    keys_sha256: str
    frames: int
    payload_length: int
    payload_sha256: str
    tombstones: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """The canonical encoding: JSON, keys sorted, no insignificant whitespace, UTF-8."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "hospital": self.hospital,
            "stream": self.stream,
            "sequence": self.sequence,
            "prev": self.prev,
            "kind": self.kind,
            "created_at": self.created_at,
            "suite": self.suite,
            "recipient": self.recipient,
            "signer": self.signer,
            "epoch": {"id": self.epoch_id, "sealed": base64.b64encode(self.epoch_sealed).decode("ascii")},
            "keys": {"count": self.key_count, "sha256": self.keys_sha256},
            "payload": {"frames": self.frames, "length": self.payload_length, "sha256": self.payload_sha256},
            "tombstones": list(self.tombstones),
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Header:
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("not a changeset header")
            if doc.get("version") != VERSION:
                raise ValueError(f"unsupported header version {doc.get('version')!r}")
            epoch, keys, payload = _obj(doc, "epoch"), _obj(doc, "keys"), _obj(doc, "payload")
            header = cls(
                hospital=check_hospital_id(_str(doc, "hospital")),
                stream=check_stream(_str(doc, "stream")),
                sequence=_int(doc, "sequence", minimum=1),
                prev=_hex(doc, "prev", 64),
                kind=_kind(_str(doc, "kind")),
                created_at=_str(doc, "created_at"),
                suite=check_suite(_str(doc, "suite")),
                recipient=_hex(doc, "recipient", 32),
                signer=_hex(doc, "signer", 32),
                epoch_id=_hex(epoch, "id", 32),
                epoch_sealed=base64.b64decode(_str(epoch, "sealed"), validate=True),
                key_count=_int(keys, "count"),
                keys_sha256=_hex(keys, "sha256", 64),
                frames=_int(payload, "frames"),
                payload_length=_int(payload, "length"),
                payload_sha256=_hex(payload, "sha256", 64),
                tombstones=tuple(_tokens(doc.get("tombstones"))),
            )
        except (ValueError, HakobuneError) as e:
            raise InputError(where, f"bad changeset header ({e})") from None
        if header.to_json() != data:
            raise InputError(where, "bad changeset header (not in canonical form)")
        return header

    @property
    def prefix(self) -> bytes:
        """Magic, header length and header: the bytes the signature covers."""
        body = self.to_json()
        return MAGIC + struct.pack(">I", len(body)) + body

    @property
    def hash(self) -> str:
        """The changeset hash: SHA-256 over :attr:`prefix`, hex.  The next changeset's ``prev``."""
        return hashlib.sha256(self.prefix).hexdigest()

    @property
    def keys_offset(self) -> int:
        return len(self.prefix) + SIGNATURE_SIZE

    @property
    def payload_offset(self) -> int:
        return self.keys_offset + self.key_count * ENTRY_SIZE

    @property
    def total_size(self) -> int:
        return self.payload_offset + self.payload_length


def _obj(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"{name} missing")
    return value


def _str(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} missing or not text")
    return value


def _int(doc: dict[str, Any], name: str, minimum: int = 0) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value >= 1 << 63:
        raise ValueError(f"{name} missing or out of range")
    return value


def _hex(doc: dict[str, Any], name: str, length: int) -> str:
    value = _str(doc, name)
    if len(value) != length or value.strip("0123456789abcdef"):
        raise ValueError(f"{name} is not {length} lower-case hex digits")
    return value


def _kind(value: str) -> Kind:
    if value not in ("baseline", "incremental"):
        raise ValueError(f"unknown kind {value!r}")
    return value  # type: ignore[return-value]


def _tokens(value: Any) -> Iterator[str]:
    if not isinstance(value, list):
        raise ValueError("tombstones missing")
    for token in value:
        if not isinstance(token, str) or len(token) != 32 or token.strip("0123456789abcdef"):
            raise ValueError("a tombstone is not a 32-digit hex token")
        yield token
    if value != sorted(set(value)):
        raise ValueError("tombstones not sorted and unique")


# --- writing ---------------------------------------------------------------------------------------------


@dataclass
class _Patient:
    index: int
    token: bytes
    kid: bytes
    aead: AESGCM


class ChangesetWriter:
    """Seal one changeset, streaming: frames and key entries go to temporary files beside ``out`` as they
    come, so memory stays bounded by one frame however large the baseline.  Call :meth:`add` once per
    patient (with that patient's operations), :meth:`tombstone` for erased patients, then :meth:`finish`.
    """

    def __init__(
        self,
        out: Path,
        *,
        hospital: str,
        stream: Stream,
        sequence: int,
        prev: str,
        kind: Kind,
        epoch: Epoch,
        recipient: RecipientPublicKey,
        signer: SigningKey,
        created_at: str,
        level: int = 3,
    ) -> None:
        self.out = out
        self.hospital = check_hospital_id(hospital)
        self.stream = stream
        self.sequence = sequence
        self.prev = prev
        self.kind: Kind = kind
        self.epoch = epoch
        self.recipient = recipient
        self.signer = signer
        self.created_at = created_at
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._keys_path = out.with_name(out.name + ".keys.tmp")
        self._frames_path = out.with_name(out.name + ".frames.tmp")
        self._keys: BinaryIO = open(self._keys_path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._frames: BinaryIO = open(self._frames_path, "wb")  # noqa: SIM115
        self._keys_hash = hashlib.sha256()
        self._payload_hash = hashlib.sha256()
        self._payload_length = 0
        self._key_count = 0
        self._frame_count = 0
        self._tokens: set[bytes] = set()
        self._tombstones: set[str] = set()

    def add(self, token: bytes, kid: bytes, key: bytes, ops: Iterable[bytes]) -> int:
        """Seal one patient's operations (JSON lines, each ending in ``\\n``) under the patient's data key
        ``key`` (id ``kid``).  Returns the number of frames written; a patient with no operations gets
        none (and no key entry)."""
        if len(token) != TOKEN_SIZE or len(kid) != KID_SIZE or len(key) != DATA_KEY_SIZE:
            raise ValueError("token and key id are 16 bytes, a data key 32")
        if token in self._tokens:
            raise ValueError("a patient is added once per changeset")
        patient: _Patient | None = None
        frames = 0
        buf: list[bytes] = []
        size = 0
        for op in ops:
            buf.append(op)
            size += len(op)
            if size >= FRAME_TARGET:
                patient = patient or self._enter(token, kid, key)
                self._frame(patient, buf)
                frames += 1
                buf, size = [], 0
        if buf:
            patient = patient or self._enter(token, kid, key)
            self._frame(patient, buf)
            frames += 1
        return frames

    def tombstone(self, token: bytes) -> None:
        """Announce that this patient is erased: the center shreds every key entry of ``token``."""
        self._tombstones.add(token.hex())

    def _enter(self, token: bytes, kid: bytes, key: bytes) -> _Patient:
        wrapped = wrap_patient_key(self.epoch, token, kid, key)
        entry = token + kid + hashlib.sha256(wrapped).digest() + wrapped
        self._keys.write(entry)
        self._keys_hash.update(_entry_digest_part(entry))
        self._tokens.add(token)
        patient = _Patient(self._key_count, token, kid, AESGCM(key))
        self._key_count += 1
        return patient

    def _frame(self, patient: _Patient, ops: list[bytes]) -> None:
        nonce = os.urandom(NONCE_SIZE)
        aad = _frame_aad(
            self.hospital, self.stream, self.sequence, self._frame_count, patient.token, patient.kid
        )
        sealed = patient.aead.encrypt(nonce, self._zstd.compress(b"".join(ops)), aad)
        body = struct.pack(">I", patient.index) + nonce + sealed
        frame = struct.pack(">I", len(body)) + body
        self._frames.write(frame)
        self._payload_hash.update(frame)
        self._payload_length += len(frame)
        self._frame_count += 1

    def finish(self) -> Header:
        """Write the sealed file at ``out`` (atomically: temporary name, fsync, rename) and return its
        header."""
        self._keys.close()
        self._frames.close()
        header = Header(
            hospital=self.hospital,
            stream=self.stream,
            sequence=self.sequence,
            prev=self.prev,
            kind=self.kind,
            created_at=self.created_at,
            suite=self.recipient.suite,
            recipient=self.recipient.fingerprint,
            signer=self.signer.public.fingerprint,
            epoch_id=self.epoch.id.hex(),
            epoch_sealed=self.epoch.sealed,
            key_count=self._key_count,
            keys_sha256=self._keys_hash.hexdigest(),
            frames=self._frame_count,
            payload_length=self._payload_length,
            payload_sha256=self._payload_hash.hexdigest(),
            tombstones=tuple(sorted(self._tombstones)),
        )
        prefix = header.prefix
        tmp = self.out.with_name(self.out.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(prefix)
                f.write(self.signer.sign(prefix))
                for part in (self._keys_path, self._frames_path):
                    with open(part, "rb") as src:
                        while chunk := src.read(_READ):
                            f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.out)
        finally:
            tmp.unlink(missing_ok=True)
            self._cleanup()
        return header

    def abort(self) -> None:
        """Drop everything written so far."""
        self._keys.close()
        self._frames.close()
        self._cleanup()

    def _cleanup(self) -> None:
        self._keys_path.unlink(missing_ok=True)
        self._frames_path.unlink(missing_ok=True)


# --- reading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedFile:
    path: Path
    header: Header
    signature: bytes
    size: int

    @property
    def hash(self) -> str:
        return self.header.hash


def read_header(path: Path) -> SealedFile:
    """Parse the cleartext header (no signature check).  :class:`Incomplete` if the file ends before
    the header does or is shorter than the header says; :class:`InputError` if it is not a changeset."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(MAGIC) + 4)
            if len(head) < len(MAGIC) + 4:
                if MAGIC.startswith(head[: len(MAGIC)]):
                    raise Incomplete(where, f"incomplete: {size} bytes, the header is not complete")
                raise InputError(where, "not a Hakobune changeset (bad magic)")
            if head[:6] != MAGIC[:6]:
                raise InputError(where, "not a Hakobune changeset (bad magic)")
            if head[:8] != MAGIC:
                raise InputError(where, f"unsupported changeset format version {head[6]}.{head[7]}")
            (length,) = struct.unpack(">I", head[8:12])
            if length > MAX_HEADER:
                raise InputError(where, f"header length {length} exceeds {MAX_HEADER}")
            body = f.read(length)
            signature = f.read(SIGNATURE_SIZE)
    except OSError as e:
        raise InputError(where, f"cannot read ({e.strerror})") from None
    if len(body) < length or len(signature) < SIGNATURE_SIZE:
        raise Incomplete(where, f"incomplete: {size} bytes, the header is not complete")
    header = Header.from_json(body, where)
    if size < header.total_size:
        raise Incomplete(where, f"incomplete: {size} of {header.total_size} bytes")
    if size > header.total_size:
        raise InputError(where, f"{size - header.total_size} bytes after the end of the changeset")
    return SealedFile(path, header, signature, size)


#: ``on_frame(frame number, key-table index, offset of the frame's nonce in the file, bytes from there)``
FrameSink = Callable[[int, int, int, int], None]


def verify(
    path: Path,
    signer: VerifyKey,
    *,
    hospital: str | None = None,
    on_frame: FrameSink | None = None,
    payload: bool = True,
) -> SealedFile:
    """Check everything that can be checked without the recipient's private key: format, signature by
    ``signer``, that the changeset belongs to ``hospital``, sizes, the key table and every frame's
    framing, and the payload hash.  Raises :class:`Incomplete` or :class:`InputError` with the reason.
    ``on_frame`` learns where each frame lies as the pass goes, so a reader can later fetch frames out of
    order (:func:`open_frame`) without a second pass; trust those locations only once this returns.

    ``payload=False`` skips over frame bodies instead of hashing them (call :func:`check_payload` later,
    e.g. in a background thread): a reader that authenticates every frame it opens (AES-GCM with the
    frame's number, token and key id as associated data) and finds the signed frame count and payload
    length can start at once; the payload hash then also vouches for the frames it never opened."""
    sealed = read_header(path)
    header, where = sealed.header, str(path)
    if not signer.verify(sealed.signature, header.prefix):
        raise InputError(where, f"signature does not verify with key {signer.fingerprint}")
    if header.signer != signer.fingerprint:
        raise InputError(where, f"header names signer {header.signer}, not {signer.fingerprint}")
    if hospital is not None and header.hospital != hospital:
        raise InputError(where, f"changeset of hospital {header.hospital} arrived for hospital {hospital}")
    with open(path, "rb") as f:
        f.seek(header.keys_offset)
        keys_hash = hashlib.sha256()
        for i in range(header.key_count):
            entry = f.read(ENTRY_SIZE)
            wrapped = entry[TOKEN_SIZE + KID_SIZE + 32 :]
            if wrapped != SHREDDED and not hmac.compare_digest(
                hashlib.sha256(wrapped).digest(), entry[TOKEN_SIZE + KID_SIZE : TOKEN_SIZE + KID_SIZE + 32]
            ):
                raise InputError(where, f"key entry {i} does not match its digest")
            keys_hash.update(_entry_digest_part(entry))
        if not hmac.compare_digest(keys_hash.hexdigest(), header.keys_sha256):
            raise InputError(where, "key table does not match the header")
        payload_hash = hashlib.sha256()
        remaining = header.payload_length
        for i in range(header.frames):
            frame_head = f.read(8)
            if len(frame_head) < 8 or remaining < 8:
                raise InputError(where, f"frame {i} is cut short")
            length, index = struct.unpack(">II", frame_head)
            if length < FRAME_OVERHEAD or length > MAX_FRAME or length + 4 > remaining:
                raise InputError(where, f"frame {i} has a bad length")
            if index >= header.key_count:
                raise InputError(where, f"frame {i} names key {index} of {header.key_count}")
            if on_frame is not None:
                on_frame(i, index, f.tell(), length - 4)
            remaining -= length + 4
            if not payload:
                f.seek(length - 4, os.SEEK_CUR)
                continue
            payload_hash.update(frame_head)
            left = length - 4
            while left:
                chunk = f.read(min(left, _READ))
                if not chunk:
                    raise InputError(where, f"frame {i} is cut short")
                payload_hash.update(chunk)
                left -= len(chunk)
        if remaining:
            raise InputError(where, "payload holds more bytes than its frames")
    if payload and not hmac.compare_digest(payload_hash.hexdigest(), header.payload_sha256):
        raise InputError(where, "payload does not match the header (altered or corrupted)")
    return sealed


def check_payload(sealed: SealedFile) -> None:
    """Hash the payload of a changeset whose structure :func:`verify` checked with ``payload=False``;
    :class:`InputError` if it does not match the signed header."""
    header, where = sealed.header, str(sealed.path)
    h = hashlib.sha256()
    left = header.payload_length
    with open(sealed.path, "rb") as f:
        f.seek(header.payload_offset)
        while left:
            chunk = f.read(min(left, _READ * 4))
            if not chunk:
                raise InputError(where, "payload is cut short")
            h.update(chunk)
            left -= len(chunk)
    if not hmac.compare_digest(h.hexdigest(), header.payload_sha256):
        raise InputError(where, "payload does not match the header (altered or corrupted)")


@dataclass(frozen=True)
class Frame:
    """One decrypted frame: a patient's token and the operations it carries (JSON lines)."""

    token: bytes
    ops: list[bytes]


@dataclass
class OpenStats:
    frames: int = 0
    shredded_frames: int = 0
    patients: int = 0
    shredded_patients: int = 0
    tombstones: list[str] = field(default_factory=list)


@dataclass(frozen=True, repr=False)
class KeyEntry:
    """One key-table entry opened under the epoch key; ``aead`` is None for a shredded patient."""

    token: bytes
    kid: bytes
    aead: AESGCM | None


def open_epoch(sealed: SealedFile, private: RecipientPrivateKey) -> Epoch:
    """The changeset's epoch key, unsealed with the recipient's private key."""
    header = sealed.header
    epoch = Epoch.unseal(
        bytes.fromhex(header.epoch_id), header.epoch_sealed, private, header.hospital, header.stream
    )
    if epoch is None:
        raise InputError(
            str(sealed.path), f"cannot open the epoch key: sealed to key {header.recipient}, not this one"
        )
    return epoch


def read_key_entries(f: BinaryIO, sealed: SealedFile) -> list[bytes]:
    """The raw key-table entries (124 bytes each), to open one by one with :func:`open_key_entry`."""
    return list(iter_key_entries(f, sealed))


def iter_key_entries(f: BinaryIO, sealed: SealedFile, chunk: int = 8192) -> Iterator[bytes]:
    """The raw key-table entries, read ``chunk`` entries at a time."""
    header = sealed.header
    f.seek(header.keys_offset)
    left = header.key_count
    while left:
        n = min(left, chunk)
        data = f.read(n * ENTRY_SIZE)
        if len(data) != n * ENTRY_SIZE:
            raise InputError(str(sealed.path), "key table is cut short")
        for i in range(0, len(data), ENTRY_SIZE):
            yield data[i : i + ENTRY_SIZE]
        left -= n


def open_key_entry(epoch: Epoch, sealed: SealedFile, index: int, entry: bytes) -> KeyEntry:
    """Unwrap one raw key-table entry under ``epoch`` (``aead`` None if the patient was shredded)."""
    token, kid = entry[:TOKEN_SIZE], entry[TOKEN_SIZE : TOKEN_SIZE + KID_SIZE]
    wrapped = entry[TOKEN_SIZE + KID_SIZE + 32 :]
    key = unwrap_patient_key(epoch, token, kid, wrapped)
    if key is None and wrapped != SHREDDED:
        raise InputError(str(sealed.path), f"key entry {index} does not open under the epoch key")
    return KeyEntry(token, kid, AESGCM(key) if key else None)


def open_frame(
    sealed: SealedFile, number: int, entry: KeyEntry, body: bytes, dctx: zstandard.ZstdDecompressor
) -> list[bytes]:
    """Decrypt and decompress frame ``number`` (``body`` = nonce, ciphertext and tag) into its operation
    lines.  :class:`InputError` if it fails authentication (altered, moved, or not this patient's)."""
    header = sealed.header
    if entry.aead is None:
        raise ValueError("a shredded patient's frame cannot be opened")
    aad = _frame_aad(header.hospital, header.stream, header.sequence, number, entry.token, entry.kid)
    try:
        compressed = entry.aead.decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], aad)
    except InvalidTag:
        raise InputError(str(sealed.path), f"frame {number} fails authentication") from None
    return dctx.decompress(compressed, max_output_size=MAX_FRAME * 8).splitlines(keepends=True)


def open_changeset(
    path: Path, private: RecipientPrivateKey, signer: VerifyKey, *, hospital: str | None = None
) -> tuple[SealedFile, Iterator[Frame], OpenStats]:
    """Verify ``path`` and decrypt it with the recipient's private key.  Returns the header, an iterator
    over its frames in order, and statistics filled as the iterator runs.  Frames of shredded patients
    are skipped.  Raises :class:`InputError` if the file fails verification or ``private`` is not the
    key it was sealed to; the iterator raises :class:`InputError` if a frame fails authentication."""
    sealed = verify(path, signer, hospital=hospital)
    header = sealed.header
    epoch = open_epoch(sealed, private)
    stats = OpenStats(tombstones=list(header.tombstones))

    def frames() -> Iterator[Frame]:
        # Memory must not grow with the changeset (a 100,000-patient baseline's opened key table, an
        # AES-GCM object per patient, took 250 MB): the table is counted in chunks, and each frame's key
        # entry is read and unwrapped when the frame comes.  verify() checked the table's hash already.
        dctx = zstandard.ZstdDecompressor()
        with open(path, "rb") as f:
            for raw in iter_key_entries(f, sealed):
                shredded = raw[TOKEN_SIZE + KID_SIZE + 32 :] == SHREDDED
                stats.patients += not shredded
                stats.shredded_patients += shredded
            f.seek(header.keys_offset + header.key_count * ENTRY_SIZE)
            for i in range(header.frames):  # framing and key indexes were checked by verify
                length, index = struct.unpack(">II", f.read(8))
                body = f.read(length - 4)
                raw = os.pread(f.fileno(), ENTRY_SIZE, header.keys_offset + index * ENTRY_SIZE)
                entry = open_key_entry(epoch, sealed, index, raw)
                if entry.aead is None:
                    stats.shredded_frames += 1
                    continue
                stats.frames += 1
                yield Frame(entry.token, open_frame(sealed, i, entry, body, dctx))

    return sealed, frames(), stats


def shred(path: Path, tokens: set[bytes]) -> int:
    """Crypto-shred ``tokens`` in a stored changeset: overwrite their wrapped keys with zeros in place.
    The file still verifies; those patients' frames can no longer be decrypted.  Returns the number of
    entries shredded."""
    header = read_header(path).header
    count = 0
    with open(path, "r+b") as f:
        for i in range(header.key_count):
            offset = header.keys_offset + i * ENTRY_SIZE
            f.seek(offset)
            entry = f.read(ENTRY_SIZE)
            if entry[:TOKEN_SIZE] in tokens and entry[TOKEN_SIZE + KID_SIZE + 32 :] != SHREDDED:
                f.seek(offset + TOKEN_SIZE + KID_SIZE + 32)
                f.write(SHREDDED)
                count += 1
        f.flush()
        os.fsync(f.fileno())
    return count


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
    return h.hexdigest()

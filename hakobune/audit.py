"""The audit log: append-only, hash-chained, Merkle-tree (Certificate-Transparency style) (DESIGN §7).

Every unlock, release, search, export, media write, study decision and research run appends one entry.
A log is a directory::

    audit.log    entries, one canonical JSON object per line (append-only, mode 0600)
    heads.log    signed heads, one canonical JSON object per line (append-only)
    head.json    the latest signed head: operators copy it to the mirror center and the hospital
    audit.key    the Ed25519 key that signs heads (mode 0600); audit.pub its public half
    audit.token  the secret for patient tokens (:meth:`AuditLog.patient_token`, mode 0600)
    audit.lock   fcntl.flock lock: appends from several processes never interleave

An entry is canonical JSON (keys sorted, no whitespace, UTF-8) of ``{"action", "actor", "details",
"hospital", "prev", "seq", "time", "v"}``.  ``seq`` counts from 0 and is the entry's leaf index; ``prev``
is the leaf hash of the previous entry (64 zeros for the first), so the entries form a hash chain.  Leaf
and node hashes follow RFC 6962: ``leaf = SHA-256(0x00 || entry bytes)``, ``node = SHA-256(0x01 || left
|| right)``; a *signed head* (tree size, Merkle root, time, Ed25519 signature) commits to the whole
history.  Given an older head (a copy kept by the mirror), :func:`verify_log` checks that the log's first
``size`` entries still have that root, so truncating or rewriting history is detected even by someone
who holds ``audit.key`` and re-signs.

``details`` hold tokens, ids, counts and fingerprints only, never patient data (names, addresses, birth
dates, patient IDs): refer to patients by count or by :meth:`AuditLog.patient_token`.  docs/audit.md has
the format, a worked test vector and the operator procedure.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import math
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from hakobune.durable import fsync_dir
from hakobune.errors import HakobuneError, InputError
from hakobune.keys import (
    PRIVATE_FILE_MODE,
    SigningKey,
    VerifyKey,
    load_signing_key,
    load_verify_key,
    write_key,
    write_key_bytes,
)

LOG_FILE = "audit.log"
HEADS_FILE = "heads.log"
HEAD_FILE = "head.json"
KEY_FILE = "audit.key"
PUB_FILE = "audit.pub"
TOKEN_FILE = "audit.token"
LOCK_FILE = "audit.lock"

VERSION = 1
HEAD_FORMAT = "hakobune-audit-head"
HEAD_VERSION = 1
ZERO_HASH = "0" * 64
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: Actions the rest of the system writes (free strings; these are documented in docs/audit.md).
ACTIONS: tuple[str, ...] = (
    "ceremony",
    "order.create",
    "order.approve",
    "unlock",
    "replay",
    "search",
    "export",
    "media.write",
    "media.open",
    "study.submit",
    "study.decide",
    "research.run",
    "research.ingest",
)

#: ``details`` keys (at any depth, case-insensitive, ``-`` read as ``_``) refused because they would
#: carry patient data.  Use counts or :meth:`AuditLog.patient_token` instead.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {
        "name",
        "names",
        "patient_name",
        "kana",
        "kanji",
        "address",
        "addr",
        "zip",
        "postal_code",
        "phone",
        "tel",
        "birth",
        "birthdate",
        "birth_date",
        "birthday",
        "dob",
        "sex",
        "patient_id",
        "patient_ids",
        "pid",
    }
)

_ACTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"action", "actor", "details", "hospital", "prev", "seq", "time", "v"})
_HEAD_KEYS = frozenset({"format", "version", "key", "size", "root", "time"})
_MAX_PROBLEMS = 100
_TOKEN_PREFIX = "pt1:"


class AuditError(HakobuneError):
    """The audit log cannot be written (closed, or its files are not in order)."""


# --- hashing (RFC 6962 §2.1) -------------------------------------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry bytes)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes* (RFC 6962 §2.1); SHA-256 of the empty string for no leaves."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


class _Frontier:
    """Incremental MTH: the roots of the perfect subtrees that make up the tree so far (one per set bit of
    the size), so that the root of every prefix is available in one pass."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def add(self, leaf: bytes) -> None:
        self._stack.append(leaf)
        self.size += 1
        n = self.size
        while n & 1 == 0:
            right = self._stack.pop()
            self._stack[-1] = node_hash(self._stack[-1], right)
            n >>= 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            r = node_hash(left, r)
        return r


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree over ``leaves`` (RFC 6962 §2.1.1)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of size {len(leaves)}")
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaves[:k], index), merkle_root(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), merkle_root(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True if ``proof`` shows that leaf hash ``leaf`` is leaf ``index`` of the tree ``(size, root)``
    (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of the tree over ``leaves``
    (RFC 6962 §2.1.2); empty if ``old_size`` is 0 or ``len(leaves)``."""
    if not 0 <= old_size <= len(leaves):
        raise ValueError(f"old size {old_size} is not within 0..{len(leaves)}")
    if old_size in (0, len(leaves)):
        return []
    return _subproof(old_size, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [merkle_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), merkle_root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), merkle_root(leaves[:k])]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True if ``proof`` shows that tree ``(old_size, old_root)`` is a prefix of tree ``(new_size,
    new_root)`` (RFC 9162 §2.1.4.2)."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return not proof and hmac.compare_digest(old_root, EMPTY_ROOT)
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)


# --- entries -----------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


def canonical(obj: object) -> bytes:
    """Canonical JSON: keys sorted, no insignificant whitespace, UTF-8."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _check_details(value: object, where: str) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"audit details: key {k!r} at {where or 'top level'} is not a string")
            if k.lower().replace("-", "_") in FORBIDDEN_DETAIL_KEYS:
                raise ValueError(
                    f"audit details: key {k!r} would carry patient data; log counts or patient tokens"
                )
            _check_details(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_details(v, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit details: {where} is not a finite number")
    elif not (value is None or isinstance(value, str | int | bool)):
        raise ValueError(f"audit details: {where} has type {type(value).__name__}, not a JSON value")


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry.  :meth:`encode` is its canonical bytes (one line of ``audit.log`` without the
    newline); :attr:`hash` its RFC 6962 leaf hash, which the next entry's ``prev`` repeats."""

    seq: int
    time: str
    action: str
    actor: str
    hospital: str
    details: dict[str, Any]
    prev: str
    v: int = VERSION

    def body(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "actor": self.actor,
            "details": self.details,
            "hospital": self.hospital,
            "prev": self.prev,
            "seq": self.seq,
            "time": self.time,
            "v": self.v,
        }

    def encode(self) -> bytes:
        return canonical(self.body())

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.encode())

    @property
    def hash(self) -> str:
        """The leaf hash, hex."""
        return self.leaf.hex()

    @classmethod
    def decode(cls, data: bytes, where: str) -> AuditEntry:
        """Parse one line (without its newline); :class:`InputError` naming ``where`` if it is not a
        canonical audit entry."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise InputError(where, f"not valid JSON ({_short(str(e))})") from None
        if not isinstance(doc, dict):
            raise InputError(where, "not an audit entry (not a JSON object)")
        if set(doc) != _ENTRY_KEYS:
            missing, extra = sorted(_ENTRY_KEYS - set(doc)), sorted(set(doc) - _ENTRY_KEYS)
            what = "; ".join(
                x for x in (missing and f"missing {missing}", extra and f"unexpected {extra}") if x
            )
            raise InputError(where, f"not an audit entry ({what})")
        if doc["v"] != VERSION or isinstance(doc["v"], bool):
            raise InputError(where, f"unsupported entry version {doc['v']!r}")
        seq = doc["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InputError(where, "not an audit entry (seq is not a non-negative integer)")
        for key in ("time", "action", "actor", "hospital", "prev"):
            if not isinstance(doc[key], str):
                raise InputError(where, f"not an audit entry ({key} is not a string)")
        if not isinstance(doc["details"], dict):
            raise InputError(where, "not an audit entry (details is not an object)")
        if not _HEX64.fullmatch(doc["prev"]):
            raise InputError(where, "not an audit entry (prev is not 64 hex digits)")
        entry = cls(
            seq=seq,
            time=doc["time"],
            action=doc["action"],
            actor=doc["actor"],
            hospital=doc["hospital"],
            details=doc["details"],
            prev=doc["prev"],
        )
        if entry.encode() != data:
            raise InputError(where, "entry is not in canonical form (edited by hand?)")
        return entry


def _short(text: str, limit: int = 80) -> str:
    text = text.splitlines()[0] if text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- signed heads ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedHead:
    """A signed tree head: the log's size and Merkle root at ``time``, signed by the log key.  On disk
    (``heads.log`` lines, ``head.json``) it is canonical JSON ``{"head": {...}, "signature": "<base64>"}``
    and the signature covers the canonical JSON of the inner object."""

    size: int
    root: str  # hex
    time: str
    key: str  # fingerprint of the signing key
    signature: bytes

    def body(self) -> bytes:
        return canonical(self._inner())

    def _inner(self) -> dict[str, Any]:
        return {
            "format": HEAD_FORMAT,
            "version": HEAD_VERSION,
            "key": self.key,
            "size": self.size,
            "root": self.root,
            "time": self.time,
        }

    def encode(self) -> bytes:
        """One line (without the newline)."""
        return canonical(
            {"head": self._inner(), "signature": base64.b64encode(self.signature).decode("ascii")}
        )

    def to_json(self) -> dict[str, Any]:
        return {"head": self._inner(), "signature": base64.b64encode(self.signature).decode("ascii")}

    def verify(self, key: VerifyKey) -> bool:
        return self.key == key.fingerprint and key.verify(self.signature, self.body())

    @classmethod
    def create(cls, key: SigningKey, size: int, root: bytes, time: str) -> SignedHead:
        unsigned = cls(size=size, root=root.hex(), time=time, key=key.public.fingerprint, signature=b"")
        return cls(size, unsigned.root, time, unsigned.key, key.sign(unsigned.body()))

    @classmethod
    def decode(cls, data: bytes, where: str) -> SignedHead:
        """Parse a signed head (signature not checked: :meth:`verify`)."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise InputError(where, f"not a signed audit head (not valid JSON: {_short(str(e))})") from None
        if not isinstance(doc, dict) or set(doc) != {"head", "signature"}:
            raise InputError(where, "not a signed audit head (expected {'head', 'signature'})")
        inner, sig = doc["head"], doc["signature"]
        if not isinstance(inner, dict) or set(inner) != _HEAD_KEYS or not isinstance(sig, str):
            raise InputError(where, "not a signed audit head (bad fields)")
        if inner["format"] != HEAD_FORMAT or inner["version"] != HEAD_VERSION:
            raise InputError(where, "not a signed audit head (unknown format or version)")
        size = inner["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(where, "not a signed audit head (size is not a non-negative integer)")
        if not (isinstance(inner["root"], str) and _HEX64.fullmatch(inner["root"])):
            raise InputError(where, "not a signed audit head (root is not 64 hex digits)")
        if not isinstance(inner["key"], str) or not isinstance(inner["time"], str):
            raise InputError(where, "not a signed audit head (key and time must be strings)")
        try:
            signature = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise InputError(where, "not a signed audit head (signature is not base64)") from None
        return cls(size, inner["root"], inner["time"], inner["key"], signature)


def read_heads(path: Path) -> list[tuple[str, SignedHead | InputError]]:
    """Every signed head in ``path`` (``head.json``, ``heads.log`` or a file of copied heads, one per
    line; blank lines skipped), each with its location ``path:line`` or the error that line gives."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), "head file not found") from None
    except OSError as e:
        raise InputError(str(path), f"cannot read head file ({e.strerror})") from None
    out: list[tuple[str, SignedHead | InputError]] = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            out.append((where, SignedHead.decode(line.strip(), where)))
        except InputError as e:
            out.append((where, e))
    return out


# --- the log -----------------------------------------------------------------------------------------------


class AuditLog:
    """An open audit log directory.  ``with AuditLog.open(d) as log: log.append(...)``.

    Appends and head signing hold an exclusive ``fcntl.flock`` on ``audit.lock`` (so several processes
    may append to one log) and every append is fsynced before it returns."""

    def __init__(self, directory: Path, key: SigningKey, clock: Callable[[], datetime]) -> None:
        self.directory = directory
        self._key = key
        self._clock = clock
        self._lock_fd: int | None = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        self._thread_lock = threading.Lock()
        self._token_secret: bytes | None = None

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, clock: Callable[[], datetime] | None = None) -> AuditLog:
        """Open the log in ``directory``, creating the directory (mode 0700), its head-signing key
        (``audit.key`` 0600, ``audit.pub``), its token secret and empty files if absent.  ``clock``
        (timezone-aware) is for tests."""
        directory = Path(directory)
        created = not directory.exists()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(str(directory), f"cannot create the audit log directory ({e.strerror})") from e
        if not directory.is_dir():
            raise InputError(str(directory), "not a directory")
        if created:
            os.chmod(directory, 0o700)  # mkdir's mode is subject to the umask
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise InputError(str(directory / LOCK_FILE), f"cannot open the lock file ({e.strerror})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            key = _init_files(directory)
        finally:
            os.close(fd)  # closing drops the flock
        return cls(directory, key, clock or _now)

    @property
    def public_key(self) -> VerifyKey:
        return self._key.public

    @property
    def path(self) -> Path:
        return self.directory / LOG_FILE

    # -- writing ---------------------------------------------------------------------------------------

    def append(
        self,
        action: str,
        *,
        actor: str,
        hospital: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditEntry:
        """Append one entry and fsync it.  ``details`` hold tokens, ids, counts and fingerprints only;
        keys that would carry patient data (:data:`FORBIDDEN_DETAIL_KEYS`) raise ValueError."""
        if not isinstance(action, str) or not _ACTION.fullmatch(action):
            raise ValueError(f"audit action {action!r}: expected a short word such as 'unlock'")
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError("audit entries need an actor")
        if not isinstance(hospital, str):
            raise ValueError("audit hospital must be a string")
        body = dict(details or {})
        _check_details(body, "")
        # round-trip through JSON so the entry holds exactly what is written (tuples become lists)
        try:
            body = orjson.loads(canonical(body))
        except orjson.JSONEncodeError as e:
            raise ValueError(f"audit details: {e}") from None
        with self._locked():
            seq, prev = self._tail()
            entry = AuditEntry(
                seq=seq,
                time=_iso(self._clock()),
                action=action,
                actor=actor,
                hospital=hospital,
                details=body,
                prev=prev,
            )
            _append_line(self.path, entry.encode())
        return entry

    def sign_head(self) -> SignedHead:
        """Check the whole log (and the earlier heads), then sign its current size and root; append the
        head to ``heads.log`` and replace ``head.json``.  Refuses (:class:`AuditError`) to sign a log
        that does not verify: signing would launder tampering."""
        with self._locked():
            scan = _scan(self.directory, self.public_key, ())
            if scan.report.problems:
                more = len(scan.report.problems) - 1
                raise AuditError(
                    f"{self.path}: refusing to sign a head: {scan.report.problems[0]}"
                    + (f" (and {more} more; run 'hakobune audit verify')" if more else "")
                )
            head = SignedHead.create(self._key, scan.frontier.size, scan.frontier.root(), _iso(self._clock()))
            line = head.encode()
            _append_line(self.directory / HEADS_FILE, line)
            _write_atomic(self.directory / HEAD_FILE, line + b"\n", 0o644)
        return head

    # -- reading ---------------------------------------------------------------------------------------

    def entries(self) -> Iterator[AuditEntry]:
        """The entries, first to last (:class:`InputError` on a line that is not an entry)."""
        return read_entries(self.directory)

    def leaves(self) -> list[bytes]:
        """Every entry's leaf hash, in order."""
        return [leaf_hash(line) for _, line in _lines(self.path)]

    def root(self, size: int | None = None) -> bytes:
        leaves = self.leaves()
        return merkle_root(leaves if size is None else leaves[:size])

    def inclusion_proof(self, seq: int, size: int | None = None) -> list[bytes]:
        leaves = self.leaves()
        return inclusion_proof(leaves if size is None else leaves[:size], seq)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        leaves = self.leaves()
        return consistency_proof(leaves if new_size is None else leaves[:new_size], old_size)

    def patient_token(self, hospital: str, patient_id: str) -> str:
        """A token that stands for one patient in ``details`` (``pt1:`` + 32 hex digits): HMAC-SHA256
        keyed with this log's secret ``audit.token`` over ``hospital || 0x00 || patient_id``.  Whoever
        holds the log directory can compute the token of a given patient to answer "who accessed this
        record"; a copy of the entries or of the FHIR export reveals nothing about patients."""
        if self._token_secret is None:
            self._token_secret = _read_token_secret(self.directory / TOKEN_FILE)
        return patient_token(self._token_secret, hospital, patient_id)

    # -- lifecycle -------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.directory)!r})"

    # -- internals -------------------------------------------------------------------------------------

    def _locked(self) -> _Locked:
        if self._lock_fd is None:
            raise AuditError(f"{self.directory}: the audit log is closed")
        return _Locked(self._lock_fd, self._thread_lock)

    def _tail(self) -> tuple[int, str]:
        """The next ``seq`` and ``prev``, from the last line of the log."""
        last = _last_line(self.path)
        if last is None:
            return 0, ZERO_HASH
        entry = AuditEntry.decode(last, f"{self.path}: last line")
        return entry.seq + 1, leaf_hash(last).hex()


class _Locked:
    def __init__(self, fd: int, thread_lock: threading.Lock) -> None:
        self._fd = fd
        self._thread_lock = thread_lock

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def patient_token(secret: bytes, hospital: str, patient_id: str) -> str:
    """See :meth:`AuditLog.patient_token`."""
    mac = hmac.new(secret, hospital.encode() + b"\x00" + patient_id.encode(), hashlib.sha256)
    return _TOKEN_PREFIX + mac.digest()[:16].hex()


def _init_files(directory: Path) -> SigningKey:
    """Create what is missing (under the lock) and return the head-signing key."""
    key_path, pub_path = directory / KEY_FILE, directory / PUB_FILE
    made = False
    if key_path.exists():
        key = load_signing_key(key_path)
    else:
        if (directory / LOG_FILE).exists() and (directory / LOG_FILE).stat().st_size:
            raise InputError(str(key_path), "missing, but the log has entries; restore the key from backup")
        key = SigningKey.generate()
        write_key(key_path, key)
        made = True
    if pub_path.exists():
        pub = load_verify_key(pub_path)
        if pub != key.public:
            raise InputError(str(pub_path), f"is not the public half of {KEY_FILE}")
    else:
        write_key(pub_path, key.public)
        made = True
    token_path = directory / TOKEN_FILE
    if not token_path.exists():
        write_key_bytes(token_path, secrets.token_hex(32).encode("ascii") + b"\n", PRIVATE_FILE_MODE)
        made = True
    for name, mode in ((LOG_FILE, 0o600), (HEADS_FILE, 0o644)):
        path = directory / name
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode))
            made = True
    if made:
        fsync_dir(directory)
    return key


def _read_token_secret(path: Path) -> bytes:
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise InputError(str(path), "token secret not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(path), f"cannot read token secret ({e})") from None
    if st.st_mode & 0o077:
        raise InputError(str(path), f"token secret is readable by others (mode {st.st_mode & 0o777:04o})")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise InputError(str(path), "token secret is not hex") from None
    if len(secret) < 16:
        raise InputError(str(path), "token secret is too short")
    return secret


def _append_line(path: Path, line: bytes) -> None:
    """Append ``line`` + newline in one write and fsync."""
    data = line + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a short write: finish it (we hold the lock)
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _last_line(path: Path) -> bytes | None:
    """The last line of ``path`` without its newline; None if the file is empty.  :class:`InputError` if
    the file does not end with a newline (a torn write)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        f.seek(end - 1)
        if f.read(1) != b"\n":
            raise InputError(
                str(path),
                "the last line is incomplete (no newline: a torn write?); run 'hakobune audit verify'",
            )
        chunk, pos, buf = 4096, end - 1, b""
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start) + buf
            pos = start
            nl = buf.rfind(b"\n")
            if nl >= 0:
                return buf[nl + 1 :]
        return buf


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without newline) for every line; a last line without newline is yielded too
    (:func:`verify_log` reports it through :func:`_torn`)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            yield n, line[:-1] if line.endswith(b"\n") else line


def read_entries(directory: Path) -> Iterator[AuditEntry]:
    """The entries of the log in ``directory`` (not verified: :func:`verify_log`)."""
    path = Path(directory) / LOG_FILE
    if not path.exists():
        raise InputError(str(path), "audit log not found")
    for n, line in _lines(path):
        yield AuditEntry.decode(line, f"{path}:{n}")


# --- verification ------------------------------------------------------------------------------------------


@dataclass
class AuditReport:
    """What :func:`verify_log` found.  ``ok`` when ``problems`` is empty."""

    directory: str
    entries: int = 0
    heads: int = 0
    root: str = EMPTY_ROOT.hex()
    signed: int = 0  # entries covered by the largest valid head (later entries are not yet signed)
    key: str | None = None  # fingerprint of the key heads were checked against
    problems: list[str] = field(default_factory=list)
    omitted: int = 0  # problems beyond the first 100, counted but not listed

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.omitted += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "directory": self.directory,
            "entries": self.entries,
            "heads": self.heads,
            "root": self.root,
            "signed": self.signed,
            "key": self.key,
            "problems": self.problems,
            "omitted": self.omitted,
        }


@dataclass
class _Scan:
    report: AuditReport
    frontier: _Frontier


def verify_log(directory: Path, key: VerifyKey | None = None, *, heads: Iterable[Path] = ()) -> AuditReport:
    """Check the log in ``directory``: every line is a canonical entry, ``seq`` runs 0, 1, 2, …, every
    ``prev`` is the hash of the line before, and every signed head — in ``heads.log``, ``head.json`` and
    the files in ``heads`` (copies kept by the mirror or the hospital) — has a valid signature by ``key``
    (default: the log's ``audit.pub``) and the Merkle root of the log's first ``size`` entries.

    Detects edited, removed, inserted and reordered entries, broken chains, garbled or torn lines, forged
    heads and — through a head that covers them — entries removed from the end or history rewritten and
    re-signed.  Entries after the newest head are protected by the chain only: sign heads often."""
    return _scan(Path(directory), key, heads).report


def _scan(directory: Path, key: VerifyKey | None, heads: Iterable[Path]) -> _Scan:
    if not directory.is_dir():
        raise InputError(str(directory), "audit log directory not found")
    report = AuditReport(directory=str(directory))
    frontier = _Frontier()

    # the key heads are checked against
    pub_path = directory / PUB_FILE
    own: VerifyKey | None = None
    if pub_path.exists():
        try:
            own = load_verify_key(pub_path)
        except InputError as e:
            report.problem(str(e))
    if key is None:
        key = own
        if key is None and not pub_path.exists():
            report.problem(f"{pub_path}: missing; pass the log's public key (--key) to check heads")
    elif own is not None and own != key:
        report.problem(
            f"{pub_path}: key {own.fingerprint} is not the expected key {key.fingerprint} (replaced?)"
        )
    report.key = key.fingerprint if key is not None else None

    # gather heads first so that prefix roots are taken in the single pass over the log
    sources: list[Path] = []
    for name in (HEADS_FILE, HEAD_FILE):
        if (directory / name).exists():
            sources.append(directory / name)
    sources.extend(Path(p) for p in heads)
    found: list[tuple[str, SignedHead]] = []
    for src in sources:
        try:
            items = read_heads(src)
        except InputError as e:
            report.problem(str(e))
            continue
        for where, head in items:
            if isinstance(head, InputError):
                report.problem(str(head))
            else:
                found.append((where, head))
    wanted: dict[int, bytes | None] = {h.size: None for _, h in found}
    wanted[0] = EMPTY_ROOT

    # the entries
    log_path = directory / LOG_FILE
    if not log_path.exists():
        report.problem(f"{log_path}: missing (the whole log was removed?)")
    else:
        try:
            _scan_entries(log_path, report, frontier, wanted)
        except OSError as e:
            report.problem(f"{log_path}: cannot read ({e.strerror})")
    report.entries = frontier.size
    report.root = frontier.root().hex()
    _check_heads(found, key, frontier.size, wanted, report)
    return _Scan(report, frontier)


def _scan_entries(
    log_path: Path, report: AuditReport, frontier: _Frontier, wanted: dict[int, bytes | None]
) -> None:
    """Check every line; feed every leaf to ``frontier`` and record the roots of the ``wanted`` sizes."""
    prev: bytes | None = None
    torn = _torn(log_path)
    for n, line in _lines(log_path):
        where = f"{log_path}:{n}"
        if torn and n == torn:
            report.problem(f"{where}: incomplete line (no newline at end: a torn write or truncation)")
            break
        expected_prev = ZERO_HASH if prev is None else prev.hex()
        if not line:
            report.problem(f"{where}: empty line")
        else:
            try:
                entry = AuditEntry.decode(line, where)
            except InputError as e:
                report.problem(str(e))
            else:
                if entry.seq != frontier.size:
                    report.problem(
                        f"{where}: seq is {entry.seq}, expected {frontier.size}"
                        " (an entry was removed, inserted or reordered)"
                    )
                if not hmac.compare_digest(entry.prev, expected_prev):
                    before = f"line {n - 1}" if n > 1 else "the start of the log"
                    report.problem(
                        f"{where}: prev does not match the hash of {before}"
                        " (the chain is broken: an entry was edited, removed or reordered)"
                    )
        prev = leaf_hash(line)
        frontier.add(prev)
        if frontier.size in wanted:
            wanted[frontier.size] = frontier.root()


def _check_heads(
    found: list[tuple[str, SignedHead]],
    key: VerifyKey | None,
    size: int,
    wanted: dict[int, bytes | None],
    report: AuditReport,
) -> None:
    for where, head in found:
        report.heads += 1
        if key is not None:
            if head.key != key.fingerprint:
                report.problem(f"{where}: head signed by key {head.key}, not the log key {key.fingerprint}")
                continue
            if not head.verify(key):
                report.problem(
                    f"{where}: head signature does not verify with key {key.fingerprint} (forged?)"
                )
                continue
        if head.size > size:
            report.problem(
                f"{where}: head covers {head.size} entries but the log has {size}"
                " (entries removed from the end?)"
            )
            continue
        root = wanted.get(head.size)
        if root is None or not hmac.compare_digest(root.hex(), head.root):
            report.problem(
                f"{where}: root does not match the log's first {head.size} entries (history rewritten)"
            )
            continue
        if key is not None:
            report.signed = max(report.signed, head.size)


def _torn(path: Path) -> int:
    """The line number of an incomplete last line (no trailing newline), or 0."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return 0
        f.seek(0)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) + 1


# --- FHIR ----------------------------------------------------------------------------------------------

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:hakobune:audit-action"
HOSPITAL_SYSTEM = "urn:hakobune:hospital"
ENTRY_SYSTEM = "urn:hakobune:audit-entry"

_DCM_DISPLAY = {
    "110100": "Application Activity",
    "110106": "Export",
    "110107": "Import",
    "110109": "Order Record",
    "110112": "Query",
    "110113": "Security Alert",
    "110127": "Emergency Override Started",
    "110129": "Security Configuration",
}

#: action -> (DICOM event type, FHIR action code C/R/U/D/E, extra DICOM subtype or None)
FHIR_MAPPING: dict[str, tuple[str, str, str | None]] = {
    "ceremony": ("110113", "C", "110129"),
    "order.create": ("110109", "C", None),
    "order.approve": ("110109", "U", None),
    "unlock": ("110113", "E", "110127"),
    "replay": ("110107", "C", None),
    "search": ("110112", "E", None),
    "export": ("110106", "R", None),
    "media.write": ("110106", "R", None),
    "media.open": ("110107", "C", None),
    "study.submit": ("110100", "C", None),
    "study.decide": ("110100", "U", None),
    "research.ingest": ("110107", "C", None),
    "research.run": ("110100", "E", None),
}
_DEFAULT_MAPPING: tuple[str, str, str | None] = ("110100", "E", None)


def _dcm(code: str) -> dict[str, str]:
    return {"system": DCM, "code": code, "display": _DCM_DISPLAY[code]}


def _detail_value(value: object) -> str:
    return value if isinstance(value, str) else canonical(value).decode("utf-8")


def to_audit_event(entry: AuditEntry) -> dict[str, Any]:
    """The entry as a FHIR R4 AuditEvent (a plain dict).  ``id`` is the entry's leaf hash; type and
    action follow DICOM PS3.15 (``FHIR_MAPPING``), the subtype names the Hakobune action."""
    type_code, action_code, extra = FHIR_MAPPING.get(entry.action, _DEFAULT_MAPPING)
    subtype = [{"system": ACTION_SYSTEM, "code": entry.action, "display": entry.action}]
    if extra is not None:
        subtype.append(_dcm(extra))
    details: list[dict[str, str]] = [
        {"type": "seq", "valueString": str(entry.seq)},
        {"type": "prev", "valueString": entry.prev},
    ]
    details.extend({"type": k, "valueString": _detail_value(v)} for k, v in sorted(entry.details.items()))
    entities: list[dict[str, Any]] = [
        {
            "what": {
                "identifier": {"system": ENTRY_SYSTEM, "value": entry.hash},
                "display": f"Hakobune audit entry {entry.seq}",
            },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "detail": details,
        }
    ]
    if entry.hospital:
        entities.append(
            {
                "what": {
                    "identifier": {"system": HOSPITAL_SYSTEM, "value": entry.hospital},
                    "display": f"hospital {entry.hospital}",
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "4",
                    "display": "Other",
                },
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": entry.hash,
        "type": _dcm(type_code),
        "subtype": subtype,
        "action": action_code,
        "recorded": entry.time,
        "outcome": "0",
        "agent": [{"who": {"display": entry.actor}, "requestor": True}],
        "source": {
            "observer": {"display": "Hakobune"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": entities,
    }


def export_fhir(directory: Path, out: Path) -> int:
    """Write every entry as one FHIR AuditEvent per line (NDJSON) to ``out`` (atomically); the count."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "wb") as f:
            for entry in read_entries(directory):
                f.write(orjson.dumps(to_audit_event(entry)) + b"\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(str(out), f"cannot write the export ({e.strerror})") from e
    finally:
        tmp.unlink(missing_ok=True)
    return count


def record(
    directory: Path | None, action: str, *, actor: str, hospital: str = "", details: Mapping[str, object]
) -> None:
    """Append one entry to the audit log in ``directory``; nothing when no log was given (``--audit``
    is optional for commands that may run away from the center, like a custodian's approval)."""
    if directory is None:
        return
    with AuditLog.open(directory) as log:
        log.append(action, actor=actor, hospital=hospital, details=details)

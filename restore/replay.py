"""Replay a hospital's chain of changesets into its current state of records.

Changesets are applied in sequence order; each must chain to the one before (``prev`` equals the
previous changeset's hash) and a baseline resets the state.  Tombstones remove every record of the
erased patient; frames of shredded patients cannot be decrypted and are skipped.  The result equals the
hospital's last synced SS-MIX2 state minus opted-out patients (the property the tests check).

Two forms apply the same rules.  :func:`replay` goes changeset by changeset and holds the whole state in
memory: the reference, for tests and small checks.  :class:`PatientReplay` goes *patient by patient*: a
background thread checks each changeset's structure once, noting where each patient's frames lie, while
the replay rebuilds one patient at a time from their frames across the whole chain, each as soon as the
check has passed its frames (payload hashes are checked alongside).  Memory holds one patient's records
plus a small index entry per patient, the first patient is ready long before a large baseline is
scanned, and each patient can go on to search and export at once: this is what the restore database and
the disaster-day export use.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from hakobune.errors import InputError
from hakobune.keys import RecipientPrivateKey, VerifyKey
from hakobune.sealed import (
    TOKEN_SIZE,
    ZERO_HASH,
    Epoch,
    KeyEntry,
    SealedFile,
    check_payload,
    open_changeset,
    open_epoch,
    open_frame,
    open_key_entry,
    read_key_entries,
    verify,
)

RecordId = tuple[str, str, str, str, str]


@dataclass
class ReplayState:
    #: Each patient's current records, by token.
    by_token: dict[bytes, dict[RecordId, bytes]] = field(default_factory=dict)
    sequence: int = 0
    head: str = ZERO_HASH
    changesets: int = 0
    shredded_frames: int = 0

    @property
    def records(self) -> dict[RecordId, bytes]:
        """Every current record of every patient."""
        return {rid: e for patient in self.by_token.values() for rid, e in patient.items()}


def replay(
    paths: Iterable[Path],
    private: RecipientPrivateKey,
    signer: VerifyKey,
    *,
    hospital: str,
    state: ReplayState | None = None,
) -> ReplayState:
    """Apply the changesets at ``paths`` (in sequence order) to ``state`` (or a fresh one)."""
    state = state or ReplayState()
    for path in paths:
        sealed, frames, stats = open_changeset(path, private, signer, hospital=hospital)
        header = sealed.header
        if header.sequence != state.sequence + 1 or header.prev != state.head:
            raise InputError(
                str(path), f"does not follow sequence {state.sequence} in the chain (got {header.sequence})"
            )
        if header.kind == "baseline":
            state.by_token.clear()
        for frame in frames:
            _apply(state.by_token.setdefault(frame.token, {}), frame.ops, str(path))
        for token in header.tombstones:
            state.by_token.pop(bytes.fromhex(token), None)
        state.sequence, state.head = header.sequence, header.hash
        state.changesets += 1
        state.shredded_frames += stats.shredded_frames
    return state


def _record_id(encoded: bytes) -> RecordId:
    """The key of an encoded record, parsing only the key object (the encoding puts it first, and key
    values are SS-MIX2 file-name fields and item numbers, which hold no braces); the whole record only if
    that fails."""
    start = encoded.find(b'"key":{')
    try:
        k = orjson.loads(encoded[start + 6 : encoded.find(b"}", start) + 1]) if start > 0 else None
    except orjson.JSONDecodeError:
        k = None
    if not isinstance(k, dict) or len(k) != 5:
        k = orjson.loads(encoded)["r"]["key"]
    return (k["patient_id"], k["care_date"], k["data_type"], k["order_no"], k["item"])


def _apply(records: dict[RecordId, bytes], lines: list[bytes], where: str) -> None:
    for line in lines:
        if line.startswith(b'{"put":'):
            encoded = line[7:].rstrip()[:-1]
            records[_record_id(encoded)] = encoded
        elif line.startswith(b'{"del":'):
            pid, date, dtype, order, item = orjson.loads(line[7:].rstrip()[:-1])
            records.pop((pid, date, dtype, order, item), None)
        else:
            raise InputError(where, "unknown operation in a frame")


#: A record's key object as :func:`hakobune.records.encode` writes it (fields in declaration order, values
#: with no quote, backslash or brace to escape, as SS-MIX2 file-name fields and item numbers are).
_KEY_SHAPE = re.compile(
    rb'\{"patient_id":"[^"\\{}]*","care_date":"[^"\\{}]*","data_type":"[^"\\{}]*",'
    rb'"order_no":"[^"\\{}]*","item":"[^"\\{}]*"\}'
)
_KEY_FIELDS = ("patient_id", "care_date", "data_type", "order_no", "item")


def _key_bytes(record_id: Iterable[str]) -> bytes:
    """The canonical bytes of a key object: what :func:`_raw_key` finds in a record with that key."""
    return orjson.dumps(dict(zip(_KEY_FIELDS, record_id, strict=True)))


def _raw_key(encoded: bytes) -> bytes:
    """The key of an encoded record as the bytes of its key object: sliced out, not parsed (the encoding
    puts the key first, before any value a hospital wrote); canonicalised from the parsed record only
    when it is not in the usual shape."""
    start = encoded.find(b'"key":{') + 6
    key = encoded[start : encoded.find(b"}", start) + 1]
    if start > 5 and _KEY_SHAPE.fullmatch(key):
        return key
    return _key_bytes(_record_id(encoded))


def _apply_raw(records: dict[bytes, bytes], lines: list[bytes], where: str) -> None:
    """:func:`_apply` keyed by :func:`_raw_key` (no JSON parse per record: what a patient's replay uses)."""
    for line in lines:
        if line.startswith(b'{"put":'):
            # each operation is one "\n"-terminated line: slice the record out in one copy
            encoded = line[7:-2] if line.endswith(b"}\n") else line[7:].rstrip()[:-1]
            records[_raw_key(encoded)] = encoded
        elif line.startswith(b'{"del":'):
            records.pop(_key_bytes(orjson.loads(line[7:].rstrip()[:-1])), None)
        else:
            raise InputError(where, "unknown operation in a frame")


class _Stopped(Exception):
    """Raised into a structure check that is no longer wanted (the replay was closed)."""


@dataclass(repr=False)
class _Located:
    """One changeset: its raw key entries and tombstones, and where each patient's frames lie, learnt
    from its structure check as that goes (in a background thread: ``spots`` grows, and the replay moves
    them into ``frames`` when it needs them)."""

    #: The header as the chain plan read it; the structure check must find the very same.
    sealed: SealedFile
    fd: int
    raw: list[bytes]
    tombstones: frozenset[bytes]
    payload: Future[None] | None = None
    checked: Future[None] | None = None
    epoch: Epoch | None = None
    #: (frame number, key-table index, offset of the frame body, body length), appended by the check.
    spots: list[tuple[int, int, int, int]] = field(default_factory=list)
    taken: int = 0
    #: Every frame's place is in ``frames``: the check is over and passed.
    complete: bool = False
    #: token -> [(frame number, offset of the frame body, body length)]
    frames: dict[bytes, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: token -> key-table index of its frames
    index: dict[bytes, int] = field(default_factory=dict)
    last: bytes = b""

    def key(self, token: bytes) -> KeyEntry:
        if self.epoch is None:
            raise RuntimeError("epoch key not opened")
        i = self.index[token]
        return open_key_entry(self.epoch, self.sealed, i, self.raw[i])


@dataclass(frozen=True)
class RestoredPatient:
    """One patient's current records (canonical encodings) after the whole chain."""

    token: bytes
    #: Each record's encoding by the bytes of its key object.
    by_key: dict[bytes, bytes]

    @property
    def patient_id(self) -> str:
        pid: str = orjson.loads(next(iter(self.by_key)))["patient_id"]
        return pid

    @property
    def records(self) -> dict[RecordId, bytes]:
        """The records by key (as :func:`replay` gives them)."""
        out: dict[RecordId, bytes] = {}
        for key, e in self.by_key.items():
            k = orjson.loads(key)
            out[(k["patient_id"], k["care_date"], k["data_type"], k["order_no"], k["item"])] = e
        return out


@dataclass
class PatientReplayStats:
    changesets: int = 0
    bytes: int = 0
    tokens: int = 0
    patients: int = 0
    records: int = 0
    #: Tokens with nothing left: erased by a tombstone or opted out.
    erased: int = 0
    #: Frames that could not be opened because the patient's key was shredded.
    shredded_frames: int = 0


#: How long the replay sleeps while the structure check has not yet reached the next patient's frames.
_POLL = 0.0005


class PatientReplay:
    """Replay ``sealed`` (a chain from :func:`restore.chain.plan_chain`: baseline first) patient by patient.

    Each changeset's structure (signature, hospital, key table, the framing and count of its frames) is
    checked in a background thread, the changesets after the baseline first, then the baseline, whose
    check tells where each patient's frames lie as it goes.  :meth:`patients` yields each patient's final
    records as soon as the check has passed that patient's frames (in the baseline a patient's frames are
    consecutive, as the format requires; a later frame of a patient already yielded fails the replay), every
    frame authenticated as it is opened.  So the first patient is out long before a large baseline is
    scanned.  The checks and the payload hashes, which also vouch for frames never opened, finish meanwhile:
    call :meth:`finish` before trusting the whole (it raises if any failed).  Use as a context manager (it
    holds the files open)."""

    def __init__(
        self, sealed: list[SealedFile], private: RecipientPrivateKey, signer: VerifyKey, *, hospital: str
    ) -> None:
        if not sealed or sealed[0].header.kind != "baseline":
            raise InputError(str(sealed[0].path) if sealed else "-", "a replay starts at a baseline")
        self.stats = PatientReplayStats()
        self._chain: list[_Located] = []
        self._order: dict[bytes, None] = {}
        self._private: RecipientPrivateKey | None = private
        self._stop = False
        self._yielded: set[bytes] = set()
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-scan")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payload-hash")
        try:
            prev: SealedFile | None = None
            for s in sealed:
                header = s.header
                if prev is not None and (
                    header.sequence != prev.header.sequence + 1 or header.prev != prev.hash
                ):
                    raise InputError(
                        str(s.path), f"does not follow sequence {prev.header.sequence} in the chain"
                    )
                self._chain.append(self._open(s))
                prev = s
            for c in [*self._chain[1:], self._chain[0]]:
                c.checked = self._checker.submit(self._check, c, signer, hospital)
        except BaseException:
            self.close()
            raise
        self.stats.changesets = len(self._chain)
        self.stats.tokens = len(self._order)

    def _open(self, sealed: SealedFile) -> _Located:
        """The changeset's file held open and its key table read (checked later, by :meth:`_check`)."""
        try:
            fd = os.open(sealed.path, os.O_RDONLY)
        except OSError as e:
            raise InputError(str(sealed.path), f"cannot read ({e.strerror})") from None
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = read_key_entries(f, sealed)
        except OSError as e:
            os.close(fd)
            raise InputError(str(sealed.path), f"cannot read ({e.strerror})") from None
        except BaseException:
            os.close(fd)
            raise
        for token in raw:
            self._order.setdefault(token[:TOKEN_SIZE], None)
        self.stats.bytes += sealed.size
        tombstones = frozenset(bytes.fromhex(t) for t in sealed.header.tombstones)
        return _Located(sealed, fd, raw, tombstones)

    def _check(self, c: _Located, signer: VerifyKey, hospital: str) -> None:
        """The structure check of one changeset (in the background thread)."""
        spots = c.spots

        def on_frame(number: int, index: int, offset: int, length: int) -> None:
            if self._stop:
                raise _Stopped
            spots.append((number, index, offset, length))

        checked = verify(c.sealed.path, signer, hospital=hospital, on_frame=on_frame, payload=False)
        if checked.hash != c.sealed.hash or checked.signature != c.sealed.signature:
            raise InputError(str(c.sealed.path), "changed while the restore was reading it")
        # hashing the payload now, not alongside, leaves the core to the check and the first patients
        c.payload = self._hasher.submit(check_payload, c.sealed)

    def _take(self, c: _Located) -> None:
        """Move the frames the check has passed into ``c.frames``."""
        n = len(c.spots)
        if n == c.taken:
            return
        raw, frames, index, where = c.raw, c.frames, c.index, str(c.sealed.path)
        for number, i, offset, length in c.spots[c.taken : n]:
            token = raw[i][:TOKEN_SIZE]
            if token != c.last:
                if token in self._yielded:
                    raise InputError(where, f"frame {number}: a patient's frames are not consecutive")
                c.last = token
                index[token] = i
            frames.setdefault(token, []).append((number, offset, length))
        c.taken = n

    def _finish_check(self, c: _Located) -> None:
        """Wait for the check of ``c`` (raising its error) and take all its frames."""
        assert c.checked is not None
        c.checked.result()
        self._take(c)
        c.complete, c.spots = True, []

    def _open_epoch(self, c: _Located) -> None:
        """Open the epoch key of ``c`` once its check has passed the signature and key table (its first
        frame, or its end)."""
        assert c.checked is not None and self._private is not None
        while not c.spots and not c.checked.done():
            time.sleep(_POLL)
        if not c.spots:
            c.checked.result()
        c.epoch = open_epoch(c.sealed, self._private)

    def _ready(self) -> None:
        """Every changeset's key open and the later changesets' frames known: before the first patient."""
        for c in self._chain[1:]:
            self._finish_check(c)
        for c in self._chain:
            self._open_epoch(c)
        self._private = None  # the epoch keys are all this replay needs now

    def _wait_for(self, token: bytes) -> None:
        """Wait until the baseline's check has passed every frame of ``token``."""
        base = self._chain[0]
        while not base.complete:
            self._take(base)
            if token in base.frames and base.last != token:
                return
            assert base.checked is not None
            if base.checked.done():
                self._finish_check(base)
                self._yielded.clear()  # nothing more to check against
                return
            time.sleep(_POLL)

    def patients(self) -> Iterator[RestoredPatient]:
        """Each patient with records left, in the order the chain first names them."""
        self._ready()
        dctx = zstandard.ZstdDecompressor()
        base = self._chain[0]
        for token in self._order:
            if not base.complete:
                self._wait_for(token)
                if not base.complete:
                    self._yielded.add(token)
            records: dict[bytes, bytes] = {}
            for c in self._chain:
                spots = c.frames.get(token)
                if spots:
                    entry = c.key(token)
                    if entry.aead is None:
                        self.stats.shredded_frames += len(spots)
                    else:
                        for number, offset, length in spots:
                            body = os.pread(c.fd, length, offset)
                            if len(body) != length:
                                raise InputError(str(c.sealed.path), f"frame {number} is cut short")
                            _apply_raw(
                                records, open_frame(c.sealed, number, entry, body, dctx), str(c.sealed.path)
                            )
                if token in c.tombstones:
                    records.clear()
            if not records:
                self.stats.erased += 1
                continue
            self.stats.patients += 1
            self.stats.records += len(records)
            yield RestoredPatient(token, records)

    def finish(self) -> None:
        """Wait for the structure checks and the payload hashes; :class:`InputError` naming the changeset if
        one fails."""
        for c in self._chain:
            if c.checked is not None:
                c.checked.result()
        for c in self._chain:
            if c.payload is not None:
                c.payload.result()

    def close(self) -> None:
        self._stop = True
        self._private = None
        for c in self._chain:
            if c.checked is not None:
                c.checked.cancel()
        self._checker.shutdown(wait=True)  # a check under way stops at its next frame
        for c in self._chain:
            if c.payload is not None:
                c.payload.cancel()
        self._hasher.shutdown(wait=True)
        for c in self._chain:
            os.close(c.fd)
        self._chain = []

    def __enter__(self) -> PatientReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

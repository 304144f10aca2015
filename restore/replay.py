"""Replay a hospital's chain of changesets into its current state of records.

Changesets are applied in sequence order; each must chain to the one before (``prev`` equals the
previous changeset's hash) and a baseline resets the state.  Tombstones remove every record of the
erased patient; frames of shredded patients cannot be decrypted and are skipped.  The result equals the
hospital's last synced SS-MIX2 state minus opted-out patients (the property the tests check).

Two forms apply the same rules.  :func:`replay` goes changeset by changeset and holds the whole state in
memory: the reference, for tests and small checks.  :class:`PatientReplay` goes *patient by patient*: it
checks each changeset's structure once, noting where each patient's frames lie, then rebuilds one patient
at a time from their frames across the whole chain (payload hashes are checked alongside).  Memory holds
one patient's records plus a small index entry per patient, the first patient is ready as soon as the
index is, and each patient can go on to search and export at once: this is what the restore database and
the disaster-day export use.
"""

from __future__ import annotations

import os
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


@dataclass(repr=False)
class _Located:
    """One checked changeset: its epoch key, raw key entries by token (opened when first needed) and
    where each patient's frames lie."""

    sealed: SealedFile
    fd: int
    epoch: Epoch
    #: token -> (key-table index, raw entry)
    entries: dict[bytes, tuple[int, bytes]]
    #: token -> [(frame number, offset of the frame body, body length)]
    frames: dict[bytes, list[tuple[int, int, int]]]
    tombstones: frozenset[bytes]
    payload: Future[None]

    def key(self, token: bytes) -> KeyEntry:
        index, raw = self.entries[token]
        return open_key_entry(self.epoch, self.sealed, index, raw)


@dataclass(frozen=True)
class RestoredPatient:
    """One patient's current records (canonical encodings) after the whole chain."""

    token: bytes
    records: dict[RecordId, bytes]


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


class PatientReplay:
    """Replay ``sealed`` (a chain from :func:`restore.chain.plan_chain`: baseline first) patient by patient.

    Construction checks every changeset (signature, hospital, chain, key table, the framing and count of
    its frames) and opens its epoch key with ``private``; :meth:`patients` then yields each patient's
    final records, every frame authenticated as it is opened.  The payload hashes, which also vouch for
    frames never opened, are checked meanwhile in a background thread: call :meth:`finish` before
    trusting the whole (it raises if any failed).  Use as a context manager (it holds the files open)."""

    def __init__(
        self, sealed: list[SealedFile], private: RecipientPrivateKey, signer: VerifyKey, *, hospital: str
    ) -> None:
        if not sealed or sealed[0].header.kind != "baseline":
            raise InputError(str(sealed[0].path) if sealed else "-", "a replay starts at a baseline")
        self.stats = PatientReplayStats()
        self._chain: list[_Located] = []
        self._order: dict[bytes, None] = {}
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payload-hash")
        try:
            prev: SealedFile | None = None
            for s in sealed:
                self._chain.append(self._locate(s.path, private, signer, hospital, prev))
                prev = self._chain[-1].sealed
        except BaseException:
            self.close()
            raise
        self.stats.changesets = len(self._chain)
        self.stats.tokens = len(self._order)

    def _locate(
        self,
        path: Path,
        private: RecipientPrivateKey,
        signer: VerifyKey,
        hospital: str,
        prev: SealedFile | None,
    ) -> _Located:
        frames: dict[bytes, list[tuple[int, int, int]]] = {}
        spots: list[tuple[int, int, int, int]] = []
        sealed = verify(path, signer, hospital=hospital, on_frame=lambda *a: spots.append(a), payload=False)
        header = sealed.header
        if prev is not None and (header.sequence != prev.header.sequence + 1 or header.prev != prev.hash):
            raise InputError(str(path), f"does not follow sequence {prev.header.sequence} in the chain")
        epoch = open_epoch(sealed, private)
        fd = os.open(path, os.O_RDONLY)
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = read_key_entries(f, sealed)
        except BaseException:
            os.close(fd)
            raise
        entries = {e[:TOKEN_SIZE]: (i, e) for i, e in enumerate(raw)}
        for number, index, offset, length in spots:
            frames.setdefault(raw[index][:TOKEN_SIZE], []).append((number, offset, length))
        for token in entries:
            self._order.setdefault(token, None)
        self.stats.bytes += sealed.size
        tombstones = frozenset(bytes.fromhex(t) for t in header.tombstones)
        payload = self._hasher.submit(check_payload, sealed)
        return _Located(sealed, fd, epoch, entries, frames, tombstones, payload)

    def patients(self) -> Iterator[RestoredPatient]:
        """Each patient with records left, in the order the chain first names them."""
        dctx = zstandard.ZstdDecompressor()
        for token in self._order:
            records: dict[RecordId, bytes] = {}
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
                            _apply(
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
        """Wait for the payload hashes; :class:`InputError` naming the changeset if one does not match."""
        for c in self._chain:
            c.payload.result()

    def close(self) -> None:
        for c in self._chain:
            c.payload.cancel()
        self._hasher.shutdown(wait=True)
        for c in self._chain:
            os.close(c.fd)
        self._chain = []

    def __enter__(self) -> PatientReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

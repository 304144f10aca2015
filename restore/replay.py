"""Replay a hospital's chain of changesets into its current state of records.

Changesets are applied in sequence order; each must chain to the one before (``prev`` equals the
previous changeset's hash) and a baseline resets the state.  Tombstones remove every record of the
erased patient; frames of shredded patients cannot be decrypted and are skipped.  The result equals the
hospital's last synced SS-MIX2 state minus opted-out patients (the property the tests check).

This in-memory form serves verification and tests; the restore database builds on the same loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from hakobune.errors import InputError
from hakobune.keys import RecipientPrivateKey, VerifyKey
from hakobune.sealed import ZERO_HASH, open_changeset

RecordId = tuple[str, str, str, str, str]


@dataclass
class ReplayState:
    records: dict[RecordId, bytes] = field(default_factory=dict)
    by_token: dict[bytes, set[RecordId]] = field(default_factory=dict)
    sequence: int = 0
    head: str = ZERO_HASH
    changesets: int = 0
    shredded_frames: int = 0

    def put(self, token: bytes, encoded: bytes) -> None:
        doc = orjson.loads(encoded)
        k = doc["r"]["key"]
        rid: RecordId = (k["patient_id"], k["care_date"], k["data_type"], k["order_no"], k["item"])
        self.records[rid] = encoded
        self.by_token.setdefault(token, set()).add(rid)

    def delete(self, token: bytes, rid: RecordId) -> None:
        self.records.pop(rid, None)
        self.by_token.get(token, set()).discard(rid)

    def erase(self, token: bytes) -> None:
        for rid in self.by_token.pop(token, set()):
            self.records.pop(rid, None)


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
            state.records.clear()
            state.by_token.clear()
        for frame in frames:
            for line in frame.ops:
                if line.startswith(b'{"put":'):
                    state.put(frame.token, line[7:].rstrip()[:-1])
                elif line.startswith(b'{"del":'):
                    pid, date, dtype, order, item = orjson.loads(line[7:].rstrip()[:-1])
                    state.delete(frame.token, (pid, date, dtype, order, item))
                else:
                    raise InputError(str(path), "unknown operation in a frame")
        for token in header.tombstones:
            state.erase(bytes.fromhex(token))
        state.sequence, state.head = header.sequence, header.hash
        state.changesets += 1
        state.shredded_frames += stats.shredded_frames
    return state

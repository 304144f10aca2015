"""What the agent has sealed and sent, kept in the state database (tables declared here in :data:`SCHEMA`,
see :data:`agent.state.TABLE_MODULES`).

* ``stream_state``: per stream, the last sealed sequence and its hash (the chain head), the current epoch
  (its key stays here so new patient keys can be wrapped; the agent holds the clear data anyway), and the
  sequence of the last baseline.
* ``patient_key``: each patient's token and data key.  Erasing a patient deletes the key here and sends a
  tombstone so the center shreds its wrapped copies.
* ``sent_unit``: per logical SS-MIX2 unit (patient, care date, data type, order no), the file its records
  came from and each record's content hash: the diff compares against this, never against old files.
* ``outbox``: sealed changesets waiting for (or holding) the center's signed receipt.
* ``quarantine``: files currently refused, with their reason (reported by ``agent status`` and the drill).
* ``excluded_patient``: patients whose data was kept back by an opt-out: if the opt-out is withdrawn, their
  whole folder is read again.
* ``hold``: a day held back by the attack guard until an operator confirms.
* ``research_birth``: each patient's full birth date as last read, for the ages in the research stream
  (only the year-month leaves the hospital).

Every table except ``quarantine``, ``hold`` and ``research_birth`` has a ``stream`` column: the clinical
and research streams keep separate chains, keys and ledgers.

The rows the code handles whole have a typed record here (:class:`StreamState`, :class:`OutboxItem`,
:class:`Hold`, :class:`PatientKey`); the rest are read and written with plain SQL where they are used.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any, NamedTuple

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS stream_state (
        stream VARCHAR NOT NULL,
        last_sequence INTEGER NOT NULL,
        last_hash VARCHAR NOT NULL,
        epoch_id BLOB,
        epoch_key BLOB,
        epoch_sealed BLOB,
        epoch_recipient VARCHAR,
        baseline_sequence INTEGER NOT NULL,
        baseline_at VARCHAR,
        acked_sequence INTEGER NOT NULL,
        PRIMARY KEY (stream)
    )""",
    """
    CREATE TABLE IF NOT EXISTS patient_key (
        stream VARCHAR NOT NULL,
        patient_id VARCHAR NOT NULL,
        token BLOB NOT NULL,
        kid BLOB NOT NULL,
        "key" BLOB NOT NULL,
        created_at VARCHAR NOT NULL,
        PRIMARY KEY (stream, patient_id)
    )""",
    # ``unit``: ``patient/care date/data type/order no``; ``source``: the file name whose records were sent
    # last; ``hashes``: orjson ``{item: content hash}``.
    """
    CREATE TABLE IF NOT EXISTS sent_unit (
        stream VARCHAR NOT NULL,
        unit VARCHAR NOT NULL,
        patient_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        hashes BLOB NOT NULL,
        sequence INTEGER NOT NULL,
        PRIMARY KEY (stream, unit)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_sent_unit_patient ON sent_unit (stream, patient_id)",
    """
    CREATE TABLE IF NOT EXISTS outbox (
        stream VARCHAR NOT NULL,
        sequence INTEGER NOT NULL,
        name VARCHAR NOT NULL,
        header_hash VARCHAR NOT NULL,
        size INTEGER NOT NULL,
        kind VARCHAR NOT NULL,
        created_at VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        attempts INTEGER NOT NULL,
        last_error VARCHAR,
        receipt BLOB,
        acked_at VARCHAR,
        patients INTEGER NOT NULL,
        puts INTEGER NOT NULL,
        dels INTEGER NOT NULL,
        tombstones INTEGER NOT NULL,
        PRIMARY KEY (stream, sequence)
    )""",
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        relpath VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        first_seen VARCHAR NOT NULL,
        last_seen VARCHAR NOT NULL,
        PRIMARY KEY (relpath)
    )""",
    """
    CREATE TABLE IF NOT EXISTS excluded_patient (
        stream VARCHAR NOT NULL,
        patient_id VARCHAR NOT NULL,
        PRIMARY KEY (stream, patient_id)
    )""",
    # ``confirmed_at`` set by an operator lets the next sync ship the day.
    """
    CREATE TABLE IF NOT EXISTS hold (
        id INTEGER NOT NULL,
        at VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        figures BLOB NOT NULL,
        confirmed_at VARCHAR,
        confirmed_by VARCHAR,
        released_sequence INTEGER,
        PRIMARY KEY (id)
    )""",
    # A patient's full birth date as the newest patient record read gave it: research records carry the age
    # at each event, and most changed files do not hold the birth date themselves.
    """
    CREATE TABLE IF NOT EXISTS research_birth (
        patient_id VARCHAR NOT NULL,
        birth_date VARCHAR NOT NULL,
        PRIMARY KEY (patient_id)
    )""",
)


@dataclass(slots=True)
class StreamState:
    """A stream's ``stream_state`` row: its chain head, epoch and baseline."""

    stream: str
    last_sequence: int
    last_hash: str
    epoch_id: bytes | None = None
    epoch_key: bytes | None = None
    epoch_sealed: bytes | None = None
    #: The recipient fingerprint the epoch key is sealed to: a new release key starts a new epoch.
    epoch_recipient: str | None = None
    baseline_sequence: int = 0
    baseline_at: str | None = None
    acked_sequence: int = 0

    @classmethod
    def load(cls, conn: sqlite3.Connection, stream: str) -> StreamState | None:
        row = conn.execute(
            f"SELECT {_STREAM_COLUMNS} FROM stream_state WHERE stream = ?", (stream,)
        ).fetchone()
        return cls(*row) if row is not None else None

    @classmethod
    def all(cls, conn: sqlite3.Connection) -> list[StreamState]:
        return [
            cls(*row) for row in conn.execute(f"SELECT {_STREAM_COLUMNS} FROM stream_state ORDER BY stream")
        ]

    def save(self, conn: sqlite3.Connection) -> None:
        """Insert or update this row."""
        conn.execute(_STREAM_UPSERT, astuple(self))


_STREAM_NAMES = [f.name for f in fields(StreamState)]
_STREAM_COLUMNS = ", ".join(_STREAM_NAMES)
_STREAM_UPSERT = (
    f"INSERT INTO stream_state ({_STREAM_COLUMNS}) VALUES ({', '.join('?' * len(_STREAM_NAMES))})"
    f" ON CONFLICT (stream) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in _STREAM_NAMES[1:])}"
)


class PatientKey(NamedTuple):
    """A patient's token and data key in a stream."""

    token: bytes
    kid: bytes
    key: bytes


def patient_key(conn: sqlite3.Connection, stream: str, patient_id: str) -> PatientKey | None:
    row = conn.execute(
        'SELECT token, kid, "key" FROM patient_key WHERE stream = ? AND patient_id = ?', (stream, patient_id)
    ).fetchone()
    return PatientKey(*row) if row is not None else None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An ``outbox`` row: a sealed changeset and what the center said about it."""

    stream: str
    sequence: int
    name: str
    header_hash: str
    size: int
    kind: str
    created_at: str
    #: ``pending`` (sealed, not yet confirmed by a receipt) or ``acked``.
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    receipt: bytes | None = None
    acked_at: str | None = None
    patients: int = 0
    puts: int = 0
    dels: int = 0
    tombstones: int = 0

    @classmethod
    def select(
        cls, conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = ()
    ) -> Iterator[OutboxItem]:
        """The rows matching ``where`` (an SQL tail: ``WHERE … ORDER BY …``), streamed."""
        for row in conn.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox {where}", params):
            yield cls(*row)

    def insert(self, conn: sqlite3.Connection) -> None:
        conn.execute(_OUTBOX_INSERT, astuple(self))


_OUTBOX_NAMES = [f.name for f in fields(OutboxItem)]
_OUTBOX_COLUMNS = ", ".join(_OUTBOX_NAMES)
_OUTBOX_INSERT = f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES ({', '.join('?' * len(_OUTBOX_NAMES))})"


@dataclass(frozen=True, slots=True)
class Hold:
    """A ``hold`` row: a day the attack guard held back."""

    id: int
    at: str
    reason: str
    figures: bytes
    confirmed_at: str | None
    confirmed_by: str | None
    released_sequence: int | None

    @classmethod
    def select(cls, conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = ()) -> Iterator[Hold]:
        """The rows matching ``where`` (an SQL tail: ``WHERE … ORDER BY …``), streamed."""
        for row in conn.execute(f"SELECT {_HOLD_COLUMNS} FROM hold {where}", params):
            yield cls(*row)


_HOLD_COLUMNS = ", ".join(f.name for f in fields(Hold))

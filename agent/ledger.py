"""What the agent has sealed and sent, kept in the state database (tables declared here, see
:data:`agent.state.TABLE_MODULES`).

* ``stream_state``: per stream, the last sealed sequence and its hash (the chain head), the current epoch
  (its key stays here so new patient keys can be wrapped; the agent holds the clear data anyway), and the
  sequence of the last baseline.
* ``patient_key``: each patient's token and data key.  Erasing a patient deletes the key here and sends a
  tombstone so the center shreds its wrapped copies.
* ``sent_unit``: per logical SS-MIX2 unit (patient, care date, data type, order no), the file its records
  came from and each record's content hash: the diff compares against this, never against old files.
* ``outbox``: sealed changesets waiting for (or holding) the center's signed receipt.
* ``quarantine``: files currently refused, with their reason (reported by ``agent status`` and the drill).
* ``hold``: a day held back by the attack guard until an operator confirms.
* ``research_birth``: each patient's full birth date as last read, for the ages in the research stream
  (only the year-month leaves the hospital).

Every table except ``quarantine``, ``hold`` and ``research_birth`` has a ``stream`` column: the clinical
and research streams keep separate chains, keys and ledgers.
"""

from __future__ import annotations

from sqlalchemy import Index, LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from agent.state import Base


class StreamState(Base):
    __tablename__ = "stream_state"

    stream: Mapped[str] = mapped_column(primary_key=True)
    last_sequence: Mapped[int] = mapped_column(default=0)
    last_hash: Mapped[str]
    epoch_id: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    epoch_key: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    epoch_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    #: The recipient fingerprint the epoch key is sealed to: a new release key starts a new epoch.
    epoch_recipient: Mapped[str | None] = mapped_column(default=None)
    baseline_sequence: Mapped[int] = mapped_column(default=0)
    baseline_at: Mapped[str | None] = mapped_column(default=None)
    acked_sequence: Mapped[int] = mapped_column(default=0)


class PatientKey(Base):
    __tablename__ = "patient_key"

    stream: Mapped[str] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(primary_key=True)
    token: Mapped[bytes] = mapped_column(LargeBinary)
    kid: Mapped[bytes] = mapped_column(LargeBinary)
    key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[str]


class SentUnit(Base):
    __tablename__ = "sent_unit"
    __table_args__ = (Index("ix_sent_unit_patient", "stream", "patient_id"),)

    stream: Mapped[str] = mapped_column(primary_key=True)
    #: ``patient/care date/data type/order no``
    unit: Mapped[str] = mapped_column(primary_key=True)
    patient_id: Mapped[str]
    #: The file name whose records were sent last.
    source: Mapped[str]
    #: orjson ``{item: content hash}``.
    hashes: Mapped[bytes] = mapped_column(LargeBinary)
    sequence: Mapped[int]


class OutboxItem(Base):
    __tablename__ = "outbox"

    stream: Mapped[str] = mapped_column(primary_key=True)
    sequence: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    header_hash: Mapped[str]
    size: Mapped[int]
    kind: Mapped[str]
    created_at: Mapped[str]
    #: ``pending`` (sealed, not yet confirmed by a receipt) or ``acked``.
    status: Mapped[str] = mapped_column(default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(default=None)
    receipt: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    acked_at: Mapped[str | None] = mapped_column(default=None)
    patients: Mapped[int] = mapped_column(default=0)
    puts: Mapped[int] = mapped_column(default=0)
    dels: Mapped[int] = mapped_column(default=0)
    tombstones: Mapped[int] = mapped_column(default=0)


class QuarantinedFile(Base):
    __tablename__ = "quarantine"

    relpath: Mapped[str] = mapped_column(primary_key=True)
    reason: Mapped[str]
    first_seen: Mapped[str]
    last_seen: Mapped[str]


class ExcludedPatient(Base):
    """Patients whose data was kept back by an opt-out: if the opt-out is withdrawn, their whole folder
    is read again."""

    __tablename__ = "excluded_patient"

    stream: Mapped[str] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(primary_key=True)


class Hold(Base):
    """A day the attack guard held back.  ``confirmed_at`` set by an operator lets the next sync ship it."""

    __tablename__ = "hold"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[str]
    reason: Mapped[str]
    figures: Mapped[bytes] = mapped_column(LargeBinary)
    confirmed_at: Mapped[str | None] = mapped_column(default=None)
    confirmed_by: Mapped[str | None] = mapped_column(default=None)
    released_sequence: Mapped[int | None] = mapped_column(default=None)


class ResearchBirth(Base):
    """A patient's full birth date as the newest patient record read gave it: research records carry the
    age at each event, and most changed files do not hold the birth date themselves."""

    __tablename__ = "research_birth"

    patient_id: Mapped[str] = mapped_column(primary_key=True)
    birth_date: Mapped[str]

"""The center's catalog: which hospitals are enrolled and which changesets the center holds for each.

One database, reached by URL: SQLite (``sqlite:///HOME/catalog.db``) is the embedded default, PostgreSQL
(``postgresql+psycopg://…``) serves production, where the big tables (``changesets``, ``tombstones``) are
``PARTITION BY LIST (hospital_id)`` with one partition per hospital, created when the hospital is enrolled.
The schema is owned by Alembic (``center/migrations``); :meth:`Catalog.open` upgrades the database to the
newest revision every time it opens one, so there is no separate migration step.  See ``docs/catalog.md``.

Beside them, two bookkeeping tables (``mirror_acks``: what a mirror center confirmed; ``scrubs``: the
latest scrub of each hospital) feed ``center replicate`` and ``center status``.

The :class:`~sqlalchemy.Table` objects below describe the schema *as the code reads it*; the migrations
create it.  ``tests/center/test_catalog.py`` compares the two, so changing a table means adding a migration
(``versions/000N_….py``) and changing the table here in the same commit.

Every time in the API is a timezone-aware UTC ``datetime`` (a naive one passed in is taken as UTC); the
database stores UTC.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError

from hakobune.errors import ConfigError, HakobuneError, InputError
from hakobune.naming import STREAMS, changeset_name, check_hospital_id, check_stream, parse_changeset_name
from hakobune.sqlite import create_private_file, on_connect

#: The Alembic script directory, shipped inside the ``center`` package.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Sequence numbers of a hospital's stream start here (the first changeset, usually a baseline).
FIRST_SEQUENCE = 1
KINDS = ("baseline", "incremental")
#: Rows fetched at a time by :meth:`Catalog.changesets`.
STREAM_BATCH = 500
#: Rejections counted by :meth:`Catalog.status`.
REJECTION_WINDOW = timedelta(days=7)

DIR_MODE = 0o700
#: Key of the PostgreSQL advisory lock that serializes concurrent migrations ("HAKOBUNE" in ASCII).
_MIGRATION_LOCK = 0x48414B4F42554E45
#: Tables partitioned by hospital on PostgreSQL.
PARTITIONED = ("changesets", "tombstones")
_HASH = re.compile(r"[0-9a-f]{64}")


# --- the rows of the API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HospitalRow:
    id: str
    name: str
    #: Raw 32-byte Ed25519 public key of the hospital's agent (signs its changesets).
    agent_key: bytes
    #: OpenSSH public key line of the hospital's SFTP account.
    ssh_key: str
    enrolled_at: datetime
    active: bool


@dataclass(frozen=True)
class ChangesetRow:
    hospital: str
    stream: str
    sequence: int
    #: SHA-256 of the sealed header, 64 lower-case hex digits.
    header_hash: str
    #: ``header_hash`` of the previous changeset of the same hospital and stream.
    prev_hash: str
    kind: str  # 'baseline' | 'incremental'
    created_at: datetime
    received_at: datetime
    size: int
    #: Where the blob is stored, relative to the center home.
    path: str
    patients: int


@dataclass(frozen=True)
class RejectionRow:
    """An upload ingest refused.  ``hospital`` is None when the upload could not be tied to one."""

    hospital: str | None
    name: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class StreamStatus:
    hospital: str
    name: str
    stream: str
    last_sequence: int | None
    last_created_at: datetime | None
    last_received_at: datetime | None
    #: Hours since the newest stored changeset was created (how old the newest backed-up data is).
    age_hours: float | None
    stale: bool
    changesets: int
    bytes: int
    #: Missing sequence ranges (inclusive) between the last stored changeset and the waiting ones.
    gaps: list[tuple[int, int]]
    #: Sequences received out of order, held in the inbox until the gap before them is filled.
    waiting: list[int]
    #: Rejected uploads in the last 7 days.
    rejections: int
    #: ``<file name>: <reason>`` of the newest of those rejections.
    last_error: str | None
    #: Fingerprint of the mirror center the next three fields are about (None: never replicated).
    mirror: str | None = None
    #: The highest sequence the mirror confirmed with a signed receipt (everything up to it is there).
    mirror_sequence: int | None = None
    #: Sequences the mirror is behind (``last_sequence - mirror_sequence``); None without a mirror.
    mirror_lag: int | None = None
    #: When the last ``center verify`` checked this hospital, and the problems it left (None: never).
    scrub_at: datetime | None = None
    scrub_problems: int | None = None


@dataclass(frozen=True)
class MirrorAck:
    """What one mirror center confirmed of a hospital's stream.  ``sequence`` is the highest sequence such
    that the mirror returned a valid signed receipt for it and every earlier one (0: none yet);
    ``header_hash`` is that changeset's hash.  ``sent`` is the highest sequence uploaded to the mirror."""

    hospital: str
    stream: str
    #: Fingerprint of the mirror's receipt key: acknowledgements of another mirror never count.
    mirror: str
    sequence: int
    header_hash: str
    sent: int
    updated_at: datetime
    last_error: str | None = None


@dataclass(frozen=True)
class ScrubRow:
    """The latest ``center verify`` of one hospital: blobs and bytes checked, problems found, how many of
    them were healed, and the first problem left (``<path>: <reason>``)."""

    hospital: str
    checked_at: datetime
    blobs: int
    bytes: int
    problems: int
    healed: int
    summary: str | None = None

    @property
    def left(self) -> int:
        return self.problems - self.healed


class DuplicateChangeset(HakobuneError):
    """The catalog already holds a changeset with this hospital, stream and sequence.  ``existing`` is the
    stored row: ingest compares its ``header_hash`` to tell a harmless re-upload from a conflict."""

    def __init__(self, row: ChangesetRow, existing: ChangesetRow | None) -> None:
        super().__init__(
            f"{row.hospital}/{changeset_name(check_stream(row.stream), row.sequence)}: already in the catalog"
        )
        self.row = row
        self.existing = existing


# --- schema as the code reads it (created by center/migrations) ----------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime``: ``timestamptz`` on PostgreSQL, UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = to_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else to_utc(value)


metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})

hospitals_table = Table(
    "hospitals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", Text, nullable=False),
    Column("agent_key", LargeBinary, nullable=False),
    Column("ssh_key", Text, nullable=False),
    Column("enrolled_at", UTCDateTime, nullable=False),
    Column("active", Boolean, nullable=False),
    CheckConstraint("length(agent_key) = 32", name="ck_hospitals_agent_key_length"),
)
#: Ids that differ only in case would share an SFTP account (``hkb-<id lower-cased>``): refused.
Index("ux_hospitals_id_folded", func.lower(hospitals_table.c.id), unique=True)

changesets_table = Table(
    "changesets",
    metadata,
    Column(
        "hospital_id", String(32), ForeignKey("hospitals.id", name="fk_changesets_hospital"), primary_key=True
    ),
    Column("stream", String(16), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("header_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("path", Text, nullable=False),
    Column("patients", Integer, nullable=False),
    CheckConstraint("stream IN ('clinical', 'research')", name="ck_changesets_stream"),
    CheckConstraint("kind IN ('baseline', 'incremental')", name="ck_changesets_kind"),
    CheckConstraint("sequence >= 0", name="ck_changesets_sequence"),
    CheckConstraint("size >= 0", name="ck_changesets_size"),
    CheckConstraint("patients >= 0", name="ck_changesets_patients"),
    postgresql_partition_by="LIST (hospital_id)",
)

waiting_table = Table(
    "waiting",
    metadata,
    Column(
        "hospital_id", String(32), ForeignKey("hospitals.id", name="fk_waiting_hospital"), primary_key=True
    ),
    Column("stream", String(16), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
)

tombstones_table = Table(
    "tombstones",
    metadata,
    Column(
        "hospital_id", String(32), ForeignKey("hospitals.id", name="fk_tombstones_hospital"), primary_key=True
    ),
    Column("stream", String(16), primary_key=True),
    Column("token", Text, primary_key=True),
    #: The first changeset that carried the tombstone.
    Column("sequence", BigInteger, nullable=False),
    postgresql_partition_by="LIST (hospital_id)",
)

rejections_table = Table(
    "rejections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hospital_id", String(32), nullable=True),
    Column("name", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_rejections_hospital_at", "hospital_id", "at"),
    Index("ix_rejections_at", "at"),
)


#: Bookkeeping beside the catalog proper: what a mirror center confirmed and the latest scrub of each
#: hospital.  Both can be rebuilt (``center replicate --recheck``, the next ``center verify``).
mirror_acks_table = Table(
    "mirror_acks",
    metadata,
    Column(
        "hospital_id",
        String(32),
        ForeignKey("hospitals.id", name="fk_mirror_acks_hospital"),
        primary_key=True,
    ),
    Column("stream", String(16), primary_key=True),
    Column("mirror", String(32), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("header_hash", String(64), nullable=False),
    Column("sent", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    CheckConstraint("sequence >= 0 AND sent >= 0", name="ck_mirror_acks_sequence"),
)

scrubs_table = Table(
    "scrubs",
    metadata,
    Column(
        "hospital_id",
        String(32),
        ForeignKey("hospitals.id", name="fk_scrubs_hospital"),
        primary_key=True,
    ),
    Column("checked_at", UTCDateTime, nullable=False),
    Column("blobs", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("problems", Integer, nullable=False),
    Column("healed", Integer, nullable=False),
    Column("summary", Text, nullable=True),
)


def to_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def partition_name(table: str, hospital: str) -> str:
    """The name of ``hospital``'s partition of ``table`` on PostgreSQL: ``<table>_h_<id>``, the id kept
    verbatim (a quoted identifier when it holds upper case or hyphens), so distinct ids never collide and the
    name stays within PostgreSQL's 63-byte limit."""
    return f"{table}_h_{check_hospital_id(hospital)}"


# --- opening ------------------------------------------------------------------------------------------


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _on_sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that later needs to
    # write can fail with "database is locked" without waiting for busy_timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("hkb_write") else "BEGIN")


def _reason(e: BaseException) -> str:
    orig = e.orig if isinstance(e, DBAPIError) else e
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ConfigError(
            f"catalog URL {url!r}: not a database URL (use sqlite:///PATH or postgresql+psycopg://…)"
        ) from e
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql" and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(f"catalog URL {url!r}: an in-memory catalog would be lost; give a file path")
        return parsed
    raise ConfigError(
        f"catalog URL {parsed.render_as_string(hide_password=True)!r}: unsupported database "
        "(use sqlite:///PATH or postgresql+psycopg://…)"
    )


def _make_engine(parsed: URL, shown: str) -> Engine:
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True, mode=DIR_MODE)
            create_private_file(path)
        except OSError as e:
            raise ConfigError(f"{path}: cannot create the catalog database ({e.strerror})") from e
        engine = create_engine(parsed)
        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except (ImportError, NoSuchModuleError) as e:
        raise ConfigError(
            f"catalog {shown}: the PostgreSQL driver is missing (pip install 'psycopg[binary]')"
        ) from e


def _migrate(engine: Engine, shown: str) -> None:
    """Bring the database to the newest schema revision, refusing a database that is not a catalog or was
    written by a newer Hakobune."""
    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with engine.connect() as conn:  # a cheap read first: opening an up-to-date catalog takes no lock
        if MigrationContext.configure(conn).get_current_heads() == (head,):
            return
    with _writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":  # two processes opening a new catalog at once
            conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
        current = MigrationContext.configure(conn).get_current_heads()
        if current == (head,):
            return
        if not current:
            foreign = sorted(set(inspect(conn).get_table_names()) - {"alembic_version"})
            if foreign:
                listed = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
                raise ConfigError(
                    f"catalog {shown}: holds other tables ({listed}) and no catalog schema version; "
                    "not a Hakobune catalog"
                )
        for revision in current:
            try:
                known = script.get_revision(revision) is not None
            except CommandError:
                known = False
            if not known:
                raise ConfigError(
                    f"catalog {shown}: schema revision {revision} is newer than this hakobune knows "
                    f"(up to {head}); upgrade hakobune"
                )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# --- the catalog --------------------------------------------------------------------------------------


class Catalog:
    """An open catalog.  Use :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(self, engine: Engine, shown: str) -> None:
        self._engine = engine
        self._writer = _writer(engine)
        #: The URL without its password, for messages.
        self.url = shown

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Open the catalog at ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg://…``; plain
        ``postgresql://`` means psycopg), creating or upgrading its schema.  A SQLite file is created with
        mode 0600 (its directory 0700 when new) and used in WAL mode with foreign keys on.

        Raises :class:`ConfigError` for a bad URL, an unreachable server, or a database that is not a
        catalog (or was written by a newer Hakobune)."""
        parsed = _parse_url(url)
        shown = parsed.render_as_string(hide_password=True)
        engine = _make_engine(parsed, shown)
        try:
            _migrate(engine, shown)
        except DBAPIError as e:
            engine.dispose()
            verb = "cannot connect" if e.connection_invalidated or _is_connect_error(e) else "not usable"
            raise ConfigError(f"catalog {shown}: {verb} ({_reason(e)})") from e
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, shown)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for code that needs Core access (reports, the dashboard)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Release every connection.  The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _write(self) -> AbstractContextManager[Connection]:
        """A write transaction (``with self._write() as conn``): committed when the block ends normally."""
        return self._writer.begin()

    # --- hospitals ---------------------------------------------------------------------------------

    def add_hospital(
        self, id: str, name: str, agent_key: bytes, ssh_key: str, *, at: datetime | None = None
    ) -> HospitalRow:
        """Enroll a hospital (active).  On PostgreSQL this also creates its partitions, in the same
        transaction.  :class:`ConfigError` if the id is invalid or already enrolled, or a key is malformed."""
        check_hospital_id(id)
        _check_keys(id, agent_key, ssh_key)
        row = HospitalRow(
            id=id,
            name=name,
            agent_key=bytes(agent_key),
            ssh_key=ssh_key.strip(),
            enrolled_at=to_utc(at or datetime.now(UTC)),
            active=True,
        )
        try:
            with self._write() as conn:
                h = hospitals_table.c
                same = conn.execute(select(h.id).where(func.lower(h.id) == id.lower())).scalar()
                if same == id:
                    raise ConfigError(f"hospital {id}: already enrolled")
                if same is not None:
                    raise ConfigError(
                        f"hospital {id}: {same} is already enrolled and ids differing only in case "
                        "would share an SFTP account"
                    )
                conn.execute(
                    insert(hospitals_table).values(
                        id=row.id,
                        name=row.name,
                        agent_key=row.agent_key,
                        ssh_key=row.ssh_key,
                        enrolled_at=row.enrolled_at,
                        active=row.active,
                    )
                )
                if conn.dialect.name == "postgresql":
                    _create_partitions(conn, id)
        except IntegrityError as e:  # enrolled concurrently by another process
            raise ConfigError(f"hospital {id}: already enrolled") from e
        return row

    def update_hospital_keys(
        self, id: str, *, agent_key: bytes | None = None, ssh_key: str | None = None
    ) -> HospitalRow:
        """Rotate a hospital's agent signing key and/or SSH key; :class:`ConfigError` if unknown."""
        _check_keys(id, agent_key, ssh_key)
        values: dict[str, Any] = {}
        if agent_key is not None:
            values["agent_key"] = bytes(agent_key)
        if ssh_key is not None:
            values["ssh_key"] = ssh_key.strip()
        with self._write() as conn:
            if values:
                conn.execute(update(hospitals_table).where(hospitals_table.c.id == id).values(**values))
            found = conn.execute(select(hospitals_table).where(hospitals_table.c.id == id)).first()
            if found is None:
                raise ConfigError(f"hospital {id}: not enrolled")
            return _hospital(found)

    def get_hospital(self, id: str) -> HospitalRow | None:
        with self._engine.connect() as conn:
            found = conn.execute(select(hospitals_table).where(hospitals_table.c.id == id)).first()
            return None if found is None else _hospital(found)

    def hospitals(self) -> list[HospitalRow]:
        """Every hospital in the catalog, by id."""
        with self._engine.connect() as conn:
            return [
                _hospital(r) for r in conn.execute(select(hospitals_table).order_by(hospitals_table.c.id))
            ]

    # --- changesets --------------------------------------------------------------------------------

    def add_changeset(self, row: ChangesetRow) -> None:
        """Record a stored changeset.  :class:`DuplicateChangeset` if the catalog already holds this
        (hospital, stream, sequence), whatever its content; the stored row is left as it was."""
        _check_changeset(row)
        try:
            with self._write() as conn:
                if not conn.execute(
                    select(hospitals_table.c.id).where(hospitals_table.c.id == row.hospital)
                ).first():
                    raise ConfigError(f"hospital {row.hospital}: not enrolled")
                conn.execute(
                    insert(changesets_table).values(
                        hospital_id=row.hospital,
                        stream=row.stream,
                        sequence=row.sequence,
                        header_hash=row.header_hash,
                        prev_hash=row.prev_hash,
                        kind=row.kind,
                        created_at=row.created_at,
                        received_at=row.received_at,
                        size=row.size,
                        path=row.path,
                        patients=row.patients,
                    )
                )
        except IntegrityError as e:
            existing = self.get_changeset(row.hospital, row.stream, row.sequence)
            if existing is not None:
                raise DuplicateChangeset(row, existing) from e
            raise InputError(row.path, f"rejected by the catalog ({_reason(e)})") from e

    def get_changeset(self, hospital: str, stream: str, sequence: int) -> ChangesetRow | None:
        c = changesets_table.c
        with self._engine.connect() as conn:
            found = conn.execute(
                select(changesets_table).where(
                    c.hospital_id == hospital, c.stream == stream, c.sequence == sequence
                )
            ).first()
            return None if found is None else _changeset(found)

    def last_changeset(self, hospital: str, stream: str) -> ChangesetRow | None:
        """The stored changeset with the highest sequence, or None."""
        c = changesets_table.c
        with self._engine.connect() as conn:
            found = conn.execute(
                select(changesets_table)
                .where(c.hospital_id == hospital, c.stream == stream)
                .order_by(c.sequence.desc())
                .limit(1)
            ).first()
            return None if found is None else _changeset(found)

    def changesets(self, hospital: str, stream: str, since: int = 0) -> Iterator[ChangesetRow]:
        """The stored changesets of a hospital's stream with ``sequence >= since``, in sequence order,
        streamed from the database (a server-side cursor on PostgreSQL) rather than loaded at once.  The
        connection is held until the iterator is exhausted or closed."""
        c = changesets_table.c
        stmt = (
            select(changesets_table)
            .where(c.hospital_id == hospital, c.stream == stream, c.sequence >= since)
            .order_by(c.sequence)
        )
        with self._engine.connect() as conn:
            for found in conn.execution_options(yield_per=STREAM_BATCH).execute(stmt):
                yield _changeset(found)

    # --- rejections --------------------------------------------------------------------------------

    def add_rejection(
        self, hospital: str | None, name: str, reason: str, *, at: datetime | None = None
    ) -> None:
        """Record an upload that ingest refused (``hospital`` None when it could not be tied to one)."""
        if hospital is not None:
            check_hospital_id(hospital)
        with self._write() as conn:
            conn.execute(
                insert(rejections_table).values(
                    hospital_id=hospital,
                    name=name,
                    reason=" ".join(reason.split()),
                    at=to_utc(at or datetime.now(UTC)),
                )
            )

    def rejections(self, hospital: str | None = None, since: datetime | None = None) -> list[RejectionRow]:
        """Rejections, oldest first: of one hospital (every one when ``hospital`` is None), at or after
        ``since``."""
        r = rejections_table.c
        stmt = select(rejections_table).order_by(r.at, r.id)
        if hospital is not None:
            stmt = stmt.where(r.hospital_id == hospital)
        if since is not None:
            stmt = stmt.where(r.at >= to_utc(since))
        with self._engine.connect() as conn:
            return [RejectionRow(x.hospital_id, x.name, x.reason, x.at) for x in conn.execute(stmt)]

    # --- the inbox's out-of-order changesets and tombstones ---------------------------------------------

    def set_waiting(self, hospital: str, stream: str, sequences: Sequence[int]) -> None:
        """Replace the set of sequences held in ``hospital``'s inbox for ``stream`` (received, verified,
        but not yet storable because an earlier one is missing)."""
        check_stream(stream)
        w = waiting_table.c
        rows = [
            {"hospital_id": hospital, "stream": stream, "sequence": int(s)} for s in sorted(set(sequences))
        ]
        try:
            with self._write() as conn:
                conn.execute(delete(waiting_table).where(w.hospital_id == hospital, w.stream == stream))
                if rows:
                    conn.execute(insert(waiting_table), rows)
        except IntegrityError as e:
            raise ConfigError(f"hospital {hospital}: not enrolled") from e

    def add_tombstones(self, hospital: str, stream: str, sequence: int, tokens: Sequence[str]) -> None:
        """Record the erasure tokens a changeset carried.  Idempotent: a token already recorded for this
        hospital and stream keeps the sequence it was first seen in."""
        check_stream(stream)
        rows = [
            {"hospital_id": hospital, "stream": stream, "token": t, "sequence": sequence}
            for t in dict.fromkeys(tokens)
        ]
        if not rows:
            return
        conflict = ["hospital_id", "stream", "token"]
        stmt = (
            postgresql.insert(tombstones_table).on_conflict_do_nothing(index_elements=conflict)
            if self.dialect == "postgresql"
            else sqlite.insert(tombstones_table).on_conflict_do_nothing(index_elements=conflict)
        )
        try:
            with self._write() as conn:
                if not conn.execute(
                    select(hospitals_table.c.id).where(hospitals_table.c.id == hospital)
                ).first():
                    raise ConfigError(f"hospital {hospital}: not enrolled")
                conn.execute(stmt, rows)
        except IntegrityError as e:
            raise ConfigError(f"hospital {hospital}: tombstones rejected ({_reason(e)})") from e

    def tombstones(self, hospital: str) -> set[str]:
        """Every erasure token of ``hospital``, whichever stream carried it."""
        t = tombstones_table.c
        with self._engine.connect() as conn:
            return set(conn.scalars(select(t.token).where(t.hospital_id == hospital)))

    def tombstones_after(self, hospital: str, stream: str, sequence: int) -> set[str]:
        """The tokens first carried by a changeset of ``stream`` after ``sequence``: exactly those ingest
        shredded in the stored changeset ``sequence`` (a blob restored from a copy must lose them again)."""
        t = tombstones_table.c
        with self._engine.connect() as conn:
            return set(
                conn.scalars(
                    select(t.token).where(
                        t.hospital_id == hospital, t.stream == stream, t.sequence > sequence
                    )
                )
            )

    # --- the mirror's acknowledgements and the scrub results -----------------------------------------

    def mirror_acks(self, mirror: str) -> dict[tuple[str, str], MirrorAck]:
        """What ``mirror`` (its key's fingerprint) confirmed, by (hospital, stream)."""
        m = mirror_acks_table.c
        with self._engine.connect() as conn:
            rows = conn.execute(select(mirror_acks_table).where(m.mirror == mirror))
            return {(x.hospital_id, x.stream): _mirror_ack(x) for x in rows}

    def set_mirror_ack(self, ack: MirrorAck) -> None:
        """Record (replace) what a mirror confirmed of a hospital's stream."""
        check_hospital_id(ack.hospital)
        check_stream(ack.stream)
        if ack.sequence < 0 or ack.sent < 0:
            raise InputError(f"{ack.hospital}/{ack.stream}", "mirror sequences must not be negative")
        m = mirror_acks_table.c
        values = {
            "hospital_id": ack.hospital,
            "stream": ack.stream,
            "mirror": ack.mirror,
            "sequence": ack.sequence,
            "header_hash": ack.header_hash,
            "sent": ack.sent,
            "updated_at": to_utc(ack.updated_at),
            "last_error": None if ack.last_error is None else " ".join(ack.last_error.split()),
        }
        try:
            with self._write() as conn:
                conn.execute(
                    delete(mirror_acks_table).where(
                        m.hospital_id == ack.hospital, m.stream == ack.stream, m.mirror == ack.mirror
                    )
                )
                conn.execute(insert(mirror_acks_table).values(**values))
        except IntegrityError as e:
            raise ConfigError(f"hospital {ack.hospital}: not enrolled") from e

    def latest_mirror(self) -> str | None:
        """The fingerprint of the mirror replicated to most recently, or None."""
        m = mirror_acks_table.c
        with self._engine.connect() as conn:
            found = conn.execute(select(m.mirror).order_by(m.updated_at.desc()).limit(1)).scalar()
            return None if found is None else str(found)

    def record_scrub(self, row: ScrubRow) -> None:
        """Record (replace) the latest scrub of a hospital."""
        check_hospital_id(row.hospital)
        values = {
            "hospital_id": row.hospital,
            "checked_at": to_utc(row.checked_at),
            "blobs": row.blobs,
            "bytes": row.bytes,
            "problems": row.problems,
            "healed": row.healed,
            "summary": None if row.summary is None else " ".join(row.summary.split()),
        }
        try:
            with self._write() as conn:
                conn.execute(delete(scrubs_table).where(scrubs_table.c.hospital_id == row.hospital))
                conn.execute(insert(scrubs_table).values(**values))
        except IntegrityError as e:
            raise ConfigError(f"hospital {row.hospital}: not enrolled") from e

    def scrubs(self) -> dict[str, ScrubRow]:
        """The latest scrub of every hospital that had one."""
        with self._engine.connect() as conn:
            return {
                x.hospital_id: ScrubRow(
                    x.hospital_id, x.checked_at, int(x.blobs), int(x.bytes), x.problems, x.healed, x.summary
                )
                for x in conn.execute(select(scrubs_table))
            }

    # --- status ------------------------------------------------------------------------------------

    def status(
        self, now: datetime | None = None, stale_hours: float = 26.0, *, mirror: str | None = None
    ) -> list[StreamStatus]:
        """One entry per hospital and stream, by hospital id then stream: every hospital's ``clinical``
        stream, and ``research`` where it has changesets, waiting ones or recent rejections.

        ``mirror`` (a mirror key's fingerprint; default: the mirror replicated to most recently) selects
        whose acknowledgements give ``mirror_sequence`` and ``mirror_lag``; the latest scrub of the
        hospital gives ``scrub_at`` and ``scrub_problems`` (problems it left unhealed).

        ``age_hours`` counts from the newest stored changeset's ``created_at``; a stream is ``stale`` when
        its hospital is active and it has no changeset, or the newest is older than ``stale_hours``.
        Rejections of the last 7 days count toward the stream their file name names (``clinical`` when
        the name is not a changeset's)."""
        now = to_utc(now or datetime.now(UTC))
        c, w, r = changesets_table.c, waiting_table.c, rejections_table.c
        agg = (
            select(
                c.hospital_id,
                c.stream,
                func.max(c.sequence).label("last"),
                func.count().label("n"),
                func.coalesce(func.sum(c.size), 0).label("bytes"),
            )
            .group_by(c.hospital_id, c.stream)
            .subquery()
        )
        last_rows = select(changesets_table, agg.c.n, agg.c.bytes).join(
            agg,
            (c.hospital_id == agg.c.hospital_id) & (c.stream == agg.c.stream) & (c.sequence == agg.c.last),
        )
        with self._engine.connect() as conn:
            hospitals = {h.id: h for h in (_hospital(x) for x in conn.execute(select(hospitals_table)))}
            stored = {
                (x.hospital_id, x.stream): (_changeset(x), int(x.n), int(x.bytes))
                for x in conn.execute(last_rows)
            }
            waiting: dict[tuple[str, str], list[int]] = {}
            for x in conn.execute(select(w.hospital_id, w.stream, w.sequence).order_by(w.sequence)):
                waiting.setdefault((x.hospital_id, x.stream), []).append(int(x.sequence))
            rejected: dict[tuple[str, str], list[str]] = {}
            recent = (
                select(r.hospital_id, r.name, r.reason)
                .where(r.hospital_id.is_not(None), r.at >= now - REJECTION_WINDOW)
                .order_by(r.at, r.id)
            )
            for x in conn.execute(recent):
                parsed = parse_changeset_name(x.name)
                key = (x.hospital_id, parsed[0] if parsed else "clinical")
                rejected.setdefault(key, []).append(f"{x.name}: {x.reason}")
        mirror = mirror or self.latest_mirror()
        acks = self.mirror_acks(mirror) if mirror else {}
        scrubs = self.scrubs()
        keys = {(h, "clinical") for h in hospitals} | set(stored) | set(waiting) | set(rejected)
        keys = {k for k in keys if k[0] in hospitals}
        out = []
        for hospital, stream in sorted(keys, key=lambda k: (k[0], _stream_order(k[1]))):
            h = hospitals[hospital]
            last, count, size = stored.get((hospital, stream), (None, 0, 0))
            held = waiting.get((hospital, stream), [])
            errors = rejected.get((hospital, stream), [])
            age = None if last is None else (now - last.created_at).total_seconds() / 3600
            ack = acks.get((hospital, stream))
            mirrored = None if mirror is None else (ack.sequence if ack else 0)
            scrub = scrubs.get(hospital)
            out.append(
                StreamStatus(
                    hospital=hospital,
                    name=h.name,
                    stream=stream,
                    last_sequence=None if last is None else last.sequence,
                    last_created_at=None if last is None else last.created_at,
                    last_received_at=None if last is None else last.received_at,
                    age_hours=age,
                    stale=h.active and (age is None or age > stale_hours),
                    changesets=count,
                    bytes=size,
                    gaps=gaps(None if last is None else last.sequence, held),
                    waiting=held,
                    rejections=len(errors),
                    last_error=errors[-1] if errors else None,
                    mirror=mirror,
                    mirror_sequence=mirrored,
                    mirror_lag=None
                    if mirrored is None
                    else max((last.sequence if last else 0) - mirrored, 0),
                    scrub_at=None if scrub is None else scrub.checked_at,
                    scrub_problems=None if scrub is None else scrub.left,
                )
            )
        return out


def gaps(last: int | None, waiting: Iterable[int]) -> list[tuple[int, int]]:
    """Missing sequence ranges (inclusive) between ``last`` stored (None: nothing stored yet, the stream
    starts at :data:`FIRST_SEQUENCE`) and the ``waiting`` ones; waiting sequences at or below ``last`` are
    ignored."""
    expected = FIRST_SEQUENCE if last is None else last + 1
    out = []
    for s in sorted(set(waiting)):
        if s < expected:
            continue
        if s > expected:
            out.append((expected, s - 1))
        expected = s + 1
    return out


def _writer(engine: Engine) -> Engine:
    """``engine`` for writing: on SQLite its transactions begin with ``BEGIN IMMEDIATE``."""
    return engine.execution_options(hkb_write=True)


def _stream_order(stream: str) -> int:
    return STREAMS.index(stream) if stream in STREAMS else len(STREAMS)


def _is_connect_error(e: DBAPIError) -> bool:
    orig = e.orig
    if isinstance(orig, sqlite3.Error):
        return False
    return type(orig).__name__ == "OperationalError"


def _check_keys(hospital: str, agent_key: bytes | None, ssh_key: str | None) -> None:
    if agent_key is not None and len(agent_key) != 32:
        raise ConfigError(f"hospital {hospital}: agent key must be a raw 32-byte Ed25519 public key")
    if ssh_key is not None and (not ssh_key.strip() or "\n" in ssh_key.strip()):
        raise ConfigError(f"hospital {hospital}: SSH key must be one OpenSSH public key line")


def _check_changeset(row: ChangesetRow) -> None:
    check_hospital_id(row.hospital)
    stream = check_stream(row.stream)
    where = f"{row.hospital}/{changeset_name(stream, max(row.sequence, 0))}"
    if row.sequence < 0:
        raise InputError(where, f"negative sequence {row.sequence}")
    if not _HASH.fullmatch(row.header_hash):
        raise InputError(where, "header_hash must be 64 lower-case hex digits")
    if len(row.prev_hash) > 64:
        raise InputError(where, "prev_hash is longer than 64 characters")
    if row.kind not in KINDS:
        raise InputError(where, f"bad kind {row.kind!r}: expected one of {', '.join(KINDS)}")
    if row.size < 0 or row.patients < 0:
        raise InputError(where, "size and patients must not be negative")
    p = PurePosixPath(row.path)
    if not row.path or p.is_absolute() or ".." in p.parts:
        raise InputError(where, f"path {row.path!r} must be relative to the center home")


def _create_partitions(conn: Connection, hospital: str) -> None:
    quote = conn.dialect.identifier_preparer.quote
    value = check_hospital_id(hospital)  # letters, digits, hyphens: safe inside a literal
    for table in PARTITIONED:
        conn.exec_driver_sql(
            f"CREATE TABLE {quote(partition_name(table, hospital))} PARTITION OF {table} "
            f"FOR VALUES IN ('{value}')"
        )


def _hospital(x: Row[Any]) -> HospitalRow:
    return HospitalRow(
        id=x.id,
        name=x.name,
        agent_key=bytes(x.agent_key),
        ssh_key=x.ssh_key,
        enrolled_at=x.enrolled_at,
        active=bool(x.active),
    )


def _mirror_ack(x: Row[Any]) -> MirrorAck:
    return MirrorAck(
        hospital=x.hospital_id,
        stream=x.stream,
        mirror=x.mirror,
        sequence=int(x.sequence),
        header_hash=x.header_hash,
        sent=int(x.sent),
        updated_at=x.updated_at,
        last_error=x.last_error,
    )


def _changeset(x: Row[Any]) -> ChangesetRow:
    return ChangesetRow(
        hospital=x.hospital_id,
        stream=x.stream,
        sequence=int(x.sequence),
        header_hash=x.header_hash,
        prev_hash=x.prev_hash,
        kind=x.kind,
        created_at=x.created_at,
        received_at=x.received_at,
        size=int(x.size),
        path=x.path,
        patients=int(x.patients),
    )

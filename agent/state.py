"""The agent's local state database: one SQLite file (``HOME/state.db``) holding consent and, later, what has
been sent.  It is the agent's memory between runs, so it is opened in WAL mode with real transactions, and
it is readable only by its owner (mode 0600): it lists patient IDs.

Adding a table
--------------
Declare a model here or in one of :data:`TABLE_MODULES`, subclassing :class:`Base` with typed
``Mapped[...]`` columns.  :meth:`StateDB.open`
runs ``create_all`` on every open, so a *new* table needs no migration: existing databases gain it the next
time the agent starts.  Changing an *existing* table (a new column, a new index, a data fix) needs a
migration: bump :data:`SCHEMA_VERSION` to ``n + 1`` and register ``MIGRATIONS[n] = fn``, where ``fn(conn)``
upgrades a version-``n`` database in place.  Migrations run in order inside the opening transaction; a
database written by a newer agent is refused rather than guessed at.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from sqlalchemy import (
    CheckConstraint,
    Connection,
    Engine,
    Index,
    create_engine,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hakobune.errors import ConfigError
from hakobune.sqlite import create_private_file, on_connect

#: The schema this code writes.  Bump it (and add a migration) when an existing table changes.
SCHEMA_VERSION = 1

Migration = Callable[[Connection], None]
#: ``MIGRATIONS[n]`` upgrades a version-``n`` database to version ``n + 1``.
MIGRATIONS: dict[int, Migration] = {}

DIR_MODE = 0o700


#: Modules that declare more tables of this database; :meth:`StateDB.open` imports them so that every table
#: exists whichever part of the agent opened the file first.
TABLE_MODULES = ("agent.fileindex", "agent.ledger")


def utc_now() -> str:
    """The current time as the state database stores it: UTC ISO 8601 to the second, ``…Z``."""
    return to_iso(datetime.now(UTC))


def to_iso(moment: datetime) -> str:
    """``moment`` as UTC ISO 8601 text (``2025-04-01T09:30:00Z``); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Base(DeclarativeBase):
    """The one declarative base of the state database: every table of ``state.db`` subclasses it."""


class SchemaVersion(Base):
    """A single row: the schema version of this file."""

    __tablename__ = "schema_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]


class Consent(Base):
    """A patient's current opt-out.  No row means no opt-out (everything may be sent)."""

    __tablename__ = "consent"
    __table_args__ = (CheckConstraint("scope IN ('all', 'research')", name="known_scope"),)

    patient_id: Mapped[str] = mapped_column(primary_key=True)
    scope: Mapped[str]
    updated_at: Mapped[str]
    #: Where the current value came from: ``csv:<file name>`` or ``cli``.
    source: Mapped[str]


class ConsentEvent(Base):
    """Append-only history of consent changes.  ``old_scope`` None: the patient had no opt-out;
    ``new_scope`` None: the opt-out was withdrawn."""

    __tablename__ = "consent_event"
    __table_args__ = (Index("ix_consent_event_patient", "patient_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    patient_id: Mapped[str]
    old_scope: Mapped[str | None]
    new_scope: Mapped[str | None]
    at: Mapped[str]
    source: Mapped[str]


def _on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


class StateDB:
    """An open state database.  Use :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(self, path: Path, engine: Engine) -> None:
        self.path = path
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, path: Path) -> StateDB:
        """Open (creating if needed) the state database at ``path``: parent directory made (0700 when
        new), file mode 0600, WAL mode, schema created or migrated to :data:`SCHEMA_VERSION`.

        Raises :class:`ConfigError` if the file is not a state database or was written by a newer agent.
        """
        path = Path(path)
        for module in TABLE_MODULES:
            importlib.import_module(module)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            create_private_file(path)
        except OSError as e:
            raise ConfigError(f"{path}: cannot create the agent state database ({e.strerror})") from e
        engine = create_engine(f"sqlite:///{path}")
        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", _on_begin)
        try:
            with engine.begin() as conn:
                _prepare_schema(conn, path)
        except DatabaseError as e:
            engine.dispose()
            raise ConfigError(f"{path}: not a usable agent state database ({_reason(e)})") from e
        except BaseException:
            engine.dispose()
            raise
        return cls(path, engine)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for code that needs Core access (bulk reads)."""
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends normally, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self.session() as s:
            return s.scalars(select(SchemaVersion.version)).one()

    def close(self) -> None:
        """Release every connection.  The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _reason(e: DatabaseError) -> str:
    orig = e.orig
    return str(orig) if isinstance(orig, sqlite3.Error) else type(e).__name__


def _prepare_schema(conn: Connection, path: Path) -> None:
    inspector = inspect(conn)
    if not inspector.has_table(SchemaVersion.__tablename__):
        if inspector.get_table_names():
            raise ConfigError(f"{path}: has tables but no schema_version; not an agent state database")
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaVersion).values(id=1, version=SCHEMA_VERSION))
        return
    version = conn.execute(select(SchemaVersion.version)).scalars().one_or_none()
    if version is None:
        raise ConfigError(f"{path}: schema_version is empty; not an agent state database")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: schema version {version} was written by a newer agent "
            f"(this one knows up to {SCHEMA_VERSION}); upgrade hakobune"
        )
    while version < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise ConfigError(f"{path}: no migration from schema version {version}")
        migrate(conn)
        version += 1
    # New tables need no migration: create whatever this version declares and the file lacks.
    Base.metadata.create_all(conn)
    conn.execute(update(SchemaVersion).values(version=version))

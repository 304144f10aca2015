"""The agent's local state database: one SQLite file (``HOME/state.db``) holding consent and, later, what has
been sent.  It is the agent's memory between runs, so it is opened in WAL mode with real transactions, and
it is readable only by its owner (mode 0600): it lists patient IDs.

It is one embedded file that never needs another database, so it is used through the stdlib
:mod:`sqlite3` module directly (the center's catalog, which may be PostgreSQL, keeps SQLAlchemy): a daily
sync then costs neither SQLAlchemy's import nor its per-row objects.

Adding a table
--------------
Write its DDL in the ``SCHEMA`` tuple of the module that owns it: this one (``consent``,
``consent_event``), :mod:`agent.ledger` (what was sealed and sent) or :mod:`agent.fileindex` (the file
index), as ``CREATE TABLE IF NOT EXISTS …`` followed by its ``CREATE INDEX IF NOT EXISTS …``; a new module
with tables goes into :data:`TABLE_MODULES`.  The rows are read and written with plain SQL on the
connection :meth:`StateDB.transaction` gives, as tuples or a small typed record where the code needs one
(see :mod:`agent.ledger`).  :meth:`StateDB.open` runs every ``SCHEMA`` statement on every open, so a
*new* table needs no migration: existing databases gain it the next time the agent starts.  Changing an
*existing* table (a new column, a new index, a data fix) needs a migration: bump :data:`SCHEMA_VERSION`
to ``n + 1`` and register ``MIGRATIONS[n] = fn``, where ``fn(conn)`` upgrades a version-``n`` database in
place (and edit the DDL so that new files are created as migrated ones end up).  Migrations run in order
inside the opening transaction; a database written by a newer agent is refused rather than guessed at.
"""

from __future__ import annotations

import importlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from hakobune.errors import ConfigError
from hakobune.sqlite import configure, create_private_file

#: The schema this code writes.  Bump it (and add a migration) when an existing table changes.
SCHEMA_VERSION = 1

Migration = Callable[[sqlite3.Connection], None]
#: ``MIGRATIONS[n]`` upgrades a version-``n`` database to version ``n + 1``.
MIGRATIONS: dict[int, Migration] = {}

DIR_MODE = 0o700
#: SQLite's page cache per connection, in KiB (SQLite's default is 2,000).  The agent's reads are streams and
#: point lookups, and its big writes (a baseline's rows) go in key order, so a small cache costs little
#: time; every connection's cache counts in the daily sync's peak memory.
CACHE_KIB = 512

#: Modules that declare more tables of this database (in their ``SCHEMA``); :meth:`StateDB.open` creates
#: them all, whichever part of the agent opened the file first.
TABLE_MODULES = ("agent.fileindex", "agent.ledger")

#: A single row: the schema version of this file.
VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT single_row CHECK (id = 1)
)"""

SCHEMA = (
    # A patient's current opt-out.  No row means no opt-out (everything may be sent).  ``source``: where
    # the current value came from, ``csv:<file name>`` or ``cli``.
    """
    CREATE TABLE IF NOT EXISTS consent (
        patient_id VARCHAR NOT NULL,
        scope VARCHAR NOT NULL,
        updated_at VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        PRIMARY KEY (patient_id),
        CONSTRAINT known_scope CHECK (scope IN ('all', 'research'))
    )""",
    # Append-only history of consent changes.  ``old_scope`` NULL: the patient had no opt-out;
    # ``new_scope`` NULL: the opt-out was withdrawn.
    """
    CREATE TABLE IF NOT EXISTS consent_event (
        id INTEGER NOT NULL,
        patient_id VARCHAR NOT NULL,
        old_scope VARCHAR,
        new_scope VARCHAR,
        at VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_consent_event_patient ON consent_event (patient_id, id)",
)


def utc_now() -> str:
    """The current time as the state database stores it: UTC ISO 8601 to the second, ``…Z``."""
    return to_iso(datetime.now(UTC))


def to_iso(moment: datetime) -> str:
    """``moment`` as UTC ISO 8601 text (``2025-04-01T09:30:00Z``); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StateDB:
    """An open state database.  Use :meth:`open`; close with :meth:`close` or a ``with`` block.

    Connections are kept for reuse: :meth:`transaction` and :meth:`connection` each take one that nobody
    else holds, so a long read (the file index streaming its rows) and the build's transaction run side by
    side on two connections, as SQLite's WAL mode allows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> StateDB:
        """Open (creating if needed) the state database at ``path``: parent directory made (0700 when
        new), file mode 0600, WAL mode, schema created or migrated to :data:`SCHEMA_VERSION`.

        Raises :class:`ConfigError` if the file is not a state database or was written by a newer agent.
        """
        path = Path(path)
        schema = [VERSION_TABLE, *SCHEMA]
        for name in TABLE_MODULES:
            schema.extend(importlib.import_module(name).SCHEMA)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            create_private_file(path)
        except OSError as e:
            raise ConfigError(f"{path}: cannot create the agent state database ({e.strerror})") from e
        db = cls(path)
        try:
            with db.transaction() as conn:
                _prepare_schema(conn, path, schema)
        except sqlite3.DatabaseError as e:
            db.close()
            raise ConfigError(f"{path}: not a usable agent state database ({e})") from e
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own, in autocommit mode (the caller issues BEGIN and COMMIT), for bulk reads
        and for writes in short transactions of their own (the file index)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:  # a caller that raised mid-transaction: never hand on its writes
                conn.rollback()
            with self._lock:
                self._idle.append(conn)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction (BEGIN … COMMIT) on a connection of its own: committed when the block ends
        normally, rolled back if it raises."""
        with self.connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self.connection() as conn:
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
        return int(version)

    def close(self) -> None:
        """Close every connection.  The object must not be used afterwards."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        # The pool hands a connection to one user at a time, whichever thread opened it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            configure(conn)
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except BaseException:
            conn.close()
            raise
        return conn


def _prepare_schema(conn: sqlite3.Connection, path: Path, schema: Iterable[str]) -> None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables:
            raise ConfigError(f"{path}: has tables but no schema_version; not an agent state database")
        for ddl in schema:
            conn.execute(ddl)
        conn.execute("INSERT INTO schema_version (id, version) VALUES (1, ?)", (SCHEMA_VERSION,))
        return
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        raise ConfigError(f"{path}: schema_version is empty; not an agent state database")
    version = int(row[0])
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
    for ddl in schema:
        conn.execute(ddl)
    if version != int(row[0]):
        conn.execute("UPDATE schema_version SET version = ?", (version,))

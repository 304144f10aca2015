"""How Hakobune opens its SQLite files (the agent's state database, the center's default catalog)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

#: SQLite files list patient IDs or hospital keys: readable by their owner only.
FILE_MODE = 0o600
#: How long a writer waits for another process (a daemon vs. an operator's CLI) to release the lock.
BUSY_TIMEOUT_MS = 10_000


def configure(conn: sqlite3.Connection) -> None:
    """WAL, foreign keys, a busy timeout, and transactions taken away from the sqlite3 module (which
    neither wraps DDL nor begins before SELECT): the caller issues BEGIN and COMMIT itself, so every
    transaction is one real SQLite transaction."""
    conn.isolation_level = None
    cursor = conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    """SQLAlchemy ``connect`` listener (the center's SQLite catalog): :func:`configure`, so that
    SQLAlchemy's ``begin`` event issues BEGIN and every session is one real SQLite transaction."""
    configure(dbapi_connection)


def create_private_file(path: Path) -> None:
    """Create ``path`` if missing with mode 0600 (never briefly world-readable), and tighten an existing
    one.  SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
    os.chmod(path, FILE_MODE)

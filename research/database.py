"""The de-identified research database file: open or create it, and export it as Parquet.

One DuckDB file holds the tables of :mod:`research.schema` (what analyses read) and one table that only
ingest uses:

* ``patient_records``: every patient record received, by ``rkey`` (a hospital may send more than one
  patient record per patient, one per SS-MIX2 ADT-00 file).  ``patients`` holds one row per pseudonym,
  rebuilt from it: the date-independent record (care date ``-``) first, else the newest care date.

The file is the embedded default; ``export-parquet`` writes each analysis table as a Parquet file, the
open format other tools (and larger engines) read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb

from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from research.schema import SCHEMA_VERSION, TABLES, create_all

INGEST_TABLES: dict[str, str] = {
    "patient_records": """
        CREATE TABLE IF NOT EXISTS patient_records (
            rkey VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            care_date VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            link VARCHAR,
            sex VARCHAR NOT NULL,
            birth_ym VARCHAR
        )""",
}

#: DuckDB's memory cap for ingest (``research ingest --memory-limit``): what is staged beyond it spills to
#: :func:`temp_directory`, so ingest's peak memory does not grow with a hospital's size.
INGEST_MEMORY_LIMIT = "256MB"

#: The analysis tables written by ``export-parquet`` (the ingest bookkeeping stays in the database).
EXPORTED = tuple(TABLES)


@dataclass(frozen=True)
class LastIngested:
    sequence: int
    hash: str


class ResearchDB:
    """An open research database.  Use :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(self, path: Path, conn: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: Path, *, create: bool = True, memory_limit: str | None = None) -> ResearchDB:
        """Open the database at ``path`` (created with every table when ``create`` and missing).
        ``memory_limit`` caps DuckDB's memory (``"2GB"``; default: DuckDB's own, 80% of RAM, which it
        fills as cache).  :class:`InputError` if it is not a research database or was written by a
        newer version."""
        path = Path(path)
        if not create and not path.exists():
            raise InputError(str(path), "research database not found (run 'hakobune research ingest' first)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = duckdb.connect(str(path))
        except (OSError, duckdb.Error) as e:
            raise InputError(str(path), f"cannot open as a research database ({first_line(e)})") from None
        try:
            version = _schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise InputError(
                    str(path),
                    f"schema version {version} was written by a newer hakobune (this one knows "
                    f"{SCHEMA_VERSION}); upgrade hakobune",
                )
            # Ingest never relies on row order; without it DuckDB streams large inserts in less memory.
            conn.execute("SET preserve_insertion_order = false")
            # Past its memory limit DuckDB spills here (beside the database, never the working folder).
            conn.execute("SET temp_directory = ?", [str(temp_directory(path))])
            conn.execute("SET enable_progress_bar = false")
            if memory_limit is not None:
                conn.execute("SET memory_limit = ?", [memory_limit])
            create_all(conn)
            for ddl in INGEST_TABLES.values():
                conn.execute(ddl)
        except duckdb.Error as e:
            conn.close()
            raise InputError(str(path), f"not a usable research database ({first_line(e)})") from None
        except BaseException:
            conn.close()
            raise
        os.chmod(path, 0o600)
        return cls(path, conn)

    def last_ingested(self, source: str) -> LastIngested | None:
        """The newest changeset of ``source`` applied, or None."""
        row = self.conn.execute(
            "SELECT sequence, hash FROM ingested WHERE source = ? ORDER BY sequence DESC LIMIT 1", [source]
        ).fetchone()
        return LastIngested(int(row[0]), str(row[1])) if row else None

    def counts(self) -> dict[str, int]:
        """Rows per analysis table."""
        return {t: int(self._scalar(f"SELECT count(*) FROM {t}")) for t in TABLES}

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.conn.execute(sql, params or []).fetchone()
        assert row is not None
        return row[0]

    def export_parquet(self, out: Path) -> dict[str, Path]:
        """Write every analysis table to ``out/<table>.parquet`` (each written under a temporary name,
        fsynced, then renamed).  Returns the files by table."""
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        written: dict[str, Path] = {}
        for table in EXPORTED:
            target = out / f"{table}.parquet"
            tmp = out / f".{table}.parquet.tmp"
            tmp.unlink(missing_ok=True)
            try:
                self.conn.execute(f"COPY {table} TO '{_sql_path(tmp)}' (FORMAT parquet)")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            written[table] = target
        fsync_dir(out)
        return written

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResearchDB:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def temp_directory(path: Path) -> Path:
    """Where DuckDB spills what exceeds its memory limit: ``<database>.tmp`` beside the database (DuckDB
    removes its files on close, and a crashed process's files at the next open)."""
    return path.with_name(path.name + ".tmp")


def _schema_version(conn: duckdb.DuckDBPyConnection) -> int | None:
    has_meta = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
    ).fetchone()
    if not has_meta or not has_meta[0]:
        return None
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def _sql_path(path: Path) -> str:
    """A path as an SQL string literal's content (COPY takes no parameters)."""
    return str(path).replace("'", "''")


def first_line(e: BaseException) -> str:
    """A database error as one line for an operator (DuckDB's messages run over several)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

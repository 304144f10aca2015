"""The agent state database: creation, permissions, WAL, transactions, schema versioning, and files written
by earlier agents (whose schema SQLAlchemy laid out)."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path

import pytest

import agent.state as state_mod
from agent.consent import ConsentRegistry, Scope
from agent.fileindex import FileIndex
from agent.ledger import OutboxItem, StreamState
from agent.state import StateDB, to_iso
from hakobune.errors import ConfigError

#: The schema as SQLAlchemy created it (agent 0.x, schema version 1), captured once from `sqlite_master`.
LEGACY_DDL = (
    (
        "CREATE TABLE schema_version (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tversion INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (id), \n"
        "\tCONSTRAINT single_row CHECK (id = 1)\n"
        ")"
    ),
    (
        "CREATE TABLE consent (\n"
        "\tpatient_id VARCHAR NOT NULL, \n"
        "\tscope VARCHAR NOT NULL, \n"
        "\tupdated_at VARCHAR NOT NULL, \n"
        "\tsource VARCHAR NOT NULL, \n"
        "\tPRIMARY KEY (patient_id), \n"
        "\tCONSTRAINT known_scope CHECK (scope IN ('all', 'research'))\n"
        ")"
    ),
    (
        "CREATE TABLE consent_event (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tpatient_id VARCHAR NOT NULL, \n"
        "\told_scope VARCHAR, \n"
        "\tnew_scope VARCHAR, \n"
        "\tat VARCHAR NOT NULL, \n"
        "\tsource VARCHAR NOT NULL, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    ("CREATE INDEX ix_consent_event_patient ON consent_event (patient_id, id)"),
    (
        "CREATE TABLE file_index (\n"
        "\trelpath VARCHAR NOT NULL, \n"
        "\tsize INTEGER NOT NULL, \n"
        "\tmtime_ns INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (relpath)\n"
        ")\n"
        " WITHOUT ROWID\n"
        "\n"
        ""
    ),
    (
        "CREATE TABLE pending_change (\n"
        "\tleaf_dir VARCHAR NOT NULL, \n"
        "\tname VARCHAR NOT NULL, \n"
        "\tchange VARCHAR NOT NULL, \n"
        "\tsize INTEGER, \n"
        "\tmtime_ns INTEGER, \n"
        "\tPRIMARY KEY (leaf_dir, name), \n"
        "\tCONSTRAINT known_change CHECK (change IN ('added', 'removed', 'rewritten'))\n"
        ")\n"
        " WITHOUT ROWID\n"
        "\n"
        ""
    ),
    (
        "CREATE TABLE scan_state (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tfiles INTEGER NOT NULL, \n"
        "\tjournal_file VARCHAR, \n"
        "\tjournal_offset INTEGER, \n"
        "\treread_file VARCHAR, \n"
        "\treread_offset INTEGER, \n"
        "\tlast_walk_at VARCHAR, \n"
        "\tlast_verify_at VARCHAR, \n"
        "\tlast_commit_at VARCHAR, \n"
        "\tpending_status VARCHAR NOT NULL, \n"
        "\tpending_token VARCHAR, \n"
        "\tpending_mode VARCHAR, \n"
        "\tpending_started_at VARCHAR, \n"
        "\tpending_journal_file VARCHAR, \n"
        "\tpending_journal_offset INTEGER, \n"
        "\tPRIMARY KEY (id), \n"
        "\tCONSTRAINT single_row CHECK (id = 1), \n"
        "\tCONSTRAINT known_status CHECK (pending_status IN ('none', 'scanning', 'ready'))\n"
        ")"
    ),
    (
        "CREATE TABLE stream_state (\n"
        "\tstream VARCHAR NOT NULL, \n"
        "\tlast_sequence INTEGER NOT NULL, \n"
        "\tlast_hash VARCHAR NOT NULL, \n"
        "\tepoch_id BLOB, \n"
        "\tepoch_key BLOB, \n"
        "\tepoch_sealed BLOB, \n"
        "\tepoch_recipient VARCHAR, \n"
        "\tbaseline_sequence INTEGER NOT NULL, \n"
        "\tbaseline_at VARCHAR, \n"
        "\tacked_sequence INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (stream)\n"
        ")"
    ),
    (
        "CREATE TABLE patient_key (\n"
        "\tstream VARCHAR NOT NULL, \n"
        "\tpatient_id VARCHAR NOT NULL, \n"
        "\ttoken BLOB NOT NULL, \n"
        "\tkid BLOB NOT NULL, \n"
        '\t"key" BLOB NOT NULL, \n'
        "\tcreated_at VARCHAR NOT NULL, \n"
        "\tPRIMARY KEY (stream, patient_id)\n"
        ")"
    ),
    (
        "CREATE TABLE sent_unit (\n"
        "\tstream VARCHAR NOT NULL, \n"
        "\tunit VARCHAR NOT NULL, \n"
        "\tpatient_id VARCHAR NOT NULL, \n"
        "\tsource VARCHAR NOT NULL, \n"
        "\thashes BLOB NOT NULL, \n"
        "\tsequence INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (stream, unit)\n"
        ")"
    ),
    ("CREATE INDEX ix_sent_unit_patient ON sent_unit (stream, patient_id)"),
    (
        "CREATE TABLE outbox (\n"
        "\tstream VARCHAR NOT NULL, \n"
        "\tsequence INTEGER NOT NULL, \n"
        "\tname VARCHAR NOT NULL, \n"
        "\theader_hash VARCHAR NOT NULL, \n"
        "\tsize INTEGER NOT NULL, \n"
        "\tkind VARCHAR NOT NULL, \n"
        "\tcreated_at VARCHAR NOT NULL, \n"
        "\tstatus VARCHAR NOT NULL, \n"
        "\tattempts INTEGER NOT NULL, \n"
        "\tlast_error VARCHAR, \n"
        "\treceipt BLOB, \n"
        "\tacked_at VARCHAR, \n"
        "\tpatients INTEGER NOT NULL, \n"
        "\tputs INTEGER NOT NULL, \n"
        "\tdels INTEGER NOT NULL, \n"
        "\ttombstones INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (stream, sequence)\n"
        ")"
    ),
    (
        "CREATE TABLE quarantine (\n"
        "\trelpath VARCHAR NOT NULL, \n"
        "\treason VARCHAR NOT NULL, \n"
        "\tfirst_seen VARCHAR NOT NULL, \n"
        "\tlast_seen VARCHAR NOT NULL, \n"
        "\tPRIMARY KEY (relpath)\n"
        ")"
    ),
    (
        "CREATE TABLE excluded_patient (\n"
        "\tstream VARCHAR NOT NULL, \n"
        "\tpatient_id VARCHAR NOT NULL, \n"
        "\tPRIMARY KEY (stream, patient_id)\n"
        ")"
    ),
    (
        "CREATE TABLE hold (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tat VARCHAR NOT NULL, \n"
        "\treason VARCHAR NOT NULL, \n"
        "\tfigures BLOB NOT NULL, \n"
        "\tconfirmed_at VARCHAR, \n"
        "\tconfirmed_by VARCHAR, \n"
        "\treleased_sequence INTEGER, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    (
        "CREATE TABLE research_birth (\n"
        "\tpatient_id VARCHAR NOT NULL, \n"
        "\tbirth_date VARCHAR NOT NULL, \n"
        "\tPRIMARY KEY (patient_id)\n"
        ")"
    ),
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _schema(path: Path) -> list[tuple[str, str, str | None]]:
    """(type, name, SQL without whitespace) of every schema object, by name."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    return [(t, n, re.sub(r"\s+", "", sql) if sql is not None else None) for t, n, sql in rows]


def _legacy_db(path: Path) -> None:
    """A state database as the agent wrote it before this version (SQLAlchemy's DDL, schema version 1)."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for ddl in LEGACY_DDL:
            conn.execute(ddl)
        conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 1)")
        conn.execute("INSERT INTO consent VALUES ('p1', 'research', '2025-01-01T00:00:00Z', 'cli')")
        conn.execute(
            "INSERT INTO stream_state VALUES ('clinical', 3, 'abc', NULL, NULL, NULL, NULL, 1, NULL, 2)"
        )
    conn.close()


def test_open_creates_parent_dir_schema_and_private_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "home" / "state.db"
    with StateDB.open(path) as db:
        assert db.schema_version() == state_mod.SCHEMA_VERSION
    assert path.is_file()
    assert _mode(path) == 0o600
    tables = {
        r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"schema_version", "consent", "consent_event", "file_index", "sent_unit", "outbox"} <= tables


def test_new_files_have_the_schema_earlier_agents_wrote(tmp_path: Path) -> None:
    StateDB.open(tmp_path / "new.db").close()
    _legacy_db(tmp_path / "old.db")
    assert _schema(tmp_path / "new.db") == _schema(tmp_path / "old.db")


def test_a_file_written_by_an_earlier_agent_opens_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _legacy_db(path)
    before = _schema(path)
    with StateDB.open(path) as db:
        assert db.schema_version() == 1
        registry = ConsentRegistry(db)
        assert registry.get("p1") is Scope.RESEARCH
        registry.set("p2", "all")
        FileIndex(db)  # its single row is made on first use
        with db.transaction() as conn:
            state = StreamState.load(conn, "clinical")
            assert state is not None and (state.last_sequence, state.acked_sequence) == (3, 2)
            state.last_sequence = 4
            state.save(conn)
            OutboxItem("clinical", 4, "c4", "h", 10, "incremental", "t").insert(conn)
    with StateDB.open(path) as db, db.connection() as conn:
        assert StreamState.load(conn, "clinical").last_sequence == 4  # type: ignore[union-attr]
        assert [(o.status, o.attempts, o.patients) for o in OutboxItem.select(conn)] == [("pending", 0, 0)]
        assert ConsentRegistry(db).all() == {"p1": Scope.RESEARCH, "p2": Scope.ALL}
    assert _schema(path) == before


def test_existing_world_readable_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    path.chmod(0o644)
    StateDB.open(path).close()
    assert _mode(path) == 0o600


def test_wal_mode_and_wal_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db:
        ConsentRegistry(db).set("p1", "all")
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        wal = path.with_name("state.db-wal")
        assert wal.exists()
        assert _mode(wal) == 0o600
        with db.connection() as conn:
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def _patients(db: StateDB) -> list[str]:
    with db.connection() as conn:
        return [pid for (pid,) in conn.execute("SELECT patient_id FROM consent ORDER BY patient_id")]


def _add(conn: sqlite3.Connection, pid: str, scope: str = "all") -> None:
    conn.execute("INSERT INTO consent VALUES (?, ?, 't', 'cli')", (pid, scope))


def test_transaction_commits_on_success_and_rolls_back_on_error(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db:
        with db.transaction() as conn:
            _add(conn, "kept")
        with pytest.raises(RuntimeError), db.transaction() as conn:
            _add(conn, "lost")
            raise RuntimeError("boom")
        assert _patients(db) == ["kept"]


def test_a_transaction_is_one_sqlite_transaction(tmp_path: Path) -> None:
    """Other connections see nothing of a transaction until it commits, then all of it."""
    with StateDB.open(tmp_path / "state.db") as db:
        with db.transaction() as conn:
            assert conn.in_transaction
            _add(conn, "a")
            _add(conn, "b")
            assert _patients(db) == []  # read on another connection meanwhile
        assert _patients(db) == ["a", "b"]


def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db:
        ConsentRegistry(db).set("p", "all")
    with StateDB.open(path) as db:
        assert [c.new for c in ConsentRegistry(db).history("p")] == [Scope.ALL]


def test_scope_constraint_rejects_unknown_scope(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"), db.transaction() as conn:
            _add(conn, "p", "everything")
        assert _patients(db) == []


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ConfigError, match=r"schema version 99 .*newer"):
        StateDB.open(path)


def test_migrations_run_in_order_and_stamp_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    ran: list[int] = []

    def to_v2(conn: sqlite3.Connection) -> None:
        ran.append(1)
        conn.execute("ALTER TABLE consent ADD COLUMN note TEXT")

    def to_v3(conn: sqlite3.Connection) -> None:
        ran.append(2)

    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(state_mod, "MIGRATIONS", {1: to_v2, 2: to_v3})
    with StateDB.open(path) as db:
        assert db.schema_version() == 3
    assert ran == [1, 2]
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(consent)")]
    assert "note" in columns
    with StateDB.open(path):  # already current: nothing runs again
        pass
    assert ran == [1, 2]


def test_a_failing_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE consent ADD COLUMN note TEXT")
        raise RuntimeError("half done")

    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(state_mod, "MIGRATIONS", {1: broken})
    with pytest.raises(RuntimeError, match="half done"):
        StateDB.open(path)
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(consent)")]
    assert "note" not in columns
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone() == (1,)


def test_missing_migration_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(state_mod, "MIGRATIONS", {})
    with pytest.raises(ConfigError, match="no migration from schema version 1"):
        StateDB.open(path)


def test_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite, just some bytes " * 100)
    with pytest.raises(ConfigError, match=r"state\.db: not a usable agent state database"):
        StateDB.open(path)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(ConfigError, match="no schema_version"):
        StateDB.open(path)


def test_to_iso_is_utc_with_z() -> None:
    from datetime import datetime, timedelta, timezone

    jst = timezone(timedelta(hours=9))
    assert to_iso(datetime(2025, 4, 1, 9, 30, tzinfo=jst)) == "2025-04-01T00:30:00Z"
    assert to_iso(datetime(2025, 4, 1, 9, 30)) == "2025-04-01T09:30:00Z"

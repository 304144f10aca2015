"""The agent state database: creation, permissions, WAL, transactions, schema versioning."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

import agent.state as state_mod
from agent.state import Consent, ConsentEvent, StateDB, to_iso
from hakobune.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_open_creates_parent_dir_schema_and_private_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "home" / "state.db"
    with StateDB.open(path) as db:
        assert db.schema_version() == state_mod.SCHEMA_VERSION
    assert path.is_file()
    assert _mode(path) == 0o600
    tables = {
        r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"schema_version", "consent", "consent_event"} <= tables


def test_existing_world_readable_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    path.chmod(0o644)
    StateDB.open(path).close()
    assert _mode(path) == 0o600


def test_wal_mode_and_wal_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db:
        with db.session() as s:
            s.add(Consent(patient_id="p1", scope="all", updated_at="2025-01-01T00:00:00Z", source="cli"))
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        wal = path.with_name("state.db-wal")
        assert wal.exists()
        assert _mode(wal) == 0o600


def test_session_commits_on_success_and_rolls_back_on_error(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db:
        with db.session() as s:
            s.add(Consent(patient_id="kept", scope="all", updated_at="t", source="cli"))
        with pytest.raises(RuntimeError), db.session() as s:
            s.add(Consent(patient_id="lost", scope="all", updated_at="t", source="cli"))
            s.flush()
            raise RuntimeError("boom")
        with db.session() as s:
            assert s.scalars(select(Consent.patient_id)).all() == ["kept"]


def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db, db.session() as s:
        s.add(ConsentEvent(patient_id="p", old_scope=None, new_scope="all", at="t", source="cli"))
    with StateDB.open(path) as db, db.session() as s:
        assert [e.new_scope for e in s.scalars(select(ConsentEvent))] == ["all"]


def test_scope_constraint_rejects_unknown_scope(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db:
        with pytest.raises(IntegrityError, match="CHECK constraint"), db.session() as s:
            s.add(Consent(patient_id="p", scope="everything", updated_at="t", source="cli"))
        with db.session() as s:
            assert s.scalars(select(Consent)).all() == []


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

    def to_v2(conn: Connection) -> None:
        ran.append(1)
        conn.exec_driver_sql("ALTER TABLE consent ADD COLUMN note TEXT")

    def to_v3(conn: Connection) -> None:
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

"""The center catalog, on SQLite and on a real PostgreSQL server (partitioned per hospital)."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

import center.catalog as catalog_mod
from center.catalog import (
    MIGRATIONS,
    Catalog,
    ChangesetRow,
    DuplicateChangeset,
    HospitalRow,
    RejectionRow,
    metadata,
    partition_name,
)
from hakobune.errors import ConfigError, InputError
from hakobune.naming import changeset_name
from tests.postgres import drop_database, new_database, postgres_url  # noqa: F401  (fixture)

T0 = datetime(2025, 4, 1, 3, 0, tzinfo=UTC)
JST = timezone(timedelta(hours=9))
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 hkb-agent"
A, B = "1310000012", "Tokyo-01"
CATALOG_TABLES = {"hospitals", "changesets", "waiting", "tombstones", "rejections", "mirror_acks", "scrubs"}


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    url = new_database(request.getfixturevalue("postgres_url"))
    yield url
    drop_database(url)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:  # noqa: F811
    url = new_database(postgres_url)
    yield url
    drop_database(url)


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    with Catalog.open(catalog_url) as c:
        c.add_hospital(A, "Hakobune General", KEY_A, SSH, at=T0)
        c.add_hospital(B, "Tokyo Clinic", KEY_B, SSH, at=T0)
        yield c


def cs(hospital: str, sequence: int, stream: str = "clinical", **changes: object) -> ChangesetRow:
    """A plausible changeset row: created ``sequence`` hours after T0, received 5 minutes later."""

    def h(n: int) -> str:
        return hashlib.sha256(f"{hospital}/{stream}/{n}".encode()).hexdigest()

    created = T0 + timedelta(hours=sequence)
    values: dict[str, object] = {
        "hospital": hospital,
        "stream": stream,
        "sequence": sequence,
        "header_hash": h(sequence),
        "prev_hash": h(sequence - 1) if sequence > 1 else "0" * 64,
        "kind": "baseline" if sequence == 1 else "incremental",
        "created_at": created,
        "received_at": created + timedelta(minutes=5),
        "size": 1000 * sequence,
        "path": f"store/{hospital}/{stream}/{changeset_name(stream, sequence)}",  # type: ignore[arg-type]
        "patients": sequence,
    }
    values.update(changes)
    return ChangesetRow(**values)  # type: ignore[arg-type]


def head_revision() -> str | None:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def db_revision(url: str) -> tuple[str, ...]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


# --- schema and migrations ----------------------------------------------------------------------------


def test_open_migrates_an_empty_database_and_reopening_changes_nothing(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as c:
        c.add_hospital(A, "Hakobune General", KEY_A, SSH, at=T0)
        c.add_changeset(cs(A, 1))
        engine = c.engine
        with engine.connect() as conn:
            tables_before = set(inspect(conn).get_table_names())
    assert CATALOG_TABLES | {"alembic_version"} <= tables_before
    assert db_revision(catalog_url) == (head_revision(),)

    for _ in range(2):
        with Catalog.open(catalog_url) as c:
            assert [h.id for h in c.hospitals()] == [A]
            assert [r.sequence for r in c.changesets(A, "clinical")] == [1]
            with c.engine.connect() as conn:
                assert set(inspect(conn).get_table_names()) == tables_before
    assert db_revision(catalog_url) == (head_revision(),)


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrated_schema_matches_the_tables_the_code_reads(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as c:
        c.add_hospital(
            B, "Tokyo Clinic", KEY_B, SSH
        )  # on PostgreSQL: partitions, which the code does not declare

        def ours(name: str | None, type_: str, _parent: object) -> bool:
            return type_ != "table" or name in CATALOG_TABLES

        with c.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"include_name": ours, "compare_type": True})
            assert compare_metadata(ctx, metadata) == []


def test_concurrent_first_opens_both_succeed(catalog_url: str) -> None:
    def open_and_list(_: int) -> list[HospitalRow]:
        with Catalog.open(catalog_url) as c:
            return c.hospitals()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_and_list, range(4))) == [[], [], [], []]
    assert db_revision(catalog_url) == (head_revision(),)


def test_a_newer_schema_revision_is_refused(catalog_url: str) -> None:
    Catalog.open(catalog_url).close()
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(ConfigError, match=r"schema revision 9999 is newer than this hakobune knows"):
        Catalog.open(catalog_url)


def test_a_database_with_other_tables_is_not_a_catalog(catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE patients (id integer PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(ConfigError, match=r"holds other tables \(patients\).*not a Hakobune catalog"):
        Catalog.open(catalog_url)


# --- SQLite specifics and bad URLs --------------------------------------------------------------------


def test_sqlite_catalog_is_private_wal_and_enforces_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "center" / "catalog.db"
    with Catalog.open(f"sqlite:///{path}") as c:
        c.add_hospital(A, "Hakobune General", KEY_A, SSH)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.with_name("catalog.db-wal").stat().st_mode) == 0o600
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(ConfigError, match=r"hospital NOPE: not enrolled"):
            c.set_waiting("NOPE", "clinical", [3])  # refused by the foreign key
    path.chmod(0o644)
    Catalog.open(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_is_not_sqlite_gives_a_one_line_config_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"not a database, just some bytes" * 200)
    with pytest.raises(ConfigError) as err:
        Catalog.open(f"sqlite:///{path}")
    assert str(err.value) == f"catalog sqlite:///{path}: not usable (file is not a database)"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", r"catalog URL 'not a url': not a database URL"),
        ("mysql://u@localhost/hkb", r"catalog URL 'mysql://u@localhost/hkb': unsupported database"),
        ("sqlite://", r"in-memory catalog would be lost"),
        (
            "sqlite:////proc/no/such/dir/catalog.db",
            r"/proc/no/such/dir/catalog.db: cannot create the catalog",
        ),
        (
            "postgresql://hkb:s3cret@127.0.0.1:1/hkb",
            r"catalog postgresql\+psycopg://hkb:\*\*\*@127.0.0.1:1/hkb: cannot connect",
        ),
    ],
)
def test_bad_urls_give_config_errors_without_passwords(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Catalog.open(url)
    assert "s3cret" not in str(err.value)
    assert "\n" not in str(err.value)


# --- hospitals ----------------------------------------------------------------------------------------


def test_hospitals_round_trip_in_utc(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as c:
        row = c.add_hospital(B, "Tokyo Clinic", KEY_B, SSH + "\n", at=datetime(2025, 4, 1, 12, 0, tzinfo=JST))
        c.add_hospital(A, "Hakobune General", KEY_A, SSH)
        assert row == HospitalRow(B, "Tokyo Clinic", KEY_B, SSH, datetime(2025, 4, 1, 3, 0, tzinfo=UTC), True)
        assert c.get_hospital(B) == row
        got = c.get_hospital(B)
        assert got is not None and got.enrolled_at.tzinfo == UTC
        assert [h.id for h in c.hospitals()] == [A, B]
        assert c.get_hospital("1310000099") is None


def test_add_hospital_refuses_duplicates_bad_ids_and_bad_keys(catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match=rf"hospital {A}: already enrolled"):
        catalog.add_hospital(A, "again", KEY_B, SSH)
    with pytest.raises(ConfigError, match=r"hospital tokyo-01: Tokyo-01 is already enrolled.*share an SFTP"):
        catalog.add_hospital("tokyo-01", "same account", KEY_B, SSH)
    with pytest.raises(IntegrityError, match="ux_hospitals_id_folded"), catalog.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO hospitals VALUES ('TOKYO-01', 'x', :k, 'ssh', :at, true)"),
            {"k": KEY_A, "at": T0},
        )
    with pytest.raises(ConfigError, match=r"bad hospital id 'x/../y'"):
        catalog.add_hospital("x/../y", "evil", KEY_A, SSH)
    with pytest.raises(ConfigError, match=r"agent key must be a raw 32-byte Ed25519 public key"):
        catalog.add_hospital("H-3", "short key", b"\x01" * 31, SSH)
    with pytest.raises(ConfigError, match=r"SSH key must be one OpenSSH public key line"):
        catalog.add_hospital("H-3", "two keys", KEY_A, SSH + "\n" + SSH)
    assert catalog.get_hospital(A) == HospitalRow(A, "Hakobune General", KEY_A, SSH, T0, True)
    assert [h.id for h in catalog.hospitals()] == [A, B]


def test_key_rotation_changes_only_the_given_keys(catalog: Catalog) -> None:
    rotated = catalog.update_hospital_keys(A, agent_key=KEY_B)
    assert rotated == HospitalRow(A, "Hakobune General", KEY_B, SSH, T0, True)
    new_ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC9 rotated"
    assert catalog.update_hospital_keys(A, ssh_key=new_ssh).ssh_key == new_ssh
    assert catalog.get_hospital(A) == HospitalRow(A, "Hakobune General", KEY_B, new_ssh, T0, True)
    assert catalog.get_hospital(B) == HospitalRow(B, "Tokyo Clinic", KEY_B, SSH, T0, True)
    with pytest.raises(ConfigError, match=r"hospital 1310000099: not enrolled"):
        catalog.update_hospital_keys("1310000099", agent_key=KEY_A)


# --- changesets ---------------------------------------------------------------------------------------


def test_changesets_round_trip_ordered_streamed_and_scoped(catalog: Catalog) -> None:
    rows = {n: cs(A, n) for n in (3, 1, 2)}
    for row in rows.values():
        catalog.add_changeset(row)
    catalog.add_changeset(cs(A, 1, "research"))
    catalog.add_changeset(cs(B, 7))
    jst = cs(A, 4, created_at=datetime(2025, 4, 2, 9, 0, tzinfo=JST))
    catalog.add_changeset(jst)

    stream = catalog.changesets(A, "clinical")
    assert isinstance(stream, Iterator)
    assert next(stream) == rows[1]
    assert list(stream) == [rows[2], rows[3], jst]
    assert [r.sequence for r in catalog.changesets(A, "clinical", since=3)] == [3, 4]
    assert [r.sequence for r in catalog.changesets(A, "research")] == [1]
    assert [r.sequence for r in catalog.changesets(B, "clinical")] == [7]
    assert list(catalog.changesets(B, "research")) == []

    assert catalog.get_changeset(A, "clinical", 2) == rows[2]
    got = catalog.get_changeset(A, "clinical", 4)
    assert got is not None and got.created_at == datetime(2025, 4, 2, 0, 0, tzinfo=UTC)
    assert got.created_at.tzinfo == UTC
    assert catalog.get_changeset(A, "clinical", 5) is None
    assert catalog.last_changeset(A, "clinical") == got
    assert catalog.last_changeset(B, "research") is None


def test_a_long_stream_is_read_in_order_batch_by_batch(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_mod, "STREAM_BATCH", 7)
    for n in range(1, 61):
        catalog.add_changeset(cs(A, n, size=n))
    total = 0
    expected = 1
    for row in catalog.changesets(A, "clinical"):
        assert row.sequence == expected
        expected += 1
        total += row.size
    assert expected == 61
    assert total == sum(range(1, 61))


def test_a_duplicate_changeset_raises_and_leaves_the_first_row(catalog: Catalog) -> None:
    first = cs(A, 1)
    catalog.add_changeset(first)
    other = cs(A, 1, header_hash="f" * 64, size=1, path="store/other")
    with pytest.raises(
        DuplicateChangeset, match=r"1310000012/clinical-000000000001.hkcs: already in the catalog"
    ) as err:
        catalog.add_changeset(other)
    assert err.value.existing == first
    with pytest.raises(DuplicateChangeset):
        catalog.add_changeset(first)
    assert catalog.get_changeset(A, "clinical", 1) == first
    assert list(catalog.changesets(A, "clinical")) == [first]
    catalog.add_changeset(cs(A, 1, "research"))  # the other stream is another sequence space


def test_changesets_of_unknown_hospitals_or_with_bad_fields_are_refused(catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match=r"hospital 1310000099: not enrolled"):
        catalog.add_changeset(cs("1310000099", 1))
    with pytest.raises(InputError, match=r"header_hash must be 64 lower-case hex digits"):
        catalog.add_changeset(cs(A, 1, header_hash="ABC"))
    with pytest.raises(InputError, match=r"bad kind 'full'"):
        catalog.add_changeset(cs(A, 1, kind="full"))
    with pytest.raises(InputError, match=r"must be relative to the center home"):
        catalog.add_changeset(cs(A, 1, path="/etc/passwd"))
    with pytest.raises(ConfigError, match=r"bad stream 'audit'"):
        catalog.add_changeset(cs(A, 1, stream="audit", path="store/x"))
    assert catalog.last_changeset(A, "clinical") is None


# --- PostgreSQL partitioning --------------------------------------------------------------------------


def test_postgres_rows_land_in_their_hospitals_partition(pg_url: str) -> None:
    with Catalog.open(pg_url) as c:
        c.add_hospital(A, "Hakobune General", KEY_A, SSH)
        c.add_hospital(B, "Tokyo Clinic", KEY_B, SSH)
        c.add_changeset(cs(A, 1))
        c.add_changeset(cs(A, 2))
        c.add_changeset(cs(B, 1, "research"))
        c.add_tombstones(B, "clinical", 1, ["tok-1"])
        quote = c.engine.dialect.identifier_preparer.quote
        with c.engine.connect() as conn:
            placed = set(conn.execute(text("SELECT hospital_id, tableoid::regclass::text FROM changesets")))
            kinds: dict[str, str] = dict(
                conn.execute(
                    text(
                        "SELECT relname, relkind FROM pg_class WHERE relname IN ('changesets', 'tombstones')"
                    )
                ).all()
            )
            bounds: dict[str, str] = dict(
                conn.execute(
                    text(
                        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'tombstones'::regclass"
                    )
                ).all()
            )
            tomb = conn.execute(text("SELECT tableoid::regclass::text FROM tombstones")).scalar_one()
    assert placed == {(A, f"changesets_h_{A}"), (B, quote(partition_name("changesets", B)))}
    assert quote(partition_name("changesets", B)) == '"changesets_h_Tokyo-01"'
    assert kinds == {"changesets": "p", "tombstones": "p"}
    assert bounds == {
        f"tombstones_h_{A}": f"FOR VALUES IN ('{A}')",
        f"tombstones_h_{B}": f"FOR VALUES IN ('{B}')",
    }
    assert tomb == '"tombstones_h_Tokyo-01"'


def test_postgres_partition_refuses_another_hospitals_rows(pg_url: str) -> None:
    with Catalog.open(pg_url) as c:
        c.add_hospital(A, "Hakobune General", KEY_A, SSH)
        c.add_hospital(B, "Tokyo Clinic", KEY_B, SSH)
        engine = c.engine
        row = (
            "(hospital_id, stream, sequence, header_hash, prev_hash, kind, created_at, received_at, size, "
            f"path, patients) VALUES ('{A}', 'clinical', 1, '{'a' * 64}', '', 'baseline', now(), now(), "
            "1, 'p', 1)"
        )
        with pytest.raises(IntegrityError, match="violates partition constraint"), engine.begin() as conn:
            conn.execute(text(f'INSERT INTO "changesets_h_Tokyo-01" {row}'))
        # a hospital enrolled behind the catalog's back has no partition: its rows have nowhere to go
        with pytest.raises(IntegrityError, match="no partition of relation"), engine.begin() as conn:
            conn.execute(
                text("INSERT INTO hospitals VALUES ('H-9', 'rogue', :k, 'ssh', now(), true)"), {"k": KEY_A}
            )
            conn.execute(text(f"INSERT INTO changesets {row.replace(A, 'H-9')}"))
        assert list(c.changesets(A, "clinical")) == []
        assert list(c.changesets(B, "clinical")) == []


# --- rejections, waiting, status ----------------------------------------------------------------------


def test_rejections_are_recorded_and_filtered(catalog: Catalog) -> None:
    catalog.add_rejection(A, "clinical-000000000002.hkcs", "bad signature", at=T0)
    catalog.add_rejection(None, "stray.bin", "not a changeset\nsecond line", at=T0 + timedelta(hours=1))
    catalog.add_rejection(B, "research-000000000001.hkcs", "wrong hospital", at=T0 + timedelta(hours=2))
    catalog.add_rejection(A, "clinical-000000000003.hkcs", "chain broken", at=T0 + timedelta(hours=3))
    everything = catalog.rejections()
    assert everything == [
        RejectionRow(A, "clinical-000000000002.hkcs", "bad signature", T0),
        RejectionRow(None, "stray.bin", "not a changeset second line", T0 + timedelta(hours=1)),
        RejectionRow(B, "research-000000000001.hkcs", "wrong hospital", T0 + timedelta(hours=2)),
        RejectionRow(A, "clinical-000000000003.hkcs", "chain broken", T0 + timedelta(hours=3)),
    ]
    assert [r.reason for r in catalog.rejections(A)] == ["bad signature", "chain broken"]
    since = datetime(2025, 4, 1, 13, 0, tzinfo=JST)  # = T0 + 1h
    assert [r.name for r in catalog.rejections(since=since)] == [
        "stray.bin",
        "research-000000000001.hkcs",
        "clinical-000000000003.hkcs",
    ]
    assert catalog.rejections(B, since=T0 + timedelta(hours=3)) == []
    with pytest.raises(ConfigError, match="bad hospital id"):
        catalog.add_rejection("../x", "a", "b")


def test_status_reports_age_staleness_gaps_waiting_and_rejections(catalog: Catalog) -> None:
    for n in (1, 2, 3):
        catalog.add_changeset(cs(A, n))  # created T0+1h … T0+3h
    catalog.add_changeset(cs(A, 1, "research", created_at=T0 - timedelta(days=2)))
    catalog.set_waiting(A, "clinical", [9, 6, 7])
    catalog.set_waiting(B, "clinical", [3])
    now = T0 + timedelta(hours=13)  # ten hours after A's newest clinical changeset
    catalog.add_rejection(A, "clinical-000000000005.hkcs", "bad signature", at=now - timedelta(days=1))
    catalog.add_rejection(A, "clinical-000000000004.hkcs", "chain broken", at=now - timedelta(hours=1))
    catalog.add_rejection(A, "research-000000000002.hkcs", "wrong key", at=now - timedelta(days=2))
    catalog.add_rejection(A, "clinical-000000000001.hkcs", "too old to count", at=now - timedelta(days=8))
    catalog.add_rejection(None, "stray.bin", "unknown sender", at=now)

    status = catalog.status(now=now)
    assert [(s.hospital, s.stream) for s in status] == [(A, "clinical"), (A, "research"), (B, "clinical")]
    a_clin, a_res, b_clin = status
    assert a_clin.name == "Hakobune General"
    assert (a_clin.last_sequence, a_clin.changesets, a_clin.bytes) == (3, 3, 6000)
    assert a_clin.last_created_at == T0 + timedelta(hours=3)
    assert a_clin.last_received_at == T0 + timedelta(hours=3, minutes=5)
    assert a_clin.age_hours == pytest.approx(10.0)
    assert a_clin.stale is False
    assert a_clin.waiting == [6, 7, 9]
    assert a_clin.gaps == [(4, 5), (8, 8)]
    assert (a_clin.rejections, a_clin.last_error) == (2, "clinical-000000000004.hkcs: chain broken")

    assert (a_res.last_sequence, a_res.stale, a_res.gaps, a_res.rejections) == (1, True, [], 1)
    assert a_res.age_hours == pytest.approx(48 + 13)
    assert a_res.last_error == "research-000000000002.hkcs: wrong key"

    assert (b_clin.last_sequence, b_clin.age_hours, b_clin.stale) == (None, None, True)
    assert (b_clin.changesets, b_clin.bytes, b_clin.waiting, b_clin.gaps) == (0, 0, [3], [(1, 2)])
    assert (b_clin.rejections, b_clin.last_error) == (0, None)

    assert catalog.status(now=now, stale_hours=9.5)[0].stale is True
    assert catalog.status(now=now + timedelta(hours=17))[0].stale is True  # 27 h > 26 h

    catalog.set_waiting(A, "clinical", [])
    catalog.add_changeset(cs(A, 4))
    later = catalog.status(now=now)[0]
    assert (later.last_sequence, later.waiting, later.gaps) == (4, [], [])
    assert later.age_hours == pytest.approx(9.0)


def test_status_lists_enrolled_hospitals_and_never_flags_inactive_ones_stale(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as c:
        assert c.status(now=T0) == []
        c.add_hospital(B, "Tokyo Clinic", KEY_B, SSH, at=T0)
        c.add_hospital(A, "Hakobune General", KEY_A, SSH, at=T0)
        with c.engine.begin() as conn:
            conn.execute(text("UPDATE hospitals SET active = false WHERE id = :id"), {"id": B})
        status = c.status(now=T0)
        assert [(s.hospital, s.stream, s.stale) for s in status] == [
            (A, "clinical", True),
            (B, "clinical", False),
        ]


# --- tombstones ---------------------------------------------------------------------------------------


def test_tombstones_are_idempotent_and_per_hospital(catalog: Catalog) -> None:
    catalog.add_tombstones(A, "clinical", 4, ["t1", "t2", "t1"])
    catalog.add_tombstones(A, "clinical", 4, ["t1", "t2"])
    catalog.add_tombstones(A, "clinical", 5, ["t2", "t3"])
    catalog.add_tombstones(A, "research", 2, ["t1"])
    catalog.add_tombstones(A, "research", 3, [])
    catalog.add_tombstones(B, "clinical", 1, ["t9"])
    assert catalog.tombstones(A) == {"t1", "t2", "t3"}
    assert catalog.tombstones(B) == {"t9"}
    assert catalog.tombstones("1310000099") == set()
    with catalog.engine.connect() as conn:
        rows = sorted(
            conn.execute(
                text("SELECT stream, token, sequence FROM tombstones WHERE hospital_id = :h"), {"h": A}
            )
        )
    assert [tuple(r) for r in rows] == [
        ("clinical", "t1", 4),
        ("clinical", "t2", 4),
        ("clinical", "t3", 5),
        ("research", "t1", 2),
    ]
    with pytest.raises(ConfigError, match=r"hospital 1310000099: not enrolled"):
        catalog.add_tombstones("1310000099", "clinical", 1, ["t1"])

"""Replication to a mirror center, end to end on real sealed changesets (synth → agent sync → center ingest →
center replicate → the mirror's own ingest), on SQLite, PostgreSQL and over a real sshd."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

import agent.transport.file as file_transport
from agent.commands.sync import run_once
from center.catalog import MIGRATIONS, Catalog, ChangesetRow, metadata
from center.config import CenterConfig, load_center_config, mirror_config
from center.enroll import enroll, init_center
from center.ingest import ingest_all
from center.replicate import (
    LocalMirror,
    ReplicationReport,
    copy_audit_head,
    open_mirror,
    replicate,
    replicate_every,
)
from hakobune.audit import HEAD_FILE, AuditLog, SignedHead, verify_log
from hakobune.cli import app
from hakobune.errors import ConfigError, HakobuneError
from hakobune.keys import SigningKey, load_signing_key
from hakobune.naming import changeset_name
from hakobune.synth import SSMIX2_DIR, advance, generate
from tests.pipeline import HOSPITAL, Pipeline, make_pipeline
from tests.postgres import drop_database, new_database, postgres_url  # noqa: F401  (fixture)
from tests.sshd import make_client_key, running_sshd, sshd_home

pytestmark = pytest.mark.integration
MINE = {"mirror_acks", "scrubs"}


# --- a primary center with real changesets, and its mirror (shared with test_scrub.py) --------------------


@dataclass
class World:
    pipe: Pipeline
    mirror: CenterConfig

    @property
    def primary(self) -> CenterConfig:
        return self.pipe.center  # type: ignore[no-any-return]

    def day(self) -> list[str]:
        """One more day at the hospital: advance the tree, sync and ship, ingest at the primary."""
        advance(self.pipe.ssmix2.parent, 1, workers=1, change_rate=0.3)
        return self.sync()

    def sync(self) -> list[str]:
        run_once(self.pipe.agent_home)
        report = self.pipe.ingest()
        assert not report.rejected, report.rejected
        return report.stored

    def replicate(self, **options: object) -> ReplicationReport:
        mirror = open_mirror(mirror_config(str(self.mirror.layout.home)), self.primary.layout)
        try:
            with Catalog.open(self.primary.catalog_url) as catalog:
                return replicate(self.primary, catalog, mirror, **options)  # type: ignore[arg-type]
        finally:
            mirror.close()

    def primary_rows(self) -> list[ChangesetRow]:
        with Catalog.open(self.primary.catalog_url) as c:
            return list(c.changesets(HOSPITAL, "clinical"))

    def mirror_rows(self) -> list[ChangesetRow]:
        with Catalog.open(self.mirror.catalog_url) as c:
            return list(c.changesets(HOSPITAL, "clinical"))

    def primary_blob(self, sequence: int) -> Path:
        return self.primary.layout.stored(HOSPITAL, "clinical", sequence)

    def mirror_blob(self, sequence: int) -> Path:
        return self.mirror.layout.stored(HOSPITAL, "clinical", sequence)


def make_world(
    root: Path,
    template: Path,
    *,
    primary_catalog: str | None = None,
    mirror_catalog: str | None = None,
    enroll_mirror: bool = True,
) -> World:
    """A hospital (copy of ``template``), its primary center with the baseline stored, and an empty mirror
    center whose operators enrolled the hospital with its agent key."""
    shutil.copytree(template, root / "hospital", symlinks=True)
    pipe = make_pipeline(root, root / "hospital" / SSMIX2_DIR, catalog_url=primary_catalog)
    mirror = init_center(root / "mirror", mirror_catalog)
    world = World(pipe, mirror)
    if enroll_mirror:
        enroll_on_mirror(world)
    assert world.sync() == [changeset_name("clinical", 1)]
    return world


def enroll_on_mirror(world: World, agent_key: bytes | None = None) -> None:
    ssh_pub = world.pipe.world.agent.ssh_key
    ssh_line = ssh_pub.with_name(ssh_pub.name + ".pub").read_text(encoding="ascii").strip()
    key = world.pipe.agent_key() if agent_key is None else SigningKey(agent_key).public
    with Catalog.open(world.mirror.catalog_url) as c:
        enroll(world.mirror, c, HOSPITAL, "mirror-side name", key, ssh_line)


def flip_byte(path: Path, offset_from_end: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hospital-template")
    generate(out, 12, 3, seed=7, workers=1)
    return out


@pytest.fixture
def world(tmp_path: Path, template: Path) -> World:
    return make_world(tmp_path, template)


def _status(cfg: CenterConfig, mirror: CenterConfig) -> dict[str, object]:
    from center.keys import load_center_public_key

    with Catalog.open(cfg.catalog_url) as c:
        rows = c.status(mirror=load_center_public_key(mirror.layout).fingerprint)
    row = next(r for r in rows if r.hospital == HOSPITAL and r.stream == "clinical")
    return {"last": row.last_sequence, "mirrored": row.mirror_sequence, "lag": row.mirror_lag}


# --- replication ------------------------------------------------------------------------------------------


def test_every_changeset_reaches_the_mirror_verified_by_the_mirror_itself(world: World) -> None:
    world.day()
    assert _status(world.primary, world.mirror) == {"last": 2, "mirrored": 0, "lag": 2}

    report = world.replicate()

    assert report.ok, report.to_json()
    [h] = report.hospitals
    assert h.streams[0].sent == [changeset_name("clinical", 1), changeset_name("clinical", 2)]
    assert (h.streams[0].primary, h.streams[0].mirrored, h.streams[0].lag) == (2, 2, 0)
    # the mirror catalogued them itself (its own received_at), with the same chain
    primary, mirror = world.primary_rows(), world.mirror_rows()
    assert [(r.sequence, r.header_hash, r.prev_hash, r.size) for r in mirror] == [
        (r.sequence, r.header_hash, r.prev_hash, r.size) for r in primary
    ]
    for seq in (1, 2):
        assert world.mirror_blob(seq).read_bytes() == world.primary_blob(seq).read_bytes()
    # nothing left in the mirror's inbox; receipts signed by the mirror's key are there
    assert not any(world.mirror.layout.incoming(HOSPITAL).iterdir())
    assert sorted(p.name for p in world.mirror.layout.receipts(HOSPITAL).iterdir()) == [
        "clinical-000000000001.receipt",
        "clinical-000000000002.receipt",
    ]
    assert _status(world.primary, world.mirror) == {"last": 2, "mirrored": 2, "lag": 0}


def test_a_second_run_copies_only_the_new_changesets_and_a_third_nothing(world: World) -> None:
    assert world.replicate().ok
    first_mtime = world.mirror_blob(1).stat().st_mtime_ns
    world.day()
    world.day()

    second = world.replicate()

    assert second.ok
    assert second.hospitals[0].streams[0].sent == [
        changeset_name("clinical", 2),
        changeset_name("clinical", 3),
    ]
    assert world.mirror_blob(1).stat().st_mtime_ns == first_mtime  # never rewritten
    third = world.replicate()
    assert third.ok and third.sent == 0 and third.hospitals[0].streams[0].mirrored == 3
    # --recheck re-reads every receipt and still sends nothing: the mirror has it all
    recheck = world.replicate(recheck=True)
    assert recheck.ok and recheck.sent == 0 and recheck.hospitals[0].streams[0].mirrored == 3


def test_a_tampered_blob_on_the_primary_is_refused_by_the_mirror_and_reported(world: World) -> None:
    world.day()
    world.day()
    flip_byte(world.primary_blob(2))  # payload: the header (size, hash) still looks right

    result = CliRunner().invoke(
        app,
        ["center", "replicate", "--mirror", str(world.mirror.layout.home), "--json"],
        env={"HAKOBUNE_CENTER_HOME": str(world.primary.layout.home)},
    )

    assert result.exit_code == 1, result.output
    doc = orjson.loads(result.stdout)
    assert doc["ok"] is False
    [h] = doc["hospitals"]
    [refused] = h["refused"]
    assert refused["name"] == changeset_name("clinical", 2)
    assert "payload does not match" in refused["reason"]
    stream = h["streams"][0]
    assert (stream["primary"], stream["mirrored"], stream["lag"]) == (3, 1, 2)
    # the mirror stored only what verified; the bad copy sits in its rejected/ with the reason
    assert [r.sequence for r in world.mirror_rows()] == [1]
    rejected = world.mirror.layout.rejected(HOSPITAL)
    reasons = [p.read_text() for p in rejected.glob("*.reason")]
    assert len(reasons) == 1 and "payload does not match" in reasons[0]
    with Catalog.open(world.mirror.catalog_url) as c:
        assert [r.name for r in c.rejections(HOSPITAL)] == [changeset_name("clinical", 2)]
    with Catalog.open(world.primary.catalog_url) as c:
        [ack] = [a for a in c.mirror_acks(doc["mirror_key"]).values() if a.stream == "clinical"]
    assert ack.sequence == 1 and ack.last_error is not None and "refused" in ack.last_error


def test_a_damaged_header_on_the_primary_is_not_even_sent(world: World) -> None:
    world.day()
    blob = world.primary_blob(2)
    blob.write_bytes(blob.read_bytes()[:-10])  # truncated

    report = world.replicate()

    assert not report.ok
    [error] = report.hospitals[0].errors
    assert changeset_name("clinical", 2) in error and "center verify --heal-from" in error
    assert [r.sequence for r in world.mirror_rows()] == [1]
    assert not (world.mirror.layout.incoming(HOSPITAL) / changeset_name("clinical", 2)).exists()


class Interrupted(Exception):
    pass


def test_an_interrupted_copy_resumes_where_it_stopped(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_transport, "chunk_size_for", lambda bwlimit: 1024)  # many chunks per blob
    world.day()
    size = world.primary_blob(1).stat().st_size
    assert size > 3 * 1024
    seen: list[int] = []

    def cut(n: int) -> None:
        seen.append(n)
        if sum(seen) > 2048:
            raise Interrupted

    with pytest.raises(Interrupted):
        world.replicate(on_progress=cut)

    partial = world.mirror.layout.incoming(HOSPITAL) / changeset_name("clinical", 1)
    assert 0 < partial.stat().st_size < size
    # the mirror's own ingest leaves an incomplete upload alone
    with Catalog.open(world.mirror.catalog_url) as c:
        ingested = ingest_all(world.mirror, c)
    assert ingested.incomplete == [changeset_name("clinical", 1)] and not ingested.rejected

    report = world.replicate()

    assert report.ok, report.to_json()
    assert report.hospitals[0].streams[0].mirrored == 2
    for seq in (1, 2):
        assert world.mirror_blob(seq).read_bytes() == world.primary_blob(seq).read_bytes()
    assert not world.mirror.layout.rejected(HOSPITAL).exists()


def test_a_mirror_that_does_not_know_the_hospital_or_its_key_copies_nothing(
    tmp_path: Path, template: Path
) -> None:
    world = make_world(tmp_path, template, enroll_mirror=False)
    report = world.replicate()
    assert not report.ok
    assert "is not enrolled on the mirror" in report.hospitals[0].errors[0]
    assert not world.mirror.layout.inbox(HOSPITAL).exists()

    enroll_on_mirror(world, agent_key=bytes(range(32)))  # the mirror's operators got another key
    report = world.replicate()
    assert not report.ok and "another agent key" in report.hospitals[0].errors[0]
    assert not any(world.mirror.layout.incoming(HOSPITAL).iterdir())


def test_a_mirror_must_be_another_center_with_the_pinned_key(world: World, tmp_path: Path) -> None:
    layout = world.primary.layout
    with pytest.raises(ConfigError, match="this center's own home"):
        open_mirror(mirror_config(str(layout.home)), layout)
    with pytest.raises(ConfigError, match="not a center home"):
        open_mirror(mirror_config(str(tmp_path / "nowhere")), layout)
    other = tmp_path / "other.pub"
    other.write_text(SigningKey.generate().public.text())
    with pytest.raises(ConfigError, match="is not the pinned mirror key"):
        open_mirror(mirror_config(str(world.mirror.layout.home), center_key=other), layout)
    with pytest.raises(ConfigError, match="needs center_key, ssh_key, known_hosts"):
        mirror_config("sftp://mirror.example:22")
    with pytest.raises(ConfigError, match="expected sftp://host:port or a directory"):
        mirror_config("https://mirror.example/")


def test_mirror_section_of_center_toml_is_read_and_checked(world: World) -> None:
    cfg_path = world.primary.layout.config
    base = cfg_path.read_text()
    cfg_path.write_text(base + '\n[mirror]\nurl = "../mirror"\nevery_minutes = 30\n')
    cfg = load_center_config(world.primary.layout.home)
    assert cfg.mirror is not None and cfg.mirror.every_minutes == 30
    assert Path(cfg.mirror.url) == world.mirror.layout.home.resolve()
    result = CliRunner().invoke(
        app,
        ["center", "replicate", "--json"],
        env={"HAKOBUNE_CENTER_HOME": str(world.primary.layout.home)},
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["sent"] == 1

    cfg_path.write_text(base + '\n[mirror]\nurl = "sftp://mirror.example"\n')
    with pytest.raises(ConfigError, match=r"center.toml: \[mirror\]: an sftp mirror needs center_key"):
        load_center_config(world.primary.layout.home)
    cfg_path.write_text(base + '\n[mirror]\nurl = "."\nevery_minutes = -1\n')
    with pytest.raises(ConfigError, match="must not be negative"):
        load_center_config(world.primary.layout.home)
    cfg_path.write_text(base)
    result = CliRunner().invoke(
        app, ["center", "replicate"], env={"HAKOBUNE_CENTER_HOME": str(world.primary.layout.home)}
    )
    assert isinstance(result.exception, ConfigError) and "no [mirror] configured" in str(result.exception)


def test_center_serve_schedule_replicates_until_stopped(world: World) -> None:
    config = world.primary.layout.config
    config.write_text(
        config.read_text() + f'\n[mirror]\nurl = "{world.mirror.layout.home}"\nevery_minutes = 0.002\n'
    )
    cfg = load_center_config(world.primary.layout.home)
    stop = threading.Event()
    thread = threading.Thread(target=replicate_every, args=(cfg, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while [r.sequence for r in world.mirror_rows()] != [1]:
            assert time.monotonic() < deadline, "the schedule never replicated"
            time.sleep(0.05)
        world.day()  # a later turn of the schedule picks the new changeset up
        while [r.sequence for r in world.mirror_rows()] != [1, 2]:
            assert time.monotonic() < deadline, "the schedule did not replicate again"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


# --- the audit log's signed head ----------------------------------------------------------------------------


def test_the_signed_audit_head_is_copied_and_a_rewritten_history_refused(
    world: World, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    with AuditLog.open(audit) as log:
        for n in range(3):
            log.append("search", actor="operator", hospital=HOSPITAL, details={"results": n})
        head = log.sign_head()

    report = world.replicate(audit=audit)

    assert report.ok and report.audit_head is not None and report.audit_head.copied
    copy = Path(report.audit_head.path)
    assert copy.parent.parent == world.mirror.layout.audit_heads
    assert SignedHead.decode(copy.read_bytes().strip(), "copy") == head
    assert verify_log(audit, heads=[copy]).ok
    again = world.replicate(audit=audit)
    assert again.ok and again.audit_head is not None and not again.audit_head.copied
    assert len(copy.read_bytes().splitlines()) == 1

    # someone with the audit key truncates the log to 1 entry and re-signs: the mirror refuses the head
    key = load_signing_key(audit / "audit.key")
    forged = SignedHead.create(key, 1, bytes(32), "2030-01-01T00:00:00Z")
    (audit / HEAD_FILE).write_bytes(forged.encode() + b"\n")
    with pytest.raises(HakobuneError, match="truncated or rewritten"):
        copy_audit_head(audit, world.mirror.layout)
    refused = world.replicate(audit=audit)
    assert not refused.ok and "truncated or rewritten" in refused.errors[0]
    assert len(copy.read_bytes().splitlines()) == 1


def test_a_head_that_does_not_verify_is_not_copied(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    with AuditLog.open(audit) as log:
        log.append("search", actor="operator", details={"results": 1})
        log.sign_head()
    forged = SignedHead.create(SigningKey.generate(), 1, bytes(32), "2030-01-01T00:00:00Z")
    (audit / HEAD_FILE).write_bytes(forged.encode())
    with pytest.raises(HakobuneError, match="does not verify"):
        copy_audit_head(audit, world.mirror.layout)
    assert not world.mirror.layout.audit_heads.exists()


# --- PostgreSQL ---------------------------------------------------------------------------------------------


@pytest.fixture
def pg_urls(postgres_url: str) -> Iterator[tuple[str, str]]:  # noqa: F811
    urls = (new_database(postgres_url), new_database(postgres_url))
    yield urls
    for url in urls:
        drop_database(url)


def test_replication_between_postgresql_catalogs(
    tmp_path: Path, template: Path, pg_urls: tuple[str, str]
) -> None:
    world = make_world(tmp_path, template, primary_catalog=pg_urls[0], mirror_catalog=pg_urls[1])
    world.day()
    assert world.replicate().ok
    world.day()
    report = world.replicate()
    assert report.ok and report.hospitals[0].streams[0].sent == [changeset_name("clinical", 3)]
    assert [r.header_hash for r in world.mirror_rows()] == [r.header_hash for r in world.primary_rows()]
    assert _status(world.primary, world.mirror) == {"last": 3, "mirrored": 3, "lag": 0}


# --- the catalog migration ----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    url = new_database(request.getfixturevalue("postgres_url"))
    yield url
    drop_database(url)


def _alembic(url: str, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migration_0002_upgrades_a_0001_catalog_in_place(empty_catalog: str) -> None:
    from datetime import UTC, datetime

    from center.catalog import MirrorAck, ScrubRow

    _alembic(empty_catalog, "upgrade", "0001")
    engine = create_engine(empty_catalog)
    with engine.connect() as conn:
        assert not MINE & set(inspect(conn).get_table_names())
    engine.dispose()
    with Catalog.open(empty_catalog) as c:  # opening upgrades
        c.add_hospital("H1", "h", bytes(32), "ssh-ed25519 AAAA x")
        c.set_mirror_ack(MirrorAck("H1", "clinical", "ab" * 16, 3, "0" * 64, 4, datetime.now(UTC), "x"))
        c.record_scrub(ScrubRow("H1", datetime.now(UTC), 3, 300, 2, 1, "store/H1/x: missing"))
        with c.engine.connect() as conn:

            def ours(_obj: object, name: str | None, type_: str, _reflected: bool, _other: object) -> bool:
                return type_ != "table" or name in MINE  # these tables on both sides, nothing else

            ctx = MigrationContext.configure(conn, opts={"include_object": ours, "compare_type": True})
            assert compare_metadata(ctx, metadata) == []
        [ack] = c.mirror_acks("ab" * 16).values()
        assert (ack.sequence, ack.sent, ack.last_error) == (3, 4, "x")
        assert c.scrubs()["H1"].left == 1
    _alembic(empty_catalog, "downgrade", "0001")
    engine = create_engine(empty_catalog)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert not MINE & tables and "hospitals" in tables
    with Catalog.open(empty_catalog) as c:
        assert [h.id for h in c.hospitals()] == ["H1"] and c.mirror_acks("ab" * 16) == {}


# --- over SFTP, to the mirror's own sshd --------------------------------------------------------------------


@pytest.mark.xdist_group("sshd")  # with tests/sshd.py's other users: useradd takes a lock
def test_replication_over_sftp_to_the_mirrors_own_sshd(tmp_path: Path, template: Path) -> None:
    with sshd_home() as mirror_layout:
        shutil.copytree(template, tmp_path / "hospital", symlinks=True)
        pipe = make_pipeline(tmp_path, tmp_path / "hospital" / SSMIX2_DIR)
        mirror_cfg = init_center(mirror_layout.home)
        world = World(pipe, mirror_cfg)
        replication_key = make_client_key(tmp_path, "replication")
        with Catalog.open(mirror_cfg.catalog_url) as c:
            enroll(mirror_cfg, c, HOSPITAL, HOSPITAL, pipe.agent_key(), replication_key.public_line)
        world.sync()
        world.day()
        with running_sshd(mirror_layout, {HOSPITAL: replication_key.public_line}) as server:
            known_hosts = server.write_known_hosts(tmp_path / "mirror_known_hosts")
            spec = mirror_config(
                f"sftp://{server.host}:{server.port}",
                center_key=mirror_layout.public_key,
                ssh_key=replication_key.private_key,
                known_hosts=known_hosts,
            )

            def run(**options: object) -> ReplicationReport:
                mirror = open_mirror(spec, pipe.center.layout, timeout=10.0, backoff=0.01)
                assert not isinstance(mirror, LocalMirror)
                with Catalog.open(pipe.center.catalog_url) as c:
                    return replicate(pipe.center, c, mirror, **options)  # type: ignore[arg-type]

            first = run(audit=tmp_path / "audit")
            assert first.ok, first.to_json()
            assert first.hospitals[0].streams[0].sent == [changeset_name("clinical", n) for n in (1, 2)]
            assert first.hospitals[0].streams[0].mirrored == 0  # the mirror ingests on its own
            assert "audit head not copied" in first.notes[0]
            with Catalog.open(mirror_cfg.catalog_url) as c:  # the mirror's 'center serve' sweep
                assert ingest_all(mirror_cfg, c).stored == [changeset_name("clinical", n) for n in (1, 2)]
            second = run()
            assert second.ok and second.sent == 0 and second.hospitals[0].streams[0].mirrored == 2
            for seq in (1, 2):
                assert world.mirror_blob(seq).read_bytes() == world.primary_blob(seq).read_bytes()

            # a changeset the mirror refuses: gone from its inbox without a receipt, reported next run
            world.day()
            flip_byte(world.primary_blob(3))
            assert run().ok  # sent; the mirror has not looked at it yet
            with Catalog.open(mirror_cfg.catalog_url) as c:
                assert ingest_all(mirror_cfg, c).rejected
            third = run()
            assert not third.ok
            assert third.hospitals[0].refused[0][0] == changeset_name("clinical", 3)
            assert third.hospitals[0].streams[0].mirrored == 2

"""Agent → file:// inbox → ingest → receipt → agent, end to end on real files, and every way it must fail
safely: nothing lost, nothing duplicated, nothing readable at the center."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.commands.status import agent_status
from agent.commands.sync import run_once
from agent.config import load_config
from agent.consent import ConsentRegistry
from agent.home import open_state_db
from agent.ledger import OutboxItem, StreamState, patient_key
from agent.ship import connect, ship
from agent.sync import Held, confirm_hold, run_sync
from center.catalog import Catalog
from hakobune.errors import HakobuneError
from hakobune.keys import RecipientPrivateKey, SigningKey, parse_key
from hakobune.naming import changeset_name
from hakobune.sealed import ZERO_HASH, ChangesetWriter, Epoch, read_header
from hakobune.synth import SSMIX2_DIR, advance, generate
from tests.pipeline import HOSPITAL, Pipeline, decoded, expected_state, make_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hospital_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hospital")
    generate(out, 40, 5, seed=3, workers=1)
    return out


@pytest.fixture
def pipe(tmp_path: Path, hospital_template: Path) -> Pipeline:
    hospital = tmp_path / "hospital"
    shutil.copytree(hospital_template, hospital, symlinks=True)
    return make_pipeline(tmp_path, hospital / SSMIX2_DIR)


def _sync_ship(pipe: Pipeline) -> dict[str, object]:
    return run_once(pipe.agent_home)


def _collect(pipe: Pipeline) -> list[str]:
    cfg = load_config(pipe.agent_home)
    with open_state_db(pipe.agent_home) as db, connect(cfg) as transport:
        return ship(cfg, db, transport).acked


def _outbox(pipe: Pipeline) -> list[str]:
    return sorted(p.name for p in load_config(pipe.agent_home).outbox.iterdir())


def test_baseline_then_daily_increments_replay_to_the_tree(pipe: Pipeline) -> None:
    doc = _sync_ship(pipe)
    assert doc["sync"]["status"] == "sealed" and doc["sync"]["kind"] == "baseline"  # type: ignore[index]
    report = pipe.ingest()
    assert report.stored == [changeset_name("clinical", 1)] and not report.rejected
    assert _collect(pipe) == [changeset_name("clinical", 1)]
    assert _outbox(pipe) == []  # deleted only after the receipt
    assert decoded(pipe.replay().records) == decoded(expected_state(pipe.ssmix2))

    for day in range(2):
        advance(pipe.ssmix2.parent, 1, workers=1, change_rate=0.2)
        doc = _sync_ship(pipe)
        assert doc["sync"]["kind"] == "incremental"  # type: ignore[index]
        assert pipe.ingest().stored == [changeset_name("clinical", 2 + day)]
        _collect(pipe)
        assert decoded(pipe.replay().records) == decoded(expected_state(pipe.ssmix2))
    assert _sync_ship(pipe)["sync"]["status"] == "nothing"  # type: ignore[index]
    with open_state_db(pipe.agent_home) as db:
        status = agent_status(db)
    assert status["streams"][0]["acked_sequence"] == 3 and not status["pending"]


def test_opt_outs_before_and_after_sending(pipe: Pipeline) -> None:
    patients = sorted({p.name for p in pipe.ssmix2.glob("*/*/*")})
    early, late = patients[0], patients[1]
    with open_state_db(pipe.agent_home) as db:
        ConsentRegistry(db).set(early, "all")
    _sync_ship(pipe)
    pipe.ingest()
    state = pipe.replay()
    assert not any(k[0] == early for k in state.records)
    assert any(k[0] == late for k in state.records)

    with open_state_db(pipe.agent_home) as db:
        ConsentRegistry(db).set(late, "all")
        with db.connection() as conn:
            token = patient_key(conn, "clinical", late).token  # type: ignore[union-attr]
    doc = _sync_ship(pipe)
    assert doc["sync"]["build"]["tombstones"] == 1  # type: ignore[index]
    report = pipe.ingest()
    assert report.shredded >= 1
    state = pipe.replay()
    assert not any(k[0] in (early, late) for k in state.records)
    assert decoded(state.records) == decoded(expected_state(pipe.ssmix2, excluded=[early, late]))
    baseline = pipe.stored()[0]
    header = read_header(baseline).header
    raw = baseline.read_bytes()[header.keys_offset : header.payload_offset]
    entries = [raw[i : i + 124] for i in range(0, len(raw), 124)]
    shredded = [e for e in entries if e[:16] == token]
    assert shredded and all(e[64:] == bytes(60) for e in shredded)
    with Catalog.open(pipe.center.catalog_url) as catalog:
        assert token.hex() in catalog.tombstones(HOSPITAL)

    # Withdrawing the opt-out sends the patient's whole record again.
    with open_state_db(pipe.agent_home) as db:
        ConsentRegistry(db).remove(late)
    _sync_ship(pipe)
    pipe.ingest()
    assert decoded(pipe.replay().records) == decoded(expected_state(pipe.ssmix2, excluded=[early]))


def test_network_cut_for_days_then_catching_up(pipe: Pipeline) -> None:
    cfg = load_config(pipe.agent_home)
    with open_state_db(pipe.agent_home) as db:
        for _ in range(3):
            run_sync(cfg, db)
            advance(pipe.ssmix2.parent, 1, workers=1, change_rate=0.2)
        run_sync(cfg, db)
    assert len(_outbox(pipe)) == 4
    _sync_ship(pipe)
    report = pipe.ingest()
    assert len(report.stored) == 4
    assert len(_collect(pipe)) == 4 and _outbox(pipe) == []
    assert decoded(pipe.replay().records) == decoded(expected_state(pipe.ssmix2))


def test_agent_killed_mid_upload_resumes(pipe: Pipeline) -> None:
    cfg = load_config(pipe.agent_home)
    with open_state_db(pipe.agent_home) as db:
        result = run_sync(cfg, db)
    assert result.name is not None
    local = cfg.outbox / result.name
    incoming = pipe.center.layout.incoming(HOSPITAL) / result.name
    incoming.write_bytes(local.read_bytes()[: local.stat().st_size // 2])  # the kill
    assert pipe.ingest().incomplete == [result.name]  # an upload in progress is left alone
    _sync_ship(pipe)
    assert incoming.read_bytes() == local.read_bytes()
    assert pipe.ingest().stored == [result.name]
    assert _collect(pipe) == [result.name]


def test_center_killed_mid_ingest_restarts_cleanly(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    _sync_ship(pipe)

    def crash(*_: object, **__: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(Catalog, "add_changeset", crash)
    with pytest.raises(SystemExit):
        pipe.ingest()
    monkeypatch.undo()
    report = pipe.ingest()
    assert report.stored == [changeset_name("clinical", 1)]
    assert not list(pipe.center.layout.store(HOSPITAL, "clinical").glob("*.tmp"))
    assert pipe.ingest().stored == []
    with Catalog.open(pipe.center.catalog_url) as catalog:
        assert [r.sequence for r in catalog.changesets(HOSPITAL, "clinical")] == [1]


def _forge(pipe: Pipeline, *, sequence: int, prev: str, signer: SigningKey, hospital: str = HOSPITAL) -> Path:
    out = pipe.root / f"forged-{sequence}.hkcs"
    epoch = Epoch.create(pipe.release.public, hospital, "clinical")
    w = ChangesetWriter(
        out,
        hospital=hospital,
        stream="clinical",
        sequence=sequence,
        prev=prev,
        kind="incremental",
        epoch=epoch,
        recipient=pipe.release.public,
        signer=signer,
        created_at="2026-11-21T00:00:00Z",
    )
    w.add(b"x" * 16, b"y" * 16, b"k" * 32, [b'{"del":["1","2","3","4","5"]}\n'])
    w.finish()
    return out


def _agent_signing_key(pipe: Pipeline) -> SigningKey:
    key = parse_key(load_config(pipe.agent_home).signing_key.read_text(), "agent.key")
    assert isinstance(key, SigningKey)
    return key


@pytest.mark.parametrize(
    "attack", ["tampered", "forged", "replayed", "reordered", "cross-hospital", "not-ours"]
)
def test_bad_uploads_are_rejected_with_a_reason_and_never_stored(pipe: Pipeline, attack: str) -> None:
    _sync_ship(pipe)
    assert pipe.ingest().stored
    incoming = pipe.center.layout.incoming(HOSPITAL)
    head = read_header(pipe.stored()[0]).header
    if attack == "tampered":
        advance(pipe.ssmix2.parent, 1, workers=1, change_rate=0.2)
        _sync_ship(pipe)
        victim = incoming / changeset_name("clinical", 2)
        data = bytearray(victim.read_bytes())
        data[-5] ^= 0xFF
        victim.write_bytes(bytes(data))
        expected = "payload does not match"
    elif attack == "forged":
        forged = _forge(pipe, sequence=2, prev=head.hash, signer=SigningKey.generate())
        shutil.copy(forged, incoming / changeset_name("clinical", 2))
        expected = "signature does not verify"
    elif attack == "replayed":
        forged = _forge(pipe, sequence=1, prev=ZERO_HASH, signer=_agent_signing_key(pipe))
        shutil.copy(forged, incoming / changeset_name("clinical", 1))
        expected = "already stored with another hash"
    elif attack == "reordered":
        forged = _forge(pipe, sequence=2, prev=ZERO_HASH, signer=_agent_signing_key(pipe))
        shutil.copy(forged, incoming / changeset_name("clinical", 2))
        expected = "does not chain"
    elif attack == "cross-hospital":
        forged = _forge(
            pipe, sequence=2, prev=head.hash, signer=_agent_signing_key(pipe), hospital="1320000002"
        )
        shutil.copy(forged, incoming / changeset_name("clinical", 2))
        expected = "arrived for hospital"
    else:
        (incoming / "ransom-note.txt").write_text("pay")
        expected = "not a changeset file name"
    report = pipe.ingest()
    assert len(report.rejected) == 1 and expected in report.rejected[0][1], report.rejected
    assert report.stored == []
    assert [p.name for p in pipe.stored()] == [changeset_name("clinical", 1)]
    rejected = pipe.center.layout.rejected(HOSPITAL)
    reasons = [p.read_text() for p in rejected.glob("*.reason")]
    assert len(reasons) == 1 and expected in reasons[0]
    with Catalog.open(pipe.center.catalog_url) as catalog:
        assert expected in catalog.rejections(HOSPITAL)[0].reason
    if attack == "tampered":  # the agent still has it: the next ship re-uploads a good copy
        _sync_ship(pipe)
        assert pipe.ingest().stored == [changeset_name("clinical", 2)]


def test_gap_waits_and_duplicates_are_idempotent(pipe: Pipeline) -> None:
    cfg = load_config(pipe.agent_home)
    with open_state_db(pipe.agent_home) as db:
        run_sync(cfg, db)
        advance(pipe.ssmix2.parent, 1, workers=1, change_rate=0.2)
        run_sync(cfg, db)
    incoming = pipe.center.layout.incoming(HOSPITAL)
    second = changeset_name("clinical", 2)
    shutil.copy(cfg.outbox / second, incoming / second)
    report = pipe.ingest()
    assert report.waiting == [second] and not report.stored
    with Catalog.open(pipe.center.catalog_url) as catalog:
        st = next(s for s in catalog.status() if s.hospital == HOSPITAL and s.stream == "clinical")
        assert st.gaps == [(1, 1)] and st.waiting == [2]
    _sync_ship(pipe)
    assert pipe.ingest().stored == [changeset_name("clinical", 1), second]
    shutil.copy(cfg.outbox / second, incoming / second)  # uploaded again before the receipt came
    report = pipe.ingest()
    assert report.duplicates == [second] and not report.rejected
    assert len(_collect(pipe)) == 2


def test_ransomware_day_is_held_not_shipped(pipe: Pipeline) -> None:
    _sync_ship(pipe)
    pipe.ingest()
    _collect(pipe)
    files = sorted(p for p in pipe.ssmix2.rglob("*") if p.is_file())
    for p in files[: int(len(files) * 0.8)]:  # encrypt and rename most files, as ransomware does
        p.with_name(p.name + ".locked").write_bytes(os.urandom(64))
        p.unlink()
    cfg = load_config(pipe.agent_home)
    with open_state_db(pipe.agent_home) as db, pytest.raises(Held, match=r"vanished|not SS-MIX2"):
        run_sync(cfg, db)
    assert _outbox(pipe) == []
    with open_state_db(pipe.agent_home) as db:
        assert agent_status(db)["held"]
        with db.connection() as conn:
            assert StreamState.load(conn, "clinical").last_sequence == 1  # type: ignore[union-attr]
        assert confirm_hold(db, "test-operator") is not None
        result = run_sync(cfg, db)  # confirmed: shipped as the operator decided
    assert result.status == "sealed"


def test_the_center_cannot_decrypt_anything_it_holds(pipe: Pipeline) -> None:
    _sync_ship(pipe)
    pipe.ingest()
    _collect(pipe)
    cfg = load_config(pipe.agent_home)
    secrets = [pipe.release.raw]
    with open_state_db(pipe.agent_home) as db, db.connection() as conn:
        state = StreamState.load(conn, "clinical")
        assert state is not None and state.epoch_key is not None
        secrets.append(state.epoch_key)
        secrets += [key for (key,) in conn.execute('SELECT "key" FROM patient_key')]
    secrets.append(cfg.token_key.read_bytes())
    center_files = [p for p in pipe.center.layout.home.rglob("*") if p.is_file()]
    assert center_files
    blob = b"".join(p.read_bytes() for p in center_files)
    for secret in secrets:
        assert secret not in blob
    # Every key the center holds is a public key or its own signing key; none opens a changeset.
    for p in center_files:
        try:
            key = parse_key(p.read_text(encoding="ascii"), str(p))
        except (UnicodeDecodeError, HakobuneError):
            continue
        assert not isinstance(key, RecipientPrivateKey)


def test_outbox_items_survive_a_crash_between_seal_and_commit(pipe: Pipeline) -> None:
    cfg = load_config(pipe.agent_home)
    cfg.outbox.mkdir(parents=True, exist_ok=True)
    orphan = cfg.outbox / changeset_name("clinical", 7)
    orphan.write_bytes(b"half-written")
    with open_state_db(pipe.agent_home) as db:
        result = run_sync(cfg, db)
        assert not orphan.exists()
        with db.connection() as conn:
            assert [o.sequence for o in OutboxItem.select(conn)] == [result.sequence]


def test_the_same_pipeline_on_a_postgresql_catalog(
    tmp_path: Path, hospital_template: Path, postgres_url: str
) -> None:
    from tests.postgres import new_database

    hospital = tmp_path / "hospital"
    shutil.copytree(hospital_template, hospital, symlinks=True)
    pipe = make_pipeline(tmp_path, hospital / SSMIX2_DIR, catalog_url=new_database(postgres_url))
    assert pipe.center.catalog_url.startswith("postgresql")
    _sync_ship(pipe)
    assert pipe.ingest().stored == [changeset_name("clinical", 1)]
    advance(hospital, 1, workers=1, change_rate=0.2)
    _sync_ship(pipe)
    assert pipe.ingest().stored == [changeset_name("clinical", 2)]
    assert _collect(pipe) == [changeset_name("clinical", 2)]  # receipt 1 came with the second sync
    with Catalog.open(pipe.center.catalog_url) as catalog:
        status = next(s for s in catalog.status() if s.hospital == HOSPITAL and s.stream == "clinical")
        assert status.last_sequence == 2 and not status.stale and status.gaps == []
    assert decoded(pipe.replay().records) == decoded(expected_state(pipe.ssmix2))

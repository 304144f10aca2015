"""Research ingest end to end: synthetic hospital → agent sync (both streams) → center ingest → research
ingest into DuckDB → exactly the de-identified rows of the tree minus opt-outs; incremental days,
idempotent re-runs, and every way a changeset must be refused with nothing of it applied."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent.consent import ConsentRegistry
from agent.home import open_state_db
from hakobune.audit import LOG_FILE, read_entries, verify_log
from hakobune.cli import app
from hakobune.errors import InputError
from hakobune.keys import RecipientPrivateKey, SigningKey, load_signing_key, write_key
from hakobune.naming import changeset_name
from hakobune.sealed import FRAME_TARGET, ChangesetWriter, Epoch, read_header
from hakobune.synth import SSMIX2_DIR, advance, generate
from research import ingest as research_ingest
from research.database import ResearchDB
from research.ingest import ingest, sources_from_center, sources_from_store
from tests.research.conftest import (
    RS_HOSPITAL,
    RS_TABLES,
    RsPipeline,
    rs_db_rows,
    rs_expected_rows,
    rs_make_pipeline,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rs_ingest_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rs-hospital")
    generate(out, 36, 4, seed=5, workers=1)
    return out


@pytest.fixture
def rs_pipe(tmp_path: Path, rs_ingest_template: Path) -> RsPipeline:
    hospital = tmp_path / "hospital"
    shutil.copytree(rs_ingest_template, hospital, symlinks=True)
    return rs_make_pipeline(tmp_path, hospital / SSMIX2_DIR)


def _patients(pipe: RsPipeline) -> list[str]:
    return sorted(p.name for p in pipe.ssmix2.glob("*/*/*"))


def _synced(pipe: RsPipeline, db: Path) -> None:
    pipe.sync()
    report = pipe.center_ingest()
    assert not report.rejected, report.rejected
    rep = pipe.research_ingest(db)
    assert not rep.refused, rep.refused


def _assert_no_leftovers(db: Path, database: ResearchDB | None = None) -> None:
    """No staging table (in the connection that ingested, when given) and no scratch folder beside ``db``."""
    with ResearchDB.open(db) if database is None else nullcontext(database) as conn:
        staged = conn.conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE starts_with(table_name, '_stage_')"
        ).fetchone()
    assert staged == (0,)
    assert not list(db.parent.glob(f".{db.name}.ingest-*"))


def test_end_to_end_rows_equal_the_source_minus_opt_outs_then_an_incremental_day(
    rs_pipe: RsPipeline, tmp_path: Path
) -> None:
    everything, research_only = _patients(rs_pipe)[:2]
    with open_state_db(rs_pipe.agent_home) as state:
        ConsentRegistry(state).set(everything, "all")
        ConsentRegistry(state).set(research_only, "research")
    db = tmp_path / "research.duckdb"
    _synced(rs_pipe, db)
    p = rs_pipe.pseudonymizer()
    expected = rs_expected_rows(rs_pipe.ssmix2, p, excluded=(everything, research_only))
    got = rs_db_rows(db)
    assert {t: len(v) for t, v in got.items()} == {t: len(v) for t, v in expected.items()}
    assert got == expected
    assert all(got[t] for t in ("patients", "conditions", "prescriptions", "labs"))
    excluded = {p.pseudonym(everything), p.pseudonym(research_only)}
    assert not excluded & {row[0] for row in got["patients"]}

    for _ in range(2):  # incremental days: renames, new files, deletions
        advance(rs_pipe.ssmix2.parent, 1, workers=1, change_rate=0.3)
        doc = rs_pipe.sync()
        assert doc["sync"]["research"]["kind"] == "incremental"
        rs_pipe.center_ingest()
        rep = rs_pipe.research_ingest(db)
        assert not rep.refused and rep.hospitals[0].applied
        assert rs_db_rows(db) == rs_expected_rows(rs_pipe.ssmix2, p, excluded=(everything, research_only))
    with ResearchDB.open(db) as database:
        seqs = database.conn.execute("SELECT sequence, kind FROM ingested ORDER BY sequence").fetchall()
    assert seqs == [(1, "baseline"), (2, "incremental"), (3, "incremental")]


def test_rerun_is_idempotent_and_parquet_export_is_readable(rs_pipe: RsPipeline, tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    _synced(rs_pipe, db)
    before = rs_db_rows(db)
    again = rs_pipe.research_ingest(db)
    assert again.hospitals[0].applied == [] and again.hospitals[0].already == 1 and not again.refused
    assert rs_db_rows(db) == before

    runner = CliRunner()
    out = tmp_path / "parquet"
    result = runner.invoke(app, ["research", "export-parquet", "--db", str(db), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    conn = duckdb.connect()
    for table in RS_TABLES:
        rows = conn.execute(f"SELECT count(*) FROM read_parquet('{out / (table + '.parquet')}')").fetchone()
        assert rows is not None and rows[0] == len(before[table])
    lab = conn.execute(f"SELECT value, date FROM read_parquet('{out / 'labs.parquet'}') LIMIT 1").fetchone()
    assert lab is not None and isinstance(lab[0], float)
    assert not list(out.glob("*.tmp"))


def test_cli_ingest_from_a_store_with_agent_key_files(rs_pipe: RsPipeline, tmp_path: Path) -> None:
    rs_pipe.sync()
    rs_pipe.center_ingest()
    keys = tmp_path / "agent-keys"
    keys.mkdir()
    write_key(keys / f"{RS_HOSPITAL}.pub", rs_pipe.agent_key())
    write_key(tmp_path / "analysis.key", rs_pipe.analysis)
    store = rs_pipe.world.center.layout.home / "store"
    db = tmp_path / "cli.duckdb"
    args = ["research", "ingest", "--store", str(store), "--agent-keys", str(keys)]
    log = tmp_path / "audit"
    args += ["--key", str(tmp_path / "analysis.key"), "--db", str(db), "--json"]
    result = CliRunner().invoke(app, [*args, "--audit", str(log), "--actor", "data-manager"])
    assert result.exit_code == 0, result.output
    assert '"changesets": 1' in result.output and '"refused": []' in result.output
    assert rs_db_rows(db) == rs_expected_rows(rs_pipe.ssmix2, rs_pipe.pseudonymizer())

    # One audit entry per run, counts only: no pseudonym, token or record of the database is in the log.
    [entry] = list(read_entries(log))
    with ResearchDB.open(db) as database:
        records = database.conn.execute("SELECT sum(puts) FROM ingested").fetchone()
        secrets = database.conn.execute(
            "SELECT pid FROM patients UNION ALL SELECT token FROM tokens UNION ALL SELECT link FROM patients "
            "WHERE link IS NOT NULL UNION ALL SELECT rkey FROM labs"
        ).fetchall()
    assert (entry.action, entry.actor, entry.hospital) == ("research.ingest", "data-manager", "")
    assert records is not None and records[0] > 0
    assert entry.details == {
        "hospitals": 1,
        "changesets": 1,
        "records": records[0],
        "deletions": 0,
        "tombstones": 0,
        "refused": 0,
        "gaps": 0,
    }
    text = (log / LOG_FILE).read_text()
    assert secrets and not [s for (s,) in secrets if s in text]
    assert verify_log(log).ok

    # A hospital whose agent key file is missing is refused by name; nothing of it is applied.
    (keys / f"{RS_HOSPITAL}.pub").unlink()
    with ResearchDB.open(tmp_path / "other.duckdb") as database:
        report = ingest(database, sources_from_store(store, keys), rs_pipe.analysis)
        assert report.refused and "key file not found" in report.refused[0][1]
        assert database.counts()["labs"] == 0


def test_keygen_makes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["research", "keygen", "--out", str(tmp_path / "k"), "--suite", "cryptrec-p256"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "analysis.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k" / "analysis.pub").read_text().startswith("cryptrec-p256:public:")


def _next_forged(
    pipe: RsPipeline, signer: SigningKey, ops: list[list[bytes]], recipient: RecipientPrivateKey
) -> Path:
    """A research changeset that follows the stored chain, signed by ``signer`` and sealed to
    ``recipient``, one patient per entry of ``ops``; written into the center's store."""
    head = read_header(pipe.stored()[-1]).header
    out = pipe.world.center.layout.stored(RS_HOSPITAL, "research", head.sequence + 1)
    w = ChangesetWriter(
        out,
        hospital=RS_HOSPITAL,
        stream="research",
        sequence=head.sequence + 1,
        prev=head.hash,
        kind="incremental",
        epoch=Epoch.create(recipient.public, RS_HOSPITAL, "research"),
        recipient=recipient.public,
        signer=signer,
        created_at="2026-01-01T00:00:00Z",
    )
    for i, patient_ops in enumerate(ops):
        w.add(bytes([i + 1]) * 16, b"k" * 16, b"d" * 32, patient_ops)
    w.finish()
    return out


def _agent_signing_key(pipe: RsPipeline) -> SigningKey:
    return load_signing_key(pipe.world.agent.signing_key)


_LAB = (
    b'{"put":{"kind":"lab","v":1,"r":{"key":{"pid":"%s","date":"20250101","type":"OML-11",'
    b'"order":"00000000000000ff","item":"1.1"},"date":"2025-01-01","age":50,"code":"3A010000002327101",'
    b'"value":7.1,"unit":"g/dl","flag":null}}}\n'
)


@pytest.mark.parametrize(
    "attack", ["tampered", "forged", "wrong-key", "bad-frame", "mixed-patients", "token-two-pseudonyms"]
)
def test_refused_changesets_name_the_file_and_apply_nothing(
    rs_pipe: RsPipeline, tmp_path: Path, attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "r.duckdb"
    _synced(rs_pipe, db)
    before = rs_db_rows(db)
    monkeypatch.setattr(research_ingest, "FLUSH_BYTES", 1)  # every frame its own staged batch
    key = rs_pipe.analysis
    good = [_LAB % b"a"]
    if attack == "tampered":
        advance(rs_pipe.ssmix2.parent, 1, workers=1, change_rate=0.3)
        rs_pipe.sync()
        rs_pipe.center_ingest()
        victim = rs_pipe.stored()[-1]
        data = bytearray(victim.read_bytes())
        data[-7] ^= 0x01
        victim.write_bytes(bytes(data))
        expected = "payload does not match"
    elif attack == "forged":
        victim = _next_forged(rs_pipe, SigningKey.generate(), [good], key)
        expected = "signature does not verify"
    elif attack == "wrong-key":
        victim = _next_forged(
            rs_pipe, _agent_signing_key(rs_pipe), [good], RecipientPrivateKey.generate("cryptrec-p256")
        )
        expected = "cannot open the epoch key"
    elif attack == "bad-frame":  # signed by the agent, sealed right, but the second patient's records are bad
        victim = _next_forged(
            rs_pipe,
            _agent_signing_key(rs_pipe),
            [good, [b'{"put":{"kind":"name","v":1,"r":{"key":{"pid":"b"}}}}\n']],
            key,
        )
        expected = "not research records of a known kind"
    elif attack == "mixed-patients":
        victim = _next_forged(
            rs_pipe,
            _agent_signing_key(rs_pipe),
            [[_LAB % b"a", _LAB.replace(b'"1.1"', b'"1.2"') % b"b"]],
            key,
        )
        expected = "mixes operations of different patients"
    else:  # one patient's frames, each consistent, the second (another batch) naming another pseudonym
        first_frame = [_LAB % b"a"] * -(-FRAME_TARGET // len(_LAB % b"a"))
        victim = _next_forged(rs_pipe, _agent_signing_key(rs_pipe), [good, [*first_frame, _LAB % b"b"]], key)
        expected = "one patient token stands for two pseudonyms"
    report = rs_pipe.research_ingest(db)
    assert len(report.refused) == 1, report.refused
    file, reason = report.refused[0]
    assert Path(file).name == victim.name and expected in reason
    assert rs_db_rows(db) == before  # nothing of it applied
    with ResearchDB.open(db) as database:
        assert database.last_ingested(RS_HOSPITAL) is not None
        assert database.last_ingested(RS_HOSPITAL).sequence == 1  # type: ignore[union-attr]

    # The CLI says it in one line naming the file, and exits non-zero.
    write_key(tmp_path / "analysis.key", key)
    result = CliRunner().invoke(
        app,
        [
            *("research", "ingest", "--center", str(rs_pipe.center_home)),
            *("--key", str(tmp_path / "analysis.key"), "--db", str(db), "--audit", str(tmp_path / "log")),
        ],
    )
    assert result.exit_code == 2
    assert victim.name in result.output and expected in result.output
    [entry] = list(read_entries(tmp_path / "log"))
    assert entry.action == "research.ingest" and entry.details["refused"] == 1
    assert entry.details["changesets"] == 0 and entry.details["records"] == 0
    _assert_no_leftovers(db)


def test_ingest_with_the_wrong_analysis_key_refuses_the_baseline(rs_pipe: RsPipeline, tmp_path: Path) -> None:
    rs_pipe.sync()
    rs_pipe.center_ingest()
    db = tmp_path / "r.duckdb"
    report = rs_pipe.research_ingest(db, key=RecipientPrivateKey.generate("cryptrec-p256"))
    assert report.refused and "cannot open the epoch key" in report.refused[0][1]
    assert report.refused[0][0].endswith(changeset_name("research", 1))
    assert all(not rows for rows in rs_db_rows(db).values())


def test_a_gap_stops_the_run_and_is_reported(rs_pipe: RsPipeline, tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    _synced(rs_pipe, db)
    for _ in range(2):
        advance(rs_pipe.ssmix2.parent, 1, workers=1, change_rate=0.3)
        rs_pipe.sync()
        rs_pipe.center_ingest()
    rs_pipe.stored()[1].unlink()  # sequence 2 lost
    report = rs_pipe.research_ingest(db)
    h = report.hospitals[0]
    assert h.applied == [] and h.gap is not None and "sequence 2 is missing" in h.gap and not report.refused


def test_a_store_without_a_baseline_is_reported_not_refused(tmp_path: Path) -> None:
    store = tmp_path / "store" / RS_HOSPITAL / "research"
    store.mkdir(parents=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key(keys / f"{RS_HOSPITAL}.pub", SigningKey.generate().public)
    with ResearchDB.open(tmp_path / "r.duckdb") as database:
        report = ingest(
            database,
            sources_from_store(tmp_path / "store", keys),
            RecipientPrivateKey.generate("cryptrec-p256"),
        )
    assert report.hospitals[0].gap is not None and "no readable baseline" in report.hospitals[0].gap
    assert not report.refused


def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "r.duckdb"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match=r"r\.duckdb"):
        ResearchDB.open(bad)
    with pytest.raises(InputError, match="not found"):
        ResearchDB.open(tmp_path / "missing.duckdb", create=False)


def test_sources_from_center_name_each_hospital_with_its_registered_key(rs_pipe: RsPipeline) -> None:
    rs_pipe.sync()
    rs_pipe.center_ingest()
    [source] = sources_from_center(rs_pipe.center_home)
    assert source.hospital == RS_HOSPITAL and source.key == rs_pipe.agent_key()


class _PowerCut(Exception):
    """Stands for a crash: nothing catches it."""


@pytest.mark.parametrize("when", ["staging", "applying"])
def test_a_crash_mid_changeset_leaves_the_database_as_before_and_the_next_run_applies_it(
    rs_pipe: RsPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    db = tmp_path / "r.duckdb"
    _synced(rs_pipe, db)
    before = rs_db_rows(db)
    advance(rs_pipe.ssmix2.parent, 1, workers=1, change_rate=0.3)
    rs_pipe.sync()
    rs_pipe.center_ingest()

    monkeypatch.setattr(research_ingest, "FLUSH_BYTES", 4096)
    batches: list[int] = []
    load = research_ingest._Stage._load

    def load_then_crash(stage: research_ingest._Stage) -> None:
        load(stage)
        batches.append(1)
        if when == "staging" and len(batches) == 3:  # three batches are staged and committed
            raise _PowerCut

    def crash(*args: object) -> None:
        raise _PowerCut

    monkeypatch.setattr(research_ingest._Stage, "_load", load_then_crash)
    if when == "applying":  # after the real tables took the deletes and the staged rows
        monkeypatch.setattr(research_ingest, "_tombstone", crash)
    with ResearchDB.open(db) as database:
        with pytest.raises(_PowerCut):
            ingest(database, sources_from_center(rs_pipe.center_home), rs_pipe.analysis)
        _assert_no_leftovers(db, database)
    assert len(batches) >= 3
    assert rs_db_rows(db) == before

    monkeypatch.undo()
    report = rs_pipe.research_ingest(db)
    assert report.hospitals[0].applied == [2] and not report.refused
    assert rs_db_rows(db) == rs_expected_rows(rs_pipe.ssmix2, rs_pipe.pseudonymizer())


def test_a_killed_ingest_leaves_nothing_and_the_next_run_cleans_up_and_applies(
    rs_pipe: RsPipeline, tmp_path: Path
) -> None:
    rs_pipe.sync()
    rs_pipe.center_ingest()
    write_key(tmp_path / "analysis.key", rs_pipe.analysis)
    db = tmp_path / "r.duckdb"
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from hakobune.keys import load_recipient_private
        from research import ingest as ri
        from research.database import ResearchDB

        ri.FLUSH_BYTES = 4096
        load, staged = ri._Stage._load, []

        def load_then_die(stage):
            load(stage)
            staged.append(1)
            if len(staged) == 3:
                os._exit(9)

        ri._Stage._load = load_then_die
        with ResearchDB.open(Path({str(db)!r})) as database:
            key = load_recipient_private(Path({str(tmp_path / "analysis.key")!r}))
            ri.ingest(database, ri.sources_from_center(Path({str(rs_pipe.center_home)!r})), key)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    died = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True)
    assert died.returncode == 9, died.stderr.decode()
    assert list(tmp_path.glob(f".{db.name}.ingest-*"))  # the killed run's scratch folder
    assert all(not rows for rows in rs_db_rows(db).values())

    report = rs_pipe.research_ingest(db)
    assert report.hospitals[0].applied == [1] and not report.refused
    assert rs_db_rows(db) == rs_expected_rows(rs_pipe.ssmix2, rs_pipe.pseudonymizer())
    _assert_no_leftovers(db)

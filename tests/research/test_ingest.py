"""Research ingest end to end: synthetic hospital → agent sync (both streams) → center ingest → research
ingest into DuckDB → exactly the de-identified rows of the tree minus opt-outs; incremental days,
idempotent re-runs, and every way a changeset must be refused with nothing of it applied."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent.consent import ConsentRegistry
from agent.home import open_state_db
from hakobune.cli import app
from hakobune.errors import InputError
from hakobune.keys import RecipientPrivateKey, SigningKey, load_signing_key, write_key
from hakobune.naming import changeset_name
from hakobune.sealed import ChangesetWriter, Epoch, read_header
from hakobune.synth import SSMIX2_DIR, advance, generate
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
    result = CliRunner().invoke(
        app, [*args, "--key", str(tmp_path / "analysis.key"), "--db", str(db), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"changesets": 1' in result.output and '"refused": []' in result.output
    assert rs_db_rows(db) == rs_expected_rows(rs_pipe.ssmix2, rs_pipe.pseudonymizer())

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


@pytest.mark.parametrize("attack", ["tampered", "forged", "wrong-key", "bad-frame", "mixed-patients"])
def test_refused_changesets_name_the_file_and_apply_nothing(
    rs_pipe: RsPipeline, tmp_path: Path, attack: str
) -> None:
    db = tmp_path / "r.duckdb"
    _synced(rs_pipe, db)
    before = rs_db_rows(db)
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
    else:
        victim = _next_forged(
            rs_pipe,
            _agent_signing_key(rs_pipe),
            [[_LAB % b"a", _LAB.replace(b'"1.1"', b'"1.2"') % b"b"]],
            key,
        )
        expected = "mixes operations of different patients"
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
            *("--key", str(tmp_path / "analysis.key"), "--db", str(db)),
        ],
    )
    assert result.exit_code == 2
    assert victim.name in result.output and expected in result.output


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

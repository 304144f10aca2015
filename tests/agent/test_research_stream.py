"""The research stream beside the clinical one: one sync, one read of each file, two sealed changesets with
their own chains, keys and consent rules; late research opt-outs; linkage across hospitals; and a payload
that holds nothing identifying from the source tree."""

from __future__ import annotations

import collections
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

from agent.changeset import patient_token
from agent.config import load_config
from agent.consent import ConsentRegistry
from agent.home import open_state_db
from agent.keys import load_token_key
from agent.linkage import load_linkage_key, write_linkage_key
from agent.research import install_research_keys
from agent.ssmix2.reader import FileOutcome, read_found
from agent.sync import run_sync
from hakobune.errors import ConfigError, InputError
from hakobune.hl7 import decode, split_segments
from hakobune.keys import RecipientPrivateKey, write_key
from hakobune.sealed import open_changeset, read_header
from hakobune.synth import SSMIX2_DIR, advance, generate
from restore.replay import replay
from tests.agent.test_deidentify import _messages as fuzz_messages
from tests.agent.test_deidentify import people
from tests.conftest import msh, ssmix_relpath, write_message
from tests.pipeline import decoded, expected_state
from tests.research.conftest import RsPipeline, rs_db_rows, rs_expected_rows, rs_make_pipeline

pytestmark = pytest.mark.integration

#: The fuzz test's world, per test run (hypothesis runs the examples of one test with one ``tmp_path``).
_FUZZ_WORLDS: dict[Path, RsPipeline] = {}


@pytest.fixture(scope="module")
def rs_stream_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rs-stream-hospital")
    generate(out, 30, 4, seed=9, workers=1)
    return out


@pytest.fixture
def rs_hospital(tmp_path: Path, rs_stream_template: Path) -> Path:
    hospital = tmp_path / "hospital"
    shutil.copytree(rs_stream_template, hospital, symlinks=True)
    return hospital / SSMIX2_DIR


def _clinical(pipe: RsPipeline) -> dict[Any, Any]:
    return decoded(
        replay(pipe.stored("clinical"), pipe.release, pipe.agent_key(), hospital=pipe.hospital).records
    )


def _research_pids(pipe: RsPipeline) -> set[str]:
    pids: set[str] = set()
    for path in pipe.stored("research"):
        ops, _ = pipe.research_ops(path)
        pids |= {m.decode() for op in ops for m in re.findall(rb'"pid":"([0-9a-f]{32})"', op)}
    return pids


def _single_worker(pipe: RsPipeline) -> None:
    cfg = pipe.agent_home / "agent.toml"
    cfg.write_text(cfg.read_text().replace("workers = 0 ", "workers = 1 "))


def test_one_sync_reads_each_file_once_and_seals_both_streams(
    tmp_path: Path, rs_hospital: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = rs_make_pipeline(tmp_path, rs_hospital)
    _single_worker(pipe)  # the readers run in this process, so the reads can be counted
    reads: collections.Counter[str] = collections.Counter()
    real = read_found

    def counting(root: str, found: Any) -> FileOutcome:
        reads[found.relpath] += 1
        return real(root, found)

    monkeypatch.setattr("agent.changeset.read_found", counting)
    doc = pipe.sync()
    s, r = doc["sync"], doc["sync"]["research"]
    assert s["status"] == "sealed" and s["kind"] == "baseline"
    assert r["status"] == "sealed" and r["kind"] == "baseline" and r["name"] == "research-000000000001.hkcs"
    assert reads and set(reads.values()) == {1}
    assert r["build"]["puts"] == s["build"]["puts"] and r["build"]["patients"] == s["build"]["patients"]

    assert pipe.center_ingest().stored == ["clinical-000000000001.hkcs", "research-000000000001.hkcs"]
    clinical, research = pipe.stored("clinical")[0], pipe.stored("research")[0]
    assert read_header(research).header.recipient == pipe.analysis.public.fingerprint
    assert read_header(clinical).header.recipient == pipe.release.public.fingerprint
    with pytest.raises(InputError, match="cannot open the epoch key"):
        open_changeset(research, pipe.release, pipe.agent_key())
    with pytest.raises(InputError, match="cannot open the epoch key"):
        open_changeset(clinical, pipe.analysis, pipe.agent_key())
    ops, _ = pipe.research_ops(research)
    assert len(ops) == r["build"]["puts"]

    again = pipe.sync()  # nothing changed: nothing sealed in either stream; receipts come back
    assert again["sync"]["status"] == "nothing" and again["sync"]["research"]["status"] == "nothing"
    assert sorted(again["ship"]["acked"]) == ["clinical-000000000001.hkcs", "research-000000000001.hkcs"]
    with open_state_db(pipe.agent_home) as db:
        from agent.commands.status import agent_status

        streams = {st["stream"]: st for st in agent_status(db)["streams"]}
    assert streams["research"]["acked_sequence"] == 1 and streams["clinical"]["acked_sequence"] == 1


def _identifiers(ssmix2: Path) -> tuple[set[str], set[str]]:
    """From the raw source messages: every non-ASCII text (names, addresses, free text) and every ASCII
    identifier (patient IDs, order numbers, postal codes, phone numbers)."""
    texts: set[str] = set()
    ids: set[str] = set()
    for path in ssmix2.rglob("*"):
        if not path.is_file():
            continue
        parts = path.name.split("_")
        ids |= {parts[0], parts[3]}
        for segment in split_segments(decode(path.read_bytes())):
            fields = segment.split("|")
            for value in re.split(r"[|^~&]", segment):
                if value and not value.isascii():
                    texts.add(value)
            if fields[0] == "PID":
                address = fields[11].split("^") if len(fields) > 11 else []
                if len(address) > 4 and address[4]:
                    ids.add(address[4])
                phone = fields[13].split("^") if len(fields) > 13 else []
                ids |= {p for p in phone if p.isdigit() and len(p) >= 9}
    return texts, {i for i in ids if i and i != "-" and i != "999999999999999"}


def test_research_payload_holds_nothing_identifying_from_the_tree(tmp_path: Path, rs_hospital: Path) -> None:
    pipe = rs_make_pipeline(tmp_path, rs_hospital)
    pipe.sync()
    advance(rs_hospital.parent, 1, workers=1, change_rate=0.3)
    pipe.sync()
    pipe.center_ingest()
    texts, ids = _identifiers(rs_hospital)
    assert len(texts) > 100 and any(len(i) == 8 and "-" in i for i in ids)  # names and postal codes found
    blob = b"".join(b"".join(pipe.research_ops(p)[0]) for p in pipe.stored("research"))
    assert blob and blob.isascii()  # no name, address or free text in kanji or kana can be in it
    # Every run of letters and digits (and hyphens, as in postal codes) of the payload, as a whole word.
    words = set(re.findall(rb"[0-9A-Za-z]+(?:-[0-9A-Za-z]+)*", blob)) | set(
        re.findall(rb"[0-9A-Za-z]+", blob)
    )
    leaked = {i for i in ids if i.encode() in words}
    assert not leaked, sorted(leaked)[:5]
    assert b'"pid":"' in blob and b'"link":"' in blob


def test_consent_scopes_and_a_late_research_opt_out(tmp_path: Path, rs_hospital: Path) -> None:
    pipe = rs_make_pipeline(tmp_path, rs_hospital)
    patients = sorted(p.name for p in rs_hospital.glob("*/*/*"))
    everything, research_only, late = patients[:3]
    with open_state_db(pipe.agent_home) as state:
        ConsentRegistry(state).set(everything, "all")
        ConsentRegistry(state).set(research_only, "research")
    pipe.sync()
    pipe.center_ingest()
    p = pipe.pseudonymizer()
    clinical_pids = {k[0] for k in _clinical(pipe)}
    assert research_only in clinical_pids and everything not in clinical_pids and late in clinical_pids
    research_pids = _research_pids(pipe)
    assert p.pseudonym(late) in research_pids
    assert not {p.pseudonym(everything), p.pseudonym(research_only)} & research_pids
    db = tmp_path / "r.duckdb"
    assert not pipe.research_ingest(db).refused
    assert p.pseudonym(late) in {row[0] for row in rs_db_rows(db)["patients"]}

    with open_state_db(pipe.agent_home) as state:
        ConsentRegistry(state).set(late, "research")
    doc = pipe.sync()
    assert doc["sync"]["status"] == "nothing"  # the clinical copy keeps the patient
    assert doc["sync"]["research"]["build"]["tombstones"] == 1
    assert pipe.center_ingest().shredded >= 1
    _, tombstones = pipe.research_ops(pipe.stored("research")[-1])
    token = patient_token(load_token_key(load_config(pipe.agent_home).token_key), "research", late)
    assert tombstones == (token.hex(),)
    assert not pipe.research_ingest(db).refused
    rows = rs_db_rows(db)
    assert all(
        p.pseudonym(late) not in {row[0] if t == "patients" else row[1] for row in v} for t, v in rows.items()
    )
    assert rows == rs_expected_rows(rs_hospital, p, excluded=(everything, research_only, late))
    assert late in {k[0] for k in _clinical(pipe)}  # clinical untouched
    assert _clinical(pipe) == decoded(expected_state(rs_hospital, excluded=[everything]))

    with open_state_db(pipe.agent_home) as state:  # withdrawn: the research copy gets the patient back
        ConsentRegistry(state).remove(late)
    doc = pipe.sync()
    assert doc["sync"]["research"]["status"] == "sealed" and doc["sync"]["status"] == "nothing"
    pipe.center_ingest()
    assert not pipe.research_ingest(db).refused
    assert rs_db_rows(db) == rs_expected_rows(rs_hospital, p, excluded=(everything, research_only))


def _adt(
    root: Path, pid: str, family_kana: str, given_kana: str, birth: str, ts: str, flag: str = "1"
) -> Path:
    segments = [
        msh("ADT-00"),
        f"PID|0001||{pid}^^^^PI||山田^太郎^^^^^L^I~{family_kana}^{given_kana}^^^^^L^P||{birth}|M|||"
        "^^^^100-0001^JPN^H^東京都千代田区１",
    ]
    rel = ssmix_relpath(pid, "-", "ADT-00", "999999999999999", flag, timestamp=ts)
    write_message(root, rel, segments)
    return root / rel


def _lab(root: Path, pid: str, value: str) -> None:
    segments = [
        msh("OML-11"),
        f"PID|0001||{pid}^^^^PI",
        "OBR|1|1|1|E001^血液学的検査^99O03|||20240401",
        f"OBX|1|NM|3A010000002327101^総蛋白^JC10||{value}|g/dl^g/dl^99XYZ|6.7-8.3||||F",
    ]
    write_message(
        root,
        ssmix_relpath(pid, "20240401", "OML-11", "000000000000101", timestamp="20240401120000000"),
        segments,
    )


def test_the_same_person_at_two_hospitals_links_under_different_pseudonyms(tmp_path: Path) -> None:
    linkage = os.urandom(32)
    analysis = RecipientPrivateKey.generate("cryptrec-p256")
    a_tree, b_tree = tmp_path / "a-tree", tmp_path / "b-tree"
    _adt(a_tree, "0000001", "ヤマダ", "タロウ", "19800102", "20240101000000000")
    _adt(a_tree, "0000002", "スズキ", "ハナコ", "19900505", "20240101000000000")
    _adt(b_tree, "7700042", "ﾔﾏﾀﾞ", "ﾀﾛｳ", "19800102", "20240101000000000")  # same person, other spelling
    _adt(b_tree, "0000001", "タナカ", "イチロウ", "19700101", "20240101000000000")  # same ID, other person
    for tree in (a_tree, b_tree):
        _lab(tree, sorted(p.name for p in tree.glob("*/*/*"))[0], "7.0")
    center = tmp_path / "center"
    a = rs_make_pipeline(
        tmp_path / "a", a_tree, hospital="1310000001", center_home=center, analysis=analysis, linkage=linkage
    )
    b = rs_make_pipeline(
        tmp_path / "b", b_tree, hospital="1320000002", center_home=center, analysis=analysis, linkage=linkage
    )
    a.sync()
    b.sync()
    a.center_ingest()
    db = tmp_path / "r.duckdb"
    report = a.research_ingest(db)
    assert not report.refused and [h.hospital for h in report.hospitals] == ["1310000001", "1320000002"]
    patients = {row[0]: row for row in rs_db_rows(db)["patients"]}
    pa, pb = a.pseudonymizer(), b.pseudonymizer()
    yamada_a, yamada_b = patients[pa.pseudonym("0000001")], patients[pb.pseudonym("7700042")]
    assert yamada_a[0] != yamada_b[0] and yamada_a[1] == yamada_b[1] is not None
    assert yamada_a[2] == "1310000001" and yamada_b[2] == "1320000002"
    assert patients[pa.pseudonym("0000002")][1] not in (yamada_a[1], None)
    tanaka = patients[pb.pseudonym("0000001")]  # the same patient ID at hospital B is somebody else
    assert tanaka[0] != yamada_a[0] and tanaka[1] != yamada_a[1]
    assert len(patients) == 4


def test_a_corrected_birth_date_resends_the_ages(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    old = _adt(tree, "0000001", "ヤマダ", "タロウ", "19500402", "20240101000000000")
    _lab(tree, "0000001", "7.0")
    pipe = rs_make_pipeline(tmp_path, tree)
    pipe.sync()
    pipe.center_ingest()
    db = tmp_path / "r.duckdb"
    pipe.research_ingest(db)
    assert [row[-1] for row in rs_db_rows(db)["labs"]] == [73]
    old.rename(old.with_name(old.name[:-1] + "2"))  # superseded by a corrected ADT-00
    _adt(tree, "0000001", "ヤマダ", "タロウ", "19600402", "20240301000000000")
    doc = pipe.sync()
    assert doc["sync"]["research"]["build"]["refreshed"] == 1
    pipe.center_ingest()
    assert not pipe.research_ingest(db).refused
    rows = rs_db_rows(db)
    assert [row[-1] for row in rows["labs"]] == [63] and rows["patients"][0][-1] == "1960-04"
    assert rows == rs_expected_rows(tree, pipe.pseudonymizer())


def test_research_turned_on_later_starts_its_baseline_beside_the_clinical_increment(
    tmp_path: Path, rs_hospital: Path
) -> None:
    pipe = rs_make_pipeline(tmp_path, rs_hospital, research=False)
    first = pipe.sync()
    assert first["sync"]["research"] is None
    advance(rs_hospital.parent, 1, workers=1, change_rate=0.3)
    lab_dirs = sorted(d for d in rs_hospital.glob("*/*/*/*/OML-11") if len(list(d.iterdir())) >= 1)
    for f in lab_dirs[0].iterdir():  # a unit whose files vanish outright (not renamed to _0)
        f.unlink()
    write_key(tmp_path / "analysis.pub", pipe.analysis.public)
    write_linkage_key(tmp_path / "linkage.key", pipe.linkage)
    installed = install_research_keys(
        pipe.agent_home, analysis_key=tmp_path / "analysis.pub", linkage_key=tmp_path / "linkage.key"
    )
    assert installed.config_updated
    doc = pipe.sync()
    assert doc["sync"]["kind"] == "incremental" and doc["sync"]["build"]["dels"] > 0
    assert doc["sync"]["research"]["kind"] == "baseline"
    pipe.center_ingest()
    assert _clinical(pipe) == decoded(expected_state(rs_hospital))
    db = tmp_path / "r.duckdb"
    assert not pipe.research_ingest(db).refused
    assert rs_db_rows(db) == rs_expected_rows(rs_hospital, pipe.pseudonymizer())


def test_installing_research_keys(tmp_path: Path, rs_hospital: Path) -> None:
    pipe = rs_make_pipeline(tmp_path, rs_hospital, research=False)
    write_key(tmp_path / "analysis.pub", pipe.analysis.public)
    write_linkage_key(tmp_path / "linkage.key", pipe.linkage)
    args = {"analysis_key": tmp_path / "analysis.pub", "linkage_key": tmp_path / "linkage.key"}
    assert install_research_keys(pipe.agent_home, **args).config_updated
    again = install_research_keys(pipe.agent_home, **args)  # the same keys again: nothing changes
    assert not again.config_updated
    cfg = load_config(pipe.agent_home)
    assert cfg.research is not None and load_linkage_key(cfg.research.linkage_key) == pipe.linkage
    assert cfg.research.linkage_key.stat().st_mode & 0o777 == 0o600
    assert pipe.sync()["sync"]["research"]["kind"] == "baseline"

    write_linkage_key(tmp_path / "other.key", os.urandom(32))
    with pytest.raises(ConfigError, match="different linkage key"):
        install_research_keys(
            pipe.agent_home, analysis_key=args["analysis_key"], linkage_key=tmp_path / "other.key"
        )
    new = RecipientPrivateKey.generate("cryptrec-p256")  # the analysis center's new key: a new baseline
    write_key(tmp_path / "new.pub", new.public)
    install_research_keys(pipe.agent_home, analysis_key=tmp_path / "new.pub", linkage_key=args["linkage_key"])
    doc = pipe.sync()
    assert doc["sync"]["status"] == "nothing" and doc["sync"]["research"]["kind"] == "baseline"
    head = read_header(load_config(pipe.agent_home).outbox / doc["sync"]["research"]["name"]).header
    assert head.recipient == new.public.fingerprint and head.sequence == 2


def test_agent_init_turns_research_on_only_with_both_keys(tmp_path: Path) -> None:
    from hakobune.cli import app

    analysis = RecipientPrivateKey.generate("cryptrec-p256")
    write_key(tmp_path / "analysis.pub", analysis.public)
    write_linkage_key(tmp_path / "linkage.key", os.urandom(32))
    base = [
        "agent",
        "init",
        "--hospital",
        "1310000001",
        "--ssmix2",
        str(tmp_path),
        "--center",
        "file:///tmp/x",
    ]
    runner = CliRunner()
    half = runner.invoke(
        app, [*base, "--analysis-key", str(tmp_path / "analysis.pub"), "--home", str(tmp_path / "h1")]
    )
    assert half.exit_code != 0 and not (tmp_path / "h1" / "agent.toml").exists()
    both = [
        *base,
        "--analysis-key",
        str(tmp_path / "analysis.pub"),
        "--linkage-key",
        str(tmp_path / "linkage.key"),
    ]
    result = runner.invoke(app, [*both, "--home", str(tmp_path / "h2"), "--json"])
    assert result.exit_code == 0, result.output
    assert analysis.public.fingerprint in result.output
    assert load_config(tmp_path / "h2").research is not None


def test_research_keys_command(tmp_path: Path, rs_hospital: Path) -> None:
    import typer

    from agent.commands.research_keys import research_keys

    cli = typer.Typer()
    cli.command()(research_keys)
    runner = CliRunner()
    made = runner.invoke(cli, ["--new-linkage-key", str(tmp_path / "net.key")])
    assert made.exit_code == 0 and (tmp_path / "net.key").stat().st_mode & 0o777 == 0o600
    pipe = rs_make_pipeline(tmp_path, rs_hospital, research=False)
    write_key(tmp_path / "analysis.pub", pipe.analysis.public)
    result = runner.invoke(
        cli,
        [
            *("--analysis-key", str(tmp_path / "analysis.pub"), "--linkage-key", str(tmp_path / "net.key")),
            *("--home", str(pipe.agent_home), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"config_updated": true' in result.output
    assert load_config(pipe.agent_home).research is not None
    missing = runner.invoke(
        cli, ["--analysis-key", str(tmp_path / "analysis.pub"), "--home", str(pipe.agent_home)]
    )
    assert missing.exit_code != 0


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(person=people())
def test_fuzz_research_changesets_hold_nothing_identifying(tmp_path: Path, person: dict[str, str]) -> None:
    """Random patients full of names, addresses, phones and free text are synced one by one (one world for
    all examples: each adds a patient and seals an incremental research changeset); every decrypted
    research payload is ASCII and names none of them."""
    tree = tmp_path / "fuzz-tree"
    pipe = _FUZZ_WORLDS.get(tmp_path)
    if pipe is None:  # the first example: the world all examples of this run share
        tree.mkdir()
        pipe = _FUZZ_WORLDS[tmp_path] = rs_make_pipeline(tmp_path / "fuzz", tree)
        _single_worker(pipe)
    if (tree / person["pid"][:3] / person["pid"][3:6] / person["pid"]).exists():
        return  # the same patient ID drawn twice: nothing new to look at
    for dtype, segments in fuzz_messages(person).items():
        care = "-" if dtype in ("ADT-00", "PPR-01") else "20240401"
        rel = ssmix_relpath(person["pid"], care, dtype, person["order"], timestamp="20240401120000000")
        write_message(tree, rel, segments)
    cfg = load_config(pipe.agent_home)
    with open_state_db(pipe.agent_home) as db:
        result = run_sync(cfg, db)
    assert result.research is not None and result.research.name is not None
    _, frames, _ = open_changeset(cfg.outbox / result.research.name, pipe.analysis, pipe.agent_key())
    blob = b"".join(op for f in frames for op in f.ops)
    assert pipe.pseudonymizer().pseudonym(person["pid"]).encode() in blob
    assert blob.isascii() and b"ZQX" not in blob
    for identifier in (person["pid"], person["phone"], person["postal"], person["order"], person["birth"]):
        assert not re.search(
            rb"(?<![0-9A-Za-z])" + re.escape(identifier.encode()) + rb"(?![0-9A-Za-z])", blob
        )

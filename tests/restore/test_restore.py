"""Disaster day end to end: a ceremony's release key, a synced and ingested hospital with opt-outs and a
late opt-out (crypto-shredded at the center), an approved order, unlock with shares, replay into the
restore database, search and FHIR export — and every way unlock must refuse."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from agent.commands.sync import run_once
from agent.consent import ConsentRegistry
from agent.home import open_state_db
from center.catalog import Catalog
from center.ingest import ingest_all
from hakobune.audit import verify_log
from hakobune.cli import app
from hakobune.custody import CustodyError, ceremony, load_policy, parse_group_spec, read_word_sheet
from hakobune.errors import HakobuneError, InputError
from hakobune.keys import RecipientPrivateKey, load_signing_key, write_key
from hakobune.provision import LocalWorld, provision_local
from hakobune.records import decode, encode
from hakobune.sealed import ENTRY_SIZE, SHREDDED, read_header, verify
from hakobune.synth import CONSENT_FILE, SSMIX2_DIR, generate
from restore.commands.restore import gather_shares, read_passphrases, run_export, run_unlock
from restore.database import RestoreDB
from restore.export import BundleExporter
from restore.fhir import ExportWindow, dumps, patient_bundle
from restore.fhir.bundle import LabEntry, in_window
from restore.orders import approve, create_order, write_order
from tests.pipeline import decoded, expected_state

HOSPITAL = "1310000009"
GROUPS = ("director:1/1:director=院長", "custodians:2/3:deputy=副院長,prefecture=県,center-mo=センター")
PASSPHRASES = {
    "director": "director-pass",
    "deputy": "deputy-pass",
    "prefecture": "pref-pass1",
    "center-mo": "cmo-pass1",
}
runner = CliRunner()


@dataclass
class World:
    root: Path
    ssmix2: Path
    local: LocalWorld
    ceremony: Path
    opted_out: set[str]
    late_opt_out: str

    @property
    def policy(self) -> Path:
        return self.ceremony / "custody.json"

    def share(self, custodian: str) -> Path:
        return next((self.ceremony / "shares").glob(f"*-{custodian}.share"))

    def sheet(self, custodian: str) -> Path:
        return next((self.ceremony / "shares").glob(f"*-{custodian}.txt"))

    def order(
        self,
        approvers: tuple[str, ...],
        *,
        scope: object = "all",
        hours: float = 72,
        hospital_policy: Path | None = None,
    ) -> Path:
        policy = load_policy(hospital_policy or self.policy)
        now = datetime.now(UTC)
        of = create_order(
            policy,
            scope=scope,  # type: ignore[arg-type]
            purpose="test release",
            recipient_id="9990000099",
            recipient_name="災害拠点病院",
            recipient_key=RecipientPrivateKey.generate("cryptrec-p256").public,
            expires_at=now + timedelta(hours=hours),
            now=now,
        )
        path = write_order(self.root / "orders", of)
        for c in approvers:
            key = load_signing_key((hospital_policy or self.policy).parent / "custodians" / f"{c}.key")
            approve(path, policy, key, custodian=c, now=now)
        return path

    def ingest(self) -> None:
        with Catalog.open(self.local.center.catalog_url) as catalog:
            report = ingest_all(self.local.center, catalog)
        assert not report.rejected

    def unlock(
        self, order: Path, shares: tuple[str | Path, ...], out: Path, **kw: object
    ) -> dict[str, object]:
        """Unlock with ``shares``: custodian ids (their ``.share`` files) or share files / word sheets."""
        paths = [s if isinstance(s, Path) else self.share(s) for s in shares]
        return run_unlock(
            order=order,
            policy=self.policy,
            shares=gather_shares(paths, PASSPHRASES, HOSPITAL, interactive=False),
            hospital=HOSPITAL,
            out=out,
            audit=self.root / "audit",
            actor="test",
            center=self.local.center.layout.home,
            show_progress=False,
            **kw,  # type: ignore[arg-type]
        )


def _ceremony(out: Path, hospital: str = HOSPITAL) -> Path:
    ceremony(hospital, out, [parse_group_spec(g) for g in GROUPS], PASSPHRASES, scrypt_log_n=4)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("disaster")
    generate(root / "hospital", 40, 6, seed=5, workers=1)
    ssmix2 = root / "hospital" / SSMIX2_DIR
    with open(root / "hospital" / CONSENT_FILE, encoding="utf-8") as f:
        opted = {r["patient_id"] for r in csv.DictReader(f) if r["scope"] == "all"}
    cer = _ceremony(root / "ceremony")
    local = provision_local(
        hospital=HOSPITAL,
        ssmix2=ssmix2,
        center_home=root / "center",
        agent_home=root / "agent",
        release=load_policy(cer / "custody.json").release_key,
    )
    w = World(root, ssmix2, local, cer, opted, "")
    with open_state_db(local.agent.home) as db:
        ConsentRegistry(db).import_csv(root / "hospital" / CONSENT_FILE)
    assert not run_once(local.agent.home)["ship"]["errors"]
    w.ingest()
    run_once(local.agent.home)
    # A late opt-out: the patient's data was sent; the next sync tombstones it and the center shreds it.
    late = next(
        pid for pid in sorted({p.name for p in ssmix2.glob("*/*/*") if p.is_dir()}) if pid not in opted
    )
    with open_state_db(local.agent.home) as db:
        ConsentRegistry(db).set(late, "all")
    run_once(local.agent.home)
    w.ingest()
    run_once(local.agent.home)
    w.late_opt_out = late
    w.opted_out = opted | {late}
    return w


def test_two_of_three_custodians_unlock_and_the_restore_equals_the_hospital(
    world: World, tmp_path: Path
) -> None:
    order = world.order(("deputy", "prefecture"))
    doc = world.unlock(order, ("deputy", "center-mo"), tmp_path / "restore", export=tmp_path / "fhir")
    expected = decoded(expected_state(world.ssmix2, excluded=world.opted_out))
    with RestoreDB.open(tmp_path / "restore") as db:
        got = {}
        for row in db.patients():
            for r in row.records:
                k = r.key
                got[(k.patient_id, k.care_date, k.data_type, k.order_no, k.item)] = orjson.loads(encode(r))
        ids = {row.patient_id for row in db.patients()}
        assert db.meta()["order"] == orjson.loads(order.read_bytes())["order"]["id"]
    assert got == expected
    assert ids and not ids & world.opted_out
    files = {p.stem for p in (tmp_path / "fhir").glob("*.json")}
    assert files == ids
    replay = doc["replay"]
    assert isinstance(replay, dict) and replay["patients"] == len(ids) and replay["erased"] >= 1
    # Nothing of an opted-out or shredded patient in any bundle.
    blob = b"".join(p.read_bytes() for p in (tmp_path / "fhir").glob("*.json"))
    for pid in world.opted_out:
        assert f'"{pid}"'.encode() not in blob
    report = verify_log(world.root / "audit")
    assert report.ok, report.problems
    log = (world.root / "audit" / "audit.log").read_bytes()
    assert b'"unlock"' in log and b'"replay"' in log and b'"export"' in log


def test_the_director_alone_unlocks_with_the_word_sheet(world: World, tmp_path: Path) -> None:
    doc = world.unlock(world.order(("director",)), (world.sheet("director"),), tmp_path / "restore")
    assert doc["replay"]["patients"] > 0  # type: ignore[index]


def test_a_listed_scope_restores_only_those_patients(world: World, tmp_path: Path) -> None:
    with RestoreDB.open(_full_restore(world, tmp_path)) as db:
        some = sorted(row.patient_id for row in db.patients())[:3]
    order = world.order(("director",), scope=[*some, world.late_opt_out])
    world.unlock(order, ("director",), tmp_path / "listed")
    with RestoreDB.open(tmp_path / "listed") as db:
        assert sorted(row.patient_id for row in db.patients()) == some


def _full_restore(world: World, tmp_path: Path) -> Path:
    out = tmp_path / "full"
    if not (out / "restore.db").exists():
        world.unlock(world.order(("director",)), ("director",), out)
    return out


@pytest.mark.parametrize(
    ("approvers", "custodians", "message"),
    [
        (("deputy",), ("deputy", "prefecture"), "approv"),  # order approved by 1 of 3 only
        (("deputy", "prefecture"), ("deputy",), "too few shares"),
    ],
)
def test_unlock_refuses_too_few_approvals_or_shares(
    world: World, tmp_path: Path, approvers: tuple[str, ...], custodians: tuple[str, ...], message: str
) -> None:
    order = world.order(approvers)
    with pytest.raises(HakobuneError, match=message):
        world.unlock(order, custodians, tmp_path / "restore")
    assert not (tmp_path / "restore" / "restore.db").exists()


def test_unlock_refuses_an_expired_order(world: World, tmp_path: Path) -> None:
    order = world.order(("director",), hours=1)
    with pytest.raises(HakobuneError, match="expired"):
        world.unlock(order, ("director",), tmp_path / "r", now=datetime.now(UTC) + timedelta(hours=2))


def test_unlock_refuses_shares_of_another_ceremony(world: World, tmp_path: Path) -> None:
    other = _ceremony(tmp_path / "other")
    order = world.order(("director",))
    with pytest.raises((CustodyError, InputError)):
        world.unlock(order, (next((other / "shares").glob("*-director.share")),), tmp_path / "r")


def test_unlock_refuses_a_foreign_hospitals_order(world: World, tmp_path: Path) -> None:
    other = _ceremony(tmp_path / "other", hospital="1310000010")
    order = world.order(("director",), hospital_policy=other / "custody.json")
    with pytest.raises(HakobuneError, match=r"1310000010|policy"):
        world.unlock(order, ("director",), tmp_path / "r")


def test_a_tampered_stored_changeset_fails_the_replay_and_leaves_no_database(
    world: World, tmp_path: Path
) -> None:
    baseline = _store_copy(world, tmp_path)  # its last bytes are a frame
    data = bytearray(baseline.read_bytes())
    data[-5] ^= 1
    baseline.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"payload|frame"):
        _unlock_store_copy(world, tmp_path)
    assert not (tmp_path / "r" / "restore.db").exists()


def _store_copy(world: World, tmp_path: Path) -> Path:
    """A copy of the hospital's stored changesets in ``tmp_path/store`` (a mirror); its baseline."""
    shutil.copytree(world.local.center.layout.store(HOSPITAL, "clinical"), tmp_path / "store")
    return sorted((tmp_path / "store").glob("*.hkcs"))[0]


def _unlock_store_copy(world: World, tmp_path: Path) -> dict[str, object]:
    """Unlock (the director alone) from the copy made by :func:`_store_copy` into ``tmp_path/r``."""
    agent_pub = write_key(tmp_path / "agent.pub", load_signing_key(world.local.agent.signing_key).public)
    order = world.order(("director",))
    return world.unlock(order, ("director",), tmp_path / "r", store=tmp_path / "store", agent_key=agent_pub)


def test_cli_search_show_and_export(world: World, tmp_path: Path) -> None:
    folder = _full_restore(world, tmp_path)
    audit = str(world.root / "audit")
    with RestoreDB.open(folder) as db:
        row = next(iter(db.patients()))
    p = row.patient
    res = runner.invoke(
        app,
        [
            "restore",
            "search",
            "-r",
            str(folder),
            "--name",
            f"{p.family_kana}{p.given_kana}",
            "--birth",
            p.birth_date,
            "--audit",
            audit,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    found = orjson.loads(res.stdout)
    assert found[0]["patient_id"] == row.patient_id and found[0]["reasons"]
    res = runner.invoke(app, ["restore", "show", "-r", str(folder), "--json"])
    assert res.exit_code == 0 and orjson.loads(res.stdout)["hospital"] == HOSPITAL
    out = tmp_path / "export"
    res = runner.invoke(
        app,
        [
            "restore",
            "export",
            "-r",
            str(folder),
            "--out",
            str(out),
            "--ndjson",
            str(tmp_path / "all.ndjson"),
            "--patient",
            row.patient_id,
            "--audit",
            audit,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout)["bundles"] == 1
    bundle = orjson.loads((out / f"{row.patient_id}.json").read_bytes())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
    assert len((tmp_path / "all.ndjson").read_bytes().splitlines()) == 1
    audit_log = (world.root / "audit" / "audit.log").read_text(encoding="utf-8")
    assert p.family_kana not in audit_log and row.patient_id not in audit_log


def test_search_and_export_refuse_a_folder_without_a_restore(tmp_path: Path) -> None:
    res = runner.invoke(app, ["restore", "show", "-r", str(tmp_path)])
    assert res.exit_code != 0
    with pytest.raises(InputError, match="no restore database"):
        run_export(tmp_path, out=tmp_path / "x", ndjson=None, patients=None, audit=tmp_path / "a", actor="t")


def test_cli_unlock_with_typed_words(world: World, tmp_path: Path) -> None:
    order = world.order(("director",))
    words = read_word_sheet(world.sheet("director"))
    args = ["restore", "unlock", "--order", str(order), "--policy", str(world.policy), "--hospital", HOSPITAL]
    args += ["--out", str(tmp_path / "r"), "--center", str(world.local.center.layout.home)]
    args += ["--audit", str(world.root / "audit"), "--typed", "1", "--workers", "1", "--json"]
    res = runner.invoke(app, args, input=words + "\n")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "restore.db").exists()
    wrong = words.split()
    wrong[6] = "zzzz"
    res = runner.invoke(app, args, input=" ".join(wrong) + "\n")
    assert res.exit_code != 0 and "word 7" in str(res.exception)


def test_a_tampered_frame_that_is_never_opened_still_fails_before_publishing(
    world: World, tmp_path: Path
) -> None:
    """A shredded patient's frames are never decrypted, so only the payload hash (checked in the
    background while patients are rebuilt) can vouch for them: the rebuild must still refuse."""
    baseline = _store_copy(world, tmp_path)
    signer = load_signing_key(world.local.agent.signing_key).public
    header = read_header(baseline).header
    data = baseline.read_bytes()
    shredded = {
        i
        for i in range(header.key_count)
        if data[header.keys_offset + i * ENTRY_SIZE + 64 : header.keys_offset + (i + 1) * ENTRY_SIZE]
        == SHREDDED
    }
    assert shredded, "the late opt-out's keys are shredded at the center"
    spots: list[tuple[int, int, int, int]] = []
    verify(baseline, signer, on_frame=lambda *a: spots.append(a))
    offset = next(off for _, index, off, _ in spots if index in shredded)
    tampered = bytearray(data)
    tampered[offset + 20] ^= 1
    baseline.write_bytes(bytes(tampered))
    with pytest.raises(InputError, match="payload does not match"):
        _unlock_store_copy(world, tmp_path)
    assert not (tmp_path / "r" / "restore.db").exists()


def test_dropping_out_of_window_labs_before_decoding_changes_no_bundle(world: World, tmp_path: Path) -> None:
    generated = datetime.now(UTC)
    with RestoreDB.open(_full_restore(world, tmp_path)) as db:
        rows = list(db.patients())
    dropped = 0
    for window in (ExportWindow(), ExportWindow(months_labs=1), ExportWindow(months_labs=0)):
        for as_of in (date(2025, 4, 3), date(2025, 4, 6)):
            for row in rows:
                kept = in_window(row.encoded, as_of=as_of, window=window)
                dropped += len(row.encoded) - len(kept)
                from_kept, from_all = (
                    patient_bundle(
                        row.patient,
                        recs,
                        hospital=HOSPITAL,
                        as_of=as_of,
                        window=window,
                        generated_at=generated,
                    )
                    for recs in ([decode(e) for e in kept], row.records)
                )
                assert from_kept == from_all
    assert dropped > 0


def test_export_workers_write_the_bytes_of_patient_bundle(world: World, tmp_path: Path) -> None:
    """Bundles built in worker processes (records unpacked there, parts shared between bundles) are, byte
    for byte and in patient order, those of patient_bundle, in the NDJSON file and in the files."""
    generated, as_of = datetime(2025, 4, 7, 9, 0, tzinfo=UTC), date(2025, 4, 6)
    with RestoreDB.open(_full_restore(world, tmp_path)) as db:
        rows = list(db.patients())
        with BundleExporter(
            hospital=HOSPITAL,
            folder=tmp_path / "fhir",
            ndjson=tmp_path / "all.ndjson",
            as_of=as_of,
            workers=2,
            generated_at=generated,
        ) as exporter:
            for patient_id, records in db.stored():
                exporter.write_stored(patient_id, records)
    expected = [
        dumps(patient_bundle(r.patient, r.records, hospital=HOSPITAL, as_of=as_of, generated_at=generated))
        for r in rows
    ]
    assert exporter.report.bundles == len(rows) > 0
    assert (tmp_path / "all.ndjson").read_bytes().splitlines() == expected
    assert [(tmp_path / "fhir" / f"{r.patient_id}.json").read_bytes() for r in rows] == expected


def _entry_types(bundle: dict[str, Any], labs: list[LabEntry] | None) -> list[str]:
    """The bundle's resource types as a reader finds them: in its dicts, and in the shapes of the lab
    Observations the compiled section made (their entries in the dicts are serialized already)."""
    in_dicts = [e["resource"]["resourceType"] for e in bundle["entry"] if isinstance(e, dict)]
    return sorted(in_dicts + [shape.observation["resourceType"] for shape, _, _ in labs or ()])


def _refuse(bundle: dict[str, Any], labs: list[LabEntry] | None) -> None:
    raise ValueError("not this one")


@pytest.mark.parametrize("workers", [1, 2])
def test_export_hands_the_sink_what_summarize_made_of_each_bundle(
    world: World, tmp_path: Path, workers: int
) -> None:
    """With ``summarize`` (the offline viewer's summary), each bundle is summarized where it is built, from
    the bundle itself, and the sink gets it with the same bytes as without; a summary that raises
    ValueError comes as None (the sink then finds out from the bytes)."""
    generated, as_of = datetime(2025, 4, 7, 9, 0, tzinfo=UTC), date(2025, 4, 6)
    got: dict[str, list[tuple[str, bytes, Any]]] = {}
    with RestoreDB.open(_full_restore(world, tmp_path)) as db:
        for name, summarize in (("plain", None), ("types", _entry_types), ("refused", _refuse)):
            sink = got.setdefault(name, [])
            with BundleExporter(
                hospital=HOSPITAL,
                as_of=as_of,
                workers=workers,
                generated_at=generated,
                sink=lambda *a, sink=sink: sink.append(a),
                summarize=summarize,
            ) as exporter:
                for patient_id, records in db.stored():
                    exporter.write_stored(patient_id, records)
    plain = got["plain"]
    assert len(plain) > 0 and all(summary is None for *_, summary in plain)
    assert [(pid, data) for pid, data, _ in got["types"]] == [(pid, data) for pid, data, _ in plain]
    assert [summary for *_, summary in got["types"]] == [
        sorted(e["resource"]["resourceType"] for e in orjson.loads(d)["entry"]) for _, d, _ in plain
    ]
    assert [(pid, data, None) for pid, data, _ in plain] == got["refused"]


def test_the_passphrase_file_must_be_private_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "passphrases"
    path.write_text("# the drill's custodians\ndeputy=deputy-pass\n\n", encoding="utf-8")
    path.chmod(0o644)
    with pytest.raises(InputError, match="readable by others"):
        read_passphrases(path)
    path.chmod(0o600)
    assert read_passphrases(path) == {"deputy": "deputy-pass"}
    path.write_text("deputy deputy-pass\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"passphrases:1: expected member=passphrase"):
        read_passphrases(path)

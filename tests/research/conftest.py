"""Research-stream helpers shared by ``tests/research/test_ingest.py`` and
``tests/agent/test_research_stream.py`` (plain functions and classes, imported by name; every name here
starts with ``rs_`` or ``Rs`` so other research tests' fixtures never collide with them).

:class:`RsPipeline` is a hospital with the research stream on, a center with a ``file://`` inbox, the
release and analysis private keys and the network's linkage key.  :func:`rs_expected_rows` computes,
independently of research ingest, the rows the de-identified database must hold for an SS-MIX2 tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from agent.commands.sync import run_once
from agent.config import load_config
from agent.deidentify import Pseudonymizer, birth_of, deidentify
from agent.keys import AgentKeys
from center.catalog import Catalog
from center.ingest import IngestReport, ingest_all
from hakobune.keys import RecipientPrivateKey, VerifyKey, load_signing_key
from hakobune.provision import LocalWorld, provision_local
from hakobune.records import Patient, Record, decode
from hakobune.sealed import open_changeset
from research.database import ResearchDB
from research.ingest import IngestReport as ResearchReport
from research.ingest import ingest, sources_from_center
from tests.pipeline import expected_state

RS_HOSPITAL = "1310000001"
RS_TABLES = ("patients", "conditions", "allergies", "prescriptions", "injections", "labs")


@dataclass
class RsPipeline:
    root: Path
    ssmix2: Path
    world: LocalWorld
    hospital: str
    release: RecipientPrivateKey
    analysis: RecipientPrivateKey
    linkage: bytes

    @property
    def agent_home(self) -> Path:
        return self.world.agent.home

    @property
    def center_home(self) -> Path:
        return self.world.center.layout.home

    def agent_key(self) -> VerifyKey:
        return load_signing_key(self.world.agent.signing_key).public

    def pseudonymizer(self) -> Pseudonymizer:
        research = AgentKeys.load(load_config(self.agent_home)).research
        assert research is not None
        return research.pseudonymizer

    def sync(self) -> dict[str, Any]:
        """One agent sync: seal, upload to the inbox, collect earlier receipts."""
        return run_once(self.agent_home)

    def center_ingest(self) -> IngestReport:
        with Catalog.open(self.world.center.catalog_url) as catalog:
            return ingest_all(self.world.center, catalog)

    def stored(self, stream: str = "research") -> list[Path]:
        return sorted(self.world.center.layout.store(self.hospital, stream).glob("*.hkcs"))  # type: ignore[arg-type]

    def research_ingest(self, db: Path, key: RecipientPrivateKey | None = None) -> ResearchReport:
        with ResearchDB.open(db) as database:
            return ingest(database, sources_from_center(self.center_home), key or self.analysis)

    def research_ops(self, path: Path) -> tuple[list[bytes], tuple[str, ...]]:
        """The decrypted operation lines of a stored research changeset, and its tombstones."""
        sealed, frames, _ = open_changeset(path, self.analysis, self.agent_key(), hospital=self.hospital)
        return [op for f in frames for op in f.ops], sealed.header.tombstones


def rs_make_pipeline(
    root: Path,
    ssmix2: Path,
    *,
    hospital: str = RS_HOSPITAL,
    center_home: Path | None = None,
    analysis: RecipientPrivateKey | None = None,
    linkage: bytes | None = None,
    research: bool = True,
) -> RsPipeline:
    """A hospital with the research stream on (``research=False``: off until keys are installed), on a
    center at ``center_home`` (default ``root/center``, shared when several hospitals are given one)."""
    release = RecipientPrivateKey.generate("cryptrec-p256")
    analysis = analysis or RecipientPrivateKey.generate("cryptrec-p256")
    linkage = linkage or os.urandom(32)
    world = provision_local(
        hospital=hospital,
        ssmix2=ssmix2,
        center_home=center_home or root / "center",
        agent_home=root / f"agent-{hospital}",
        release=release.public,
        analysis=analysis.public if research else None,
        linkage_key=linkage if research else None,
    )
    return RsPipeline(root, ssmix2, world, hospital, release, analysis, linkage)


# --- what the research database must hold ---------------------------------------------------------------


def _d(value: Any) -> date | None:
    return date.fromisoformat(value) if value else None


def rs_rows_of(doc: dict[str, Any], source: str) -> tuple[str, list[tuple[Any, ...]]]:
    """(table, rows) a research record (decoded JSON) becomes; an independent rendering of the mapping
    that research ingest does in SQL (docs/research-stream.md)."""
    kind, r = doc["kind"], doc["r"]
    k = r["key"]
    rkey = "/".join((k["pid"], k["date"], k["type"], k["order"], k["item"]))
    pid = k["pid"]
    if kind == "patient":
        return "patients", [(pid, r["link"], source, r["sex"], r["birth_ym"])]
    if kind == "condition":
        return "conditions", [
            (
                rkey,
                pid,
                _d(r["date"]),
                r["icd10"],
                r["medis"],
                _d(r["onset"]),
                _d(r["resolved"]),
                r["outcome"],
                r["main"],
                r["age"],
            )
        ]
    if kind == "allergy":
        return "allergies", [(rkey, pid, _d(r["date"]), r["category"], r["code"], r["system"], r["age"])]
    if kind == "prescription":
        return "prescriptions", [
            (
                rkey,
                pid,
                _d(r["date"]),
                r["event"],
                r["code"],
                r["system"],
                r["amount"],
                r["unit"],
                r["days"],
                r["age"],
            )
        ]
    if kind == "injection":
        comps = r["components"] or [
            {"role": None, "code": None, "system": None, "amount": None, "unit": None}
        ]
        return "injections", [
            (
                rkey,
                pid,
                _d(r["date"]),
                r["event"],
                c["role"],
                c["code"],
                c["system"],
                c["amount"],
                c["unit"],
                r["age"],
            )
            for c in comps
        ]
    assert kind == "lab", kind
    return "labs", [(rkey, pid, _d(r["date"]), r["code"] or "", r["value"], r["unit"], r["flag"], r["age"])]


def rs_expected_rows(
    ssmix2: Path, p: Pseudonymizer, *, source: str = RS_HOSPITAL, excluded: tuple[str, ...] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """The rows the research database must hold for the tree's current files, minus ``excluded``
    patients: every current record de-identified with the hospital's keys, ages from each patient's birth
    date."""
    by_patient: dict[str, list[Record]] = {}
    for encoded in expected_state(ssmix2, excluded).values():
        record = decode(encoded)
        by_patient.setdefault(record.key.patient_id, []).append(record)
    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in RS_TABLES}
    for records in by_patient.values():
        birth = birth_of(records)
        patients = [r for r in records if isinstance(r, Patient)]
        main_patient = max(
            patients, key=lambda r: "99999999" if r.key.care_date == "-" else r.key.care_date, default=None
        )
        for record in records:
            if isinstance(record, Patient) and record is not main_patient:
                continue
            table, new = rs_rows_of(orjson.loads(deidentify(p, record, birth)), source)
            rows[table] += new
    return {t: sorted(v, key=repr) for t, v in rows.items()}


def rs_db_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with ResearchDB.open(db, create=False) as database:
        return {
            t: sorted(
                (tuple(row) for row in database.conn.execute(f"SELECT * FROM {t}").fetchall()), key=repr
            )
            for t in RS_TABLES
        }

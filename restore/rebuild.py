"""Rebuild a restore database from a hospital's chain, with the release key in memory.

:func:`rebuild` replays the chain patient by patient (:class:`restore.replay.PatientReplay`), keeps the
patients the release order covers, stores them (:mod:`restore.database`), hands each to ``on_patient``
or ``on_stored`` as it is ready (the disaster-day export starts with the first patient, not after the
last), then builds the patient index and publishes the database in one rename.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hakobune.keys import RecipientPrivateKey, VerifyKey
from restore.chain import ChainPlan
from restore.database import PatientRow, RestoreDB, patient_row
from restore.replay import PatientReplay


@dataclass
class RebuildReport:
    hospital: str
    sequence: int
    head: str
    #: When the newest restored changeset was sealed at the hospital (the recovery point).
    newest_data: str
    changesets: int
    bytes: int
    patients: int = 0
    records: int = 0
    #: Patients erased (opted out, tombstoned) or whose keys were shredded.
    erased: int = 0
    #: Patients outside the release order's scope (read, not kept).
    out_of_scope: int = 0
    shredded_frames: int = 0
    indexed: int = 0
    #: Seconds until the first patient was rebuilt (the chain verified and indexed as far as that patient).
    seconds_to_first: float = 0.0
    seconds: float = 0.0
    stopped: str | None = None
    older_changesets: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rebuild(
    folder: Path,
    plan: ChainPlan,
    private: RecipientPrivateKey,
    signer: VerifyKey,
    *,
    scope: frozenset[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    on_patient: Callable[[PatientRow], None] | None = None,
    on_stored: Callable[[str, bytes], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RebuildReport:
    """Replay ``plan`` into ``folder/restore.db``; ``scope`` limits it to those patient IDs (None: all).

    Each patient kept goes to ``on_patient(row)`` and/or, as stored, to ``on_stored(patient ID, compressed
    records)`` (:meth:`restore.export.BundleExporter.write_stored`: the export unpacks it in its worker).
    ``on_progress(done, total)`` counts tokens (patients named by the chain)."""
    from restore.search.index import PatientIndex, SearchPatient

    t0 = time.perf_counter()
    report = RebuildReport(
        hospital=plan.hospital,
        sequence=plan.sequence,
        head=plan.head,
        newest_data=plan.newest_created_at,
        changesets=len(plan.files),
        bytes=0,
        stopped=None if plan.stopped is None else f"after sequence {plan.stopped[0]}: {plan.stopped[1]}",
        older_changesets=plan.older,
        unreadable=plan.unreadable,
    )
    db = RestoreDB.create(folder)
    try:
        with PatientReplay(plan.files, private, signer, hospital=plan.hospital) as replay:
            report.bytes = replay.stats.bytes
            total = replay.stats.tokens
            for done, restored in enumerate(replay.patients(), 1):
                if done == 1:
                    report.seconds_to_first = time.perf_counter() - t0
                patient_id = restored.patient_id
                if scope is not None and patient_id not in scope:
                    report.out_of_scope += 1
                    continue
                row = patient_row(patient_id, restored.by_key.values())
                stored = db.add(row.patient, row.encoded)
                report.patients += 1
                report.records += len(row.encoded)
                if on_patient is not None:
                    on_patient(row)
                if on_stored is not None:
                    on_stored(patient_id, stored)
                if on_progress is not None and done % 256 == 0:
                    on_progress(done, total)
            report.erased = replay.stats.erased
            report.shredded_frames = replay.stats.shredded_frames
            replay.finish()  # every payload hash matched: only now is the rebuild published
        db.set_meta(
            {
                **(meta or {}),
                "hospital": plan.hospital,
                "sequence": plan.sequence,
                "head": plan.head,
                "newest_data": plan.newest_created_at,
                "patients": report.patients,
            }
        )
        db.commit()
        with PatientIndex.open(db.path) as index:
            report.indexed = index.add_many(
                SearchPatient(
                    patient_id=pid,
                    family_kanji=fk,
                    given_kanji=gk,
                    family_kana=fn,
                    given_kana=gn,
                    birth_date=bd,
                    sex=sex,
                    address=addr,
                    postal_code=postal,
                )
                for pid, fk, gk, fn, gn, bd, sex, addr, postal in db.demographics()
            )
        db.publish()
    except BaseException:
        db.discard()
        raise
    report.seconds = time.perf_counter() - t0
    return report

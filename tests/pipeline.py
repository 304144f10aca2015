"""A hospital and a center on one machine for pipeline tests: a small SS-MIX2 tree, an agent, a center with
a ``file://`` inbox, and the release private key (which only tests and the drill ever hold whole)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.ssmix2.reader import Status, read_tree
from center.catalog import Catalog
from center.ingest import IngestReport, ingest_all
from hakobune.keys import RecipientPrivateKey, VerifyKey, load_signing_key
from hakobune.naming import Stream
from hakobune.provision import LocalWorld, provision_local
from hakobune.records import encode
from restore.chain import plan_chain
from restore.replay import PatientReplay, RecordId, ReplayState, replay

HOSPITAL = "1310000001"


@dataclass
class Pipeline:
    root: Path
    ssmix2: Path
    world: LocalWorld
    release: RecipientPrivateKey

    @property
    def agent_home(self) -> Path:
        return self.world.agent.home

    @property
    def center(self) -> Any:
        return self.world.center

    def agent_key(self) -> VerifyKey:
        return load_signing_key(self.world.agent.signing_key).public

    def ingest(self) -> IngestReport:
        with Catalog.open(self.center.catalog_url) as catalog:
            return ingest_all(self.center, catalog)

    def stored(self, stream: Stream = "clinical") -> list[Path]:
        return sorted(self.center.layout.store(HOSPITAL, stream).glob("*.hkcs"))

    def replay(self) -> ReplayState:
        return replay(self.stored(), self.release, self.agent_key(), hospital=HOSPITAL)

    def patient_replay(self) -> dict[RecordId, bytes]:
        """The same state rebuilt patient by patient from the newest baseline on (the restore path)."""
        plan = plan_chain(self.center.layout.store(HOSPITAL, "clinical"), HOSPITAL)
        state: dict[RecordId, bytes] = {}
        with PatientReplay(plan.files, self.release, self.agent_key(), hospital=HOSPITAL) as rp:
            for patient in rp.patients():
                state.update(patient.records)
            rp.finish()
        return state


def make_pipeline(
    root: Path,
    ssmix2: Path,
    *,
    journal: Path | None = None,
    suite: str = "cryptrec-p256",
    catalog_url: str | None = None,
) -> Pipeline:
    """``cryptrec-p256`` by default: the same code paths, faster keys for many small tests."""
    release = RecipientPrivateKey.generate(suite)  # type: ignore[arg-type]
    world = provision_local(
        hospital=HOSPITAL,
        ssmix2=ssmix2,
        center_home=root / "center",
        agent_home=root / "agent",
        release=release.public,
        journal=journal,
        catalog_url=catalog_url,
    )
    return Pipeline(root, ssmix2, world, release)


def expected_state(ssmix2: Path, excluded: Iterable[str] = ()) -> dict[RecordId, bytes]:
    """The records of the tree's current files (flag 1, newest per unit), minus excluded patients."""
    skip = set(excluded)
    best: dict[tuple[str, str, str, str], tuple[str, list[Any]]] = {}
    for outcome in read_tree(ssmix2):
        if outcome.status is not Status.READ or outcome.name is None or not outcome.name.current:
            continue
        name = outcome.name
        if name.patient_id in skip:
            continue
        unit = name.file_key
        if unit not in best or name.timestamp > best[unit][0]:
            best[unit] = (name.timestamp, outcome.records)
    state: dict[RecordId, bytes] = {}
    for _, records in best.values():
        for r in records:
            k = r.key
            state[(k.patient_id, k.care_date, k.data_type, k.order_no, k.item)] = encode(r)
    return state


def decoded(state: dict[RecordId, bytes]) -> dict[RecordId, Any]:
    return {k: orjson.loads(v) for k, v in state.items()}

"""``hakobune drill``: the whole pipeline on one machine, stage by stage, with figures.

The drill's world lives in one folder (``OUT``): the synthetic hospital (when none is given), the agent's
state, and — as the later stages land — the center, keys, restore database, FHIR output, disk and research
release.  Running it again on the same ``OUT`` continues that world: a synthetic hospital advances by one
day and everything downstream runs incrementally.  A stage that raises fails the drill; later stages are
reported as skipped; ``report.json`` always gets written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from hakobune import __version__
from hakobune.errors import HakobuneError

REPORT_FILE = "report.json"
MARKER = ".hakobune-drill"
HOSPITAL_DIR = "hospital"
AGENT_DIR = "agent"
CENTER_DIR = "center"
#: The drill's hospital ID at its center.
DRILL_HOSPITAL = "9990000001"


@dataclass(slots=True)
class StageResult:
    name: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3)}
        out["figures"] = self.figures
        if self.error:
            out["error"] = self.error
        return out


@dataclass(slots=True)
class DrillConfig:
    out: Path
    ssmix2: Path | None = None  # None: a synthetic hospital in OUT/hospital
    consent: Path | None = None
    patients: int = 2000
    days: int = 30
    seed: int = 1
    workers: int = 0  # 0: one per core


@dataclass(slots=True)
class DrillWorld:
    """Where the stages find each other's results."""

    config: DrillConfig
    ssmix2: Path | None = None
    consent: Path | None = None
    quarantine: list[dict[str, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def agent_home(self) -> Path:
        return self.config.out / AGENT_DIR

    @property
    def center_home(self) -> Path:
        return self.config.out / CENTER_DIR


Stage = tuple[str, Callable[[DrillWorld], dict[str, Any]]]


def _stage_hospital(world: DrillWorld) -> dict[str, Any]:
    from hakobune.synth import CONSENT_FILE, META_FILE, SSMIX2_DIR, advance, generate

    cfg = world.config
    if cfg.ssmix2 is not None:
        if not cfg.ssmix2.is_dir():
            raise HakobuneError(f"{cfg.ssmix2}: not a directory (expected the root of an SS-MIX2 storage)")
        world.ssmix2, world.consent = cfg.ssmix2, cfg.consent
        return {"source": "given", "consent_file": bool(cfg.consent)}
    home = cfg.out / HOSPITAL_DIR
    if (home / META_FILE).exists():
        stats = advance(home, 1, workers=cfg.workers or None)
        action = "advanced one day"
    else:
        stats = generate(home, cfg.patients, cfg.days, seed=cfg.seed, workers=cfg.workers or None)
        action = "generated"
    world.ssmix2, world.consent = home / SSMIX2_DIR, home / CONSENT_FILE
    return {
        "source": "synthetic",
        "action": action,
        "patients": stats.patients,
        "days_done": stats.days_done,
        "files": stats.files,
        "files_written": stats.files_written,
        "files_renamed": stats.files_renamed,
        "seconds": round(stats.seconds, 3),
    }


def _stage_consent(world: DrillWorld) -> dict[str, Any]:
    from agent.consent import ConsentRegistry, Scope
    from agent.home import open_state_db

    with open_state_db(world.agent_home) as db:
        registry = ConsentRegistry(db)
        figures: dict[str, Any] = {}
        if world.consent is not None:
            res = registry.import_csv(world.consent)
            figures.update(rows=res.rows, added=res.added, changed=res.changed, unchanged=res.unchanged)
        counts = registry.counts()
        figures["opted_out_all"] = counts.get(Scope.ALL, 0)
        figures["opted_out_research"] = counts.get(Scope.RESEARCH, 0)
    return figures


def _stage_read(world: DrillWorld) -> dict[str, Any]:
    from agent.check import check_tree

    assert world.ssmix2 is not None
    rep = check_tree(world.ssmix2, workers=world.config.workers)
    world.quarantine = [q.to_json() for q in rep.quarantine]
    j = rep.to_json()
    if j["date_range"]["last"]:
        world.facts["date_range_end"] = j["date_range"]["last"]
    return {
        "files": rep.files,
        "read": rep.read,
        "skipped": rep.skipped,
        "quarantined": rep.quarantined,
        "patients": rep.patients,
        "records": dict(rep.records_by_kind),
        "date_range": j["date_range"],
        "files_per_second": j["files_per_second"],
    }


def _stage_setup(world: DrillWorld) -> dict[str, Any]:
    from hakobune.drill_release import release_public_key_path
    from hakobune.drill_research import research_keys
    from hakobune.keys import load_recipient_private, load_recipient_public, write_key
    from hakobune.provision import provision_local

    assert world.ssmix2 is not None
    release = load_recipient_public(release_public_key_path(world))
    analysis_key, linkage_key = research_keys(world)
    journal = world.ssmix2.parent / "journal"
    local = provision_local(
        hospital=DRILL_HOSPITAL,
        ssmix2=world.ssmix2,
        center_home=world.center_home,
        agent_home=world.agent_home,
        release=release,
        journal=journal if journal.is_dir() else None,
        analysis=load_recipient_private(analysis_key).public,
        linkage_key=linkage_key.read_bytes(),
    )
    rekeyed = load_recipient_public(local.agent.release_key).raw != release.raw
    if rekeyed:  # a world made before this ceremony: the agent seals to the new key and re-baselines
        local.agent.release_key.unlink()
        write_key(local.agent.release_key, release)
    return {
        "hospital": DRILL_HOSPITAL,
        "release_key": release.fingerprint,
        "suite": release.suite,
        "rekeyed": rekeyed,
    }


def _stage_sync(world: DrillWorld) -> dict[str, Any]:
    from agent.commands.sync import run_once

    doc = run_once(world.agent_home)
    s, sh = doc["sync"], doc["ship"]
    if sh["errors"]:
        raise HakobuneError("; ".join(sh["errors"]))
    return {
        "status": s["status"],
        "changeset": s["name"],
        "kind": s["kind"],
        "bytes": s["size"],
        "scan": {k: s["scan"][k] for k in ("mode", "added", "removed", "renamed", "dirs_listed", "seconds")},
        **{
            k: s["build"].get(k, 0)
            for k in ("patients", "puts", "dels", "tombstones", "opted_out", "quarantined")
        },
        "uploaded": len(sh["uploaded"]),
        "seconds": s["seconds"],
        "research": _research_figures(s.get("research")),
    }


def _research_figures(r: dict[str, Any] | None) -> dict[str, Any] | None:
    """The de-identified research changeset sealed by the same sync (None when research is off)."""
    if r is None:
        return None
    return {
        "status": r["status"],
        "changeset": r["name"],
        "bytes": r["size"],
        **{k: r["build"].get(k, 0) for k in ("patients", "puts", "dels", "tombstones", "opted_out")},
    }


def _stage_ingest(world: DrillWorld) -> dict[str, Any]:
    from center.catalog import Catalog
    from center.config import load_center_config
    from center.ingest import ingest_all

    cfg = load_center_config(world.center_home)
    with Catalog.open(cfg.catalog_url) as catalog:
        report = ingest_all(cfg, catalog)
        status = [s for s in catalog.status() if s.hospital == DRILL_HOSPITAL and s.stream == "clinical"]
    if report.rejected:
        raise HakobuneError("center rejected: " + "; ".join(f"{n}: {r}" for n, r in report.rejected))
    head = status[0] if status else None
    return {
        "stored": len(report.stored),
        "bytes": report.bytes,
        "duplicates": len(report.duplicates),
        "shredded_keys": report.shredded,
        "center_changesets": head.changesets if head else 0,
        "center_bytes": head.bytes if head else 0,
        "gaps": head.gaps if head else [],
    }


def _stage_receipts(world: DrillWorld) -> dict[str, Any]:
    from agent.config import load_config
    from agent.home import open_state_db
    from agent.ship import connect, ship

    cfg = load_config(world.agent_home)
    with open_state_db(world.agent_home) as db, connect(cfg) as transport:
        result = ship(cfg, db, transport)
    if result.errors or result.pending:
        raise HakobuneError(
            f"not acknowledged: {', '.join(result.pending) or '-'}; {'; '.join(result.errors)}"
        )
    return {"acknowledged": len(result.acked)}


def _stages() -> list[Stage]:
    from hakobune import drill_release as r
    from hakobune.drill_media import stage_disk
    from hakobune.drill_research import stage_research

    return [
        ("hospital", _stage_hospital),
        ("consent", _stage_consent),
        ("read", _stage_read),
        # The release key must exist before anything is sealed to it: the ceremony comes before setup.
        ("ceremony", r.stage_ceremony),
        ("setup", _stage_setup),
        ("sync", _stage_sync),
        ("ingest", _stage_ingest),
        ("receipts", _stage_receipts),
        ("release", r.stage_release),
        ("unlock", r.stage_unlock),
        ("search", r.stage_search),
        ("export", r.stage_export),
        ("disk", stage_disk),
        ("research", stage_research),
        ("audit", r.stage_audit),
    ]


def prepare_out(out: Path) -> None:
    """Create OUT (or reuse one this drill made); refuse a non-empty folder that is not a drill's."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise HakobuneError(f"{out}: not empty and not a drill folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("This folder is a Hakobune drill's world.\n", encoding="utf-8")


def run_drill(
    config: DrillConfig,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[StageResult], None] | None = None,
    stages: list[Stage] | None = None,
) -> dict[str, Any]:
    """Run every stage in order and write ``OUT/report.json``; returns the report (``ok`` says it all)."""
    prepare_out(config.out)
    world = DrillWorld(config)
    started = datetime.now(UTC)
    results: list[StageResult] = []
    failed = False
    for name, fn in stages or _stages():
        if failed:
            results.append(StageResult(name, "skipped"))
            if on_done:
                on_done(results[-1])
            continue
        if on_start:
            on_start(name)
        t0 = time.perf_counter()
        try:
            figures = fn(world)
            result = StageResult(name, "ok", time.perf_counter() - t0, figures)
        except (HakobuneError, OSError, ValueError) as e:
            failed = True
            result = StageResult(name, "failed", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
        results.append(result)
        if on_done:
            on_done(result)
    report: dict[str, Any] = {
        "hakobune": __version__,
        "ok": not failed,
        "out": str(config.out),
        "ssmix2": str(world.ssmix2) if world.ssmix2 else None,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "stages": [r.to_json() for r in results],
        "recovery": world.facts.get("recovery"),
        "quarantine": world.quarantine,
    }
    (config.out / REPORT_FILE).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return report

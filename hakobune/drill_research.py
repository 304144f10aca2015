"""The drill's research stage: the analysis center's side of the research stream.

The agent already sealed a de-identified research changeset beside the clinical one (``sync``) and the
center stored it (``ingest``).  Here the analysis center (``OUT/research``, its own home, key and audit
log) loads the research changesets into its database, an ethics committee approves a study, and the
diabetes analysis runs through disclosure control; what would leave the analysis center is written under
``OUT/research/released/``.

A release of the same table from changed data is refused (the difference would reveal small counts), so
each drill run submits its own study, as a real analysis center would for a new question.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hakobune.errors import HakobuneError

if TYPE_CHECKING:
    from hakobune.drill import DrillWorld

RESEARCH_DIR = "research"
ANALYSIS_KEY = "analysis.key"
LINKAGE_KEY = "linkage.key"
SPEC = "diabetes_hba1c"
#: The data items the drill's study asks for (those the diabetes spec reads).
ITEMS = ("demographics", "conditions", "labs")
PROTOCOL = """\
# 訓練用研究計画書 (drill protocol)

目的: 糖尿病患者の年齢階級・性別分布と HbA1c の分布を把握する（方舟の訓練）。
対象: 2024-04-01〜2026-03-31 の診療記録。集計表のみを公開し、1〜9 の度数は秘匿する。
"""


def research_keys(world: DrillWorld) -> tuple[Path, Path]:
    """The analysis center's private key and the network's linkage key (made once per drill world).
    A drill plays every role; really the linkage key is handed to hospitals only, never to the analysis
    center, and the analysis key never leaves it."""
    import os

    from hakobune.keys import RecipientPrivateKey, write_key, write_key_bytes

    keys = world.config.out / "keys"
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    analysis, linkage = keys / ANALYSIS_KEY, keys / LINKAGE_KEY
    if not analysis.exists():
        write_key(analysis, RecipientPrivateKey.generate())
    if not linkage.exists():
        write_key_bytes(linkage, os.urandom(32), 0o600)
    return analysis, linkage


def stage_research(world: DrillWorld) -> dict[str, Any]:
    from hakobune import audit
    from hakobune.keys import load_recipient_private
    from research.analysis import run_analysis
    from research.database import ResearchDB
    from research.home import ResearchHome
    from research.ingest import ingest, sources_from_center
    from research.spec import DateRange
    from research.studies import Registry

    analysis_key, _ = research_keys(world)
    home = ResearchHome(world.config.out / RESEARCH_DIR).ensure()
    with ResearchDB.open(home.default_db) as db:
        report = ingest(db, sources_from_center(world.center_home), load_recipient_private(analysis_key))
        counts: dict[str, int] = {}
        for t in ("patients", "conditions", "labs", "prescriptions", "injections", "allergies"):
            row = db.conn.execute(f"SELECT count(*) FROM {t}").fetchone()
            counts[t] = int(row[0]) if row else 0
    audit.record(home.audit, "research.ingest", actor="drill", details=report.audit_details())
    if report.refused:
        raise HakobuneError("research ingest refused: " + "; ".join(f"{f}: {r}" for f, r in report.refused))
    if not counts["patients"]:
        raise HakobuneError("the research database holds no patients after ingest")
    protocol = home.root / "drill-protocol.md"
    protocol.write_text(PROTOCOL, encoding="utf-8")
    today = date.today()
    with Registry(home) as registry:
        study = registry.submit(
            title="訓練: 糖尿病患者の HbA1c 分布",
            applicant="drill analyst",
            purpose="drill: an approved study run through disclosure control",
            protocol=protocol,
            items=ITEMS,
            period=DateRange(date(2024, 4, 1), date(2026, 3, 31)),
        )
        registry.decide(
            study.id,
            decision="approve",
            approver="drill ethics committee",
            conditions="集計表のみ公開",
            valid_from=today,
            valid_until=today + timedelta(days=365),
        )
    result = run_analysis(home, study.id, SPEC, actor="drill")
    return {
        "changesets": sum(len(h.applied) for h in report.hospitals),
        "records_ingested": report.records,
        "rows": counts,
        "study": study.id,
        "released": str(result.directory.relative_to(world.config.out)),
        "files": result.files,
        "cells": result.cells,
        "suppressed_primary": result.primary,
        "suppressed_secondary": result.secondary,
        "lp_audit_cells": result.audited,
    }

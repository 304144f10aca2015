"""Running an analysis for a study: check it may run, query, control disclosure, release, record.

``run_analysis`` is what ``hakobune research run STUDY SPEC`` (and the drill) call.  In order:

1. the spec is read and validated (research.spec);
2. the study must be approved and unexpired today, the spec may use only the data items the study
   requested and only dates of care inside its approved period (research.studies.Refused otherwise);
3. each count column is queried over the study's columns only (research.query), then disclosure-
   controlled against every earlier release of the study about the same units (research.disclosure,
   audited by research.lp_audit); distribution statistics and rates are derived from published values;
4. the files are written to a temporary directory, the release and every published value are recorded
   in the registry, the run goes into the audit log, and only then the directory becomes
   ``released/<study>/<run>/``.

A refused or failed run writes nothing under released/ and is audit-logged too (``outcome: refused``).
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from hakobune import audit
from hakobune.durable import fsync_dir
from hakobune.errors import HakobuneError, InputError
from research.disclosure import (
    PRIMARY,
    PUBLISHED,
    SECONDARY,
    DisclosureError,
    PriorTable,
    ProtectedTable,
    TableDef,
    distributions,
    protect,
)
from research.home import ResearchHome
from research.query import CountTable, count_tables, fetch_units, snapshot
from research.release import SUPPRESSED, Column, NoteContext, OutputTable, Value, write_release
from research.spec import Spec, load_spec
from research.studies import Decision, Refused, Registry, ReleasedTable, Study

STAT_COLUMNS = (
    ("mean", "平均", 2),
    ("sd", "標準偏差", 2),
    ("p25", "第1四分位", 2),
    ("median", "中央値", 2),
    ("p75", "第3四分位", 2),
)


@dataclass
class RunResult:
    study_id: str
    run_id: str
    directory: Path
    files: list[str]
    cells: int
    primary: int
    secondary: int
    stats_withheld: int
    audited: int
    programs: int
    seconds: dict[str, float] = field(default_factory=dict)
    snapshot: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study_id,
            "run": self.run_id,
            "directory": str(self.directory),
            "files": self.files,
            "cells": self.cells,
            "suppressed": {"primary": self.primary, "secondary": self.secondary},
            "stats_withheld": self.stats_withheld,
            "audit": {"suppressed_cells": self.audited, "programs": self.programs, "ok": True},
            "snapshot": self.snapshot,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def authorize(spec: Spec, study: Study) -> None:
    """Refuse a spec that reads data items the study did not request or dates outside its period."""
    missing = sorted(spec.data_items() - set(study.items))
    if missing:
        raise Refused(
            str(spec.path),
            f"needs data items the study {study.id} did not request: {', '.join(missing)}"
            f" (requested: {', '.join(study.items)})",
        )
    for what, r in spec.date_ranges():
        if not study.period.covers(r):
            raise Refused(
                str(spec.path),
                f"{what} reads dates of care {r}, outside the period approved for study {study.id}"
                f" ({study.period})",
            )


@dataclass
class Analysis:
    """The protected tables of one run (internal: holds true counts), ready to become an OutputTable."""

    spec: Spec
    tables: list[tuple[CountTable, str, ProtectedTable]]
    stats: dict[str, list[Any]]
    prior_runs: set[str]
    seconds: dict[str, float] = field(default_factory=dict)


def analyse(conn: Any, spec: Spec, registry: Registry, study_id: str) -> Analysis:
    """Query and disclosure-control every count column of ``spec``."""
    definition = TableDef(spec.dimensions)
    priors: dict[str, list[PriorTable]] = {}
    prior_runs: set[str] = set()
    out: list[tuple[CountTable, str, ProtectedTable]] = []
    stats: dict[str, list[Any]] = {}
    seconds = {"query": 0.0, "disclosure": 0.0}
    for t in count_tables(spec):
        universe = t.universe(spec)
        if universe not in priors:
            earlier = registry.released_tables(study_id, universe)
            prior_runs.update(r.run_id for r in earlier)
            priors[universe] = [
                PriorTable(
                    f"release {r.run_id} {r.column}",
                    TableDef.from_json(r.definition),
                    r.labels,
                    r.values,
                    r.status,
                )
                for r in earlier
            ]
        needed = {d.attribute for p in [*priors[universe]] for d in p.definition.dims}
        needed |= {d.attribute for d in definition.dims}
        t0 = time.perf_counter()
        units = fetch_units(conn, spec, t, needed)
        t1 = time.perf_counter()
        table = protect(definition, units, priors[universe])
        priors[universe].append(table.as_prior(f"this release {t.column}"))
        out.append((t, universe, table))
        if t.unit == "lab_patients":
            stats[t.measure.name] = distributions(definition, units, table)
        seconds["query"] += t1 - t0
        seconds["disclosure"] += time.perf_counter() - t1
    return Analysis(spec, out, stats, prior_runs, seconds)


def output_table(a: Analysis) -> OutputTable:
    """The released table: published counts, distributions of published groups >= 10, rates of
    published counts; ``*`` where disclosure control withheld a value."""
    first = a.tables[0][2]
    rows = [c.labels for c in first.cells]
    columns: list[Column] = []
    data: dict[str, list[Value]] = {}
    published: dict[str, list[int | None]] = {}
    for t, _, table in a.tables:
        pub = table.published()
        published[t.column] = pub
        columns.append(Column(t.column, t.label, "count", 0, t.measure.name))
        data[t.column] = [SUPPRESSED if v is None else v for v in pub]
        m = t.measure
        if t.unit == "lab_patients":
            dists = a.stats[m.name]
            for key, label, decimals in STAT_COLUMNS:
                name = f"{m.name}_{key}"
                columns.append(Column(name, f"{m.label} {label}", "stat", decimals, m.name))
                data[name] = [
                    (getattr(dist, key) if dist is not None else (None if n == 0 else SUPPRESSED))
                    for dist, n in zip(dists, pub, strict=True)
                ]
        if t.unit == "population":
            num = published[f"n_{m.name}"]
            name = f"{m.name}_per_1000"
            label = (
                "罹患率（対象集団千人当たり）" if m.kind == "incidence" else "有病率（対象集団千人当たり）"
            )
            columns.append(Column(name, label, "rate", 1, m.name))
            rates: list[Value] = []
            for n, d in zip(num, pub, strict=True):
                if n is None or d is None:
                    rates.append(SUPPRESSED)
                elif d == 0:
                    rates.append(None)
                else:
                    rates.append(1000.0 * n / d)
            data[name] = rates
    return OutputTable(tuple(a.spec.dimensions), rows, columns, data)


def sending_hospitals(conn: Any) -> set[str]:
    """The codes of the hospitals that sent data (``source``), read for one purpose only: to make sure
    none of them appears in a release (a study or spec title could name one).  Never used in a query."""
    rows = conn.execute("SELECT DISTINCT source FROM patients UNION SELECT DISTINCT source FROM ingested")
    out: set[str] = set()
    for (value,) in rows.fetchall():
        text = str(value or "").strip()
        out.update(t for t in [text, *text.split()] if len(t) >= 4)
    return out


def guard_release(directory: Path, hospitals: set[str]) -> None:
    """Refuse a release whose text names a sending hospital (checked in the CSV, HTML and note, which
    carry every label the charts show)."""
    for name in ("table.csv", "table.html", "note.md"):
        text = (directory / name).read_text(encoding="utf-8")
        for code in hospitals:
            if code in text:
                raise DisclosureError(
                    f"{name}: the release would name a sending hospital (a title or label contains its code);"
                    " nothing was released"
                )


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def open_database(db: Path) -> Any:
    """The de-identified database, read-only (analyses never write)."""
    import duckdb

    if not db.is_file():
        raise InputError(str(db), "research database not found (run 'hakobune research ingest' first)")
    try:
        return duckdb.connect(str(db), read_only=True)
    except duckdb.Error as e:
        raise InputError(str(db), f"cannot open the research database read-only ({e})") from None


def run_analysis(
    home: ResearchHome,
    study_id: str,
    spec_ref: str | Path,
    *,
    db: Path | None = None,
    actor: str | None = None,
    today: date | None = None,
    charts: bool = True,
    audit_dir: Path | None = None,
) -> RunResult:
    """Run ``spec_ref`` for ``study_id`` and release the disclosure-controlled result (see the module
    docstring).  Raises :class:`Refused` / :class:`InputError` / DisclosureError without releasing."""
    actor = actor or getpass.getuser()
    today = today or date.today()
    audit_dir = audit_dir or home.audit
    spec_sha = ""
    with Registry(home) as registry:
        try:
            spec = load_spec(spec_ref)
            spec_sha = spec.sha256
            study, decision = registry.require_active(study_id, today)
            authorize(spec, study)
            return _run(
                home, registry, study, decision, spec, db or home.default_db, actor, charts, audit_dir
            )
        except HakobuneError as e:
            audit.record(
                audit_dir,
                "research.run",
                actor=actor,
                details={
                    "study": study_id,
                    "spec_sha256": spec_sha,
                    "outcome": "refused",
                    "error": type(e).__name__,
                },
            )
            raise


def _run(
    home: ResearchHome,
    registry: Registry,
    study: Study,
    decision: Decision,
    spec: Spec,
    db: Path,
    actor: str,
    charts: bool,
    audit_dir: Path,
) -> RunResult:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    conn = open_database(db)
    try:
        snap = snapshot(conn)
        a = analyse(conn, spec, registry, study.id)
        hospitals = sending_hospitals(conn)
    finally:
        conn.close()
    seconds.update(a.seconds)
    seconds["analysis"] = time.perf_counter() - t0
    table = output_table(a)

    run_id = new_run_id()
    study_dir = home.released / study.id
    study_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    final = study_dir / run_id
    tmp = study_dir / f".{run_id}.tmp"
    cells = sum(len(p.cells) for _, _, p in a.tables)
    primary = sum(p.count(PRIMARY) for _, _, p in a.tables)
    secondary = sum(p.count(SECONDARY) for _, _, p in a.tables)
    audited = sum(len(p.audit.ranges) for _, _, p in a.tables)
    programs = sum(p.audit.programs for _, _, p in a.tables)
    narrow = [p.audit.narrowest() for _, _, p in a.tables]
    bounds = [b for b in narrow if b is not None]
    withheld = 0
    stats_rows: list[tuple[str, int, int]] = []
    for t, _, _ in a.tables:
        if t.unit == "lab_patients":
            dists = a.stats[t.measure.name]
            n_pub = table.data[t.column]
            shown = sum(1 for d in dists if d is not None)
            w = sum(1 for d, n in zip(dists, n_pub, strict=True) if d is None and n != 0)
            withheld += w
            stats_rows.append((t.measure.label, w, shown))
    ctx = NoteContext(
        title=spec.title,
        study_id=study.id,
        study_title=study.title,
        run_id=run_id,
        released_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        spec_name=spec.path.name,
        spec_sha256=spec.sha256,
        snapshot=f"sha256:{snap['digest']}",
        window=f"{spec.window.start}〜{spec.window.end}",
        approval=f"承認（有効期間 {decision.valid_from}〜{decision.valid_until}）",
        suppression=[
            (t.column, p.count(PRIMARY), p.count(SECONDARY), p.count(PUBLISHED)) for t, _, p in a.tables
        ],
        stats=stats_rows,
        audited_cells=audited,
        audit_programs=programs,
        narrowest=(max(b[0] for b in bounds), min(b[1] for b in bounds)) if bounds else None,
        prior_releases=len(a.prior_runs),
        description=spec.description,
    )
    t1 = time.perf_counter()
    writer = None
    if charts:
        from research.charts import draw

        writer = draw
    try:
        files = write_release(tmp, table, ctx, writer)
        seconds["render"] = time.perf_counter() - t1
        guard_release(tmp, hospitals)
        registry.record_release(
            _release_record(run_id, study.id, spec, snap["digest"], actor, cells, primary, secondary, final),
            [
                ReleasedTable(
                    run_id,
                    t.column,
                    universe,
                    p.definition.to_json(),
                    [c.labels for c in p.cells],
                    p.published(),
                    p.status,
                )
                for t, universe, p in a.tables
            ],
        )
        audit.record(
            audit_dir,
            "research.run",
            actor=actor,
            details={
                "study": study.id,
                "run": run_id,
                "spec_sha256": spec.sha256,
                "snapshot": snap["digest"],
                "outcome": "released",
                "cells": cells,
                "primary": primary,
                "secondary": secondary,
                "stats_withheld": withheld,
                "audited_cells": audited,
            },
        )
        os.replace(tmp, final)
        fsync_dir(study_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    seconds["total"] = time.perf_counter() - t0
    return RunResult(
        study.id,
        run_id,
        final,
        files,
        cells,
        primary,
        secondary,
        withheld,
        audited,
        programs,
        seconds,
        snap["digest"],
    )


def _release_record(
    run_id: str,
    study_id: str,
    spec: Spec,
    snapshot_digest: str,
    actor: str,
    cells: int,
    primary: int,
    secondary: int,
    directory: Path,
) -> Any:
    from research.studies import Release

    return Release(
        run_id,
        study_id,
        spec.path.name,
        spec.sha256,
        snapshot_digest,
        datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        actor,
        cells,
        primary,
        secondary,
        str(directory),
    )

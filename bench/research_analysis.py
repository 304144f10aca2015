"""A stratified analysis over 10M lab results: query, disclosure control and LP audit, then with charts.

    python bench/research_analysis.py [--patients 500000] [--labs 10000000] [--spec diabetes_hba1c]

The de-identified database is synthetic (built with SQL in DuckDB, once, and cached under the bench cache):
``--patients`` patients (sex, age), about 1.4 condition records each with realistic ICD-10 codes (E11/E14
diabetes rising with age, I48 AF, I10, J06 …), ``--labs`` lab results (JLAC10: 15% HbA1c 3D046, the rest
creatinine, total protein, …) and ~1M prescriptions (HOT9 anticoagulants, metformin).  A study is
submitted and approved in a fresh analysis-center home; the spec (default: diabetes patients by 5-year age
band × sex with subtotals, and their HbA1c distribution) then runs through ``research.analysis.run_analysis``
exactly as ``hakobune research run`` does: the queries, primary and secondary suppression, the LP audit,
writing and recording the release.  Timed once without charts (the target) and once with them.
Target (issue): the analysis, disclosure control included, in under 5 seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb

from bench._common import CACHE, PeakRSS, mb
from research.analysis import run_analysis
from research.home import ResearchHome
from research.schema import create_all
from research.spec import DateRange, load_spec
from research.studies import Registry

MODEL = 1  # bump when the generator changes: the cached database is rebuilt
TARGET_S = 5.0


def build(path: Path, patients: int, labs: int, seed: float = 0.5) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = duckdb.connect(str(tmp))
    create_all(conn)
    conn.execute(f"SELECT setseed({seed})")
    conn.execute(f"""
        CREATE TEMP TABLE pp AS SELECT i, 'p' || i AS pid,
            least(104, (random() * 70 + random() * 35)::INT) AS age0,
            CASE WHEN random() < 0.48 THEN 'M' WHEN random() < 0.985 THEN 'F'
                 WHEN random() < 0.5 THEN 'O' ELSE 'U' END AS sex
        FROM range({patients}) t(i)""")
    conn.execute("INSERT INTO patients SELECT pid, NULL, 'H' || (i % 20), sex, NULL FROM pp")
    conn.execute("""
        INSERT INTO conditions SELECT 'r', pid, DATE '2023-01-01' + (random() * 1185)::INT,
            CASE WHEN code = 'E11' THEN 'E11' || (random() * 9)::INT::VARCHAR ELSE code END,
            NULL, NULL, NULL, NULL, true, age0
        FROM pp, (VALUES ('E11', 0.16), ('E14', 0.05), ('E10', 0.005), ('I489', 0.04), ('I10', 0.35),
                         ('E785', 0.25), ('J069', 0.3), ('K297', 0.15), ('M179', 0.1)) v(code, p)
        WHERE random() < p * (CASE WHEN code IN ('E11', 'E14', 'I489', 'I10') THEN age0 / 50.0 ELSE 1 END)""")
    per = max(1, round(labs / patients))
    conn.execute(f"""
        INSERT INTO labs SELECT 'r', pid, DATE '2023-01-01' + (random() * 1185)::INT, code,
            CASE code WHEN '3D046000002327101' THEN round(5.0 + random() * 4.5, 1)
                      ELSE round(random() * 10, 2) END, NULL, NULL, age0
        FROM (SELECT pid, age0, CASE WHEN random() < 0.15 THEN '3D046000002327101'
                   WHEN random() < 0.4 THEN '3C015000002327101' WHEN random() < 0.5 THEN '3A010000002327101'
                   ELSE '2A990000001930952' END AS code
              FROM pp, range({per}))""")
    conn.execute("""
        INSERT INTO prescriptions SELECT 'r', pid, DATE '2023-01-01' + (random() * 1185)::INT, 'OMP-01',
            ['105261401', '121489401', '120917801', '120968501', '120572501', '119850601', '121318601']
                [1 + (random() * 6.99)::INT], 'HOT9', 1, 'TAB', 28, age0
        FROM pp, range(4) WHERE random() < 0.5""")
    conn.execute("CHECKPOINT")
    conn.close()
    tmp.rename(path)


def database(patients: int, labs: int) -> Path:
    path = CACHE / f"research-{patients}-{labs}-m{MODEL}.duckdb"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        build(path, patients, labs)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=500_000)
    ap.add_argument("--labs", type=int, default=10_000_000)
    ap.add_argument("--spec", default="diabetes_hba1c")
    args = ap.parse_args()

    db = database(args.patients, args.labs)
    conn = duckdb.connect(str(db), read_only=True)
    counts = {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
        for t in ("patients", "conditions", "labs", "prescriptions")
    }
    conn.close()
    print("database: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()) + f" ({mb(db.stat().st_size)})")

    spec = load_spec(args.spec)
    work = Path(tempfile.mkdtemp(prefix="hkb-research-bench-"))
    try:
        home = ResearchHome(work / "center").ensure()
        protocol = work / "protocol.txt"
        protocol.write_text("bench\n", encoding="utf-8")
        studies = []
        with Registry(home) as reg:
            for _ in range(2):
                study = reg.submit(
                    title="bench",
                    applicant="bench",
                    purpose="bench",
                    protocol=protocol,
                    items=sorted(spec.data_items()),
                    period=DateRange(date(2020, 1, 1), date(2027, 12, 31)),
                )
                reg.decide(
                    study.id,
                    decision="approve",
                    approver="bench",
                    valid_until=date.today() + timedelta(days=365),
                )
                studies.append(study.id)
        results = []
        for sid, charts in zip(studies, (False, True), strict=True):
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                r = run_analysis(home, sid, args.spec, db=db, actor="bench", charts=charts)
                wall = time.perf_counter() - t0
            results.append((charts, r, wall, rss.peak_total))
        for charts, r, wall, peak in results:
            s = r.seconds
            print(
                f"{args.spec} {'with' if charts else 'without'} charts: {wall:.2f} s wall"
                f" (query {s['query']:.2f} s, disclosure control + LP audit {s['disclosure']:.2f} s,"
                f" render {s.get('render', 0.0):.2f} s); {r.cells} cells, {r.primary} primary +"
                f" {r.secondary} secondary suppressed, {r.stats_withheld} distributions withheld,"
                f" {r.audited} suppressed cells audited in {r.programs} programs; peak RSS {mb(peak)}"
            )
        no_charts = results[0][2]
        verdict = "OK" if no_charts < TARGET_S else "MISSED"
        print(f"target: analysis with disclosure control < {TARGET_S:.0f} s: {no_charts:.2f} s — {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

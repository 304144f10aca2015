"""research.analysis end to end: specs, queries over a synthetic de-identified DuckDB, refusals, what a
release contains (and never contains), linked releases, the CLI."""

from __future__ import annotations

import csv
import io
import re
import shutil
import sys
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pytest
from scipy.optimize import linprog  # type: ignore[import-untyped]
from typer.testing import CliRunner

from hakobune.audit import read_entries, verify_log
from hakobune.cli import app
from hakobune.errors import InputError
from research import charts
from research.analysis import analyse, output_table, run_analysis
from research.disclosure import MIN_COUNT, DisclosureError
from research.home import ResearchHome
from research.release import RULES_MD, SUPPRESSED
from research.schema import create_all
from research.spec import DateRange, load_spec, shipped_specs
from research.studies import Refused, Registry

#: Strings that sit in the database but must never leave the analysis center.
HOSPITALS = ("1310000017 東京湾岸中央病院", "1410000023 さくら記念病院", "1210000031 港北医療センター")
SECRETS = (
    "PIDSECRET",
    "LINKSECRET",
    "RKSECRET",
    "1310000017",
    "1410000023",
    "1210000031",
    "東京湾岸中央病院",
    "さくら記念病院",
    "港北医療センター",
)
STUDY_PERIOD = DateRange(date(2022, 1, 1), date(2026, 12, 31))
ALL_ITEMS = ("demographics", "conditions", "prescriptions", "labs")


# --------------------------------------------------------------------------------------------- fixtures
def make_research_db(path: Path, patients: int, labs_per_patient: int, seed: float = 0.25) -> None:
    """A synthetic de-identified database: realistic codes (ICD-10 E11/E14/I48, HOT9 anticoagulants and
    metformin, JLAC10 HbA1c and others), hospital names in ``source``, recognisable pseudonyms."""
    conn = duckdb.connect(str(path))
    create_all(conn)
    conn.execute(f"SELECT setseed({seed})")
    conn.execute(f"""
        CREATE TEMP TABLE pp AS SELECT i, 'PIDSECRET-' || lpad(i::VARCHAR, 8, '0') AS pid,
            (random() * 98)::INT AS age0,
            CASE WHEN random() < 0.48 THEN 'M' WHEN random() < 0.96 THEN 'F'
                 WHEN random() < 0.5 THEN 'O' ELSE 'U' END AS sex,
            {list(HOSPITALS)}[1 + (i % 3)] AS src
        FROM range({patients}) t(i)""")
    conn.execute("INSERT INTO patients SELECT pid, 'LINKSECRET-' || i, src, sex, '1960-01' FROM pp")
    conn.execute("""
        INSERT INTO conditions SELECT 'RKSECRET-' || pid, pid, DATE '2024-04-01' + (random() * 700)::INT,
            CASE WHEN code = 'E11' THEN 'E11' || (random() * 9)::INT::VARCHAR ELSE code END,
            '20063287', NULL, NULL, NULL, true, age0
        FROM pp, (VALUES ('E11', 0.22), ('E14', 0.06), ('I489', 0.05), ('I10', 0.3), ('J069', 0.3)) v(code, p)
        WHERE random() < p * (CASE WHEN code IN ('E11', 'I489') THEN age0 / 45.0 ELSE 1 END)""")
    conn.execute(f"""
        INSERT INTO labs SELECT 'RKSECRET-' || pid, pid, DATE '2024-04-01' + (random() * 700)::INT,
            CASE WHEN random() < 0.15 THEN '3D046000002327101' WHEN random() < 0.5 THEN '3A010000002327101'
                 ELSE '3C015000002327101' END,
            round(4.5 + random() * 5, 1), '%', NULL, age0
        FROM pp, range({labs_per_patient})""")
    conn.execute("""
        INSERT INTO prescriptions SELECT 'RKSECRET-' || pid, pid, DATE '2023-01-01' + (random() * 1000)::INT,
            'OMP-01', ['105261401', '121489401', '120917801', '120968501', '120572501', '119850601']
                [1 + (random() * 5.99)::INT], 'HOT9', 1, 'TAB', 14, age0
        FROM pp, range(3) WHERE random() < 0.12""")
    conn.close()


@pytest.fixture(scope="module")
def analysis_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("research-db") / "research.duckdb"
    make_research_db(path, 4000, 6)
    return path


def new_study(
    home: ResearchHome,
    tmp: Path,
    items: tuple[str, ...] = ALL_ITEMS,
    approve: bool = True,
    period: DateRange = STUDY_PERIOD,
) -> str:
    protocol = tmp / "protocol.txt"
    protocol.write_text("研究計画書\n", encoding="utf-8")
    with Registry(home) as reg:
        sid = reg.submit(
            title="地域の糖尿病と抗凝固療法",
            applicant="研究者",
            purpose="記述疫学",
            protocol=protocol,
            items=items,
            period=period,
        ).id
        if approve:
            reg.decide(
                sid, decision="approve", approver="委員長", valid_until=date.today() + timedelta(days=365)
            )
    return sid


@pytest.fixture
def analysis_home(tmp_path: Path) -> ResearchHome:
    return ResearchHome(tmp_path / "center").ensure()


def write_spec(tmp: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


#: Diabetes patients only (no lab column): the lighter spec for tests that run several releases.
PATIENTS_5Y = """
title = "糖尿病患者数"
[window]
from = 2024-04-01
until = 2026-03-31
[cohort]
icd10 = ["E11", "E12", "E13", "E14"]
[[measures]]
kind = "patients"
[dimensions.age_band]
width = 5
subtotals = [0, 40, 65, 75]
[dimensions.sex]
"""
PATIENTS_10Y = PATIENTS_5Y.replace(
    "width = 5\nsubtotals = [0, 40, 65, 75]", "width = 10\nsubtotals = [0, 40, 60, 70]"
)


# --------------------------------------------------------------------------------------------- what leaves
class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._cls: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._cls = dict(attrs).get("class") or ""
            self.cells.append((self._cls, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cls = None

    def handle_data(self, data: str) -> None:
        if self._cls is not None:
            cls, text = self.cells[-1]
            self.cells[-1] = (cls, text + data)


def _note_numbers(note: str) -> list[int]:
    """Standalone integers in the note outside its fixed rules text, identifiers, dates and the counts
    of cells/releases/programs (which are not counts of people)."""
    text = note.replace(RULES_MD.rstrip(), "")
    for pattern in (
        r"\d{8}T\d{6}Z-[0-9a-f]{4}",
        r"S\d{4}-\d{4}",
        r"[0-9a-f]{16,}",
        r"\d{4}-\d{2}-\d{2}",
        r"\d{2}:\d{2}",
        r"\d+ セル",
        r"\d+ 問",
        r"\d+ 回",
        r"\[0, 10\]",
        r"1〜9",
        r"10 人",
    ):
        text = re.sub(pattern, " ", text)
    return [int(m) for m in re.findall(r"(?<![\w.])(\d+)(?![\w.])", text)]


def assert_nothing_small_or_identifying(directory: Path) -> None:
    """The release-safety checks: no count 1-9 anywhere, no pseudonym, linkage hash or hospital."""
    names = sorted(p.name for p in directory.iterdir())
    assert "table.csv" in names and "table.html" in names and "note.md" in names
    assert all(
        n in ("table.csv", "table.html", "note.md") or re.fullmatch(r"chart_\w+\.png", n) for n in names
    )
    rows = list(csv.DictReader(io.StringIO((directory / "table.csv").read_text(encoding="utf-8"))))
    count_cols = [c for c in rows[0] if c.startswith("n_")]
    assert count_cols
    for row in rows:
        for c in count_cols:
            v = row[c]
            assert v == SUPPRESSED or (v.isdigit() and (int(v) == 0 or int(v) >= MIN_COUNT)), (c, v)
    parser = _Cells()
    parser.feed((directory / "table.html").read_text(encoding="utf-8"))
    counts = [t for cls, t in parser.cells if cls.startswith("count")]
    assert counts
    for cls, text in parser.cells:
        plain = text.replace(",", "")
        if plain.isdigit():  # every integer cell is a count: statistics and rates carry decimals
            assert int(plain) == 0 or int(plain) >= MIN_COUNT, (cls, text)
    small = [
        n for n in _note_numbers((directory / "note.md").read_text(encoding="utf-8")) if 0 < n < MIN_COUNT
    ]
    assert small == []
    for p in directory.iterdir():
        data = p.read_bytes()
        for secret in SECRETS:
            assert secret.encode("utf-8") not in data, (p.name, secret)
    for p in directory.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- releases
def test_diabetes_release_contains_no_small_count_and_nothing_identifying(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    sid = new_study(analysis_home, tmp_path)
    result = run_analysis(analysis_home, sid, "diabetes_hba1c", db=analysis_db, actor="analyst")
    assert result.directory == analysis_home.released / sid / result.run_id
    assert result.primary > 0 and result.secondary > 0  # the synthetic data has small cells
    assert_nothing_small_or_identifying(result.directory)
    assert sorted(result.files) == sorted(p.name for p in result.directory.iterdir())
    assert {"chart_n_patients.png", "chart_hba1c.png"} <= set(result.files)
    assert not list((analysis_home.released / sid).glob(".*"))  # no temporary directory left

    rows = list(csv.DictReader(io.StringIO((result.directory / "table.csv").read_text(encoding="utf-8"))))
    assert list(rows[0])[:2] == ["age_band", "sex"]
    assert {"n_patients", "n_hba1c", "hba1c_mean", "hba1c_median", "hba1c_p25", "hba1c_p75"} <= set(rows[0])
    assert {"85歳以上", "65-74歳計", "75歳以上計", "不明"} <= {r["age_band"] for r in rows}
    for r in rows:  # distributions only beside a published count of at least 10
        if r["hba1c_median"] not in ("", SUPPRESSED):
            assert r["n_hba1c"].isdigit() and int(r["n_hba1c"]) >= 10
        if r["n_hba1c"] == SUPPRESSED:
            assert r["hba1c_mean"] == SUPPRESSED
    note = (result.directory / "note.md").read_text(encoding="utf-8")
    summary = re.findall(r"\| (n_\w+) \| (\d+) セル \| (\d+) セル \| (\d+) セル \|", note)
    assert [c for c, *_ in summary] == ["n_patients", "n_hba1c"]
    assert sum(int(p) for _, p, _, _ in summary) == result.primary
    assert sum(int(s) for _, _, s, _ in summary) == result.secondary
    for column, p, s, _ in summary:  # what the note says matches what the CSV withholds
        assert _suppressed(result.directory, column) == int(p) + int(s)
    assert "保護区間 [0, 10]" in note

    with Registry(analysis_home) as reg:
        (release,) = reg.releases(sid)
    assert (release.run_id, release.primary_cells, release.secondary_cells) == (
        result.run_id,
        result.primary,
        result.secondary,
    )
    entries = [e for e in read_entries(analysis_home.audit) if e.action == "research.run"]
    assert entries[-1].details["outcome"] == "released"
    assert entries[-1].details["run"] == result.run_id
    assert entries[-1].details["primary"] == result.primary
    assert verify_log(analysis_home.audit).ok


def _suppressed(directory: Path, column: str) -> int:
    rows = list(csv.DictReader(io.StringIO((directory / "table.csv").read_text(encoding="utf-8"))))
    return sum(1 for r in rows if r[column] == SUPPRESSED)


def test_charts_are_drawn_from_the_suppressed_table(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    sid = new_study(analysis_home, tmp_path)
    spec = load_spec("diabetes_hba1c")
    conn = duckdb.connect(str(analysis_db), read_only=True)
    with Registry(analysis_home) as reg:
        a = analyse(conn, spec, reg, sid)
    conn.close()
    table = output_table(a)
    true_small = sum(1 for _, _, p in a.tables for v in p.values if 0 < v < MIN_COUNT)
    assert true_small > 0
    for column in ("n_patients", "hba1c_median"):
        points = charts.series(table, column)
        assert points
        assert any(p.value is None for p in points)  # suppressed cells have no bar/box
        for p in points:
            assert p.value is None or p.value == 0 or column != "n_patients" or p.value >= MIN_COUNT
    assert charts.setup_font() == charts.CJK_FONT


def test_second_release_with_an_overlapping_table_reveals_no_earlier_cell(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    """Release 1: 5-year bands × sex; release 2: 10-year bands × sex.  From both CSVs alone, every cell
    that holds 1..9 (in either release) still has a feasible range covering [0, 10]."""
    sid = new_study(analysis_home, tmp_path)
    spec5_path, spec10_path = write_spec(tmp_path, PATIENTS_5Y, "5y.toml"), write_spec(tmp_path, PATIENTS_10Y)
    first = run_analysis(analysis_home, sid, spec5_path, db=analysis_db, actor="a", charts=False)
    second = run_analysis(analysis_home, sid, spec10_path, db=analysis_db, actor="a", charts=False)
    assert "過去の公表" in (second.directory / "note.md").read_text(encoding="utf-8")

    # the attacker's atoms: 5-year band × sex (both releases' cells are sums of them)
    spec5, spec10 = load_spec(spec5_path), load_spec(spec10_path)
    conn = duckdb.connect(str(analysis_db), read_only=True)
    truth5 = analyse(conn, spec5, _EmptyRegistry(), sid).tables[0][2]  # type: ignore[arg-type]
    truth10 = analyse(conn, spec10, _EmptyRegistry(), sid).tables[0][2]  # type: ignore[arg-type]
    conn.close()
    age5, sex = spec5.dimensions
    age10 = spec10.dimensions[0]
    atoms = [(a, s) for a in range(len(age5.leaves)) for s in range(len(sex.leaves))]
    # which 5-year leaves make up each 10-year leaf (by the ages they cover)
    ages = np.arange(-1, 120)
    map5, map10 = age5.classify(ages), age10.classify(ages)

    def members(labels: tuple[str, ...], dims: Any) -> list[int]:
        a_lab, s_lab = labels
        a_dim = dims[0]
        a_cat = dict(a_dim.categories())[a_lab]
        s_cat = dict(sex.categories())[s_lab]
        fine = {int(f) for f, c in zip(map5, map5 if a_dim is age5 else map10, strict=True) if c in a_cat}
        return [k for k, (a, s) in enumerate(atoms) if a in fine and s in s_cat]

    eqs, vals, cells = [], [], []
    for directory, dims, truth in (
        (first.directory, spec5.dimensions, truth5),
        (second.directory, spec10.dimensions, truth10),
    ):
        rows = list(csv.DictReader(io.StringIO((directory / "table.csv").read_text(encoding="utf-8"))))
        for r, true in zip(rows, truth.values, strict=True):
            m = members((r["age_band"], r["sex"]), dims)
            if r["n_patients"] == SUPPRESSED:
                cells.append((m, int(true)))
            else:
                eqs.append(m)
                vals.append(int(r["n_patients"]))
    a_eq = np.zeros((len(eqs), len(atoms)))
    for i, m in enumerate(eqs):
        a_eq[i, m] = 1
    checked = 0
    for m, true in cells:
        if not 0 < true < MIN_COUNT:
            continue
        c = np.zeros(len(atoms))
        c[m] = 1
        lo = linprog(c, A_eq=a_eq, b_eq=vals, bounds=(0, None)).fun
        hi = linprog(-c, A_eq=a_eq, b_eq=vals, bounds=(0, None))
        assert lo <= 1e-6
        assert hi.status == 3 or -hi.fun >= MIN_COUNT - 1e-6
        checked += 1
    assert checked > 0


class _EmptyRegistry:
    """Stands in for the registry when the true (unreleased) counts are wanted."""

    def released_tables(self, study_id: str, universe: str) -> list[Any]:
        return []


def test_rerun_on_changed_data_is_refused(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    sid = new_study(analysis_home, tmp_path)
    spec = write_spec(tmp_path, PATIENTS_5Y)
    run_analysis(analysis_home, sid, spec, db=analysis_db, actor="a", charts=False)
    again = run_analysis(analysis_home, sid, spec, db=analysis_db, actor="a", charts=False)
    assert again.primary > 0  # the same data again: the same release
    changed = tmp_path / "changed.duckdb"
    shutil.copy(analysis_db, changed)
    conn = duckdb.connect(str(changed))
    conn.execute("INSERT INTO patients VALUES ('PIDSECRET-new', NULL, 'x', 'F', NULL)")
    conn.execute(
        "INSERT INTO conditions VALUES ('r', 'PIDSECRET-new', DATE '2025-01-01', 'E119', NULL, NULL, NULL,"
        " NULL, true, 50)"
    )
    conn.close()
    with pytest.raises(DisclosureError, match="published from different data"):
        run_analysis(analysis_home, sid, spec, db=changed, actor="a")
    assert len(list((analysis_home.released / sid).iterdir())) == 2


# --------------------------------------------------------------------------------------------- refusals
def _released(home: ResearchHome) -> list[Path]:
    return [p for p in home.released.rglob("*") if p.is_file()]


def test_refuses_unapproved_rejected_expired_and_unknown_studies(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    unapproved = new_study(analysis_home, tmp_path, approve=False)
    with pytest.raises(Refused, match=f"study {unapproved}: not approved"):
        run_analysis(analysis_home, unapproved, "diabetes_hba1c", db=analysis_db, actor="a")
    rejected = new_study(analysis_home, tmp_path, approve=False)
    expired = new_study(analysis_home, tmp_path, approve=False)
    with Registry(analysis_home) as reg:
        reg.decide(rejected, decision="reject", approver="委員長")
        reg.decide(
            expired,
            decision="approve",
            approver="委員長",
            valid_from=date(2023, 1, 1),
            valid_until=date(2024, 12, 31),
        )
    with pytest.raises(Refused, match="rejected by the ethics committee"):
        run_analysis(analysis_home, rejected, "diabetes_hba1c", db=analysis_db, actor="a")
    with pytest.raises(Refused, match="the approval expired on 2024-12-31"):
        run_analysis(analysis_home, expired, "diabetes_hba1c", db=analysis_db, actor="a")
    with pytest.raises(Refused, match="no such study"):
        run_analysis(analysis_home, "S2020-0042", "diabetes_hba1c", db=analysis_db, actor="a")
    # an approval that is still valid on a given day, but not on a later one
    approved = new_study(analysis_home, tmp_path)
    with pytest.raises(Refused, match="expired"):
        run_analysis(
            analysis_home,
            approved,
            "diabetes_hba1c",
            db=analysis_db,
            actor="a",
            today=date.today() + timedelta(days=400),
        )
    assert _released(analysis_home) == []
    refused = [e for e in read_entries(analysis_home.audit) if e.action == "research.run"]
    assert len(refused) == 5 and all(e.details["outcome"] == "refused" for e in refused)
    assert refused[0].details["error"] == "Refused"


def test_refuses_items_not_requested_and_dates_outside_the_period(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    no_labs = new_study(analysis_home, tmp_path, items=("demographics", "conditions"))
    with pytest.raises(Refused, match=r"needs data items the study .* did not request: labs"):
        run_analysis(analysis_home, no_labs, "diabetes_hba1c", db=analysis_db, actor="a")
    no_sex = new_study(analysis_home, tmp_path, items=("conditions", "labs"))
    with pytest.raises(Refused, match="did not request: demographics"):
        run_analysis(analysis_home, no_sex, "diabetes_hba1c", db=analysis_db, actor="a")
    short = new_study(analysis_home, tmp_path, period=DateRange(date(2025, 1, 1), date(2026, 12, 31)))
    with pytest.raises(Refused, match=r"\[window\] reads dates of care 2024-04-01..2026-03-31, outside"):
        run_analysis(analysis_home, short, "diabetes_hba1c", db=analysis_db, actor="a")
    washout = new_study(analysis_home, tmp_path, period=DateRange(date(2024, 1, 1), date(2026, 12, 31)))
    with pytest.raises(Refused, match="washout_days reads dates of care 2023-04-02"):
        run_analysis(analysis_home, washout, "diabetes_incidence", db=analysis_db, actor="a")
    assert _released(analysis_home) == []


MINIMAL = """
title = "t"
[window]
from = 2024-04-01
until = 2025-03-31
[cohort]
icd10 = ["E11"]
[[measures]]
kind = "patients"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "[dimensions.hospital]\n", r"hospital: a breakdown by, filter on or naming of hospitals"),
        (MINIMAL + "[dimensions.source]\n", r"source: a breakdown by, filter on or naming of hospitals"),
        (
            MINIMAL.replace('icd10 = ["E11"]', 'icd10 = ["E11"]\nsource = ["1310000017"]'),
            "source: a breakdown",
        ),
        (MINIMAL + '[dimensions.code_group]\ngroups = { "病院A" = ["E11"] }\n', "病院A: a breakdown"),
        (MINIMAL + "[dimensions.age_band]\nwidth = 3\n", "age bands must be at least 5 years, got 3"),
        (MINIMAL + "[dimensions.age_band]\ntop = 90\n", "must start at 85 or younger"),
        (
            MINIMAL + "[dimensions.age_band]\nstarts = [0, 15, 18, 65]\n",
            "band 15-17 is narrower than 5 years",
        ),
        (
            MINIMAL + "[dimensions.age_band]\nwidth = 10\nsubtotals = [0, 65]\n",
            "65 is not the start of a band",
        ),
        (MINIMAL + "[dimensions.region]\n", "unknown dimension 'region'"),
        (MINIMAL + '[dimensions.period]\ngrain = "week"\n', "'week' is not one of year"),
        (MINIMAL.replace("2025-03-31", "2023-03-31"), r"\[window\]: until is before from"),
        (MINIMAL.replace("from = 2024-04-01", 'from = "April"'), "'April' is not a date"),
        (MINIMAL.replace('icd10 = ["E11"]', 'icd10 = ["E11"]\nhot = ["1052614"]\nmatch = "all"'), None),
        (MINIMAL.replace('icd10 = ["E11"]', 'icd10 = ["E1*"]'), "'E1\\*' is not a code prefix"),
        (MINIMAL.replace('icd10 = ["E11"]', 'match = "any"'), "needs at least one of icd10"),
        (MINIMAL.replace('kind = "patients"', 'kind = "mortality"'), "'mortality' is not one of patients"),
        (MINIMAL + '[[measures]]\nkind = "lab_distribution"\nname = "x"\n', "needs jlac10 prefixes"),
        (MINIMAL + '[[measures]]\nkind = "patients"\n', "'patients' is used by another measure"),
        (MINIMAL + '[[measures]]\nkind = "drug_use"\nicd10 = ["E11"]\n', "needs hot or yj prefixes"),
        (MINIMAL + 'colour = "red"\n', "unknown key 'colour'"),
        (
            MINIMAL.replace('kind = "patients"', 'kind = "patients"\nwashout_days = 30'),
            "unknown key 'washout_days'",
        ),
        (MINIMAL.replace('[[measures]]\nkind = "patients"\n', ""), "at least one measure"),
        ("title = 't'\n[window\n", "not valid TOML"),
        (
            MINIMAL + '[[measures]]\nkind = "incidence"\n[dimensions.code_group]\ngroups = { a = ["E11"] }\n',
            "no denominator by code group",
        ),
    ],
)
def test_malformed_specs_are_refused_with_one_line(tmp_path: Path, text: str, message: str | None) -> None:
    path = write_spec(tmp_path, text)
    if message is None:
        assert load_spec(path).cohort.match == "all"
        return
    with pytest.raises(InputError, match=message) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_spec_not_found_names_the_ready_made_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="diabetes_hba1c"):
        load_spec(tmp_path / "nope.toml")


def test_every_shipped_spec_loads() -> None:
    names = shipped_specs()
    assert {"diabetes_hba1c", "anticoagulants_by_year", "af_prevalence", "diabetes_incidence"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.measures and spec.data_items() <= set(ALL_ITEMS)


def test_hospital_spec_run_is_refused_and_logged(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    sid = new_study(analysis_home, tmp_path)
    spec = write_spec(tmp_path, MINIMAL + "[dimensions.hospital]\n")
    with pytest.raises(InputError, match="hospitals is not allowed"):
        run_analysis(analysis_home, sid, spec, db=analysis_db, actor="a")
    (entry,) = [e for e in read_entries(analysis_home.audit) if e.action == "research.run"]
    assert entry.details == {"study": sid, "spec_sha256": "", "outcome": "refused", "error": "InputError"}
    assert _released(analysis_home) == []


# --------------------------------------------------------------------------------------------- semantics
SEMANTICS_SPEC = """
title = "semantics"
[window]
from = 2024-01-01
until = 2025-12-31
[cohort]
icd10 = ["E11", "E14"]
[[measures]]
kind = "patients"
[[measures]]
kind = "events"
[[measures]]
kind = "lab_distribution"
name = "hba1c"
jlac10 = ["3D046"]
[[measures]]
kind = "incidence"
name = "new"
washout_days = 365
[dimensions.period]
grain = "year"
[dimensions.age_band]
width = 5
[dimensions.sex]
"""


@pytest.fixture
def semantics_db(tmp_path: Path) -> Path:
    path = tmp_path / "semantics.duckdb"
    conn = duckdb.connect(str(path))
    create_all(conn)
    patients = [("p1", "M"), ("p2", "F"), ("p3", "O"), ("p4", "M"), ("p5", "F")]  # p6 has no patients row
    conn.executemany("INSERT INTO patients VALUES (?, NULL, 'HOSP', ?, NULL)", patients)
    conditions = [
        ("p1", "2024-03-01", "E119", 52),
        ("p1", "2025-02-01", "E11", 53),
        ("p2", "2023-06-01", "E14", 60),
        ("p2", "2024-07-01", "E14", 61),
        ("p3", "2025-01-10", "E11.9", None),
        ("p4", "2024-05-05", "I10", 40),
        ("p5", "2026-01-05", "E11", 70),
        ("p6", "2024-02-02", "E11", 30),
    ]
    conn.executemany(
        "INSERT INTO conditions VALUES ('rk', ?, ?::DATE, ?, NULL, NULL, NULL, NULL, true, ?)", conditions
    )
    labs = [
        ("p1", "2024-05-01", 7.0, 52),
        ("p1", "2024-11-01", 8.0, 52),
        ("p1", "2025-06-01", 6.5, 53),
        ("p4", "2024-06-01", 9.9, 40),
        ("p2", "2024-08-01", None, 61),
    ]
    conn.executemany("INSERT INTO labs VALUES ('rk', ?, ?::DATE, '3D046000002327101', ?, '%', NULL, ?)", labs)
    conn.close()
    return path


def _cells(a: Any, column: str) -> dict[tuple[str, ...], int]:
    for t, _, p in a.tables:
        if t.column == column:
            return {c.labels: int(v) for c, v in zip(p.cells, p.values, strict=True) if v}
    raise KeyError(column)


def test_query_semantics_on_a_hand_made_database(
    semantics_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, SEMANTICS_SPEC))
    conn = duckdb.connect(str(semantics_db), read_only=True)
    a = analyse(conn, spec, _EmptyRegistry(), "S2025-0001")  # type: ignore[arg-type]
    conn.close()
    leaf = {k: v for k, v in _cells(a, "n_patients").items() if "合計" not in k and "計" not in k[1]}
    # per year, classified by the first qualifying record of that year; p4 (I10) and p5 (2026) are out;
    # p3's age is unknown and its sex O; p6 has no demographics row
    assert leaf == {
        ("2024年", "50-54歳", "男"): 1,
        ("2024年", "60-64歳", "女"): 1,
        ("2024年", "30-34歳", "その他・不明"): 1,
        ("2025年", "50-54歳", "男"): 1,
        ("2025年", "不明", "その他・不明"): 1,
    }
    assert _cells(a, "n_patients")[("合計", "合計", "合計")] == 5
    events = _cells(a, "n_events")
    assert events[("合計", "合計", "合計")] == 5  # p2's 2023 record is outside the window
    assert events[("2024年", "合計", "合計")] == 3
    # lab: one unit per patient and year, valued at the last result; p4 is not in the cohort, p2 has no value
    assert _cells(a, "n_hba1c") == {
        ("2024年", "50-54歳", "男"): 1,
        ("2024年", "50-54歳", "合計"): 1,
        ("2024年", "合計", "男"): 1,
        ("2024年", "合計", "合計"): 1,
        ("2025年", "50-54歳", "男"): 1,
        ("2025年", "50-54歳", "合計"): 1,
        ("2025年", "合計", "男"): 1,
        ("2025年", "合計", "合計"): 1,
        ("合計", "50-54歳", "男"): 2,
        ("合計", "50-54歳", "合計"): 2,
        ("合計", "合計", "男"): 2,
        ("合計", "合計", "合計"): 2,
    }
    # incidence: p2 had a record in the washout year; p1, p6 new in 2024, p3 in 2025
    new = _cells(a, "n_new")
    assert new[("2024年", "合計", "合計")] == 2 and new[("2025年", "合計", "合計")] == 1
    population = _cells(a, "n_new_population")  # anyone with a condition record in the year: p4 too
    assert population[("2024年", "合計", "合計")] == 4 and population[("2025年", "合計", "合計")] == 2
    # everything here is a small count: all suppressed in the released table
    table = output_table(a)
    assert all(v in (0, SUPPRESSED, None) for col in table.columns for v in table.data[col.name])


def test_the_queries_read_only_the_study_columns(tmp_path: Path) -> None:
    from research.query import VIEW_COLUMNS, count_tables, unit_sql

    spec = load_spec(write_spec(tmp_path, SEMANTICS_SPEC))
    for t in count_tables(spec):
        sql = unit_sql(spec, t, {"age", "sex", "period", "code"})
        assert "source" not in sql and "link" not in sql and "rkey" not in sql
        for table in re.findall(r"FROM main\.(\w+)", sql):
            assert table in VIEW_COLUMNS


# --------------------------------------------------------------------------------------------- CLI
def test_cli_run_json_and_refusal_line(
    analysis_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ResearchHome(tmp_path / "center").ensure()
    sid = new_study(home, tmp_path, items=("demographics", "prescriptions"))
    r = CliRunner().invoke(
        app,
        [
            "research",
            "run",
            sid,
            "anticoagulants_by_year",
            "--home",
            str(home.root),
            "--db",
            str(analysis_db),
            "--no-charts",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = orjson.loads(r.stdout)
    assert out["study"] == sid and out["audit"]["ok"] is True
    assert set(out["files"]) == {"table.csv", "table.html", "note.md"}
    assert_nothing_small_or_identifying(Path(out["directory"]))
    rows = list(
        csv.DictReader(io.StringIO((Path(out["directory"]) / "table.csv").read_text(encoding="utf-8")))
    )
    assert list(rows[0])[:3] == ["period", "code_group", "sex"]
    assert {r["code_group"] for r in rows} == {"ワルファリン", "DOAC", "合計"}

    from hakobune.cli import main

    pending = new_study(home, tmp_path, approve=False)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "hakobune",
            "research",
            "run",
            pending,
            "diabetes_hba1c",
            "--home",
            str(home.root),
            "--db",
            str(analysis_db),
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err == f"hakobune: error: study {pending}: not approved: the ethics committee has not decided yet\n"
    )


@pytest.mark.integration
def test_every_shipped_spec_releases_safely(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    sid = new_study(analysis_home, tmp_path)
    for name in shipped_specs():
        result = run_analysis(analysis_home, sid, name, db=analysis_db, actor="a")
        assert_nothing_small_or_identifying(result.directory)
        assert result.files[-2:] == ["table.html", "note.md"]


def test_nothing_is_released_when_the_audit_fails(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from research import disclosure

    monkeypatch.setattr(disclosure._Perturber, "solve", lambda self, *a, **k: [])  # a broken heuristic
    sid = new_study(analysis_home, tmp_path)
    with pytest.raises(DisclosureError, match="the disclosure audit failed"):
        run_analysis(analysis_home, sid, "diabetes_hba1c", db=analysis_db, actor="a", charts=False)
    assert _released(analysis_home) == []
    with Registry(analysis_home) as reg:
        assert reg.releases(sid) == []
    (entry,) = [e for e in read_entries(analysis_home.audit) if e.action == "research.run"]
    assert entry.details["outcome"] == "refused" and entry.details["error"] == "DisclosureError"


def test_a_title_naming_a_sending_hospital_is_not_released(
    analysis_db: Path, analysis_home: ResearchHome, tmp_path: Path
) -> None:
    sid = new_study(analysis_home, tmp_path, items=("demographics", "conditions"))
    spec = write_spec(
        tmp_path, MINIMAL.replace('title = "t"', 'title = "1410000023 の糖尿病患者"') + "[dimensions.sex]\n"
    )
    with pytest.raises(DisclosureError, match="would name a sending hospital"):
        run_analysis(analysis_home, sid, spec, db=analysis_db, actor="a", charts=False)
    assert _released(analysis_home) == []

"""Compile an analysis spec to DuckDB SQL over only the columns a study may see, and fetch units.

Every query starts with one view per data item the spec uses, selecting only that item's columns from
research.schema.DATA_ITEMS (never ``patients.source``), and reads nothing else.  A query returns *units*
(a patient, a patient in a period, or a record) reduced to the attributes the dimensions classify by: age
at the unit's classifying record, sex, period key and code.  Pseudonyms never leave DuckDB; count tables
come back already aggregated by attribute combination, lab units one row per patient with its value.

Units (docs/research.md):

* ``cohort_patients`` (patients, prevalence): a cohort patient with a qualifying record in the window —
  per period when the spec has a period dimension; classified by the first such record.
* ``population`` (denominator of incidence and prevalence): any patient with a record in the window in
  the tables the cohort is defined on; per period likewise; classified by the first record.
* ``incident``: a cohort patient whose first qualifying record since ``washout_days`` before the window
  falls in the window; classified by that record.
* ``events``: one qualifying record.
* ``drug_users``: a cohort patient with a matching drug record in the window (per period); first record.
* ``lab_patients``: a cohort patient with a numeric result of the lab codes in the window (per period);
  classified by, and valued at, the last such result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from research.schema import CLINICAL_TABLES, DATA_ITEMS
from research.spec import Codes, DateRange, Measure, Spec

#: What each view selects; checked against DATA_ITEMS at import so a query can never read more.
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("pid", "sex"),
    "conditions": ("pid", "date", "age", "icd10"),
    "prescriptions": ("pid", "date", "age", "code", "system"),
    "injections": ("pid", "date", "age", "code", "system"),
    "labs": ("pid", "date", "age", "code", "value"),
}
_ITEM_OF_TABLE = {table: item for item, (table, _) in DATA_ITEMS.items()}
for _table, _cols in VIEW_COLUMNS.items():
    assert set(_cols) <= set(DATA_ITEMS[_ITEM_OF_TABLE[_table]][1]), _table

ATTRIBUTES = ("age", "sex", "period", "code")


@dataclass(frozen=True)
class CountTable:
    """One published count column: the units it counts and how they are defined."""

    column: str  # CSV column, n_*
    label: str  # Japanese header
    measure: Measure
    unit: str

    def universe(self, spec: Spec) -> str:
        """Identifies the set of units (not the dimensions): tables of one study with the same universe
        count the same units, so everything published about them is linked in the disclosure audit."""
        doc: dict[str, Any] = {"unit": self.unit, "window": str(spec.window), "grain": spec.grain}
        if self.unit != "population":
            doc["cohort"] = spec.cohort.to_json()
        else:
            doc["tables"] = sorted(spec.cohort.codes.tables())
        if self.unit in ("events", "drug_users", "lab_patients"):
            doc["codes"] = spec.measure_codes(self.measure).to_json()
        if self.unit == "events":
            doc["table"] = spec.event_source(self.measure)
        if self.unit == "incident":
            doc["washout_days"] = self.measure.washout_days
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def count_tables(spec: Spec) -> list[CountTable]:
    """The count columns a spec publishes, in order."""
    out: list[CountTable] = []
    for m in spec.measures:
        if m.kind == "patients":
            out.append(CountTable(f"n_{m.name}", m.label, m, "cohort_patients"))
        elif m.kind == "prevalence":
            out.append(CountTable(f"n_{m.name}", m.label, m, "cohort_patients"))
            out.append(CountTable(f"n_{m.name}_population", "対象集団の患者数", m, "population"))
        elif m.kind == "incidence":
            out.append(CountTable(f"n_{m.name}", m.label, m, "incident"))
            out.append(CountTable(f"n_{m.name}_population", "対象集団の患者数", m, "population"))
        elif m.kind == "events":
            out.append(CountTable(f"n_{m.name}", m.label, m, "events"))
        elif m.kind == "drug_use":
            out.append(CountTable(f"n_{m.name}", m.label, m, "drug_users"))
        else:
            out.append(CountTable(f"n_{m.name}", f"{m.label} 測定患者数", m, "lab_patients"))
    return out


@dataclass
class Units:
    """Units reduced to attributes: one row per attribute combination with its count (``weight``), or
    one row per unit with its ``value`` (lab distributions)."""

    age: npt.NDArray[np.int64]
    sex: npt.NDArray[Any]
    period: npt.NDArray[np.int64]
    code: npt.NDArray[Any]
    weight: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def attribute(self, name: str) -> npt.NDArray[Any]:
        return {"age": self.age, "sex": self.sex, "period": self.period, "code": self.code}[name]

    def __len__(self) -> int:
        return len(self.weight)


# --------------------------------------------------------------------------------------------- SQL pieces
def _lit(prefix: str) -> str:
    # prefixes are validated by research.spec (letters and digits only); quoted anyway
    return "'" + prefix.replace("'", "''") + "'"


def _starts(expr: str, prefixes: Sequence[str]) -> str:
    return "(" + " OR ".join(f"starts_with({expr}, {_lit(p)})" for p in prefixes) + ")"


def _date(d: date) -> str:
    return f"DATE '{date(d.year, d.month, d.day).isoformat()}'"


def period_sql(grain: str | None, col: str = "date") -> str:
    """The integer period key of a date column (research.spec.period_key in SQL)."""
    if grain is None:
        return "0"
    if grain == "year":
        return f"year({col})"
    if grain == "fiscal_year":
        return f"year({col} - INTERVAL 3 MONTH)"
    if grain == "quarter":
        return f"(year({col}) * 4 + quarter({col}) - 1)"
    return f"(year({col}) * 12 + month({col}) - 1)"


class _Builder:
    """Collects the views a query uses.  Dates are inlined as literals (they are ``date`` objects, never
    text from the spec), so the order in which pieces are built does not matter."""

    def __init__(self) -> None:
        self.tables: set[str] = set()

    def view(self, table: str) -> str:
        self.tables.add(table)
        return f"v_{table}"

    def between(self, r: DateRange) -> str:
        return f"date BETWEEN {_date(r.start)} AND {_date(r.end)}"

    def header(self) -> str:
        views = [
            f"v_{t} AS (SELECT {', '.join(VIEW_COLUMNS[t])} FROM main.{t})"
            for t in ("patients", *CLINICAL_TABLES)
            if t in self.tables
        ]
        return ("WITH " + ",\n".join(views) + "\n") if views else ""

    def records(self, codes: Codes, r: DateRange, *, value: bool = False) -> str:
        """(pid, date, age, code[, value]) of the records matching ``codes`` within ``r``."""
        parts: list[str] = []
        v = ", value" if value else ""
        null_value = ", NULL::DOUBLE AS value" if value else ""
        if codes.icd10:
            icd = "replace(icd10, '.', '')"
            parts.append(
                f"SELECT pid, date, age, {icd} AS code{null_value}"
                f" FROM {self.view('conditions')} WHERE {self.between(r)} AND {_starts(icd, codes.icd10)}"
            )
        for table in codes.drug_tables if (codes.hot or codes.yj) else ():
            conds = []
            if codes.hot:
                conds.append(f"(upper(system) LIKE 'HOT%' AND {_starts('code', codes.hot)})")
            if codes.yj:
                conds.append(f"(upper(system) = 'YJ' AND {_starts('code', codes.yj)})")
            parts.append(
                f"SELECT pid, date, age, code{null_value}"
                f" FROM {self.view(table)} WHERE {self.between(r)} AND ({' OR '.join(conds)})"
            )
        if codes.jlac10:
            parts.append(
                f"SELECT pid, date, age, code{v}"
                f" FROM {self.view('labs')} WHERE {self.between(r)} AND {_starts('code', codes.jlac10)}"
                + (" AND value IS NOT NULL" if value else "")
            )
        return "\nUNION ALL\n".join(parts)

    def any_records(self, tables: Sequence[str], r: DateRange) -> str:
        """(pid, date, age, code) of every record of ``tables`` within ``r`` (the population)."""
        return "\nUNION ALL\n".join(
            f"SELECT pid, date, age, NULL::VARCHAR AS code FROM {self.view(t)} WHERE {self.between(r)}"
            for t in dict.fromkeys(tables)
        )

    def cohort(self, spec: Spec) -> str:
        """The pseudonyms of the cohort."""
        c = spec.cohort
        if c.match == "any":
            return f"SELECT DISTINCT pid FROM ({self.records(c.codes, c.range)})"
        parts = []
        for sub in (
            Codes(icd10=c.codes.icd10),
            Codes(hot=c.codes.hot, yj=c.codes.yj, drug_tables=c.codes.drug_tables),
            Codes(jlac10=c.codes.jlac10),
        ):
            if not sub.empty:
                parts.append(f"SELECT DISTINCT pid FROM ({self.records(sub, c.range)})")
        return "\nINTERSECT\n".join(parts)


def unit_sql(spec: Spec, table: CountTable, needed: set[str]) -> str:
    """The SQL returning ``table``'s units as (age, sex, pk, code, n) rows — or (age, sex, pk, code,
    value) rows, one per unit, for lab distributions.  Attributes not in ``needed``
    are constants, so they do not multiply the rows."""
    b = _Builder()
    grain = spec.grain if "period" in needed else None
    pk = period_sql(grain)
    m = table.measure
    order = "(date, code)"
    if table.unit == "cohort_patients":
        recs = b.records(spec.cohort.codes, spec.cohort.range)
        units = (
            f"SELECT pid, pk, arg_min(age, {order}) AS age, arg_min(code, {order}) AS code"
            f" FROM (SELECT *, {pk} AS pk FROM ({recs}) WHERE {b.between(spec.window)}) GROUP BY pid, pk"
        )
    elif table.unit == "population":
        recs = b.any_records(spec.cohort.codes.tables(), spec.window)
        units = (
            f"SELECT pid, pk, arg_min(age, date) AS age, NULL::VARCHAR AS code"
            f" FROM (SELECT *, {pk} AS pk FROM ({recs})) GROUP BY pid, pk"
        )
    elif table.unit == "incident":
        cohort = b.cohort(spec)
        start = date.fromordinal(spec.window.start.toordinal() - m.washout_days)
        recs = b.records(spec.cohort.codes, DateRange(start, spec.window.end))
        units = (
            f"SELECT pid, {period_sql(grain, 'first')} AS pk, age, code FROM ("
            f"SELECT pid, min(date) AS first, arg_min(age, {order}) AS age, arg_min(code, {order}) AS code"
            f" FROM ({recs}) WHERE pid IN ({cohort}) GROUP BY pid"
            f" HAVING min(date) >= {_date(spec.window.start)})"
        )
    elif table.unit == "events":
        cohort = b.cohort(spec)
        codes = spec.measure_codes(m)
        codes = _only_table(codes, spec.event_source(m))
        recs = b.records(codes, spec.window)
        units = f"SELECT pid, {pk} AS pk, age, code FROM ({recs}) WHERE pid IN ({cohort})"
    elif table.unit == "drug_users":
        cohort = b.cohort(spec)
        recs = b.records(m.codes, spec.window)
        units = (
            f"SELECT pid, pk, arg_min(age, {order}) AS age, arg_min(code, {order}) AS code"
            f" FROM (SELECT *, {pk} AS pk FROM ({recs}) WHERE pid IN ({cohort})) GROUP BY pid, pk"
        )
    elif table.unit == "lab_patients":
        cohort = b.cohort(spec)
        recs = b.records(m.codes, spec.window, value=True)
        units = (
            f"SELECT pid, pk, arg_max(age, {order}) AS age, arg_max(code, {order}) AS code,"
            f" arg_max(value, {order}) AS value"
            f" FROM (SELECT *, {pk} AS pk FROM ({recs}) WHERE pid IN ({cohort})) GROUP BY pid, pk"
        )
    else:  # pragma: no cover - count_tables makes only the units above
        raise ValueError(table.unit)

    age = "coalesce(u.age, -1)" if "age" in needed else "-1"
    code = "coalesce(u.code, '')" if "code" in needed else "''"
    sex = "coalesce(p.sex, 'U')" if "sex" in needed else "'U'"
    join = f" LEFT JOIN {b.view('patients')} p USING (pid)" if "sex" in needed else ""
    period = "u.pk" if grain is not None else "0"
    cols = f"{age}::BIGINT AS age, {sex} AS sex, {period}::BIGINT AS pk, {code} AS code"
    if table.unit == "lab_patients":
        body = f"SELECT {cols}, u.value::DOUBLE AS value FROM ({units}) u{join}"
    else:
        body = f"SELECT {cols}, count(*)::BIGINT AS n FROM ({units}) u{join} GROUP BY ALL"
    return b.header() + body


def _only_table(codes: Codes, table: str) -> Codes:
    if table == "conditions":
        return Codes(icd10=codes.icd10)
    if table == "labs":
        return Codes(jlac10=codes.jlac10)
    return Codes(hot=codes.hot, yj=codes.yj, drug_tables=(table,))


def fetch_units(conn: Any, spec: Spec, table: CountTable, needed: set[str]) -> Units:
    """Run ``table``'s query on a DuckDB connection."""
    res = conn.execute(unit_sql(spec, table, needed)).fetchnumpy()
    n = len(res["age"])
    weight = (
        np.ones(n, dtype=np.int64) if table.unit == "lab_patients" else np.asarray(res["n"], dtype=np.int64)
    )
    value = np.asarray(res["value"], dtype=np.float64) if table.unit == "lab_patients" else None
    return Units(
        age=np.asarray(res["age"], dtype=np.int64),
        sex=np.asarray(res["sex"], dtype=object),
        period=np.asarray(res["pk"], dtype=np.int64),
        code=np.asarray(res["code"], dtype=object),
        weight=weight,
        value=value,
    )


def snapshot(conn: Any) -> dict[str, Any]:
    """Identifies the data an analysis read without naming any hospital: a digest over the applied
    research changesets (sender, sequence, hash) and the row count of every clinical table."""
    h = hashlib.sha256()
    changesets = 0
    for row in conn.execute(
        "SELECT source, sequence, hash FROM ingested ORDER BY source, sequence"
    ).fetchall():
        h.update(orjson.dumps([str(row[0]), int(row[1]), str(row[2])]) + b"\n")
        changesets += 1
    rows: dict[str, int] = {}
    for t in ("patients", *CLINICAL_TABLES):
        rows[t] = int(conn.execute(f"SELECT count(*) FROM main.{t}").fetchone()[0])
    h.update(orjson.dumps(rows, option=orjson.OPT_SORT_KEYS))
    return {"digest": h.hexdigest()[:32], "changesets": changesets, "rows": rows}

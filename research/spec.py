"""Declarative analysis specs (TOML): what an analyst may ask of the de-identified database.

A spec names an analysis window (dates of care), a cohort (ICD-10 / HOT / YJ / JLAC10 code prefixes and a
date range), measures (patients, events, incidence, prevalence, drug use, lab value distributions) and
dimensions (age band, sex, period, code group).  It never names a table, a column or SQL: research.query
compiles it over the columns the study may see, and the disclosure rules that bind every release are
enforced here where a spec could break them (age bands of at least 5 years with 85+ grouped; no breakdown
by, filter on or naming of hospitals).  Every problem is one line naming the file and the key.
docs/research.md describes the format; research/specs/ holds ready-made specs.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hakobune.errors import InputError

#: Ready-made specs shipped with Hakobune; ``research run STUDY NAME`` finds them by file stem.
SPEC_DIR = Path(__file__).parent / "specs"

TOTAL = "合計"
UNKNOWN_AGE = "不明"
OTHER_CODES = "その他"

#: Narrowest age band published, and the age from which everyone is one group (DESIGN §10).
MIN_AGE_BAND = 5
AGE_TOP = 85
#: Ages above this are data errors; they are classified like any age >= AGE_TOP.
MAX_AGE = 130

MEASURE_KINDS = ("patients", "events", "incidence", "prevalence", "drug_use", "lab_distribution")
DIMENSION_KINDS = ("age_band", "sex", "period", "code_group")
GRAINS = ("year", "fiscal_year", "quarter", "month")
#: Tables a drug criterion may search (both hold HOT9/HOT13/YJ codes).
DRUG_TABLES = ("prescriptions", "injections")
#: Tables an events measure can count (``table = …``).
EVENT_SOURCES = ("conditions", "prescriptions", "injections", "labs")

#: Words that would make a spec break down by, filter on or name hospitals: refused wherever they appear
#: as a key or dimension (``patients.source`` exists for ingest bookkeeping only).
HOSPITAL_WORDS = frozenset(
    {"hospital", "hospitals", "source", "sources", "facility", "facilities", "institution", "site", "sites"}
)
HOSPITAL_WORDS_JA = ("病院", "施設", "医療機関")

_PREFIX = re.compile(r"[A-Za-z0-9]{1,17}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_LABEL = 40
_MAX_GROUPS = 30


# --------------------------------------------------------------------------------------------- dimensions
class Dimension(ABC):
    """One way of classifying the units of a measure.  ``leaves`` are the finest published categories (in
    order); ``groups`` the subtotals published besides the grand total, each a set of leaf indices.  The
    classification itself reads one attribute of the unit (``attribute``: age, sex, period or code)."""

    kind: str
    attribute: str
    title: str  # Japanese heading

    @property
    @abstractmethod
    def leaves(self) -> tuple[str, ...]: ...

    @property
    def groups(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return ()

    @abstractmethod
    def classify(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """The leaf index of every value of ``attribute``."""

    def domain(self) -> npt.NDArray[Any] | None:
        """Every value ``attribute`` can take, when that is a short list (to know which combinations of
        categories can exist); None when it cannot be listed (codes)."""
        return None

    @abstractmethod
    def to_json(self) -> dict[str, Any]: ...

    def class_key(self) -> str:
        """Identifies the classification (not the subtotals): two dimensions with equal keys put every
        unit in the same leaf."""
        doc = self.to_json()
        doc.pop("subtotals", None)
        doc.pop("title", None)
        return repr(sorted(doc.items()))

    def categories(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every published category: the leaves, the subtotal groups, then the total."""
        out: list[tuple[str, tuple[int, ...]]] = [(label, (i,)) for i, label in enumerate(self.leaves)]
        out.extend(self.groups)
        out.append((TOTAL, tuple(range(len(self.leaves)))))
        return out


class AgeBand(Dimension):
    """Age in whole years at the unit's classifying record: bands of at least 5 years starting at 0, one
    open band from ``top`` (at most 85), and 不明 for records without an age."""

    kind = "age_band"
    attribute = "age"
    title = "年齢階級"

    def __init__(self, starts: Sequence[int], top: int, subtotals: Sequence[int] = ()) -> None:
        self.starts = tuple(starts)
        self.top = top
        self.subtotals = tuple(subtotals)
        bounds = [*self.starts, top]
        labels = [f"{a}-{b - 1}歳" for a, b in itertools.pairwise(bounds)]
        self._leaves = (*labels, f"{top}歳以上", UNKNOWN_AGE)
        groups: list[tuple[str, tuple[int, ...]]] = []
        sub = [*self.subtotals, top + 1]  # the last subtotal runs through the open band
        for lo, hi in itertools.pairwise(sub):
            members = tuple(i for i, s in enumerate(bounds) if lo <= s < hi)
            label = f"{lo}歳以上計" if hi > top else f"{lo}-{hi - 1}歳計"
            groups.append((label, members))
        self._groups = tuple(groups)

    @property
    def leaves(self) -> tuple[str, ...]:
        return self._leaves

    @property
    def groups(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return self._groups

    def classify(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        ages = np.asarray(values, dtype=np.int64)
        bounds = np.asarray([*self.starts[1:], self.top], dtype=np.int64)
        idx = np.searchsorted(bounds, ages, side="right").astype(np.int64)
        idx[ages < 0] = len(self._leaves) - 1
        return idx

    def domain(self) -> npt.NDArray[Any]:
        return np.arange(-1, MAX_AGE + 1, dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "starts": list(self.starts),
            "top": self.top,
            "subtotals": list(self.subtotals),
        }


class Sex(Dimension):
    """Sex from the demographics item: 男, 女, and one category for other and unknown (HL7 O and U are
    too rare to stand alone)."""

    kind = "sex"
    attribute = "sex"
    title = "性別"
    _CODES = ("M", "F")

    @property
    def leaves(self) -> tuple[str, ...]:
        return ("男", "女", "その他・不明")

    def classify(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        v = np.asarray(values, dtype=object)
        out = np.full(len(v), 2, dtype=np.int64)
        out[v == "M"] = 0
        out[v == "F"] = 1
        return out

    def domain(self) -> npt.NDArray[Any]:
        return np.asarray(["M", "F", "O", "U"], dtype=object)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}


def period_key(d: date, grain: str) -> int:
    """The integer key research.query computes in SQL for a date (see ``query.period_sql``)."""
    if grain == "year":
        return d.year
    if grain == "fiscal_year":  # 年度: April to March, named by the year it starts
        return d.year if d.month >= 4 else d.year - 1
    if grain == "quarter":
        return d.year * 4 + (d.month - 1) // 3
    return d.year * 12 + d.month - 1


class Period(Dimension):
    """The period of the unit's classifying record: calendar year, fiscal year (年度), quarter or month,
    every period of the window listed (also the empty ones); optional year subtotals."""

    kind = "period"
    attribute = "period"
    title = "期間"

    def __init__(self, grain: str, first: int, last: int, subtotals: bool = False) -> None:
        self.grain = grain
        self.first = first
        self.last = last
        self.subtotals = subtotals
        keys = range(first, last + 1)
        self._leaves = tuple(self._label(k) for k in keys)
        groups: list[tuple[str, tuple[int, ...]]] = []
        if subtotals and grain in ("quarter", "month"):
            per = 4 if grain == "quarter" else 12
            years = sorted({k // per for k in keys})
            for y in years:
                groups.append((f"{y}年計", tuple(i for i, k in enumerate(keys) if k // per == y)))
        self._groups = tuple(groups)

    def _label(self, k: int) -> str:
        if self.grain == "year":
            return f"{k}年"
        if self.grain == "fiscal_year":
            return f"{k}年度"
        if self.grain == "quarter":
            return f"{k // 4}年Q{k % 4 + 1}"
        return f"{k // 12}年{k % 12 + 1:02d}月"

    @property
    def leaves(self) -> tuple[str, ...]:
        return self._leaves

    @property
    def groups(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return self._groups

    def classify(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        return np.clip(np.asarray(values, dtype=np.int64) - self.first, 0, len(self._leaves) - 1)

    def domain(self) -> npt.NDArray[Any]:
        return np.arange(self.first, self.last + 1, dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "grain": self.grain,
            "first": self.first,
            "last": self.last,
            "subtotals": self.subtotals,
        }


class CodeGroup(Dimension):
    """Named groups of code prefixes (the first group whose prefix matches wins); その他 is a category
    only when some code the measure counts can match no group."""

    kind = "code_group"
    attribute = "code"
    title = "コード群"

    def __init__(
        self, groups: Sequence[tuple[str, Sequence[str]]], other: bool, title: str = "コード群"
    ) -> None:
        self.named = tuple((label, tuple(prefixes)) for label, prefixes in groups)
        self.other = other
        self.title = title
        self._leaves = tuple(label for label, _ in self.named) + ((OTHER_CODES,) if other else ())

    @property
    def leaves(self) -> tuple[str, ...]:
        return self._leaves

    def classify(self, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        v = np.asarray(values, dtype=object)
        uniq, inverse = np.unique(v.astype(str), return_inverse=True)
        fallback = len(self._leaves) - 1 if self.other else 0
        mapped = np.asarray([self._index(str(code), fallback) for code in uniq], dtype=np.int64)
        return mapped[inverse.reshape(-1)] if len(v) else np.zeros(0, dtype=np.int64)

    def _index(self, code: str, fallback: int) -> int:
        for i, (_, prefixes) in enumerate(self.named):
            if any(code.startswith(p) for p in prefixes):
                return i
        return fallback

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "groups": [[lb, list(p)] for lb, p in self.named],
            "other": self.other,
            "title": self.title,
        }


def dimension_from_json(doc: dict[str, Any]) -> Dimension:
    """Rebuild a dimension recorded with a release (the registry keeps every published table's
    definition so that later releases of the study are checked against it)."""
    kind = doc.get("kind")
    if kind == "age_band":
        return AgeBand(doc["starts"], doc["top"], doc.get("subtotals", ()))
    if kind == "sex":
        return Sex()
    if kind == "period":
        return Period(doc["grain"], doc["first"], doc["last"], bool(doc.get("subtotals", False)))
    if kind == "code_group":
        return CodeGroup(
            [(g[0], g[1]) for g in doc["groups"]], bool(doc["other"]), doc.get("title", "コード群")
        )
    raise ValueError(f"unknown dimension kind {kind!r}")


# --------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class DateRange:
    """Dates of care, both ends included."""

    start: date
    end: date

    def covers(self, other: DateRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


@dataclass(frozen=True)
class Codes:
    """Code prefixes by system.  ICD-10 is matched without dots; HOT prefixes match HOT9 and HOT13 codes
    (a HOT13 code starts with its HOT9); YJ prefixes match YJ codes; JLAC10 prefixes match lab codes."""

    icd10: tuple[str, ...] = ()
    hot: tuple[str, ...] = ()
    yj: tuple[str, ...] = ()
    jlac10: tuple[str, ...] = ()
    drug_tables: tuple[str, ...] = ("prescriptions",)

    @property
    def empty(self) -> bool:
        return not (self.icd10 or self.hot or self.yj or self.jlac10)

    def tables(self) -> tuple[str, ...]:
        """The clinical tables these codes are searched in."""
        out: list[str] = []
        if self.icd10:
            out.append("conditions")
        if self.hot or self.yj:
            out.extend(self.drug_tables)
        if self.jlac10:
            out.append("labs")
        return tuple(out)

    def prefixes(self) -> tuple[str, ...]:
        return self.icd10 + self.hot + self.yj + self.jlac10

    def to_json(self) -> dict[str, Any]:
        return {
            "icd10": list(self.icd10),
            "hot": list(self.hot),
            "yj": list(self.yj),
            "jlac10": list(self.jlac10),
            "drug_tables": list(self.drug_tables) if (self.hot or self.yj) else [],
        }


@dataclass(frozen=True)
class Cohort:
    codes: Codes
    range: DateRange
    match: str  # "any": a record of any listed system; "all": a record of every listed system

    def to_json(self) -> dict[str, Any]:
        return {
            "codes": self.codes.to_json(),
            "from": str(self.range.start),
            "until": str(self.range.end),
            "match": self.match,
        }


@dataclass(frozen=True)
class Measure:
    kind: str
    name: str
    label: str
    codes: Codes  # events / drug_use / lab_distribution: what is counted or measured (empty: the cohort's)
    table: str = ""  # events: the table whose records are counted
    washout_days: int = 0  # incidence: no qualifying record this long before the first one in the window

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "codes": self.codes.to_json(),
            "table": self.table,
            "washout_days": self.washout_days,
        }


@dataclass(frozen=True)
class Spec:
    path: Path
    sha256: str
    title: str
    description: str
    window: DateRange
    cohort: Cohort
    measures: tuple[Measure, ...]
    dimensions: tuple[Dimension, ...]

    @property
    def grain(self) -> str | None:
        for d in self.dimensions:
            if isinstance(d, Period):
                return d.grain
        return None

    def dimension(self, kind: str) -> Dimension | None:
        return next((d for d in self.dimensions if d.kind == kind), None)

    def measure_codes(self, m: Measure) -> Codes:
        """The codes a measure's records are matched on (its own, else the cohort's)."""
        return self.cohort.codes if m.codes.empty else m.codes

    def event_source(self, m: Measure) -> str:
        return m.table or self.measure_codes(m).tables()[0]

    def data_items(self) -> set[str]:
        """The data items (research.schema.DATA_ITEMS keys) the analysis reads."""
        tables: set[str] = set(self.cohort.codes.tables())
        for m in self.measures:
            if m.kind in ("drug_use", "lab_distribution"):
                tables.update(m.codes.tables())
            elif m.kind == "events":
                tables.add(self.event_source(m))
        if self.dimension("sex") is not None:
            tables.add("patients")
        return {"demographics" if t == "patients" else t for t in tables}

    def date_ranges(self) -> list[tuple[str, DateRange]]:
        """Every range of care dates the analysis reads, named as in the spec (to check against the
        study's approved period)."""
        out = [("[window]", self.window), ("[cohort] from/until", self.cohort.range)]
        for m in self.measures:
            if m.kind == "incidence":
                start = date.fromordinal(self.window.start.toordinal() - m.washout_days)
                out.append((f"measure {m.name!r} washout_days", DateRange(start, self.window.end)))
        return out


# --------------------------------------------------------------------------------------------- reading
class _Reader:
    """Typed access to a parsed spec: every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, reason: str) -> InputError:
        return InputError(str(self.path), reason)

    def table(self, doc: dict[str, Any], key: str, where: str, required: bool = False) -> dict[str, Any]:
        value = doc.get(key)
        if value is None:
            if required:
                raise self.fail(f"{where}: missing [{key}]")
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{where}{key}: must be a table")
        return value

    def only(self, doc: dict[str, Any], allowed: Sequence[str], where: str) -> None:
        for key in doc:
            if key not in allowed:
                raise self.fail(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed) or 'none'})")

    def text(self, doc: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = doc.get(key, default)
        if value is None:
            raise self.fail(f"{where}: missing {key}")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}{key}: must be a non-empty string")
        return value.strip()

    def day(self, doc: dict[str, Any], key: str, where: str, default: date | None = None) -> date:
        value = doc.get(key, default)
        if value is None:
            raise self.fail(f"{where}: missing {key} (a date, e.g. 2024-01-01)")
        if isinstance(value, date) and not hasattr(value, "hour"):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise self.fail(f"{where}{key}: {value!r} is not a date (YYYY-MM-DD)")

    def integer(self, doc: dict[str, Any], key: str, where: str, default: int) -> int:
        value = doc.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{where}{key}: must be an integer")
        return value

    def prefixes(self, doc: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}{key}: must be a list of code prefixes")
        for v in value:
            if not _PREFIX.fullmatch(v.replace(".", "")):
                raise self.fail(f"{where}{key}: {v!r} is not a code prefix (1-17 letters or digits)")
        return tuple(dict.fromkeys(v.replace(".", "").upper() for v in value))

    def codes(self, doc: dict[str, Any], where: str) -> Codes:
        tables = doc.get("drug_tables", ["prescriptions"])
        if not isinstance(tables, list) or not tables or any(t not in DRUG_TABLES for t in tables):
            raise self.fail(f"{where}drug_tables: must list one or both of {', '.join(DRUG_TABLES)}")
        return Codes(
            icd10=self.prefixes(doc, "icd10", where),
            hot=self.prefixes(doc, "hot", where),
            yj=self.prefixes(doc, "yj", where),
            jlac10=self.prefixes(doc, "jlac10", where),
            drug_tables=tuple(dict.fromkeys(tables)),
        )


def _forbid_hospitals(reader: _Reader, doc: Any, where: str = "") -> None:
    """Refuse any key (at any depth) or dimension that would break down by, filter on or name hospitals."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            k = str(key).lower()
            if k in HOSPITAL_WORDS or any(w in k for w in HOSPITAL_WORDS_JA):
                raise reader.fail(
                    f"{where}{key}: a breakdown by, filter on or naming of hospitals is not allowed"
                    " (analyses never use the sending hospital)"
                )
            _forbid_hospitals(reader, value, f"{where}{key}.")
    elif isinstance(doc, list):
        for value in doc:
            if isinstance(value, str) and (
                value.lower() in HOSPITAL_WORDS or any(w in value for w in HOSPITAL_WORDS_JA)
            ):
                raise reader.fail(
                    f"{where.rstrip('.')}: {value!r}: a breakdown by or naming of hospitals is not allowed"
                )
            _forbid_hospitals(reader, value, where)


def find_spec(name_or_path: str | Path) -> Path:
    """A spec file: a path, or the stem of a ready-made spec in research/specs/."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SPEC_DIR / f"{name_or_path}.toml"
    if not str(name_or_path).endswith(".toml") and shipped.exists():
        return shipped
    raise InputError(str(path), f"no such spec file (ready-made specs: {', '.join(shipped_specs())})")


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.toml"))


def load_spec(name_or_path: str | Path) -> Spec:
    """Read and validate a spec; :class:`InputError` naming the file and the key for anything wrong."""
    path = find_spec(name_or_path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(str(path), f"cannot read ({e.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(str(path), "not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(str(path), f"not valid TOML ({e})") from None
    return parse_spec(doc, path, hashlib.sha256(raw).hexdigest())


def parse_spec(doc: dict[str, Any], path: Path, sha256: str) -> Spec:
    r = _Reader(path)
    _forbid_hospitals(r, doc)
    r.only(doc, ("title", "description", "window", "cohort", "measures", "dimensions"), "spec")
    title = r.text(doc, "title", "")
    description = str(doc.get("description", "")).strip()

    w = r.table(doc, "window", "", required=True)
    r.only(w, ("from", "until"), "[window]")
    window = DateRange(r.day(w, "from", "[window] "), r.day(w, "until", "[window] "))
    if window.end < window.start:
        raise r.fail("[window]: until is before from")

    c = r.table(doc, "cohort", "", required=True)
    r.only(c, ("icd10", "hot", "yj", "jlac10", "drug_tables", "from", "until", "match"), "[cohort]")
    codes = r.codes(c, "[cohort] ")
    if codes.empty:
        raise r.fail("[cohort]: needs at least one of icd10, hot, yj, jlac10 (code prefixes)")
    crange = DateRange(
        r.day(c, "from", "[cohort] ", window.start), r.day(c, "until", "[cohort] ", window.end)
    )
    if crange.end < crange.start:
        raise r.fail("[cohort]: until is before from")
    match = r.text(c, "match", "[cohort] ", "any")
    if match not in ("any", "all"):
        raise r.fail(f"[cohort] match: {match!r} is not 'any' or 'all'")
    cohort = Cohort(codes, crange, match)

    measures = _measures(r, doc.get("measures"), cohort)
    dims = _dimensions(r, doc.get("dimensions", {}), window, cohort, measures)
    return Spec(path, sha256, title, description, window, cohort, measures, dims)


_DEFAULT_NAMES = {
    "patients": ("patients", "患者数"),
    "events": ("events", "件数"),
    "incidence": ("incidence", "新規患者数"),
    "prevalence": ("prevalence", "有病患者数"),
    "drug_use": ("drug_users", "使用患者数"),
}


def _measures(r: _Reader, value: Any, cohort: Cohort) -> tuple[Measure, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise r.fail("[[measures]]: at least one measure is needed (an array of tables)")
    out: list[Measure] = []
    for n, m in enumerate(value, 1):
        where = f"[[measures]] #{n} "
        kind = r.text(m, "kind", where)
        if kind not in MEASURE_KINDS:
            raise r.fail(f"{where}kind: {kind!r} is not one of {', '.join(MEASURE_KINDS)}")
        allowed = ["kind", "name", "label"]
        if kind in ("events", "drug_use", "lab_distribution"):
            allowed += ["icd10", "hot", "yj", "jlac10", "drug_tables"]
        if kind == "events":
            allowed.append("table")
        if kind == "incidence":
            allowed.append("washout_days")
        r.only(m, allowed, f"{where}({kind})")
        codes = r.codes(m, where)
        if kind == "lab_distribution":
            if not codes.jlac10 or codes.icd10 or codes.hot or codes.yj:
                raise r.fail(f"{where}(lab_distribution): needs jlac10 prefixes (and no other codes)")
            name = r.text(m, "name", where)
            label = r.text(m, "label", where, name)
        else:
            default_name, default_label = _DEFAULT_NAMES[kind]
            name = r.text(m, "name", where, default_name)
            label = r.text(m, "label", where, default_label)
        if kind == "drug_use" and (not (codes.hot or codes.yj) or codes.icd10 or codes.jlac10):
            raise r.fail(f"{where}(drug_use): needs hot or yj prefixes (and no other codes)")
        if not _NAME.fullmatch(name):
            raise r.fail(f"{where}name: {name!r} must be lower-case letters, digits and _ (it names columns)")
        if len(label) > _MAX_LABEL:
            raise r.fail(f"{where}label: longer than {_MAX_LABEL} characters")
        source = ""
        if kind == "events":
            source = str(m.get("table", ""))
            if source and source not in EVENT_SOURCES:
                raise r.fail(f"{where}table: {source!r} is not one of {', '.join(EVENT_SOURCES)}")
            codes_used = cohort.codes if codes.empty else codes
            if source and source not in codes_used.tables():
                raise r.fail(f"{where}table: {source!r} holds none of the codes this measure counts")
            if not source and len(set(codes_used.tables())) > 1:
                raise r.fail(f"{where}table: the codes span several tables; name the one to count")
        washout = 0
        if kind == "incidence":
            washout = r.integer(m, "washout_days", where, 365)
            if not 0 <= washout <= 3650:
                raise r.fail(f"{where}washout_days: must be 0..3650")
        if any(o.name == name for o in out):
            raise r.fail(f"{where}name: {name!r} is used by another measure")
        out.append(Measure(kind, name, label, codes, source, washout))
    return tuple(out)


def _dimensions(
    r: _Reader, value: Any, window: DateRange, cohort: Cohort, measures: tuple[Measure, ...]
) -> tuple[Dimension, ...]:
    if not isinstance(value, dict):
        raise r.fail("[dimensions]: must be a table of dimension tables")
    out: list[Dimension] = []
    for kind, opts in value.items():
        where = f"[dimensions.{kind}] "
        if kind not in DIMENSION_KINDS:
            raise r.fail(f"[dimensions]: unknown dimension {kind!r} (allowed: {', '.join(DIMENSION_KINDS)})")
        if not isinstance(opts, dict):
            raise r.fail(f"[dimensions]: {kind} must be a table (e.g. [dimensions.{kind}])")
        if kind == "age_band":
            out.append(_age_band(r, opts, where))
        elif kind == "sex":
            r.only(opts, (), where.strip())
            out.append(Sex())
        elif kind == "period":
            r.only(opts, ("grain", "subtotals"), where.strip())
            grain = r.text(opts, "grain", where, "year")
            if grain not in GRAINS:
                raise r.fail(f"{where}grain: {grain!r} is not one of {', '.join(GRAINS)}")
            sub = opts.get("subtotals", False)
            if not isinstance(sub, bool):
                raise r.fail(f"{where}subtotals: must be true or false")
            if sub and grain not in ("quarter", "month"):
                raise r.fail(f"{where}subtotals: year subtotals need grain quarter or month")
            first, last = period_key(window.start, grain), period_key(window.end, grain)
            if last - first >= 240:
                raise r.fail(f"{where}grain: the window has more than 240 {grain} periods")
            out.append(Period(grain, first, last, sub))
        else:
            if any(m.kind in ("incidence", "prevalence") for m in measures):
                raise r.fail(
                    f"{where.strip()}: incidence and prevalence have no denominator by code group;"
                    " use patients or events"
                )
            out.append(_code_group(r, opts, where, cohort, measures))
    return tuple(out)


def _age_band(r: _Reader, opts: dict[str, Any], where: str) -> AgeBand:
    r.only(opts, ("width", "starts", "top", "subtotals"), where.strip())
    top = r.integer(opts, "top", where, AGE_TOP)
    if not MIN_AGE_BAND <= top <= AGE_TOP:
        raise r.fail(
            f"{where}top: the open band must start at {AGE_TOP} or younger (everyone {AGE_TOP}+ is"
            f" one group), got {top}"
        )
    if "starts" in opts and "width" in opts:
        raise r.fail(f"{where}: give width or starts, not both")
    if "starts" in opts:
        starts = opts["starts"]
        if not isinstance(starts, list) or not all(isinstance(s, int) for s in starts) or not starts:
            raise r.fail(f"{where}starts: must be a list of integers (band start ages)")
        starts = list(starts)
    else:
        width = r.integer(opts, "width", where, MIN_AGE_BAND)
        if width < MIN_AGE_BAND:
            raise r.fail(f"{where}width: age bands must be at least {MIN_AGE_BAND} years, got {width}")
        starts = list(range(0, top, width))
    if starts[0] != 0:
        raise r.fail(f"{where}starts: the first band must start at 0")
    bounds = [*starts, top]
    for a, b in itertools.pairwise(bounds):
        if b - a < MIN_AGE_BAND:
            raise r.fail(
                f"{where}starts: band {a}-{b - 1} is narrower than {MIN_AGE_BAND} years"
                f" (bands must be at least {MIN_AGE_BAND} years and end at top={top})"
            )
    subtotals = opts.get("subtotals", [])
    if not isinstance(subtotals, list) or not all(isinstance(s, int) for s in subtotals):
        raise r.fail(f"{where}subtotals: must be a list of band start ages")
    if subtotals:
        if subtotals[0] != 0 or sorted(set(subtotals)) != subtotals or len(subtotals) < 2:
            raise r.fail(f"{where}subtotals: must start at 0 and increase (at least two groups)")
        for s in subtotals:
            if s not in bounds[:-1]:
                raise r.fail(f"{where}subtotals: {s} is not the start of a band")
    return AgeBand(starts, top, subtotals)


def _code_group(
    r: _Reader, opts: dict[str, Any], where: str, cohort: Cohort, measures: tuple[Measure, ...]
) -> CodeGroup:
    r.only(opts, ("groups", "title"), where.strip())
    title = r.text(opts, "title", where, "コード群")
    if len(title) > _MAX_LABEL:
        raise r.fail(f"{where}title: longer than {_MAX_LABEL} characters")
    groups = opts.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise r.fail(f"{where}groups: must be a table of label = [code prefixes]")
    if len(groups) > _MAX_GROUPS:
        raise r.fail(f"{where}groups: at most {_MAX_GROUPS} groups")
    named: list[tuple[str, tuple[str, ...]]] = []
    for label in groups:
        if not label.strip() or len(label) > _MAX_LABEL or label in (TOTAL, OTHER_CODES):
            raise r.fail(f"{where}groups: {label!r} is not a usable group label")
        named.append((label, r.prefixes(groups, label, f"{where}groups.")))
        if not named[-1][1]:
            raise r.fail(f"{where}groups.{label}: needs at least one code prefix")
    # その他 is a category when a counted code can escape every group: a measure prefix no group prefix
    # covers (or a measure that counts every code of its table).
    group_prefixes = [p for _, ps in named for p in ps]
    other = False
    for m in measures:
        codes = cohort.codes if m.codes.empty else m.codes
        for p in codes.prefixes():
            if not any(p.startswith(g) for g in group_prefixes):
                other = True
    return CodeGroup(named, other, title)

"""Build a patient's FHIR R4 document Bundle in the shape of the International Patient Summary, with
resources on JP Core 1.1.2 profiles.

The hot path builds plain dicts and serializes them with orjson (:func:`dumps`); nothing here parses or
validates FHIR models (``validate=True`` does, through ``fhir.resources.R4B``, for callers that want it).
The export's path (:func:`serialized_bundle`) serializes at once, so it reuses the parts of resources that
depend only on a code and a value instead of making them again; the bundles handed out are all fresh dicts.
Every id is a UUIDv5 of the hospital and the record's key, so exporting the same records again gives
the same bytes, and references between entries are those ``urn:uuid:`` fullUrls.

"Only what care needs" (:class:`ExportWindow`): every active problem however old plus the ones resolved
within the window, every allergy, the medications and injections and the lab results of the last months,
all relative to ``as_of``.  Records dated after ``as_of`` are left out, so an older ``as_of`` gives the
summary as it stood then.

The lab results of the export's path are read and shaped in C (``restore/fhir/_fastlabs.c``, through
:data:`fast_results`) when their encodings are plain; the Python code here stays the reference and the
fallback, and the tests compare both byte for byte.

Numbers (amounts, lab values) are kept as the source wrote them: an int or float where its JSON is the
very text, else a :class:`~decimal.Decimal` that :func:`dumps` writes digit for digit (``6.70`` stays
``6.70``).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from calendar import monthrange
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from operator import itemgetter
from typing import IO, Any, Literal, TypeVar
from urllib.parse import quote

import orjson

from hakobune.compiled import compiled
from hakobune.records import FORMAT_VERSION, Patient, Record, encode
from restore.fhir import codesystems as cs

Json = dict[str, Any]
_T = TypeVar("_T")

# --- profiles (JP Core 1.1.2, canonical http://jpfhir.jp/fhir/core) -----------------------------------
_JP = "http://jpfhir.jp/fhir/core/StructureDefinition/"
JP_PATIENT = _JP + "JP_Patient"
JP_ORGANIZATION = _JP + "JP_Organization"
JP_CONDITION = _JP + "JP_Condition"
JP_ALLERGY = _JP + "JP_AllergyIntolerance"
JP_MEDICATION = _JP + "JP_Medication"
JP_MEDICATION_REQUEST = _JP + "JP_MedicationRequest"
JP_MEDICATION_REQUEST_INJECTION = _JP + "JP_MedicationRequest_Injection"
JP_MEDICATION_ADMINISTRATION = _JP + "JP_MedicationAdministration"
JP_MEDICATION_ADMINISTRATION_INJECTION = _JP + "JP_MedicationAdministration_Injection"
JP_OBSERVATION_LAB = _JP + "JP_Observation_LabResult"
JP_SPECIMEN = _JP + "JP_Specimen"
_EXT = "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/"
EXT_USAGE_DURATION = _EXT + "JP_MedicationDosage_UsageDuration"
EXT_PERIOD_OF_USE = _EXT + "JP_MedicationDosage_PeriodOfUse"
EXT_INGREDIENT_DRUG_NO = _EXT + "JP_Medication_Ingredient_DrugNo"
EXT_PREFECTURE = _EXT + "JP_Organization_PrefectureNo"

# --- IPS (hl7.fhir.uv.ips 2.0.0): document type and section codes (LOINC) -----------------------------
DOCUMENT_TYPE = ("60591-5", "Patient summary Document")
SECTION_PROBLEMS = ("11450-4", "Problem list - Reported")
SECTION_MEDICATIONS = ("10160-0", "History of Medication use Narrative")
SECTION_ALLERGIES = ("48765-2", "Allergies and adverse reactions Document")
SECTION_RESULTS = ("30954-2", "Relevant diagnostic tests/laboratory data Narrative")

#: Namespace of every id this exporter makes (uuid5 of a fixed name; never change it: ids would move).
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/hakobune/hakobune/fhir")

_JST = "+09:00"  # SS-MIX2 times are Japan local time without an offset
_ID_SHA1 = hashlib.sha1(ID_NAMESPACE.bytes)


def make_id(name: str) -> str:
    """``str(uuid.uuid5(ID_NAMESPACE, name))``, four times faster (ids are made for every resource): the
    SHA-1 in hex with the version nibble set to 5 and the variant bits to 10."""
    h = _ID_SHA1.copy()
    h.update(name.encode())
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


#: The variant nibble (bits 10xx) for each hex digit of the hash.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


@dataclass(frozen=True, slots=True)
class ExportWindow:
    """What goes into a summary, relative to ``as_of`` (months are calendar months)."""

    months_medications: int = 6  # prescriptions and injections (orders overlapping it, administrations in it)
    months_labs: int = 6
    months_resolved_problems: int = 12  # resolved problems; active ones are always kept
    max_labs_per_code: int = 3  # most recent results per test code; 0 keeps all

    def __post_init__(self) -> None:
        for name in ("months_medications", "months_labs", "months_resolved_problems", "max_labs_per_code"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExportWindow.{name} must not be negative")


# ------------------------------------------------------------------------------------------ values
#: ISO text as records hold it: ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``, then optionally ``THH:MM`` with
#: seconds and a fraction; checked as a day (10 characters at most) and a time of day (the rest).
_ISO_DAY = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_ISO_TIME = re.compile(r"T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?")
_DECIMAL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")


@lru_cache(maxsize=1 << 16)
def fhir_datetime(text: str) -> str | None:
    """A FHIR ``dateTime`` from the ISO text a record holds (partial dates kept, times get seconds and the
    Japan offset); None when the text is not a date."""
    if len(text) > 10:  # a time follows a whole date
        time = _iso_time(text[10:])
        return None if time is None or not _is_iso_day(text[:10]) else text[:10] + time
    return text if _is_iso_day(text) else None


@lru_cache(maxsize=1 << 14)
def _is_iso_day(text: str) -> bool:
    """Whether ``text`` is a year, a month or a day of the calendar (days and times of day are cached
    apart: there are few of each, while date-times are nearly all different)."""
    m = _ISO_DAY.fullmatch(text)
    if m is None:
        return False
    y, mo, d = m.groups()
    try:
        if d is not None:
            date(int(y), int(mo), int(d))
        elif mo is not None and not 1 <= int(mo) <= 12:
            return False
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1 << 12)
def _iso_time(text: str) -> str | None:
    """``T13:53`` → ``T13:53:00+09:00``; None when ``text`` is no time of day."""
    m = _ISO_TIME.fullmatch(text)
    if m is None:
        return None
    hh, mi, ss, frac = m.groups()
    if int(hh) > 23 or int(mi) > 59 or (ss is not None and int(ss) > 59):
        return None
    return f"T{hh}:{mi}:{ss or '00'}{frac or ''}{_JST}"


def fhir_date(text: str) -> str | None:
    """A FHIR ``date`` (YYYY, YYYY-MM or YYYY-MM-DD) from a record's date or date-time text."""
    dt = fhir_datetime(text)
    return None if dt is None else dt[:10]


def _day(*texts: str) -> str:
    """The first of ``texts`` that is a date, as sortable ISO text (partial dates sort first in their
    period); "" when none is."""
    for t in texts:
        if t and fhir_datetime(t) is not None:
            return t[:10]
    return ""


_LAB_ENCODING = b'{"kind":"lab"'
_ENCODED_CARE_DATE = b'"care_date":"'
_ENCODED_OBSERVED = b'"observed_at":"'


@lru_cache(maxsize=1 << 14)
def _encoded_day(text: bytes) -> str:
    """:func:`_day` of a value as its encoding holds it (an escaped one is no date either way)."""
    return _day(text.decode("utf-8", "replace"))


def _lab_day(e: bytes) -> str:
    """The day a lab result counts for, read from its encoding: observation time, else care date (the
    builder's rule).  The field names are found as they are: a quote inside a value is escaped."""
    at = e.find(_ENCODED_OBSERVED)
    if at >= 0:
        at += len(_ENCODED_OBSERVED)
        day = _encoded_day(e[at : e.find(b'"', at)])
        if day:
            return day
    at = e.find(_ENCODED_CARE_DATE) + len(_ENCODED_CARE_DATE)
    d = e[at : at + 9]
    if at < len(_ENCODED_CARE_DATE) or d[8:] != b'"' or not d[:8].isdigit():
        return ""
    return f"{d[:4].decode()}-{d[4:6].decode()}-{d[6:8].decode()}"


_ENCODED_CODE = b',"code":{'
_ENCODED_VALUE_TYPE = b',"value_type":'


def _lab_code(e: bytes) -> bytes:
    """A lab result's test code as its encoding holds it (the ``code`` object's bytes: equal bytes, equal
    code, system and display), or b"" when not found.  The key before it holds strings only and a quote
    inside a value is escaped, so the first ``,"code":{`` is the result's code."""
    at = e.find(_ENCODED_CODE)
    end = e.find(_ENCODED_VALUE_TYPE, at)
    return e[at:end] if at >= 0 and end >= 0 else b""


def in_window(encoded: Iterable[bytes], *, as_of: date, window: ExportWindow) -> list[bytes]:
    """The record encodings (:func:`hakobune.records.encode`) a bundle can use, in the order given: lab
    results outside the lab window are dropped before anyone pays for decoding them, and so are those that
    cannot be among the ``max_labs_per_code`` most recent of their test.  The day rule is the builder's
    (observation time, else care date), so the bundle is the same with or without this step.

    Per code, a result is kept when its day is no earlier than the n-th latest day of that code: every
    result the builder keeps (the n latest by day, time and key) is among them.  Codes are compared as
    their encodings (code, display and system alike), which never groups two of the builder's codes
    together, so none of its n latest can be pushed out by another code's results."""
    end = as_of.isoformat()
    cut = _cuts(end, window)[2]
    keep_n = window.max_labs_per_code
    out: list[bytes] = []
    days: dict[bytes, list[str]] = {}
    labs: list[tuple[int, str, bytes]] = []  # (position in out, day, code) of each lab result kept so far
    for e in encoded:
        if e.startswith(_LAB_ENCODING):
            day = _lab_day(e)
            if not day or day > end or day < cut:
                continue
            if keep_n:
                code = _lab_code(e)
                if code:
                    labs.append((len(out), day, code))
                    found = days.get(code)
                    if found is None:
                        days[code] = [day]
                    else:
                        found.append(day)
        out.append(e)
    # the n-th latest day of each code with more than n results
    floor = {code: sorted(d, reverse=True)[keep_n - 1] for code, d in days.items() if len(d) > keep_n}
    if not floor:
        return out
    drop = {i for i, day, code in labs if day < floor.get(code, "")}
    return [e for i, e in enumerate(out) if i not in drop]


def _care_day(key: Json) -> str:
    d: str = key["care_date"]
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else ""


Number = int | float | Decimal
_INT = re.compile(r"-?(?:0|[1-9]\d{0,14})")


@lru_cache(maxsize=1 << 16)
def _decimal(text: str) -> Number | None:
    """The number as written, or None when ``text`` is not one.  An int or float when JSON of it gives back
    the very text (fast to serialize), else a Decimal (``6.70`` keeps its zero)."""
    t = text.strip()
    if t.startswith("+"):
        t = t[1:]
    if _INT.fullmatch(t):
        return int(t)
    if _DECIMAL.fullmatch(t):
        f = float(t)
        return f if repr(f) == t else Decimal(t)
    try:  # leading zeros ("07.5") or a bare point (".5") are numbers too
        d = Decimal(t)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


_COMPARATOR = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "≦": "<=", "≧": ">=", "＜": "<", "＞": ">"}
_BOUND = re.compile(r"\s*(<=|>=|<|>|≦|≧|＜|＞)\s*(\S+)\s*")


def _bound(text: str) -> tuple[str, Number] | None:
    """``<0.5`` → ("<", 0.5): a value reported as below or above a limit."""
    m = _BOUND.fullmatch(text)
    if m is None:
        return None
    value = _decimal(m.group(2))
    return None if value is None else (_COMPARATOR[m.group(1)], value)


@lru_cache(maxsize=4096)
def _range(text: str) -> tuple[Number | None, Number | None]:
    """Low and high of a reference range written ``low-high`` (either may be missing)."""
    m = _RANGE.fullmatch(text)
    if m is None:
        return None, None
    low, high = m.group(1), m.group(2)
    return (_decimal(low) if low else None), (_decimal(high) if high else None)


@lru_cache(maxsize=64)
def _cuts(as_of: str, window: ExportWindow) -> tuple[str, str, str]:
    """The first days of the resolved-problem, medication and lab windows ending on ``as_of``."""
    d = date.fromisoformat(as_of)
    return (
        _months_before(d, window.months_resolved_problems),
        _months_before(d, window.months_medications),
        _months_before(d, window.months_labs),
    )


def _months_before(d: date, months: int) -> str:
    y, m0 = divmod(d.year * 12 + d.month - 1 - months, 12)
    return date(y, m0 + 1, min(d.day, monthrange(y, m0 + 1)[1])).isoformat()


@lru_cache(maxsize=1 << 12)
def _add_days(day: str, days: int) -> str:
    try:
        return date.fromordinal(date.fromisoformat(day).toordinal() + days).isoformat()
    except (ValueError, OverflowError):
        return day


def _escape(text: str) -> str:
    """``html.escape(text, quote=False)`` without the call overhead (narratives escape every line)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xhtml(items: list[str], empty: str) -> str:
    if not items:
        return f'<div xmlns="{cs.XHTML_NS}"><p>{_escape(empty)}</p></div>'
    return _xhtml_joined("</li><li>".join(map(_escape, items)))


def _xhtml_joined(lines: str) -> str:
    """A section's narrative from its lines, escaped and joined by ``</li><li>``."""
    return f'<div xmlns="{cs.XHTML_NS}"><ul><li>{lines}</li></ul></div>'


def _text(*parts: str) -> str:
    return " ".join(filter(None, parts))


# --------------------------------------------------------------------------------------- builder
_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown"}
_ALLERGY_CATEGORY = {
    "DA": "medication",
    "FA": "food",
    "EA": "environment",
    "AA": "environment",
    "PA": "environment",
    "LA": "environment",
}
_SEVERITY = {"MI": "mild", "MO": "moderate", "SV": "severe"}
_CRITICALITY = {"MI": "low", "MO": "low", "SV": "high", "U": "unable-to-assess"}
_INTERPRETATION = {
    "H": "High",
    "L": "Low",
    "N": "Normal",
    "A": "Abnormal",
    "HH": "Critical high",
    "LL": "Critical low",
    "AA": "Critical abnormal",
    "HU": "Significantly high",
    "LU": "Significantly low",
}
_OBS_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "X": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
}
_ADMIN_STATUS = {"CP": "completed", "PA": "stopped", "RE": "not-done", "NA": "not-done"}
#: PRB-14 outcomes (HL7 0241 as SS-MIX2 systems write it) that end a problem.
_RESOLVED_OUTCOMES = frozenset({"R", "C"})
_RANGE = re.compile(r"\s*([-+]?\d*\.?\d+)?\s*[-~〜～]\s*([-+]?\d*\.?\d+)?\s*")
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:ml|mL|ML)\s*/\s*(?:hr|h|H|時間)\s*")

Section = Literal["problems", "medications", "allergies", "results"]


#: A section entry: (sort key, fullUrl, resource, narrative line).
_Item = tuple[tuple[Any, ...], str, "Json | orjson.Fragment", str]


def _key_text(k: Json) -> str:
    """``str(RecordKey)`` of a key as its encoding holds it."""
    return f"{k['patient_id']}/{k['care_date']}/{k['data_type']}/{k['order_no']}/{k['item']}"


def _display_or_code(c: Json) -> str:
    text: str = c["display"] or c["code"]
    return text


@dataclass
class _Builder:
    """Shapes resources from records as their encodings hold them (``r`` of :func:`~hakobune.records.encode`
    decoded by orjson: codings are dicts, absent ones None): no record objects are made on the hot path."""

    hospital: str
    as_of: str
    window: ExportWindow
    patient_id: str
    patient_url: str = ""
    org_url: str = ""
    sections: dict[Section, list[_Item]] = field(default_factory=dict)
    recorded: dict[Section, int] = field(default_factory=dict)  # records of the kind before the window
    extra: list[tuple[str, Json]] = field(default_factory=list)  # entries only referenced (specimens)
    specimens: dict[str, str] = field(default_factory=dict)
    cut_problems: str = ""
    cut_medications: str = ""
    cut_labs: str = ""
    instance_prefix: str = ""
    #: Parts of resources already made for the same values, reused (:data:`_SHARED`), or None: every
    #: dict fresh.  Only a bundle that is serialized at once and never handed out may share them.
    shared: dict[tuple[Any, ...], Any] | None = None
    #: Whether resources may be serialized already (``orjson.Fragment``, :class:`_Template`): only in a
    #: bundle that is serialized at once and never read.
    fragments: bool = False

    def __post_init__(self) -> None:
        self.cut_problems, self.cut_medications, self.cut_labs = _cuts(self.as_of, self.window)
        self.instance_prefix = self.hospital + "/"

    # -- ids ------------------------------------------------------------------------------------------
    def uid(self, kind: str, name: str) -> str:
        return make_id(f"{self.hospital}|{kind}|{name}")

    def instance_id(self, name: str) -> list[Json]:
        return [{"system": cs.RESOURCE_INSTANCE, "value": self.instance_prefix + name}]

    def add(
        self, section: Section, sort: tuple[Any, ...], kind: str, key: Json, ks: str, res: Json, line: str
    ) -> None:
        """Put ``res`` (of the record with ``key``, whose text is ``ks``) in ``section``; items sort by
        ``sort`` and then by record key (item numbers as numbers: 1.10 after 1.9), descending."""
        self.put(section, (*sort, _key_order(key), ks), kind, ks, res, line)

    def put(self, section: Section, sort: tuple[Any, ...], kind: str, ks: str, res: Json, line: str) -> None:
        """:meth:`add` with the whole sort key given."""
        u = self.uid(kind, ks)
        res["id"] = u
        self.put_item(section, (sort, "urn:uuid:" + u, res, line))

    def put_item(self, section: Section, item: _Item) -> None:
        items = self.sections.get(section)
        if items is None:
            self.sections[section] = [item]
        else:
            items.append(item)

    def seen(self, section: Section) -> None:
        self.recorded[section] = self.recorded.get(section, 0) + 1

    # -- codes ----------------------------------------------------------------------------------------
    @staticmethod
    def coding(c: Json | None) -> Json | None:
        if c is None or not c["code"]:
            return None
        system = cs.system_for(c["system"], c["code"])
        if system is None:
            return None
        out: Json = {"system": system, "code": c["code"]}
        if c["display"]:
            out["display"] = c["display"]
        return out

    @staticmethod
    def concept(c: Json | None, text: str = "") -> Json | None:
        """A CodeableConcept: the coding (as :meth:`coding` makes it) and a text (``text``, else the
        display, else the code); None when there is neither."""
        if c is None:
            return {"text": text} if text else None
        code, display = c["code"], c["display"]
        label = text or display or code
        system = cs.system_for(c["system"], code) if code else None
        if system is None:
            return {"text": label} if label else None
        coding: Json = (
            {"system": system, "code": code, "display": display}
            if display
            else {"system": system, "code": code}
        )
        return {"coding": [coding], "text": label}

    @staticmethod
    def quantity(amount: str, unit: Json | None) -> Json | None:
        """A JP_MedicationSimpleQuantity (value and a MERIT-9 unit code are both required)."""
        value = _decimal(amount)
        if value is None or unit is None or unit["system"] != "MR9P" or not unit["code"]:
            return None
        q: Json = {"value": value}
        if unit["display"]:
            q["unit"] = unit["display"]
        q["system"] = cs.MERIT9_UNIT
        q["code"] = unit["code"]
        return q

    # -- resources ------------------------------------------------------------------------------------
    def patient(self, p: Patient, hospital: str) -> Json:
        system = (
            cs.patient_id_system(hospital) or f"urn:hakobune:hospital:{quote(hospital, safe='')}:patient-id"
        )
        res: Json = {
            "resourceType": "Patient",
            "id": self.patient_url[9:],
            "meta": {"profile": [JP_PATIENT]},
            "identifier": [{"system": system, "value": p.key.patient_id}],
        }
        names = []
        for rep, family, given in (
            ("IDE", p.family_kanji, p.given_kanji),
            ("SYL", p.family_kana, p.given_kana),
        ):
            if not (family or given):
                continue
            name: Json = {
                "extension": [{"url": cs.EN_REPRESENTATION, "valueCode": rep}],
                "use": "official",
                "text": _text(family, given),
            }
            if family:
                name["family"] = family
            if given:
                name["given"] = [given]
            names.append(name)
        if names:
            res["name"] = names
        res["gender"] = _GENDER.get(p.sex, "unknown")
        birth = fhir_date(p.birth_date) if p.birth_date else None
        if birth:
            res["birthDate"] = birth
        if p.address or p.postal_code:
            addr: Json = {}
            if p.address:
                addr["text"] = p.address
            if p.postal_code:
                addr["postalCode"] = p.postal_code
            res["address"] = [addr]
        return res

    def organization(self, name: str) -> Json:
        res: Json = {
            "resourceType": "Organization",
            "id": self.org_url[9:],
            "meta": {"profile": [JP_ORGANIZATION]},
        }
        if cs.patient_id_system(self.hospital) is not None:  # a 10-digit 医療機関コード
            res["extension"] = [
                {"url": EXT_PREFECTURE, "valueCoding": {"system": cs.PREFECTURE, "code": self.hospital[:2]}}
            ]
            res["identifier"] = [{"system": cs.MEDICAL_INSTITUTION, "value": self.hospital}]
        else:
            res["identifier"] = self.instance_id("Organization")
        res["name"] = name or f"医療機関 {self.hospital}"
        return res

    def condition(self, c: Json) -> None:
        if c["action"] == "DE":
            return
        self.seen("problems")
        k = c["key"]
        onset_text, recorded_text, resolved_text = c["onset"], c["recorded"], c["resolved"]
        start = _day(onset_text, recorded_text) or _care_day(k)
        if start > self.as_of:
            return
        resolved = _day(resolved_text)
        if resolved > self.as_of:
            resolved = ""  # still active as of as_of
        outcome = c["outcome"]["code"] if c["outcome"] is not None else ""
        status = "resolved" if resolved or outcome in _RESOLVED_OUTCOMES else "active"
        if status != "active":
            end = resolved or _day(recorded_text, onset_text) or _care_day(k)
            if end < self.cut_problems:
                return
        ks = _key_text(k)
        code_c = c["code"]
        icd10 = c["icd10"]
        codings = []
        main = self.coding(code_c)
        if main is not None:
            codings.append(main)
        if icd10:
            codings.append({"system": cs.ICD10_JP, "code": icd10})
        label = c["name"] or code_c["display"] or code_c["code"]
        res: Json = {
            "resourceType": "Condition",
            "meta": {"profile": [JP_CONDITION]},
            "identifier": [{"system": cs.RESOURCE_INSTANCE, "value": self.instance_prefix + ks}],
            "clinicalStatus": {"coding": [{"system": cs.CONDITION_CLINICAL, "code": status}]},
            "category": [
                {
                    "coding": [
                        {
                            "system": cs.CONDITION_CATEGORY,
                            "code": "problem-list-item",
                            "display": "Problem List Item",
                        }
                    ]
                }
            ],
        }
        if codings or label:
            code: Json = {}
            if codings:
                code["coding"] = codings
            if label:
                code["text"] = label
            res["code"] = code
        res["subject"] = {"reference": self.patient_url}
        onset = fhir_datetime(onset_text) if onset_text else None
        if onset:
            res["onsetDateTime"] = onset
        elif onset_text:
            res["onsetString"] = onset_text
        if resolved:
            res["abatementDateTime"] = fhir_datetime(resolved_text)
        recorded = fhir_datetime(recorded_text) if recorded_text else None
        if recorded:
            res["recordedDate"] = recorded
        line = _text(
            label,
            f"(ICD-10 {icd10})" if icd10 else "",
            "主病名" if c["main"] else "",
            f"発症 {onset_text}" if onset_text else "",
            "活動中" if status == "active" else f"解決 {resolved}".strip(),
        )
        self.add("problems", (status == "active", start), "Condition", k, ks, res, line)

    def allergy(self, a: Json) -> None:
        if a["action"] == "D":
            return
        self.seen("allergies")
        onset_text = a["onset"]
        if _day(onset_text) > self.as_of:
            return
        ks = _key_text(a["key"])
        res: Json = {
            "resourceType": "AllergyIntolerance",
            "meta": {"profile": [JP_ALLERGY]},
            "identifier": [{"system": cs.RESOURCE_INSTANCE, "value": self.instance_prefix + ks}],
            "clinicalStatus": {"coding": [{"system": cs.ALLERGY_CLINICAL, "code": "active"}]},
        }
        category, allergen, severity = a["category"], a["allergen"], a["severity"]
        cat = category["code"]
        if cat.endswith("A"):  # HL7 0127: every *A code is an allergy (MC is a contraindication)
            res["type"] = "allergy"
        if cat in _ALLERGY_CATEGORY:
            res["category"] = [_ALLERGY_CATEGORY[cat]]
        sev = severity["code"] if severity is not None else ""
        if sev in _CRITICALITY:
            res["criticality"] = _CRITICALITY[sev]
        code = self.concept(allergen)
        if code is not None:
            res["code"] = code
        res["patient"] = {"reference": self.patient_url}
        if onset_text:
            onset = fhir_datetime(onset_text)
            if onset:
                res["onsetDateTime"] = onset
            else:
                res["onsetString"] = onset_text
        reaction_text = a["reaction"]
        if reaction_text:
            reaction: Json = {"manifestation": [{"text": reaction_text}]}
            if sev in _SEVERITY:
                reaction["severity"] = _SEVERITY[sev]
            res["reaction"] = [reaction]
        line = _text(
            f"{category['display'] or cat}:" if (category["display"] or cat) else "",
            allergen["display"] or allergen["code"],
            reaction_text,
            severity["display"] if severity is not None else "",
        )
        self.add("allergies", (), "AllergyIntolerance", a["key"], ks, res, line)

    def _in_med_window(self, start: str, end: str) -> bool:
        return bool(start) and start <= self.as_of and (end or start) >= self.cut_medications

    def prescription(self, p: Json, order_in_rp: int) -> None:
        self.seen("medications")
        k = p["key"]
        start = _day(p["start"], p["ordered_at"]) or _care_day(k)
        days_text = p["days"]
        days = _decimal(days_text) if days_text else None
        ordered = p["event"] == "order"
        if ordered:
            end = _day(p["end"])
            if not end and isinstance(days, int) and days > 0:
                end = _add_days(start, int(days) - 1)
            if not self._in_med_window(start, end or start):
                return
            ks = _key_text(k)
            res = self._med_request(p, ks, order_in_rp, start, end or start)
            kind = "MedicationRequest"
        else:
            if not self._in_med_window(start, start):
                return
            ks = _key_text(k)
            res = self._med_administration(p, ks)
            kind = "MedicationAdministration"
        amount_text, unit, usage = p["amount"], p["unit"], p["usage"]
        amount = _text(amount_text, unit["display"] if unit is not None else "") if amount_text else ""
        drug = p["drug"]
        line = _text(
            start,
            drug["display"] or drug["code"],
            amount,
            usage["display"] if usage is not None else "",
            f"{days_text}日分" if days_text else "",
            "(投与)" if p["event"] == "administration" else "",
        )
        self.add("medications", (start,), kind, k, ks, res, line)

    def _med_request(self, p: Json, ks: str, order_in_rp: int, start: str, end: str) -> Json:
        rp = p["rp"] or p["key"]["item"].split(".")[0]
        res: Json = {
            "resourceType": "MedicationRequest",
            "meta": {"profile": [JP_MEDICATION_REQUEST]},
            "identifier": [
                {"system": cs.RP_NUMBER, "value": rp},
                {"system": cs.ORDER_IN_RP, "value": str(order_in_rp)},
                {"system": cs.RESOURCE_INSTANCE, "value": self.instance_prefix + ks},
            ],
            "status": "active" if end >= self.as_of else "completed",
            "intent": "order",
        }
        usage_c, unit = p["usage"], p["unit"]
        key = (
            _coding_key(p["drug"]),
            _coding_key(usage_c),
            _coding_key(p["route"]),
            p["amount"],
            _coding_key(unit),
            p["total_daily"],
            p["dispense_amount"],
            _coding_key(p["dispense_unit"]),
            p["days"],
        )
        parts: _RequestParts = _parts(self.shared, key, _request_parts)
        medication, duration, instruction, dispense = parts
        res["medicationCodeableConcept"] = medication
        res["subject"] = {"reference": self.patient_url}
        start_text = p["start"]
        res["authoredOn"] = fhir_datetime(p["ordered_at"]) or fhir_datetime(start_text) or start
        ext = []
        begin = fhir_datetime(start_text) if start_text else None
        if begin:
            ext.append({"url": EXT_PERIOD_OF_USE, "valuePeriod": {"start": begin}})
        if duration is not None:
            ext.append({"url": EXT_USAGE_DURATION, "valueDuration": duration})
        if ext:
            res["dosageInstruction"] = [{"extension": ext, **instruction}]
        elif instruction:
            res["dosageInstruction"] = [instruction]
        if dispense is not None:
            res["dispenseRequest"] = dispense
        return res

    def _med_administration(self, p: Json, ks: str) -> Json:
        k = p["key"]
        group, _, n = k["item"].partition(".")
        res: Json = {
            "resourceType": "MedicationAdministration",
            "meta": {"profile": [JP_MEDICATION_ADMINISTRATION]},
            "identifier": [
                {"system": cs.RP_NUMBER, "value": p["rp"] or group},
                {"system": cs.ORDER_IN_RP, "value": n or "1"},
                {"system": cs.RESOURCE_INSTANCE, "value": self.instance_prefix + ks},
            ],
            "status": _ADMIN_STATUS.get(p["status"], "unknown"),
            "medicationCodeableConcept": self.concept(p["drug"]) or {"text": "不明"},
            "subject": {"reference": self.patient_url},
        }
        res.update(self._effective(p["start"], p["end"], k))
        dosage: Json = {}
        route = self.concept(p["route"])
        if route is not None:
            dosage["route"] = route
        dose = self.quantity(p["amount"], p["unit"])
        if dose is not None:
            dosage["dose"] = dose
        if dosage:
            res["dosage"] = dosage
        return res

    def _effective(self, start: str, end: str, key: Json) -> Json:
        s = fhir_datetime(start) if start else None
        e = fhir_datetime(end) if end else None
        if s and e and e != s:
            return {"effectivePeriod": {"start": s, "end": e}}
        return {"effectiveDateTime": s or e or _care_day(key) or self.as_of}

    def _medication(self, components: list[Json]) -> Json:
        ingredients = []
        for n, c in enumerate(components, 1):
            ing: Json = {
                "extension": [{"url": EXT_INGREDIENT_DRUG_NO, "valueInteger": n}],
                "itemCodeableConcept": self.concept(c["drug"]) or {"text": "不明"},
            }
            amount = self.quantity(c["amount"], c["unit"])
            if amount is not None:
                ing["strength"] = {
                    "numerator": amount,
                    "denominator": {
                        "value": 1,
                        "unit": "回",
                        "system": cs.MERIT9_UNIT,
                        "code": "TIME",
                    },
                }
            ingredients.append(ing)
        med: Json = {
            "resourceType": "Medication",
            "id": "medication",
            "meta": {"profile": [JP_MEDICATION]},
            "status": "active",
        }
        if ingredients:
            med["ingredient"] = ingredients
        return med

    def injection(self, j: Json) -> None:
        self.seen("medications")
        k = j["key"]
        start = _day(j["start"], j["ordered_at"]) or _care_day(k)
        end = _day(j["end"]) or start
        ordered = j["event"] == "order"
        if ordered:
            if not self._in_med_window(start, end):
                return
        elif not self._in_med_window(start, start):
            return
        ks = _key_text(k)
        group = k["item"].split(".")[0]
        components = j["components"]
        res: Json = {
            "resourceType": "MedicationRequest" if ordered else "MedicationAdministration",
            "meta": {
                "profile": [
                    JP_MEDICATION_REQUEST_INJECTION if ordered else JP_MEDICATION_ADMINISTRATION_INJECTION
                ]
            },
            "contained": [self._medication(components)],
            "identifier": [{"system": cs.RP_NUMBER, "value": group}, *self.instance_id(ks)],
        }
        dosage: Json = {}
        if j["instructions"]:
            dosage["text"] = j["instructions"]
        route = self.concept(j["route"])
        if route is not None:
            dosage["route"] = route
        total = self.quantity(j["total_amount"], j["unit"])
        rate_text = j["rate"]
        rate_m = _RATE.fullmatch(rate_text) if rate_text else None
        rate: Json | None = None
        if rate_m is not None:
            rate = {"value": _decimal(rate_m.group(1)), "unit": "mL/h", "system": cs.UCUM, "code": "mL/h"}
        if ordered:
            res["status"] = "active" if end >= self.as_of else "completed"
            res["intent"] = "order"
            res["medicationReference"] = {"reference": "#medication"}
            res["subject"] = {"reference": self.patient_url}
            res["authoredOn"] = fhir_datetime(j["ordered_at"]) or fhir_datetime(j["start"]) or start
            bounds = {
                name: v
                for name, v in (("start", fhir_datetime(j["start"])), ("end", fhir_datetime(j["end"])))
                if v
            }
            if bounds:
                dosage["timing"] = {"repeat": {"boundsPeriod": bounds}}
            if total is not None or rate is not None:
                dar: Json = {}
                if total is not None:
                    dar["doseQuantity"] = total
                if rate is not None:
                    dar["rateQuantity"] = rate
                dosage["doseAndRate"] = [dar]
            if dosage:
                res["dosageInstruction"] = [dosage]
            kind = "MedicationRequest"
        else:
            res["status"] = _ADMIN_STATUS.get(j["status"], "unknown")
            res["medicationReference"] = {"reference": "#medication"}
            res["subject"] = {"reference": self.patient_url}
            res.update(self._effective(j["start"], j["end"], k))
            if total is not None:
                dosage["dose"] = total
            if rate is not None:
                dosage["rateQuantity"] = rate
            if dosage:
                res["dosage"] = dosage
            kind = "MedicationAdministration"
        drugs = "＋".join(_display_or_code(c["drug"]) for c in components)
        line = _text(start, "注射", drugs, rate_text, "(投与)" if j["event"] == "administration" else "")
        self.add("medications", (start,), kind, k, ks, res, line)

    def specimen(self, lab: Json) -> str:
        k = lab["key"]
        obr = k["item"].split(".")[0]
        sk = f"{k['patient_id']}/{k['care_date']}/{k['data_type']}/{k['order_no']}/{obr}"
        url = self.specimens.get(sk)
        if url is None:
            u = self.uid("Specimen", sk)
            url = "urn:uuid:" + u
            spec = lab["specimen"]
            text = (spec["display"] or spec["code"] or None) if spec is not None else None
            res = _specimen_resource(u, self.instance_prefix + sk + "/specimen", text, self.patient_url)
            self.specimens[sk] = url
            self.extra.append((url, res))
        return url

    def lab(self, lab: Json, order: tuple[Any, ...]) -> None:
        """A lab result; ``order`` is its sort key (day, observation time, record key, key text)."""
        day, ks = order[0], order[3]
        code = lab["code"]
        key = (
            code["system"],
            code["code"],
            code["display"],
            lab["status"],
            lab["value_type"],
            lab["value"],
            lab["unit"],
            lab["flag"],
            lab["reference_range"],
        )
        observed_at = lab["observed_at"]
        effective = (fhir_datetime(observed_at) if observed_at else None) or day
        specimen = self.specimen(lab)
        instance = self.instance_prefix + ks
        if self.shared is None:
            parts, template = _lab_parts(*key), None
        else:
            parts, template = _parts(self.shared, key, _shared_lab_parts)
        sort, line = (day, order[2], ks), f"{day} {parts[-1]}"
        # a template serves only a bundle that is serialized at once (and there is none when a value
        # holds a hole's marker)
        if template is None or not self.fragments:
            res = _observation(parts, instance, self.patient_url, effective, specimen)
            self.put("results", sort, "Observation", ks, res, line)
            return
        u = self.uid("Observation", ks)
        res_json = template.fill(instance, self.patient_url, effective, specimen, u)
        self.put_item("results", (sort, "urn:uuid:" + u, res_json, line))

    def labs(self, labs: list[Json]) -> None:
        """The most recent results of each test code in the lab window, newest first: observation day,
        time, then record key (item numbers as numbers)."""
        per_code: dict[tuple[str, str], list[tuple[tuple[Any, ...], Json]]] = {}
        if labs:
            self.recorded["results"] = len(labs)
        as_of, cut = self.as_of, self.cut_labs
        for lab in labs:
            observed_at, k = lab["observed_at"], lab["key"]
            day = _day(observed_at) or _care_day(k)
            if not day or day > as_of or day < cut:
                continue
            code = lab["code"]
            code_key = (code["system"], code["code"] or code["display"])
            order = (day, observed_at, _key_order(k), _key_text(k))
            group = per_code.get(code_key)
            if group is None:
                per_code[code_key] = [(order, lab)]
            else:
                group.append((order, lab))
        keep_n = self.window.max_labs_per_code
        for group in per_code.values():
            if len(group) > 1:
                group.sort(key=_sort_key, reverse=True)
            for order, lab in group if keep_n == 0 else group[:keep_n]:
                self.lab(lab, order)


def _specimen_resource(u: str, instance: str, type_text: str | None, patient_url: str) -> Json:
    """The Specimen of a lab order's OBR (id ``u``), typed ``type_text`` when the results name one."""
    res: Json = {
        "resourceType": "Specimen",
        "id": u,
        "meta": {"profile": [JP_SPECIMEN]},
        "identifier": [{"system": cs.RESOURCE_INSTANCE, "value": instance}],
    }
    if type_text:
        # JLAC10 material codes are a segment of JLAC10, not a code system of their own: text only
        res["type"] = {"text": type_text}
    res["subject"] = {"reference": patient_url}
    return res


_SECTIONS: tuple[tuple[Section, tuple[str, str], str, str], ...] = (
    ("problems", SECTION_PROBLEMS, "問題リスト", "記録された問題はありません。"),
    ("allergies", SECTION_ALLERGIES, "アレルギー・不耐性", "記録されたアレルギー・不耐性はありません。"),
    ("medications", SECTION_MEDICATIONS, "処方・注射", "記録された処方・注射はありません。"),
    ("results", SECTION_RESULTS, "検査結果", ""),
)

_RecordId = tuple[str, str, str, str, str]
#: Record kinds a bundle uses (patient records are skipped: the demographics come from ``patient``).
_KINDS = ("patient", "condition", "allergy", "prescription", "injection", "lab")


_sort_key = itemgetter(0)


#: Parts the export's bundles share (:attr:`_Builder.shared`), one table per process; emptied when full.
_SHARED: dict[tuple[Any, ...], Any] = {}
_SHARED_MAX = 1 << 13  # about 30 MB of parts at most


def _parts(shared: dict[tuple[Any, ...], Any] | None, key: tuple[Any, ...], make: Callable[..., _T]) -> _T:
    """``make(*key)``, from the shared table when it holds it (remembered there when not; the table starts
    again when full: values drift, codes do not)."""
    if shared is None:
        return make(*key)
    found: _T | None = shared.get(key)
    if found is not None:
        return found
    if len(shared) >= _SHARED_MAX:
        shared.clear()
    parts = shared[key] = make(*key)
    return parts


_LabParts = tuple[
    Json, str, list[Json], Json, tuple[str, Any] | None, list[Json] | None, list[Json] | None, str
]


_CodingKey = tuple[str, str, str] | None
_RequestParts = tuple[Json, Json | None, Json, Json | None]


def _coding_key(c: Json | None) -> _CodingKey:
    return None if c is None else (c["system"], c["code"], c["display"])


def _coding_of(k: _CodingKey) -> Json | None:
    return None if k is None else {"system": k[0], "code": k[1], "display": k[2]}


def _request_parts(
    drug: _CodingKey,
    usage_k: _CodingKey,
    route_k: _CodingKey,
    amount: str,
    unit_k: _CodingKey,
    total_daily: str,
    dispense_amount: str,
    dispense_unit: _CodingKey,
    days_text: str,
) -> _RequestParts:
    """What a MedicationRequest takes from its drug, dose, usage and days, the same for every order with
    these: the medication, the usage duration, the dosage instruction after its extensions and the
    dispense request."""
    concept, quantity = _Builder.concept, _Builder.quantity
    days = _decimal(days_text) if days_text else None
    duration = None if days is None else {"value": days, "unit": "日", "system": cs.UCUM, "code": "d"}
    usage_c, unit = _coding_of(usage_k), _coding_of(unit_k)
    instruction: Json = {}
    usage = usage_c["display"] if usage_c is not None else ""
    if usage:
        instruction["text"] = usage
    timing = concept(usage_c)
    if timing is not None:
        instruction["timing"] = {"code": timing}
    route = concept(_coding_of(route_k))
    if route is not None:
        instruction["route"] = route
    dose = quantity(amount, unit)
    if dose is not None:
        dose_and_rate: Json = {
            "type": {"coding": [{"system": cs.STRENGTH_TYPE, "code": "1", "display": "製剤量"}]},
            "doseQuantity": dose,
        }
        daily = quantity(total_daily, unit)
        if daily is not None:
            dose_and_rate["rateRatio"] = {
                "numerator": daily,
                "denominator": {"value": 1, "unit": "日", "system": cs.UCUM, "code": "d"},
            }
        instruction["doseAndRate"] = [dose_and_rate]
    dispense: Json = {}
    supply = quantity(dispense_amount, _coding_of(dispense_unit))
    if supply is not None:
        dispense["quantity"] = supply
    if days is not None:
        dispense["expectedSupplyDuration"] = {"value": days, "unit": "日", "system": cs.UCUM, "code": "d"}
    return concept(_coding_of(drug)) or {"text": "不明"}, duration, instruction, dispense or None


def _lab_parts(
    system: str,
    code: str,
    display: str,
    status: str,
    value_type: str,
    value_text: str,
    unit: str,
    flag: str,
    range_text: str,
) -> _LabParts:
    """What a lab result's Observation takes from its code and value, the same for every result with
    these: meta, status, category, code, value (element name and value), interpretation, reference range
    and the narrative line after the day."""
    concept = _Builder.concept({"system": system, "code": code, "display": display}) or {"text": "不明"}
    numeric = value_type in ("NM", "SN", "")
    number = _decimal(value_text) if numeric else None
    value: tuple[str, Any] | None = None
    if number is not None:
        value = ("valueQuantity", {"value": number, "unit": unit} if unit else {"value": number})
    elif value_text:
        bound = _bound(value_text) if numeric else None
        if bound is not None:  # "<0.5": a quantity with a comparator
            q: Json = {"value": bound[1], "comparator": bound[0]}
            if unit:
                q["unit"] = unit
            value = ("valueQuantity", q)
        else:
            value = ("valueString", value_text)
    interpretation: list[Json] | None = None
    if flag:
        label = _INTERPRETATION.get(flag)
        if label is not None:
            coding = {"system": cs.OBSERVATION_INTERPRETATION, "code": flag, "display": label}
            interpretation = [{"coding": [coding]}]
        else:
            interpretation = [{"text": flag}]
    reference_range: list[Json] | None = None
    if range_text:
        rr: Json = {}
        low, high = _range(range_text)
        if low is not None:
            rr["low"] = {"value": low, "unit": unit} if unit else {"value": low}
        if high is not None:
            rr["high"] = {"value": high, "unit": unit} if unit else {"value": high}
        rr["text"] = range_text
        reference_range = [rr]
    tail = f"{display or code} {value_text}"
    if unit:
        tail += " " + unit
    if range_text:
        tail += f" [{range_text}]"
    if flag:
        tail += " " + flag
    return (
        {"profile": [JP_OBSERVATION_LAB]},
        _OBS_STATUS.get(status, "unknown"),
        [{"coding": [{"system": cs.OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        concept,
        value,
        interpretation,
        reference_range,
        tail,
    )


def _observation(parts: _LabParts, instance: str, patient_url: str, effective: str, specimen: str) -> Json:
    """A lab result's Observation (without its id) from its shared parts and what is its own."""
    meta, status, category, concept, value, interpretation, reference_range, _ = parts
    res: Json = {
        "resourceType": "Observation",
        "meta": meta,
        "identifier": [{"system": cs.RESOURCE_INSTANCE, "value": instance}],
        "status": status,
        "category": category,
        "code": concept,
        "subject": {"reference": patient_url},
        "effectiveDateTime": effective,
    }
    if value is not None:
        res[value[0]] = value[1]
    if interpretation is not None:
        res["interpretation"] = interpretation
    res["specimen"] = {"reference": specimen}
    if reference_range is not None:
        res["referenceRange"] = reference_range
    return res


def _shared_lab_parts(*key: str) -> tuple[_LabParts, _Template | None]:
    """:func:`_lab_parts` and the serialized Observation of these parts with holes for instance,
    subject, effective time, specimen and id (in the order :meth:`_Builder.lab` fills them); no template
    when a value of the parts holds a hole's marker."""
    parts = _lab_parts(*key)
    return parts, _lab_template(parts)[1]


def _lab_template(parts: _LabParts) -> tuple[Json, _Template | None]:
    """The Observation of ``parts`` with the holes' markers, and its template (None when a value of the
    parts holds a marker)."""
    res = _observation(parts, *_HOLES[:4])
    res["id"] = _HOLES[4]
    try:
        return res, _Template(res, _HOLES[:5])
    except ValueError:
        return res, None


#: Markers of the holes of a :class:`_Template` (text no record is expected to hold; a template checks
#: that each is found exactly once, in order).  The last one stands for a lab result's number.
_HOLES = tuple(f"\0hakobune-hole-{i}\0" for i in range(6))
_NUMBER_HOLE = _HOLES[5]


class _Template:
    """A resource serialized once with holes for the text values that differ between resources of the
    same shape.  :meth:`fill` joins the pieces and the JSON of the values: the bytes :func:`dumps` gives
    for the resource with those values, made without building or serializing its dicts again."""

    __slots__ = ("_holes", "pieces")

    def __init__(self, res: Json, markers: tuple[str, ...]) -> None:
        """``markers``: the holes' markers (of :data:`_HOLES`) in the order they appear in ``res``."""
        data = dumps(res)
        pieces: list[bytes] = []
        at = 0
        for hole in markers:
            marker = orjson.dumps(hole)
            found = data.find(marker, at)
            if found < 0 or data.find(marker, found + len(marker)) >= 0:
                raise ValueError("a template's hole is missing, repeated or out of order")
            pieces.append(data[at:found])
            at = found + len(marker)
        pieces.append(data[at:])
        self.pieces = pieces
        self._holes = len(markers)

    def fill(self, *values: str) -> orjson.Fragment:
        if len(values) != self._holes:
            raise ValueError(f"a template with {self._holes} holes given {len(values)} values")
        out: list[bytes] = [b""] * (2 * self._holes + 1)
        out[0::2] = self.pieces
        out[1::2] = map(orjson.dumps, values)
        return orjson.Fragment(b"".join(out))


class LabShape:
    """What the Observations the compiled lab section makes from one template share, for a reader of the
    section (:func:`readable_bundle`): the Observation with the holes' markers (``observation``; the
    instance, subject, effective time, specimen, id and, when ``number``, valueQuantity's value are the
    Observation's own) and a slot for what the reader derives from it once (``derived``, None until it
    sets it)."""

    __slots__ = ("derived", "number", "observation")

    def __init__(self, observation: Json, number: bool) -> None:
        self.observation = observation
        self.number = number
        self.derived: Any = None


#: One Observation of the compiled section, for a reader: its template's shape, the JSON of its number
#: (when ``shape.number``; else None) and its effective time, in the section's order.
LabEntry = tuple[LabShape, bytes | None, str]


def _fast_lab_parts(*key: str) -> tuple[tuple[bytes, ...], str, LabShape] | None:
    """What the compiled lab section (:data:`fast_results`) takes from :func:`_shared_lab_parts`: the
    template's pieces, the narrative tail and the shape, or None when there is no template (the section
    remembers the answer: it is not kept in :data:`_SHARED` as well)."""
    parts = _lab_parts(*key)
    res, template = _lab_template(parts)
    return None if template is None else (tuple(template.pieces), parts[-1], LabShape(res, False))


def _fast_lab_number_parts(
    system: str, code: str, display: str, status: str, value_type: str, unit: str, flag: str, range_text: str
) -> tuple[tuple[bytes, ...], bytes, bytes, LabShape] | None:
    """For the compiled lab section: the template of an Observation whose value is a number (any number:
    a hole between the effective time and the specimen, filled with :func:`_number_json`), the narrative
    tail before and after the value's text (UTF-8) and the shape; None when a value holds a hole's
    marker."""
    parts = _lab_parts(system, code, display, status, value_type, _NUMBER_HOLE, unit, flag, range_text)
    number = orjson.Fragment(orjson.dumps(_NUMBER_HOLE))
    quantity: Json = {"value": number, "unit": unit} if unit else {"value": number}
    meta, obs_status, category, concept, _, interpretation, reference_range, tail = parts
    value = ("valueQuantity", quantity)
    res = _observation(
        (meta, obs_status, category, concept, value, interpretation, reference_range, tail), *_HOLES[:4]
    )
    res["id"] = _HOLES[4]
    before, marker, after = tail.partition(_NUMBER_HOLE)
    try:
        template = _Template(res, (*_HOLES[:3], _NUMBER_HOLE, *_HOLES[3:5]))
    except ValueError:
        return None
    if not marker or _NUMBER_HOLE in after:
        return None
    return tuple(template.pieces), before.encode(), after.encode(), LabShape(res, True)


def _number_json(text: str) -> bytes | None:
    """What :func:`dumps` writes for a lab result's value when it is a number (see :func:`_decimal`),
    else None."""
    number = _decimal(text)
    return None if number is None else orjson.dumps(number, default=_default)


#: The results section made in C: its entries' references (a JSON list), its entries, its narrative's lines
#: escaped and joined, and what a reader needs of each entry (:data:`LabEntry`).
_FastSection = tuple[orjson.Fragment, list[orjson.Fragment], str, list[LabEntry]]
#: The lab results of a bundle, done in C: (other encodings, results section or None, specimen entries) for
#: the plain case, else None (restore/fhir/_fastlabs.c).
FastResults = Callable[..., "tuple[list[bytes], _FastSection | None, list[tuple[str, Json]]] | None"]


def _load_fast_results() -> FastResults | None:
    """The compiled lab section, or None without it (or with ``HAKOBUNE_PURE_PYTHON=1``)."""

    def load() -> FastResults:
        import restore.fhir._fastlabs as _fastlabs

        prefix = b'{"kind":"lab","v":%d,"r":{"key":{"patient_id":' % FORMAT_VERSION
        _fastlabs.register(
            prefix, _fast_lab_parts, _fast_lab_number_parts, _number_json, _specimen_resource, orjson.Fragment
        )
        results: FastResults = _fastlabs.results
        return results

    return compiled(load)


fast_results = _load_fast_results()


@lru_cache(maxsize=16)
def _id_bases(hospital: str) -> tuple[Any, Any] | None:
    """The hashes of the Observation and Specimen ids of ``hospital`` before the record's name (what
    :func:`make_id` of ``hospital|Kind|name`` starts with); None when the hospital's instance prefix is
    not JSON as it stands (the compiled section writes it between quotes)."""
    prefix = hospital + "/"
    if orjson.dumps(prefix) != b'"' + prefix.encode() + b'"':
        return None
    bases = []
    for kind in ("Observation", "Specimen"):
        h = _ID_SHA1.copy()
        h.update(f"{hospital}|{kind}|".encode())
        bases.append(h)
    return bases[0], bases[1]


def _record_id(k: Json) -> _RecordId:
    return (k["patient_id"], k["care_date"], k["data_type"], k["order_no"], k["item"])


def _order_in_rp(records: list[Json]) -> dict[_RecordId, int]:
    """Position of each ordered drug within its Rp (RXE order in the file, per ORC-4)."""
    out: dict[_RecordId, int] = {}
    seen: dict[tuple[str, str, str, str, str], int] = {}
    for p in records:
        if p["event"] == "order":
            rid = _record_id(p["key"])
            k = (*rid[:4], p["rp"])
            seen[k] = seen.get(k, 0) + 1
            out[rid] = seen[k]
    return out


def _key_order(key: Json) -> tuple[Any, ...]:
    """A record key in file order: item numbers compare as numbers (``1.2`` before ``1.10``)."""
    return (
        key["patient_id"],
        key["care_date"],
        key["data_type"],
        key["order_no"],
        _item_numbers(key["item"]),
    )


@lru_cache(maxsize=1 << 12)
def _item_numbers(item: str) -> tuple[tuple[int, str], ...]:
    return tuple(_num(x) for x in item.split("."))


def _item_order(p: Json) -> tuple[Any, ...]:
    return _key_order(p["key"])


def _num(s: str) -> tuple[int, str]:
    return (int(s), "") if s.isascii() and s.isdigit() else (1 << 30, s)


def patient_bundle(
    patient: Patient,
    records: Iterable[Record],
    *,
    hospital: str,
    hospital_name: str = "",
    as_of: date,
    window: ExportWindow = ExportWindow(),
    generated_at: datetime,
    validate: bool = False,
) -> Json:
    """The IPS-shaped document Bundle of one patient (see the module doc).

    ``records`` are the patient's records of any kind (Patient records among them are ignored; the
    demographics come from ``patient``).  ``generated_at`` must be timezone-aware: it is the Bundle's
    timestamp and the Composition's date.  ``validate`` parses the result with ``fhir.resources.R4B`` and
    raises ValueError when it does not parse (slow: for tests and spot checks)."""
    bundle = _bundle(
        patient,
        (orjson.loads(encode(r)) for r in records),
        hospital=hospital,
        hospital_name=hospital_name,
        as_of=as_of,
        window=window,
        generated_at=generated_at,
    )
    if validate:
        from restore.fhir.conformance import structure_problems

        problems = structure_problems(bundle)
        if problems:
            raise ValueError("bundle does not parse as FHIR: " + "; ".join(problems[:5]))
    return bundle


def encoded_bundle(
    patient: Patient,
    encoded: Iterable[bytes],
    *,
    hospital: str,
    hospital_name: str = "",
    as_of: date,
    window: ExportWindow = ExportWindow(),
    generated_at: datetime,
) -> Json:
    """:func:`patient_bundle` of records given as their encodings (:func:`hakobune.records.encode`), as a
    restore database holds them: the same bundle, without making record objects.  ValueError on bytes
    that are not a known record encoding."""
    return _bundle(
        patient,
        map(orjson.loads, in_window(encoded, as_of=as_of, window=window)),
        hospital=hospital,
        hospital_name=hospital_name,
        as_of=as_of,
        window=window,
        generated_at=generated_at,
    )


def serialized_bundle(
    patient: Patient,
    encoded: Iterable[bytes],
    *,
    hospital: str,
    hospital_name: str = "",
    as_of: date,
    window: ExportWindow = ExportWindow(),
    generated_at: datetime,
) -> tuple[bytes, int]:
    """:func:`dumps` of :func:`encoded_bundle` (the same bytes) and its number of entries: the export's
    hot path.  The bundle is serialized at once and never handed out, so the parts that depend only on
    a code and a value (a lab result's coding, quantity, reference range …) are made once per process and
    shared between resources and bundles instead of being made again for each."""
    data, entries, _, _ = _serialized(
        patient, encoded, hospital, hospital_name, as_of, window, generated_at, readable=False
    )
    return data, entries


def readable_bundle(
    patient: Patient,
    encoded: Iterable[bytes],
    *,
    hospital: str,
    hospital_name: str = "",
    as_of: date,
    window: ExportWindow = ExportWindow(),
    generated_at: datetime,
) -> tuple[bytes, int, Json, list[LabEntry] | None]:
    """:func:`serialized_bundle` (the same bytes and entries) and the bundle for a reader that never
    changes it (the offline viewer's summary): its dicts, with the parts shared between bundles, and,
    when the compiled lab section made the results section, that section's Observations as
    :data:`LabEntry` (its entries in the dicts are then serialized already); None when the dicts hold
    them.  (A shared part may be dropped from the table at any time, but stays valid while the bundle
    holds it.)"""
    return _serialized(patient, encoded, hospital, hospital_name, as_of, window, generated_at, readable=True)


def _serialized(
    patient: Patient,
    encoded: Iterable[bytes],
    hospital: str,
    hospital_name: str,
    as_of: date,
    window: ExportWindow,
    generated_at: datetime,
    *,
    readable: bool,
) -> tuple[bytes, int, Json, list[LabEntry] | None]:
    """The bytes, entries and dicts of a bundle (lab Observations serialized already unless ``readable``,
    or made by the compiled section: then also their :data:`LabEntry`)."""
    args: dict[str, Any] = {
        "hospital": hospital,
        "hospital_name": hospital_name,
        "as_of": as_of,
        "window": window,
        "generated_at": generated_at,
        "shared": _SHARED,
    }
    fast = fast_results
    bases = _id_bases(hospital) if fast is not None else None
    if fast is not None and bases is not None:
        pid = patient.key.patient_id
        day = as_of.isoformat()
        if not isinstance(encoded, (list, tuple)):
            encoded = tuple(encoded)
        done = fast(
            encoded,
            pid,
            day,
            _cuts(day, window)[2],
            window.max_labs_per_code,
            hospital + "/",
            "urn:uuid:" + make_id(f"{hospital}|Patient|{pid}"),
            *bases,
        )
        if done is not None:
            others, results, specimens = done
            try:
                bundle = _bundle(patient, map(orjson.loads, others), results=(results, specimens), **args)
            except _NotPlain:
                pass
            else:
                labs = [] if results is None else results[3]
                return dumps(bundle), len(bundle["entry"]), bundle, labs
    records = map(orjson.loads, in_window(encoded, as_of=as_of, window=window))
    bundle = _bundle(patient, records, fragments=not readable, **args)
    return dumps(bundle), len(bundle["entry"]), bundle, None


class _NotPlain(Exception):
    """The compiled lab section does not apply after all (a lab result not in canonical form)."""


def _bundle(
    patient: Patient,
    records: Iterable[Any],
    *,
    hospital: str,
    hospital_name: str,
    as_of: date,
    window: ExportWindow,
    generated_at: datetime,
    shared: dict[tuple[Any, ...], Any] | None = None,
    fragments: bool = False,
    results: tuple[_FastSection | None, list[tuple[str, Json]]] | None = None,
) -> Json:
    """The bundle of ``records``: decoded encodings (``{"kind": …, "v": 1, "r": {…}}``).  ``results``:
    the lab results' section (references, entries and narrative lines, or None when there is none) and
    specimens, made already (:data:`fast_results`; then ``records`` holds no lab result, else
    :class:`_NotPlain`)."""
    if generated_at.tzinfo is None or generated_at.utcoffset() is None:
        raise ValueError("generated_at must be timezone-aware")
    pid = patient.key.patient_id
    b = _Builder(hospital, as_of.isoformat(), window, pid, shared=shared, fragments=fragments)
    b.patient_url = "urn:uuid:" + b.uid("Patient", pid)
    b.org_url = "urn:uuid:" + b.uid("Organization", hospital)

    by_kind: dict[str, list[Json]] = {k: [] for k in _KINDS}
    for obj in records:
        if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
            raise ValueError("not a record encoding of a known version")
        r = obj.get("r")
        group = by_kind.get(obj.get("kind", ""))
        if group is None or not isinstance(r, dict):
            raise ValueError(f"unknown record kind {obj.get('kind')!r}")
        if r["key"]["patient_id"] != pid:
            raise ValueError("a record of another patient was passed to patient_bundle")
        group.append(r)
    prescriptions = by_kind["prescription"]
    prescriptions.sort(key=_item_order)  # Rp positions count in file order

    for c in by_kind["condition"]:
        b.condition(c)
    for a in by_kind["allergy"]:
        b.allergy(a)
    positions = _order_in_rp(prescriptions)
    for p in prescriptions:
        b.prescription(p, positions.get(_record_id(p["key"]), 1))
    for j in by_kind["injection"]:
        b.injection(j)
    if results is None:
        b.labs(by_kind["lab"])
    elif by_kind["lab"]:
        raise _NotPlain
    else:
        b.extra.extend(results[1])

    timestamp = generated_at.isoformat(timespec="seconds")
    composition_id = b.uid("Composition", pid)
    sections: list[Json] = []
    entries: list[Json | orjson.Fragment] = []
    for name, (code, display), title, empty in _SECTIONS:
        # newest first (active problems before resolved ones), then by record key, descending
        section: Json = {
            "title": title,
            "code": {"coding": [{"system": cs.LOINC, "code": code, "display": display}]},
        }
        if name == "results" and results is not None:  # made in C: references, entries, narrative
            if results[0] is not None:
                refs, lab_entries, lines, _ = results[0]
                section["text"] = {"status": "generated", "div": _xhtml_joined(lines)}
                section["entry"] = refs
                entries.extend(lab_entries)
                sections.append(section)
            continue
        items = sorted(b.sections.get(name, ()), key=_sort_key, reverse=True)
        if not items and name == "results":
            continue
        if items:
            section["text"] = {"status": "generated", "div": _xhtml([i[3] for i in items], empty)}
            section["entry"] = [{"reference": i[1]} for i in items]
            entries.extend([{"fullUrl": i[1], "resource": i[2]} for i in items])
        else:
            older = b.recorded.get(name, 0) > 0
            note = f"対象期間内の記録はありません（{as_of.isoformat()} 時点）。" if older else empty
            section["text"] = {"status": "generated", "div": _xhtml([], note)}
            reason = ("unavailable", "Unavailable") if older else ("nilknown", "Nil Known")
            section["emptyReason"] = {
                "coding": [{"system": cs.LIST_EMPTY_REASON, "code": reason[0], "display": reason[1]}],
                "text": "対象期間内の記録なし" if older else "記録なし",
            }
        sections.append(section)
    b.extra.sort(key=lambda e: e[0])
    entries.extend({"fullUrl": url, "resource": res} for url, res in b.extra)

    composition: Json = {
        "resourceType": "Composition",
        "id": composition_id,
        "identifier": {"system": cs.RESOURCE_INSTANCE, "value": f"{hospital}/{pid}/patient-summary"},
        "status": "final",
        "type": {"coding": [{"system": cs.LOINC, "code": DOCUMENT_TYPE[0], "display": DOCUMENT_TYPE[1]}]},
        "subject": {"reference": b.patient_url},
        "date": timestamp,
        "author": [{"reference": b.org_url}],
        "title": "患者サマリー",
        "custodian": {"reference": b.org_url},
        "section": sections,
    }
    bundle_id = make_id(f"{hospital}|Bundle|{pid}|{as_of.isoformat()}|{timestamp}|{window}")
    bundle: Json = {
        "resourceType": "Bundle",
        "id": bundle_id,
        "identifier": {"system": cs.URI_IDENTIFIER, "value": "urn:uuid:" + bundle_id},
        "type": "document",
        "timestamp": timestamp,
        "entry": [
            {"fullUrl": "urn:uuid:" + composition_id, "resource": composition},
            {"fullUrl": b.patient_url, "resource": b.patient(patient, hospital)},
            {"fullUrl": b.org_url, "resource": b.organization(hospital_name)},
            *entries,
        ],
    }
    return bundle


# ------------------------------------------------------------------------------ transaction / output
def _conditional_url(res: Json) -> str:
    ident = res["identifier"]
    first: Json = ident[0] if isinstance(ident, list) else ident
    token = f"{first['system']}|{first['value']}"
    return f"{res['resourceType']}?identifier={quote(token, safe='')}"


def transaction_bundle(document: Json) -> Json:
    """A ``transaction`` Bundle that stores the resources of a document Bundle on a FHIR server by
    conditional update (``PUT Type?identifier=system|value``), so pushing it again changes nothing.

    Resources lose their ``id`` (the server assigns its own; a conditional update may not name one);
    references stay ``urn:uuid:`` fullUrls, which the server resolves within the transaction."""
    entries = []
    for e in document["entry"]:
        res = {k: v for k, v in e["resource"].items() if k != "id"}
        entries.append(
            {
                "fullUrl": e["fullUrl"],
                "resource": res,
                "request": {"method": "PUT", "url": _conditional_url(res)},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj).encode())
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps(bundle: Json) -> bytes:
    """Compact JSON of a bundle (UTF-8, no newline; decimals as written)."""
    return orjson.dumps(bundle, default=_default)


def hospital_bundles(
    patients: Iterable[tuple[Patient, Iterable[Record]]],
    *,
    hospital: str,
    hospital_name: str = "",
    as_of: date,
    window: ExportWindow = ExportWindow(),
    generated_at: datetime,
) -> Iterator[Json]:
    """One document Bundle per (patient, records), lazily: feed :class:`NdjsonWriter` without holding the
    hospital in memory."""
    for patient, records in patients:
        yield patient_bundle(
            patient,
            records,
            hospital=hospital,
            hospital_name=hospital_name,
            as_of=as_of,
            window=window,
            generated_at=generated_at,
        )


class NdjsonWriter:
    """Writes bundles one per line (NDJSON) to a binary stream, for whole-hospital transfer."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.count = 0
        self.bytes = 0

    def write(self, bundle: Json) -> None:
        data = dumps(bundle) + b"\n"  # orjson never writes a raw newline inside a document
        self._out.write(data)
        self.count += 1
        self.bytes += len(data)

    def write_all(self, bundles: Iterable[Json]) -> int:
        n = 0
        for bundle in bundles:
            self.write(bundle)
            n += 1
        return n

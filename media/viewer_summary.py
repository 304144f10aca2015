"""A patient's FHIR document Bundle (``restore.fhir.patient_bundle``) → the compact summary the offline
viewer shows (docs/viewer.md).

The viewer is JavaScript on a locked-down PC; it should not have to understand FHIR.  So the disk writer
reads each Bundle once, here, and keeps only what the one-page summary prints, already as display text:
names, birth date, sex, address; allergies (with why a list is empty: the clinician must tell "nothing
recorded" from "not in this summary"); active and recently resolved problems; oral medications and
injections; lab results grouped per test with the most recent first.  Numbers stay as the source wrote
them (``6.70`` stays ``6.70``): the Bundle is parsed with :class:`~decimal.Decimal` floats.

Nothing here raises with patient data in the message: :class:`SummaryError` names the element only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson

from restore.fhir.bundle import LabEntry

Json = dict[str, Any]

SUMMARY_VERSION = 1

# LOINC section codes of the IPS document (restore/fhir/bundle.py)
PROBLEMS, ALLERGIES, MEDICATIONS, RESULTS = "11450-4", "48765-2", "10160-0", "30954-2"
_SECTIONS = {PROBLEMS: "problems", ALLERGIES: "allergies", MEDICATIONS: "medications", RESULTS: "labs"}

_PATIENT_ID_PREFIX = "urn:oid:1.2.392.100495.20.3.51."
_ICD10 = ("http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full", "http://hl7.org/fhir/sid/icd-10")
_EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
_USAGE_DURATION = "JP_MedicationDosage_UsageDuration"
_PERIOD_OF_USE = "JP_MedicationDosage_PeriodOfUse"

_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_ALLERGY_CATEGORY = {"medication": "薬剤", "food": "食物", "environment": "環境", "biologic": "生物由来"}
_SEVERITY = {"mild": "軽度", "moderate": "中等度", "severe": "重度"}


class SummaryError(ValueError):
    """The document is not a patient summary the viewer can show (the message names no patient data)."""


def parse_bundle(data: bytes) -> Json:
    """The Bundle's JSON with numbers kept as written.

    orjson first (about half the json module's cost), and its result is kept when writing it back gives
    the very bytes: then every number in ``data`` is written as orjson writes its value (the shortest form
    that reads back the same, as Python's ``repr``), which :func:`_s` shows as the json module's Decimal
    would.  Anything else (``6.70``, ``1E2``, spaces, escapes, NaN, what orjson refuses) is parsed again
    with the json module, decimals as :class:`~decimal.Decimal`.  Bundles from ``restore.fhir`` are
    compact orjson output: only those with a number such as ``6.70`` take the second parse."""
    try:
        doc = _loads_exact(data)
    except ValueError:  # (UnicodeDecodeError too)
        raise SummaryError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle" or doc.get("type") != "document":
        raise SummaryError("not a FHIR document Bundle")
    return doc


def _loads_exact(data: bytes) -> Any:
    """JSON read as :func:`parse_bundle` reads it: orjson's value when writing it back gives the very
    bytes, else the json module's, decimals as :class:`~decimal.Decimal` (ValueError: not JSON)."""
    try:
        value = orjson.loads(data)
        if orjson.dumps(value) == data:
            return value
    except (ValueError, TypeError):  # (orjson's errors subclass these)
        pass
    return json.loads(data, parse_float=Decimal)


# ------------------------------------------------------------------------------------------- helpers
def _s(value: Any) -> str:
    """Display text of a JSON scalar (numbers as written: a float as the Decimal of its shortest form,
    see :func:`parse_bundle`)."""
    if type(value) is str:  # nearly always
        return value
    if value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, bool):
        return "はい" if value else "いいえ"
    if type(value) is float and math.isfinite(value):
        return str(Decimal(repr(value)))
    return str(value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _concept_text(concept: Any) -> str:
    c = _dict(concept)
    text = _s(c.get("text"))
    if text:
        return text
    for coding in _list(c.get("coding")):
        d = _dict(coding)
        if d.get("display") or d.get("code"):
            return _s(d.get("display")) or _s(d.get("code"))
    return ""


def _code_in(concept: Any, systems: tuple[str, ...]) -> str:
    for coding in _list(_dict(concept).get("coding")):
        d = _dict(coding)
        if d.get("system") in systems:
            return _s(d.get("code"))
    return ""


def _quantity(q: Any) -> str:
    """``1錠``, ``<0.5 mg/dl`` style: comparator, value and unit; "" when there is no value."""
    d = _dict(q)
    value = _s(d.get("value"))
    if not value:
        return ""
    unit = _s(d.get("unit")) or _s(d.get("code"))
    return f"{_s(d.get('comparator'))}{value}{unit}"


def _day(value: Any) -> str:
    """The date part (``YYYY-MM-DD``, or partial) of a FHIR date or dateTime."""
    return _s(value)[:10]


def _ext(element: Any, suffix: str) -> Json:
    for e in _list(_dict(element).get("extension")):
        d = _dict(e)
        if _s(d.get("url")).endswith(suffix):
            return d
    return {}


def _empty(section: Json | None) -> Json:
    """Why a section has no entries: ``{"code", "text"}`` from its emptyReason (``missing`` when the
    document has no such section at all)."""
    if section is None:
        return {"code": "missing", "text": ""}
    reason = _dict(section.get("emptyReason"))
    codes = [_s(_dict(c).get("code")) for c in _list(reason.get("coding"))]
    return {"code": next((c for c in codes if c), "unknown"), "text": _s(reason.get("text"))}


# ------------------------------------------------------------------------------------------- patient
def _names(patient: Json) -> tuple[tuple[str, str], tuple[str, str]]:
    """((family, given) in kanji (IDE), (family, given) in kana (SYL))."""
    kanji = kana = ("", "")
    for name in _list(patient.get("name")):
        n = _dict(name)
        rep = _s(_ext(n, _EN_REPRESENTATION.rsplit("/", 1)[1]).get("valueCode"))
        family = _s(n.get("family"))
        given = "".join(_s(g) for g in _list(n.get("given")))
        if not (family or given):
            family = _s(n.get("text"))
        if rep == "SYL":
            kana = kana if any(kana) else (family, given)
        elif rep in ("IDE", "") and not any(kanji):
            kanji = (family, given)
    return kanji, kana


def _patient_id(patient: Json) -> str:
    ids = [_dict(i) for i in _list(patient.get("identifier"))]
    for i in ids:
        if _s(i.get("system")).startswith(_PATIENT_ID_PREFIX) and i.get("value"):
            return _s(i.get("value"))
    return next((_s(i.get("value")) for i in ids if i.get("value")), "")


def _patient(patient: Json) -> Json:
    (fj, gj), (fn, gn) = _names(patient)
    address = _dict(next(iter(_list(patient.get("address"))), None))
    return {
        "id": _patient_id(patient),
        "family_kanji": fj,
        "given_kanji": gj,
        "family_kana": fn,
        "given_kana": gn,
        "birth": _s(patient.get("birthDate")),
        "sex": _SEX.get(_s(patient.get("gender")), "U"),
        "address": _s(address.get("text")),
        "postal": _s(address.get("postalCode")),
    }


# ---------------------------------------------------------------------------------------- sections
def _problem(c: Json) -> Json:
    status = _code_in(c.get("clinicalStatus"), ("http://terminology.hl7.org/CodeSystem/condition-clinical",))
    return {
        "name": _concept_text(c.get("code")) or "（病名不明）",
        "icd10": _code_in(c.get("code"), _ICD10),
        "onset": _day(c.get("onsetDateTime")) or _s(c.get("onsetString")),
        "status": status or "unknown",
        "resolved": _day(c.get("abatementDateTime")),
    }


def _allergy(a: Json) -> Json:
    categories = [_ALLERGY_CATEGORY.get(_s(c), _s(c)) for c in _list(a.get("category"))]
    reactions: list[str] = []
    severity = ""
    for r in _list(a.get("reaction")):
        d = _dict(r)
        reactions.extend(t for t in (_concept_text(m) for m in _list(d.get("manifestation"))) if t)
        severity = severity or _SEVERITY.get(_s(d.get("severity")), "")
    return {
        "category": "・".join(c for c in categories if c),
        "substance": _concept_text(a.get("code")) or "（物質不明）",
        "reactions": reactions,
        "severity": severity,
        "critical": _s(a.get("criticality")) == "high",
        "onset": _day(a.get("onsetDateTime")) or _s(a.get("onsetString")),
    }


def _is_injection(res: Json) -> bool:
    profiles = [_s(p) for p in _list(_dict(res.get("meta")).get("profile"))]
    return any(p.endswith("_Injection") for p in profiles) or "medicationReference" in res


def _period(res: Json) -> tuple[str, str]:
    period = _dict(res.get("effectivePeriod"))
    if period:
        return _day(period.get("start")), _day(period.get("end"))
    return _day(res.get("effectiveDateTime")), ""


def _oral(res: Json) -> Json:
    drug = _concept_text(res.get("medicationCodeableConcept")) or "（薬剤不明）"
    if res.get("resourceType") == "MedicationAdministration":
        start, end = _period(res)
        dosage = _dict(res.get("dosage"))
        return {
            "event": "given",
            "drug": drug,
            "dose": _quantity(dosage.get("dose")),
            "daily": "",
            "usage": "",
            "route": _concept_text(dosage.get("route")),
            "days": "",
            "start": start,
            "end": end,
            "status": _s(res.get("status")),
        }
    dosage = _dict(next(iter(_list(res.get("dosageInstruction"))), None))
    dar = _dict(next(iter(_list(dosage.get("doseAndRate"))), None))
    days = _s(_dict(_ext(dosage, _USAGE_DURATION).get("valueDuration")).get("value"))
    days = days or _s(_dict(_dict(res.get("dispenseRequest")).get("expectedSupplyDuration")).get("value"))
    start = _day(_dict(_ext(dosage, _PERIOD_OF_USE).get("valuePeriod")).get("start")) or _day(
        res.get("authoredOn")
    )
    return {
        "event": "order",
        "drug": drug,
        "dose": _quantity(dar.get("doseQuantity")),
        "daily": _quantity(_dict(dar.get("rateRatio")).get("numerator")),
        "usage": _s(dosage.get("text")) or _concept_text(_dict(dosage.get("timing")).get("code")),
        "route": _concept_text(dosage.get("route")),
        "days": days,
        "start": start,
        "end": _course_end(start, days),
        "status": _s(res.get("status")),
    }


def _course_end(start: str, days: str) -> str:
    """The last day of a course of ``days`` days from ``start`` ("" when either is not usable)."""
    try:
        n = int(days)
        return (date.fromisoformat(start) + timedelta(days=n - 1)).isoformat() if n > 0 else ""
    except (ValueError, OverflowError):
        return ""


def _contained_medication(res: Json) -> Json:
    ref = _s(_dict(res.get("medicationReference")).get("reference"))
    for c in _list(res.get("contained")):
        d = _dict(c)
        if d.get("resourceType") == "Medication" and (not ref or ref == "#" + _s(d.get("id"))):
            return d
    return {}


def _injection(res: Json) -> Json:
    drugs: list[str] = []
    for ing in _list(_contained_medication(res).get("ingredient")):
        d = _dict(ing)
        name = _concept_text(d.get("itemCodeableConcept")) or "（薬剤不明）"
        amount = _quantity(_dict(d.get("strength")).get("numerator"))
        drugs.append(f"{name} {amount}" if amount else name)
    if not drugs and res.get("medicationCodeableConcept"):
        drugs.append(_concept_text(res.get("medicationCodeableConcept")))
    if res.get("resourceType") == "MedicationAdministration":
        dosage = _dict(res.get("dosage"))
        start, end = _period(res)
        total, rate = _quantity(dosage.get("dose")), _quantity(dosage.get("rateQuantity"))
        event = "given"
    else:
        dosage = _dict(next(iter(_list(res.get("dosageInstruction"))), None))
        dar = _dict(next(iter(_list(dosage.get("doseAndRate"))), None))
        bounds = _dict(_dict(_dict(dosage.get("timing")).get("repeat")).get("boundsPeriod"))
        start = _day(bounds.get("start")) or _day(res.get("authoredOn"))
        end = _day(bounds.get("end"))
        total, rate = _quantity(dar.get("doseQuantity")), _quantity(dar.get("rateQuantity"))
        event = "order"
    return {
        "event": event,
        "drugs": drugs,
        "total": total,
        "rate": rate,
        "route": _concept_text(dosage.get("route")),
        "instructions": _s(dosage.get("text")),
        "start": start,
        "end": end,
        "status": _s(res.get("status")),
    }


def _range(obs: Json) -> str:
    rr = _dict(next(iter(_list(obs.get("referenceRange"))), None))
    text = _s(rr.get("text"))
    if text:
        return text
    low, high = _s(_dict(rr.get("low")).get("value")), _s(_dict(rr.get("high")).get("value"))
    return f"{low}-{high}" if low or high else ""


def _flag(obs: Json) -> str:
    for interp in _list(obs.get("interpretation")):
        d = _dict(interp)
        for coding in _list(d.get("coding")):
            code = _s(_dict(coding).get("code"))
            if code:
                return code
        if d.get("text"):
            return _s(d.get("text"))
    return ""


#: A lab result as the summary shows it: test key (JLAC10 code, else its name), name, value, unit, day, flag
#: and reference range.
LabRow = tuple[str, str, str, str, str, str, str]


def _lab_row(obs: Json) -> LabRow:
    code = obs.get("code")
    name = _concept_text(code) or "（項目不明）"
    key = _code_in(code, ("urn:oid:1.2.392.200119.4.504",)) or name
    quantity = _dict(obs.get("valueQuantity"))
    if quantity:
        value = _s(quantity.get("comparator")) + _s(quantity.get("value"))
        unit = _s(quantity.get("unit"))
    else:
        value, unit = _s(obs.get("valueString")) or _concept_text(obs.get("valueCodeableConcept")), ""
    day = _day(obs.get("effectiveDateTime")) or _day(_dict(obs.get("effectivePeriod")).get("start"))
    return key, name, value, unit, day, _flag(obs), _range(obs)


def _labs(observations: list[Json]) -> list[Json]:
    return _grouped_labs(map(_lab_row, observations))


def _fast_labs(entries: list[LabEntry]) -> list[Json]:
    """:func:`_labs` of the Observations the export's compiled lab section made (restore.fhir.bundle's
    :data:`~restore.fhir.bundle.LabEntry`): what a template's Observations share is read once from its
    Observation (kept in the shape's ``derived`` slot); the day and a number are each Observation's own."""
    rows: list[LabRow] = []
    for shape, number, effective in entries:
        row = shape.derived
        if row is None:
            row = shape.derived = _lab_row(shape.observation)
        key, name, value, unit, _, flag, range_text = row
        if number is not None:  # (the template's value is a hole: no comparator, the number as written)
            value = _number_text(number)
        rows.append((key, name, value, unit, _day(effective), flag, range_text))
    return _grouped_labs(rows)


@lru_cache(maxsize=4096)
def _number_text(number: bytes) -> str:
    """A number's JSON as :func:`_s` shows it once :func:`parse_bundle` has read it."""
    return _s(_loads_exact(number))


def _grouped_labs(rows: Iterable[LabRow]) -> list[Json]:
    """Results grouped per test, newest first within a test; tests with the newest results first, and
    within a day in the report's order (the section lists a day's results last item first)."""
    groups: dict[str, Json] = {}
    order: dict[str, tuple[str, int]] = {}
    for n, (key, name, value, unit, day, flag, range_text) in enumerate(rows):
        group = groups.get(key)
        if group is None:
            groups[key] = group = {"name": name, "unit": unit, "range": range_text, "results": []}
        else:  # the first unit and range a result of the test gives
            group["unit"] = group["unit"] or unit
            group["range"] = group["range"] or range_text
        group["results"].append({"date": day, "value": value, "flag": flag})
        best = order.get(key)
        if best is None or day > best[0] or (day == best[0] and -n < best[1]):
            order[key] = (day, -n)
    for g in groups.values():
        g["results"].sort(key=lambda r: r["date"], reverse=True)
    ranked = sorted(order, key=lambda k: (order[k][0], -order[k][1]), reverse=True)
    return [groups[k] for k in ranked]


def _allergies(resources: list[Json]) -> list[Json]:
    """High-criticality ones first, then drugs (what a prescriber must not give), else the Bundle's order."""
    out = [_allergy(r) for r in resources if r.get("resourceType") == "AllergyIntolerance"]
    out.sort(key=lambda a: (not a["critical"], "薬剤" not in a["category"]))
    return out


# -------------------------------------------------------------------------------------------- public
def summarize(bundle: Json, labs: list[LabEntry] | None = None) -> Json:
    """The viewer's summary of one IPS-shaped document Bundle (see docs/viewer.md for its fields).
    ``labs``: the results section's Observations when the export's compiled lab section made them
    (restore.fhir.bundle.readable_bundle; the section's entries in ``bundle`` are then serialized)."""
    entries = [_dict(e) for e in _list(bundle.get("entry"))]
    by_url = {_s(e.get("fullUrl")): _dict(e.get("resource")) for e in entries if e.get("fullUrl")}
    composition = _dict(entries[0].get("resource")) if entries else {}
    if composition.get("resourceType") != "Composition":
        raise SummaryError("the Bundle's first entry is not a Composition")
    subject = by_url.get(_s(_dict(composition.get("subject")).get("reference")))
    if subject is None or subject.get("resourceType") != "Patient":
        raise SummaryError("the Composition's subject is not a Patient entry of the Bundle")
    patient = _patient(subject)
    if not patient["id"]:
        raise SummaryError("the Patient has no identifier")
    custodian = by_url.get(_s(_dict(composition.get("custodian")).get("reference"))) or {}
    hospital_code = next(
        (_s(_dict(i).get("value")) for i in _list(custodian.get("identifier")) if _dict(i).get("value")), ""
    )

    sections: dict[str, list[Json]] = {name: [] for name in _SECTIONS.values()}
    empty: dict[str, Json] = {}
    seen: set[str] = set()
    for sec in _list(composition.get("section")):
        s = _dict(sec)
        code = _code_in(s.get("code"), ("http://loinc.org",))
        name = _SECTIONS.get(code)
        if name is None or name in seen:
            continue
        seen.add(name)
        if name == "labs" and labs is not None:
            continue
        refs = [_s(_dict(r).get("reference")) for r in _list(s.get("entry"))]
        resources = [by_url[r] for r in refs if r in by_url]
        sections[name] = resources
        if not resources:
            empty[name] = _empty(s)
    for name in _SECTIONS.values():
        if name not in seen and name != "labs":
            empty[name] = _empty(None)

    medications: list[Json] = []
    injections: list[Json] = []
    for res in sections["medications"]:
        if res.get("resourceType") not in ("MedicationRequest", "MedicationAdministration"):
            continue
        if _is_injection(res):
            injections.append(_injection(res))
        else:
            medications.append(_oral(res))
    return {
        "v": SUMMARY_VERSION,
        "patient": patient,
        "source": {"hospital": _s(custodian.get("name")), "code": hospital_code},
        "as_of": _s(composition.get("date")) or _s(bundle.get("timestamp")),
        "allergies": _allergies(sections["allergies"]),
        "problems": [_problem(r) for r in sections["problems"] if r.get("resourceType") == "Condition"],
        "medications": medications,
        "injections": injections,
        "labs": (
            _labs([r for r in sections["labs"] if r.get("resourceType") == "Observation"])
            if labs is None
            else _fast_labs(labs)
        ),
        "empty": empty,
    }


#: A summary as the viewer stores it (its JSON) and its ``patient`` part (for the index row).
Stored = tuple[bytes, Json]


def stored_summary(bundle: Json, labs: list[LabEntry] | None = None) -> Stored:
    """:func:`summarize` of a Bundle as the viewer stores it: what an export worker hands the disk writer
    (some kilobytes of JSON to pass between processes, not a tree of objects to pickle and unpickle)."""
    summary = summarize(bundle, labs)
    return orjson.dumps(summary), summary["patient"]

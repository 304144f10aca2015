"""FHIR export: IPS-shaped document Bundles of JP Core resources, and the conformance checker.

A small synthetic hospital is read with the agent's SS-MIX2 reader and every patient's Bundle must be
conformant; concrete values come from a tiny tree written with the guideline-style test messages; the
negative tests show the checker catches what it claims to."""

from __future__ import annotations

import copy
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from hakobune.records import (
    Allergy,
    Coding,
    Condition,
    Injection,
    InjectionComponent,
    LabResult,
    Patient,
    Prescription,
    Record,
    RecordKey,
    decode,
    encode,
)
from hakobune.synth import generate, read_meta
from restore.fhir import ExportWindow, NdjsonWriter, dumps, patient_bundle, transaction_bundle
from restore.fhir import bundle as bundle_module
from restore.fhir import codesystems as cs
from restore.fhir import hospital_bundles as hospital_bundles_of
from restore.fhir.bundle import encoded_bundle, in_window, make_id, readable_bundle, serialized_bundle
from restore.fhir.conformance import Packages, check_bundle, structure_problems
from tests.conftest import make_message, ssmix_relpath, write_message
from tests.pipeline import expected_state
from tests.restore.fhir_packages import packages_or_skip

HOSPITAL = "1310000001"
JST = timezone(timedelta(hours=9))
GENERATED = datetime(2025, 5, 1, 9, 0, tzinfo=JST)
Json = dict[str, Any]


@pytest.fixture(scope="module")
def packages() -> Packages:
    return packages_or_skip()


# ------------------------------------------------------------------------------------------ helpers
def records_by_patient(ssmix2: Path) -> dict[str, tuple[Patient, list[Record]]]:
    """The tree's current records (as replay restores them), grouped by patient."""
    grouped: dict[str, list[Record]] = defaultdict(list)
    for encoded in expected_state(ssmix2).values():
        r = decode(encoded)
        grouped[r.key.patient_id].append(r)
    out = {}
    for pid, recs in sorted(grouped.items()):
        patient = next(
            (r for r in recs if isinstance(r, Patient)), Patient(RecordKey(pid, "-", "ADT-00", "", ""))
        )
        out[pid] = (patient, recs)
    return out


def build(patient: Patient, records: list[Record], **kw: Any) -> Json:
    args: dict[str, Any] = {
        "hospital": HOSPITAL,
        "hospital_name": "箱舟総合病院",
        "as_of": date(2025, 4, 30),
        "generated_at": GENERATED,
    }
    args.update(kw)
    return patient_bundle(patient, records, **args)


def resources(bundle: Json, rt: str) -> list[Json]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rt]


def section(bundle: Json, code: str) -> Json | None:
    comp = bundle["entry"][0]["resource"]
    for s in comp["section"]:
        if s["code"]["coding"][0]["code"] == code:
            found: Json = s
            return found
    return None


def key(
    pid: str, care_date: str, data_type: str, order: str = "000000000000001", item: str = "1"
) -> RecordKey:
    return RecordKey(pid, care_date, data_type, order, item)


# ------------------------------------------------------------------------------ synthetic hospital
@pytest.fixture(scope="module")
def hospital(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[date, dict[str, tuple[Patient, list[Record]]]]:
    out = tmp_path_factory.mktemp("synth")
    generate(out, 60, 30, seed=11, workers=1)
    last = date.fromisoformat(read_meta(out)["last_date"])
    return last, records_by_patient(out / "ssmix2")


@pytest.fixture(scope="module")
def hospital_bundles(hospital: tuple[date, dict[str, tuple[Patient, list[Record]]]]) -> list[Json]:
    as_of, patients = hospital
    return [build(p, recs, as_of=as_of) for p, recs in patients.values()]


def test_every_synthetic_bundle_conforms(hospital_bundles: list[Json], packages: Packages) -> None:
    assert len(hospital_bundles) == 60
    for bundle in hospital_bundles:
        assert check_bundle(bundle, packages) == []
    # the hospital exercises every kind of resource and both forms of a section
    kinds: set[str] = set()
    profiles: set[str] = set()
    empty = 0
    for bundle in hospital_bundles:
        for e in bundle["entry"]:
            kinds.add(e["resource"]["resourceType"])
            profiles.update(e["resource"].get("meta", {}).get("profile", ()))
        empty += sum("emptyReason" in s for s in bundle["entry"][0]["resource"]["section"])
    assert {"Condition", "AllergyIntolerance", "MedicationRequest", "MedicationAdministration"} <= kinds
    assert {"Observation", "Specimen", "Organization", "Patient", "Composition"} <= kinds
    assert {p.rsplit("/", 1)[1] for p in profiles} >= {
        "JP_Patient",
        "JP_Condition",
        "JP_AllergyIntolerance",
        "JP_MedicationRequest",
        "JP_MedicationAdministration",
        "JP_MedicationRequest_Injection",
        "JP_MedicationAdministration_Injection",
        "JP_Observation_LabResult",
    }
    assert empty > 0


def test_bundles_parse_with_fhir_resources(hospital_bundles: list[Json]) -> None:
    for bundle in hospital_bundles[:10]:
        parsed = Bundle.model_validate(orjson.loads(dumps(bundle)))
        assert parsed.type == "document"
        assert parsed.entry is not None and parsed.entry[0].resource is not None
        assert parsed.entry[0].resource.get_resource_type() == "Composition"


def test_export_is_deterministic(hospital: tuple[date, dict[str, tuple[Patient, list[Record]]]]) -> None:
    as_of, patients = hospital
    pid, (patient, recs) = next(iter(patients.items()))
    a = dumps(build(patient, recs, as_of=as_of))
    b = dumps(build(patient, list(reversed(recs)), as_of=as_of))
    assert a == b
    later = build(patient, recs, as_of=as_of, generated_at=GENERATED + timedelta(hours=1))
    first = build(patient, recs, as_of=as_of)
    assert [e["fullUrl"] for e in later["entry"]] == [e["fullUrl"] for e in first["entry"]]
    assert later["identifier"] != first["identifier"]  # another document
    patient_entry = first["entry"][1]
    assert patient_entry["fullUrl"] == "urn:uuid:" + make_id(f"{HOSPITAL}|Patient|{pid}")


def test_ndjson_streams_one_bundle_per_line(
    hospital: tuple[date, dict[str, tuple[Patient, list[Record]]]], hospital_bundles: list[Json]
) -> None:
    as_of, patients = hospital
    out = io.BytesIO()
    writer = NdjsonWriter(out)
    stream = hospital_bundles_of(
        iter(patients.values()),
        hospital=HOSPITAL,
        hospital_name="箱舟総合病院",
        as_of=as_of,
        generated_at=GENERATED,
    )
    assert writer.write_all(stream) == len(hospital_bundles)
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(hospital_bundles) + 1
    assert writer.count == len(hospital_bundles) and writer.bytes == len(out.getvalue())
    for line, bundle in zip(lines, hospital_bundles, strict=False):
        assert line == dumps(bundle)
        assert orjson.loads(line)["type"] == "document"


def test_transaction_bundle_is_idempotent(hospital_bundles: list[Json]) -> None:
    doc = hospital_bundles[0]
    tx = transaction_bundle(doc)
    assert tx["type"] == "transaction"
    assert len(tx["entry"]) == len(doc["entry"])
    urls = [e["request"]["url"] for e in tx["entry"]]
    assert len(set(urls)) == len(urls)  # every resource has its own condition
    for e in tx["entry"]:
        assert e["request"]["method"] == "PUT"
        assert re.fullmatch(r"[A-Za-z]+\?identifier=[^|/ ]+", e["request"]["url"])
        assert "id" not in e["resource"]
    patient = next(e for e in tx["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["request"]["url"].startswith(
        "Patient?identifier=urn%3Aoid%3A1.2.392.100495.20.3.51.11310000001%7C"
    )
    assert dumps(transaction_bundle(doc)) == dumps(tx)
    parsed = Bundle.model_validate(orjson.loads(dumps(tx)))
    assert parsed.type == "transaction"


# ------------------------------------------------------------------------------ a known patient
KNOWN_PID = "1234567"
#: PRB as the guideline sample writes it (PRB-10 ICD-10, PRB-14 outcome, PRB-16 onset, PRB-17 name,
#: PRB-18 rank)
_PRB_HEAD = ["PRB", "AD", "20240401", "20054174^胃炎^MDCDX2", "123456789012345", "", "", "20240331", "", ""]
PRB = "|".join(
    [
        *_PRB_HEAD,
        "K297^^I10",
        "",
        "",
        "",
        "N^回復せず^HL70241",
        "20240401",
        "20240331",
        "胃炎",
        "1^主診断^JHSD0007",
    ]
)


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> tuple[Patient, list[Record]]:
    """One patient written with the guideline-style test messages and read by the real reader."""
    root = tmp_path_factory.mktemp("known")
    pid_seg = f"PID|0001||{KNOWN_PID}^^^^PI||患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P||19480405|M"
    for data_type, care_date, order in (
        ("ADT-00", "-", "999999999999999"),
        ("ADT-61", "-", "999999999999999"),
        ("PPR-01", "-", "999999999999999"),
        ("OMP-01", "20240401", "000000000000001"),
        ("OMP-11", "20240401", "000000000000002"),
        ("OMP-02", "20240401", "000000000000003"),
        ("OMP-12", "20240401", "000000000000004"),
        ("OML-11", "20240401", "000000000000005"),
    ):
        write_message(
            root,
            ssmix_relpath(
                KNOWN_PID, care_date, data_type, order, department="-" if care_date == "-" else "01"
            ),
            make_message(data_type, pid=pid_seg, body=[PRB] if data_type == "PPR-01" else None),
        )
    (patient, recs) = records_by_patient(root)[KNOWN_PID]
    return patient, recs


def build_known(known: tuple[Patient, list[Record]], **kw: Any) -> Json:
    """The known patient's messages date from April 2024."""
    return build(*known, **{"as_of": date(2024, 4, 30), **kw})


def test_known_patient_conforms(known: tuple[Patient, list[Record]], packages: Packages) -> None:
    bundle = build_known(known)
    assert check_bundle(bundle, packages) == []
    assert section(bundle, "30954-2") is not None


def test_patient_names_identifier_and_demographics(known: tuple[Patient, list[Record]]) -> None:
    bundle = build_known(known)
    (patient,) = resources(bundle, "Patient")
    assert patient["meta"]["profile"] == ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]
    assert patient["identifier"] == [
        {"system": "urn:oid:1.2.392.100495.20.3.51.11310000001", "value": KNOWN_PID}
    ]
    ide, syl = patient["name"]
    rep = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
    assert ide["extension"] == [{"url": rep, "valueCode": "IDE"}]
    assert (ide["family"], ide["given"], ide["text"]) == ("患者", ["太郎"], "患者 太郎")
    assert syl["extension"] == [{"url": rep, "valueCode": "SYL"}]
    assert (syl["family"], syl["given"]) == ("カンジャ", ["タロウ"])
    assert patient["gender"] == "male"
    assert patient["birthDate"] == "1948-04-05"
    (org,) = resources(bundle, "Organization")
    assert org["identifier"] == [{"system": cs.MEDICAL_INSTITUTION, "value": HOSPITAL}]
    assert org["name"] == "箱舟総合病院"
    comp = bundle["entry"][0]["resource"]
    assert comp["author"] == [{"reference": bundle["entry"][2]["fullUrl"]}]
    assert comp["subject"] == {"reference": bundle["entry"][1]["fullUrl"]}
    assert comp["type"]["coding"][0]["code"] == "60591-5"
    assert comp["title"] == "患者サマリー"
    assert bundle["timestamp"] == comp["date"] == "2025-05-01T09:00:00+09:00"


def test_prescription_hot9_dose_usage_days(known: tuple[Patient, list[Record]]) -> None:
    bundle = build_known(known)
    (req,) = [r for r in resources(bundle, "MedicationRequest") if "medicationCodeableConcept" in r]
    assert req["meta"]["profile"] == ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_MedicationRequest"]
    assert req["medicationCodeableConcept"]["coding"] == [
        {"system": "urn:oid:1.2.392.200119.4.403.1", "code": "108665201", "display": "ダーゼン錠（５mg)"}
    ]
    assert {"system": "urn:oid:1.2.392.100495.20.3.81", "value": "1"} in req["identifier"]
    assert {"system": "urn:oid:1.2.392.100495.20.3.82", "value": "1"} in req["identifier"]
    dosage = req["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 1,
        "unit": "錠",
        "system": "urn:oid:1.2.392.100495.20.2.101",
        "code": "TAB",
    }
    assert dosage["timing"]["code"]["coding"][0] == {
        "system": "urn:oid:1.2.392.200250.2.2.20",
        "code": "1013044400000000",
        "display": "内服・経口・１日３回朝昼夕食後",
    }
    assert dosage["route"]["coding"][0] == {"system": cs.ROUTE_HL70162, "code": "PO", "display": "口"}
    assert req["dispenseRequest"]["expectedSupplyDuration"] == {
        "value": 5,
        "unit": "日",
        "system": "http://unitsofmeasure.org",
        "code": "d",
    }
    assert req["dispenseRequest"]["quantity"]["value"] == 15
    assert req["authoredOn"] == "2024-04-01T10:30:45+09:00"
    (admin,) = [r for r in resources(bundle, "MedicationAdministration") if "medicationCodeableConcept" in r]
    assert admin["dosage"]["dose"]["code"] == "TAB"
    assert admin["effectiveDateTime"] == "2024-04-01T08:30:00+09:00"


def test_injection_contained_medication(known: tuple[Patient, list[Record]]) -> None:
    bundle = build_known(known)
    (req,) = [r for r in resources(bundle, "MedicationRequest") if "medicationReference" in r]
    assert req["meta"]["profile"][0].endswith("/JP_MedicationRequest_Injection")
    med = req["contained"][0]
    assert req["medicationReference"] == {"reference": "#" + med["id"]}
    ingredient = med["ingredient"][0]
    assert ingredient["itemCodeableConcept"]["coding"][0]["system"] == cs.HOT9
    assert ingredient["strength"]["numerator"]["code"] == "HON"
    assert req["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"] == "ML"
    (admin,) = [r for r in resources(bundle, "MedicationAdministration") if "medicationReference" in r]
    assert admin["meta"]["profile"][0].endswith("/JP_MedicationAdministration_Injection")
    assert admin["effectivePeriod"] == {
        "start": "2024-04-01T08:05:21+09:00",
        "end": "2024-04-01T13:05:43+09:00",
    }


def test_lab_result_jlac10_value_range_specimen(known: tuple[Patient, list[Record]]) -> None:
    bundle = build_known(known)
    (obs,) = resources(bundle, "Observation")
    assert obs["code"] == {
        "coding": [
            {"system": "urn:oid:1.2.392.200119.4.504", "code": "3A010000002327101", "display": "総蛋白"}
        ],
        "text": "総蛋白",
    }
    assert obs["valueQuantity"] == {"value": 7.2, "unit": "g/dl"}
    assert obs["referenceRange"] == [
        {
            "low": {"value": Decimal("6.70"), "unit": "g/dl"},
            "high": {"value": 8.3, "unit": "g/dl"},
            "text": "6.70-8.3",
        }
    ]
    assert obs["effectiveDateTime"] == "2024-04-01T15:00:00+09:00"
    assert obs["category"][0]["coding"][0] == {"system": cs.OBSERVATION_CATEGORY, "code": "laboratory"}
    (spec,) = resources(bundle, "Specimen")
    assert obs["specimen"]["reference"] == f"urn:uuid:{spec['id']}"
    assert spec["type"] == {"text": "血清"}
    assert isinstance(obs["referenceRange"][0]["low"]["value"], Decimal)  # 6.70 is no float's repr
    assert b'"referenceRange":[{"low":{"value":6.70,' in dumps(bundle)  # precision as written


def test_allergies(known: tuple[Patient, list[Record]]) -> None:
    bundle = build_known(known)
    allergies = resources(bundle, "AllergyIntolerance")
    assert len(allergies) == 2
    by_text = {a["code"]["text"]: a for a in allergies}
    soba = by_text["ソバ"]
    assert soba["category"] == ["food"] and soba["type"] == "allergy"
    assert soba["code"]["coding"] == [{"system": cs.JLAC10, "code": "5A1002411023006", "display": "ソバ"}]
    assert soba["criticality"] == "low"
    assert soba["reaction"] == [{"manifestation": [{"text": "湿疹"}], "severity": "moderate"}]
    penicillin = by_text["ペニシリン"]  # local table 99XYZ: text only
    assert "coding" not in penicillin["code"] and penicillin["category"] == ["medication"]
    assert section(bundle, "48765-2") is not None


def test_condition_codes_and_status(known: tuple[Patient, list[Record]]) -> None:
    bundle = build_known(known)
    (cond,) = resources(bundle, "Condition")
    assert cond["code"]["coding"] == [
        {"system": cs.MEDIS_DISEASE_KEY, "code": "20054174", "display": "胃炎"},
        {"system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full", "code": "K297"},
    ]
    assert cond["code"]["text"] == "胃炎"
    assert cond["clinicalStatus"]["coding"][0]["code"] == "active"
    assert cond["onsetDateTime"] == "2024-03-31"


# ----------------------------------------------------------------------------------------- window
PID = "0000000042"


@pytest.mark.parametrize("table_size", [bundle_module._SHARED_MAX, 3])
def test_encoded_bundle_is_the_same_bundle(
    hospital: tuple[date, dict[str, tuple[Patient, list[Record]]]],
    table_size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The export's paths (records as their encodings, never made into objects; parts shared between
    bundles, also when the table of shared parts fills up; serialized at once, or as dicts for a reader)
    give the same bytes."""
    monkeypatch.setattr(bundle_module, "_SHARED_MAX", table_size)
    monkeypatch.setattr(bundle_module, "_SHARED", {})
    as_of, patients = hospital
    kept: list[tuple[Json, bytes]] = []
    for patient, recs in list(patients.values())[:20]:
        for window in (ExportWindow(), ExportWindow(months_labs=120, max_labs_per_code=0)):
            args: dict[str, Any] = {
                "hospital": HOSPITAL,
                "hospital_name": "箱舟総合病院",
                "as_of": as_of,
                "window": window,
                "generated_at": GENERATED,
            }
            encoded = encoded_bundle(patient, [encode(r) for r in recs], **args)
            expected = dumps(build(patient, recs, as_of=as_of, window=window))
            assert dumps(encoded) == expected
            data, entries = serialized_bundle(patient, [encode(r) for r in recs], **args)
            assert data == expected and entries == len(encoded["entry"])
            for fast in (bundle_module.fast_results, None):  # (lab results made in C, or as dicts)
                with monkeypatch.context() as m:
                    m.setattr(bundle_module, "fast_results", fast)
                    read = readable_bundle(patient, [encode(r) for r in recs], **args)
                assert read[:2] == (data, entries) and dumps(read[2]) == expected
                assert (read[3] is None) == (fast is None) and (fast is not None or read[2] == encoded)
                kept.append((read[2], expected))
    assert 0 < len(bundle_module._SHARED) <= table_size
    # building later bundles changed no part an earlier one holds
    assert all(dumps(shared) == expected for shared, expected in kept)


PATIENT = Patient(
    key(PID, "-", "ADT-00", "999999999999999", "PID"), "山田", "花子", "ヤマダ", "ハナコ", "1950-02-03", "F"
)


def _rx(care_date: str, start: str, days: str, item: str = "1", code: str = "122017701") -> Prescription:
    return Prescription(
        key(PID, care_date, "OMP-01", "0000000000" + care_date[-5:], item),
        "order",
        Coding(code, "オルメテックＯＤ錠２０ｍｇ", "HOT9"),
        amount="1",
        unit=Coding("TAB", "錠", "MR9P"),
        days=days,
        start=start,
        ordered_at=start,
        rp="1",
    )


def _cond(item: str, onset: str, resolved: str = "", outcome: str = "N") -> Condition:
    return Condition(
        key(PID, "-", "PPR-01", "999999999999999", item),
        Coding("20057734", "糖尿病", "MDCDX2"),
        icd10="E14",
        name="糖尿病",
        onset=onset,
        recorded=onset,
        resolved=resolved,
        outcome=Coding(outcome, "", "HL70241"),
    )


def _lab(
    care_date: str, observed: str, value: str, code: str = "3D010000001926101", item: str = "1.1"
) -> LabResult:
    return LabResult(
        key(PID, care_date, "OML-11", "0000000000" + care_date[-5:], item),
        Coding(code, "グルコース", "JC10"),
        "NM",
        value,
        "mg/dl",
        "73-109",
        "H",
        "F",
        observed,
        Coding("023", "血清", "JC10"),
    )


def test_window_keeps_old_active_problems_and_drops_old_medications(packages: Packages) -> None:
    records: list[Record] = [
        _cond("1", "2001-05-01"),  # active for 24 years: kept
        _cond("2", "2020-01-01", resolved="2023-01-10", outcome="R"),  # resolved long ago: dropped
        _cond("3", "2024-12-01", resolved="2025-02-01", outcome="R"),  # resolved recently: kept
        _rx("20240101", "2024-01-01T08:00", "14"),  # old: dropped
        _rx("20241101", "2024-11-01T08:00", "28"),  # in the last 6 months: kept
        _rx("20240901", "2024-09-01T08:00", "84"),  # started before the window, still taken in it: kept
        _rx("20250601", "2025-06-01T08:00", "7"),  # after as_of: dropped
    ]
    bundle = build(PATIENT, records)
    assert check_bundle(bundle, packages) == []
    conds = resources(bundle, "Condition")
    assert sorted(c["identifier"][0]["value"].rsplit("/", 1)[1] for c in conds) == ["1", "3"]
    status = {
        c["identifier"][0]["value"].rsplit("/", 1)[1]: c["clinicalStatus"]["coding"][0]["code"] for c in conds
    }
    assert status == {"1": "active", "3": "resolved"}
    resolved = next(c for c in conds if status[c["identifier"][0]["value"].rsplit("/", 1)[1]] == "resolved")
    assert resolved["abatementDateTime"] == "2025-02-01"
    meds = resources(bundle, "MedicationRequest")
    assert sorted(m["authoredOn"][:10] for m in meds) == ["2024-09-01", "2024-11-01"]
    assert {m["status"] for m in meds} == {"completed"}
    # a wider window brings the old prescription back
    wide = build(PATIENT, records, window=ExportWindow(months_medications=24))
    assert len(resources(wide, "MedicationRequest")) == 3


def test_window_labs_recent_and_limited_per_code(packages: Packages) -> None:
    records: list[Record] = [
        _lab(f"2025{m:02d}01", f"2025-{m:02d}-01T10:00", f"{100 + m}.0") for m in range(1, 5)
    ]
    records += [
        _lab("20240301", "2024-03-01T10:00", "99.0"),  # older than 6 months
        _lab("20250410", "2025-04-10T10:00", "5.5", code="3A016000002327101"),
    ]
    bundle = build(PATIENT, records)
    assert check_bundle(bundle, packages) == []
    obs = resources(bundle, "Observation")
    glucose = sorted(
        o["effectiveDateTime"][:10] for o in obs if o["code"]["coding"][0]["code"] == "3D010000001926101"
    )
    assert glucose == ["2025-02-01", "2025-03-01", "2025-04-01"]  # 3 most recent of the code
    assert len(obs) == 4
    assert {o["interpretation"][0]["coding"][0]["code"] for o in obs} == {"H"}
    everything = build(PATIENT, records, window=ExportWindow(months_labs=24, max_labs_per_code=0))
    assert len(resources(everything, "Observation")) == 6
    results = section(bundle, "30954-2")
    assert results is not None and len(results["entry"]) == 4


def _export_path_bytes(records: list[Record], window: ExportWindow) -> tuple[bytes, bytes]:
    """(the export's serialized bundle, dumps of the bundle built from record objects)."""
    args: dict[str, Any] = {"hospital": HOSPITAL, "as_of": date(2025, 4, 30), "window": window}
    data, _ = serialized_bundle(PATIENT, [encode(r) for r in records], generated_at=GENERATED, **args)
    return data, dumps(patient_bundle(PATIENT, records, generated_at=GENERATED, **args))


def _glucose(day: str, time: str = "10:00", item: str = "1.1", display: str = "グルコース") -> LabResult:
    lab = _lab(day.replace("-", ""), f"{day}T{time}", "7.0", item=item)
    return replace(lab, code=Coding("3D010000001926101", display, "JC10"))


#: Lab histories where dropping encodings early could go wrong: the latest n on different days; ties on
#: the n-th day (time and item number decide); one code written with two displays (two groups of
#: encodings, one for the builder); another code whose results are all older than the first's.
_LAB_HISTORIES = {
    "days": [_glucose(f"2025-0{m}-01") for m in (1, 2, 3, 4)],
    "ties": [
        _glucose("2025-04-01"),
        *(_glucose("2025-04-02", t, i) for t, i in (("09:00", "1.1"), ("09:00", "1.10"), ("08:00", "1.2"))),
    ],
    "displays": [_glucose("2025-03-01"), _glucose("2025-04-01"), _glucose("2025-04-03", display="血糖")],
    "codes": [
        *(_glucose(f"2025-04-0{d}") for d in (1, 2, 3, 4)),
        _lab("20250315", "2025-03-15T10:00", "5.5", code="3A016000002327101"),
    ],
}


@pytest.mark.parametrize("keep", [1, 2, 3])
@pytest.mark.parametrize("history", sorted(_LAB_HISTORIES))
def test_labs_that_cannot_be_among_the_latest_of_their_code_are_dropped_before_decoding(
    keep: int, history: str
) -> None:
    """Per code, results older than the n-th latest day are dropped from the encodings before they are
    decoded; the bundle is the one built from every record."""
    records: list[Record] = list(_LAB_HISTORIES[history])
    window = ExportWindow(max_labs_per_code=keep)
    kept = in_window([encode(r) for r in records], as_of=date(2025, 4, 30), window=window)
    assert len(kept) >= min(keep, len(records))
    data, expected = _export_path_bytes(records, window)
    assert data == expected
    if history == "days":
        assert len(kept) == keep


def test_a_lab_value_that_holds_a_template_marker_is_serialized_as_it_is() -> None:
    """The export serializes lab results through templates with marked holes; a value that happens to
    hold a marker gets no template and the same bytes."""
    marker = bundle_module._HOLES[0]
    records: list[Record] = [
        _lab("20250401", "2025-04-01T10:00", marker),
        replace(_lab("20250402", "2025-04-02T10:00", "5.0"), unit=bundle_module._HOLES[3]),
    ]
    data, expected = _export_path_bytes(records, ExportWindow())
    assert data == expected
    values = [e["resource"].get("valueString") for e in json.loads(data)["entry"]]
    assert marker in values


def test_items_of_a_day_sort_by_item_number_not_text() -> None:
    codes = {"1.1": "3D010000001926101", "1.2": "3A016000002327101", "1.10": "3A010000002327101"}
    records: list[Record] = [
        _lab("20250410", "2025-04-10T10:00", "5.5", code=code, item=item) for item, code in codes.items()
    ]
    bundle = build(PATIENT, records)
    results = section(bundle, "30954-2")
    assert results is not None
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    items = [by_url[e["reference"]]["identifier"][0]["value"].rsplit("/", 1)[1] for e in results["entry"]]
    assert items == ["1.10", "1.2", "1.1"]  # newest first: descending, 1.10 after 1.9 and 1.2


def test_empty_sections_have_empty_reason(packages: Packages) -> None:
    bundle = build(PATIENT, [])
    assert check_bundle(bundle, packages) == []
    for code in ("11450-4", "10160-0", "48765-2"):
        s = section(bundle, code)
        assert s is not None
        assert "entry" not in s
        assert s["emptyReason"]["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
            "code": "nilknown",
            "display": "Nil Known",
        }
        assert s["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert section(bundle, "30954-2") is None  # Results only when there are any
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "Composition",
        "Patient",
        "Organization",
    ]
    # medications exist, but none in the window: "unavailable", with the reason in the narrative
    old = build(PATIENT, [_rx("20200101", "2020-01-01T08:00", "14")])
    meds = section(old, "10160-0")
    assert meds is not None and meds["emptyReason"]["coding"][0]["code"] == "unavailable"
    assert "対象期間内" in meds["text"]["div"]
    assert check_bundle(old, packages) == []


def test_no_patient_data_leaks_into_problems(packages: Packages) -> None:
    bundle = build(PATIENT, [_rx("20250101", "2025-01-01T08:00", "14")])
    bad = copy.deepcopy(bundle)
    resources(bad, "Patient")[0]["gender"] = "山田花子"
    problems = check_bundle(bad, packages)
    assert problems and not any("山田" in p or "花子" in p for p in problems)


def test_generated_at_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build(PATIENT, [], generated_at=datetime(2025, 5, 1, 9, 0))
    with pytest.raises(ValueError, match="another patient"):
        build(PATIENT, [_cond("1", "2020-01-01").__class__(key("other", "-", "PPR-01"), Coding("1"))])
    assert (
        build(PATIENT, [], generated_at=datetime(2025, 5, 1, tzinfo=UTC))["timestamp"]
        == "2025-05-01T00:00:00+00:00"
    )


def test_validate_flag_parses_with_fhir_resources() -> None:
    records: list[Record] = [
        _rx("20250101", "2025-01-01T08:00", "14"),
        Allergy(
            key(PID, "-", "ADT-00", "999999999999999", "AL1.1"),
            Coding("DA", "薬剤", "HL70127"),
            Coding("1", "ペニシリン", "99XYZ"),
        ),
        Injection(
            key(PID, "20250301", "OMP-12", "000000000000009", "1"),
            "administration",
            (
                InjectionComponent(
                    "", Coding("620007329", "ソリタ", "HOT9"), "1", Coding("HON", "本", "MR9P")
                ),
            ),
            start="2025-03-01T08:00",
            status="CP",
        ),
    ]
    bundle = build(PATIENT, records, validate=True)
    assert structure_problems(bundle) == []


# ------------------------------------------------------------------------------- negative checks
def _first(rt: str) -> Callable[[Json], Json]:
    def get(bundle: Json) -> Json:
        return resources(bundle, rt)[0]

    return get


def _sections(bundle: Json) -> list[Json]:
    sections: list[Json] = bundle["entry"][0]["resource"]["section"]
    return sections


def _mutations() -> Iterator[tuple[str, Callable[[Json], object], str]]:
    rx = _first("MedicationRequest")
    obs = _first("Observation")
    pat = _first("Patient")
    cond = _first("Condition")
    yield (
        "missing allergies section",
        lambda b: _sections(b).pop(1),
        "Allergies section (48765-2) must be present",
    )
    yield (
        "duplicate problems section",
        lambda b: _sections(b).append(copy.deepcopy(_sections(b)[0])),
        "found 2",
    )
    yield (
        "wrong code system for a lab",
        lambda b: obs(b)["code"]["coding"][0].update(system=cs.HOT9),
        "is not one the binding http://jpfhir.jp/fhir/core/ValueSet/JP_ObservationLabResultCode_VS names",
    )
    yield (
        "international ICD-10 URI",
        lambda b: cond(b)["code"]["coding"][1].update(system="http://hl7.org/fhir/sid/icd-10"),
        "is not one JP_Condition_eCS names",
    )
    yield (
        "HOT9 alias URI",
        lambda b: rx(b)["medicationCodeableConcept"]["coding"][0].update(
            system="urn:oid:1.2.392.100495.20.2.74"
        ),
        "is an alias; JP Core prefers urn:oid:1.2.392.200119.4.403.1",
    )
    yield (
        "coding without system",
        lambda b: obs(b)["code"]["coding"][0].pop("system"),
        "code without a system",
    )
    yield "no IDE name", lambda b: pat(b)["name"].pop(0), "no kanji name"
    yield (
        "unmarked name",
        lambda b: pat(b)["name"][1].pop("extension"),
        "name without iso21090-EN-representation",
    )
    yield (
        "patient id namespace",
        lambda b: pat(b)["identifier"][0].update(system="urn:oid:1.2.3"),
        "no identifier in the namespace urn:oid:1.2.392.100495.20.3.51.1",
    )
    yield (
        "dangling reference",
        lambda b: obs(b).update(specimen={"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}),
        "reference not resolved in the Bundle",
    )
    yield (
        "unreferenced entry",
        lambda b: _sections(b)[0]["entry"].pop(),
        "not referenced from the Composition",
    )
    yield "missing specimen", lambda b: obs(b).pop("specimen"), "Observation.specimen: required"
    yield "missing Rp number", lambda b: rx(b)["identifier"].pop(0), "identifier:rpNumber: required"
    yield "missing authoredOn", lambda b: rx(b).pop("authoredOn"), "MedicationRequest.authoredOn: required"
    yield (
        "wrong fixed unit",
        lambda b: rx(b)["dispenseRequest"]["expectedSupplyDuration"].update(unit="days"),
        'must be the fixed value "日"',
    )
    yield (
        "lab category",
        lambda b: obs(b)["category"][0]["coding"][0].update(code="vital-signs"),
        "category:laboratory: required",
    )
    yield (
        "gender code",
        lambda b: pat(b).update(gender="xx"),
        "required value set http://hl7.org/fhir/ValueSet/administrative-gender",
    )
    yield (
        "subject of the wrong type",
        lambda b: cond(b)["subject"].update(reference=b["entry"][2]["fullUrl"]),
        "references a Organization, the profile allows Patient",
    )
    yield (
        "unknown JP profile",
        lambda b: cond(b)["meta"].update(profile=["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Nope"]),
        "is not a profile of the JP packages",
    )
    yield (
        "entries and emptyReason",
        lambda b: _sections(b)[0].update(
            emptyReason={"coding": [{"system": cs.LIST_EMPTY_REASON, "code": "nilknown"}]}
        ),
        "emptyReason on a section with entries",
    )
    yield (
        "empty section without reason",
        lambda b: _sections(b)[1].pop("emptyReason"),
        "neither entries nor emptyReason",
    )
    yield (
        "narrative not XHTML",
        lambda b: _sections(b)[0]["text"].update(div="<div>x</div>"),
        "not an XHTML div",
    )
    yield (
        "wrong document type",
        lambda b: b["entry"][0]["resource"]["type"]["coding"][0].update(code="34133-9"),
        "60591-5",
    )
    yield "unknown element", lambda b: pat(b).update(nickname="x"), "structure: entry.1.resource.nickname"


MUTATIONS = list(_mutations())


@pytest.fixture(scope="module")
def sample_bundle() -> Json:
    records: list[Record] = [
        _cond("1", "2001-05-01"),
        _rx("20250101", "2025-01-01T08:00", "14"),
        _lab("20250401", "2025-04-01T10:00", "120"),
    ]
    return build(PATIENT, records)


def test_sample_bundle_conforms(sample_bundle: Json, packages: Packages) -> None:
    assert check_bundle(sample_bundle, packages) == []
    assert "emptyReason" in _sections(sample_bundle)[1]  # the allergies section the mutations rely on


@pytest.mark.parametrize(("name", "mutate", "expected"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_checker_catches(
    name: str, mutate: Callable[[Json], object], expected: str, sample_bundle: Json, packages: Packages
) -> None:
    bad = copy.deepcopy(sample_bundle)
    mutate(bad)
    problems = check_bundle(bad, packages)
    assert any(expected in p for p in problems), json.dumps(problems, ensure_ascii=False, indent=1)


# ---------------------------------------------------------------------------------- code systems
def test_code_system_uris_come_from_the_packages(packages: Packages) -> None:
    preferred = {ns.preferred for ns in packages.naming_systems}
    for uri in (
        cs.HOT9,
        cs.HOT13,
        cs.HOT7,
        cs.YJ,
        cs.JLAC10,
        cs.MERIT9_UNIT,
        cs.JAMI_USAGE,
        cs.ROUTE_HL70162,
    ):
        assert uri in preferred, uri
    assert {cs.STRENGTH_TYPE, cs.PREFECTURE, cs.ICD10_JP} <= preferred
    assert {cs.MEDIS_DISEASE_KEY, cs.MEDIS_DISEASE_EXCHANGE, cs.ICD10_JP} <= packages.condition_code_systems()
    fixed = set()
    for url in ("JP_MedicationRequest", "JP_Organization", "JP_Observation_LabResult"):
        sd = packages.structure_definitions["http://jpfhir.jp/fhir/core/StructureDefinition/" + url]
        fixed |= {v for e in sd["snapshot"]["element"] for k, v in e.items() if k == "fixedUri"}
    assert {
        cs.RP_NUMBER,
        cs.ORDER_IN_RP,
        cs.RESOURCE_INSTANCE,
        cs.MEDICAL_INSTITUTION,
        cs.OBSERVATION_CATEGORY,
    } <= fixed
    comment = json.dumps(
        packages.structure_definitions["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]
    )
    assert "urn:oid:1.2.392.100495.20.3.51.11312345670" in comment  # prefix + 10-digit code, as we build it
    assert cs.patient_id_system("1312345670") == "urn:oid:1.2.392.100495.20.3.51.11312345670"
    assert cs.patient_id_system("12345") is None


def test_numbers_keep_their_digits(packages: Packages) -> None:
    values = ["8.0", "6.70", "1E+3", "14", "0.5", "<0.5", "≧1000", "陰性", "1,200"]
    records: list[Record] = [
        _lab("20250401", f"2025-04-01T10:{i:02d}", v, f"3D0100000019261{i:02d}", f"1.{i + 1}")
        for i, v in enumerate(values)
    ]
    bundle = build(PATIENT, records)
    assert check_bundle(bundle, packages) == []
    data = dumps(bundle)
    for text in ("8.0", "6.70", "1E+3", "14", "0.5"):
        assert f'"valueQuantity":{{"value":{text},'.encode() in data
    obs = {o["code"]["coding"][0]["code"][-2:]: o for o in resources(bundle, "Observation")}
    assert obs["05"]["valueQuantity"] == {"value": 0.5, "comparator": "<", "unit": "mg/dl"}
    assert obs["06"]["valueQuantity"] == {"value": 1000, "comparator": ">=", "unit": "mg/dl"}
    assert obs["07"]["valueString"] == "陰性"
    assert obs["08"]["valueString"] == "1,200"


def test_medis_code_shapes() -> None:
    assert cs.system_for("MDCDX2", "20054174") == cs.MEDIS_DISEASE_KEY
    assert cs.system_for("MDCDX2", "TSQF") == cs.MEDIS_DISEASE_EXCHANGE
    assert cs.system_for("MDCDX2", "x") is None
    assert cs.system_for("99XYZ", "1") is None
    assert cs.system_for("HOT9", "108665201") == cs.HOT9


def test_guideline_samples_conform(samples: Path, packages: Packages) -> None:
    """The real SS-MIX2 guideline samples, everything in (they date from 2011)."""
    everything = ExportWindow(
        months_medications=1200, months_labs=1200, months_resolved_problems=1200, max_labs_per_code=0
    )
    patients = records_by_patient(samples)
    assert patients
    for patient, recs in patients.values():
        bundle = build(patient, recs, window=everything)
        assert check_bundle(bundle, packages) == []
        kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
        assert {
            "Condition",
            "AllergyIntolerance",
            "MedicationRequest",
            "MedicationAdministration",
            "Observation",
        } <= kinds

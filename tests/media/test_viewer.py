"""The offline viewer's Python side: summary extraction from real bundles, chunking, the file list,
abort, tamper detection, and that nothing on the written disk reads as patient data without the key.

The browser side (decryption, search, the summary page) is tested in test_viewer_browser.py, which builds
its disks with the helpers here.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import json
import re
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from hakobune.errors import InputError
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
)
from media import viewer as V
from media.crypto import new_disk_key, wrap_to_passphrase
from media.viewer_summary import SummaryError, parse_bundle, stored_summary, summarize
from restore.fhir import dumps, patient_bundle
from restore.search.normalize import fold_kanji, kana_key, kana_loose, kanji_variants, name_as_written

HOSPITAL = "1310000001"
HOSPITAL_NAME = "箱舟総合病院"
AS_OF = date(2025, 4, 30)
GENERATED = datetime(2025, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=9)))
DISK_ID = "HKD-20250501-0001"
PASSPHRASE = "K7QX-3MZP-TW4N-8RHD-PQ2C-YB6A"
LABEL = {
    "hospital": HOSPITAL,
    "hospital_name": HOSPITAL_NAME,
    "order_id": "RO-2025-0007",
    "recipient_name": "静岡災害拠点病院",
    "created_at": "2025-05-01T10:00:00+09:00",
    "disk_id": DISK_ID,
}

# The test patient: distinctive values, searched for in every encoding on the written disk.
PID = "HK-000731"
FAMILY, GIVEN, FAMILY_KANA, GIVEN_KANA = "齋藤", "花子", "サイトウ", "ハナコ"
BIRTH = "1975-03-04"
ADDRESS = "静岡県静岡市葵区追手町9-6 ひまわり荘201"


def key(pid: str, care_date: str, data_type: str, order: str, item: str) -> RecordKey:
    return RecordKey(pid, care_date, data_type, order, item)


def patient(
    pid: str = PID,
    names: tuple[str, str, str, str] = (FAMILY, GIVEN, FAMILY_KANA, GIVEN_KANA),
    birth: str = BIRTH,
    sex: str = "F",
    address: str = ADDRESS,
) -> Patient:
    return Patient(key(pid, "-", "ADT-00", "999999999999999", "PID"), *names, birth, sex, "4200001", address)


def full_records(pid: str = PID) -> list[Record]:
    """Allergies (one severe drug allergy), problems (active and recently resolved), an oral order still
    running at as_of, an oral administration, an injection order with two drugs, and flagged labs."""
    unit_tab = Coding("TAB", "錠", "MR9P")
    return [
        Allergy(
            key(pid, "-", "ADT-61", "999999999999999", "1"),
            Coding("FA", "食物アレルギー", "HL70127"),
            Coding("5A1002411023006", "ソバ", "JC10"),
            Coding("MO", "中等度", "HL70128"),
            "じんましん",
        ),
        Allergy(
            key(pid, "-", "ADT-61", "999999999999999", "2"),
            Coding("DA", "薬剤アレルギー", "HL70127"),
            Coding("1", "ペニシリン", "99XYZ"),
            Coding("SV", "重症", "HL70128"),
            "アナフィラキシー",
            "2010-05-01",
        ),
        Condition(
            key(pid, "-", "PPR-01", "999999999999999", "1"),
            Coding("20057734", "糖尿病", "MDCDX2"),
            icd10="E119",
            name="2型糖尿病",
            onset="2015-04-01",
            recorded="2015-04-01",
            outcome=Coding("N", "", "HL70241"),
            main=True,
        ),
        Condition(
            key(pid, "-", "PPR-01", "999999999999999", "2"),
            Coding("20063255", "急性気管支炎", "MDCDX2"),
            icd10="J209",
            name="急性気管支炎",
            onset="2025-01-10",
            recorded="2025-01-10",
            resolved="2025-02-01",
            outcome=Coding("R", "", "HL70241"),
        ),
        Prescription(
            key(pid, "20250420", "OMP-01", "000000000000001", "1"),
            "order",
            Coding("119850601", "メトグルコ錠２５０ｍｇ", "HOT9"),
            amount="1",
            unit=unit_tab,
            total_daily="2",
            usage=Coding("1012040400000000", "内服・経口・１日２回朝夕食後", "JAMISDP01"),
            days="28",
            route=Coding("PO", "口", "HL70162"),
            start="2025-04-20",
            ordered_at="2025-04-20T09:00",
            rp="1",
        ),
        Prescription(
            key(pid, "20250405", "OMP-11", "000000000000002", "1.1"),
            "administration",
            Coding("105261401", "ワーファリン錠１ｍｇ", "HOT9"),
            amount="2",
            unit=unit_tab,
            start="2025-04-05T08:00",
            status="CP",
        ),
        Injection(
            key(pid, "20250410", "OMP-02", "000000000000003", "1"),
            "order",
            (
                InjectionComponent(
                    "B",
                    Coding("620007329", "ソリタ−Ｔ３号輸液５００ｍＬ", "HOT9"),
                    "1",
                    Coding("HON", "本", "MR9P"),
                ),
                InjectionComponent(
                    "A",
                    Coding("620002559", "アドナ注（静脈用）５０ｍｇ", "HOT9"),
                    "1",
                    Coding("AMP", "アンプル", "MR9P"),
                ),
            ),
            total_amount="500",
            unit=Coding("ML", "mL", "MR9P"),
            rate="100mL/hr",
            route=Coding("IV", "静脈内", "HL70162"),
            instructions="５時間一定速度で",
            start="2025-04-10T10:00",
            end="2025-04-10T15:00",
            ordered_at="2025-04-10T09:00",
        ),
        lab(
            pid,
            "20250415",
            "1.1",
            "3D046000001906202",
            "HbA1c",
            "7.80",
            "%",
            "4.6-6.2",
            "H",
            "2025-04-15T10:00",
        ),
        lab(
            pid,
            "20250415",
            "1.2",
            "3H015000002327101",
            "カリウム",
            "3.1",
            "mmol/l",
            "3.6-4.8",
            "L",
            "2025-04-15T10:00",
        ),
        lab(
            pid,
            "20250415",
            "1.3",
            "3C015000002327101",
            "クレアチニン",
            "6.70",
            "mg/dl",
            "0.46-0.79",
            "HH",
            "2025-04-15T10:00",
        ),
        lab(
            pid,
            "20250415",
            "1.4",
            "3D010000001926101",
            "グルコース",
            "98",
            "mg/dl",
            "73-109",
            "N",
            "2025-04-15T10:00",
        ),
        lab(
            pid,
            "20250301",
            "1.1",
            "3D046000001906202",
            "HbA1c",
            "8.1",
            "%",
            "4.6-6.2",
            "H",
            "2025-03-01T10:00",
        ),
    ]


def lab(
    pid: str, care: str, item: str, code: str, name: str, value: str, unit: str, rr: str, flag: str, at: str
) -> LabResult:
    return LabResult(
        key(pid, care, "OML-11", "0000000000" + care[-5:], item),
        Coding(code, name, "JC10"),
        "NM",
        value,
        unit,
        rr,
        flag,
        "F",
        at,
        Coding("023", "血清", "JC10"),
    )


def bundle_bytes(p: Patient, records: list[Record], as_of: date = AS_OF) -> bytes:
    return dumps(
        patient_bundle(
            p, records, hospital=HOSPITAL, hospital_name=HOSPITAL_NAME, as_of=as_of, generated_at=GENERATED
        )
    )


def summary_of(p: Patient, records: list[Record], as_of: date = AS_OF) -> dict[str, Any]:
    return summarize(parse_bundle(bundle_bytes(p, records, as_of)))


def disk_keys(iterations: int = 100_000) -> tuple[bytes, dict[str, Any]]:
    k = new_disk_key()
    return k, wrap_to_passphrase(k, DISK_ID, PASSPHRASE, iterations=iterations).doc()


def write_disk(
    root: Path, patients: list[tuple[Patient, list[Record]]], **limits: int
) -> tuple[bytes, list[str], V.ViewerWriter]:
    """A viewer on ``root`` holding ``patients``; ``limits`` override the writer's chunk sizes."""
    disk_key, wrap = disk_keys()
    writer = V.ViewerWriter(root, disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap=wrap, label=LABEL)
    for name, value in limits.items():
        setattr(writer, name, value)
    for p, records in patients:
        writer.add(p.key.patient_id, bundle_bytes(p, records))
    return disk_key, writer.close(), writer


def resolved_index(part: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The index rows of a part with the elided keys filled in, as the viewer's JavaScript reads them."""
    c = part["columns"]
    for i in range(part["n"]):
        row = {name: c[name][i] for name in V.INDEX_COLUMNS}
        for k, base in (("fr", "fj"), ("gr", "gj"), ("fk", "fr"), ("gk", "gr"), ("fa", "fn"), ("ga", "gn")):
            row[k] = row[base] if row[k] is None else row[k]
        for k, base in (("fl", "fa"), ("gl", "ga")):
            row[k] = row[base] if row[k] is None else row[k]
        yield row


# --------------------------------------------------------------------------------- summary values
def test_summary_of_a_full_patient() -> None:
    s = summary_of(patient(), full_records())
    assert s["v"] == 1
    assert s["patient"] == {
        "id": PID,
        "family_kanji": FAMILY,
        "given_kanji": GIVEN,
        "family_kana": FAMILY_KANA,
        "given_kana": GIVEN_KANA,
        "birth": BIRTH,
        "sex": "F",
        "address": ADDRESS,
        "postal": "4200001",
    }
    assert s["source"] == {"hospital": HOSPITAL_NAME, "code": HOSPITAL}
    assert s["as_of"] == "2025-05-01T09:00:00+09:00"
    # the severe drug allergy first, whatever the bundle's order
    assert s["allergies"] == [
        {
            "category": "薬剤",
            "substance": "ペニシリン",
            "reactions": ["アナフィラキシー"],
            "severity": "重度",
            "critical": True,
            "onset": "2010-05-01",
        },
        {
            "category": "食物",
            "substance": "ソバ",
            "reactions": ["じんましん"],
            "severity": "中等度",
            "critical": False,
            "onset": "",
        },
    ]
    assert s["problems"] == [
        {"name": "2型糖尿病", "icd10": "E119", "onset": "2015-04-01", "status": "active", "resolved": ""},
        {
            "name": "急性気管支炎",
            "icd10": "J209",
            "onset": "2025-01-10",
            "status": "resolved",
            "resolved": "2025-02-01",
        },
    ]
    assert s["medications"] == [
        {
            "event": "order",
            "drug": "メトグルコ錠２５０ｍｇ",
            "dose": "1錠",
            "daily": "2錠",
            "usage": "内服・経口・１日２回朝夕食後",
            "route": "口",
            "days": "28",
            "start": "2025-04-20",
            "end": "2025-05-17",
            "status": "active",
        },
        {
            "event": "given",
            "drug": "ワーファリン錠１ｍｇ",
            "dose": "2錠",
            "daily": "",
            "usage": "",
            "route": "",
            "days": "",
            "start": "2025-04-05",
            "end": "",
            "status": "completed",
        },
    ]
    assert s["injections"] == [
        {
            "event": "order",
            "drugs": ["ソリタ−Ｔ３号輸液５００ｍＬ 1本", "アドナ注（静脈用）５０ｍｇ 1アンプル"],
            "total": "500mL",
            "rate": "100mL/h",
            "route": "静脈内",
            "instructions": "５時間一定速度で",
            "start": "2025-04-10",
            "end": "2025-04-10",
            "status": "completed",
        }
    ]
    # grouped per test, newest first; tests of one day in the report's order; digits as written
    assert s["labs"] == [
        {
            "name": "HbA1c",
            "unit": "%",
            "range": "4.6-6.2",
            "results": [
                {"date": "2025-04-15", "value": "7.80", "flag": "H"},
                {"date": "2025-03-01", "value": "8.1", "flag": "H"},
            ],
        },
        {
            "name": "カリウム",
            "unit": "mmol/l",
            "range": "3.6-4.8",
            "results": [{"date": "2025-04-15", "value": "3.1", "flag": "L"}],
        },
        {
            "name": "クレアチニン",
            "unit": "mg/dl",
            "range": "0.46-0.79",
            "results": [{"date": "2025-04-15", "value": "6.70", "flag": "HH"}],
        },
        {
            "name": "グルコース",
            "unit": "mg/dl",
            "range": "73-109",
            "results": [{"date": "2025-04-15", "value": "98", "flag": "N"}],
        },
    ]
    assert s["empty"] == {}


def test_summary_says_why_a_section_is_empty() -> None:
    nothing = summary_of(patient(), [])
    assert nothing["allergies"] == nothing["problems"] == nothing["medications"] == nothing["labs"] == []
    assert nothing["empty"] == {
        "allergies": {"code": "nilknown", "text": "記録なし"},
        "problems": {"code": "nilknown", "text": "記録なし"},
        "medications": {"code": "nilknown", "text": "記録なし"},
    }
    # records exist but none falls in the window: "unavailable", not "nothing recorded"
    old: list[Record] = [r for r in full_records() if isinstance(r, (Prescription, Injection))]
    s = summary_of(patient(), old, as_of=date(2026, 4, 30))
    assert s["medications"] == s["injections"] == []
    assert s["empty"]["medications"] == {"code": "unavailable", "text": "対象期間内の記録なし"}


def test_summary_marks_missing_sections_and_keeps_comparators() -> None:
    doc = json.loads(bundle_bytes(patient(), full_records()), parse_float=Decimal)
    comp = doc["entry"][0]["resource"]
    comp["section"] = [s for s in comp["section"] if s["code"]["coding"][0]["code"] != "48765-2"]
    for e in doc["entry"]:
        if e["resource"]["resourceType"] == "Observation":
            e["resource"]["valueQuantity"]["comparator"] = "<"
    s = summarize(parse_bundle(dumps(doc)))
    assert s["allergies"] == []
    assert s["empty"]["allergies"] == {"code": "missing", "text": ""}
    assert s["labs"][0]["results"][0]["value"] == "<7.80"


@pytest.mark.parametrize(
    "text", ["6.70", "6.7", "225", "-0.0", "100.0", "1e-5", "0.00001", "1E2", "1e+16", "1.5e16", "0.1"]
)
def test_summary_shows_numbers_as_written_however_the_bundle_is_laid_out(text: str) -> None:
    """orjson reads most bundles, the json module (decimals) the rest: the summary is the same."""
    doc = orjson.loads(bundle_bytes(patient(), full_records()))
    obs = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation")
    obs["valueQuantity"]["value"] = orjson.Fragment(text.encode())
    compact = orjson.dumps(doc)
    spaced = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    s = summarize(parse_bundle(compact))
    assert s == summarize(parse_bundle(spaced))
    values = [r["value"] for lab in s["labs"] for r in lab["results"]]
    assert str(Decimal(text)) in values


@pytest.mark.parametrize(
    "text", ["6.70", "6.7", "225", "-0.0", "100.0", "0.00001", "07.5", "<0.5", "＞100", "陰性"]
)
def test_the_summary_of_a_bundle_as_built_is_that_of_its_bytes(text: str) -> None:
    """``media write`` summarizes each bundle where it is built, from its dicts (restore.export's
    ``summarize``); the viewer summarizes bytes it is given: the two are the same summary."""
    records = [
        *full_records(),
        lab(
            PID,
            "20250410",
            "9.1",
            "3D010000001926101",
            "グルコース",
            text,
            "mg/dl",
            "70-109",
            "H",
            "2025-04-10T10:00",
        ),
    ]
    built = patient_bundle(
        patient(),
        records,
        hospital=HOSPITAL,
        hospital_name=HOSPITAL_NAME,
        as_of=AS_OF,
        generated_at=GENERATED,
    )
    summary = summarize(built)
    assert summary == summarize(parse_bundle(dumps(built)))
    assert stored_summary(built) == (orjson.dumps(summary), summary["patient"])
    shown = "7.5" if text == "07.5" else text.replace("＞", ">")  # (a leading zero is no part of a number)
    assert shown in [r["value"] for lab in summary["labs"] for r in lab["results"]]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b'{"resourceType": "Bundle", "type": "collection"}', "not a FHIR document Bundle"),
        (b'{"resourceType": "Bundle", "type": "document", "entry": []}', "not a Composition"),
    ],
)
def test_summary_refuses_what_is_not_a_patient_summary(data: bytes, reason: str) -> None:
    with pytest.raises(SummaryError, match=reason):
        summarize(parse_bundle(data))


def test_summary_refuses_a_patient_without_identifier() -> None:
    doc = json.loads(bundle_bytes(patient(), []))
    doc["entry"][1]["resource"].pop("identifier")
    with pytest.raises(SummaryError, match="no identifier") as e:
        summarize(parse_bundle(json.dumps(doc).encode()))
    assert PID not in str(e.value) and FAMILY not in str(e.value)


# ------------------------------------------------------------------------------------------ chunks
@settings(max_examples=40, deadline=None)
@given(
    name=st.from_regex(r"[a-z][0-9]{0,8}", fullmatch=True),
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=20,
    ),
    flip=st.integers(min_value=0),
)
def test_chunk_roundtrip_and_any_change_is_refused(name: str, value: Any, flip: int) -> None:
    k = bytes(range(32))
    data = V.seal_chunk(k, DISK_ID, name, orjson.dumps(value))
    assert V.open_chunk(k, DISK_ID, name, data) == value
    m = re.match(rb'hakobuneData\("[a-z0-9]+","([^"]+)"\);\n', data)
    assert m is not None
    raw = bytearray(base64.b64decode(m.group(1)))
    raw[flip % len(raw)] ^= 0x01
    tampered = data.replace(m.group(1), base64.b64encode(bytes(raw)))
    with pytest.raises(V.ChunkError):
        V.open_chunk(k, DISK_ID, name, tampered)


def test_chunk_refuses_wrong_key_disk_or_name() -> None:
    k = new_disk_key()
    data = V.seal_chunk(k, DISK_ID, "s00001", b"[1]")
    assert V.open_chunk(k, DISK_ID, "s00001", data) == [1]
    with pytest.raises(V.ChunkError, match="does not decrypt"):
        V.open_chunk(new_disk_key(), DISK_ID, "s00001", data)
    with pytest.raises(V.ChunkError, match="does not decrypt"):
        V.open_chunk(k, "HKD-OTHER", "s00001", data)
    with pytest.raises(V.ChunkError, match="not a viewer data file"):
        V.open_chunk(k, DISK_ID, "s00002", data)  # a chunk file moved to another name
    renamed = data.replace(b'"s00001"', b'"s00002"')
    with pytest.raises(V.ChunkError, match="does not decrypt"):
        V.open_chunk(k, DISK_ID, "s00002", renamed)  # ... and its name rewritten: the AAD catches it
    with pytest.raises(V.ChunkError):
        V.open_chunk(k, DISK_ID, "s00001", b"alert(1)")
    with pytest.raises(ValueError):
        V.seal_chunk(k, DISK_ID, "../x", b"[]")


def many(n: int) -> list[tuple[Patient, list[Record]]]:
    out: list[tuple[Patient, list[Record]]] = []
    for i in range(n):
        pid = f"P{i:05d}"
        out.append((patient(pid, ("山田", f"{i}郎", "ヤマダ", "タロウ"), "1950-01-01", "M", "東京都"), []))
    return out


def test_chunking_and_index_point_to_the_right_summaries(tmp_path: Path) -> None:
    patients = many(10)
    disk_key, files, writer = write_disk(tmp_path, patients, summary_patients=3, index_part=4)
    assert writer.patients == 10
    assert files[-1] == "viewer.html"
    summaries = sorted(f for f in files if f.startswith("viewer/d/s"))
    assert summaries == [f"viewer/d/s0000{i}.js" for i in range(4)]  # 3 + 3 + 3 + 1
    assert sorted(f for f in files if f.startswith("viewer/d/i")) == [f"viewer/d/i00{i}.js" for i in range(3)]
    meta = V.read_chunk(tmp_path, disk_key, DISK_ID, "m")
    assert meta["patients"] == 10 and meta["summaries"] == 4 and meta["index"] == ["i000", "i001", "i002"]
    seen = []
    for name in meta["index"]:
        part = V.read_chunk(tmp_path, disk_key, DISK_ID, name)
        assert part["n"] == len(part["columns"]["id"]) <= 4
        for row in resolved_index(part):
            chunk = V.read_chunk(tmp_path, disk_key, DISK_ID, f"s{row['c']:05d}")
            assert chunk[row["p"]]["patient"]["id"] == row["id"]
            seen.append(row["id"])
    assert seen == [p.key.patient_id for p, _ in patients]


def test_summary_chunks_also_close_by_size(tmp_path: Path) -> None:
    disk_key, files, _ = write_disk(tmp_path, many(3), summary_bytes=10)
    assert sorted(f for f in files if f.startswith("viewer/d/s")) == [
        f"viewer/d/s0000{i}.js" for i in range(3)
    ]
    assert [len(V.read_chunk(tmp_path, disk_key, DISK_ID, f"s0000{i}")) for i in range(3)] == [1, 1, 1]


def test_close_lists_every_file_written_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "payload.bin").write_bytes(b"written by someone else")
    _, files, writer = write_disk(tmp_path, [(patient(), full_records()), *many(4)], summary_patients=2)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"payload.bin"}
    assert len(files) == len(set(files))
    with pytest.raises(RuntimeError):
        writer.add(PID, b"{}")
    with pytest.raises(RuntimeError):
        writer.close()


def test_an_empty_disk_still_has_a_viewer(tmp_path: Path) -> None:
    disk_key, files, _ = write_disk(tmp_path, [])
    assert files == ["viewer/d/m.js", "viewer.html"]
    assert V.read_chunk(tmp_path, disk_key, DISK_ID, "m")["patients"] == 0


def test_abort_removes_what_was_written(tmp_path: Path) -> None:
    (tmp_path / "payload.bin").write_bytes(b"x")
    disk_key, wrap = disk_keys()
    writer = V.ViewerWriter(tmp_path, disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap=wrap, label=LABEL)
    writer.summary_patients = 1
    for p, recs in many(3):
        writer.add(p.key.patient_id, bundle_bytes(p, recs))
    assert any((tmp_path / V.DATA_DIR).iterdir())  # chunks were written as it went
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.bin"]


def test_abort_after_close_removes_the_viewer_too(tmp_path: Path) -> None:
    _, _, writer = write_disk(tmp_path, many(2))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_disk_that_already_has_a_viewer(tmp_path: Path) -> None:
    write_disk(tmp_path, many(1))
    disk_key, wrap = disk_keys()
    with pytest.raises(InputError, match="already holds a viewer"):
        V.ViewerWriter(tmp_path, disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap=wrap, label=LABEL)


def test_refuses_bad_keys_and_wraps(tmp_path: Path) -> None:
    disk_key, wrap = disk_keys()
    with pytest.raises(ValueError, match="32 bytes"):
        V.ViewerWriter(tmp_path, disk_key=b"short", disk_id=DISK_ID, passphrase_wrap=wrap, label={})
    with pytest.raises(ValueError, match="iteration"):
        V.ViewerWriter(
            tmp_path, disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap={**wrap, "iterations": 10}, label={}
        )
    with pytest.raises(InputError, match="not a directory"):
        V.ViewerWriter(tmp_path / "nope", disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap=wrap, label={})


def test_bad_bundles_are_named_by_number_never_by_patient(tmp_path: Path) -> None:
    disk_key, wrap = disk_keys()
    writer = V.ViewerWriter(tmp_path, disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap=wrap, label=LABEL)
    writer.add(PID, bundle_bytes(patient(), []))
    with pytest.raises(InputError, match=r"bundle #2: cannot be shown in the viewer: not JSON"):
        writer.add("X1", b"<html>")
    with pytest.raises(InputError, match=r"bundle #2: its Patient identifier is not the patient") as e:
        writer.add("SOMEONE-ELSE", bundle_bytes(patient(), []))
    assert PID not in str(e.value) and "SOMEONE-ELSE" not in str(e.value)
    writer.abort()


# ------------------------------------------------------------------------------------------ index
@settings(max_examples=60, deadline=None)
@given(
    names=st.tuples(
        *[st.text(alphabet="齋斎齊藤渡邊邉辺髙高崎﨑佐々木あいうカキクｻﾄｳー ・ぁァヶ々ABcd", max_size=6)] * 4
    )
)
def test_index_rows_hold_restores_search_keys(names: tuple[str, str, str, str]) -> None:
    fj, gj, fn, gn = names
    p = {"id": "1", "family_kanji": fj, "given_kanji": gj, "family_kana": fn, "given_kana": gn}
    row = dict(zip(V.INDEX_COLUMNS, V.index_row({**p, "birth": BIRTH, "sex": "F"}, 3, 7), strict=True))
    (resolved,) = resolved_index({"n": 1, "columns": {k: [v] for k, v in row.items()}})
    assert (resolved["fr"], resolved["gr"]) == (name_as_written(fj), name_as_written(gj))
    assert (resolved["fk"], resolved["gk"]) == (fold_kanji(fj), fold_kanji(gj))
    assert (resolved["fa"], resolved["ga"]) == (kana_key(fn), kana_key(gn))
    assert (resolved["fl"], resolved["gl"]) == (kana_loose(fn), kana_loose(gn))
    assert (resolved["c"], resolved["p"], resolved["b"], resolved["x"]) == (3, 7, BIRTH, "F")


def test_variant_map_holds_only_what_this_disks_names_need(tmp_path: Path) -> None:
    patients: list[tuple[Patient, list[Record]]] = [
        (patient("A1", ("渡邉", "太郎", "ワタナベ", "タロウ")), []),
        (patient("A2", ("髙橋", "一", "タカハシ", "ハジメ")), []),
    ]
    disk_key, _, _ = write_disk(tmp_path, patients)
    variants = V.read_chunk(tmp_path, disk_key, DISK_ID, "m")["variants"]
    folded = set(fold_kanji("渡邉太郎") + fold_kanji("髙橋一"))
    assert variants["邊"] == variants["邉"] == "辺"
    assert variants["髙"] == "高"
    assert "齋" not in variants  # no 斎 on this disk
    assert set(variants.values()) <= folded
    assert variants == {v: c for v, c in kanji_variants().items() if c in folded}


# --------------------------------------------------------------------------------------- the html
def _config(html: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="hakobune-config">(.*?)</script>', html, re.S)
    assert m is not None
    config: dict[str, Any] = json.loads(m.group(1))
    return config


def test_viewer_html_is_self_contained_and_locked_down(tmp_path: Path) -> None:
    write_disk(tmp_path, [(patient(), full_records())])
    html = (tmp_path / "viewer.html").read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert csp is not None
    policy = dict(d.strip().split(" ", 1) for d in csp.group(1).split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["form-action"] == policy["base-uri"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert "connect-src" not in policy and "img-src" not in policy  # default 'none'
    # the one inline script and style are allowed by hash, nothing inline besides
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(scripts) == len(styles) == 1
    for body, directive in ((scripts[0], "script-src"), (styles[0], "style-src")):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy[directive].split()
    assert policy["script-src"].split()[1:] == ["'self'", "file:"]
    # no external resources of any kind: no URL anywhere, no src/href attribute but the in-page skip link
    assert not re.search(r"\b(?:https?|ftp|wss?):|//[a-z0-9-]+\.[a-z]", html, re.I)
    markup = html.replace(scripts[0], "").replace(styles[0], "")
    assert re.findall(r"\b(?:src|href|action|srcset|data)\s*=\s*\"([^\"]*)\"", markup) == ["#main"]
    assert "@import" not in styles[0] and "url(" not in styles[0]
    config = _config(html)
    assert config["disk_id"] == DISK_ID and config["wrap"]["kdf"] == "PBKDF2-SHA256"
    assert config["label"] == LABEL and config["index"] == ["i000"] and config["data"] == "viewer/d/"


def test_html_assembly_refuses_a_source_that_would_end_its_element(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for f in V.SOURCE_DIR.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "app.js").write_text("const x = '</script><script>alert(1)';", encoding="utf-8")
    monkeypatch.setattr(V, "SOURCE_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="</script"):
        V.render_html({})


def test_config_cannot_break_out_of_its_script_element(tmp_path: Path) -> None:
    disk_key, wrap = disk_keys()
    writer = V.ViewerWriter(
        tmp_path,
        disk_key=disk_key,
        disk_id=DISK_ID,
        passphrase_wrap=wrap,
        label={"hospital_name": "</script><script>alert(1)</script>&<!--"},
    )
    writer.close()
    html = (tmp_path / "viewer.html").read_text(encoding="utf-8")
    assert "alert(1)</script>" not in html and "<!--" not in html
    config = _config(html)
    assert config["label"]["hospital_name"] == "</script><script>alert(1)</script>&<!--"


# --------------------------------------------------------------------------------- no plaintext
def _texts() -> list[str]:
    """The test patient's data as a desk might find it written: names in every script and width, the ID,
    the birth date in several forms, the address."""
    hira = "".join(chr(ord(c) - 0x60) for c in FAMILY_KANA + GIVEN_KANA)
    half = codecs.decode(b"\xb1", "cp932")  # sanity: cp932 has half-width kana
    assert half == "ｱ"
    return [
        FAMILY + GIVEN,
        FAMILY,
        GIVEN + "\u3000",
        FAMILY_KANA + GIVEN_KANA,
        FAMILY_KANA,
        hira,
        "ｻｲﾄｳ",
        "ﾊﾅｺ",
        PID,
        PID.replace("-", ""),
        BIRTH,
        BIRTH.replace("-", ""),
        "1975/03/04",
        "昭和50年3月4日",
        "追手町",
        "ひまわり荘",
        "ペニシリン",  # and a clinical fact of hers
    ]


def _encodings(text: str) -> Iterator[bytes]:
    for codec in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "cp932", "euc_jp", "iso2022_jp"):
        try:
            encoded = text.encode(codec)
        except UnicodeEncodeError:
            continue
        if codec == "iso2022_jp":  # the escape sequences differ by context: look for the JIS bytes alone
            encoded = re.sub(rb"\x1b[\(\$][A-Z@]", b"", encoded)
        yield encoded
    yield json.dumps(text).strip('"').encode()  # \uXXXX escapes
    yield urllib.parse.quote(text).encode()
    yield "".join(f"&#{ord(c)};" for c in text).encode()
    yield "".join(f"&#x{ord(c):x};" for c in text).encode()
    utf8 = text.encode()
    for shift in range(3):  # base64 of the UTF-8 at every alignment, without the edge characters
        b64 = base64.b64encode(b"\0" * shift + utf8)[4:-4]
        if len(b64) >= 8:
            yield b64


def test_nothing_on_the_disk_reads_as_patient_data(tmp_path: Path) -> None:
    write_disk(tmp_path, [(patient(), full_records()), *many(3)])
    blobs: list[tuple[str, bytes]] = []
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blobs.append((path.name, data))
            for payload in re.findall(rb'"([A-Za-z0-9+/=]{16,})"', data):  # what base64 in a chunk hides
                blobs.append((path.name + " (payload)", base64.b64decode(payload)))
    assert len(blobs) > 4
    for text in _texts():
        # shorter needles would turn up in kilobytes of ciphertext by chance (6 bytes: ~1e-8 per test)
        for needle in (n for n in _encodings(text) if len(n) >= 6):
            for name, data in blobs:
                assert needle not in data, f"{name} holds the patient's {text!r} as {needle!r}"


def test_memory_stays_bounded_however_many_patients(tmp_path: Path) -> None:
    """One summary chunk and one index part in memory at a time: adding four times as many patients does
    not raise the writer's peak memory, and the peak is a fraction of the summaries written meanwhile."""
    template = bundle_bytes(patient(), full_records())
    disk_key, wrap = disk_keys()
    writer = V.ViewerWriter(tmp_path, disk_key=disk_key, disk_id=DISK_ID, passphrase_wrap=wrap, label=LABEL)
    writer.summary_patients, writer.index_part = 10, 100

    def add(lo: int, hi: int) -> int:
        """Peak traced memory above the start while adding patients lo..hi."""
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(lo, hi):
            pid = f"HK-{i:06d}"  # as long as the template's ID: the bytes stay a valid Bundle
            writer.add(pid, template.replace(PID.encode(), pid.encode()))
        return tracemalloc.get_traced_memory()[1] - base

    add(0, 100)  # warm up: a chunk, a part and the caches have been made and dropped
    tracemalloc.start()
    try:
        first = add(100, 300)
        then = add(300, 1100)
    finally:
        tracemalloc.stop()
    summaries = 800 * len(orjson.dumps(summarize(parse_bundle(template))))
    assert then < 1.25 * first + 50_000, (first, then)
    assert then < summaries / 2, (then, summaries)
    # 1100 patients: 109 chunks written (the 110th waits for close) and 11 index parts
    assert len(list((tmp_path / V.DATA_DIR).iterdir())) == 109 + 11
    writer.abort()


def test_an_authentic_chunk_that_is_not_gzip_json_is_refused() -> None:
    k = new_disk_key()
    nonce = bytes(12)
    for plain in (b"not gzip", gzip.compress(b"{not json")):
        sealed = nonce + AESGCM(V._chunk_key(k, DISK_ID, "s00001")).encrypt(nonce, plain, b"s00001")
        data = b'hakobuneData("s00001","%s");\n' % base64.b64encode(sealed)
        with pytest.raises(V.ChunkError, match="holds no gzip JSON"):
            V.open_chunk(k, DISK_ID, "s00001", data)

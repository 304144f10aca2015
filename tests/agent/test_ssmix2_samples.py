"""The SS-MIX2 reader on the real guideline sample messages (read in place from the shared samples)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.check import check_tree
from agent.ssmix2.reader import FileOutcome, Status, read_file, read_tree
from hakobune.cli import app
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

PID = "9999013"
PATIENT_DIR = "999/901/9999013"
ADT00 = f"{PATIENT_DIR}/-/ADT-00/9999013_-_ADT-00_999999999999999_20111220224447339_-_1"
ADT61 = f"{PATIENT_DIR}/-/ADT-61/9999013_-_ADT-61_999999999999999_20111014232213000_-_1"
PPR01 = f"{PATIENT_DIR}/-/PPR-01/9999013_-_PPR-01_999999999999999_20111209163030000_01_1"
OMP11 = f"{PATIENT_DIR}/20110630/OMP-11/9999013_20110630_OMP-11_123456789012345_20110701113813225_01_1"
OMP01 = f"{PATIENT_DIR}/20110701/OMP-01/9999013_20110701_OMP-01_000000011000185_20110701224603984_01_1"
OMP02 = f"{PATIENT_DIR}/20110701/OMP-02/9999013_20110701_OMP-02_123456789012345_20110701224603984_01_1"
OMP12 = f"{PATIENT_DIR}/20110701/OMP-12/9999013_20110701_OMP-12_123456789012345_20110701113813225_01_1"
OML11 = f"{PATIENT_DIR}/20111220/OML-11/9999013_20111220_OML-11_000000011000354_20111220103059000_01_1"
IN_SCOPE_FILES = (ADT00, ADT61, PPR01, OMP11, OMP01, OMP02, OMP12, OML11)

SKIPPED_TYPES = {
    "ADT-22": 1,
    "ADT-42": 1,
    "ADT-52": 1,
    "OMD": 1,
    "OMG-01": 1,
    "OMG-02": 1,
    "OMG-03": 1,
    "OMG-11": 1,
    "OMG-12": 1,
    "OMG-13": 1,
    "OML-01": 1,
}

BROKEN_DIR = "000/000/0000001/20000401"
WRONG_FOLDER = "9999013_20110630_OMP-11_123456789012345_20110701113813225_01_1"
FAKE_SEGMENTS_1 = "0000001_20000401_OMP-11_123456789012345_20110701113813225_01_1"
FAKE_SEGMENTS_0 = "0000001_20000401_OMP-11_123456789012346_20110701113813226_01_0"
QUARANTINE_REASONS = {
    WRONG_FOLDER: (
        "wrong folder: filed under 000/000/0000001/20000401/ADT-31 "
        "but its name belongs in 999/901/9999013/20110630/OMP-11"
    ),
    FAKE_SEGMENTS_1: "segment AL1 at line 10 is empty (no fields)",
    FAKE_SEGMENTS_0: "segment AL1 at line 10 is empty (no fields)",
}

HOT9 = "HOT9"
TAB = Coding("TAB", "錠", "MR9P")
MG = Coding("MG", "ミリグラム", "MR9P")
PO = Coding("PO", "口", "HL70162")
IV = Coding("IV", "静脈内", "HL70162")
SOLITA = Coding("620007329", "ソリタ−Ｔ３号輸液５００ｍＬ", HOT9)
ADONA = Coding("620002559", "アドナ注（静脈用）50mg", HOT9)
SERUM = Coding("023", "血清", "JC10")
HEMATOLOGY = Coding("E001", "血液学的検査", "99O03")


def _key(relpath: str, item: str) -> RecordKey:
    """The key every record of a sample file must carry: taken from the *file name*, not from PID-3."""
    pid, care_date, data_type, order_no = relpath.rsplit("/", 1)[1].split("_")[:4]
    return RecordKey(pid, care_date, data_type, order_no, item)


@pytest.fixture(scope="module")
def outcomes(samples: Path) -> dict[str, FileOutcome]:
    return {o.relpath: o for o in read_tree(samples)}


def _read(outcomes: dict[str, FileOutcome], relpath: str) -> list[Record]:
    o = outcomes[relpath]
    assert o.status is Status.READ, o.reason
    assert o.reason == ""
    return o.records


# -- the whole tree ----------------------------------------------------------------------------------------


def test_every_sample_file_has_exactly_one_outcome(outcomes: dict[str, FileOutcome], samples: Path) -> None:
    on_disk = sorted(p.relative_to(samples).as_posix() for p in samples.rglob("*") if p.is_file())
    assert sorted(outcomes) == on_disk
    assert len(on_disk) == 22
    assert Counter(o.status for o in outcomes.values()) == {
        Status.READ: 8,
        Status.SKIPPED: 11,
        Status.QUARANTINED: 3,
    }


def test_the_eight_in_scope_messages_are_read_with_records(outcomes: dict[str, FileOutcome]) -> None:
    read = {rel for rel, o in outcomes.items() if o.status is Status.READ}
    assert read == set(IN_SCOPE_FILES)
    counts = {rel.split("/")[4]: len(outcomes[rel].records) for rel in IN_SCOPE_FILES}
    assert counts == {
        "ADT-00": 2,
        "ADT-61": 4,
        "PPR-01": 1,
        "OMP-11": 2,
        "OMP-01": 3,
        "OMP-02": 3,
        "OMP-12": 1,
        "OML-11": 3,
    }


def test_every_record_key_comes_from_its_file_name(outcomes: dict[str, FileOutcome]) -> None:
    for rel in IN_SCOPE_FILES:
        o = outcomes[rel]
        assert o.name is not None
        items = [r.key.item for r in o.records]
        assert len(set(items)) == len(items), f"{rel}: duplicate record keys"
        for r in o.records:
            assert r.key == _key(rel, r.key.item)
            assert r.key.patient_id == PID


def test_the_other_eleven_types_are_skipped_and_counted_by_type(outcomes: dict[str, FileOutcome]) -> None:
    skipped = [o for o in outcomes.values() if o.status is Status.SKIPPED]
    assert Counter(o.name.data_type for o in skipped if o.name) == SKIPPED_TYPES
    for o in skipped:
        assert o.records == []
        assert o.name is not None
        assert o.reason == f"data type {o.name.data_type} is not backed up"


def test_pid3_differing_from_the_file_name_is_only_a_warning(outcomes: dict[str, FileOutcome]) -> None:
    # ADT-61 (12345678), PPR-01 (1234567890) and OML-11 (0001000052) carry other patient IDs in PID-3.
    warned = {rel for rel in IN_SCOPE_FILES if outcomes[rel].warnings}
    assert warned == {ADT61, PPR01, OML11}
    for rel in warned:
        assert outcomes[rel].status is Status.READ
        assert outcomes[rel].warnings == ["PID-3 differs from the file's patient ID"]


# -- record contents ---------------------------------------------------------------------------------------


def test_adt00_patient_and_al1_allergy(outcomes: dict[str, FileOutcome]) -> None:
    assert _read(outcomes, ADT00) == [
        Patient(
            key=_key(ADT00, "PID"),
            family_kanji="患者",
            given_kanji="太郎",
            family_kana="カンジャ",
            given_kana="タロウ",
            birth_date="1948-04-05",
            sex="M",
            postal_code="422-8033",
            address="静岡県静岡市登呂１−３−５",
        ),
        Allergy(
            key=_key(ADT00, "AL1.1"),
            category=Coding("DA", "薬剤アレルギー", "HL70127"),
            allergen=Coding("1", "ペニシリン", "99XYZ"),
        ),
    ]


def test_adt61_four_iam_allergies(outcomes: dict[str, FileOutcome]) -> None:
    mild = Coding("MI", "軽度", "HL70128")
    moderate = Coding("MO", "中等度", "HL70128")
    assert _read(outcomes, ADT61) == [
        Allergy(
            key=_key(ADT61, "IAM.1"),
            category=Coding("LA", "花粉アレルギー", "HL70127"),
            allergen=Coding("5A1002216023023", "スギ", "JC10"),
            severity=mild,
            reaction="目のかゆみ",
            onset="1996-01",
            action="A",
        ),
        Allergy(
            key=_key(ADT61, "IAM.2"),
            category=Coding("FA", "食物アレルギー", "HL70127"),
            allergen=Coding("5A1002411023006", "ソバ", "JC10"),
            severity=moderate,
            reaction="湿疹",
            onset="小学校低学年の頃",  # IAM-12 onset text when IAM-11 is empty
            action="A",
        ),
        Allergy(
            key=_key(ADT61, "IAM.3"),
            category=Coding("EA", "環境アレルギー", "HL70127"),
            allergen=Coding("5A1102700023023", "ハウスダスト", "JC10"),
            severity=mild,
            reaction="くしゃみ",
            onset="2003-02",
            action="A",
        ),
        Allergy(
            key=_key(ADT61, "IAM.4"),
            category=Coding("DA", "薬剤アレルギー", "HL70127"),
            allergen=Coding("106824501", "アリナミン", HOT9),
            severity=moderate,
            reaction="のどの渇きが止まらない",
            onset="2007-07-10",
            action="A",
        ),
    ]


def test_ppr01_main_diagnosis(outcomes: dict[str, FileOutcome]) -> None:
    assert _read(outcomes, PPR01) == [
        Condition(
            key=_key(PPR01, "1"),
            code=Coding("20054174", "胃炎", "MDCDX2"),
            icd10="K297",
            name="胃炎",
            onset="2011-08-31",
            recorded="2011-08-31",
            resolved="2011-09-15",  # PRB-9 as the sample writes it
            outcome=Coding("N", "回復せず", "HL70241"),
            main=True,
            action="AD",
            instance_id="123456789012345",
        )
    ]


def test_omp01_three_drugs_with_rp_numbers(outcomes: dict[str, FileOutcome]) -> None:
    tid = Coding("1013044400000000", "内服・経口・１日３回朝昼夕食後", "JAMISDP01")
    bid = Coding("1012040400000000", "内服・経口・１日２回朝夕食後", "JAMISDP01")
    common: dict[str, Any] = {
        "event": "order",
        "route": PO,
        "start": "2011-07-01T00:00",
        "ordered_at": "2011-07-01T10:30:45",
    }
    assert _read(outcomes, OMP01) == [
        Prescription(
            key=_key(OMP01, "1"),
            drug=Coding("108665201", "ダーゼン錠（５mg)", HOT9),
            amount="1",
            unit=TAB,
            total_daily="3",
            dispense_amount="15",
            dispense_unit=TAB,
            usage=tid,
            days="5",
            rp="1",
            **common,
        ),
        Prescription(
            key=_key(OMP01, "2"),
            drug=Coding("110626901", "パンスポリンＴ錠（１００mg)", HOT9),
            amount="2",
            unit=TAB,
            total_daily="6",
            dispense_amount="30",
            dispense_unit=TAB,
            usage=tid,
            days="5",
            rp="1",
            **common,
        ),
        Prescription(
            key=_key(OMP01, "3"),
            # The guideline sample spells it アレピアチン (the product is アレビアチン).
            drug=Coding("100607002", "アレピアチン１０倍散", HOT9),
            amount="50",
            unit=MG,
            dosage_form=Coding("PWD", "散剤", "MR9P"),
            total_daily="100",
            dispense_amount="1400",
            dispense_unit=MG,
            usage=bid,
            days="14",
            rp="2",
            **common,
        ),
    ]


def test_omp11_administrations(outcomes: dict[str, FileOutcome]) -> None:
    common: dict[str, Any] = {
        "event": "administration",
        "unit": TAB,
        "route": PO,
        "start": "2011-07-01T08:30",
        "end": "2011-07-01T08:30",
        "ordered_at": "2011-06-30T14:15:00",
        "rp": "1",
        "status": "CP",
    }
    assert _read(outcomes, OMP11) == [
        Prescription(
            key=_key(OMP11, "1.1"), drug=Coding("108665201", "ダーゼン錠（５mg)", HOT9), amount="1", **common
        ),
        Prescription(
            key=_key(OMP11, "1.2"),
            drug=Coding("110626901", "パンスポリンＴ錠（１００mg)", HOT9),
            amount="2",
            **common,
        ),
    ]


def test_omp02_three_injection_orders(outcomes: dict[str, FileOutcome]) -> None:
    records = _read(outcomes, OMP02)
    assert len(records) == 3
    windows = [
        ("2011-07-01T08:00", "2011-07-01T13:00", "2011-07-01T01:24:10"),
        ("2011-07-01T13:00", "2011-07-01T18:00", "2009-07-01T01:24:10"),
        ("2011-07-01T18:00", "2011-07-01T23:00", "2009-07-01T01:24:10"),
    ]
    for n, (r, (start, end, ordered)) in enumerate(zip(records, windows, strict=True), start=1):
        assert isinstance(r, Injection)
        assert r.key == _key(OMP02, str(n))
        assert r.event == "order"
        assert r.components == (
            InjectionComponent("B", SOLITA, "1", Coding("HON", "本", "MR9P")),
            InjectionComponent("A", ADONA, "1", Coding("AMP", "アンプル", "MR9P")),
        )
        assert r.total_amount == "510"
        assert r.unit == Coding("ML", "ミリリットル", "MR9P")
        assert r.rate == "102 ml/hr"
        assert r.route == IV
        assert (r.start, r.end, r.ordered_at) == (start, end, ordered)
        assert r.instructions.startswith("５時間一定速度で")


def test_injection_instructions_do_not_carry_the_table_id(outcomes: dict[str, FileOutcome]) -> None:
    order = _read(outcomes, OMP02)[0]
    given = _read(outcomes, OMP12)[0]
    assert isinstance(order, Injection)
    assert isinstance(given, Injection)
    assert (order.instructions, given.instructions) == ("５時間一定速度で", "左手に実施")


def test_omp12_administration(outcomes: dict[str, FileOutcome]) -> None:
    records = _read(outcomes, OMP12)
    assert len(records) == 1
    r = records[0]
    assert isinstance(r, Injection)
    assert r.key == _key(OMP12, "1")
    assert r.event == "administration"
    assert r.components == (
        InjectionComponent("", SOLITA, "1", Coding("HON", "本", "MR9P")),
        InjectionComponent("", ADONA, "1", Coding("AMP", "アンプル", "MR9P")),
    )
    assert r.rate == "102ml/hr"
    assert r.route == IV
    assert (r.start, r.end) == ("2011-07-01T08:05:21", "2011-07-01T13:05:43")
    assert r.ordered_at == "2011-07-01T11:36:13"
    assert r.status == "CP"
    assert r.instructions.startswith("左手に実施")


def test_oml11_three_lab_results(outcomes: dict[str, FileOutcome]) -> None:
    common: dict[str, Any] = {
        "value_type": "NM",
        "status": "F",
        "observed_at": "2011-12-19T15:00",
        "specimen": SERUM,
        "battery": HEMATOLOGY,
    }
    assert _read(outcomes, OML11) == [
        LabResult(
            key=_key(OML11, "1.1"),
            code=Coding("3A016000002327102", "A/G比", "JC10"),
            value="1.7",
            reference_range="1.2-2.0",
            **common,
        ),
        LabResult(
            key=_key(OML11, "1.2"),
            code=Coding("3A010000002327101", "総蛋白", "JC10"),
            value="7.2",
            unit="g/dl",
            reference_range="6.70-8.3",
            **common,
        ),
        LabResult(
            key=_key(OML11, "1.3"),
            code=Coding("3A015000002327101", "アルブミン", "JC10"),
            value="4.9",
            unit="g/dl",
            reference_range="3.7-5.5",
            **common,
        ),
    ]


def test_read_file_gives_the_same_outcome_as_the_walk(
    outcomes: dict[str, FileOutcome], samples: Path
) -> None:
    for rel, o in outcomes.items():
        one = read_file(str(samples), rel)
        assert (one.status, one.reason, one.records, one.warnings) == (
            o.status,
            o.reason,
            o.records,
            o.warnings,
        )


# -- the broken fixtures, check_tree and the CLI -----------------------------------------------------------


def test_broken_fixtures_are_quarantined_with_their_reasons(outcomes: dict[str, FileOutcome]) -> None:
    quarantined = {o.file_name: o for o in outcomes.values() if o.status is Status.QUARANTINED}
    assert {name: o.reason for name, o in quarantined.items()} == QUARANTINE_REASONS
    assert quarantined[WRONG_FOLDER].relpath == f"{BROKEN_DIR}/ADT-31/{WRONG_FOLDER}"
    for o in quarantined.values():
        assert o.records == []
        assert o.relpath.startswith(BROKEN_DIR)


@pytest.mark.parametrize("workers", [1, 2])
def test_check_tree_reports_exactly_the_three_broken_files(samples: Path, workers: int) -> None:
    rep = check_tree(samples, workers=workers)
    assert (rep.files, rep.read, rep.skipped, rep.quarantined, rep.patients) == (22, 8, 11, 3, 1)
    assert {q.file: q.reason for q in rep.quarantine} == QUARANTINE_REASONS
    assert dict(rep.skipped_by_type) == SKIPPED_TYPES
    assert dict(rep.records_by_kind) == {
        "allergy": 5,
        "condition": 1,
        "injection": 4,
        "lab": 3,
        "patient": 1,
        "prescription": 5,
    }
    assert (rep.first_date, rep.last_date) == ("20110630", "20111220")


@pytest.mark.integration
def test_cli_check_json_lists_the_quarantined_files(samples: Path) -> None:
    result = CliRunner().invoke(app, ["agent", "check", "--ssmix2", str(samples), "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == 22
    assert (report["read"], report["skipped"], report["quarantined"]) == (8, 11, 3)
    assert {q["file"]: q["reason"] for q in report["quarantine"]} == QUARANTINE_REASONS
    assert sorted(q["path"] for q in report["quarantine"]) == sorted(
        [
            f"{BROKEN_DIR}/ADT-31/{WRONG_FOLDER}",
            f"{BROKEN_DIR}/OMP-11/{FAKE_SEGMENTS_0}",
            f"{BROKEN_DIR}/OMP-11/{FAKE_SEGMENTS_1}",
        ]
    )
    assert report["skipped_by_type"] == SKIPPED_TYPES
    assert report["date_range"] == {"first": "2011-06-30", "last": "2011-12-20"}
    assert set(report["by_type"]) == {
        "ADT-00",
        "ADT-61",
        "PPR-01",
        "OMP-01",
        "OMP-02",
        "OMP-11",
        "OMP-12",
        "OML-11",
    }

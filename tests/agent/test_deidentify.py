"""De-identification at the source: the linkage and pseudonym test vectors of docs/research-stream.md, the
research form of each record kind, and a fuzz test that real SS-MIX2 messages full of names, addresses,
phone numbers and free text come out with none of it."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
import tempfile
from datetime import date
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.deidentify import (
    Pseudonymizer,
    age_at,
    birth_of,
    deidentify,
    derive_research_secret,
    iso_date,
    number,
    unit_of,
)
from agent.linkage import (
    generate_linkage_key,
    link_hash,
    load_linkage_key,
    normalize_kana_v1,
    write_linkage_key,
)
from agent.ssmix2.reader import Status, read_file
from hakobune.errors import ConfigError, InputError
from hakobune.records import (
    Allergy,
    Coding,
    Condition,
    Injection,
    InjectionComponent,
    LabResult,
    Patient,
    Prescription,
    RecordKey,
)
from tests.conftest import msh, ssmix_relpath, write_message

KEY = bytes(range(32))
P = Pseudonymizer(derive_research_secret(bytes(32)), KEY)

# --- test vectors (docs/research-stream.md) ---------------------------------------------------------------

YAMADA = "fae149f744034c2b2da69f8f4875eaecb88b2ec2eb6eec2cc6e2e0f6d3ce7b3b"
SAITO = "8072acbb47719d4bee00b779ef047ef5e20e7667b845dae0d6f47c26c5277b84"


def test_linkage_v1_test_vectors() -> None:
    assert link_hash(KEY, "ヤマダ", "タロウ", "1980-01-02", "M") == YAMADA
    assert link_hash(KEY, "サイトウ", "キョウコ", "1975-03-04", "F") == SAITO
    # The vector is HMAC-SHA256 over exactly the documented bytes.
    message = "hakobune/link/v1\x00ヤマダタロウ\x0019800102\x00M".encode()
    assert hmac.new(KEY, message, hashlib.sha256).hexdigest() == YAMADA


@pytest.mark.parametrize(
    ("family", "given", "birth", "sex"),
    [
        ("やまだ", "たろう", "19800102", "m"),  # hiragana, compact date, lower-case sex
        ("ﾔﾏﾀﾞ", "ﾀﾛｳ", "1980-01-02", "M"),  # half-width katakana (voiced mark composed)
        ("ヤマダ　タロウ", "", "1980-01-02", "M"),  # whole name in one field, ideographic space
        ("ヤマダ・", " タロウ ", "1980-01-02", "M"),
    ],
)
def test_the_same_person_written_differently_links(family: str, given: str, birth: str, sex: str) -> None:
    assert link_hash(KEY, family, given, birth, sex) == YAMADA


def test_small_kana_and_archaic_kana_fold() -> None:
    assert link_hash(KEY, "サイトウ", "キヨウコ", "1975-03-04", "F") == SAITO
    assert normalize_kana_v1("ｻｲﾄｳ", "ｷｮｳｺ") == "サイトウキヨウコ"
    assert normalize_kana_v1("ヲノ", "ゐゑ") == "オノイエ"
    assert normalize_kana_v1("スミス", "ｼﾞｮﾝ-smith") == "スミスジヨンーSMITH"


@pytest.mark.parametrize(
    ("family", "given", "birth", "sex"),
    [
        ("ヤマダ", "ジロウ", "1980-01-02", "M"),
        ("ヤマダ", "タロウ", "1980-01-03", "M"),
        ("ヤマダ", "タロウ", "1980-01-02", "F"),
        ("ヤマダ", "タロウ", "1980-01-02", "X"),  # unknown sex counts as U, not M
    ],
)
def test_other_people_do_not_link(family: str, given: str, birth: str, sex: str) -> None:
    assert link_hash(KEY, family, given, birth, sex) != YAMADA


def test_no_link_without_a_name_or_a_real_birth_date() -> None:
    assert link_hash(KEY, "", " ", "1980-01-02", "M") is None
    assert link_hash(KEY, "ヤマダ", "タロウ", "", "M") is None
    assert link_hash(KEY, "ヤマダ", "タロウ", "1980-02-30", "M") is None
    with pytest.raises(ValueError):
        link_hash(b"short", "ヤマダ", "タロウ", "1980-01-02", "M")


def test_pseudonym_test_vectors() -> None:
    secret = derive_research_secret(bytes(32))
    assert secret.hex() == "65643689bc230f667296ec8308c56f2c5d89bffd34ca0297277071561f2ac2ab"
    assert P.pseudonym("0000123456") == "aaf17e77d4b801edb4fcd6b84c474f1d"
    assert P.order_hash("0000123456", "000000000000001") == "0e4b1428ac2fadcf"
    # Another hospital (another token key) gives another pseudonym for the same patient ID.
    other = Pseudonymizer(derive_research_secret(b"\x01" * 32), KEY)
    assert other.pseudonym("0000123456") != P.pseudonym("0000123456")
    assert P.order_hash("0000123457", "000000000000001") != P.order_hash("0000123456", "000000000000001")


# --- the linkage key file ---------------------------------------------------------------------------------


def test_linkage_key_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "linkage.key"
    generate_linkage_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_linkage_key(path)) == 32
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_linkage_key(path, KEY)
    path.chmod(0o644)
    with pytest.raises(InputError, match="readable by others"):
        load_linkage_key(path)
    bad = tmp_path / "bad.key"
    bad.write_text("c2hvcnQ=\n")
    bad.chmod(0o600)
    with pytest.raises(InputError, match="not a linkage key"):
        load_linkage_key(bad)


# --- the research form of each kind -----------------------------------------------------------------------


def _key(dtype: str, item: str = "1", care: str = "20240401") -> RecordKey:
    return RecordKey("0000123456", care, dtype, "000000000000001", item)


def _doc(record: object, birth: str | None = "1950-04-02") -> dict[str, object]:
    data = deidentify(P, record, birth)  # type: ignore[arg-type]
    assert data.isascii()
    doc = orjson.loads(data)
    assert doc["v"] == 1 and doc["kind"] == record.kind  # type: ignore[attr-defined]
    key = doc["r"]["key"]
    assert key["pid"] == P.pseudonym("0000123456") and key["order"] == P.order_hash(
        "0000123456", "000000000000001"
    )
    return doc["r"]  # type: ignore[no-any-return]


def test_patient_keeps_link_birth_month_and_sex_only() -> None:
    r = _doc(
        Patient(
            _key("ADT-00", "PID", "-"),
            family_kanji="山田",
            given_kanji="太郎",
            family_kana="ヤマダ",
            given_kana="タロウ",
            birth_date="1980-01-02",
            sex="M",
            postal_code="100-0001",
            address="東京都千代田区千代田１－１",
        )
    )
    assert r == {"key": r["key"], "link": YAMADA, "birth_ym": "1980-01", "sex": "M"}


def test_condition_drops_names_and_instance_ids() -> None:
    r = _doc(
        Condition(
            _key("PPR-01", care="-"),
            code=Coding("20054174", "胃炎", "MDCDX2"),
            icd10="K297",
            name="胃炎（山田医師所見）",
            onset="2020-03-01",
            recorded="2020-04-02T10:00",
            outcome=Coding("N", "回復せず", "HL70241"),
            main=True,
            action="AD",
            instance_id="000012345600001",
        )
    )
    assert r == {
        "key": r["key"],
        "date": "2020-04-02",
        "age": 70,  # the day of the 70th birthday counts
        "icd10": "K297",
        "medis": "20054174",
        "onset": "2020-03-01",
        "resolved": None,
        "outcome": "N",
        "main": True,
    }


def test_allergy_prescription_injection_lab_keep_codes_and_values() -> None:
    a = _doc(
        Allergy(
            _key("ADT-61"),
            category=Coding("FA", "食物アレルギー", "HL70127"),
            allergen=Coding("", "ソバ", "JC10"),  # text where a code belongs: dropped
            reaction="全身に湿疹",
        )
    )
    assert a == {
        "key": a["key"],
        "date": "2024-04-01",
        "age": 73,
        "category": "FA",
        "code": None,
        "system": "JC10",
    }
    rx = _doc(
        Prescription(
            _key("OMP-01"),
            event="order",
            drug=Coding("108665201", "ダーゼン錠", "HOT9"),
            amount="1.5",
            unit=Coding("TAB", "錠", "MR9P"),
            days="14",
            usage=Coding("1013044400000000", "内服・経口・１日３回", "JAMISDP01"),
        )
    )
    assert rx == {
        "key": rx["key"],
        "date": "2024-04-01",
        "age": 73,
        "event": "order",
        "code": "108665201",
        "system": "HOT9",
        "amount": 1.5,
        "unit": "TAB",
        "days": 14,
    }
    inj = _doc(
        Injection(
            _key("OMP-02"),
            event="order",
            components=(
                InjectionComponent(
                    "B", Coding("620007329", "ソリタ", "HOT9"), "500", Coding("ML", "ml", "MR9P")
                ),
            ),
            instructions="ゆっくり点滴　担当 佐藤",
        )
    )
    assert inj["components"] == [
        {"role": "B", "code": "620007329", "system": "HOT9", "amount": 500.0, "unit": "ML"}
    ]
    assert "instructions" not in inj
    nm = _doc(
        LabResult(
            _key("OML-11", "1.1"),
            Coding("3A010000002327101", "総蛋白", "JC10"),
            "NM",
            "7.2",
            "×10^4/μL",
            "6.7-8.3",
            "H",
            "F",
        )
    )
    assert nm == {
        "key": nm["key"],
        "date": "2024-04-01",
        "age": 73,
        "code": "3A010000002327101",
        "value": 7.2,
        "unit": "x10^4/uL",
        "flag": "H",
    }
    st_ = _doc(LabResult(_key("OML-11", "1.2"), Coding("5E0", "所見", "JC10"), "ST", "陰性（山田）", "倍"))
    assert st_["value"] is None and st_["unit"] is None


@pytest.mark.parametrize(
    ("birth", "when", "age"),
    [
        ("1950-04-02", "2020-04-01", 69),
        ("1950-04-02", "2020-04-02", 70),
        ("2000-02-29", "2021-02-28", 20),
        ("2000-02-29", "2021-03-01", 21),
        ("2000-01-01", "1999-12-31", None),
        (None, "2020-01-01", None),
        ("2000-01-01", None, None),
    ],
)
def test_age_is_completed_years(birth: str | None, when: str | None, age: int | None) -> None:
    assert age_at(birth, when) == age


def test_value_rules() -> None:
    assert iso_date("20240401") == "2024-04-01" and iso_date("2024-04-01T10:00") == "2024-04-01"
    assert iso_date("-") is None and iso_date("2024-02-30") is None and iso_date("") is None
    assert number("<0.5") is None and number("nan") is None and number("12") == 12.0
    assert unit_of("mg/dL") == "mg/dL" and unit_of("ｍｇ") is None and unit_of("g dl") is None
    older = Patient(_key("ADT-00", "PID", "20200101"), birth_date="1950-01-01")
    current = Patient(_key("ADT-00", "PID", "-"), birth_date="1951-01-01")
    assert birth_of([older, current]) == "1951-01-01" and birth_of([older]) == "1950-01-01"


def test_research_config_needs_both_keys(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "agent.toml"
    text = example.read_text()
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_config(tmp_path)
    assert cfg.research is not None and cfg.research.linkage_key == tmp_path / "keys/linkage.key"
    (tmp_path / "agent.toml").write_text(text.replace('linkage_key = "keys/linkage.key"', ""))
    with pytest.raises(ConfigError, match="go together"):
        load_config(tmp_path)
    (tmp_path / "agent.toml").write_text(text.split("[research]")[0])
    assert load_config(tmp_path).research is None


# --- fuzz: real messages through the reader and de-identification -----------------------------------------

_KANJI = (
    "山田太郎佐藤鈴木高橋田中伊藤渡辺中村小林加藤吉田山本斎藤松本井上木村林清水森池"
    "東京都千代区大阪府市町番地号丁目病院医師胃炎痛発熱咳"
)
_KANA = (
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
    "ガギグゲゴァィゥェォッャュョー"
)
_HIRA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわん"
_ASCII_TEXT = "ghijklmnopqrstuvwxyzGHIJKLMNOPRSTUVWYZ "

jp_text = st.text(alphabet=_KANJI + _KANA + _HIRA, min_size=1, max_size=12)
kana = st.text(alphabet=_KANA, min_size=1, max_size=8)
# ASCII free text carries the marker "ZQX" (never a code, hex digit or date) so it can be looked for.
ascii_text = st.text(alphabet=_ASCII_TEXT, min_size=2, max_size=12).map(lambda t: "ZQX" + t.strip() + "ZQX")
free_text = st.one_of(jp_text, ascii_text)
patient_ids = st.from_regex(r"9[0-9]{9}", fullmatch=True)
phones = st.from_regex(r"0[1-9][0-9]{8,9}", fullmatch=True)
postals = st.from_regex(r"[1-9][0-9]{2}-[0-9]{4}", fullmatch=True)
orders = st.from_regex(r"[1-8][0-9]{14}", fullmatch=True)


@st.composite
def people(draw: st.DrawFn) -> dict[str, str]:
    return {
        "pid": draw(patient_ids),
        "family": draw(jp_text),
        "given": draw(jp_text),
        "family_kana": draw(kana),
        "given_kana": draw(kana),
        "address": draw(jp_text) + draw(st.from_regex(r"[0-9]{1,3}番地", fullmatch=True)),
        "postal": draw(postals),
        "phone": draw(phones),
        "doctor": draw(jp_text),
        "order": draw(orders),
        "reaction": draw(free_text),
        "condition": draw(free_text),
        "lab_text": draw(free_text),
        "note": draw(free_text),
        "birth": draw(st.dates(min_value=date(1920, 1, 1))).strftime("%Y%m%d"),
    }


def _messages(p: dict[str, str]) -> dict[str, list[str]]:
    pid_seg = (
        f"PID|0001||{p['pid']}^^^^PI||{p['family']}^{p['given']}^^^^^L^I~{p['family_kana']}^{p['given_kana']}"
        f"^^^^^L^P||{p['birth']}|F|||^^^^{p['postal']}^JPN^H^{p['address']}||^PRN^PH^^^^^^^^^{p['phone']}"
    )
    orc = f"ORC|NW|{p['order']}||1|||||20240401103045|||D123^{p['doctor']}^{p['doctor']}"
    return {
        "ADT-00": [
            msh("ADT-00"),
            pid_seg,
            f"AL1|1|DA^薬剤アレルギー^HL70127|1^ペニシリン^99XYZ|SV^重症^HL70128|{p['reaction']}",
        ],
        "PPR-01": [
            msh("PPR-01"),
            pid_seg,
            f"PRB|AD|20240401|20054174^{p['condition']}^MDCDX2|1|||20240331||||||||||20240331|{p['condition']}|1",
        ],
        "OML-11": [
            msh("OML-11"),
            pid_seg,
            "SPM|1|1||023^血清^JC10",
            "OBR|1|1|1|E001^血液学的検査^99O03|||20240401",
            f"OBX|1|ST|3A010000002327101^総蛋白^JC10||{p['lab_text']}|g/dl^g/dl^99XYZ|6.70-8.3||||F|||202404011500",
            "OBX|2|NM|3D010000001926101^血糖^JC10||95|mg/dl^mg/dl^99XYZ|70-109||||F",
        ],
        "OMP-12": [
            msh("OMP-12"),
            pid_seg,
            orc,
            f"RXA|0|1|20240401080521|20240401130543|620007329^ソリタ^HOT9|1|HON^本^MR9P||^{p['note']}",
            "RXR|IV^静脈内^HL70162",
        ],
    }


def _token(value: str) -> re.Pattern[bytes]:
    return re.compile(rb"(?<![0-9A-Za-z])" + re.escape(value.encode()) + rb"(?![0-9A-Za-z])")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(person=people())
def test_fuzz_no_identifier_or_free_text_survives(person: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out: list[bytes] = []
        for dtype, segments in _messages(person).items():
            care = "-" if dtype in ("ADT-00", "PPR-01") else "20240401"
            rel = ssmix_relpath(person["pid"], care, dtype, person["order"], timestamp="20240401120000000")
            write_message(root, rel, segments)
            outcome = read_file(str(root), rel)
            assert outcome.status is Status.READ, outcome.reason
            assert outcome.records
            birth = birth_of(outcome.records) or "1950-01-01"
            out += [deidentify(P, r, birth) for r in outcome.records]
    blob = b"\n".join(out)
    assert blob.isascii()  # so no kanji or kana name, address or Japanese free text can be in it
    assert b"ZQX" not in blob  # every ASCII free text carries this marker
    for identifier in (person["pid"], person["phone"], person["postal"], person["order"], person["birth"]):
        assert not _token(identifier).search(blob), identifier
    assert b'"birth_ym":"' + f"{person['birth'][:4]}-{person['birth'][4:6]}".encode() + b'"' in blob


def test_fuzz_messages_are_read_as_the_fuzz_expects() -> None:
    """The fuzz test's messages carry what it looks for: names, address, phone and free text are in the
    clinical records (or the raw message), so their absence from the research form means something."""
    p = {
        "pid": "9000000001",
        "family": "山田",
        "given": "太郎",
        "family_kana": "ヤマダ",
        "given_kana": "タロウ",
        "address": "東京都千代田区1番地",
        "postal": "100-0001",
        "phone": "0312345678",
        "doctor": "佐藤",
        "order": "123456789012345",
        "reaction": "ZQXrashZQX",
        "condition": "胃炎",
        "lab_text": "ZQXnegativeZQX",
        "note": "ゆっくり",
        "birth": "19800102",
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seen = b""
        for dtype, segments in _messages(p).items():
            care = "-" if dtype in ("ADT-00", "PPR-01") else "20240401"
            rel = ssmix_relpath(p["pid"], care, dtype, p["order"], timestamp="20240401120000000")
            write_message(root, rel, segments)
            outcome = read_file(str(root), rel)
            assert outcome.status is Status.READ, outcome.reason
            seen += b"".join(orjson.dumps(r) for r in outcome.records)
    for value in (
        "山田",
        "ヤマダ",
        "東京都千代田区1番地",
        "100-0001",
        "ZQXrashZQX",
        "胃炎",
        "ZQXnegativeZQX",
        "ゆっくり",
    ):
        assert value.encode() in seen, value

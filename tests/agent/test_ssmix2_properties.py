"""Properties of the SS-MIX2 reader: hostile text round-trips, no input raises, python-hl7 agrees.

Every property reads real files through :func:`agent.ssmix2.reader.read_file`, so name checks, folder checks,
decoding, validation and mapping are all on the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import hl7 as python_hl7
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.ssmix2.message import PAD, parse
from agent.ssmix2.reader import FileOutcome, Status, read_file
from hakobune import records
from hakobune.errors import UnreadableMessage
from hakobune.hl7 import decode, encode_message, escape, to_iso, to_iso_python
from hakobune.records import Allergy, Coding, Condition, LabResult, Patient, Prescription, Record, RecordKey
from tests.conftest import make_message, msh, ssmix_relpath, write_tree

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PATIENT_ID = "1234567"
CARE_DATE = "20240401"
ORDER_NO = "000000000000001"


def _jis_body(ch: str) -> bytes:
    return ch.encode("iso2022_jp").removeprefix(b"\x1b$B").removesuffix(b"\x1b(B")


def _round_trips(ch: str) -> bool:
    """True when ``ch`` comes back unchanged both through the strict codec and through the CP50220 fallback
    (which a message takes as soon as it holds one NEC/IBM character).  The decode-consistency test below
    pins the characters that once differed between the two."""
    return (
        decode(encode_message([ch])) == f"{ch}\r\x1c" and decode(encode_message([f"{ch}①"])) == f"{ch}①\r\x1c"
    )


def _hostile_jis() -> list[str]:
    out = []
    for cp in range(0x3000, 0xA000):
        ch = chr(cp)
        try:
            body = _jis_body(ch)
        except UnicodeEncodeError:
            continue
        if any(b in b"|^~\\&" for b in body) and _round_trips(ch):
            out.append(ch)
    return out


#: JIS X 0208 characters whose ISO-2022-JP bytes hold an HL7 delimiter (京 is ``5~``): hundreds of them.
HOSTILE_JIS = _hostile_jis()
HALF_WIDTH_KANA = "ｱｲｳｴｵｶﾞﾊﾟｰｯｬﾝ｡｢｣､･"
NEC_IBM = "①②⑳ⅠⅩⅰ㈱№∵≒髙﨑德"
ALPHABET = [
    *"abcXYZ0189 .-/()",
    *"|^~\\&",
    *HOSTILE_JIS,
    *"あいうアイウ患者太郎山田花子東京都",
    *HALF_WIDTH_KANA,
    *NEC_IBM,
]


def test_the_hostile_alphabet_is_hostile() -> None:
    assert "京" in HOSTILE_JIS
    assert _jis_body("京") == b"5~"
    assert len(HOSTILE_JIS) > 100
    for ch in HALF_WIDTH_KANA + NEC_IBM:
        assert _round_trips(ch), ch


texts = st.text(alphabet=st.sampled_from(ALPHABET), max_size=12)
nonempty = st.text(alphabet=st.sampled_from(ALPHABET), min_size=1, max_size=12)
codes = st.text(alphabet="0123456789ABCDEFZ", min_size=1, max_size=12)
numbers = st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,2})?\Z")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ssmix2-properties")


def _read(root: Path, data_type: str, raw: bytes) -> FileOutcome:
    rel = ssmix_relpath(PATIENT_ID, CARE_DATE, data_type, ORDER_NO)
    # A fresh file each time: truncating one in place makes ext4 flush it on close (auto_da_alloc).
    (root / rel).unlink(missing_ok=True)
    write_tree(root, {rel: raw})
    return read_file(str(root), rel)


def _key(data_type: str, item: str) -> RecordKey:
    return RecordKey(PATIENT_ID, CARE_DATE, data_type, ORDER_NO, item)


def _seg(sid: str, fields: dict[int, str]) -> str:
    """A segment from {field number: already-escaped value}."""
    values = [""] * max(fields)
    for n, v in fields.items():
        values[n - 1] = v
    return "|".join([sid, *values])


# -- generated messages and the records they must give -----------------------------------------------------


@dataclass(frozen=True)
class Generated:
    data_type: str
    segments: list[str]
    expected: list[Record]


@st.composite
def adt00(draw: st.DrawFn) -> Generated:
    fam, giv, fam_k, giv_k, address = (draw(texts) for _ in range(5))
    postal = draw(st.from_regex(r"\A[0-9]{3}-[0-9]{4}\Z"))
    allergen, display, reaction = draw(codes), draw(texts), draw(texts)
    e = escape
    pid = _seg(
        "PID",
        {
            1: "0001",
            3: f"{PATIENT_ID}^^^^PI",
            5: f"{e(fam)}^{e(giv)}^^^^^L^I~{e(fam_k)}^{e(giv_k)}^^^^^L^P",
            7: "19480405",
            8: "F",
            11: f"^^^^{postal}^JPN^H^{e(address)}",
        },
    )
    al1 = _seg(
        "AL1",
        {1: "1", 2: "FA^食物^HL70127", 3: f"{allergen}^{e(display)}^99XYZ", 5: e(reaction), 6: "20240101"},
    )
    expected: list[Record] = [
        Patient(_key("ADT-00", "PID"), fam, giv, fam_k, giv_k, "1948-04-05", "F", postal, address),
        Allergy(
            _key("ADT-00", "AL1.1"),
            category=Coding("FA", "食物", "HL70127"),
            allergen=Coding(allergen, display, "99XYZ"),
            reaction=reaction,
            onset="2024-01-01",
        ),
    ]
    return Generated("ADT-00", [msh("ADT-00"), pid, al1], expected)


@st.composite
def ppr01(draw: st.DrawFn) -> Generated:
    code, display, name = draw(codes), draw(texts), draw(texts)
    prb = _seg(
        "PRB",
        {1: "AD", 2: "20240401", 3: f"{code}^{escape(display)}^MDCDX2", 4: "1", 7: "20240331", 16: "20240330"}
        | {10: "K297^^I10", 17: escape(name), 18: "1"},
    )
    expected: list[Record] = [
        Condition(
            _key("PPR-01", "1"),
            code=Coding(code, display, "MDCDX2"),
            icd10="K297",
            name=name or display,
            onset="2024-03-30",
            recorded="2024-03-31",
            main=True,
            action="AD",
            instance_id="1",
        )
    ]
    return Generated("PPR-01", make_message("PPR-01", body=[prb]), expected)


@st.composite
def omp01(draw: st.DrawFn) -> Generated:
    body: list[str] = []
    expected: list[Record] = []
    for n in range(1, draw(st.integers(1, 3)) + 1):
        drug, display, unit_display = draw(codes), draw(texts), draw(nonempty)
        amount, dispense, days = draw(numbers), draw(numbers), str(draw(st.integers(1, 90)))
        usage, usage_display = draw(codes), draw(texts)
        rp = str(draw(st.integers(1, 9)))
        body += [
            f"ORC|NW|{ORDER_NO}||{rp}|||||20240401103045",
            _seg(
                "RXE",
                {2: f"{drug}^{escape(display)}^HOT9", 3: amount, 5: f"TAB^{escape(unit_display)}^MR9P"}
                | {10: dispense, 11: "TAB^錠^MR9P"},
            ),
            f"TQ1|1||{usage}&{escape(usage_display)}&JAMISDP01|||{days}^d|20240401",
            "RXR|PO^口^HL70162",
        ]
        expected.append(
            Prescription(
                _key("OMP-01", str(n)),
                event="order",
                drug=Coding(drug, display, "HOT9"),
                amount=amount,
                unit=Coding("TAB", unit_display, "MR9P"),
                dispense_amount=dispense,
                dispense_unit=Coding("TAB", "錠", "MR9P"),
                usage=Coding(usage, usage_display, "JAMISDP01"),
                days=days,
                route=Coding("PO", "口", "HL70162"),
                start="2024-04-01",
                ordered_at="2024-04-01T10:30:45",
                rp=rp,
            )
        )
    return Generated("OMP-01", make_message("OMP-01", body=body), expected)


@st.composite
def oml11(draw: st.DrawFn) -> Generated:
    specimen, battery = draw(texts), draw(texts)
    body = [f"SPM|1|1||023^{escape(specimen)}^JC10", f"OBR|1|1|1|E001^{escape(battery)}^99O03|||20240401"]
    expected: list[Record] = []
    for n in range(1, draw(st.integers(1, 3)) + 1):
        code, display, value, unit, ref = draw(codes), draw(texts), draw(texts), draw(texts), draw(texts)
        body.append(
            _seg(
                "OBX",
                {1: str(n), 2: "ST", 3: f"{code}^{escape(display)}^JC10", 5: escape(value), 6: escape(unit)}
                | {7: escape(ref), 11: "F", 14: "202404011500"},
            )
        )
        expected.append(
            LabResult(
                _key("OML-11", f"1.{n}"),
                code=Coding(code, display, "JC10"),
                value_type="ST",
                value=value,
                unit=unit,
                reference_range=ref,
                status="F",
                observed_at="2024-04-01T15:00",
                specimen=Coding("023", specimen, "JC10"),
                battery=Coding("E001", battery, "99O03"),
            )
        )
    return Generated("OML-11", make_message("OML-11", body=body), expected)


messages = st.one_of(adt00(), ppr01(), omp01(), oml11())


# -- (a) hostile text comes back exactly -------------------------------------------------------------------


@PROPERTY
@given(messages)
def test_hostile_text_round_trips_through_a_real_file(scratch: Path, gen: Generated) -> None:
    o = _read(scratch, gen.data_type, encode_message(gen.segments))
    assert o.status is Status.READ, o.reason
    assert o.warnings == []
    assert o.records == gen.expected


def test_kyo_and_its_kin_do_not_split_fields(scratch: Path) -> None:
    """A fixed example of the property: 京 (``5~``), ソ (``%=``) and a half-width kana name."""
    name = "京" + "".join(c for c in HOSTILE_JIS if c in "ソ表能予") + "ｷｮｳ"
    pid = f"PID|0001||{PATIENT_ID}^^^^PI||{name}^髙①^^^^^L^I||19480405|M"
    o = _read(scratch, "ADT-00", encode_message(make_message("ADT-00", pid=pid)))
    assert o.status is Status.READ, o.reason
    patient = o.records[0]
    assert isinstance(patient, Patient)
    assert (patient.family_kanji, patient.given_kanji) == (name, "髙①")


def test_jis_bytes_decode_the_same_whether_or_not_the_message_holds_nec_characters() -> None:
    drug = "ソリタ−Ｔ３号〜‖"  # as in the real OMP-02 sample (U+2212 MINUS SIGN)
    plain = decode(encode_message([drug]))
    with_nec = decode(encode_message([drug + "①"]))
    assert plain == f"{drug}\r\x1c"
    assert with_nec == f"{drug}①\r\x1c"


# -- (b) no input makes the reader raise -------------------------------------------------------------------


def _assert_handled(o: FileOutcome) -> None:
    assert o.status in (Status.READ, Status.QUARANTINED)
    if o.status is Status.QUARANTINED:
        assert o.reason
        assert "\n" not in o.reason and "\r" not in o.reason
        assert o.records == []


@PROPERTY
@given(st.binary(max_size=2048), st.sampled_from(["OMP-01", "ADT-00", "OML-11", "PPR-01"]))
@example(b"", "OMP-01")
@example(b"\x0b\x1c", "OMP-01")
@example(b"MSH|^~\\&\r", "ADT-00")
@example(b"MSH\x1c^~\\&|\r", "ADT-00")
@example(b"\x1b$B\x00\x00\x1b(B\r", "OMP-01")
@example(b"\x1b$(D\x7f\x7f\r", "OMP-01")
def test_arbitrary_bytes_never_raise(scratch: Path, raw: bytes, data_type: str) -> None:
    _assert_handled(_read(scratch, data_type, raw))


ESCAPES = [
    b"\x1b",
    b"\x1b$B",
    b"\x1b(B",
    b"\x1b(J",
    b"\x1b$@",
    b"\x1b$(D",
    b"\x1b$(Q",
    b"\x1b&@\x1b$B",
    b"\x1b$A",
]
BREAKS = [b"\r", b"\n", b"\r\n", b"\x1c", b"\x0b", b"|", b"^"]


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "esc", "break", "delete"]))
        if kind == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "esc":
            data[pos:pos] = draw(st.sampled_from(ESCAPES))
        elif kind == "break":
            data[pos:pos] = draw(st.sampled_from(BREAKS))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


#: Valid messages of every in-scope type, without half-width kana (the kana-mode tests cover those).
BASES = {
    t: encode_message(make_message(t)) for t in ("ADT-00", "ADT-61", "PPR-01", "OMP-01", "OMP-02", "OMP-11")
}
BASES |= {t: encode_message(make_message(t)) for t in ("OMP-12", "OML-11")}


@PROPERTY
@given(st.sampled_from(sorted(BASES)).flatmap(lambda t: st.tuples(st.just(t), mutations(BASES[t]))))
def test_mutated_valid_messages_never_raise(scratch: Path, case: tuple[str, bytes]) -> None:
    data_type, raw = case
    _assert_handled(_read(scratch, data_type, raw))


def test_kana_mode_not_closed_before_cr_does_not_raise(scratch: Path) -> None:
    raw = encode_message(make_message("OMP-01")).replace(b"|HIS|", b"|\x1b(I1\r", 1)
    _assert_handled(_read(scratch, "OMP-01", raw))


def test_kana_mode_control_bytes_are_not_merged_into_a_character() -> None:
    try:
        text = decode(b"MSH|\x1b(I\x01\r")
    except UnreadableMessage:
        return  # refusing the message is fine
    assert text.endswith("\r")  # keeping the terminator is fine; '″' is not


# -- (c) python-hl7 as an oracle ---------------------------------------------------------------------------


@FEW
@given(messages)
def test_fields_agree_with_python_hl7(gen: Generated) -> None:
    raw = encode_message(gen.segments)
    ours = parse(raw, gen.data_type).segments
    theirs = python_hl7.parse(decode(raw).rstrip("\x1c"))
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs, strict=True):
        fields = [str(f) for f in other]
        assert mine[: len(fields)] == fields
        assert all(f == "" for f in mine[len(fields) :])
        assert len(mine) >= PAD


# -- (d) records survive their canonical encoding ----------------------------------------------------------


@FEW
@given(messages)
def test_records_encode_decode_round_trip(scratch: Path, gen: Generated) -> None:
    o = _read(scratch, gen.data_type, encode_message(gen.segments))
    assert o.status is Status.READ, o.reason
    for r in o.records:
        data = records.encode(r)
        back = records.decode(data)
        assert back == r
        assert type(back) is type(r)
        assert records.encode(back) == data
        assert records.content_hash(back) == records.content_hash(r) == records.hash_encoded(data)


# -- (e) to_iso --------------------------------------------------------------------------------------------


@PROPERTY
@given(st.text(max_size=30) | st.from_regex(r"\A[0-9]{0,16}(\.[0-9]{0,4})?([+-][0-9]{4})?\Z"))
def test_to_iso_never_raises(value: str) -> None:
    assert isinstance(to_iso(value), str)


@PROPERTY
@given(
    st.from_regex(r"\A[0-9]{8}([0-9]{4}([0-9]{2})?)?\Z")
    | st.text(alphabet="0123456789²１", min_size=8, max_size=14)
    | st.text(max_size=16)
)
@example("20240431")  # a day the calendar lacks is kept as the Python code keeps it
@example("20240001")
@example("20241232")
@example("202404011")
def test_the_compiled_to_iso_gives_the_python_codes_text(value: str) -> None:
    if to_iso is to_iso_python:
        pytest.skip("compiled fast path not built")
    assert to_iso(value) == to_iso_python(value)


moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2099, 12, 31))


@PROPERTY
@given(moments, st.sampled_from(["date", "minute", "second", "fraction", "tz", "hour"]))
def test_to_iso_of_valid_dtm(moment: datetime, precision: str) -> None:
    date = moment.strftime("%Y%m%d")
    dtm, expected = {
        "date": (date, moment.strftime("%Y-%m-%d")),
        "hour": (moment.strftime("%Y%m%d%H"), moment.strftime("%Y-%m-%dT%H:00")),
        "minute": (moment.strftime("%Y%m%d%H%M"), moment.strftime("%Y-%m-%dT%H:%M")),
        "second": (moment.strftime("%Y%m%d%H%M%S"), moment.strftime("%Y-%m-%dT%H:%M:%S")),
        "fraction": (moment.strftime("%Y%m%d%H%M%S.%f")[:-3], moment.strftime("%Y-%m-%dT%H:%M:%S")),
        "tz": (moment.strftime("%Y%m%d%H%M%S") + "+0900", moment.strftime("%Y-%m-%dT%H:%M:%S")),
    }[precision]
    iso = to_iso(dtm)
    assert iso == expected
    assert datetime.fromisoformat(iso) <= moment
    assert to_iso(dtm[:6]) == moment.strftime("%Y-%m")
    assert to_iso(dtm[:4]) == moment.strftime("%Y")

"""The compiled mappers of lab results, prescription orders and administrations (agent/ssmix2/_fastmap.c)
against the Python mappers they stand in for.

Wherever it answers, the records and warnings must be exactly the Python mapper's (same values, same types,
same keys); where a segment is not what the reader makes (a field that is not a str), it must step aside
(None) and leave the warnings as they were.  The ASCII step of the compiled split is checked here too:
long ASCII runs cut at every offset by escapes, high bytes and delimiters.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.ssmix2 import mapping
from agent.ssmix2.layout import parse_name
from agent.ssmix2.message import PAD, Message, parse
from hakobune import hl7
from hakobune.errors import UnreadableMessage
from hakobune.hl7 import decode_python, split_standard, to_iso, unescape
from hakobune.records import Condition, LabResult, Record, RecordKey
from hakobune.synth import SSMIX2_DIR, generate
from tests.agent.test_fast_path import _outcome, _reference_outcome

Mapper = Callable[[mapping._Ctx, Message, list[str]], list[Record]]
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAME = parse_name("1234567_20240401_OML-11_000000000000001_20240401120000000_01_1")
RX_NAME = parse_name("1234567_20240401_OMP-01_000000000000001_20240401120000000_01_1")


def test_the_compiled_lab_mapper_is_built_where_ci_runs() -> None:
    if None in (mapping.fast_lab, mapping.fast_rx_order, mapping.fast_rx_given, mapping.fast_condition):
        if os.environ.get("CI"):
            pytest.fail("agent.ssmix2._fastmap is not built (make setup compiles it with gcc)")
        pytest.skip("compiled lab mapper not built here")


needs_fast = pytest.mark.skipif(
    None in (mapping.fast_lab, mapping.fast_rx_order, mapping.fast_rx_given, mapping.fast_condition),
    reason="compiled mappers not built",
)


def _both(segments: list[list[str]]) -> tuple[tuple[list[Record], list[str]], tuple[list[Record], list[str]]]:
    msg = Message(segments)
    ctx = mapping._Ctx(msg, NAME)
    fast_w: list[str] = []
    fast = mapping._map_oul(ctx, msg, fast_w)
    slow_w: list[str] = []
    slow = mapping._map_oul_python(ctx, msg, slow_w)
    return (fast, fast_w), (slow, slow_w)


def _padded(sid: str, fields: list[str]) -> list[str]:
    seg = [sid, *fields]
    return seg + [""] * (PAD - len(seg))


def _head() -> list[list[str]]:
    """A message's MSH and PID, as the reader pads them."""
    return [_padded("MSH", ["|", "^~\\&"]), _padded("PID", ["1", "", "1234567"])]


# Field text the lab mapper must treat with care: components, escapes, empties, kanji, long values.
_TEXT = st.text(alphabet="A1^~&\\FSTREX.br京齋 ", max_size=10)
_VTYPE = st.sampled_from(["NM", "ST", "CWE", "CE", "CNE", "TX", ""])
_DTM = st.sampled_from(["", "202404011500", "20240401", "2024040115", "bad", "20241301"])


@st.composite
def _obx(draw: st.DrawFn) -> list[str]:
    fields = [""] * 14
    fields[0] = "1"
    fields[1] = draw(_VTYPE)
    codes = st.sampled_from(["", "3A010000002327101^Na^JC10", "X^^", "^only text", "C\\S\\1"])
    fields[2] = draw(codes | _TEXT)
    fields[4] = draw(_TEXT)
    fields[5] = draw(_TEXT)
    fields[6] = draw(_TEXT)
    fields[7] = draw(st.sampled_from(["", "H", "L^low", "^"]) | _TEXT)
    fields[10] = draw(st.sampled_from(["F", "C", ""]))
    fields[13] = draw(_DTM)
    return _padded("OBX", fields)


_OTHER = st.one_of(
    st.builds(lambda t: _padded("SPM", ["1", "1", "", t]), _TEXT),
    st.builds(lambda t, d: _padded("OBR", ["1", "1", "1", t, "", "", d]), _TEXT, _DTM),
    st.just(_padded("NTE", ["1", "L", "comment"])),
)


@needs_fast
@MANY
@given(st.lists(st.one_of(_obx(), _OTHER), max_size=12))
@example([_padded("OBX", ["1", "CWE", "", "", "a^^b"])])  # no code: a warning, numbering goes on
def test_the_compiled_lab_mapper_gives_the_python_mappers_records(body: list[list[str]]) -> None:
    segments = [*_head(), *body]
    (fast, fast_w), (slow, slow_w) = _both(segments)
    assert fast == slow
    assert [type(r) for r in fast] == [type(r) for r in slow]
    assert [type(r.key) for r in fast] == [RecordKey] * len(fast)
    assert fast_w == slow_w


@needs_fast
def test_item_numbers_beyond_the_shared_strings_and_many_batteries() -> None:
    body: list[list[str]] = []
    for b in range(1, 11):
        body.append(_padded("OBR", ["1", "1", "1", f"B{b}^battery^99O03", "", "", "20240401"]))
        results = range(1, 140 if b == 9 else 3)
        body += [_padded("OBX", ["1", "NM", f"C{o}^x^JC10", "", str(o)]) for o in results]
    segments = [_padded("MSH", ["|", "^~\\&"]), *body]
    (fast, _), (slow, _) = _both(segments)
    assert fast == slow
    items = [r.key.item for r in fast if isinstance(r, LabResult)]
    assert "9.139" in items and "10.2" in items and "1.1" in items


@needs_fast
def test_a_field_that_is_not_a_string_makes_it_step_aside_and_undo_its_warnings() -> None:
    assert mapping.fast_lab is not None
    ctx = mapping._Ctx(Message([]), NAME)
    no_code = _padded("OBX", ["1", "NM", "", "", "1"])
    broken = _padded("OBX", ["1", "NM", "C^x^JC10", "", "1"])
    broken[5] = None  # type: ignore[call-overload]
    warnings = ["earlier"]
    head = (NAME.patient_id, NAME.care_date, NAME.data_type, NAME.order_no)
    args = (head, ctx.comp, ctx.codings, ctx.coding, to_iso, unescape, warnings)
    assert mapping.fast_lab([no_code, broken], *args) is None
    assert warnings == ["earlier"]
    assert mapping.fast_lab([["OBX"]], *args) is None  # a segment shorter than the reader pads
    assert mapping.fast_lab([no_code], *args) == []
    assert warnings == ["earlier", "OBX without an observation code"]


@needs_fast
@pytest.mark.parametrize(
    ("data_type", "fast", "reference"),
    [
        ("OML-11", mapping._map_oul, mapping._map_oul_python),
        ("OMP-01", mapping._map_rde_oral, mapping._map_rde_oral_python),
        ("OMP-11", mapping._map_ras_oral, mapping._map_ras_oral_python),
        ("PPR-01", mapping._map_ppr01, mapping._map_ppr01_python),
    ],
)
def test_records_from_real_files_are_the_same_on_both_paths(
    samples: Path, data_type: str, fast: Mapper, reference: Mapper
) -> None:
    seen = 0
    for path in sorted(samples.rglob(f"*_{data_type}_*")):
        name = parse_name(path.name)
        try:
            msg = parse(path.read_bytes(), name.data_type)
        except UnreadableMessage:
            continue
        ctx = mapping._Ctx(msg, name)
        w1: list[str] = []
        w2: list[str] = []
        assert fast(ctx, msg, w1) == reference(ctx, msg, w2)
        assert w1 == w2
        seen += 1
    assert seen > 0


# -- prescription orders (OMP-01) -----------------------------------------------------------------------

_RX_TEXT = st.text(alphabet="A1^&~\\京 d", max_size=8)


def _rx_both(
    segments: list[list[str]],
    fast: Mapper = mapping._map_rde_oral,
    reference: Mapper = mapping._map_rde_oral_python,
) -> tuple[object, object]:
    msg = Message(segments)
    ctx = mapping._Ctx(msg, RX_NAME)

    def run(mapper: object) -> object:
        w: list[str] = []
        try:
            out = mapper(ctx, msg, w)  # type: ignore[operator]
        except mapping.MissingSegment as e:
            return ("missing", str(e), w)
        return (out, [type(r) for r in out], [type(r.key) for r in out], w)

    return run(fast), run(reference)


@st.composite
def _rx_group(draw: st.DrawFn) -> list[list[str]]:
    group = [
        _padded("ORC", ["NW", "1", "", draw(st.sampled_from(["1", "2", ""])), "", "", "", "", draw(_DTM)])
    ]
    if draw(st.booleans()):
        usage = draw(st.sampled_from(["1013044400000000&内服・朝食後&JAMISDP01", "", "x&y"]) | _RX_TEXT)
        duration = draw(st.sampled_from(["7^d", "7^D", "^d", "3^d^x", "7", "7^dd"]) | _RX_TEXT)
        group.append(_padded("TQ1", ["1", "", usage, "", "", duration, draw(_DTM), draw(_DTM)]))
    for _ in range(draw(st.integers(0, 3))):
        fields = [""] * 19
        fields[1] = draw(st.sampled_from(["", "620000001^Drug^HOT9", "^text only"]) | _RX_TEXT)
        fields[2] = draw(st.sampled_from(["1", "0.5", ""]))
        fields[4] = draw(st.sampled_from(["TAB^錠^MR9P", ""]) | _RX_TEXT)
        fields[5] = draw(st.sampled_from(["TAB^錠^MR9P", ""]))
        fields[9] = draw(st.sampled_from(["21", ""]))
        fields[10] = draw(st.sampled_from(["TAB^錠^MR9P", ""]))
        fields[18] = draw(st.sampled_from(["3^TAB", "", "^"]) | _RX_TEXT)
        group.append(_padded("RXE", fields))
    if draw(st.booleans()):
        group.append(_padded("RXR", [draw(st.sampled_from(["PO^口^HL70162", ""]) | _RX_TEXT)]))
    return group


@needs_fast
@MANY
@given(st.lists(_rx_group(), max_size=4), st.booleans())
def test_the_compiled_order_mapper_gives_the_python_mappers_records(
    groups: list[list[list[str]]], lead: bool
) -> None:
    head = _head()
    if lead:  # an RXE before any ORC belongs to no group
        head.append(_padded("RXE", ["", "620000001^Drug^HOT9"]))
    fast, slow = _rx_both(head + [seg for g in groups for seg in g])
    assert fast == slow


@needs_fast
def test_the_order_mapper_steps_aside_for_odd_segments_and_undoes_its_warnings() -> None:
    assert mapping.fast_rx_order is not None
    ctx = mapping._Ctx(Message([]), RX_NAME)
    head = (RX_NAME.patient_id, RX_NAME.care_date, RX_NAME.data_type, RX_NAME.order_no)
    orc = _padded("ORC", ["NW"])
    no_drug = _padded("RXE", ["", ""])
    broken = _padded("RXE", ["", "620000001^Drug^HOT9"])
    broken[19] = None  # type: ignore[call-overload]
    warnings = ["earlier"]
    args = (
        head,
        ctx.comp,
        ctx.sub,
        ctx.codings,
        mapping._coding_cache(ctx.sub),
        ctx.coding,
        to_iso,
        warnings,
    )
    assert mapping.fast_rx_order([orc, no_drug, broken], *args) is None
    assert warnings == ["earlier"]
    assert mapping.fast_rx_order([orc], *args) is None  # no RXE: the Python mapper says so
    assert mapping.fast_rx_order([orc, no_drug[:19]], *args) is None  # shorter than the reader pads
    assert mapping.fast_rx_order([orc, no_drug], *args) == []
    assert warnings == ["earlier", "RXE without a drug code"]


@st.composite
def _given_group(draw: st.DrawFn) -> list[list[str]]:
    group = [_padded("ORC", ["RE", "1", "", draw(st.sampled_from(["1", ""])), "", "", "", "", draw(_DTM)])]
    for _ in range(draw(st.integers(0, 3))):
        fields = [""] * 20
        fields[2], fields[3] = draw(_DTM), draw(_DTM)
        fields[4] = draw(st.sampled_from(["", "620000001^Drug^HOT9", "^text only"]) | _RX_TEXT)
        fields[5] = draw(st.sampled_from(["1", "0.5", ""]))
        fields[6] = draw(st.sampled_from(["TAB^錠^MR9P", ""]) | _RX_TEXT)
        fields[19] = draw(st.sampled_from(["CP", "", "NA"]))
        group.append(_padded("RXA", fields))
    if draw(st.booleans()):
        group.append(_padded("RXR", [draw(st.sampled_from(["PO^口^HL70162", ""]) | _RX_TEXT)]))
    return group


@needs_fast
@MANY
@given(st.lists(_given_group(), max_size=4), st.booleans())
def test_the_compiled_administration_mapper_gives_the_python_mappers_records(
    groups: list[list[list[str]]], lead: bool
) -> None:
    head = _head()
    if lead:  # an RXA before any ORC belongs to no group
        head.append(_padded("RXA", ["", "", "", "", "620000001^Drug^HOT9"]))
    segments = head + [seg for g in groups for seg in g]
    fast, slow = _rx_both(segments, mapping._map_ras_oral, mapping._map_ras_oral_python)
    assert fast == slow


@needs_fast
def test_the_administration_mapper_steps_aside_for_odd_segments_and_undoes_its_warnings() -> None:
    assert mapping.fast_rx_given is not None
    ctx = mapping._Ctx(Message([]), RX_NAME)
    head = (RX_NAME.patient_id, RX_NAME.care_date, RX_NAME.data_type, RX_NAME.order_no)
    orc = _padded("ORC", ["RE"])
    no_drug = _padded("RXA", [])
    broken = _padded("RXA", ["", "", "", "", "620000001^Drug^HOT9"])
    broken[20] = None  # type: ignore[call-overload]
    warnings = ["earlier"]
    args = (head, ctx.codings, ctx.coding, to_iso, warnings)
    assert mapping.fast_rx_given([orc, no_drug, broken], *args) is None
    assert warnings == ["earlier"]
    assert mapping.fast_rx_given([orc], *args) is None  # no RXA: the Python mapper says so
    assert mapping.fast_rx_given([orc, no_drug[:20]], *args) is None  # shorter than the reader pads
    assert mapping.fast_rx_given([orc, no_drug], *args) == []
    assert warnings == ["earlier", "RXA without a drug code"]


# -- problems (PPR-01) ------------------------------------------------------------------------------------

_ICD = st.sampled_from(
    ["", "I10", "I10^^I10", "I10^Hypertension^ICD10", "K29^^99XYZ", "J45^x", "^^I10", "A^^I10^x"]
)


@st.composite
def _prb(draw: st.DrawFn) -> list[str]:
    fields = [""] * 18
    fields[0] = draw(st.sampled_from(["AD", "UP", "DE", ""]))  # PRB-1
    fields[2] = draw(
        st.sampled_from(["", "20057689^高血圧症^MDCDX2", "^text only", "X^^"]) | _RX_TEXT
    )  # PRB-3
    fields[3] = draw(st.sampled_from(["1", "", "P-2"]))  # PRB-4
    fields[6], fields[8], fields[15] = draw(_DTM), draw(_DTM), draw(_DTM)  # PRB-7, PRB-9, PRB-16
    fields[9] = draw(_ICD | _RX_TEXT)  # PRB-10
    fields[13] = draw(st.sampled_from(["", "1^治癒^HL70241", "4^^"]) | _RX_TEXT)  # PRB-14
    fields[16] = draw(st.sampled_from(["", "高血圧", "a\\T\\b"]) | _RX_TEXT)  # PRB-17
    fields[17] = draw(st.sampled_from(["", "1", "2", "1^main", "11", "^1"]))  # PRB-18
    return _padded("PRB", fields)


@needs_fast
@MANY
@given(st.lists(st.one_of(_prb(), st.just(_padded("NTE", ["1", "", "note"]))), max_size=6))
def test_the_compiled_problem_mapper_gives_the_python_mappers_records(body: list[list[str]]) -> None:
    fast, slow = _rx_both([*_head(), *body], mapping._map_ppr01, mapping._map_ppr01_python)
    assert fast == slow


@needs_fast
def test_the_problem_mapper_steps_aside_for_odd_segments_and_undoes_its_warnings() -> None:
    assert mapping.fast_condition is not None
    name = parse_name("1234567_20240401_PPR-01_000000000000001_20240401120000000_01_1")
    ctx = mapping._Ctx(Message([]), name)
    head = (name.patient_id, name.care_date, name.data_type, name.order_no)
    no_code = _padded("PRB", ["AD"])
    broken = _padded("PRB", ["AD", "", "20057689^高血圧症^MDCDX2"])
    broken[17] = None  # type: ignore[call-overload]
    warnings = ["earlier"]
    args = (head, ctx.comp, ctx.codings, ctx.coding, to_iso, unescape, warnings)
    assert mapping.fast_condition([no_code, broken], *args) is None
    assert warnings == ["earlier"]
    assert mapping.fast_condition([no_code[:18]], *args) is None  # shorter than the reader pads
    assert mapping.fast_condition([no_code], *args) == []
    assert warnings == ["earlier", "PRB without a problem code"]
    (only,) = mapping.fast_condition([[*broken[:17], "", "1", *broken[19:]]], *args) or []
    assert only.name == "高血圧症" and only.main is True  # no PRB-17 text: the code's display


# -- the compiled split's 16-byte ASCII step ---------------------------------------------------------------

_ASCII_RUN = st.text(alphabet="AZaz09|^~\\&\r\n ", max_size=48).map(str.encode)
_BREAK = st.sampled_from([b"\x1b$B5~4A\x1b(B", b"\x1b$B5~", b"\x1b(B", b"\x1b(J", b"\x80", b"\x1b", b"\x1c"])


@MANY
@given(st.lists(st.one_of(_ASCII_RUN, _BREAK), max_size=10).map(b"".join), st.integers(0, 20))
@example(b"|" * 40, 0)
@example(b"ABCDEFGHIJKLMNO\x1b$B5~\x1b(B|", 0)
@example(b"ABCDEFGHIJKLMNOP\r\n", 3)
def test_long_ascii_runs_decode_and_split_the_same_on_both_paths(body: bytes, lead: int) -> None:
    hl7.decode(b"load")
    raw = b"MSH|^~\\&|" + b"X" * lead + body + b"\r\x1c"
    if hl7._fast_path.decode is not None:
        text = hl7._fast_path.decode(raw)
        if text is not None:
            assert text == decode_python(raw)
    if split_standard(raw, PAD) is not None:
        assert hl7._fast_path.decode is not None
    assert _outcome(raw) == _reference_outcome(raw)


@needs_fast
def test_registration_refuses_what_is_not_an_object_slot_of_the_class() -> None:
    from dataclasses import dataclass, fields

    from agent.ssmix2 import _fastmap
    from hakobune.records import Prescription

    class Plain:  # no __slots__: its fields would live in a __dict__
        x = 1

    @dataclass(slots=True)
    class Base:
        key: object

    @dataclass(slots=True)
    class Derived(Base):  # "key" is a slot of the base class, not of this one
        other: object

    def names(cls: type) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    good = [
        *(RecordKey, names(RecordKey), LabResult, names(LabResult)),
        *(Prescription, names(Prescription), Condition, names(Condition)),
    ]
    try:
        with pytest.raises(TypeError, match="is not a slot"):
            _fastmap.register(Plain, ("x",), *good[2:])
        with pytest.raises(TypeError, match="is not a slot"):
            _fastmap.register(Derived, ("key", "other"), *good[2:])
        with pytest.raises(TypeError, match="has 2 fields, not 5"):
            _fastmap.register(Base, ("key", "key"), *good[2:])
        assert mapping.fast_lab is not None
        with pytest.raises(RuntimeError, match="not registered"):
            mapping.fast_lab([], ("a", "b", "c", "d"), "^", {}, lambda v: None, to_iso, unescape, [])
    finally:
        _fastmap.register(*good)
    (fast, _), (slow, _) = _both([_padded("OBX", ["1", "NM", "C^x^JC10", "", "1"])])
    assert fast == slow and fast


# -- only the fields the mappers read (mapping.FIELD_MASKS) ---------------------------------------------


def _records(raw: bytes, data_type: str, masks: bytes | None) -> tuple[list[Record], list[str]] | str:
    name = parse_name(f"1234567_20240401_{data_type}_000000000000001_20240401120000000_01_1")
    warnings: list[str] = []
    try:
        return mapping.to_records(parse(raw, data_type, masks), name, warnings), warnings
    except (UnreadableMessage, mapping.MissingSegment) as e:
        return f"refused: {e}"


@needs_fast
def test_a_synthetic_hospital_maps_to_the_same_records_with_only_the_fields_read(tmp_path: Path) -> None:
    """Every data type the reader maps, from a generated tree (kanji, kana, escapes, every segment the
    synthetic hospital writes): the records and warnings from a split that makes only FIELD_MASKS' fields
    are exactly those from the whole message.  A mapper that reads a field its table does not list would
    see "" there and differ."""
    generate(tmp_path, patients=30, days=4, seed=5, workers=1)
    seen: Counter[str] = Counter()
    for path in sorted((tmp_path / SSMIX2_DIR).rglob("*_1")):
        data_type = path.parent.name
        if data_type not in mapping.FIELD_MASKS:
            continue
        raw = path.read_bytes()
        masked = _records(raw, data_type, mapping.FIELD_MASKS[data_type])
        assert masked == _records(raw, data_type, None), path.name
        assert split_standard(raw, PAD, mapping.FIELD_MASKS[data_type]) is not None  # the masked path ran
        seen[data_type] += 1
    assert set(seen) == set(mapping.FIELD_MASKS), seen


@needs_fast
def test_the_sample_messages_map_to_the_same_records_with_only_the_fields_read(samples: Path) -> None:
    seen = 0
    for path in sorted(samples.rglob("*_*_*")):
        if not path.is_file():
            continue
        data_type = parse_name(path.name).data_type if path.name.count("_") == 6 else ""
        if data_type not in mapping.FIELD_MASKS:
            continue
        raw = path.read_bytes()
        assert _records(raw, data_type, mapping.FIELD_MASKS[data_type]) == _records(raw, data_type, None)
        seen += 1
    assert seen == 11  # of the 19 realistic samples, those of a data type the reader maps

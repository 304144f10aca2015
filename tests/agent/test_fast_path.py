"""The compiled fast path (hakobune/_jisdecode.c) against the pure-Python reference.

Wherever the fast path answers, it must give exactly what the reference gives: the same text from
:func:`hakobune.hl7.decode`, the same segments from :func:`agent.ssmix2.message.parse`.  Wherever it cannot
(another escape, high bytes, a cut message, non-standard delimiters …) it must say so (None) rather than
guess, and the reference then decodes or refuses with its reason.  Hostile bytes must never crash it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.ssmix2.message import PAD, _split_general, parse
from hakobune import hl7
from hakobune.errors import UnreadableMessage
from hakobune.hl7 import decode_python, encode_message, jis0208_table, split_standard

MANY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fast_module() -> object:
    hl7.decode(b"load")
    return hl7._fast_path.split


def test_the_compiled_fast_path_is_built_where_ci_runs() -> None:
    """Without the extension everything still works, only slower; CI must not lose it unnoticed."""
    if _fast_module() is None:
        if os.environ.get("CI"):
            pytest.fail("hakobune._jisdecode is not built (make setup compiles it with gcc)")
        pytest.skip("compiled fast path not built here")


needs_fast = pytest.mark.skipif(_fast_module() is None, reason="compiled fast path not built")


def test_the_table_agrees_with_the_reference_decoder_cell_by_cell() -> None:
    table = jis0208_table()
    assert len(table) == 94 * 94
    for i, ch in enumerate(table):
        raw = b"\x1b$B" + bytes((0x21 + i // 94, 0x21 + i % 94)) + b"\x1b(B"
        if ch == "\0":
            with pytest.raises(UnreadableMessage):
                decode_python(raw)
        else:
            assert decode_python(raw) == ch


# Bytes that look like SS-MIX2 messages: ASCII with delimiters, JIS runs (some with delimiter bytes),
# control bytes, other escapes, high bytes, cut runs.
_PIECES = st.sampled_from(
    [
        b"MSH|^~\\&|",
        b"MSH|^~\\&",
        b"PID|1||12345^^^^PI||",
        b"OBX|1|NM|3A010^",
        b"|",
        b"^",
        b"~",
        b"\\",
        b"&",
        b"\r",
        b"\n",
        b"\r\n",
        b"\x1c",
        b"\x0b",
        b"\x1b$B",
        b"\x1b(B",
        b"\x1b(J",
        b"\x1b(I",
        b"\x1b$@",
        b"\x1b",
        b"5~",  # 京 in a JIS run
        b"4A",
        b"-!",  # NEC row 13 (①) in a JIS run
        b"y|",  # an IBM extension cell
        b"\x7f",
        b"\x80",
        b"\xe4\xba\xac",
        b" ",
        b"\x00",
    ]
)
_HOSTILE = st.lists(st.one_of(_PIECES, st.binary(max_size=6)), max_size=40).map(b"".join)


def _outcome(raw: bytes) -> list[list[str]] | str:
    try:
        return parse(raw, "ZZZ-00").segments
    except UnreadableMessage as e:
        return f"refused: {e}"


def _reference_outcome(raw: bytes) -> list[list[str]] | str:
    pure = hl7._FastPath()
    pure.tried = True  # nothing loaded: every call takes the pure-Python path
    saved, hl7._fast_path = hl7._fast_path, pure
    try:
        return _outcome(raw)
    finally:
        hl7._fast_path = saved


@needs_fast
@MANY
@given(_HOSTILE)
@example(b"MSH|^~\\&|\x1b$B5~\x1b(B|x\r\x1c")
@example(b"\x0bMSH|^~\\&|A\r\r\nPID|1|\x1b$B4A\rPID|2\x1b(B|\r\x1c\r")
@example(b"MSH|^~\\&|A\rPID\r\x1c")
@example(b"MSH|^~\\&|A\rPID|1")
@example(b"MSH|^~\\&|A\x1b$B")
@example(b"MSH|^~\\&|A\x1b$B4")
@example(b"MSH|^~\\&|\rMSH|^~\\&|\r")
def test_fast_decode_and_parse_agree_with_the_reference_or_step_aside(raw: bytes) -> None:
    fast_text = hl7._fast_path.decode(raw) if hl7._fast_path.decode else None
    if fast_text is not None:
        assert fast_text == decode_python(raw)
    fast_segments = split_standard(raw, PAD)
    if fast_segments is not None:
        assert fast_text is not None  # it can only split what it can decode
    assert _outcome(raw) == _reference_outcome(raw)


def _segment_fields(alphabet: str, fields: int, segments: int) -> st.SearchStrategy[list[list[str]]]:
    """Up to ``segments`` field lists of up to ``fields`` fields, their text from ``alphabet``."""
    field = st.text(alphabet=alphabet, max_size=8)
    return st.lists(st.lists(field, min_size=1, max_size=fields), min_size=1, max_size=segments)


def _message_of(fields: list[list[str]], ids: int) -> bytes:
    """A message of an MSH and one segment per field list, their IDs ZZ0, ZZ1 … (``ids`` of them, in turn)."""
    segments = ["MSH|^~\\&|SEND||||20240401||ADT^A08|1|P|2.5"] + [
        f"ZZ{i % ids}|" + "|".join(f) for i, f in enumerate(fields)
    ]
    return encode_message(segments)


@needs_fast
@MANY
@given(_segment_fields("京都齋藤髙橋①Ⅱ㈱ｱｲ abc123-^~&\\", fields=6, segments=8))
def test_generated_messages_parse_the_same_on_both_paths(fields: list[list[str]]) -> None:
    raw = _message_of(fields, 10)
    expected = _split_general(raw)[0]
    assert _outcome(raw) == _reference_outcome(raw) == expected
    if b"\x1b(I" not in raw:  # JIS X 0201 kana runs take the general path
        assert split_standard(raw, PAD) == expected


def test_the_reference_path_alone_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """HAKOBUNE_PURE_PYTHON (or no compiler) gives the same message, only slower."""
    raw = encode_message(["MSH|^~\\&|S||||20240401||PPR^ZC1|1|P|2.5", "PID|1||123^^^^PI||京都^齋|"])
    with_fast = parse(raw, "PPR-01").segments
    monkeypatch.setattr(hl7, "_fast_path", hl7._FastPath())
    monkeypatch.setenv("HAKOBUNE_PURE_PYTHON", "1")
    assert hl7.split_standard(raw, PAD) is None
    assert parse(raw, "PPR-01").segments == with_fast


@needs_fast
def test_shared_short_fields_are_always_the_right_text() -> None:
    """Short fields come from a bounded cache of shared strings: after tens of thousands of distinct values
    (every slot overwritten many times over), in ASCII and in kana/kanji of the same lengths, each field
    is still exactly the reference's text."""
    kanji = "京都齋藤邊アイウエオ"
    for n in range(30_000):
        ascii_field = f"C{n:x}"
        jis_field = kanji[n % 5] + kanji[(n // 5) % 10] + str(n % 97)
        raw = encode_message(["MSH|^~\\&|HIS", f"OBX|1|NM|{ascii_field}^{jis_field}^JC10||{n % 13}|mg"])
        assert split_standard(raw, PAD) == _split_general(raw)[0], n


def _blanked(
    segments: list[list[str]], wanted: dict[str, tuple[int, ...]], others: tuple[int, ...]
) -> list[list[str]]:
    """The segments with every field not wanted (by HL7 field number) set to "": the segment ID and MSH-1
    (the separator) are always kept."""
    return [
        [
            f if n == 0 or (i == 0 and n == 1) or n in wanted.get(seg[0], others) else ""
            for n, f in enumerate(seg)
        ]
        for i, seg in enumerate(segments)
    ]


@needs_fast
@MANY
@given(
    _segment_fields("京都齋ｱ abc1-^~&\\", fields=12, segments=6),
    st.lists(st.integers(1, 63), max_size=6).map(tuple),
    st.lists(st.integers(1, 63), max_size=6).map(tuple),
    st.lists(st.integers(1, 63), max_size=3).map(tuple),
)
@example([["a"] * 12], (9,), (1, 2, 5), ())
def test_a_split_with_masks_makes_only_the_fields_named(
    fields: list[list[str]], msh: tuple[int, ...], zz1: tuple[int, ...], others: tuple[int, ...]
) -> None:
    raw = _message_of(fields, 3)
    wanted = {"MSH": msh, "ZZ1": zz1}
    full = split_standard(raw, PAD)
    if full is None:  # (JIS X 0201 kana takes the general path)
        return
    masked = split_standard(raw, PAD, hl7.field_masks(wanted, others))
    assert masked == _blanked(full, wanted, others)
    assert masked is not None and masked[0][1] == "|"  # MSH-1, the separator, is always there


def test_field_masks_refuse_what_the_split_cannot_honour() -> None:
    with pytest.raises(ValueError, match="field number 64"):
        hl7.field_masks({"OBX": (2, 64)})
    with pytest.raises(ValueError, match="field number 0"):
        hl7.field_masks({}, others=(0,))
    with pytest.raises(ValueError, match="segment ID 'OBXX'"):
        hl7.field_masks({"OBXX": (1,)})
    assert hl7.field_masks({"OBX": (1, 3)}) == bytes(8) + b"OBX" + (0b1010).to_bytes(8, "little")


@needs_fast
def test_the_compiled_split_refuses_a_malformed_mask_table() -> None:
    raw = encode_message(["MSH|^~\\&|HIS", "OBX|1|NM"])
    for bad in (b"", bytes(7), bytes(8) + b"OBX", "masks"):
        with pytest.raises(ValueError, match="masks must be bytes"):
            split_standard(raw, PAD, bad)  # type: ignore[arg-type]

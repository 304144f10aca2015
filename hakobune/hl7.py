"""HL7 v2 as SS-MIX2 stores it: ISO-2022-JP bytes, CR-terminated segments, a trailing 0x1C.

JIS X 0208 double-byte codes contain the bytes of HL7 delimiters (京 is ``0x35 0x7E``, i.e. ``5~``), so a
message is always **decoded to text before it is split**.  :func:`decode` takes the strict codec's fast path
and falls back to a CP50220-style decoder for the NEC row-13 and NEC-selected IBM extension characters
(①, Ⅰ, ㈱, 髙 …) that Japanese hospital systems emit; anything else is refused with the byte offset and a
guess at the real encoding.  :func:`encode_message` is the inverse, used by the synthetic hospital and tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from hakobune.compiled import compiled
from hakobune.errors import UnreadableMessage

ESC = 0x1B
FS = "\x1c"
VT = "\x0b"
_SEGMENT_END = re.compile(r"\r\n|\r|\n")
_ESCAPE_SEQ = re.compile(rb"\x1b(\(B|\(J|\(I|\$@|\$B|&@\x1b\$B|\$\(D|\$\(O|\$\(Q)")


def decode(raw: bytes) -> str:
    """Text of an ISO-2022-JP message.  Raises :class:`UnreadableMessage` naming the offending byte.

    Messages that use only ASCII and JIS X 0208 (nearly all) take the compiled fast path when it is built
    (:mod:`hakobune._jisdecode`, same table, same text); everything else, and every error, goes through
    :func:`decode_python`."""
    if not _fast_path.tried:
        _fast_path.load()
    if _fast_path.decode is not None:
        text = _fast_path.decode(raw)
        if text is not None:
            return text
    return decode_python(raw)


def split_standard(raw: bytes, pad: int, masks: bytes | None = None) -> list[list[str]] | None:
    """Decode and split a message in one compiled pass: segments as field lists (``fields[n]`` is field n,
    MSH-1 the separator), each padded with ``""`` to at least ``pad`` fields.  Only for the common case —
    standard delimiters (``MSH|^~\\&``), ASCII and JIS X 0208, a terminated last segment, every segment with
    fields and a segment ID (three ASCII letters or digits, the first upper case), no MSH but the first;
    anything else, or no compiled module, gives None and the caller takes the general path.

    ``masks`` (from :func:`field_masks`) names the fields a caller reads: the others are left ``""`` instead
    of made, which is most of a message's strings (validation does not change)."""
    if not _fast_path.tried:
        _fast_path.load()
    if _fast_path.split is None:
        return None
    return _fast_path.split(raw, pad, masks)


def field_masks(fields: dict[str, tuple[int, ...]], others: tuple[int, ...] = ()) -> bytes:
    """The packed table :func:`split_standard` takes: for each segment ID the field numbers to make (as HL7
    numbers them: MSH-9 is 9), and ``others`` for every segment not named.  The segment ID (field 0) is
    always made; field numbers run 1..63."""

    def mask(numbers: tuple[int, ...]) -> bytes:
        bits = 0
        for n in numbers:
            if not 1 <= n <= 63:
                raise ValueError(f"field number {n} is outside 1..63")
            bits |= 1 << n
        return bits.to_bytes(8, "little")

    out = bytearray(mask(others))
    for sid, numbers in fields.items():
        if len(sid) != 3 or not sid.isascii():
            raise ValueError(f"segment ID {sid!r} is not three ASCII characters")
        out += sid.encode("ascii") + mask(numbers)
    return bytes(out)


def decode_python(raw: bytes) -> str:
    """The pure-Python decoder: the strict codec, then the CP50220-style fallback (the reference)."""
    try:
        return raw.decode("iso2022_jp")
    except UnicodeDecodeError:
        return _decode_lenient(raw)


def jis0208_table() -> str:
    """JIS X 0208 as 94 x 94 characters in row/cell order, each decoded as :func:`decode_python` decodes it
    (strict codec where it knows the code, else CP50220); NUL where the code is unmapped."""
    rows: list[str] = []
    for j1 in range(0x21, 0x7F):
        row = bytes(b for j2 in range(0x21, 0x7F) for b in (j1, j2))
        try:
            text = (b"\x1b$B" + row + b"\x1b(B").decode("iso2022_jp")
        except UnicodeDecodeError:
            text = ""
        if len(text) != 94:  # a row with unassigned or non-BMP-pair cells: cell by cell
            text = "".join(_table_cell(j1, j2) for j2 in range(0x21, 0x7F))
        rows.append(text)
    return "".join(rows)


def _table_cell(j1: int, j2: int) -> str:
    try:
        ch = _jis_pair(j1, j2)
    except UnicodeDecodeError:
        return "\0"
    return ch if len(ch) == 1 else "\0"


#: The compiled split: (raw, pad, masks) -> segments or None.
_Split = Callable[[bytes, int, bytes | None], list[list[str]] | None]


class _FastPath:
    """The compiled decoder, loaded (and given its table) on first use, so importing costs nothing."""

    def __init__(self) -> None:
        self.decode: Callable[[bytes], str | None] | None = None
        self.split: _Split | None = None
        self.tried = False

    def load(self) -> None:
        self.tried = True
        found = compiled(_load_jisdecode)
        if found is not None:
            self.decode, self.split = found


def _load_jisdecode() -> tuple[Callable[[bytes], str | None], _Split]:
    from hakobune import _jisdecode

    _jisdecode.set_jis0208(jis0208_table())
    return _jisdecode.decode, _jisdecode.split


_fast_path = _FastPath()


def _guess_encoding(raw: bytes) -> str:
    try:
        raw.decode("utf-8")
        return "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        raw.decode("cp932")
        return "Shift_JIS"
    except UnicodeDecodeError:
        pass
    try:
        raw.decode("euc_jp")
        return "EUC-JP"
    except UnicodeDecodeError:
        return "binary"


@lru_cache(maxsize=16384)
def _jis_pair(j1: int, j2: int) -> str:
    """One JIS X 0208 code to text: as the strict codec decodes it wherever that codec knows the code (so
    the same bytes give the same text in every file), else as CP50220 (NEC row 13, NEC-selected IBM
    extensions)."""
    try:
        return bytes((0x1B, 0x24, 0x42, j1, j2, 0x1B, 0x28, 0x42)).decode("iso2022_jp")
    except UnicodeDecodeError:
        pass
    s1 = ((j1 + 1) >> 1) + 0x70
    if s1 >= 0xA0:
        s1 += 0x40
    if j1 & 1:
        s2 = j2 + 0x1F
        if s2 >= 0x7F:
            s2 += 1
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2)).decode("cp932")


def _decode_lenient(raw: bytes) -> str:
    high = next((i for i, b in enumerate(raw) if b >= 0x80), None)
    if high is not None:
        raise UnreadableMessage(
            f"not ISO-2022-JP: byte 0x{raw[high]:02x} at offset {high} (looks like {_guess_encoding(raw)})"
        )
    out: list[str] = []
    mode = "ascii"
    pos = 0
    n = len(raw)
    while pos < n:
        if raw[pos] == ESC:
            m = _ESCAPE_SEQ.match(raw, pos)
            if m is None:
                raise UnreadableMessage(f"not ISO-2022-JP: unknown escape sequence at offset {pos}")
            seq = m.group(1)
            if seq in (b"(B", b"(J"):
                mode = "ascii"
            elif seq == b"(I":
                mode = "kana"
            elif seq == b"$(D":
                mode = "jisx0212"
            elif seq in (b"$(O", b"$(Q"):
                mode = "jisx0213"
            else:
                mode = "jis"
            pos = m.end()
            continue
        end = raw.find(b"\x1b", pos)
        if end < 0:
            end = n
        chunk = raw[pos:end]
        if mode == "ascii":
            out.append(chunk.decode("ascii"))
        elif mode == "kana":
            out.append(_decode_kana(chunk, pos))
        else:
            out.append(_decode_double(chunk, pos, mode))
        pos = end
    return "".join(out)


def _decode_kana(chunk: bytes, pos: int) -> str:
    """JIS X 0201 katakana (ESC ( I): 0x21–0x5F are half-width kana; control bytes (CR, LF …) pass through."""
    out: list[str] = []
    for i, b in enumerate(chunk):
        if b < 0x21:
            out.append(chr(b))
        elif b <= 0x5F:
            out.append(chr(0xFF61 + b - 0x21))
        else:
            raise UnreadableMessage(
                f"not ISO-2022-JP: byte 0x{b:02x} is not a JIS X 0201 katakana at offset {pos + i}"
            )
    return "".join(out)


def _decode_double(chunk: bytes, pos: int, mode: str) -> str:
    """A double-byte run (JIS X 0208/0212/0213); control bytes (CR, LF …) pass through as themselves."""
    out: list[str] = []
    i, n = 0, len(chunk)
    while i < n:
        j1 = chunk[i]
        if j1 < 0x21:
            out.append(chr(j1))
            i += 1
            continue
        if i + 1 >= n or not (0x21 <= j1 <= 0x7E and 0x21 <= chunk[i + 1] <= 0x7E):
            raise UnreadableMessage(f"not ISO-2022-JP: broken double-byte code at offset {pos + i}")
        j2 = chunk[i + 1]
        try:
            if mode == "jis":
                out.append(_jis_pair(j1, j2))
            else:
                designator = b"\x1b$(D" if mode == "jisx0212" else b"\x1b$(Q"
                codec = "iso2022_jp_2" if mode == "jisx0212" else "iso2022_jp_2004"
                out.append((designator + bytes((j1, j2)) + b"\x1b(B").decode(codec))
        except UnicodeDecodeError:
            raise UnreadableMessage(
                f"not ISO-2022-JP: unmapped double-byte code at offset {pos + i}"
            ) from None
        i += 2
    return "".join(out)


def split_segments(text: str) -> list[str]:
    """Segments of a decoded message; tolerates CR, LF or CRLF, MLLP framing bytes and blank lines."""
    if text and text[0] == VT:
        text = text[1:]
    text = text.rstrip("\r\n" + FS)
    lines = text.split("\r") if "\n" not in text else _SEGMENT_END.split(text)
    return [s for s in lines if s]


def fields_of(segment: str, sep: str = "|") -> list[str]:
    """Fields of a segment, indexed so that ``fields[n]`` is field n (``MSH-1`` is the separator itself)."""
    parts = segment.split(sep)
    if parts[0] == "MSH":
        parts.insert(1, sep)
    return parts


_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
_UNESCAPE = re.compile(r"\\(F|S|T|R|E|X[0-9A-Fa-f]*|\.br|H|N)\\")


def unescape(value: str) -> str:
    """Resolve HL7 escape sequences (``\\F\\`` → ``|`` …; formatting codes dropped, ``\\.br\\`` → newline)."""
    if "\\" not in value:
        return value
    return _unescape_escaped(value)


@lru_cache(maxsize=8192)
def _unescape_escaped(value: str) -> str:
    """:func:`unescape` of a value that holds a backslash.  The same escaped values recur in every file
    (units such as ``10\\S\\3/uL`` in most lab results), and the substitution costs ~2 µs each time."""
    return _UNESCAPE.sub(_unescape_one, value)


def _unescape_one(m: re.Match[str]) -> str:
    tok = m.group(1)
    if tok in _ESCAPES:
        return _ESCAPES[tok]
    if tok == ".br":
        return "\n"
    if tok.startswith("X"):
        try:
            return bytes.fromhex(tok[1:]).decode("latin-1")
        except ValueError:
            return ""
    return ""


def escape(value: str) -> str:
    """HL7-escape a value so it survives as one component (``\\`` first, then the delimiters)."""
    if not any(c in value for c in "\\|^&~\r\n"):
        return value
    return (
        value.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r\n", "\\.br\\")
        .replace("\n", "\\.br\\")
        .replace("\r", "\\.br\\")
    )


def encode_message(segments: list[str]) -> bytes:
    """Bytes of a message as SS-MIX2 stores it: ISO-2022-JP, CR after each segment, a trailing 0x1C.

    Characters outside JIS X 0208 that hospital systems still write (NEC row 13 such as ①, NEC-selected IBM
    extensions such as 髙) are encoded as CP50220 does, so :func:`decode` reads them back."""
    text = "\r".join(segments) + "\r" + FS
    try:
        return text.encode("iso2022_jp")
    except UnicodeEncodeError:
        return _encode_lenient(text)


def _encode_lenient(text: str) -> bytes:
    out = bytearray()
    mode = b"(B"
    for ch in text:
        if ord(ch) < 0x80:
            want, body = b"(B", ch.encode("ascii")
        elif 0xFF61 <= ord(ch) <= 0xFF9F:  # half-width katakana: JIS X 0201 (ESC ( I)
            want, body = b"(I", bytes((ch.encode("cp932")[0] - 0x80,))
        else:
            try:
                body = ch.encode("iso2022_jp").removeprefix(b"\x1b$B").removesuffix(b"\x1b(B")
            except UnicodeEncodeError:
                body = _cp932_to_jis(ch)
            want = b"$B"
        if want != mode:
            out += b"\x1b" + want
            mode = want
        out += body
    if mode != b"(B":
        out += b"\x1b(B"
    return bytes(out)


def _cp932_to_jis(ch: str) -> bytes:
    """JIS row/cell bytes of a CP932 character (inverse of :func:`_jis_pair`); IBM extensions are first
    mapped to their NEC-selected equivalents by CP932's own normalisation."""
    try:
        s = ch.encode("cp932")
    except UnicodeEncodeError:
        raise ValueError(f"character U+{ord(ch):04X} has no ISO-2022-JP (CP50220) encoding") from None
    if len(s) != 2:
        raise ValueError(f"character U+{ord(ch):04X} is not a double-byte JIS character")
    s1, s2 = s
    if s1 >= 0xFA:  # IBM extension block: use the NEC-selected copy (rows 89-92)
        for cand in range(0xED40, 0xEEFD):
            c = bytes((cand >> 8, cand & 0xFF))
            try:
                if c.decode("cp932") == ch:
                    s1, s2 = c
                    break
            except UnicodeDecodeError:
                continue
        else:
            raise ValueError(f"character U+{ord(ch):04X} has no JIS row/cell")
    s1 -= 0x40 if s1 >= 0xE0 else 0
    j1 = (s1 - 0x70) * 2 - 1
    if s2 >= 0x9F:
        j1 += 1
        j2 = s2 - 0x7E
    else:
        j2 = s2 - 0x1F - (1 if s2 >= 0x80 else 0)
    return bytes((j1, j2))


_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


@lru_cache(maxsize=65536)
def to_iso_python(dtm: str) -> str:
    """HL7 DT/DTM (``20111219``, ``201112191500``, ``20110701113813.225``) to ISO 8601 text
    (``2011-12-19``, ``2011-12-19T15:00``, ``2011-07-01T11:38:13``).
    Text that is not a date is kept as is.  (The reference: see :data:`to_iso`.)"""
    n = len(dtm)
    if n == 8 and dtm.isdigit() and "01" <= dtm[4:6] <= "12" and "01" <= dtm[6:8] <= "31":
        return f"{dtm[0:4]}-{dtm[4:6]}-{dtm[6:8]}"
    if n == 0:
        return ""
    if (n == 12 or n == 14) and dtm.isdigit() and "01" <= dtm[4:6] <= "12" and "01" <= dtm[6:8] <= "31":
        iso = f"{dtm[0:4]}-{dtm[4:6]}-{dtm[6:8]}T{dtm[8:10]}:{dtm[10:12]}"
        return iso + f":{dtm[12:14]}" if n == 14 else iso
    m = _DTM.match(dtm)
    if m is None:
        return dtm
    y, mo, d, h, mi, s, _tz = m.groups()
    if mo is None:
        return y
    if d is None:
        return f"{y}-{mo}"
    if not ("01" <= mo <= "12" and "01" <= d <= "31"):
        return dtm
    if h is None:
        return f"{y}-{mo}-{d}"
    return f"{y}-{mo}-{d}T{h}:{mi or '00'}" + (f":{s}" if s else "")


def _load_to_iso() -> Callable[[str], str]:
    from hakobune import _jisdecode

    _jisdecode.set_iso_fallback(to_iso_python)
    return _jisdecode.to_iso


#: HL7 DT/DTM to ISO 8601 text (:func:`to_iso_python`): compiled for "" and 8, 12 or 14 digits (most dates
#: in a message, six a file; the Python code costs ~1 µs each, its cache rarely hits timestamps), which
#: defers to the Python code for everything else.  Without the compiled module, the Python code itself.
to_iso: Callable[[str], str] = compiled(_load_to_iso) or to_iso_python

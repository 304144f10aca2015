"""Structural parse of one SS-MIX2 message: decode, split, validate.

Validation is what decides quarantine: a message that is not ISO-2022-JP, is truncated, does not start with
MSH, holds a second MSH, carries an empty or malformed segment, or whose MSH-9 does not match its data type
is refused with a one-line reason.  Content oddities that do not make the message unusable (a PID-3 that
differs from the file's patient ID, an empty name) are warnings, counted by the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.ssmix2.layout import MESSAGE_CODE
from hakobune.errors import UnreadableMessage
from hakobune.hl7 import decode, split_segments, split_standard


@dataclass(slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


STANDARD = Delimiters()


@dataclass(slots=True)
class Message:
    """A validated message: ``segments`` as field lists where ``fields[n]`` is field n."""

    segments: list[list[str]]
    delimiters: Delimiters = field(default_factory=Delimiters)


#: Segments are padded to this many fields so mappers index them directly (highest used: RXE-24).
PAD = 26
_PADDING = [""] * PAD


_KNOWN_IDS: set[str] = set()


def parse(raw: bytes, data_type: str, masks: bytes | None = None) -> Message:
    """Decode and validate; raises :class:`UnreadableMessage` with the quarantine reason.  ``masks``
    (:data:`agent.ssmix2.mapping.FIELD_MASKS`): the fields the caller reads; the compiled split may leave
    the others ``""``."""
    if not raw:
        raise UnreadableMessage("empty file")
    segments = split_standard(raw, PAD, masks)
    if segments is None:
        segments, delims = _split_general(raw)
    else:  # standard delimiters; every segment has fields and a segment ID, and MSH comes only first
        delims = STANDARD
    expected = MESSAGE_CODE.get(data_type)
    if expected is not None:
        code = segments[0][9].split(delims.component, 1)[0]  # MSH-9 message type (MSH is padded past it)
        if code != expected:
            raise UnreadableMessage(
                f"message type {code or '(none)'} in MSH-9 does not match data type {data_type}"
            )
    return Message(segments, delims)


def _split_general(raw: bytes) -> tuple[list[list[str]], Delimiters]:
    """Any message: the pure-Python path, which also words every reason a message is refused.  Gives the
    same segments as :func:`hakobune.hl7.split_standard` wherever that one answers."""
    text = decode(raw)
    # The last segment ends with CR/LF, an MLLP end block (FS, usually followed by CR), or both; a file
    # that just stops was cut.
    if text[-1:] not in ("\x1c", "\r", "\n"):
        raise UnreadableMessage(
            f"truncated: the last segment has no terminator (file ends after {len(raw)} bytes)"
        )
    lines = split_segments(text)
    first = lines[0] if lines else ""
    if not first.startswith("MSH"):
        raise UnreadableMessage("not an HL7 message: it does not start with an MSH segment")
    fs = first[3:4]
    enc = first[4:8]
    if len(first) < 8 or fs.isalnum() or len(set(enc + fs)) != 5 or any(c.isalnum() for c in enc):
        raise UnreadableMessage("not an HL7 message: MSH does not declare field and encoding characters")
    delims = STANDARD if fs == "|" and enc == "^~\\&" else Delimiters(fs, enc[0], enc[1], enc[2], enc[3])
    segments: list[list[str]] = []
    known = _KNOWN_IDS
    for line in lines:
        parts = line.split(fs)
        sid = parts[0]
        if sid not in known or len(parts) == 1:
            _check_segment(sid, len(parts), len(segments) + 1)
        if not segments:
            parts.insert(1, fs)  # MSH-1 is the field separator itself
        if len(parts) < PAD:
            parts += _PADDING[len(parts) :]
        segments.append(parts)
    return segments, delims


def _check_segment(sid: str, n_fields: int, lineno: int) -> None:
    """Slow path for a segment ID not seen before (or a segment without fields)."""
    if not _is_segment_id(sid):
        raise UnreadableMessage(f"line {lineno} is not an HL7 segment")
    if n_fields == 1:
        raise UnreadableMessage(f"segment {sid} at line {lineno} is empty (no fields)")
    if sid == "MSH" and lineno != 1:
        raise UnreadableMessage(f"second MSH segment at line {lineno} (two messages in one file)")
    if sid != "MSH" and len(_KNOWN_IDS) < 512:
        _KNOWN_IDS.add(sid)


def _is_segment_id(sid: str) -> bool:
    return len(sid) == 3 and sid[0].isascii() and sid[0].isupper() and sid.isascii() and sid.isalnum()

"""Names every role agrees on: hospital IDs, streams, and the file names of changesets and receipts.

A changeset travels as ``<stream>-<sequence:012d>.hkcs`` and its receipt comes back as
``<stream>-<sequence:012d>.receipt``; both sides parse names here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from hakobune.errors import ConfigError

Stream = Literal["clinical", "research"]
STREAMS: tuple[Stream, ...] = get_args(Stream)

#: A hospital ID: letters, digits and hyphens, starting with a letter or digit (e.g. the 10-digit
#: medical-institution code).  It names directories and a system account (hkb-<id>, at most 32
#: characters for useradd), so nothing else is allowed.
_HOSPITAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,27}")
_CHANGESET = re.compile(r"(clinical|research)-([0-9]{12})\.hkcs")
_RECEIPT = re.compile(r"(clinical|research)-([0-9]{12})\.receipt")

CHANGESET_SUFFIX = ".hkcs"
RECEIPT_SUFFIX = ".receipt"


def check_hospital_id(value: str) -> str:
    """``value`` if it is a valid hospital ID, else :class:`ConfigError` saying why."""
    if not _HOSPITAL_ID.fullmatch(value):
        raise ConfigError(
            f"bad hospital id {value!r}: use 1-28 letters, digits or hyphens, starting with a letter or digit"
        )
    return value


def check_stream(value: str) -> Stream:
    if value not in STREAMS:
        raise ConfigError(f"bad stream {value!r}: expected one of {', '.join(STREAMS)}")
    return value


def changeset_name(stream: Stream, sequence: int) -> str:
    return f"{stream}-{sequence:012d}{CHANGESET_SUFFIX}"


def receipt_name(stream: Stream, sequence: int) -> str:
    return f"{stream}-{sequence:012d}{RECEIPT_SUFFIX}"


def parse_changeset_name(name: str) -> tuple[Stream, int] | None:
    """(stream, sequence) of a changeset file name, or None if ``name`` is not one."""
    m = _CHANGESET.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None  # type: ignore[return-value]


def parse_receipt_name(name: str) -> tuple[Stream, int] | None:
    m = _RECEIPT.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None  # type: ignore[return-value]


def account_name(hospital: str) -> str:
    """The system account of a hospital's SFTP inbox at the center (``hkb-<id>``, lower case)."""
    return "hkb-" + check_hospital_id(hospital).lower()

"""De-identification at the source: a clinical record becomes a research record, or nothing leaves.

What a research record keeps (DESIGN §10): sex, birth year-month, age at the event, dates of care, codes
and values.  What it drops: names (kanji and kana), address, postal code, phone numbers, the patient ID,
clinician names, order numbers, every display text and every free-text field (condition names, reactions,
instructions, non-numeric lab results, reference ranges, instance IDs).  The rules are whitelists: a
field is copied only if it is listed here, and a code only if it looks like a code, so a hospital that
writes text where a code belongs leaks nothing.

Encoding (research record format ``v1``; canonical JSON, keys in the order written here)::

    {"kind":"lab","v":1,"r":{"key":{"pid":P,"date":D,"type":T,"order":O,"item":I}, …kind's fields…}}

``pid`` is the hospital's research pseudonym of the patient (:meth:`Pseudonymizer.pseudonym`), ``order``
the keyed hash of the order number (:meth:`Pseudonymizer.order_hash`: order numbers identify), ``date``,
``type`` and ``item`` the SS-MIX2 care date (or ``-``), data type and item as in the clinical key.  The
kinds' fields are in ``docs/research-stream.md``.  Dates are ``YYYY-MM-DD`` (times of day are dropped),
absent values ``null``, numbers JSON numbers.  ``age`` is whole years on the record's ``date`` (birthday
reached on its month and day), from the full birth date the agent keeps in its own state.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.linkage import link_hash, normalize_sex
from hakobune.records import (
    Allergy,
    Coding,
    Condition,
    Injection,
    LabResult,
    Patient,
    Prescription,
    Record,
    RecordKey,
)

RESEARCH_FORMAT_VERSION = 1
_PSEUDONYM_INFO = b"hakobune/research/pseudonym/v1"
PSEUDONYM_HEX = 32
ORDER_HASH_HEX = 16

#: What may pass as a code, a code system or a flag: short, ASCII, no spaces.  Text where a code belongs
#: (``^ソバ^`` with an empty code, or a name typed into the code field) fails and is dropped.
_CODE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._\-]{0,39}")
_FLAG = re.compile(r"[A-Za-z<>]{1,4}")
#: Units: ASCII unit notation after folding micro and multiplication signs (``×10^4/μL`` → ``x10^4/uL``).
_UNIT = re.compile(r"[0-9A-Za-z./%*^\-_()\[\]]{1,24}")
_UNIT_FOLD = str.maketrans({"μ": "u", "µ": "u", "×": "x"})
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DIGITS = re.compile(r"[0-9]{1,5}")


def derive_research_secret(token_key: bytes) -> bytes:
    """The hospital's research secret: HKDF-SHA256 of the agent's token key with a label of its own, so
    it is backed up with the agent keys, stable across reinstalls, and unrelated to the clinical tokens."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PSEUDONYM_INFO).derive(token_key)


@dataclass(frozen=True, repr=False)
class Pseudonymizer:
    """Keyed hashes of one hospital.  Picklable, so the reader processes de-identify what they read."""

    secret: bytes
    linkage_key: bytes

    def pseudonym(self, patient_id: str) -> str:
        """The patient's research pseudonym: HMAC-SHA256(secret, "pid" 00 ID), first 32 hex digits."""
        return hmac.new(self.secret, b"pid\x00" + patient_id.encode(), hashlib.sha256).hexdigest()[
            :PSEUDONYM_HEX
        ]

    def order_hash(self, patient_id: str, order_no: str) -> str:
        """HMAC-SHA256(secret, "order" 00 ID 00 order no), first 16 hex digits."""
        message = b"order\x00" + patient_id.encode() + b"\x00" + order_no.encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:ORDER_HASH_HEX]

    def key(self, patient_id: str, care_date: str, data_type: str, order_no: str, item: str) -> list[str]:
        """The research key of a clinical key, as the list a ``del`` operation carries."""
        return [self.pseudonym(patient_id), care_date, data_type, self.order_hash(patient_id, order_no), item]

    def __repr__(self) -> str:
        return "Pseudonymizer(…)"


# --- values ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def plain_code(value: str) -> str | None:
    """``value`` if it looks like a code, else None.  (Cached: a hospital uses a few thousand codes.)"""
    return value if _CODE.fullmatch(value) else None


def code_of(coding: Coding | None) -> str | None:
    """The code of ``coding`` if it looks like one, else None (its display text never leaves)."""
    return None if coding is None else plain_code(coding.code)


def system_of(coding: Coding | None) -> str | None:
    return None if coding is None else plain_code(coding.system)


def unit_of(value: str) -> str | None:
    folded = value.strip().translate(_UNIT_FOLD)
    return folded if _UNIT.fullmatch(folded) else None


def flag_of(value: str) -> str | None:
    return value if _FLAG.fullmatch(value) else None


@lru_cache(maxsize=65536)
def iso_date(value: str) -> str | None:
    """``YYYY-MM-DD`` of an ISO date or date-time, or of an SS-MIX2 care date ``YYYYMMDD``; None if it is
    not a real date."""
    if len(value) == 8 and value.isdigit():
        value = f"{value[:4]}-{value[4:6]}-{value[6:]}"
    head = value[:10]
    if not _DATE.fullmatch(head):
        return None
    try:
        date.fromisoformat(head)
    except ValueError:
        return None
    return head


def number(value: str) -> float | None:
    """A finite decimal number, or None (text, ranges, comparators)."""
    text = value.strip()
    if not text or len(text) > 32:
        return None
    try:
        n = float(text)
    except ValueError:
        return None
    return n if math.isfinite(n) else None


def whole_days(value: str) -> int | None:
    text = value.strip()
    return int(text) if _DIGITS.fullmatch(text) else None


def age_at(birth: str | None, when: str | None) -> int | None:
    """Completed years between two ``YYYY-MM-DD`` dates; None if either is unknown or the event is before
    the birth."""
    if birth is None or when is None:
        return None
    b, w = _ymd(birth), _ymd(when)
    years = w[0] - b[0] - ((w[1], w[2]) < (b[1], b[2]))
    return years if years >= 0 else None


def _ymd(value: str) -> tuple[int, int, int]:
    return int(value[:4]), int(value[5:7]), int(value[8:10])


def birth_of(records: Iterable[Record]) -> str | None:
    """The birth date the newest patient record among ``records`` gives (the date-independent ``-`` record
    first, else the latest care date); None if none gives a valid one."""
    best: tuple[str, str] | None = None
    for r in records:
        if isinstance(r, Patient):
            rank = "99999999" if r.key.care_date == "-" else r.key.care_date
            if best is None or rank > best[0]:
                best = (rank, r.birth_date)
    return iso_date(best[1]) if best is not None else None


# --- records ------------------------------------------------------------------------------------------------


def _key(k: RecordKey, pid: str, order: str) -> dict[str, str]:
    return {"pid": pid, "date": k.care_date, "type": k.data_type, "order": order, "item": k.item}


def _when(k: RecordKey, *candidates: str) -> str | None:
    """The record's date: its care date, else the first valid date of ``candidates``."""
    for value in (k.care_date, *candidates):
        d = iso_date(value)
        if d is not None:
            return d
    return None


def research_fields(record: Record, birth: str | None, linkage_key: bytes) -> dict[str, Any]:
    """The kind's research fields of ``record`` (everything but the key), in encoding order."""
    k = record.key
    if isinstance(record, Patient):
        born = iso_date(record.birth_date)
        return {
            "link": link_hash(
                linkage_key, record.family_kana, record.given_kana, record.birth_date, record.sex
            ),
            "birth_ym": born[:7] if born else None,
            "sex": normalize_sex(record.sex),
        }
    if isinstance(record, Condition):
        when = _when(k, record.recorded, record.onset)
        return {
            "date": when,
            "age": age_at(birth, when),
            "icd10": plain_code(record.icd10),
            "medis": code_of(record.code),
            "onset": iso_date(record.onset),
            "resolved": iso_date(record.resolved),
            "outcome": code_of(record.outcome),
            "main": bool(record.main),
        }
    if isinstance(record, Allergy):
        when = _when(k, record.onset)
        return {
            "date": when,
            "age": age_at(birth, when),
            "category": code_of(record.category),
            "code": code_of(record.allergen),
            "system": system_of(record.allergen),
        }
    if isinstance(record, Prescription):
        when = _when(k, record.start, record.ordered_at)
        return {
            "date": when,
            "age": age_at(birth, when),
            "event": record.event,
            "code": code_of(record.drug),
            "system": system_of(record.drug),
            "amount": number(record.amount),
            "unit": code_of(record.unit),
            "days": whole_days(record.days),
        }
    if isinstance(record, Injection):
        when = _when(k, record.start, record.ordered_at)
        return {
            "date": when,
            "age": age_at(birth, when),
            "event": record.event,
            "components": [
                {
                    "role": plain_code(c.role),
                    "code": code_of(c.drug),
                    "system": system_of(c.drug),
                    "amount": number(c.amount),
                    "unit": code_of(c.unit),
                }
                for c in record.components
            ],
        }
    if isinstance(record, LabResult):
        when = _when(k, record.observed_at)
        return {
            "date": when,
            "age": age_at(birth, when),
            "code": code_of(record.code),
            "value": number(record.value) if record.value_type == "NM" else None,
            "unit": unit_of(record.unit),
            "flag": flag_of(record.flag),
        }
    raise TypeError(f"no research form for {type(record).__name__}")


def deidentify(
    p: Pseudonymizer, record: Record, birth: str | None, pid: str | None = None, order: str | None = None
) -> bytes:
    """The canonical research encoding of ``record``.  ``birth`` is the patient's full birth date
    (``YYYY-MM-DD``, for ages); ``pid`` and ``order`` the pseudonym and order hash if the caller has them
    already (one per patient and per unit: the reader computes them once)."""
    k = record.key
    doc = {
        "kind": record.kind,
        "v": RESEARCH_FORMAT_VERSION,
        "r": {
            "key": _key(k, pid or p.pseudonym(k.patient_id), order or p.order_hash(k.patient_id, k.order_no)),
            **research_fields(record, birth, p.linkage_key),
        },
    }
    return orjson.dumps(doc)

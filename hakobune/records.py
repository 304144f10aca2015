"""The canonical record model.

Six record kinds cover what disaster care needs: Patient, Condition, Allergy, Prescription, Injection and
LabResult.  Every record carries a stable :class:`RecordKey` (patient, data type, care date, order no, item)
and has a canonical byte encoding (:func:`encode`) whose hash is its content hash.  Changesets carry the
encoding; replay decodes it back (:func:`decode`) to an equal record.

Values are kept as the source wrote them (amounts as decimal strings, dates as ISO-8601 strings), so nothing
is lost on the way from SS-MIX2 to FHIR.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, get_type_hints, overload

import orjson
from typing_extensions import dataclass_transform

FORMAT_VERSION = 1
_T = TypeVar("_T")


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, order: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True)
def record(cls: type[_T] | None = None, /, *, order: bool = False) -> Any:
    """Declare an immutable record type.  The type checker treats it as a frozen dataclass, so assigning a
    field is a type error; at run time it is a plain slotted dataclass, because a frozen ``__init__`` costs
    3x more and a hospital baseline builds tens of millions of records.  ``unsafe_hash`` keeps records
    hashable by value, as frozen ones are."""
    make = dataclass(slots=True, unsafe_hash=True, order=order)
    return make if cls is None else make(cls)


@record
class Coding:
    """A coded value as SS-MIX2 wrote it: code, display text and the HL7 table id (``HOT9``, ``JC10`` …)."""

    code: str
    display: str = ""
    system: str = ""


@record(order=True)
class RecordKey:
    """Stable identity of a record.  (patient, care date, data type, order no) is the logical key of the
    SS-MIX2 file it came from; ``item`` tells records of one file apart (e.g. ``"2"`` for the 2nd order
    group, ``"1.3"`` for the 3rd OBX of the 1st OBR)."""

    patient_id: str
    care_date: str
    data_type: str
    order_no: str
    item: str

    @property
    def file_key(self) -> tuple[str, str, str, str]:
        return (self.patient_id, self.care_date, self.data_type, self.order_no)

    def __str__(self) -> str:
        return f"{self.patient_id}/{self.care_date}/{self.data_type}/{self.order_no}/{self.item}"


@record
class Patient:
    """Minimal demographics (ADT-00 PID).  Names as written: kanji (``IDE``) and kana (``SYL``)."""

    kind: ClassVar[str] = "patient"
    key: RecordKey
    family_kanji: str = ""
    given_kanji: str = ""
    family_kana: str = ""
    given_kana: str = ""
    birth_date: str = ""  # YYYY-MM-DD
    sex: str = "U"  # M | F | O | U (HL7 0001)
    postal_code: str = ""
    address: str = ""


@record
class Condition:
    """A problem / diagnosis (PPR-01 PRB): MEDIS disease exchange code and ICD-10."""

    kind: ClassVar[str] = "condition"
    key: RecordKey
    code: Coding
    icd10: str = ""
    name: str = ""  # free text (PRB-17 or the code's display): clinical use only
    onset: str = ""
    recorded: str = ""
    resolved: str = ""
    outcome: Coding | None = None
    main: bool = False
    action: str = ""  # PRB-1: AD add, UP update, DE delete …
    instance_id: str = ""


@record
class Allergy:
    """An allergy or intolerance (ADT-00 AL1, ADT-61 IAM)."""

    kind: ClassVar[str] = "allergy"
    key: RecordKey
    category: Coding  # HL7 0127: DA drug, FA food, EA environment, LA pollen, MA misc …
    allergen: Coding
    severity: Coding | None = None
    reaction: str = ""  # free text
    onset: str = ""
    action: str = ""  # IAM-6: A add, U update, D delete


@record
class Prescription:
    """An oral/external medication: ordered (OMP-01 RXE) or given (OMP-11 RXA)."""

    kind: ClassVar[str] = "prescription"
    key: RecordKey
    event: Literal["order", "administration"]
    drug: Coding
    amount: str = ""  # per dose (RXE-3 / RXA-6)
    unit: Coding | None = None
    dosage_form: Coding | None = None
    total_daily: str = ""  # RXE-19 amount
    dispense_amount: str = ""  # RXE-10
    dispense_unit: Coding | None = None
    usage: Coding | None = None  # TQ1-3 (JAMI usage code)
    days: str = ""  # TQ1-6 quantity in days
    route: Coding | None = None
    start: str = ""
    end: str = ""
    ordered_at: str = ""
    rp: str = ""  # ORC-4 placer group (Rp number)
    status: str = ""  # RXA-20 completion status


@record
class InjectionComponent:
    role: str  # RXC-1: B base, A additive; "" for administrations
    drug: Coding
    amount: str = ""
    unit: Coding | None = None


@record
class Injection:
    """An injection: ordered (OMP-02 RXE + RXC) or given (OMP-12 RXA)."""

    kind: ClassVar[str] = "injection"
    key: RecordKey
    event: Literal["order", "administration"]
    components: tuple[InjectionComponent, ...] = ()
    total_amount: str = ""
    unit: Coding | None = None
    rate: str = ""
    route: Coding | None = None
    instructions: str = ""  # free text
    start: str = ""
    end: str = ""
    ordered_at: str = ""
    status: str = ""


@record
class LabResult:
    """One laboratory result (OML-11 OBX) with its specimen and battery."""

    kind: ClassVar[str] = "lab"
    key: RecordKey
    code: Coding  # JLAC10
    value_type: str = ""  # NM, ST, CWE …
    value: str = ""
    unit: str = ""
    reference_range: str = ""
    flag: str = ""  # OBX-8: H, L, N …
    status: str = ""  # OBX-11: F final, C corrected …
    observed_at: str = ""
    specimen: Coding | None = None
    battery: Coding | None = None


Record = Patient | Condition | Allergy | Prescription | Injection | LabResult
RECORD_TYPES: tuple[type[Record], ...] = (Patient, Condition, Allergy, Prescription, Injection, LabResult)
BY_KIND: dict[str, type[Record]] = {t.kind: t for t in RECORD_TYPES}


def encode(record: Record) -> bytes:
    """Canonical bytes of a record: compact JSON, ``kind`` first, fields in declaration order.

    Equal records encode to equal bytes; the encoding is what changesets carry and what is hashed."""
    return orjson.dumps({"kind": record.kind, "v": FORMAT_VERSION, "r": record})


def content_hash(record: Record) -> str:
    """Hex BLAKE2b-128 of :func:`encode`: changes exactly when the record's content changes."""
    return hashlib.blake2b(encode(record), digest_size=16).hexdigest()


def hash_encoded(data: bytes) -> str:
    """Content hash of already-encoded bytes (same value as :func:`content_hash`)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _coding(v: Any) -> Coding | None:
    return None if v is None else Coding(**v)


def _component(v: dict[str, Any]) -> InjectionComponent:
    return InjectionComponent(
        role=v["role"], drug=Coding(**v["drug"]), amount=v["amount"], unit=_coding(v["unit"])
    )


def _converter(tp: Any) -> Callable[[Any], Any] | None:
    """How to rebuild a field of declared type ``tp`` from its JSON value (None: as it is)."""
    if tp is RecordKey:
        return lambda v: RecordKey(**v)
    if tp is Coding or tp == Coding | None:
        return _coding
    if tp == tuple[InjectionComponent, ...]:
        return lambda v: tuple(_component(c) for c in v)
    return None


_FIELDS: dict[type[Any], tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {
    t: tuple((name, _converter(tp)) for name, tp in get_type_hints(t).items() if name != "kind")
    for t in RECORD_TYPES
}


def decode(data: bytes) -> Record:
    """Inverse of :func:`encode`.  Raises ValueError on bytes that are not a known record encoding."""
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
        raise ValueError("not a record encoding of a known version")
    cls = BY_KIND.get(obj.get("kind", ""))
    raw = obj.get("r")
    if cls is None or not isinstance(raw, dict):
        raise ValueError(f"unknown record kind {obj.get('kind')!r}")
    kwargs: dict[str, Any] = {}
    for name, conv in _FIELDS[cls]:
        if name not in raw:
            raise ValueError(f"{cls.kind} record lacks field {name!r}")
        value = raw[name]
        kwargs[name] = conv(value) if conv is not None else value
    return cls(**kwargs)

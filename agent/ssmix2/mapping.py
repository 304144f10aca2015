"""SS-MIX2 segments → canonical records, one mapper per data type.

Segments arrive padded to :data:`agent.ssmix2.message.PAD` fields, so fields are indexed directly.

Field positions follow the SS-MIX2 guideline (構成の説明と構築ガイドライン) and JAMI's ssmix2-to-fhir
ConceptMaps; the comment beside each assignment names the HL7 field.  Coded values keep the message's own
table id (``HOT9``, ``JC10``, ``MDCDX2`` …); :mod:`hakobune.codes` maps those to FHIR systems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from agent.ssmix2.layout import SsmixName
from agent.ssmix2.message import Message
from hakobune.compiled import compiled
from hakobune.hl7 import field_masks, to_iso, unescape
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

Warnings = list[str]


_MISS = object()
#: Codings by separator, then by the field's text: shared across messages (immutable values), bounded.
_CODINGS: dict[str, dict[str, Coding | None]] = {}
_CODINGS_MAX = 200_000


def _coding_cache(sep: str) -> dict[str, Coding | None]:
    cache = _CODINGS.get(sep)
    if cache is None or len(cache) > _CODINGS_MAX:
        cache = _CODINGS[sep] = {}
    return cache


class _Ctx:
    """Field access for one message, with its delimiters."""

    __slots__ = ("codings", "comp", "name", "pid", "rep", "sub")

    def __init__(self, msg: Message, name: SsmixName) -> None:
        d = msg.delimiters
        self.comp, self.rep, self.sub = d.component, d.repetition, d.subcomponent
        self.name = name
        self.pid: list[str] | None = None
        self.codings = _coding_cache(self.comp)

    def key(self, item: str) -> RecordKey:
        n = self.name
        return RecordKey(n.patient_id, n.care_date, n.data_type, n.order_no, item)

    def comps(self, value: str) -> list[str]:
        return value.split(self.comp)

    def coding(self, value: str, sep: str | None = None) -> Coding | None:
        """CWE/CE (code^text^system) or, with ``sep=sub``, its subcomponent form; None when empty.

        The same few thousand codes recur in every message, so codings are shared from a bounded cache
        (they are immutable values)."""
        if not value:
            return None
        cache = self.codings if sep is None else _coding_cache(sep)
        hit = cache.get(value, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        result = cache[value] = self._coding(value, sep)
        return result

    def _coding(self, value: str, sep: str | None) -> Coding | None:
        parts = value.split(sep or self.comp, 3)
        if "\\" in value:
            parts = [unescape(x) for x in parts]
        n = len(parts)
        if n >= 3:
            return Coding(parts[0], parts[1], parts[2]) if parts[0] or parts[1] else None
        if n == 2:
            return Coding(parts[0], parts[1]) if parts[0] or parts[1] else None
        return Coding(parts[0])

    def text(self, value: str) -> str:
        """The text of a CWE (component 2, else the code): what a person reads."""
        c = self.coding(value)
        return "" if c is None else (c.display or c.code)

    def first_rep(self, value: str) -> str:
        return value.split(self.rep, 1)[0]


def _pid(ctx: _Ctx, msg: Message, warnings: Warnings) -> list[str] | None:
    for seg in msg.segments:
        if seg[0] == "PID":
            pid3 = seg[3].split(ctx.rep, 1)[0].split(ctx.comp, 1)[0]  # PID-3: first repetition, ID number
            if pid3 and pid3 != ctx.name.patient_id:
                warnings.append("PID-3 differs from the file's patient ID")
            return seg
    return None


def _is_kana(text: str) -> bool:
    return bool(text) and all(
        "\u30a0" <= c <= "\u30ff" or "\uff65" <= c <= "\uff9f" or "\u3040" <= c <= "\u309f" or c in " 　"
        for c in text
    )


def map_patient(ctx: _Ctx, pid: list[str]) -> Patient:
    fam_kanji = giv_kanji = fam_kana = giv_kana = ""
    for rep in pid[5].split(ctx.rep):  # PID-5 patient name: XPN, I = ideographic, P = phonetic
        c = ctx.comps(rep)
        family = unescape(c[0]) if c else ""
        given = unescape(c[1]) if len(c) > 1 else ""
        repr_code = c[7] if len(c) > 7 else ""
        if repr_code == "P" or (repr_code != "I" and _is_kana(family + given)):
            if not (fam_kana or giv_kana):
                fam_kana, giv_kana = family, given
        elif not (fam_kanji or giv_kanji):
            fam_kanji, giv_kanji = family, given
    sex = pid[8][:1]
    postal = address = ""
    for rep in pid[11].split(ctx.rep):  # PID-11 XAD: home (H) first
        c = ctx.comps(rep)
        if not any(c):
            continue
        full = unescape(c[7]) if len(c) > 7 else ""
        if not full:
            full = "".join(unescape(x) for x in (c[3:4] + c[2:3] + c[0:2]) if x)
        if not address or (len(c) > 6 and c[6] == "H"):
            postal, address = (c[4] if len(c) > 4 else ""), full
            if len(c) > 6 and c[6] == "H":
                break
    return Patient(
        key=ctx.key("PID"),
        family_kanji=fam_kanji,
        given_kanji=giv_kanji,
        family_kana=fam_kana,
        given_kana=giv_kana,
        birth_date=to_iso(pid[7][:8]),  # PID-7
        sex=sex if sex in ("M", "F", "O") else "U",  # PID-8
        postal_code=postal,
        address=address,
    )


def _map_adt00(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    assert ctx.pid is not None
    out: list[Record] = [map_patient(ctx, ctx.pid), *_allergies(ctx, msg, "AL1", w)]
    return out


def _allergies(ctx: _Ctx, msg: Message, sid: str, w: Warnings) -> list[Record]:
    """AL1 (ADT-00) and IAM (ADT-61) agree on fields 2–5: allergen type, allergen, severity, reaction."""
    out: list[Record] = []
    n = 0
    for seg in msg.segments:
        if seg[0] != sid:
            continue
        n += 1
        allergen = ctx.coding(seg[3])
        if allergen is None:
            w.append(f"{sid} without an allergen")
            continue
        if sid == "AL1":
            onset, action = to_iso(seg[6]), ""  # AL1-6 identification date
        else:  # IAM-11 onset date (or IAM-12 onset text), IAM-6 allergy action code (A/U/D)
            onset, action = to_iso(seg[11]) or unescape(seg[12]), ctx.comps(seg[6])[0]
        out.append(
            Allergy(
                key=ctx.key(f"{sid}.{n}"),
                category=ctx.coding(seg[2]) or Coding(""),
                allergen=allergen,
                severity=ctx.coding(seg[4]),
                reaction=unescape(seg[5]),
                onset=onset,
                action=action,
            )
        )
    return out


def _map_adt61(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    return _allergies(ctx, msg, "IAM", w)


def _map_ppr01(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    out = _run_compiled(fast_condition, ctx, msg, w)
    return out if out is not None else _map_ppr01_python(ctx, msg, w)


def _map_ppr01_python(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    out: list[Record] = []
    n = 0
    coding, comp = ctx.coding, ctx.comp
    nm = ctx.name
    pid, care_date, data_type, order_no = nm.patient_id, nm.care_date, nm.data_type, nm.order_no
    for seg in msg.segments:
        if seg[0] != "PRB":
            continue
        n += 1
        code = coding(seg[3])  # PRB-3 problem ID (MEDIS disease exchange code)
        if code is None:
            w.append("PRB without a problem code")
            continue
        icd = seg[10].split(comp)  # PRB-10 problem classification: ICD-10^^I10
        out.append(
            Condition(
                RecordKey(pid, care_date, data_type, order_no, str(n)),
                code,
                icd[0] if len(icd) < 3 or icd[2] in ("I10", "ICD10") else "",  # icd10
                unescape(seg[17]) or code.display,  # name: PRB-17 onset text (the disease name)
                to_iso(seg[16]),  # onset: PRB-16 problem date of onset
                to_iso(seg[7]),  # recorded: PRB-7 problem established date
                to_iso(seg[9]),  # resolved: PRB-9 actual problem resolution date
                coding(seg[14]),  # outcome: PRB-14 problem life cycle status (HL70241)
                seg[18].split(comp, 1)[0] == "1",  # main: PRB-18 problem ranking, 1 = main diagnosis
                seg[1],  # action: PRB-1 action code
                seg[4],  # instance_id: PRB-4 problem instance ID
            )
        )
    return out


def _orc_groups(msg: Message) -> list[list[list[str]]]:
    """Segments after MSH/PID/PV1 split into order groups, each starting at an ORC."""
    groups: list[list[list[str]]] = []
    for seg in msg.segments:
        if seg[0] == "ORC":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


def _first(group: list[list[str]], sid: str) -> list[str] | None:
    for seg in group:
        if seg[0] == sid:
            return seg
    return None


def _map_rde_oral(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    fast = fast_rx_order
    if fast is not None:
        head, codings, sub_codings = ctx.name.file_key, ctx.codings, _coding_cache(ctx.sub)
        out = fast(msg.segments, head, ctx.comp, ctx.sub, codings, sub_codings, ctx.coding, to_iso, w)
        if out is not None:
            return out
    return _map_rde_oral_python(ctx, msg, w)


def _map_rde_oral_python(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    # Hot: positional construction in Prescription's field order, locals for look-ups.
    out: list[Record] = []
    n = 0
    coding, comp = ctx.coding, ctx.comp
    nm = ctx.name
    pid, care_date, data_type, order_no = nm.patient_id, nm.care_date, nm.data_type, nm.order_no
    for group in _orc_groups(msg):
        orc = group[0]
        tq1 = _first(group, "TQ1")
        rxr = _first(group, "RXR")
        route = coding(rxr[1]) if rxr else None  # RXR-1 route
        ordered_at = to_iso(orc[9])  # ORC-9 date/time of transaction
        days = start = end = ""
        usage = None
        if tq1 is not None:
            usage = coding(tq1[3].split(comp, 1)[0], ctx.sub)  # TQ1-3 repeat pattern (JAMI usage)
            dur = tq1[6].split(comp)  # TQ1-6 service duration: n^d
            days = dur[0] if len(dur) > 1 and dur[1] == "d" else ""
            start, end = to_iso(tq1[7]), to_iso(tq1[8])  # TQ1-7 start, TQ1-8 end date/time
        for seg in group:
            if seg[0] != "RXE":
                continue
            n += 1
            drug = coding(seg[2])  # RXE-2 give code (HOT9)
            if drug is None:
                w.append("RXE without a drug code")
                continue
            out.append(
                Prescription(
                    RecordKey(pid, care_date, data_type, order_no, str(n)),
                    "order",
                    drug,
                    seg[3],  # amount: RXE-3 give amount - minimum
                    coding(seg[5]),  # unit: RXE-5 give units
                    coding(seg[6]),  # dosage_form: RXE-6 give dosage form
                    seg[19].split(comp, 1)[0],  # total_daily: RXE-19 total daily dose
                    seg[10],  # dispense_amount: RXE-10 dispense amount
                    coding(seg[11]),  # dispense_unit: RXE-11 dispense units
                    usage,
                    days,
                    route,
                    start,
                    end,
                    ordered_at,
                    orc[4],  # rp: ORC-4 placer group number (Rp)
                )
            )
    if n == 0:
        raise _missing("RXE")
    return out


def _map_ras_oral(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    fast = fast_rx_given
    if fast is not None:
        out = fast(msg.segments, ctx.name.file_key, ctx.codings, ctx.coding, to_iso, w)
        if out is not None:
            return out
    return _map_ras_oral_python(ctx, msg, w)


def _map_ras_oral_python(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    out: list[Record] = []
    n = 0
    coding = ctx.coding
    nm = ctx.name
    pid, care_date, data_type, order_no = nm.patient_id, nm.care_date, nm.data_type, nm.order_no
    for g, group in enumerate(_orc_groups(msg), start=1):
        rxr = _first(group, "RXR")
        route = coding(rxr[1]) if rxr else None  # RXR-1 route
        orc = group[0]
        ordered_at = to_iso(orc[9])  # ORC-9
        r = 0
        for seg in group:
            if seg[0] != "RXA":
                continue
            n += 1
            r += 1
            drug = coding(seg[5])  # RXA-5 administered code (HOT9)
            if drug is None:
                w.append("RXA without a drug code")
                continue
            out.append(
                Prescription(
                    RecordKey(pid, care_date, data_type, order_no, f"{g}.{r}"),
                    "administration",
                    drug,
                    seg[6],  # amount: RXA-6 administered amount
                    coding(seg[7]),  # unit: RXA-7 administered units
                    route=route,
                    start=to_iso(seg[3]),  # RXA-3 start of administration
                    end=to_iso(seg[4]),  # RXA-4 end of administration
                    ordered_at=ordered_at,
                    rp=orc[4],
                    status=seg[20],  # RXA-20 completion status
                )
            )
    if n == 0:
        raise _missing("RXA")
    return out


def _map_rde_injection(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    out: list[Record] = []
    n = 0
    for group in _orc_groups(msg):
        rxe = _first(group, "RXE")
        if rxe is None:
            continue
        n += 1
        tq1 = _first(group, "TQ1")
        rxr = _first(group, "RXR")
        comps = tuple(
            InjectionComponent(
                role=seg[1],  # RXC-1 component type: B base, A additive
                drug=ctx.coding(seg[2]) or Coding(""),  # RXC-2 component code (HOT9)
                amount=seg[3],  # RXC-3 component amount
                unit=ctx.coding(seg[4]),  # RXC-4 component units
            )
            for seg in group
            if seg[0] == "RXC"
        )
        rate_unit = ctx.comps(rxe[24])[0]  # RXE-24 give rate units
        out.append(
            Injection(
                key=ctx.key(str(n)),
                event="order",
                components=comps,
                total_amount=rxe[3],  # RXE-3 give amount
                unit=ctx.coding(rxe[5]),  # RXE-5 give units
                rate=(rxe[23] + (" " + rate_unit if rate_unit else "")) if rxe[23] else "",  # RXE-23
                route=ctx.coding(rxr[1]) if rxr else None,
                instructions=ctx.text(rxe[7]),  # RXE-7 provider's administration instructions (CWE)
                start=to_iso(tq1[7]) if tq1 else "",  # TQ1-7 start date/time
                end=to_iso(tq1[8]) if tq1 else "",  # TQ1-8 end date/time
                ordered_at=to_iso(group[0][9]),
            )
        )
    if n == 0:
        raise _missing("RXE")
    return out


def _map_ras_injection(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    out: list[Record] = []
    for g, group in enumerate(_orc_groups(msg), start=1):
        rxas = [seg for seg in group if seg[0] == "RXA"]
        if not rxas:
            continue
        rxr = _first(group, "RXR")
        comps = tuple(
            InjectionComponent(
                role="",
                drug=ctx.coding(seg[5]) or Coding(""),  # RXA-5 administered code
                amount=seg[6],  # RXA-6
                unit=ctx.coding(seg[7]),  # RXA-7
            )
            for seg in rxas
        )
        first = rxas[0]
        out.append(
            Injection(
                key=ctx.key(str(g)),
                event="administration",
                components=comps,
                rate=unescape(first[12]),  # RXA-12 administered per (time unit)
                route=ctx.coding(rxr[1]) if rxr else None,
                instructions=ctx.text(first[9]),  # RXA-9 administration notes (CWE)
                start=to_iso(first[3]),
                end=to_iso(first[4]),
                ordered_at=to_iso(group[0][9]),
                status=first[20],
            )
        )
    if not out:
        raise _missing("RXA")
    return out


_CODED = frozenset(("CWE", "CE", "CNE"))

FastMapper = Callable[..., list[Record] | None]


FastMappers = tuple[FastMapper | None, FastMapper | None, FastMapper | None, FastMapper | None]


def _load_fast_mappers() -> FastMappers:
    """The compiled mappers of lab results, prescription orders and administrations and problems
    (agent/ssmix2/_fastmap.c), given the record classes; None without them (or with
    ``HAKOBUNE_PURE_PYTHON=1``)."""

    def names(cls: type) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def load() -> FastMappers:
        from agent.ssmix2 import _fastmap

        _fastmap.register(
            RecordKey,
            names(RecordKey),
            LabResult,
            names(LabResult),
            Prescription,
            names(Prescription),
            Condition,
            names(Condition),
        )
        return _fastmap.map_lab, _fastmap.map_rx_order, _fastmap.map_rx_given, _fastmap.map_condition

    return compiled(load) or (None, None, None, None)


#: The compiled forms of :func:`_map_oul`, :func:`_map_rde_oral`, :func:`_map_ras_oral` and
#: :func:`_map_ppr01` (same records; tests compare), or None.
fast_lab, fast_rx_order, fast_rx_given, fast_condition = _load_fast_mappers()


def _run_compiled(fast: FastMapper | None, ctx: _Ctx, msg: Message, w: Warnings) -> list[Record] | None:
    """What the compiled mapper ``fast`` (one of map_lab's arguments) makes of the message; None when it
    steps aside or is not built."""
    if fast is None:
        return None
    return fast(msg.segments, ctx.name.file_key, ctx.comp, ctx.codings, ctx.coding, to_iso, unescape, w)


def _map_oul(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    out = _run_compiled(fast_lab, ctx, msg, w)
    return out if out is not None else _map_oul_python(ctx, msg, w)


def _map_oul_python(ctx: _Ctx, msg: Message, w: Warnings) -> list[Record]:
    # The hot loop of a baseline (lab files hold most records): locals instead of attribute look-ups, the
    # coding cache read inline, positional construction (field order of LabResult), unescape only where a
    # backslash is present, the observation time converted once per distinct value.
    out: list[Record] = []
    specimen: Coding | None = None
    battery: Coding | None = None
    obr_time = ""
    b = 0
    o = 0
    coding, comp = ctx.coding, ctx.comp
    cached = ctx.codings.get
    n = ctx.name
    pid, care_date, data_type, order_no = n.patient_id, n.care_date, n.data_type, n.order_no
    last_obs = last_iso = ""
    prefix = "1."
    for seg in msg.segments:
        sid = seg[0]
        if sid == "OBX":
            o += 1
            code = cached(seg[3], _MISS)  # OBX-3 observation identifier (JLAC10)
            if code is _MISS:
                code = coding(seg[3])
            if code is None:
                w.append("OBX without an observation code")
                continue
            vtype = seg[2]  # OBX-2 value type
            value = seg[5]  # OBX-5 observation value
            if vtype in _CODED:
                c = value.split(comp)
                value = c[1] if len(c) > 1 and c[1] else c[0]
            unit = seg[6]  # OBX-6 units
            if comp in unit:
                unit = unit.split(comp, 1)[0]
            ref = seg[7]  # OBX-7 references range
            if "\\" in value or "\\" in unit or "\\" in ref:
                value, unit, ref = unescape(value), unescape(unit), unescape(ref)
            flag = seg[8]  # OBX-8 abnormal flags
            if comp in flag:
                flag = flag.split(comp, 1)[0]
            observed = seg[14]  # OBX-14 date/time of the observation
            if observed != last_obs:
                last_obs, last_iso = observed, to_iso(observed)
            out.append(
                LabResult(
                    RecordKey(pid, care_date, data_type, order_no, prefix + str(o)),
                    code,  # type: ignore[arg-type]
                    vtype,
                    value,
                    unit,
                    ref,
                    flag,
                    seg[11],  # OBX-11 observation result status
                    last_iso or obr_time,
                    specimen,
                    battery,
                )
            )
        elif sid == "SPM":
            specimen = coding(seg[4])  # SPM-4 specimen type (JLAC10 material)
        elif sid == "OBR":
            b += 1
            o = 0
            prefix = f"{b}."
            battery = coding(seg[4])  # OBR-4 universal service identifier
            obr_time = to_iso(seg[7])  # OBR-7 observation date/time
    return out


class MissingSegment(Exception):
    """A required segment is absent: the reader quarantines the file with this message."""


def _missing(sid: str) -> MissingSegment:
    return MissingSegment(f"no {sid} segment (truncated or not a complete message)")


MAPPERS: dict[str, Callable[[_Ctx, Message, Warnings], list[Record]]] = {
    "ADT-00": _map_adt00,
    "ADT-61": _map_adt61,
    "PPR-01": _map_ppr01,
    "OMP-01": _map_rde_oral,
    "OMP-11": _map_ras_oral,
    "OMP-02": _map_rde_injection,
    "OMP-12": _map_ras_injection,
    "OML-11": _map_oul,
}


#: The fields each data type's mapper reads, by segment (HL7 field numbers), besides MSH-9 (the message
#: type :func:`agent.ssmix2.message.parse` checks) and PID-3 (:func:`_pid`).  The reader's split makes only
#: these (a lab file's other fields are ~60% of its strings); a field a mapper reads must be listed here.
#: tests/agent/test_fast_map.py maps messages with and without the masks and compares.
FIELDS_READ: dict[str, dict[str, tuple[int, ...]]] = {
    "ADT-00": {"PID": (3, 5, 7, 8, 11), "AL1": (2, 3, 4, 5, 6)},
    "ADT-61": {"IAM": (2, 3, 4, 5, 6, 11, 12)},
    "PPR-01": {"PRB": (1, 3, 4, 7, 9, 10, 14, 16, 17, 18)},
    "OMP-01": {"ORC": (4, 9), "TQ1": (3, 6, 7, 8), "RXR": (1,), "RXE": (2, 3, 5, 6, 10, 11, 19)},
    "OMP-11": {"ORC": (4, 9), "RXR": (1,), "RXA": (3, 4, 5, 6, 7, 20)},
    "OMP-02": {"ORC": (9,), "TQ1": (7, 8), "RXR": (1,), "RXC": (1, 2, 3, 4), "RXE": (3, 5, 7, 23, 24)},
    "OMP-12": {"ORC": (9,), "RXR": (1,), "RXA": (3, 4, 5, 6, 7, 9, 12, 20)},
    "OML-11": {"OBX": (2, 3, 5, 6, 7, 8, 11, 14), "SPM": (4,), "OBR": (4, 7)},
}


def _masks(read: dict[str, tuple[int, ...]]) -> bytes:
    pid = tuple(sorted({3, *read.get("PID", ())}))
    return field_masks({**read, "MSH": (9,), "PID": pid})


#: :data:`FIELDS_READ` packed for :func:`agent.ssmix2.message.parse`, by data type.
FIELD_MASKS: dict[str, bytes] = {data_type: _masks(read) for data_type, read in FIELDS_READ.items()}


def to_records(msg: Message, name: SsmixName, warnings: Warnings) -> list[Record]:
    """Records of a validated message of an in-scope data type (raises MissingSegment).  Every in-scope
    message must identify its patient (PID)."""
    ctx = _Ctx(msg, name)
    ctx.pid = _pid(ctx, msg, warnings)
    if ctx.pid is None:
        raise _missing("PID")
    return MAPPERS[name.data_type](ctx, msg, warnings)

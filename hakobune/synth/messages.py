"""HL7 v2.5 messages in the shape of the SS-MIX2 guideline samples, one builder per data type.

Segments are built as text with the same fields in the same positions as the guideline samples and
encoded with :func:`hakobune.hl7.encode_message` (ISO-2022-JP, CR after each segment, a trailing 0x1C).
The PID segment, the only one carrying names that may need the CP50220 extensions (髙, 﨑 …), is encoded
once per demographics version and reused; ISO-2022-JP returns to ASCII before every CR, so encoding a
message segment by segment gives exactly the bytes of encoding it whole.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

from hakobune.hl7 import encode_message, escape
from hakobune.synth import clinical as C
from hakobune.synth import names as N
from hakobune.synth.model import (
    Allergies,
    AllergyEntry,
    Demo,
    Demographics,
    Given,
    InjectionSet,
    LabReport,
    Other,
    Prescription,
    ProblemList,
    Version,
    Visit,
    date8,
    ts12,
    ts14,
    ts17,
)

MESSAGE_TYPES: dict[str, str] = {
    "ADT-00": "ADT^A08^ADT_A01",
    "ADT-61": "ADT^A60^ADT_A60",
    "PPR-01": "PPR^ZD1^PPR_ZD1",
    "OMP-01": "RDE^O11^RDE_O11",
    "OMP-02": "RDE^O11^RDE_O11",
    "OMP-11": "RAS^O17^RAS_O17",
    "OMP-12": "RAS^O17^RAS_O17",
    "OML-11": "OUL^R22^OUL_R22",
    "ADT-22": "ADT^A01^ADT_A01",
    "OMG-01": "OMG^O19^OMG_O19",
}

HOSPITAL = "はこぶね記念病院"
HOSPITAL_ADDRESS = "^^^^422-8033^JPN^^静岡県静岡市駿河区登呂3-1-1"
HOSPITAL_PHONE = "^^^^^^^^^^^054-000-1234"
_SS_MIX2 = "SS-MIX2_1.20^SS-MIX2^1.2.392.200250.2.1.100.1.2.120^ISO"


def _enc(text: str) -> bytes:
    try:
        return text.encode("iso2022_jp")
    except UnicodeEncodeError:
        return encode_message([text])[:-2]


def _strict_ok(text: str) -> bool:
    try:
        text.encode("iso2022_jp")
        return True
    except UnicodeEncodeError:
        return False


# ---------------------------------------------------------------------------------------------- staff
@lru_cache(maxsize=8)
def staff(seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(doctors, nurses) as HL7 XCN values; four doctors per department slot, a dozen nurses."""
    rng = random.Random(f"{seed}:staff")
    surnames = [n for n in N.SURNAMES if _strict_ok(n.kanji)]
    given = [
        n for t in (N.MALE_NAMES, N.FEMALE_NAMES) for era in ("m", "y") for n in t[era] if _strict_ok(n.kanji)
    ]

    def xcn(prefix: int, n: int) -> str:
        f, g = rng.choice(surnames), rng.choice(given)
        return f"{prefix + n}^{f.kanji}^{g.kanji}^^^^^^^L^^^^^I"

    doctors = tuple(xcn(100, n) for n in range(4 * len(C.DEPARTMENTS)))
    nurses = tuple(xcn(500, n) for n in range(12))
    return doctors, nurses


_DEPT_SLOT = {code: n for n, code in enumerate(C.DEPARTMENTS)}


def _doctor(seed: int, dept: str, n: int) -> str:
    return staff(seed)[0][4 * _DEPT_SLOT.get(dept, 0) + n % 4]


def _nurse(seed: int, n: int) -> str:
    return staff(seed)[1][n % 12]


# ------------------------------------------------------------------------------------------ segments
def msh(dtype: str, ts: int) -> str:
    t = ts17(ts)
    return (
        f"MSH|^~\\&|HIS123|SEND|GW|RCV|{t[:14]}.{t[14:]}||{MESSAGE_TYPES[dtype]}|{t}|P|2.5"
        f"||||||~ISO IR87||ISO2022-1994|{_SS_MIX2}"
    )


@lru_cache(maxsize=256)
def pid_segment(pid: str, d: Demo) -> str:
    """PID with patient ID (PI), kanji (I) and kana (P) names, birth date, sex, address and phone."""
    name = (
        f"{escape(d.family)}^{escape(d.given)}^^^^^L^I~{escape(d.family_kana)}^{escape(d.given_kana)}^^^^^L^P"
    )
    phone_kind = "CP" if d.phone.startswith(("090", "080", "070")) else "PH"
    return (
        f"PID|0001||{pid}^^^^PI||{name}||{d.birth}|{d.sex}|||^^^^{d.postal}^JPN^H^{escape(d.address)}"
        f"||^PRN^{phone_kind}^^^^^^^^^{d.phone}"
    )


@lru_cache(maxsize=256)
def pid_bytes(pid: str, d: Demo) -> bytes:
    return _enc(pid_segment(pid, d))


def pv1(seed: int, v: Visit) -> str:
    doc = _doctor(seed, v.dept, v.doctor)
    if v.inpatient:
        ward = 30 + int(v.order[-4:-2]) % 8
        return f"PV1|0001|I|{ward}^{ward}{int(v.order[-2:]) % 10 + 1:02d}^^^^N||||{doc}|||{v.dept}"
    return f"PV1|0001|O|{v.dept}^^^^^C||||{doc}|||{v.dept}"


def _location(v: Visit) -> str:
    return f"{30 + int(v.order[-4:-2]) % 8}^^^^^N" if v.inpatient else f"{v.dept}^^^^^C"


def _patient_class(v: Visit) -> str:
    return "I^入院患者オーダ^HL70482" if v.inpatient else "O^外来患者オーダ^HL70482"


def orc(
    seed: int, v: Visit, placer_group: str, control: str = "NW", filler: str = "", status: str = ""
) -> str:
    f = [""] * 30
    f[0] = "ORC"
    f[1] = control
    f[2] = v.order
    f[3] = filler
    f[4] = placer_group
    f[5] = status
    f[9] = ts14(v.t)
    f[10] = _nurse(seed, v.doctor + 3)
    f[12] = _doctor(seed, v.dept, v.doctor)
    f[13] = _location(v)
    f[17] = f"{v.dept}^{C.DEPARTMENTS.get(v.dept, '内科')}^99XY1"
    f[18] = f"PC{int(v.order[-2:]):02d}^^99XY2"
    f[21] = HOSPITAL
    f[22] = HOSPITAL_ADDRESS
    f[23] = HOSPITAL_PHONE
    f[29] = _patient_class(v)
    return "|".join(f)


def _num(x: float) -> str:
    s = f"{x:.3f}".rstrip("0").rstrip(".")
    return s or "0"


# ---------------------------------------------------------------------------------------- builders
def _adt00(seed: int, pid: str, v: Version, pl: Demographics) -> tuple[list[str], list[str]]:
    pre = [msh(v.dtype, v.ts), f"EVN||{ts12(v.ts)}|||||{_nurse(seed, 0).split('^')[0]}"]
    post = ["PV1|0001|O"]
    if pl.height > 0:
        post.append(f"OBX|1|NM|9N001000000000001^身長^JC10||{pl.height:.1f}|cm^cm^ISO+|||||F")
        post.append(f"OBX|2|NM|9N006000000000001^体重^JC10||{pl.weight:.1f}|kg^kg^ISO+|||||F")
    for n, a in enumerate(pl.al1, 1):
        post.append(f"AL1|{n}|{_allergy_fields(a)}")
    return pre, post


def _allergy_fields(a: AllergyEntry) -> str:
    al = C.ALLERGENS[a.allergen]
    sev, sev_name = C.SEVERITIES[a.severity]
    return (
        f"{al.category}^{al.category_name}^HL70127|{al.code}^{escape(al.name)}^{al.system}|"
        f"{sev}^{sev_name}^HL70128|{escape(a.reaction)}"
    )


def _adt61(seed: int, pid: str, v: Version, pl: Allergies) -> tuple[list[str], list[str]]:
    pre = [msh(v.dtype, v.ts), f"EVN||{ts14(v.ts)}"]
    post = [f"IAM|{n}|{_allergy_fields(a)}|A^追加^HL70323|||||{a.onset}" for n, a in enumerate(pl.entries, 1)]
    return pre, post


def _ppr01(seed: int, pid: str, v: Version, pl: ProblemList) -> tuple[list[str], list[str]]:
    pre = [msh(v.dtype, v.ts)]
    post: list[str] = []
    for p in pl.problems:
        d = C.DIAGNOSES[p.diagnosis]
        f = [""] * 19
        f[0] = "PRB"
        f[1] = "AD"
        f[2] = p.recorded
        f[3] = f"{d.medis}^{d.name}^MDCDX2"
        f[4] = p.instance_id
        f[7] = p.recorded
        f[9] = p.resolved
        f[10] = f"{d.icd10}^^I10"
        f[14] = "R^回復^HL70241" if p.resolved else "N^回復せず^HL70241"
        f[16] = p.onset
        f[17] = escape(d.name)
        f[18] = "1^主診断^JHSD0007" if p.main else ""
        post.append("|".join(f).rstrip("|"))
    doc = _doctor(seed, pl.dept, pl.doctor)
    dept_name = C.DEPARTMENTS.get(pl.dept, "内科")
    post.append(
        f"ORC|NW|{v.order}||||||||||{doc}|||||{pl.dept}^{dept_name}^MML028||||||||||||O^外来患者オーダ^HL70482"
    )
    return pre, post


def _omp01(seed: int, pid: str, v: Version, pl: Prescription) -> tuple[list[str], list[str]]:
    vis = pl.visit
    pre = [msh(v.dtype, v.ts)]
    post = [pv1(seed, vis)]
    kind = "IHP^入院処方^MR9P~FTP^定時処方^99I01" if vis.inpatient else "OHP^外来処方^MR9P~OHI^院内処方^MR9P"
    start = date8(vis.t) + "0800"
    for line in pl.lines:
        d = C.ORAL_DRUGS[line.drug]
        u = C.USAGES[d.usage]
        dose = float(line.dose)
        unit = f"{d.unit}^{d.unit_name}^MR9P"
        per_day = dose * u.per_day
        dispense = per_day * line.days
        f = [""] * 22
        f[0] = "RXE"
        f[2] = _ORAL_CWE[line.drug]
        f[3] = line.dose
        f[5] = unit
        f[6] = f"{d.form}^{d.form_name}^MR9P"
        f[10] = _num(dispense)
        f[11] = unit
        f[15] = f"{vis.order[:12]}{line.rp:03d}"
        f[19] = f"{_num(per_day)}^{d.unit}&{d.unit_name}&MR9P"
        f[21] = kind
        post.append(orc(seed, vis, str(line.rp)))
        post.append("|".join(f))
        post.append(f"TQ1|1||{u.code}&{u.text}&JAMISDP01|||{line.days}^d|{start}")
        post.append("RXR|PO^口^HL70162")
    return pre, post


def _omp11(seed: int, pid: str, v: Version, pl: Given) -> tuple[list[str], list[str]]:
    vis = pl.visit
    pre = [msh(v.dtype, v.ts)]
    post = [pv1(seed, vis)]
    at = ts12(pl.at)
    nurse = _nurse(seed, vis.doctor)
    rps: dict[int, list[str]] = {}
    for line in pl.lines:
        d = C.ORAL_DRUGS[line.drug]
        rps.setdefault(line.rp, []).append(
            f"RXA|0|1|{at}|{at}|{_ORAL_CWE[line.drug]}|{line.dose}|{d.unit}^{d.unit_name}^MR9P|||{nurse}"
            f"|{_location(vis)}|||||||||CP||{ts14(pl.at)}"
        )
    for rp, rxas in rps.items():
        post.append(orc(seed, vis, str(rp)))
        post.extend(rxas)
        post.append("RXR|PO^口^HL70162")
    return pre, post


def _omp02(seed: int, pid: str, v: Version, pl: InjectionSet) -> tuple[list[str], list[str]]:
    vis = pl.visit
    pre = [msh(v.dtype, v.ts)]
    post = [pv1(seed, vis)]
    kind = "IHP^入院処方^MR9P~FTP^定時処方^99I01" if vis.inpatient else "OHP^外来処方^MR9P~OTP^臨時処方^99I01"
    nurse = _nurse(seed, vis.doctor + 1)
    for n, o in enumerate(pl.orders, 1):
        r = C.INJECTION_RECIPES[o.recipe]
        base = C.INJECTION_DRUGS[r.base]
        volume = base.volume_ml
        rate = _num(round(volume / r.hours))
        group = f"{vis.order}_01_{n:03d}"
        post.append(orc(seed, vis, group))
        comps = [("B", base), *(("A", C.INJECTION_DRUGS[a]) for a in r.additives)]
        if not pl.given:
            f = [""] * 25
            f[0] = "RXE"
            f[2] = "00^一般^99I02"
            f[3] = str(volume)
            f[5] = "ML^ミリリットル^MR9P"
            f[6] = "INJ^注射剤^MR9P"
            f[7] = f"^{escape(r.instruction)}^99IC6"
            f[15] = f"{date8(o.start)}-{n:03d}"
            f[21] = kind
            f[22] = "H1"
            f[23] = rate
            f[24] = "ml/hr^ミリリッター／時間^ISO+"
            post.append("|".join(f))
            post.append(f"TQ1|1||||||{ts12(o.start)}|{ts12(o.end)}")
            post.append("RXR|IV^静脈内^HL70162||IVP^点滴ポンプ^HL70164")
            for role, drug in comps:
                post.append(f"RXC|{role}|{_INJ_CWE[drug.key]}|1|{drug.unit}^{drug.unit_name}^MR9P")
        else:
            for _role, drug in comps:
                post.append(
                    f"RXA|0|1|{ts14(o.start)}|{ts14(o.end)}|{_INJ_CWE[drug.key]}|1|"
                    f"{drug.unit}^{drug.unit_name}^MR9P||^左手に実施^99IC2|{nurse}|{_location(vis)}|{rate}ml/hr"
                    f"||||||||CP||{ts14(o.end)}"
                )
            post.append("RXR|IV^静脈内^HL70162||IVP^点滴ポンプ^HL70164")
    return pre, post


def _oml11(seed: int, pid: str, v: Version, pl: LabReport) -> tuple[list[str], list[str]]:
    vis = pl.visit
    pre = [msh(v.dtype, v.ts)]
    post = [pv1(seed, vis)]
    doc = _doctor(seed, vis.dept, vis.doctor)
    collected = ts12(pl.collected)
    reported = ts14(pl.reported)
    day = date8(pl.collected)
    specimens: dict[str, list[int]] = {}
    for n, g in enumerate(pl.groups):
        specimens.setdefault(C.BATTERIES[g.battery].specimen, []).append(n)
    obr_no = 0
    for s_no, (spec, idxs) in enumerate(specimens.items(), 1):
        spec_id = f"{pl.specimen_id[:-2]}{s_no:02d}"
        post.append(f"SPM|{s_no}|{spec_id}||{spec}^JC10|||||||||||||{collected}")
        for n in idxs:
            g = pl.groups[n]
            b = C.BATTERIES[g.battery]
            obr_no += 1
            post.append(
                f"OBR|{obr_no}|{vis.order}|{spec_id}|{b.code}^{b.name}^99O03|||{day}|{day}||||||||{doc}||||||{reported}"
            )
            post.append(
                f"ORC|SC|{vis.order}|{spec_id}||CM||||{reported}|||{doc}|{_location(vis)}||||"
                f"{vis.dept}^{C.DEPARTMENTS.get(vis.dept, '内科')}^99XY1||||{HOSPITAL}"
                f"||||||||{_patient_class(vis)}"
            )
            male = v.demo.sex == "M"
            for k, (key, value, flag) in enumerate(g.results, 1):
                head, mid_m, mid_f = _OBX[key]
                post.append(
                    f"OBX|{k}{head}{value}{mid_m if male else mid_f}{flag}|||{pl.status}|||{collected}"
                )
    return pre, post


def _range(item: C.LabItem, male: bool) -> str:
    low, high = (item.low_m, item.high_m) if male else (item.low_f, item.high_f)
    fmt = f"{{:.{item.decimals}f}}"
    if low is not None and high is not None:
        return f"{fmt.format(low)}-{fmt.format(high)}"
    if low is not None:
        return f">{fmt.format(low)}"
    if high is not None:
        return f"<{fmt.format(high)}"
    return ""


def _obx_parts(item: C.LabItem) -> tuple[str, str, str]:
    unit = escape(item.unit)
    unit_f = f"{unit}^{unit}^99XYZ" if unit else ""
    head = f"|NM|{item.jlac10}^{escape(item.name)}^JC10||"
    return head, f"|{unit_f}|{_range(item, True)}|", f"|{unit_f}|{_range(item, False)}|"


# Constant pieces of each lab item's OBX: "|NM|code^name^JC10||", then "|unit|range|" for men and women.
_OBX: dict[str, tuple[str, str, str]] = {k: _obx_parts(i) for k, i in C.LAB_ITEMS.items()}
# Drug names HL7-escaped once.
_ORAL_CWE: dict[str, str] = {k: f"{d.hot9}^{escape(d.name)}^HOT9" for k, d in C.ORAL_DRUGS.items()}
_INJ_CWE: dict[str, str] = {k: f"{d.hot9}^{escape(d.name)}^HOT9" for k, d in C.INJECTION_DRUGS.items()}


def _other(seed: int, pid: str, v: Version, pl: Other) -> tuple[list[str], list[str]]:
    vis = pl.visit
    pre = [msh(v.dtype, v.ts)]
    if v.dtype == "ADT-22":
        pre.append(f"EVN||{ts12(v.ts)}")
        f = pv1(seed, vis).split("|") + [""] * 35
        f[17] = _doctor(seed, vis.dept, vis.doctor)
        f[44] = ts12(vis.t)
        return pre, ["|".join(f[:45])]
    post = [
        pv1(seed, vis),
        orc(seed, vis, ""),
        "TQ1|1||||||||R^^HL70485",
        f"OBR||{vis.order}||10000002000102000000010000000000^胸部.Ｘ線単純撮影.立位正面(A→P)^JJ1017",
    ]
    return pre, post


_BUILDERS: dict[type, Callable[..., tuple[list[str], list[str]]]] = {
    Demographics: _adt00,
    Allergies: _adt61,
    ProblemList: _ppr01,
    Prescription: _omp01,
    Given: _omp11,
    InjectionSet: _omp02,
    LabReport: _oml11,
    Other: _other,
}


def segments(seed: int, pid: str, v: Version) -> list[str]:
    """The message's segments as text (for tests and debugging)."""
    pre, post = _BUILDERS[type(v.payload)](seed, pid, v, v.payload)
    return [*pre, pid_segment(pid, v.demo), *post]


def render(seed: int, pid: str, v: Version) -> bytes:
    """The file bytes of one version."""
    pre, post = _BUILDERS[type(v.payload)](seed, pid, v, v.payload)
    return b"".join(
        (_enc("\r".join(pre)), b"\r", pid_bytes(pid, v.demo), b"\r", _enc("\r".join(post)), b"\r\x1c")
    )

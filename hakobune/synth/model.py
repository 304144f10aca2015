"""Patients and their day-by-day history, as pure functions of (seed, patient index, day).

A patient's profile (:func:`make_profile`) comes from ``Random(f"{seed}:{i}")``; their daily events come from
a second stream ``Random(f"{seed}:{i}:days")`` consumed one day at a time, so a patient's history depends
only on the seed, their index and the per-day change rates, never on worker count or on other patients.
:func:`simulate` returns every file version the patient ever had; the tree at "after day t" is a pure
function of that list (:meth:`Version.flag_at`), which is how ``advance`` finds the renames and new files of
the next days without reading the tree.
"""

from __future__ import annotations

import math
import random
from bisect import bisect
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from itertools import accumulate

from hakobune.synth import clinical as C
from hakobune.synth import names as N

START = date(2025, 4, 1)  # simulation day 0
START_ORD = START.toordinal()
EPOCH_ORD = date(2000, 1, 1).toordinal()
DAY_MS = 86_400_000
HISTORY_DAYS = 365  # prior visits fall in the year before day 0
NEVER = 1 << 30
PATIENT_ORDER = "999999999999999"  # order number of patient-level files (as in the guideline samples)

# Per-day event probabilities at change rate 0.01 (≈1% of files change per day); scaled linearly.
BASE_RATE = 0.01
P_VISIT = 0.045  # times the patient's activity weight
P_CORRECT = 0.006
P_DELETE = 0.003
P_ADT = 0.0012
P_IAM = 0.0004
P_PPR = 0.0008


# --------------------------------------------------------------------------------------------- time
def ms_of(day: int, ms_in_day: int) -> int:
    """A simulation instant: milliseconds since 2000-01-01 of (simulation day, time of day)."""
    return (START_ORD - EPOCH_ORD + day) * DAY_MS + ms_in_day


@lru_cache(maxsize=65536)
def ymd(day_no: int) -> str:
    """yyyyMMdd of a day number counted from 2000-01-01."""
    return date.fromordinal(EPOCH_ORD + day_no).strftime("%Y%m%d")


def ymd_of_day(day: int) -> str:
    """yyyyMMdd of a simulation day."""
    return ymd(START_ORD - EPOCH_ORD + day)


def ts17(t: int) -> str:
    """yyyyMMddHHmmssfff."""
    d, r = divmod(t, DAY_MS)
    s, ms = divmod(r, 1000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{ymd(d)}{h:02d}{m:02d}{s:02d}{ms:03d}"


def ts14(t: int) -> str:
    return ts17(t)[:14]


def ts12(t: int) -> str:
    return ts17(t)[:12]


def date8(t: int) -> str:
    return ymd(t // DAY_MS)


# ------------------------------------------------------------------------------------------ profile
@dataclass(frozen=True, slots=True)
class Demo:
    """One version of a patient's demographics (ADT-00 PID)."""

    family: str
    given: str
    family_kana: str
    given_kana: str
    birth: str  # yyyyMMdd
    sex: str  # M | F
    postal: str
    address: str
    phone: str


@dataclass(frozen=True, slots=True)
class Problem:
    """One entry of the PPR-01 problem list."""

    diagnosis: str  # clinical.DIAGNOSES key
    instance_id: str
    onset: str
    recorded: str
    resolved: str = ""
    main: bool = False


@dataclass(frozen=True, slots=True)
class AllergyEntry:
    allergen: int  # index in clinical.ALLERGENS
    severity: int  # index in clinical.SEVERITIES
    reaction: str
    onset: str


@dataclass(slots=True)
class Profile:
    index: int
    pid: str
    pid_num: int
    demo: Demo
    problems: list[Problem]
    meds: list[str]  # current chronic oral drugs (clinical.ORAL_DRUGS keys)
    al1: tuple[AllergyEntry, ...]
    iam: tuple[AllergyEntry, ...]
    activity: float
    dept: str
    age: int
    lab_z: tuple[float, ...]  # per-patient offset of each lab item (stable across visits)
    height: float
    weight: float
    consent: str  # "", "all" or "research"
    birth_no: int  # birth date as a day number from 2000-01-01
    next_problem: int = 0


# ------------------------------------------------------------------------------------------ payloads
@dataclass(frozen=True, slots=True)
class Visit:
    order: str
    t: int  # order time (ms)
    dept: str
    doctor: int
    inpatient: bool


@dataclass(frozen=True, slots=True)
class RxLine:
    drug: str
    dose: str
    days: int
    rp: int


@dataclass(frozen=True, slots=True)
class InjOrder:
    recipe: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class LabGroup:
    battery: str
    results: tuple[tuple[str, str, str], ...]  # (item, value, flag)


@dataclass(frozen=True, slots=True)
class Prescription:
    visit: Visit
    lines: tuple[RxLine, ...]


@dataclass(frozen=True, slots=True)
class Given:
    visit: Visit
    lines: tuple[RxLine, ...]
    at: int


@dataclass(frozen=True, slots=True)
class InjectionSet:
    visit: Visit
    orders: tuple[InjOrder, ...]
    given: bool


@dataclass(frozen=True, slots=True)
class LabReport:
    visit: Visit
    specimen_id: str
    collected: int
    reported: int
    groups: tuple[LabGroup, ...]
    status: str  # F final, C corrected


@dataclass(frozen=True, slots=True)
class Demographics:
    al1: tuple[AllergyEntry, ...]
    height: float
    weight: float


@dataclass(frozen=True, slots=True)
class Allergies:
    entries: tuple[AllergyEntry, ...]


@dataclass(frozen=True, slots=True)
class ProblemList:
    problems: tuple[Problem, ...]
    dept: str
    doctor: int


@dataclass(frozen=True, slots=True)
class Other:
    """A data type the readers count and skip (ADT-22 admission, OMG-01 imaging order)."""

    visit: Visit


Payload = Prescription | Given | InjectionSet | LabReport | Demographics | Allergies | ProblemList | Other


@dataclass(slots=True)
class Version:
    """One file: a version of the logical document (patient, date, type, order no)."""

    date: str
    dtype: str
    order: str
    ts: int
    dept: str
    day: int  # simulation day it was written (negative: before day 0)
    payload: Payload
    demo: Demo
    end_day: int = NEVER  # the day it was superseded or deleted
    end_flag: str = "1"

    def flag_at(self, t: int) -> str:
        """Condition flag after ``t`` simulated days (caller checks ``day < t``)."""
        return self.end_flag if self.end_day < t else "1"

    def name(self, pid: str, flag: str) -> str:
        return f"{pid}_{self.date}_{self.dtype}_{self.order}_{ts17(self.ts)}_{self.dept}_{flag}"


@dataclass(slots=True)
class History:
    profile: Profile
    versions: list[Version] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- tables
def _cum(weights: list[float]) -> list[float]:
    return list(accumulate(weights))


_SURNAME_CUM = _cum([n.weight for n in N.SURNAMES])
_GIVEN_CUM = {
    (sex, era): _cum([n.weight for n in table[era]])
    for sex, table in (("M", N.MALE_NAMES), ("F", N.FEMALE_NAMES))
    for era in ("o", "m", "y")
}
_CITY_CUM = _cum([c.weight for c in N.CITIES])
_ALLERGEN_CUM = _cum([a.weight for a in C.ALLERGENS])
_DRUG_ALLERGENS = [i for i, a in enumerate(C.ALLERGENS) if a.category == "DA"]
_DRUG_ALLERGEN_CUM = _cum([C.ALLERGENS[i].weight for i in _DRUG_ALLERGENS])
_AGE_BANDS = ((0, 15, 8.0), (15, 40, 14.0), (40, 65, 28.0), (65, 80, 30.0), (80, 100, 20.0))
_AGE_CUM = _cum([w for _, _, w in _AGE_BANDS])
_LAB_KEYS = tuple(C.LAB_ITEMS)
_LAB_INDEX = {k: n for n, k in enumerate(_LAB_KEYS)}
_DIAG_KEYS = tuple(C.DIAGNOSES)
_EXCLUSIVE = (
    {"dm", "t2dm", "t1dm"},
    {"dyslipidemia", "hypercholesterolemia"},
    {"cerebral_inf", "cerebral_seq"},
)
_ACUTE = tuple(k for k, d in C.DIAGNOSES.items() if not d.chronic)
_ACUTE_WEIGHTS = _cum([C.DIAGNOSES[k].weight for k in _ACUTE])


def _pick(rng: random.Random, cum: list[float]) -> int:
    return bisect(cum, rng.random() * cum[-1])


def pid_number(seed: int, i: int) -> int:
    """Patient number of index i: increasing, with gaps like real registration numbers."""
    return 100_000 + 3 * i + (hash_int(f"{seed}:pid:{i}") % 3)


def hash_int(s: str) -> int:
    # Stable across processes (unlike hash()): FNV-1a 64.
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _birth_and_sex(rng: random.Random) -> tuple[str, str, int]:
    lo, hi, _ = _AGE_BANDS[_pick(rng, _AGE_CUM)]
    age_days = rng.randrange(lo * 365 + 1, hi * 365 + 1)
    birth = ymd(START_ORD - EPOCH_ORD - age_days)
    sex = "M" if rng.random() < 0.49 else "F"
    return birth, sex, age_days // 365


def _name(rng: random.Random, sex: str, birth_year: int) -> tuple[str, str, str, str]:
    fam = N.SURNAMES[_pick(rng, _SURNAME_CUM)]
    era = N.era_of(birth_year)
    if rng.random() < 0.15:  # names cross eras
        era = rng.choice("omy")
    table = (N.MALE_NAMES if sex == "M" else N.FEMALE_NAMES)[era]
    giv = table[_pick(rng, _GIVEN_CUM[(sex, era)])]
    return fam.kanji, giv.kanji, fam.kana, giv.kana


def _address(rng: random.Random, near: N.City | None = None) -> tuple[str, str, str]:
    city = near if near is not None and rng.random() < 0.6 else N.CITIES[_pick(rng, _CITY_CUM)]
    town, postal = rng.choice(city.towns)
    a, b, c = rng.randint(1, 6), rng.randint(1, 30), rng.randint(1, 25)
    style = rng.random()
    if style < 0.3:
        num = f"{a}丁目{b}番{c}号"
    elif style < 0.45:
        num = N.fullwidth_digits(f"{a}丁目{b}番{c}号")
    elif style < 0.75:
        num = N.fullwidth_digits(f"{a}−{b}−{c}")
    elif style < 0.92:
        num = f"{a}-{b}-{c}"
    else:
        num = f"{rng.randint(1, 2500)}番地"
    addr = f"{city.prefecture}{city.city}{town}{num}"
    if rng.random() < 0.2:
        room = rng.randint(1, 9) * 100 + rng.randint(1, 12)
        building = rng.choice(N.BUILDINGS)
        addr += (
            f"　{building}{N.fullwidth_digits(str(room))}号" if rng.random() < 0.5 else f" {building}{room}"
        )
    phone = _phone(rng, city.phone_prefix)
    return postal, addr, phone


def _phone(rng: random.Random, prefix: str) -> str:
    if rng.random() < 0.4:
        return f"{rng.choice(('090', '080', '070'))}-{rng.randint(1000, 9999)}-{rng.randint(0, 9999):04d}"
    mid = 6 - len(prefix)  # 10 digits in all
    return f"{prefix}-{rng.randint(10 ** (mid - 1), 10**mid - 1)}-{rng.randint(0, 9999):04d}"


def _base_demo(seed: int, i: int) -> tuple[Demo, int]:
    rng = random.Random(f"{seed}:{i}:demo")
    birth, sex, age = _birth_and_sex(rng)
    fam, giv, famk, givk = _name(rng, sex, int(birth[:4]))
    postal, addr, phone = _address(rng)
    return Demo(fam, giv, famk, givk, birth, sex, postal, addr, phone), age


def _age_weight(d: C.Diagnosis, age: int, sex: str) -> float:
    if age < d.min_age or (d.sex and d.sex != sex):
        return 0.0
    return d.weight * (1.0 + d.age_slope * (age - d.min_age) / 30.0)


def make_profile(seed: int, i: int) -> Profile:
    """Patient i's static profile (demographics, problems, medications, allergies, habits)."""
    rng = random.Random(f"{seed}:{i}")
    demo, age = _base_demo(seed, i)
    if i > 0 and rng.random() < 0.004:  # a namesake: same name, birth date and sex as an earlier patient
        twin, age = _base_demo(seed, rng.randrange(max(0, i - 5000), i))
        demo = Demo(twin.family, twin.given, twin.family_kana, twin.given_kana, twin.birth, twin.sex,
                    demo.postal, demo.address, demo.phone)  # fmt: skip
    pid_num = pid_number(seed, i)
    pid = f"{pid_num:010d}"
    # Problems: chronic ones by age and sex, at least one entry.
    n_chronic = min(6, int(rng.expovariate(1.0 / (0.2 + age / 28.0))))
    weights = [_age_weight(C.DIAGNOSES[k], age, demo.sex) for k in _DIAG_KEYS]
    for n, k in enumerate(_DIAG_KEYS):
        if not C.DIAGNOSES[k].chronic:
            weights[n] = 0.0
    chosen: list[str] = []
    while len(chosen) < n_chronic and sum(weights) > 0:
        k = _DIAG_KEYS[_pick(rng, _cum(weights))]
        chosen.append(k)
        for n, other in enumerate(_DIAG_KEYS):
            if other == k or any(k in g and other in g for g in _EXCLUSIVE):
                weights[n] = 0.0
    start_no = START_ORD - EPOCH_ORD
    birth_no = date(int(demo.birth[:4]), int(demo.birth[4:6]), int(demo.birth[6:])).toordinal() - EPOCH_ORD
    problems: list[Problem] = []
    for n, k in enumerate(chosen):
        d = C.DIAGNOSES[k]
        earliest = max(birth_no + d.min_age * 365, start_no - 25 * 365)
        onset = max(birth_no, rng.randrange(min(earliest, start_no - 30), start_no - 20))
        recorded = min(start_no - 1, onset + rng.randrange(0, 60))
        problems.append(Problem(k, f"{pid_num:010d}{n + 1:05d}", ymd(onset), ymd(recorded), main=n == 0))
    if not problems or rng.random() < 0.25:  # a past acute illness, resolved
        k = _ACUTE[_pick(rng, _ACUTE_WEIGHTS)]
        onset = rng.randrange(min(max(birth_no, start_no - 3 * 365), start_no - 11), start_no - 10)
        problems.append(
            Problem(
                k,
                f"{pid_num:010d}{len(problems) + 1:05d}",
                ymd(onset),
                ymd(onset),
                ymd(onset + rng.randrange(5, 20)),
                main=not problems,
            )
        )
    meds: list[str] = []
    if rng.random() < 0.88:
        for p in problems:
            d = C.DIAGNOSES[p.diagnosis]
            if d.chronic and d.drugs:
                for _ in range(2 if rng.random() < 0.25 else 1):
                    drug = rng.choice(d.drugs)
                    if drug not in meds and C.ORAL_DRUGS[drug].chronic:
                        meds.append(drug)
    al1: tuple[AllergyEntry, ...] = ()
    if rng.random() < 0.08:
        al1 = tuple(_allergy(rng, birth_no, drug_only=True) for _ in range(1 + (rng.random() < 0.2)))
    iam: tuple[AllergyEntry, ...] = ()
    if rng.random() < 0.22:
        iam = tuple(_allergy(rng, birth_no) for _ in range(1 + int(rng.expovariate(1.2))))
    n_chronic_problems = sum(1 for p in problems if C.DIAGNOSES[p.diagnosis].chronic)
    activity = (0.25 + 0.55 * n_chronic_problems) * rng.uniform(0.6, 1.4)
    main = problems[0].diagnosis
    lab_z = tuple(rng.gauss(0.0, 1.0) for _ in _LAB_KEYS)
    adult = age >= 18
    if demo.sex == "M":
        height = rng.gauss(170.5, 6) if adult else 60 + age * 6.2
    else:
        height = rng.gauss(157.5, 5.5) if adult else 58 + age * 6.0
    weight = max(3.0, (height / 100) ** 2 * rng.gauss(22.5, 3.2)) if adult else max(3.0, 3 + age * 2.8)
    consent = ""
    if rng.random() < 0.02:
        consent = "all" if rng.random() < 1 / 3 else "research"
    return Profile(
        index=i,
        pid=pid,
        pid_num=pid_num,
        demo=demo,
        problems=problems,
        meds=meds,
        al1=al1,
        iam=iam,
        activity=activity,
        dept=C.DIAGNOSES[main].dept,
        age=age,
        lab_z=lab_z,
        height=round(height, 1),
        weight=round(weight, 1),
        consent=consent,
        birth_no=birth_no,
        next_problem=len(problems) + 1,
    )


def _allergy(rng: random.Random, birth_no: int, drug_only: bool = False) -> AllergyEntry:
    if drug_only:
        idx = _DRUG_ALLERGENS[_pick(rng, _DRUG_ALLERGEN_CUM)]
    else:
        idx = _pick(rng, _ALLERGEN_CUM)
    a = C.ALLERGENS[idx]
    sev = 0 if rng.random() < 0.5 else (1 if rng.random() < 0.7 else 2)
    start_no = START_ORD - EPOCH_ORD
    onset_no = rng.randrange(min(birth_no + 365, start_no - 1), start_no)
    onset = ymd(onset_no)
    onset = onset[:6] if rng.random() < 0.4 else onset
    return AllergyEntry(idx, sev, rng.choice(a.reactions), onset)


# ------------------------------------------------------------------------------------------- labs
def _lab_value(
    item: C.LabItem, z_patient: float, rng: random.Random, override: tuple[float, float] | None
) -> float:
    mean, sd = override if override is not None else (item.mean, item.sd)
    r = rng.random
    z = 0.8 * z_patient + 0.9 * (r() + r() + r() - 1.5)  # visit-to-visit noise, ≈ N(0, 0.45²)
    if item.log:
        return mean * math.exp(sd * z)
    return max(0.25 * mean, mean + sd * z)


_FORMATS = ("%.0f", "%.1f", "%.2f", "%.3f")


def _fmt(v: float, decimals: int) -> str:
    return _FORMATS[decimals] % v


def lab_groups(p: Profile, rng: random.Random, batteries: list[str], male: bool) -> tuple[LabGroup, ...]:
    overrides: dict[str, tuple[float, float]] = {}
    for prob in p.problems:
        if prob.resolved:
            continue
        prof = C.DIAGNOSES[prob.diagnosis].profile
        if prof:
            overrides.update(C.LAB_PROFILES[prof])
    for drug in p.meds:
        prof = C.DRUG_LAB_PROFILES.get(drug, "")
        if prof:
            overrides.update(C.LAB_PROFILES[prof])
    groups: list[LabGroup] = []
    values: dict[str, float] = {}
    for b in batteries:
        results: list[tuple[str, str, str]] = []
        for key in C.BATTERIES[b].items:
            item = C.LAB_ITEMS[key]
            v = _lab_value(item, p.lab_z[_LAB_INDEX[key]], rng, overrides.get(key))
            if key == "egfr" and "cre" in values:  # Japanese eGFR equation from creatinine, age and sex
                v = 194.0 * values["cre"] ** -1.094 * max(18, p.age) ** -0.287 * (1.0 if male else 0.739)
            elif key == "ag" and "alb" in values and "tp" in values:
                v = values["alb"] / max(0.5, values["tp"] - values["alb"])
            elif key == "ht" and "hb" in values:
                v = values["hb"] * rng.uniform(2.85, 3.1)
            v = round(v, item.decimals)
            values[key] = v
            low, high = (item.low_m, item.high_m) if male else (item.low_f, item.high_f)
            flag = "H" if high is not None and v > high else "L" if low is not None and v < low else ""
            results.append((key, _FORMATS[item.decimals] % v, flag))
        groups.append(LabGroup(b, tuple(results)))
    return tuple(groups)


# ---------------------------------------------------------------------------------------- simulation
class Simulator:
    """Builds one patient's versions day by day."""

    def __init__(self, seed: int, profile: Profile) -> None:
        self.seed = seed
        self.p = profile
        self.versions: list[Version] = []
        self.current: dict[tuple[str, str, str], Version] = {}
        self.dated: list[Version] = []  # dated versions that may still be current
        self.demo = profile.demo
        self.al1 = profile.al1
        self.iam = list(profile.iam)
        self.order_seq: dict[int, int] = {}

    # -- helpers
    def order_no(self, day: int) -> str:
        n = self.order_seq.get(day, 0) + 1
        self.order_seq[day] = n
        return f"{START_ORD - EPOCH_ORD + day:05d}{self.p.pid_num % 100_000_000:08d}{n:02d}"

    def add(
        self, date_: str, dtype: str, order: str, ts: int, dept: str, day: int, payload: Payload
    ) -> Version:
        key = (date_, dtype, order)
        prev = self.current.get(key)
        if prev is not None:
            ts = max(ts, prev.ts + 1000 + (ts % 997))
            prev.end_day, prev.end_flag = day, "2"
        v = Version(date_, dtype, order, ts, dept, day, payload, self.demo)
        self.versions.append(v)
        self.current[key] = v
        if date_ != "-":
            self.dated.append(v)
        return v

    def delete(self, v: Version, day: int) -> None:
        v.end_day, v.end_flag = day, "0"
        del self.current[(v.date, v.dtype, v.order)]

    def problem_list(self, t: int, day: int, rng: random.Random) -> None:
        self.add("-", "PPR-01", PATIENT_ORDER, t, self.p.dept, day,
                 ProblemList(tuple(self.p.problems), self.p.dept, rng.randrange(4)))  # fmt: skip

    def demographics(self, t: int, day: int) -> None:
        self.add(
            "-", "ADT-00", PATIENT_ORDER, t, "-", day, Demographics(self.al1, self.p.height, self.p.weight)
        )

    def allergies(self, t: int, day: int) -> None:
        self.add("-", "ADT-61", PATIENT_ORDER, t, "-", day, Allergies(tuple(self.iam)))

    # -- initial state
    def initial(self, rng: random.Random) -> None:
        p = self.p
        start_no = START_ORD - EPOCH_ORD
        first = min(-1, max(p.birth_no + 1, start_no - 3000) - start_no)
        reg_day = rng.randrange(first, 0)
        if rng.random() < 0.06:  # an older ADT-00, superseded (a move or correction before day 0)
            real = self.demo
            self.demo = self._changed_demo(rng)
            self.demographics(ms_of(reg_day, rng.randrange(8 * 3600_000, 18 * 3600_000)), -1)
            self.demo = real
            reg_day = rng.randrange(reg_day, 0) if reg_day < -1 else reg_day
        self.demographics(ms_of(reg_day, rng.randrange(8 * 3600_000, 18 * 3600_000)), -1)
        if self.iam:
            self.allergies(ms_of(rng.randrange(reg_day, 0), rng.randrange(8 * 3600_000, 18 * 3600_000)), -1)
        last_recorded = max(int(x.recorded) for x in p.problems)
        rec_day = (
            date(last_recorded // 10000, last_recorded // 100 % 100, last_recorded % 100).toordinal()
            - START_ORD
        )
        ppr_day = rng.randrange(min(-1, max(reg_day, rec_day)), 0)
        self.problem_list(ms_of(ppr_day, rng.randrange(9 * 3600_000, 17 * 3600_000)), -1, rng)
        n_prior = min(14, int(rng.expovariate(1.0 / (1.3 + 3.6 * p.activity))))
        days = sorted(rng.sample(range(-HISTORY_DAYS, 0), n_prior))
        for d in days:
            self.visit(d, rng, history=True)
        # a few historical corrections and cancellations
        for v in list(self.dated):
            if v.end_day != NEVER:
                continue
            u = rng.random()
            if u < 0.035:
                self.correct(v, -1, rng, history=True)
            elif u < 0.05:
                self.delete(v, -1)

    # -- events
    def visit(self, day: int, rng: random.Random, history: bool = False) -> None:
        p = self.p
        made = -1 if history else day
        t = ms_of(day, rng.randrange(8 * 3600_000 + 30 * 60_000, 16 * 3600_000 + 30 * 60_000))
        dept = p.dept if rng.random() < 0.8 else C.DIAGNOSES[rng.choice(p.problems).diagnosis].dept
        inpatient = rng.random() < 0.05
        doctor = rng.randrange(4)
        date_ = ymd_of_day(day)
        acute: list[str] = []
        if rng.random() < 0.07:  # a new acute problem at this visit
            k = _ACUTE[_pick(rng, _ACUTE_WEIGHTS)]
            d = C.DIAGNOSES[k]
            if (not d.sex or d.sex == p.demo.sex) and p.age >= d.min_age:
                resolved = ymd_of_day(day + rng.randrange(5, 21)) if history and day < -30 else ""
                p.problems = [
                    *p.problems,
                    Problem(k, f"{p.pid_num:010d}{p.next_problem:05d}", date_, date_, resolved),
                ]
                p.next_problem += 1
                acute = [rng.choice(d.drugs)] if d.drugs else []
                self.problem_list(t + rng.randrange(60_000, 1800_000), made, rng)
        made_any = False
        lines: list[RxLine] = []
        if (p.meds and rng.random() < 0.85) or acute:
            days_supply = rng.choice((14, 28, 28, 30, 56, 84)) if not inpatient else 7
            rp_of: dict[str, int] = {}
            for drug in [*p.meds, *acute]:
                od = C.ORAL_DRUGS[drug]
                ndays = days_supply if od.chronic else rng.choice((3, 5, 7))
                if od.usage == C.U_WEEKLY:
                    ndays = max(1, ndays // 7)
                rp = rp_of.setdefault(f"{od.usage}:{ndays}", len(rp_of) + 1)
                dose = od.dose
                if drug == "warfarin":
                    dose = rng.choice(("1", "1.5", "2", "2.5", "3"))
                lines.append(RxLine(drug, dose, ndays, rp))
            v = Visit(self.order_no(day), t + rng.randrange(60_000, 1200_000), dept, doctor, inpatient)
            self.add(date_, "OMP-01", v.order, v.t + rng.randrange(30_000, 600_000), dept, made,
                     Prescription(v, tuple(lines)))  # fmt: skip
            made_any = True
            if rng.random() < 0.3 or inpatient:
                given = v.t + rng.randrange(900_000, 3600_000)
                self.add(date_, "OMP-11", v.order, given + rng.randrange(10_000, 300_000), dept, made,
                         Given(v, tuple(lines), given))  # fmt: skip
        has_labs = any(C.DIAGNOSES[x.diagnosis].labs for x in p.problems if not x.resolved)
        if rng.random() < (0.6 if has_labs else 0.3) or not made_any:
            self.labs(day, t, dept, doctor, inpatient, rng, made)
        if rng.random() < (0.5 if inpatient else 0.05):
            v = Visit(self.order_no(day), t + rng.randrange(60_000, 1200_000), dept, doctor, inpatient)
            orders: list[InjOrder] = []
            start = v.t + rng.randrange(1800_000, 7200_000)
            for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.15)):
                ri = rng.randrange(len(C.INJECTION_RECIPES))
                dur = int(C.INJECTION_RECIPES[ri].hours * 3600_000)
                orders.append(InjOrder(ri, start, start + dur))
                start += dur
            ts = v.t + rng.randrange(30_000, 600_000)
            self.add(date_, "OMP-02", v.order, ts, dept, made, InjectionSet(v, tuple(orders), False))
            if rng.random() < 0.9:
                end = max(o.end for o in orders)
                self.add(date_, "OMP-12", v.order, end + rng.randrange(60_000, 1800_000), dept, made,
                         InjectionSet(v, tuple(orders), True))  # fmt: skip
            if inpatient and rng.random() < 0.5:
                self.add(
                    date_, "ADT-22", self.order_no(day), t + rng.randrange(0, 600_000), dept, made, Other(v)
                )
        if rng.random() < 0.05:
            v = Visit(self.order_no(day), t + rng.randrange(60_000, 1200_000), dept, doctor, inpatient)
            self.add(date_, "OMG-01", v.order, v.t + rng.randrange(30_000, 600_000), "-", made, Other(v))

    def labs(
        self, day: int, t: int, dept: str, doctor: int, inpatient: bool, rng: random.Random, made: int
    ) -> None:
        p = self.p
        batteries: list[str] = ["chem", "cbc"] if rng.random() < 0.7 else ["chem"]
        for x in p.problems:
            if not x.resolved:
                for b in C.DIAGNOSES[x.diagnosis].labs:
                    if b not in batteries:
                        batteries.append(b)
        if "warfarin" in p.meds and "coag" not in batteries:
            batteries.append("coag")
        for extra, share in (("crp", 0.3), ("dm", 0.2), ("lipid", 0.2)):  # screening and add-on tests
            if rng.random() < share and extra not in batteries:
                batteries.append(extra)
        order = [b for b in C.BATTERIES if b in batteries]
        v = Visit(self.order_no(day), t + rng.randrange(60_000, 900_000), dept, doctor, inpatient)
        collected = v.t + rng.randrange(300_000, 1800_000)
        reported = collected + rng.randrange(1800_000, 3 * 3600_000)
        groups = lab_groups(p, rng, order, p.demo.sex == "M")
        spec = f"{v.order[:7]}{rng.randrange(10**8):08d}"
        self.add(ymd_of_day(day), "OML-11", v.order, reported + rng.randrange(1000, 60_000), dept, made,
                 LabReport(v, spec, collected, reported, groups, "F"))  # fmt: skip

    def correct(self, v: Version, day: int, rng: random.Random, history: bool = False) -> None:
        """A corrected order or result: the current file becomes ``_2`` and a new ``_1`` is written."""
        t = max(v.ts + 60_000, ms_of(day, rng.randrange(8 * 3600_000, 20 * 3600_000)))
        pl = v.payload
        new: Payload
        if isinstance(pl, Prescription):
            lines = list(pl.lines)
            n = rng.randrange(len(lines))
            x = lines[n]
            lines[n] = RxLine(x.drug, x.dose, max(1, x.days + rng.choice((-7, 7, 14, -3, 3))), x.rp)
            new = Prescription(pl.visit, tuple(lines))
        elif isinstance(pl, Given):
            new = Given(pl.visit, pl.lines, pl.at + rng.randrange(60_000, 600_000))
        elif isinstance(pl, InjectionSet):
            shift = rng.randrange(600_000, 3600_000)
            moved = tuple(InjOrder(o.recipe, o.start + shift, o.end + shift) for o in pl.orders)
            new = InjectionSet(pl.visit, moved,
                               pl.given)  # fmt: skip
        elif isinstance(pl, LabReport):
            groups = list(pl.groups)
            g = rng.randrange(len(groups))
            res = list(groups[g].results)
            r = rng.randrange(len(res))
            key, value, _flag = res[r]
            item = C.LAB_ITEMS[key]
            nv = float(value) * rng.uniform(0.9, 1.1)
            male = self.p.demo.sex == "M"
            low, high = (item.low_m, item.high_m) if male else (item.low_f, item.high_f)
            flag = "H" if high is not None and nv > high else "L" if low is not None and nv < low else ""
            res[r] = (key, _fmt(nv, item.decimals), flag)
            groups[g] = LabGroup(groups[g].battery, tuple(res))
            new = LabReport(pl.visit, pl.specimen_id, pl.collected, pl.reported, tuple(groups), "C")
        else:
            new = pl
        self.add(v.date, v.dtype, v.order, t, v.dept, -1 if history else day, new)

    def _changed_demo(self, rng: random.Random) -> Demo:
        d = self.demo
        u = rng.random()
        if u < 0.25 and (d.family in N.VARIANT_OF or d.given in N.VARIANT_OF):
            fam, giv = d.family, d.given
            if fam in N.VARIANT_OF:
                fam = rng.choice([x for x in N.VARIANT_OF[fam] if x != fam])
            else:
                giv = rng.choice([x for x in N.VARIANT_OF[giv] if x != giv])
            return Demo(fam, giv, d.family_kana, d.given_kana, d.birth, d.sex, d.postal, d.address, d.phone)
        if u < 0.35 and d.sex == "F" and 1965 < int(d.birth[:4]) < 2003:  # marriage
            new = N.SURNAMES[_pick(rng, _SURNAME_CUM)]
            return Demo(
                new.kanji, d.given, new.kana, d.given_kana, d.birth, d.sex, d.postal, d.address, d.phone
            )
        if u < 0.45:
            return Demo(d.family, d.given, d.family_kana, d.given_kana, d.birth, d.sex, d.postal, d.address,
                        _phone(rng, "054"))  # fmt: skip
        near = next((c for c in N.CITIES if d.address.startswith(c.prefecture + c.city)), None)
        postal, addr, phone = _address(rng, near)
        return Demo(d.family, d.given, d.family_kana, d.given_kana, d.birth, d.sex, postal, addr,
                    phone if rng.random() < 0.5 else d.phone)  # fmt: skip

    def day(self, day: int, rng: random.Random, k: float) -> None:
        u = rng.random() / k
        p_visit = P_VISIT * self.p.activity
        if u < p_visit:
            self.visit(day, rng)
            return
        u -= p_visit
        if u < P_CORRECT + P_DELETE:
            live = [v for v in self.dated[-12:] if v.end_day == NEVER and v.day < day]
            if live:
                v = rng.choice(live)
                if u < P_CORRECT:
                    self.correct(v, day, rng)
                else:
                    self.delete(v, day)
            return
        u -= P_CORRECT + P_DELETE
        t = ms_of(day, rng.randrange(8 * 3600_000, 19 * 3600_000))
        if u < P_ADT:
            self.demo = self._changed_demo(rng)
            self.demographics(t, day)
            return
        u -= P_ADT
        if u < P_IAM:
            self.iam.append(_allergy(rng, self.p.birth_no))
            self.allergies(t, day)
            return
        u -= P_IAM
        if u < P_PPR:
            self._problem_change(day, t, rng)

    def _problem_change(self, day: int, t: int, rng: random.Random) -> None:
        p = self.p
        open_acute = [
            n for n, x in enumerate(p.problems) if not x.resolved and not C.DIAGNOSES[x.diagnosis].chronic
        ]
        probs = list(p.problems)
        if open_acute:
            n = rng.choice(open_acute)
            x = probs[n]
            probs[n] = Problem(x.diagnosis, x.instance_id, x.onset, x.recorded, ymd_of_day(day), x.main)
        else:
            weights = [_age_weight(C.DIAGNOSES[k], p.age, p.demo.sex) for k in _DIAG_KEYS]
            for n, k in enumerate(_DIAG_KEYS):
                if any(x.diagnosis == k for x in probs) or not C.DIAGNOSES[k].chronic:
                    weights[n] = 0.0
            if sum(weights) <= 0:
                return
            k = _DIAG_KEYS[_pick(rng, _cum(weights))]
            today = ymd_of_day(day)
            probs.append(Problem(k, f"{p.pid_num:010d}{p.next_problem:05d}", today, today))
            p.next_problem += 1
        p.problems = probs
        self.problem_list(t, day, rng)


def rate_multipliers(rates: list[tuple[int, float]], days: int) -> list[float]:
    """Per-day multiplier of the base event rates, from ``[(first_day, change_rate), …]`` segments."""
    out: list[float] = []
    seg = sorted(rates)
    for d in range(days):
        rate = BASE_RATE
        for first, r in seg:
            if first <= d:
                rate = r
        out.append(max(rate, 1e-9) / BASE_RATE)
    return out


def simulate(seed: int, i: int, multipliers: list[float]) -> History:
    """Patient i's complete history for ``len(multipliers)`` simulated days."""
    profile = make_profile(seed, i)
    sim = Simulator(seed, profile)
    sim.initial(random.Random(f"{seed}:{i}:history"))
    rng = random.Random(f"{seed}:{i}:days")
    for d, k in enumerate(multipliers):
        sim.day(d, rng, k)
    return History(profile, sim.versions)

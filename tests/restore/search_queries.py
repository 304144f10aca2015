"""A deterministic query set for patient search: what a disaster desk types, mistakes included.

:func:`hospital` gives the synthetic hospital's patients (the same generator as ``hakobune synth``, so names
collide as they do in a real hospital: many サトウ and タナカ, the 齋藤/斎藤 and 渡邊/渡辺 spellings,
namesakes).  :func:`make_queries` draws queries for some of them from a seed, each with the kind of mistake
it carries; the test and the benchmark measure where the right patient ranks.

    python -m tests.restore.search_queries 5000 300     # print a sample of the query set
"""

from __future__ import annotations

import random
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

from hakobune.synth import names as N
from hakobune.synth.model import make_profile
from restore.search import Query, SearchPatient
from restore.search.normalize import kana_loose, to_hiragana

#: Kinds of query and their weights in the set.
KINDS: dict[str, float] = {
    "kana": 1.0,  # katakana, space between family and given name, ISO date
    "hiragana": 1.0,  # hiragana, no space
    "halfwidth": 1.0,  # half-width katakana
    "variant_kanji": 1.5,  # 齋藤 for 斎藤, 渡邉 for 渡辺 …
    "swap_dm": 1.0,  # day and month swapped
    "day_off": 1.0,  # day off by one
    "year_off": 1.0,  # year off by one
    "digit_off": 0.5,  # one digit of the date mistyped
    "old_address": 1.0,  # the address the patient had before moving, plus sex
    "address_forms": 1.0,  # name and address in another spelling (丁目/番地/号, widths, no prefecture)
    "no_sex": 0.5,  # kanji name and date, sex left out
    "wrong_sex": 0.3,  # sex mistyped
    "family_bd": 1.0,  # family name only and birth date
    "long_vowel": 1.0,  # サトー for サトウ, キヨウコ for キョウコ
    "era": 1.0,  # 昭和50年3月4日, S50.3.4, H2.1.1
    "kana_typo": 0.5,  # one kana wrong in the given name
}


@dataclass(frozen=True)
class LabeledQuery:
    kind: str
    query: Query
    patient_id: str


def hospital(patients: int, seed: int = 7) -> list[SearchPatient]:
    """The synthetic hospital's patients (profile demographics, as ``hakobune synth`` generates them)."""
    return [patient(seed, i) for i in range(patients)]


def patient(seed: int, i: int) -> SearchPatient:
    p = make_profile(seed, i)
    d = p.demo
    return SearchPatient(
        patient_id=p.pid,
        family_kanji=d.family,
        given_kanji=d.given,
        family_kana=d.family_kana,
        given_kana=d.given_kana,
        birth_date=f"{d.birth[:4]}-{d.birth[4:6]}-{d.birth[6:]}",
        sex=d.sex,
        address=d.address,
        postal_code=d.postal,
    )


# ------------------------------------------------------------------------------------------ writing
def _halfwidth_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for cp in range(0xFF61, 0xFFA0):
        full = unicodedata.normalize("NFKC", chr(cp))
        table.setdefault(full, chr(cp))
    return table


_HALF = _halfwidth_table()


def halfwidth(s: str) -> str:
    """Full-width katakana to half-width (ガ → ｶﾞ), as old registration terminals print it."""
    marks = {"\u3099": "ﾞ", "\u309a": "ﾟ"}
    out: list[str] = []
    for c in s:
        decomposed = unicodedata.normalize("NFD", c)
        if c in _HALF:
            out.append(_HALF[c])
        elif decomposed[0] in _HALF and all(m in marks for m in decomposed[1:]):
            out.append(_HALF[decomposed[0]] + "".join(marks[m] for m in decomposed[1:]))
        else:
            out.append(c)
    return "".join(out)


#: Variant spellings seen in Japanese names (test data: which spellings a desk types, not how they fold).
NAME_ITAIJI: tuple[str, ...] = (
    "齋斎斉齊",
    "邊辺邉",
    "髙高",
    "﨑崎嵜",
    "濵浜濱",
    "澤沢",
    "廣広",
    "國国",
    "櫻桜",
    "嶋島嶌",
    "冨富",
    "眞真",
    "德徳",
    "惠恵",
    "瀨瀬",
    "舘館",
    "曾曽",
    "槇槙",
    "龍竜",
    "條条",
    "邨村",
    "峯峰",
    "埜野",
    "鷗鴎",
    "鄕郷",
    "藏蔵",
    "壽寿",
    "實実",
    "榮栄",
    "萬万",
    "彌弥",
    "與与",
    "莊荘",
    "豐豊",
    "禮礼",
    "靜静",
    "樂楽",
    "淺浅",
    "齒歯",
    "圓円",
    "縣県",
    "澁渋",
    "關関",
    "會会",
    "學学",
    "嶽岳",
    "驛駅",
    "體体",
    "戶戸",
    "顯顕",
    "曉暁",
)
_ITAIJI_OF = {c: g for g in NAME_ITAIJI for c in g}


def variant_spelling(rng: random.Random, kanji: str) -> str | None:
    """Another spelling of a kanji name: the hospital's known variant groups first, else one character
    swapped for another spelling of it in :data:`NAME_ITAIJI`."""
    if kanji in N.VARIANT_OF:
        return rng.choice([v for v in N.VARIANT_OF[kanji] if v != kanji])
    spots = [(i, [v for v in _ITAIJI_OF[c] if v != c]) for i, c in enumerate(kanji) if c in _ITAIJI_OF]
    if not spots:
        return None
    i, options = rng.choice(spots)
    return kanji[:i] + rng.choice(options) + kanji[i + 1 :]


def long_vowel_mistake(rng: random.Random, kana: str) -> str | None:
    """サトウ → サトー, オオタ → オータ, キョウコ → キヨウコ or キョーコ (the loose key tolerates these)."""
    options: list[str] = []
    for i in range(1, len(kana)):
        prev, c = kana[i - 1], kana[i]
        long_o = c in "ウオ" and prev in "オコソトノホモヨロゴゾドボポョ"
        long_e = c == "イ" and prev in "エケセテネヘメレ"
        if long_o or long_e:
            options.append(kana[:i] + "ー" + kana[i + 1 :])
    small = {"ョ": "ヨ", "ュ": "ユ", "ャ": "ヤ", "ッ": "ツ"}
    options.extend(kana[:i] + small[c] + kana[i + 1 :] for i, c in enumerate(kana) if c in small)
    return rng.choice(options) if options else None


_KANA_SWAPS = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワ"


def kana_typo(rng: random.Random, kana: str) -> str:
    i = rng.randrange(len(kana))
    return kana[:i] + rng.choice([k for k in _KANA_SWAPS if k != kana[i]]) + kana[i + 1 :]


def era_date(rng: random.Random, iso: str) -> str:
    y, m, d = int(iso[:4]), int(iso[5:7]), int(iso[8:])
    for initial, name, start, base in (
        ("R", "令和", date(2019, 5, 1), 2018),
        ("H", "平成", date(1989, 1, 8), 1988),
        ("S", "昭和", date(1926, 12, 25), 1925),
        ("T", "大正", date(1912, 7, 30), 1911),
    ):
        if date(y, m, d) >= start:
            n = y - base
            style = rng.randrange(3)
            if style == 0:
                return f"{initial}{n}.{m}.{d}"
            if style == 1:
                return f"{name}{'元' if n == 1 else n}年{m}月{d}日"
            return f"{initial}{n:02d}/{m:02d}/{d:02d}"
    return iso


def address_spelling(rng: random.Random, address: str) -> str:
    """The same address as another desk writes it: 丁目/番地/号 ↔ dashes, kanji or full-width digits, no
    prefecture, no building."""
    import re

    a = unicodedata.normalize("NFKC", address).split(" ")[0].split("　")[0]
    a = a.replace("−", "-")
    m = re.search(r"(\d+)丁目(\d+)番(\d+)号|(\d+)-(\d+)-(\d+)", a)
    if m:
        x, y, z = (g for g in m.groups() if g)
        style = rng.randrange(4)
        block = [
            f"{x}-{y}-{z}",
            f"{x}丁目{y}番{z}号",
            f"{'〇一二三四五六七八九'[int(x)] if int(x) < 10 else x}丁目{y}-{z}",
            N.fullwidth_digits(f"{x}－{y}－{z}"),
        ][style]
        a = a[: m.start()] + block + a[m.end() :]
    if rng.random() < 0.5:
        for pref in {c.prefecture for c in N.CITIES}:
            if a.startswith(pref):
                a = a[len(pref) :]
                break
    return a


def old_address(rng: random.Random, current: str) -> str:
    """Where the patient lived before moving: usually the same city, another town and number."""
    city = next((c for c in N.CITIES if current.startswith(c.prefecture + c.city)), None)
    if city is None or rng.random() < 0.3:
        city = rng.choice(N.CITIES)
    town, _ = rng.choice(city.towns)
    a, b, c = rng.randint(1, 6), rng.randint(1, 30), rng.randint(1, 25)
    return f"{city.prefecture}{city.city}{town}{a}丁目{b}番{c}号"


def _shift(iso: str, days: int = 0, months: int = 0, years: int = 0) -> str | None:
    y, m, d = int(iso[:4]) + years, int(iso[5:7]) + months, int(iso[8:])
    try:
        return (date(y, m, d) + timedelta(days=days)).isoformat()
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------ queries
def make_queries(patients: list[SearchPatient], count: int, seed: int = 1) -> list[LabeledQuery]:
    """``count`` queries for patients drawn from ``patients`` with ``Random(seed)``.  Patients whose name and
    birth date another patient shares exactly (namesakes: no query could tell them apart) are not drawn."""
    rng = random.Random(seed)
    full = Counter((p.family_kana, p.given_kana, p.birth_date) for p in patients)
    fam_bd = Counter((kana_loose(p.family_kana), p.birth_date) for p in patients)
    pool = [p for p in patients if full[(p.family_kana, p.given_kana, p.birth_date)] == 1]
    kinds, weights = list(KINDS), list(KINDS.values())
    out: list[LabeledQuery] = []
    while len(out) < count:
        p = rng.choice(pool)
        kind = rng.choices(kinds, weights)[0]
        q = _query(rng, kind, p, fam_bd[(kana_loose(p.family_kana), p.birth_date)] > 1)
        if q is not None:
            out.append(LabeledQuery(kind, q, p.patient_id))
    return out


def _query(rng: random.Random, kind: str, p: SearchPatient, family_ambiguous: bool) -> Query | None:
    kana = f"{p.family_kana} {p.given_kana}"
    kanji = f"{p.family_kanji} {p.given_kanji}"
    bd = p.birth_date
    if kind == "kana":
        return Query(kana, bd)
    if kind == "hiragana":
        return Query(to_hiragana(p.family_kana + p.given_kana), bd.replace("-", "/"))
    if kind == "halfwidth":
        return Query(halfwidth(p.family_kana + p.given_kana), bd.replace("-", ""))
    if kind == "variant_kanji":
        fam = variant_spelling(rng, p.family_kanji)
        giv = None if fam is not None else variant_spelling(rng, p.given_kanji)
        if fam is None and giv is None:
            return None
        return Query(f"{fam or p.family_kanji} {giv or p.given_kanji}", bd)
    if kind == "swap_dm":
        y, m, d = bd.split("-")
        if int(d) > 12 or d == m:
            return None
        return Query(kanji, f"{y}-{d}-{m}")
    if kind == "day_off":
        off = _shift(bd, days=rng.choice((-1, 1)))
        return None if off is None else Query(kana, off)
    if kind == "year_off":
        off = _shift(bd, years=rng.choice((-1, 1)))
        return None if off is None else Query(kanji, off)
    if kind == "digit_off":
        digits = bd.replace("-", "")
        i = rng.choice((2, 3, 5, 7))
        wrong = digits[:i] + rng.choice([c for c in "0123456789" if c != digits[i]]) + digits[i + 1 :]
        try:
            date(int(wrong[:4]), int(wrong[4:6]), int(wrong[6:]))
        except ValueError:
            return None
        return Query(kana, wrong)
    if kind == "old_address":
        return Query(kana, bd, p.sex, old_address(rng, p.address))
    if kind == "address_forms":
        name = kanji if rng.random() < 0.5 else kana
        return Query(name, bd if rng.random() < 0.5 else "", "", address_spelling(rng, p.address))
    if kind == "no_sex":
        return Query(kanji.replace(" ", ""), bd)
    if kind == "wrong_sex":
        return Query(kana, bd, {"M": "F", "F": "M"}.get(p.sex, "M"))
    if kind == "family_bd":
        if family_ambiguous:
            return None
        return Query(p.family_kanji if rng.random() < 0.5 else to_hiragana(p.family_kana), bd)
    if kind == "long_vowel":
        for part in rng.sample([0, 1], 2):
            kanas = [p.family_kana, p.given_kana]
            misspelled = long_vowel_mistake(rng, kanas[part])
            if misspelled is not None:
                kanas[part] = misspelled
                return Query(" ".join(kanas), bd)
        return None
    if kind == "era":
        return Query(kanji, era_date(rng, bd))
    if kind == "kana_typo":
        if len(p.given_kana) < 3:
            return None
        return Query(f"{p.family_kana} {kana_typo(rng, p.given_kana)}", bd)
    raise ValueError(kind)


if __name__ == "__main__":
    n, count = (int(a) for a in sys.argv[1:3])
    for lq in make_queries(hospital(n), count):
        print(lq.kind, lq.patient_id, lq.query, sep="\t")

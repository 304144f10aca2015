"""Normalization of what a disaster desk types: names in kanji or kana, birth dates, sex and addresses.

Every function is pure and idempotent (``f(f(x)) == f(x)``), so the index stores normalized values and a
query is normalized the same way before it is compared.

Names
    :func:`kana_key` is the *strict* reading key: NFKC (half-width ｶﾅ → カナ, full-width ＡＢ → AB),
    hiragana → katakana, separators removed.  :func:`kana_loose` is the *tolerant* key on top of it:
    small kana → large (ァ→ア, ッ→ツ, ョ→ヨ), ヂ→ジ, ヅ→ズ, ヲ→オ, ヰ→イ, ヱ→エ,
    ヴ→ブ (ヷ ヸ ヹ ヺ → バ ビ ベ ボ), voicing marks dropped (ザ→サ, パ→ハ), and long vowels
    folded (ー dropped; a vowel kana repeating the vowel before it dropped, as are ウ after
    an o-row kana and イ after an e-row kana): サトウ, サトー, さとう and ｻﾄｳ all give サト.
    :func:`fold_kanji` is NFKC, variation selectors (IVS) dropped, 々 spelled out, then each character
    mapped through the generated kanji-variant table (``data/kanji_variants.tsv``, made by
    ``scripts/gen-kanji-variants``): 齋藤, 斉藤 and 齊藤 all give 斎藤; 渡邊 and 渡邉 give 渡辺.

Birth dates
    :func:`parse_date` reads ISO, slashes/dots, ``19750304``, ``1975年3月4日``, full-width digits and
    Japanese eras (``S50.3.4``, ``昭和50年3月4日``, ``H2.1.1``, ``R1``, ``令和元年``, kanji numerals).
    :func:`date_variants` lists the dates a desk may have meant (swapped day/month, ±1 in a part, one
    digit off, two neighbouring digits swapped); :func:`compare_dates` says how a typed date relates to
    a patient's.

Addresses
    :func:`parse_address` splits prefecture / city / town / block number / the rest (building, room).
    Block numbers are normalized so that 「3丁目4番5号」, 「3-4-5」, 「三丁目4-5」 and
    「３－４－５」 are equal.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

VARIANTS_FILE = Path(__file__).resolve().parent / "data" / "kanji_variants.tsv"

# ----------------------------------------------------------------------------------------------- kana
_HIRA_TO_KATA = {c: c + 0x60 for c in range(0x3041, 0x3097)} | {0x309D: 0x30FD, 0x309E: 0x30FE}
_KATA_TO_HIRA = {v: k for k, v in _HIRA_TO_KATA.items()}
#: Separators inside names: spaces, middle dots, commas, apostrophes, hyphens.
_NAME_SEPARATORS = re.compile(r"[\s・･,、，.'’\-‐]+")
_SMALL = str.maketrans(
    "ァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ",
    "アイウエオツヤユヨワカケクシストヌハヒフヘホムラリルレロ",
)
_OLD_KANA = str.maketrans(
    {
        "ヂ": "ジ",
        "ヅ": "ズ",
        "ヲ": "オ",
        "ヰ": "イ",
        "ヱ": "エ",
        "ヴ": "ブ",
        "ヷ": "バ",
        "ヸ": "ビ",
        "ヹ": "ベ",
        "ヺ": "ボ",
    }
)
_VOWELS = {"ア": "a", "イ": "i", "ウ": "u", "エ": "e", "オ": "o"}
_ROWS = {
    "a": "アカサタナハマヤラワガザダバパ",
    "i": "イキシチニヒミリギジヂビピ",
    "u": "ウクスツヌフムユルグズヅブプヴ",
    "e": "エケセテネヘメレゲゼデベペ",
    "o": "オコソトノホモヨロヲゴゾドボポ",
}
_VOWEL_OF = {c: v for v, chars in _ROWS.items() for c in chars}


_VARIATION_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def nfkc(s: str) -> str:
    """NFKC without variation selectors (U+FE00–FE0F, IVS U+E0100–E01EF), which carry glyph choices only."""
    if not unicodedata.is_normalized("NFKC", s):
        s = unicodedata.normalize("NFKC", s)
    return _VARIATION_SELECTORS.sub("", s) if _VARIATION_SELECTORS.search(s) else s


def to_katakana(s: str) -> str:
    """Hiragana to katakana (other characters unchanged)."""
    return s.translate(_HIRA_TO_KATA)


def to_hiragana(s: str) -> str:
    """Katakana to hiragana (other characters unchanged)."""
    return s.translate(_KATA_TO_HIRA)


def is_kana(s: str) -> bool:
    """True when ``s`` is written in kana only (any width, hiragana or katakana; separators allowed)."""
    body = _NAME_SEPARATORS.sub("", nfkc(s))
    return bool(body) and all("\u3041" <= c <= "\u309f" or "\u30a0" <= c <= "\u30ff" for c in body)


@lru_cache(maxsize=1 << 16)
def kana_key(s: str) -> str:
    """Strict reading key: NFKC, katakana, no separators, lower-cased Latin."""
    return _clean(s)


@lru_cache(maxsize=1 << 16)
def name_as_written(s: str) -> str:
    """A kanji name as written, for an exact comparison: only width, case, kana script and separators are
    normalized (no variant folding)."""
    return _clean(s)


def _clean(s: str) -> str:
    """NFKC, case folded, katakana, separators removed, recomposed (a fixed point of itself)."""
    s = to_katakana(nfkc(nfkc(s).casefold()))
    return unicodedata.normalize("NFC", _NAME_SEPARATORS.sub("", s))


def _drop_voicing(s: str) -> str:
    d = unicodedata.normalize("NFD", s)
    if "\u3099" in d or "\u309a" in d:
        d = d.replace("\u3099", "").replace("\u309a", "")
    return unicodedata.normalize("NFC", d)


@lru_cache(maxsize=1 << 16)
def kana_loose(s: str) -> str:
    """Tolerant reading key: small kana, voicing marks, old kana and long vowels folded (see module doc)."""
    s = _drop_voicing(kana_key(s).translate(_SMALL).translate(_OLD_KANA))
    out: list[str] = []
    prev: str | None = None
    for c in s:
        if c == "ー":
            continue
        v = _VOWELS.get(c)
        if v is not None and prev is not None and (v == prev or (prev, v) in (("o", "u"), ("e", "i"))):
            continue
        out.append(c)
        prev = _VOWEL_OF.get(c)
    return "".join(out)


# ---------------------------------------------------------------------------------------------- kanji
@lru_cache(maxsize=1)
def kanji_variants() -> dict[str, str]:
    """The generated variant → canonical table (``data/kanji_variants.tsv``)."""
    table: dict[str, str] = {}
    with VARIANTS_FILE.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            variant, canonical = line.rstrip("\n").split("\t")
            table[variant] = canonical
    return table


@lru_cache(maxsize=1)
def _kanji_translation() -> dict[int, str]:
    return {ord(k): v for k, v in kanji_variants().items()} | {ord("ヶ"): "ケ", ord("ヵ"): "カ"}


@lru_cache(maxsize=1 << 16)
def fold_kanji(s: str) -> str:
    """Kanji name key: NFKC, no IVS, no separators, 々 spelled out, variants folded, kana as katakana."""
    s = _clean(s)
    if "々" in s:
        s = "".join(s[i - 1] if c == "々" and i > 0 else c for i, c in enumerate(s))
    return s.translate(_kanji_translation())


def split_name(s: str) -> tuple[str, ...]:
    """Family and given name when separated (space, full-width space, comma, middle dot), else the whole."""
    parts = [p for p in re.split(r"[\s,、，・･]+", nfkc(s).strip()) if p]
    if len(parts) <= 1:
        return tuple(parts)
    return (parts[0], "".join(parts[1:]))


# ---------------------------------------------------------------------------------------------- dates
_KANJI_DIGITS = {
    "〇": 0,
    "零": 0,
    "一": 1,
    "二": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_KANJI_NUMBER = re.compile("[〇零一二三四五六七八九十百千]+")


def kanji_number(s: str) -> int:
    """Value of a kanji numeral (三, 十二, 二十三, 百五, 一九七五 digit by digit)."""
    if all(c in _KANJI_DIGITS for c in s):
        return int("".join(str(_KANJI_DIGITS[c]) for c in s))
    total, digit = 0, 0
    for c in s:
        if c in _KANJI_DIGITS:
            digit = _KANJI_DIGITS[c]
        else:
            total += (digit or 1) * {"十": 10, "百": 100, "千": 1000}[c]
            digit = 0
    return total + digit


def _kanji_numerals_to_digits(s: str) -> str:
    return _KANJI_NUMBER.sub(lambda m: str(kanji_number(m.group())), s)


#: Era initial → the Gregorian year before its first year (令和元年 = 2019).
ERAS = {"M": 1867, "T": 1911, "S": 1925, "H": 1988, "R": 2018}
_ERA_NAMES = {
    "明治": "M",
    "大正": "T",
    "昭和": "S",
    "平成": "H",
    "令和": "R",
    "明": "M",
    "大": "T",
    "昭": "S",
    "平": "H",
    "令": "R",
}
_SEP = r"\s*(?:[./\-年月]\s*)?"
_ERA_RE = re.compile(
    rf"^([MTSHR])\s*(\d{{1,2}}){_SEP}(?:(\d{{1,2}}){_SEP}(?:(\d{{1,2}})\s*日?)?)?$", re.IGNORECASE
)
_WEST_RE = re.compile(rf"^(\d{{4}}){_SEP}(?:(\d{{1,2}}){_SEP}(?:(\d{{1,2}})\s*日?)?)?$")
_COMPACT_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


@dataclass(frozen=True, slots=True)
class DateParts:
    """A typed date, possibly partial (``R1`` is a year only) and possibly not a real calendar date."""

    year: int
    month: int | None = None
    day: int | None = None

    def iso(self) -> str:
        """``YYYYMMDD`` when complete, else ``YYYY`` or ``YYYYMM``."""
        s = f"{self.year:04d}"
        if self.month is not None:
            s += f"{self.month:02d}"
            if self.day is not None:
                s += f"{self.day:02d}"
        return s


_ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_date(s: str) -> DateParts | None:
    """Parse a typed birth date (Western or Japanese era); None when it is not one."""
    if m := _ISO_RE.match(s):  # the stored form: fast path
        return DateParts(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    t = nfkc(s).strip()
    for name, initial in _ERA_NAMES.items():
        if t.startswith(name):
            t = initial + t[len(name) :]
            break
    t = re.sub(r"(?<=[MTSHRmtshr])\s*元", "1", t)
    t = _kanji_numerals_to_digits(t).replace("日", "").strip()
    parts: tuple[str | None, ...]
    if m := _ERA_RE.match(t):
        year = ERAS[m.group(1).upper()] + int(m.group(2))
        parts = m.group(3), m.group(4)
    elif m := _COMPACT_RE.match(t) or _WEST_RE.match(t):
        year = int(m.group(1))
        parts = m.group(2), m.group(3)
    else:
        return None
    month = int(parts[0]) if parts[0] else None
    day = int(parts[1]) if parts[1] and month is not None else None
    return DateParts(year, month, day)


def _valid(y: int, m: int, d: int) -> str | None:
    """``YYYYMMDD`` of a real calendar date a living patient may have been born on, else None."""
    if not 1860 <= y <= 2200:
        return None
    try:
        date(y, m, d)
    except ValueError:
        return None
    return f"{y:04d}{m:02d}{d:02d}"


def date_variants(q: DateParts) -> list[str]:
    """The complete dates (``YYYYMMDD``) a desk may have meant by ``q``: itself, day/month swapped, ±1 in
    one part, one digit off, two neighbouring digits swapped.  Only real calendar dates; the exact one
    first."""
    if q.month is None or q.day is None:
        return []
    y, m, d = q.year, q.month, q.day
    out: list[str] = []
    seen: set[str] = set()

    def add(v: str | None) -> None:
        if v is not None and v not in seen:
            seen.add(v)
            out.append(v)

    add(_valid(y, m, d))
    add(_valid(y, d, m))
    for dy, dm, dd in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        add(_valid(y + dy, m + dm, d + dd))
    digits = f"{y:04d}{m:02d}{d:02d}"
    if len(digits) == 8:
        for i in range(7):  # two neighbouring digits swapped (1957 for 1975)
            v = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
            add(_valid(int(v[:4]), int(v[4:6]), int(v[6:])))
        for i in range(8):
            for c in "0123456789":
                if c != digits[i]:
                    v = digits[:i] + c + digits[i + 1 :]
                    add(_valid(int(v[:4]), int(v[4:6]), int(v[6:])))
    return out


def compare_dates(q: DateParts, birth: str) -> tuple[float, str]:
    """How a typed date relates to a patient's ``YYYYMMDD`` birth date: (weight 0..1, reason)."""
    if len(birth) != 8 or not birth.isdigit():
        return 0.0, ""
    y, m, d = int(birth[:4]), int(birth[4:6]), int(birth[6:])
    if q.month is None or q.day is None:
        if q.year == y and (q.month is None or q.month == m):
            return (0.35 if q.month is not None else 0.2), "生年一致" if q.month is None else "生年月一致"
        return 0.0, ""
    qy, qm, qd = q.year, q.month, q.day
    if (qy, qm, qd) == (y, m, d):
        return 1.0, "生年月日一致"
    if (qy, qd, qm) == (y, m, d):
        return 0.8, "生年月日: 月日入れ替え"
    same = (qy == y, qm == m, qd == d)
    if sum(same) == 2:
        if not same[2] and abs(qd - d) == 1:
            return 0.75, "生年月日: 日が1違い"
        if not same[1] and abs(qm - m) == 1:
            return 0.72, "生年月日: 月が1違い"
        if not same[0] and abs(qy - y) == 1:
            return 0.72, "生年月日: 年が1違い"
    a, b = f"{qy:04d}{qm:02d}{qd:02d}", birth
    if len(a) == 8:
        diff = [i for i in range(8) if a[i] != b[i]]
        if len(diff) == 1:
            return 0.65, "生年月日: 1桁違い"
        if (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        ):
            return 0.6, "生年月日: 隣り合う数字の入れ替え"
    if sum(same) == 2:
        return 0.45, "生年月日: 2項目一致"
    if qy == y:
        return 0.15, "生年のみ一致"
    return 0.0, "生年月日不一致"


# ------------------------------------------------------------------------------------------------ sex
_SEX = {
    "M": "M",
    "F": "F",
    "O": "O",
    "U": "U",
    "m": "M",
    "male": "M",
    "男": "M",
    "男性": "M",
    "1": "M",
    "f": "F",
    "female": "F",
    "女": "F",
    "女性": "F",
    "2": "F",
    "o": "O",
    "other": "O",
    "その他": "O",
    "u": "U",
    "unknown": "U",
    "不明": "U",
    "0": "U",
    "9": "U",
}


def normalize_sex(s: str) -> str:
    """``M``, ``F``, ``O`` or ``U`` for HL7 codes, 男/女/男性/女性, male/female and JIS X 0303 digits; ``""``
    when empty or not understood."""
    return _SEX.get(s) or _SEX.get(nfkc(s).strip().casefold(), "")


# -------------------------------------------------------------------------------------------- address
PREFECTURES = (
    *("北海道", "青森県", "岩手県", "宮城県", "秋田県", "山形県", "福島県", "茨城県", "栃木県"),
    *("群馬県", "埼玉県", "千葉県", "東京都", "神奈川県", "新潟県", "富山県", "石川県", "福井県"),
    *("山梨県", "長野県", "岐阜県", "静岡県", "愛知県", "三重県", "滋賀県", "京都府", "大阪府"),
    *("兵庫県", "奈良県", "和歌山県", "鳥取県", "島根県", "岡山県", "広島県", "山口県", "徳島県"),
    *("香川県", "愛媛県", "高知県", "福岡県", "佐賀県", "長崎県", "熊本県", "大分県", "宮崎県"),
    *("鹿児島県", "沖縄県"),
)
_PREFECTURE_SET = frozenset(PREFECTURES)
_DASHES = re.compile(r"[‐‑‒–—―−─━]|(?<=\d)\s*ー\s*(?=\d)")  # after NFKC (－ → -, ｰ → ー)
_POSTAL_RE = re.compile(r"^〒?\s*(\d{3})-?(\d{4})\s*")
_KANJI_BEFORE_BLOCK = re.compile(
    "([〇一二三四五六七八九十百]+)(?=丁目|番地|号|番(?=\\s*[0-9〇一二三四五六七八九十]))"
)
_BLOCK_RE = re.compile(r"(\d+)((?:\s*(?:丁目|番地|番|号|の|-)\s*\d+)*)\s*(?:丁目|番地|番|号)?")
_CITY_RE = re.compile(r"^(.+?郡.+?[町村]|.+?市.+?区|.+?市|.+?区|.+?[町村])")


@dataclass(frozen=True, slots=True)
class Address:
    """An address split for comparison.  ``block`` is ``"3-4-5"`` for every spelling of 3丁目4番5号."""

    prefecture: str = ""
    city: str = ""
    town: str = ""
    block: str = ""
    rest: str = ""
    postal: str = ""

    @property
    def empty(self) -> bool:
        return not (self.prefecture or self.city or self.town or self.block or self.postal)


def _dashes(s: str) -> str:
    """Every dash to ``-``, including ー between digits (3ー4ー5 typed with the long vowel mark)."""
    return _DASHES.sub("-", s) if _DASHES.search(s) else s


def parse_address(s: str) -> Address:
    """Split a Japanese address (see :class:`Address`); tolerant of widths, kanji numerals and 〒."""
    t = _dashes(nfkc(s)).strip()
    postal = ""
    if m := _POSTAL_RE.match(t):
        postal = m.group(1) + m.group(2)
        t = t[m.end() :]
    if _KANJI_BEFORE_BLOCK.search(t):
        t = _KANJI_BEFORE_BLOCK.sub(lambda m: str(kanji_number(m.group(1))), t)
    block = rest = ""
    head = t
    if m := _BLOCK_RE.search(t):
        numbers = [m.group(1), *_DIGITS.findall(m.group(2))]
        block = "-".join(str(int(n)) for n in numbers)
        head, rest = t[: m.start()], t[m.end() :]
    if rest:
        rest = _SPACES.sub(" ", rest).strip()
    return Address(*_head(head), block, rest, postal)


_DIGITS = re.compile(r"\d+")
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=1 << 14)
def _head(head: str) -> tuple[str, str, str]:
    """(prefecture, city, town) of the part before the block number (few distinct values: cached)."""
    head = _SPACES.sub("", head)
    pref = head[:3] if head[:3] in _PREFECTURE_SET else head[:4] if head[:4] in _PREFECTURE_SET else ""
    head = head[len(pref) :]
    if m := _CITY_RE.match(head):
        return pref, m.group(1), head[m.end() :]
    return pref, "", head


def address_key(a: Address) -> str:
    """A canonical one-line form (without the building and room part): ``静岡市駿河区|登呂|3-4-5``."""
    return f"{a.city}|{a.town}|{a.block}"


def compare_addresses(q: Address, p: Address) -> tuple[float, str]:
    """How a typed address relates to a patient's: (weight 0..1, reason).  A typed old address of a patient
    who moved nearby still gets partial credit through the city."""
    if q.empty:
        return 0.0, ""
    if q.prefecture and p.prefecture and q.prefecture != p.prefecture:
        return (0.5, "郵便番号一致") if q.postal and q.postal == p.postal else (0.0, "住所不一致")
    city = bool(q.city) and bool(p.city) and (p.city == q.city or p.city.endswith(q.city))
    town = bool(q.town) and bool(p.town) and q.town == p.town
    if not q.city and q.town and p.town:  # city not typed: the town may carry part of it
        town = (p.city + p.town).endswith(q.town) or q.town == p.town
        city = town
    block = bool(q.block) and q.block == p.block
    block_prefix = (
        bool(q.block)
        and bool(p.block)
        and (p.block.startswith(q.block + "-") or q.block.startswith(p.block + "-"))
    )
    if city and town and block:
        return 1.0, "住所一致" if q.prefecture else "住所一致（都道府県省略）"
    if city and town and block_prefix:
        return 0.85, "住所: 番地の一部まで一致"
    if city and town:
        return 0.6, "住所: 町名まで一致"
    if q.postal and q.postal == p.postal:
        return 0.5, "郵便番号一致"
    if city:
        return 0.35, "住所: 市区町村のみ一致（転居の可能性）"
    if q.prefecture and q.prefecture == p.prefecture:
        return 0.1, "住所: 都道府県のみ一致"
    return 0.0, "住所不一致"

"""Cross-hospital linkage for the research copy: one keyed hash per person, equal at every hospital of the
network, meaningless without the network's linkage key (which the analysis center never holds).

``link = HMAC-SHA256(linkage key, "hakobune/link/v1" 00 name 00 YYYYMMDD 00 sex)``, lower-case hex, where
*name* is the kana family name followed by the kana given name, normalized by **v1**:

1. Unicode NFKC (half-width katakana become full-width and ``ｶﾞ`` composes to ``ガ``; full-width Latin
   letters and digits become ASCII; the ideographic space becomes a space);
2. hiragana become katakana (``さとう`` → ``サトウ``; ``ゝゞ`` → ``ヽヾ``);
3. small kana become full-size (``ァィゥェォッャュョヮヵヶ`` and ``ㇰ``-``ㇿ``): many hospital systems could
   never store them, so ``キョウコ`` and ``キヨウコ`` must link;
4. the archaic ``ヰヱヲ`` become ``イエオ``;
5. hyphen and dash look-alikes (``-‐‑‒–—―−``) become the long-vowel mark ``ー``;
6. white space (any), ``・`` and ``=`` are removed (so family and given name split differently still link);
7. Latin letters are upper-cased.

*YYYYMMDD* is the birth date (it must be a valid date) and *sex* the HL7 administrative sex ``M``, ``F``
or ``O``; anything else counts as ``U``.  No link is made (None) when the normalized name is empty or the
birth date is not a valid date: a hash over nothing would link strangers.

**v1 must never change silently**: every hospital of a network must compute the same link for years.
A different normalization is a new version with its own label in the hashed message, deployed to all
hospitals at once.  ``tests/agent/test_deidentify.py`` pins the test vectors of ``docs/research-stream.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata
from datetime import date
from pathlib import Path

from hakobune.keys import PRIVATE_FILE_MODE, load_secret_bytes, write_key_bytes

LINKAGE_VERSION = "v1"
LINKAGE_KEY_SIZE = 32
_LABEL = b"hakobune/link/v1"

_SMALL = dict(
    zip(
        "ァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ",
        "アイウエオツヤユヨワカケクシストヌハヒフヘホムラリルレロ",
        strict=True,
    )
)
_ARCHAIC = {"ヰ": "イ", "ヱ": "エ", "ヲ": "オ"}
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_DROPPED = "・="
_SEXES = frozenset("MFO")


def _fold_char(c: str) -> str:
    if "\u3041" <= c <= "\u3096" or c in "ゝゞ":
        c = chr(ord(c) + 0x60)
    c = _SMALL.get(c, c)
    c = _ARCHAIC.get(c, c)
    if c in _DASHES:
        return "ー"
    if c.isspace() or c in _DROPPED:
        return ""
    return c.upper() if c.isascii() else c


def normalize_kana_v1(family_kana: str, given_kana: str) -> str:
    """The kana name as the v1 linkage hashes it (see the module docstring); may be ``""``."""
    text = unicodedata.normalize("NFKC", family_kana + given_kana)
    return "".join(_fold_char(c) for c in text)


def normalize_birth_date(value: str) -> str | None:
    """``YYYY-MM-DD`` (or ``YYYYMMDD``) as ``YYYYMMDD`` if it is a real date, else None."""
    digits = value.strip().replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
    return digits


def normalize_sex(value: str) -> str:
    """``M``, ``F`` or ``O`` (HL7 table 0001); anything else is ``U``."""
    s = value.strip()[:1].upper()
    return s if s in _SEXES else "U"


def link_hash(key: bytes, family_kana: str, given_kana: str, birth_date: str, sex: str) -> str | None:
    """The v1 cross-hospital link of a person, or None when name or birth date is missing."""
    if len(key) != LINKAGE_KEY_SIZE:
        raise ValueError("a linkage key has 32 bytes")
    name = normalize_kana_v1(family_kana, given_kana)
    birth = normalize_birth_date(birth_date)
    if not name or birth is None:
        return None
    message = b"\x00".join((_LABEL, name.encode("utf-8"), birth.encode("ascii"), normalize_sex(sex).encode()))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --- the key file ------------------------------------------------------------------------------------------


def load_linkage_key(path: Path) -> bytes:
    """The network's linkage key from its file (32 bytes, base64, one line, mode 0600)."""
    return load_secret_bytes(path, LINKAGE_KEY_SIZE, "linkage key")


def write_linkage_key(path: Path, key: bytes) -> None:
    """Write a linkage key file (0600 from the start).  Refuses to overwrite an existing file."""
    if len(key) != LINKAGE_KEY_SIZE:
        raise ValueError("a linkage key has 32 bytes")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_key_bytes(path, base64.b64encode(key) + b"\n", PRIVATE_FILE_MODE)


def generate_linkage_key(path: Path) -> None:
    """Create a new linkage key for a network (the network operator does this once and hands it to every
    hospital, never to the analysis center)."""
    write_linkage_key(path, os.urandom(LINKAGE_KEY_SIZE))

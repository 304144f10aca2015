"""The passphrase as people type it: a Japanese IME's full-width letters and digits, lower case, spaces
and any dashes all open the disk; a different passphrase does not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.crypto import (
    PASSPHRASE_ALPHABET,
    WrongPassphrase,
    generate_passphrase,
    normalize_passphrase,
    unwrap_passphrase,
    wrap_to_passphrase,
)

DISK = "HKD-TEST-0000-0000-0001"


def full_width(text: str) -> str:
    """What an IME in full-width mode produces for ASCII letters, digits and '-'."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


@settings(max_examples=200)
@given(
    st.text(alphabet=PASSPHRASE_ALPHABET, min_size=24, max_size=24),
    st.lists(st.sampled_from(["lower", "full", "spaces", "dashes", "long-vowel"]), max_size=5),
)
def test_typing_variants_normalize_to_the_same_bytes(symbols: str, variants: list[str]) -> None:
    shown = "-".join(symbols[i : i + 4] for i in range(0, 24, 4))
    typed = shown
    for v in variants:
        if v == "lower":
            typed = typed.lower()
        elif v == "full":
            typed = full_width(typed)
        elif v == "spaces":
            typed = typed.replace("-", " ")
        elif v == "dashes":
            typed = typed.replace("-", "－")  # full-width hyphen-minus
        else:
            typed = typed.replace("-", "ー")  # katakana long vowel, a common IME slip
    assert normalize_passphrase(typed) == symbols.encode("ascii")


def test_a_full_width_lower_case_passphrase_opens_the_wrap_and_a_wrong_one_does_not() -> None:
    passphrase = generate_passphrase()
    assert len(normalize_passphrase(passphrase)) == 24
    assert set(normalize_passphrase(passphrase).decode()) <= set(PASSPHRASE_ALPHABET)
    disk_key = bytes(range(32))
    wrap = wrap_to_passphrase(disk_key, DISK, passphrase, iterations=100_000)
    assert unwrap_passphrase(wrap, DISK, full_width(passphrase.lower())) == disk_key
    assert unwrap_passphrase(wrap, DISK, " ".join(passphrase.split("-"))) == disk_key
    other = generate_passphrase()
    with pytest.raises(WrongPassphrase):
        unwrap_passphrase(wrap, DISK, other)
    with pytest.raises(WrongPassphrase):  # the wrap is bound to its disk id
        unwrap_passphrase(wrap, "HKD-TEST-0000-0000-0002", passphrase)

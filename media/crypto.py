"""The keys of a helicopter disk (format ``hakobune-media/2``), shared by the disk writer, ``media open`` and
the offline viewer (which repeats exactly these steps with WebCrypto, so every choice here is one a browser
can make).

- The **disk key** is 32 random bytes.  Nothing on the disk is encrypted under it directly.
- It is wrapped to the **recipient hospital's public key** with HPKE (the suite of that key), ``info`` =
  ``hakobune-media-v1 recipient <disk id>``.
- It is wrapped, separately, to a **passphrase**: the key-encryption key is PBKDF2-HMAC-SHA256 over the
  normalized passphrase (:func:`normalize_passphrase`), a random 16-byte salt and :data:`PBKDF2_ITERATIONS`,
  32 bytes; the disk key is sealed with AES-256-GCM under it, random 12-byte nonce, associated data
  ``hakobune-media-v1 passphrase <disk id>``.
- Every encrypted thing on the disk uses its own **subkey**: HKDF-SHA256(disk key, salt = disk id,
  info = ``hakobune-media-v1 <purpose>``), 32 bytes, for AES-256-GCM.  Purposes: ``file <logical name>``
  for payload files, ``viewer <chunk name>`` for the viewer's data chunks.

The passphrase is generated (:func:`generate_passphrase`): 24 symbols from an alphabet without look-alikes,
shown in groups of four (about 118 bits).  Typing is forgiving: full-width characters (a Japanese IME),
lower case, spaces and hyphens are all accepted, because the normalization folds them away.
"""

from __future__ import annotations

import base64
import os
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from hakobune.keys import RecipientPrivateKey, RecipientPublicKey

FORMAT = "hakobune-media/2"
LABEL = "hakobune-media-v1"
#: OWASP's 2023 figure for PBKDF2-HMAC-SHA256; a browser derives it in well under a second.
PBKDF2_ITERATIONS = 600_000
#: No 0/O, 1/I/L, U/V look-alikes.
PASSPHRASE_ALPHABET = "ABCDEFGHJKMNPQRSTWXYZ23456789"
PASSPHRASE_SYMBOLS = 24
KEY_BYTES = 32


class WrongPassphrase(Exception):
    """The passphrase does not open this disk's key."""


def generate_passphrase() -> str:
    """A fresh passphrase, e.g. ``K7QX-3MZP-…`` (shown once; it travels by another channel)."""
    symbols = "".join(secrets.choice(PASSPHRASE_ALPHABET) for _ in range(PASSPHRASE_SYMBOLS))
    return "-".join(symbols[i : i + 4] for i in range(0, PASSPHRASE_SYMBOLS, 4))


def normalize_passphrase(text: str) -> bytes:
    """NFKC, upper case, then only ``A-Z`` and ``0-9`` kept; UTF-8 (ASCII) bytes.  The viewer does the
    same in JavaScript (``normalize('NFKC').toUpperCase().replace(/[^A-Z0-9]/g, '')``)."""
    folded = unicodedata.normalize("NFKC", text).upper()
    return "".join(c for c in folded if "A" <= c <= "Z" or "0" <= c <= "9").encode("ascii")


def new_disk_key() -> bytes:
    return os.urandom(KEY_BYTES)


def subkey(disk_key: bytes, disk_id: str, purpose: str) -> bytes:
    """The AES-256-GCM key for one purpose (``file <name>`` or ``viewer <chunk>``)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=disk_id.encode("utf-8"),
        info=f"{LABEL} {purpose}".encode(),
    ).derive(disk_key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not base64") from None


@dataclass(frozen=True)
class PassphraseWrap:
    """The disk key sealed to a passphrase; :meth:`doc` is what the manifest and the viewer carry."""

    iterations: int
    salt: bytes
    nonce: bytes
    wrapped: bytes

    def doc(self) -> dict[str, Any]:
        return {
            "kdf": "PBKDF2-SHA256",
            "iterations": self.iterations,
            "salt": _b64(self.salt),
            "nonce": _b64(self.nonce),
            "wrapped": _b64(self.wrapped),
        }

    @classmethod
    def from_doc(cls, doc: Any) -> PassphraseWrap:
        if not isinstance(doc, dict) or doc.get("kdf") != "PBKDF2-SHA256":
            raise ValueError("passphrase wrap: unknown key derivation")
        iterations = doc.get("iterations")
        if not isinstance(iterations, int) or not 100_000 <= iterations <= 10_000_000:
            raise ValueError("passphrase wrap: iteration count out of range")
        return cls(
            iterations,
            _unb64(doc.get("salt"), "passphrase wrap salt"),
            _unb64(doc.get("nonce"), "passphrase wrap nonce"),
            _unb64(doc.get("wrapped"), "passphrase wrap"),
        )


def _kek(passphrase: str, salt: bytes, iterations: int) -> bytes:
    return PBKDF2HMAC(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, iterations=iterations).derive(
        normalize_passphrase(passphrase)
    )


def _passphrase_aad(disk_id: str) -> bytes:
    return f"{LABEL} passphrase {disk_id}".encode()


def wrap_to_passphrase(
    disk_key: bytes, disk_id: str, passphrase: str, iterations: int = PBKDF2_ITERATIONS
) -> PassphraseWrap:
    if not normalize_passphrase(passphrase):
        raise ValueError("empty passphrase")
    salt, nonce = os.urandom(16), os.urandom(12)
    wrapped = AESGCM(_kek(passphrase, salt, iterations)).encrypt(nonce, disk_key, _passphrase_aad(disk_id))
    return PassphraseWrap(iterations, salt, nonce, wrapped)


def unwrap_passphrase(wrap: PassphraseWrap, disk_id: str, passphrase: str) -> bytes:
    """The disk key; :class:`WrongPassphrase` when the passphrase (or the wrap) is not the right one."""
    try:
        key = AESGCM(_kek(passphrase, wrap.salt, wrap.iterations)).decrypt(
            wrap.nonce, wrap.wrapped, _passphrase_aad(disk_id)
        )
    except (InvalidTag, ValueError):
        raise WrongPassphrase("the passphrase does not open this disk") from None
    if len(key) != KEY_BYTES:
        raise WrongPassphrase("the passphrase does not open this disk")
    return key


def _recipient_info(disk_id: str) -> bytes:
    return f"{LABEL} recipient {disk_id}".encode()


def wrap_to_recipient(disk_key: bytes, disk_id: str, recipient: RecipientPublicKey) -> bytes:
    """HPKE ``enc || ciphertext`` of the disk key for the recipient hospital."""
    return recipient.seal(disk_key, _recipient_info(disk_id))


def unwrap_recipient(sealed: bytes, disk_id: str, private: RecipientPrivateKey) -> bytes | None:
    """The disk key, or None when ``private`` is not the key this disk was written for."""
    key = private.open(sealed, _recipient_info(disk_id))
    return key if key is not None and len(key) == KEY_BYTES else None

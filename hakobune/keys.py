"""Key types and key files.

Three kinds of keys exist (DESIGN §7):

* **signing keys** (Ed25519): the agent signs changesets, the center signs receipts, custodians sign
  release orders;
* **recipient keys** (HPKE, RFC 9180): a hospital's *release key* (clinical stream) and the analysis
  center's key (research stream).  Two suites: ``mlkem768-x25519`` (default; post-quantum hybrid
  ML-KEM-768 + X25519, HKDF-SHA256, AES-256-GCM) and ``cryptrec-p256`` (DHKEM P-256, HKDF-SHA256,
  AES-256-GCM) for sites that must use algorithms on the CRYPTREC list.

Every key file is one line of text: ``<kind>:<private|public>:<base64 of the raw key>``.  Private key
files are created with mode 0600 and refused if anyone but the owner can read them.  A key's
*fingerprint* is the first 16 bytes of SHA-256 over its raw public key, in hex; headers and receipts name
keys by fingerprint.

Raw encodings: Ed25519 private = 32-byte seed, public = 32 bytes.  ``mlkem768-x25519`` private = the
64-byte ML-KEM seed followed by the 32-byte X25519 private key, public = the 1184-byte ML-KEM-768 public
key followed by the 32-byte X25519 public key.  ``cryptrec-p256`` private = the 32-byte scalar, public =
the 65-byte uncompressed point.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from hakobune.errors import ConfigError, InputError

SuiteName = Literal["mlkem768-x25519", "cryptrec-p256"]
SUITES: tuple[SuiteName, ...] = get_args(SuiteName)
DEFAULT_SUITE: SuiteName = "mlkem768-x25519"

KeyKind = Literal["ed25519", "mlkem768-x25519", "cryptrec-p256"]
_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)

PRIVATE_FILE_MODE = 0o600

_MLKEM_SEED = 64
_MLKEM768_PUBLIC = 1184


def fingerprint(raw_public: bytes) -> str:
    """The fingerprint of a raw public key: SHA-256, first 16 bytes, hex."""
    return hashlib.sha256(raw_public).digest()[:16].hex()


def hpke_suite(name: SuiteName) -> hpke.Suite:
    """The HPKE suite behind a suite name."""
    kem = hpke.KEM.MLKEM768_X25519 if name == "mlkem768-x25519" else hpke.KEM.P256
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def check_suite(value: str) -> SuiteName:
    if value not in SUITES:
        raise ConfigError(f"unknown suite {value!r}: expected one of {', '.join(SUITES)}")
    return value


# --- signing keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ConfigError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if ``signature`` is this key's signature over ``message``."""
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def text(self) -> str:
        return _key_line("ed25519", "public", self.raw)


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key."""

    seed: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        key = ed25519.Ed25519PrivateKey.generate()
        return cls(key.private_bytes_raw())

    @property
    def public(self) -> VerifyKey:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(self.seed)
        return VerifyKey(key.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def text(self) -> str:
        return _key_line("ed25519", "private", self.seed)

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(fingerprint={self.public.fingerprint})"


# --- recipient (HPKE) keys ------------------------------------------------------------------------------


HpkePublic = hpke.MLKEM768X25519PublicKey | ec.EllipticCurvePublicKey
HpkePrivate = hpke.MLKEM768X25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class RecipientPublicKey:
    """A public key that changesets (and disks) are sealed to."""

    suite: SuiteName
    raw: bytes

    def __post_init__(self) -> None:
        self.hpke_key()  # validate now, not when the first changeset is sealed

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    def hpke_key(self) -> HpkePublic:
        try:
            if self.suite == "mlkem768-x25519":
                if len(self.raw) != _MLKEM768_PUBLIC + 32:
                    raise ValueError(f"expected {_MLKEM768_PUBLIC + 32} bytes, got {len(self.raw)}")
                return hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:_MLKEM768_PUBLIC]),
                    x25519.X25519PublicKey.from_public_bytes(self.raw[_MLKEM768_PUBLIC:]),
                )
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.raw)
        except ValueError as e:
            raise ConfigError(f"not a valid {self.suite} public key ({e})") from e

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """HPKE base-mode single-shot encryption: ``enc || ciphertext``."""
        return hpke_suite(self.suite).encrypt(plaintext, self.hpke_key(), info=info)

    def text(self) -> str:
        return _key_line(self.suite, "public", self.raw)


@dataclass(frozen=True)
class RecipientPrivateKey:
    """The private half of a recipient key.  A hospital's release private key normally exists only as
    custodian shares and is put together in memory for an unlock."""

    suite: SuiteName
    raw: bytes

    @classmethod
    def generate(cls, suite: SuiteName = DEFAULT_SUITE) -> RecipientPrivateKey:
        if suite == "mlkem768-x25519":
            seed = mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
            return cls(suite, seed + x25519.X25519PrivateKey.generate().private_bytes_raw())
        scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
        return cls(suite, scalar.to_bytes(32, "big"))

    def hpke_key(self) -> HpkePrivate:
        try:
            if self.suite == "mlkem768-x25519":
                if len(self.raw) != _MLKEM_SEED + 32:
                    raise ValueError(f"expected {_MLKEM_SEED + 32} bytes, got {len(self.raw)}")
                return hpke.MLKEM768X25519PrivateKey(
                    mlkem.MLKEM768PrivateKey.from_seed_bytes(self.raw[:_MLKEM_SEED]),
                    x25519.X25519PrivateKey.from_private_bytes(self.raw[_MLKEM_SEED:]),
                )
            if len(self.raw) != 32:
                raise ValueError(f"expected 32 bytes, got {len(self.raw)}")
            return ec.derive_private_key(int.from_bytes(self.raw, "big"), ec.SECP256R1())
        except ValueError as e:
            raise ConfigError(f"not a valid {self.suite} private key ({e})") from e

    @property
    def public(self) -> RecipientPublicKey:
        key = self.hpke_key()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        else:
            mlkem_pub = mlkem.MLKEM768PrivateKey.from_seed_bytes(self.raw[:_MLKEM_SEED]).public_key()
            x_pub = x25519.X25519PrivateKey.from_private_bytes(self.raw[_MLKEM_SEED:]).public_key()
            raw = mlkem_pub.public_bytes_raw() + x_pub.public_bytes_raw()
        return RecipientPublicKey(self.suite, raw)

    def open(self, sealed: bytes, info: bytes) -> bytes | None:
        """Decrypt what :meth:`RecipientPublicKey.seal` made; None if it was sealed to another key, for
        other ``info`` or altered."""
        try:
            return hpke_suite(self.suite).decrypt(sealed, self.hpke_key(), info=info)
        except Exception:
            return None

    def text(self) -> str:
        return _key_line(self.suite, "private", self.raw)

    def __repr__(self) -> str:
        return f"RecipientPrivateKey(suite={self.suite}, fingerprint={self.public.fingerprint})"


# --- key files -------------------------------------------------------------------------------------------


def _key_line(kind: KeyKind, part: Literal["private", "public"], raw: bytes) -> str:
    return f"{kind}:{part}:{base64.b64encode(raw).decode('ascii')}\n"


def parse_key(text: str, where: str) -> SigningKey | VerifyKey | RecipientPrivateKey | RecipientPublicKey:
    """Parse one key line; ``where`` names its source in errors."""
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] not in _KINDS or parts[1] not in ("private", "public"):
        raise InputError(where, "not a Hakobune key (expected '<kind>:<private|public>:<base64>')")
    kind, part, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise InputError(where, "key is not valid base64") from None
    try:
        if kind == "ed25519":
            if part == "private":
                if len(raw) != 32:
                    raise ConfigError(f"an Ed25519 private key has 32 bytes, not {len(raw)}")
                return SigningKey(raw)
            return VerifyKey(raw)
        suite = check_suite(kind)
        if part == "private":
            key = RecipientPrivateKey(suite, raw)
            key.hpke_key()
            return key
        return RecipientPublicKey(suite, raw)
    except ConfigError as e:
        raise InputError(where, str(e)) from None


def write_key(path: Path, key: SigningKey | VerifyKey | RecipientPrivateKey | RecipientPublicKey) -> Path:
    """Write ``key`` to ``path``: private keys with mode 0600 (never briefly readable by others), public
    keys 0644.  Refuses to overwrite an existing file."""
    private = isinstance(key, SigningKey | RecipientPrivateKey)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_bytes(path, key.text().encode("ascii"), PRIVATE_FILE_MODE if private else 0o644)
    return path


def write_key_bytes(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (a private key is never briefly readable by others),
    write ``data`` and fsync.  Refuses to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_key_text(path: Path) -> tuple[str, int]:
    """A key file's text and its permission bits; :class:`InputError` if it cannot be read."""
    try:
        st = path.stat()
        return path.read_text(encoding="ascii"), stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        raise InputError(str(path), "key file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(path), f"cannot read key file ({e})") from None


def check_private_mode(path: Path, mode: int) -> None:
    """Refuse a private key file that anyone but its owner may read."""
    if mode & 0o077:
        raise InputError(str(path), f"private key file is readable by others (mode {mode:04o}); chmod 600")


def load_secret_bytes(path: Path, size: int, what: str) -> bytes:
    """A symmetric secret from its key file: ``size`` bytes as base64 on one line, mode 0600.
    :class:`InputError` naming ``what`` (e.g. ``"token key"``) if the file holds anything else."""
    text, mode = read_key_text(path)
    check_private_mode(path, mode)
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != size:
        raise InputError(str(path), f"not a {what} ({size} bytes, base64)")
    return key


def _read(path: Path) -> SigningKey | VerifyKey | RecipientPrivateKey | RecipientPublicKey:
    text, mode = read_key_text(path)
    key = parse_key(text, str(path))
    if isinstance(key, SigningKey | RecipientPrivateKey):
        check_private_mode(path, mode)
    return key


def load_signing_key(path: Path) -> SigningKey:
    key = _read(path)
    if not isinstance(key, SigningKey):
        raise InputError(str(path), "not an Ed25519 private key")
    return key


def load_verify_key(path: Path) -> VerifyKey:
    key = _read(path)
    if isinstance(key, SigningKey):
        return key.public
    if not isinstance(key, VerifyKey):
        raise InputError(str(path), "not an Ed25519 public key")
    return key


def load_recipient_public(path: Path) -> RecipientPublicKey:
    key = _read(path)
    if isinstance(key, RecipientPrivateKey):
        return key.public
    if not isinstance(key, RecipientPublicKey):
        raise InputError(str(path), "not a recipient (HPKE) public key")
    return key


def load_recipient_private(path: Path) -> RecipientPrivateKey:
    key = _read(path)
    if not isinstance(key, RecipientPrivateKey):
        raise InputError(str(path), "not a recipient (HPKE) private key")
    return key

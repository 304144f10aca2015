"""The signed manifest of a helicopter disk (``manifest.json`` + ``manifest.sig``, identical on every
volume; docs/media.md has the fields and a worked example).

``manifest.json`` is canonical JSON (keys sorted, no whitespace, UTF-8): what the disk is (disk id, order,
hospital, recipient, creation time), how its key is wrapped (to the recipient's public key and to the
passphrase), its logical files (size, compressed size, segment size, parts) and every file of every
volume with its size and SHA-256 (BagIt-style), except ``manifest.json`` and ``manifest.sig`` themselves.

``manifest.sig`` is canonical JSON ``{"alg": "Ed25519", "key_fingerprint", "signature"}``: the center's
Ed25519 signature over ``b"hakobune-media-manifest/v1\\n" + <the bytes of manifest.json>``.  The manifest
names its signer (fingerprint and public key), but a verifier trusts only the key or fingerprint it was
given out of band (``--center-key``): a disk signed by anyone else fails, whatever it claims.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson

from hakobune.errors import ConfigError, InputError
from hakobune.keys import SUITES, SigningKey, SuiteName, VerifyKey, check_suite, fingerprint
from media.crypto import FORMAT, PassphraseWrap
from media.stream import MAX_SEGMENT, MIN_SEGMENT

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGN_CONTEXT = b"hakobune-media-manifest/v1\n"
PAYLOAD_NAME = "bundles.ndjson"
STREAM_SCHEME = "AES-256-GCM-STREAM"
#: The payload is compressed before it is sealed: zstd frames (RFC 8878), one after another.
COMPRESSION_SCHEME = "zstd"
#: A file name on the disk: plain relative paths only (no '..', no hidden names, no backslashes).
_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")


def canonical(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def check_path(path: str) -> str:
    if not _PATH.fullmatch(path):
        raise ValueError(f"not a plain relative file name: {path!r}")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One file of one volume."""

    path: str
    size: int
    sha256: str

    def doc(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class PartEntry:
    """One part of a logical file: where it is and what it must hash to."""

    path: str
    volume: int
    size: int
    sha256: str

    def doc(self) -> dict[str, Any]:
        return {"path": self.path, "volume": self.volume, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class LogicalFile:
    """A file as ``media open`` rebuilds it: its size, the size of its zstd frames (the stream that is
    sealed) and the sealed parts.  (No plaintext hash: the parts' hashes are signed, and every segment of
    the stream is authenticated, in order, up to the flagged last one, so the plaintext is as the writer
    sealed it or it does not decrypt.)"""

    name: str
    size: int
    compressed_size: int
    segment_size: int
    parts: tuple[PartEntry, ...]

    def doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "media_type": "application/fhir+ndjson",
            "size": self.size,
            "compression": {"scheme": COMPRESSION_SCHEME, "size": self.compressed_size},
            "encryption": {"scheme": STREAM_SCHEME, "segment_size": self.segment_size},
            "parts": [p.doc() for p in self.parts],
        }


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.  ``raw`` is the exact bytes of ``manifest.json`` (what the signature covers)."""

    doc: dict[str, Any]
    raw: bytes

    @property
    def disk_id(self) -> str:
        return str(self.doc["disk_id"])

    @property
    def created_at(self) -> str:
        return str(self.doc["created_at"])

    @property
    def hospital(self) -> str:
        return str(self.doc["hospital"])

    @property
    def order_id(self) -> str:
        return str(self.doc["order"]["id"])

    @property
    def recipient(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.doc["recipient"].items()}

    @property
    def patients(self) -> int:
        return int(self.doc["counts"]["patients"])

    @property
    def signer_fingerprint(self) -> str:
        return str(self.doc["signer"]["key_fingerprint"])

    @property
    def signer_key(self) -> VerifyKey:
        return VerifyKey(base64.b64decode(self.doc["signer"]["public_key"]))

    @property
    def volume_count(self) -> int:
        return len(self.doc["volumes"])

    def volume_files(self, n: int) -> tuple[FileEntry, ...]:
        v = self.doc["volumes"][n - 1]
        return tuple(FileEntry(f["path"], f["size"], f["sha256"]) for f in v["files"])

    @property
    def logical_files(self) -> tuple[LogicalFile, ...]:
        return tuple(
            LogicalFile(
                f["name"],
                f["size"],
                f["compression"]["size"],
                f["encryption"]["segment_size"],
                tuple(PartEntry(p["path"], p["volume"], p["size"], p["sha256"]) for p in f["parts"]),
            )
            for f in self.doc["files"]
        )

    @property
    def passphrase_wrap(self) -> PassphraseWrap:
        return PassphraseWrap.from_doc(self.doc["key_wraps"]["passphrase"])

    @property
    def recipient_wrap(self) -> bytes:
        return base64.b64decode(self.doc["key_wraps"]["recipient"]["hpke"])

    @property
    def recipient_suite(self) -> SuiteName:
        return check_suite(str(self.doc["key_wraps"]["recipient"]["suite"]))

    @property
    def payload_bytes(self) -> int:
        return sum(f.size for n in range(1, self.volume_count + 1) for f in self.volume_files(n))


# --- signing --------------------------------------------------------------------------------------------


def sign(manifest_bytes: bytes, key: SigningKey) -> bytes:
    """``manifest.sig`` for ``manifest.json``."""
    signature = key.sign(SIGN_CONTEXT + manifest_bytes)
    return canonical(
        {
            "alg": "Ed25519",
            "key_fingerprint": key.public.fingerprint,
            "signature": base64.b64encode(signature).decode("ascii"),
        }
    )


@dataclass(frozen=True)
class TrustAnchor:
    """The center key a verifier trusts: the key itself, or only its fingerprint (then the key named in
    the manifest is used if, and only if, it has that fingerprint)."""

    fingerprint: str
    key: VerifyKey | None = None

    @classmethod
    def of_key(cls, key: VerifyKey) -> TrustAnchor:
        return cls(key.fingerprint, key)

    @classmethod
    def of_fingerprint(cls, text: str) -> TrustAnchor:
        fp = text.strip().lower().replace(":", "")
        if not _FINGERPRINT.fullmatch(fp):
            raise ConfigError(f"--center-key {text!r}: neither a key file nor a 32-hex-digit fingerprint")
        return cls(fp)


def signature_problem(
    manifest_bytes: bytes, sig_bytes: bytes, signer: VerifyKey, anchor: TrustAnchor
) -> str | None:
    """Why ``sig_bytes`` is not the trusted center's signature of ``manifest_bytes`` (None if it is).
    ``signer`` is the key the manifest names."""
    try:
        sig = orjson.loads(sig_bytes)
        if not isinstance(sig, dict) or sig.get("alg") != "Ed25519":
            return f"{SIGNATURE_NAME}: not an Ed25519 manifest signature"
        signature = base64.b64decode(str(sig.get("signature", "")), validate=True)
    except (orjson.JSONDecodeError, binascii.Error, ValueError):
        return f"{SIGNATURE_NAME}: unreadable"
    key = anchor.key if anchor.key is not None else signer
    if key.fingerprint != anchor.fingerprint or signer.fingerprint != anchor.fingerprint:
        return (
            f"{SIGNATURE_NAME}: signed by key {signer.fingerprint}, not by the trusted center key "
            f"{anchor.fingerprint}"
        )
    if sig.get("key_fingerprint") != anchor.fingerprint:
        return f"{SIGNATURE_NAME}: names key {sig.get('key_fingerprint')}, not the trusted center key"
    if not key.verify(signature, SIGN_CONTEXT + manifest_bytes):
        return (
            f"{SIGNATURE_NAME}: the signature does not verify ({MANIFEST_NAME} or its signature was altered)"
        )
    return None


# --- parsing --------------------------------------------------------------------------------------------


def _int(v: Any, what: str, low: int = 0, high: int = 1 << 62) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"{what}: not an integer in {low}..{high}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what}: not text")
    return v


def _dict(v: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict) or not keys <= set(v):
        raise ValueError(f"{what}: expected an object with {', '.join(sorted(keys))}")
    return v


def _sha(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _HEX64.fullmatch(v):
        raise ValueError(f"{what}: not a SHA-256 in hex")
    return v


def _check(doc: Any) -> None:
    d = _dict(
        doc,
        "manifest",
        {"format", "disk_id", "created_at", "hospital", "order", "recipient", "signer", "counts"}
        | {"key_wraps", "files", "volumes"},
    )
    if d["format"] != FORMAT:
        raise ValueError(f"format {d['format']!r} is not {FORMAT}")
    if not _str(d["disk_id"], "disk_id") or not d["disk_id"].isprintable():
        raise ValueError("disk_id: not printable text")
    for k in ("created_at", "hospital"):
        _str(d[k], k)
    order = _dict(d["order"], "order", {"id", "sha256"})
    _str(order["id"], "order.id")
    _sha(order["sha256"], "order.sha256")
    for k, v in _dict(d["recipient"], "recipient", {"id", "name", "key_fingerprint"}).items():
        _str(v, f"recipient.{k}")
    signer = _dict(d["signer"], "signer", {"key_fingerprint", "public_key"})
    raw = base64.b64decode(_str(signer["public_key"], "signer.public_key"), validate=True)
    if len(raw) != 32 or fingerprint(raw) != signer["key_fingerprint"]:
        raise ValueError("signer: the public key does not match its fingerprint")
    counts = _dict(d["counts"], "counts", {"patients", "bytes"})
    _int(counts["patients"], "counts.patients")
    _int(counts["bytes"], "counts.bytes")
    wraps = _dict(d["key_wraps"], "key_wraps", {"recipient", "passphrase"})
    rec = _dict(wraps["recipient"], "key_wraps.recipient", {"suite", "hpke"})
    if rec["suite"] not in SUITES:
        raise ValueError("key_wraps.recipient.suite: unknown suite")
    base64.b64decode(_str(rec["hpke"], "key_wraps.recipient.hpke"), validate=True)
    PassphraseWrap.from_doc(wraps["passphrase"])
    volumes = d["volumes"]
    if not isinstance(volumes, list) or not 1 <= len(volumes) <= 999:
        raise ValueError("volumes: expected a list of 1 to 999 volumes")
    m = len(volumes)
    listed: dict[tuple[int, str], tuple[int, str]] = {}
    for i, v in enumerate(volumes, 1):
        vd = _dict(v, f"volumes[{i}]", {"n", "m", "files"})
        if vd["n"] != i or vd["m"] != m:
            raise ValueError(f"volumes[{i}]: numbered {vd['n']} of {vd['m']}, not {i} of {m}")
        if not isinstance(vd["files"], list):
            raise ValueError(f"volumes[{i}].files: not a list")
        for f in vd["files"]:
            fd = _dict(f, f"volumes[{i}].files[]", {"path", "size", "sha256"})
            path = check_path(_str(fd["path"], "path"))
            if path in (MANIFEST_NAME, SIGNATURE_NAME) or (i, path) in listed:
                raise ValueError(f"volume {i}: {path} listed twice or reserved")
            listed[(i, path)] = (_int(fd["size"], "size"), _sha(fd["sha256"], "sha256"))
    files = d["files"]
    if not isinstance(files, list) or [f.get("name") for f in files if isinstance(f, dict)] != [PAYLOAD_NAME]:
        raise ValueError(f"files: expected exactly one logical file {PAYLOAD_NAME}")
    for f in files:
        fd = _dict(f, "files[]", {"name", "size", "compression", "encryption", "parts"})
        _int(fd["size"], "files[].size")
        comp = _dict(fd["compression"], "files[].compression", {"scheme", "size"})
        if comp["scheme"] != COMPRESSION_SCHEME:
            raise ValueError("files[].compression: unknown scheme")
        _int(comp["size"], "files[].compression.size")
        enc = _dict(fd["encryption"], "files[].encryption", {"scheme", "segment_size"})
        if enc["scheme"] != STREAM_SCHEME:
            raise ValueError("files[].encryption: unknown scheme")
        _int(enc["segment_size"], "segment_size", MIN_SEGMENT, MAX_SEGMENT)
        if not isinstance(fd["parts"], list) or not fd["parts"]:
            raise ValueError("files[].parts: expected at least one part")
        for p in fd["parts"]:
            pd = _dict(p, "parts[]", {"path", "volume", "size", "sha256"})
            key = (_int(pd["volume"], "parts[].volume", 1, m), check_path(_str(pd["path"], "parts[].path")))
            if listed.get(key) != (pd["size"], pd["sha256"]):
                raise ValueError(
                    f"part {pd['path']}: not listed with the same size and hash on volume {key[0]}"
                )


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and check the structure of ``manifest.json`` (the signature is checked separately)."""
    try:
        doc = orjson.loads(data)
        _check(doc)
    except orjson.JSONDecodeError:
        raise InputError(where, "not JSON") from None
    except (ValueError, binascii.Error, KeyError, TypeError) as e:
        raise InputError(where, f"not a {FORMAT} manifest ({e})") from None
    if canonical(doc) != data:
        raise InputError(where, "not in canonical form (altered, or not written by Hakobune)")
    return Manifest(doc, data)

"""The release-key ceremony, custodian shares and key reconstruction (DESIGN §7).

A hospital's *release key* (the HPKE key its clinical stream is sealed to) is never stored.  In the
ceremony a random 32-byte master secret is drawn; the release private key is derived from it
(:func:`derive_release_key`) and the master secret is split with SLIP-39 (``shamir-mnemonic``) into one
share per custodian, under a two-level rule: *group_threshold* groups must be complete, a group is complete
when *threshold* of its members take part.  Example: ``director:1/1`` and ``custodians:2/3`` with group
threshold 1 = the director alone, or any 2 of the 3 others.

Every custodian receives

* the share as a printable word list (``shares/<group>-<n>-<id>.txt``, for the safe),
* the same share in a passphrase-protected file (``shares/<group>-<n>-<id>.share``: scrypt + AES-256-GCM),
* an Ed25519 signing key (``custodians/<id>.key``) to approve release orders under the same rule.

``custody.json`` is the public custody policy: the release public key, the groups and each custodian's
verify key.  Its SHA-256 (over the canonical JSON) is printed on every word list; the center and the
hospital keep copies and compare it.

Nothing here prints key material, words or passphrases; errors name the file or the share's position.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
import re
import secrets
import shutil
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from shamir_mnemonic import MnemonicError, combine_mnemonics, generate_mnemonics
from shamir_mnemonic.share import Share
from shamir_mnemonic.wordlist import WORD_INDEX_MAP, WORDLIST

from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError, HakobuneError, InputError
from hakobune.keys import (
    DEFAULT_SUITE,
    PRIVATE_FILE_MODE,
    RecipientPrivateKey,
    RecipientPublicKey,
    SigningKey,
    SuiteName,
    VerifyKey,
    check_private_mode,
    check_suite,
    load_recipient_public,
    parse_key,
    write_key,
    write_key_bytes,
)

POLICY_FORMAT = "hakobune-custody"
SHARE_FORMAT = "hakobune-share"
VERSION = 1

#: HKDF info prefix for the release key; the suite and hospital follow.  Changing it changes every key.
KEY_INFO = "hakobune/release-key/v1"
MASTER_SECRET_BYTES = 32
#: scrypt cost for share files: 2**17 (128 MiB, about half a second).  Tests pass a smaller one.
DEFAULT_SCRYPT_LOG_N = 17
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSPHRASE = 8
#: SLIP-39 PBKDF2 iteration exponent.  The master secret is 256 random bits and no SLIP-39 passphrase is
#: used (the share files carry their own), so the cheapest setting is enough.
ITERATION_EXPONENT = 1

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SLIP39_MAX = 16
_SELF_TEST_CAP = 35
_WORDS_BEGIN = "---- words / 単語 ----"
_WORDS_END = "---- end / 以上 ----"


class CustodyError(HakobuneError):
    """Shares or approvals that cannot unlock: too few, mixed, wrong.  The message is one line and never
    contains words, passphrases or key material."""


# --- the custody policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Custodian:
    """One share holder and order approver."""

    id: str
    name: str
    group: str
    n: int  # 1-based position in its group (SLIP-39 member index + 1)
    verify_key: VerifyKey

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "n": self.n,
            "verify_key": self.verify_key.text().strip(),
            "fingerprint": self.verify_key.fingerprint,
        }


@dataclass(frozen=True)
class CustodyGroup:
    name: str
    threshold: int
    members: tuple[Custodian, ...]

    def doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "members": [m.doc() for m in self.members],
        }


@dataclass(frozen=True)
class RuleStatus:
    """How far a set of custodians (share holders or approvers) gets under the policy's rule."""

    group_threshold: int
    groups: tuple[tuple[str, int, int, int], ...]  # (name, threshold, member count, present)

    @property
    def complete_groups(self) -> tuple[str, ...]:
        return tuple(name for name, t, _, k in self.groups if k >= t)

    @property
    def satisfied(self) -> bool:
        return len(self.complete_groups) >= self.group_threshold

    def describe(self, noun: str = "custodians") -> str:
        """One line: what is there and what is missing, e.g. ``2 of 3 custodians needed in group
        custodians, got 1; complete groups: none (1 of 2 groups needed)``."""
        parts = [
            f"{t} of {n} {noun} needed in group {name}, got {k}" for name, t, n, k in self.groups if k < t
        ]
        complete = ", ".join(self.complete_groups) or "none"
        return (
            "; ".join(parts)
            + f"; complete groups: {complete} ({self.group_threshold} of {len(self.groups)} groups needed)"
        )


@dataclass(frozen=True)
class CustodyPolicy:
    """The public custody policy (``custody.json``)."""

    hospital: str
    suite: SuiteName
    release_key: RecipientPublicKey
    group_threshold: int
    groups: tuple[CustodyGroup, ...]
    share_set: int  # the SLIP-39 identifier shared by all of this ceremony's shares (public)
    extendable: bool
    iteration_exponent: int
    created_at: str

    @property
    def release_fingerprint(self) -> str:
        return self.release_key.fingerprint

    @property
    def custodians(self) -> tuple[Custodian, ...]:
        return tuple(m for g in self.groups for m in g.members)

    def custodian(self, custodian_id: str) -> Custodian | None:
        return next((m for m in self.custodians if m.id == custodian_id), None)

    def custodian_by_key(self, key: VerifyKey) -> Custodian | None:
        return next((m for m in self.custodians if hmac.compare_digest(m.verify_key.raw, key.raw)), None)

    def doc(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "version": VERSION,
            "hospital": self.hospital,
            "suite": self.suite,
            "release_key": self.release_key.text().strip(),
            "release_key_fingerprint": self.release_fingerprint,
            "group_threshold": self.group_threshold,
            "groups": [g.doc() for g in self.groups],
            "share_set": {
                "identifier": self.share_set,
                "extendable": self.extendable,
                "iteration_exponent": self.iteration_exponent,
            },
            "created_at": self.created_at,
        }

    def canonical(self) -> bytes:
        return orjson.dumps(self.doc(), option=orjson.OPT_SORT_KEYS)

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON (sorted keys, no whitespace): what orders and paper name."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def rule_status(self, present: Iterable[str]) -> RuleStatus:
        """Evaluate the rule for the custodians with these ids (duplicates and unknown ids count nothing)."""
        ids = set(present)
        return RuleStatus(
            self.group_threshold,
            tuple(
                (g.name, g.threshold, len(g.members), sum(1 for m in g.members if m.id in ids))
                for g in self.groups
            ),
        )

    def rule_text(self) -> str:
        """``director 1 of 1, custodians 2 of 3; any 1 of 2 groups``."""
        groups = ", ".join(f"{g.name} {g.threshold} of {len(g.members)}" for g in self.groups)
        how = "all groups" if self.group_threshold == len(self.groups) else "groups"
        return f"{groups}; {self.group_threshold} of {len(self.groups)} {how}"

    def rule_text_ja(self) -> str:
        groups = "、".join(f"{g.name}: {len(g.members)}人中{g.threshold}人" for g in self.groups)
        return f"{groups}（{len(self.groups)}グループ中{self.group_threshold}グループが揃えば復元可）"


def policy_from_doc(doc: Any, where: str) -> CustodyPolicy:
    """Parse and check a custody policy document."""

    def bad(reason: str) -> InputError:
        return InputError(where, f"not a valid custody policy ({reason})")

    try:
        if doc["format"] != POLICY_FORMAT or doc["version"] != VERSION:
            raise bad("unknown format or version")
        suite = check_suite(doc["suite"])
        release = parse_key(doc["release_key"], where)
        if not isinstance(release, RecipientPublicKey) or release.suite != suite:
            raise bad(f"release_key is not a {suite} public key")
        if doc["release_key_fingerprint"] != release.fingerprint:
            raise bad("release_key_fingerprint does not match release_key")
        groups: list[CustodyGroup] = []
        seen: set[str] = set()
        for g in doc["groups"]:
            members: list[Custodian] = []
            for i, m in enumerate(g["members"], start=1):
                vk = parse_key(m["verify_key"], where)
                if not isinstance(vk, VerifyKey):
                    raise bad(f"custodian {m['id']}: verify_key is not an Ed25519 public key")
                if m["id"] in seen:
                    raise bad(f"custodian id {m['id']} appears twice")
                if m["n"] != i or m["group"] != g["name"] or m["fingerprint"] != vk.fingerprint:
                    raise bad(f"custodian {m['id']}: inconsistent entry")
                seen.add(m["id"])
                members.append(Custodian(str(m["id"]), str(m["name"]), str(g["name"]), i, vk))
            threshold = g["threshold"]
            if not isinstance(threshold, int) or not 1 <= threshold <= len(members):
                raise bad(f"group {g['name']}: threshold out of range")
            groups.append(CustodyGroup(str(g["name"]), threshold, tuple(members)))
        gt = doc["group_threshold"]
        if not isinstance(gt, int) or not 1 <= gt <= len(groups):
            raise bad("group_threshold out of range")
        share_set = doc["share_set"]
        policy = CustodyPolicy(
            hospital=str(doc["hospital"]),
            suite=suite,
            release_key=release,
            group_threshold=gt,
            groups=tuple(groups),
            share_set=int(share_set["identifier"]),
            extendable=bool(share_set["extendable"]),
            iteration_exponent=int(share_set["iteration_exponent"]),
            created_at=str(doc["created_at"]),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        if isinstance(e, InputError):
            raise
        raise bad(f"missing or wrong field {e}") from None
    if orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) != policy.canonical():
        raise bad("unexpected or malformed fields")
    return policy


def load_policy(path: Path) -> CustodyPolicy:
    """Read ``custody.json``."""
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(str(path), "custody policy not found") from None
    except (OSError, orjson.JSONDecodeError) as e:
        raise InputError(str(path), f"cannot read custody policy ({e})") from None
    return policy_from_doc(doc, str(path))


def write_policy(path: Path, policy: CustodyPolicy) -> None:
    data = orjson.dumps(policy.doc(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"
    write_key_bytes(path, data, 0o644)


# --- key derivation --------------------------------------------------------------------------------------


def derive_release_key(master_secret: bytes, suite: SuiteName, hospital: str) -> RecipientPrivateKey:
    """The release private key for ``master_secret``: HKDF-SHA256 with info
    ``hakobune/release-key/v1/<suite>/<hospital>``.  ``mlkem768-x25519`` takes 96 bytes (64-byte ML-KEM
    seed + 32-byte X25519 key); ``cryptrec-p256`` takes 48 bytes, reduced mod (n-1), plus 1, so the scalar
    lies in [1, n-1] with negligible bias."""
    if len(master_secret) != MASTER_SECRET_BYTES:
        raise CustodyError(f"master secret has {len(master_secret)} bytes, expected {MASTER_SECRET_BYTES}")
    info = f"{KEY_INFO}/{suite}/{hospital}".encode()
    length = 96 if suite == "mlkem768-x25519" else 48
    okm = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master_secret)
    if suite == "mlkem768-x25519":
        return RecipientPrivateKey(suite, okm)
    scalar = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    return RecipientPrivateKey(suite, scalar.to_bytes(32, "big"))


# --- group specifications ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSpec:
    id: str
    name: str


@dataclass(frozen=True)
class GroupSpec:
    """One ``--group NAME:T/N[:member,...]`` (a member may be ``id=name``)."""

    name: str
    threshold: int
    members: tuple[MemberSpec, ...]


def slug(text: str) -> str:
    """A file-name-safe id from a name; keeps letters of any script (院長 stays 院長)."""
    s = unicodedata.normalize("NFKC", text).strip().lower()
    return re.sub(r"[^\w]+", "-", s).strip("-_")


_GROUP_RE = re.compile(r"^([^:/,=\s]+):(\d+)/(\d+)(?::(.*))?$")


def parse_group_spec(text: str) -> GroupSpec:
    m = _GROUP_RE.match(unicodedata.normalize("NFKC", text.strip()))
    if not m:
        raise ConfigError(f"--group {text!r}: expected NAME:T/N[:member,member,...]")
    name, t, n, members_text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if slug(name) != name.lower() or not name:
        raise ConfigError(f"--group {text!r}: group names use letters, digits, '-' and '_' only")
    if not 1 <= n <= _SLIP39_MAX:
        raise ConfigError(f"--group {name}: between 1 and {_SLIP39_MAX} members, not {n}")
    if not 1 <= t <= n:
        raise ConfigError(f"--group {name}: threshold {t} must be between 1 and {n}")
    if t == 1 and n > 1:
        raise ConfigError(
            f"--group {name}: 1 of {n} is not possible with SLIP-39; give each member a 1/1 group instead "
            "(e.g. --group a:1/1:A --group b:1/1:B with --group-threshold 1)"
        )
    members: list[MemberSpec] = []
    if members_text:
        entries = [e.strip() for e in members_text.split(",")]
        if len(entries) != n or not all(entries):
            raise ConfigError(f"--group {name}: {n} members expected, {len(entries)} given")
        for i, e in enumerate(entries, start=1):
            mid, _, mname = e.partition("=") if "=" in e else ("", "", e)
            mid = slug(mid or mname) or f"{name}-{i}"
            members.append(MemberSpec(mid, mname.strip() or mid))
    else:
        members = [MemberSpec(f"{name}-{i}", f"{name}-{i}") for i in range(1, n + 1)]
    return GroupSpec(name, t, tuple(members))


def check_groups(groups: Sequence[GroupSpec], group_threshold: int) -> None:
    if not groups:
        raise ConfigError("at least one --group is needed")
    if len(groups) > _SLIP39_MAX:
        raise ConfigError(f"at most {_SLIP39_MAX} groups")
    if not 1 <= group_threshold <= len(groups):
        raise ConfigError(f"--group-threshold {group_threshold} must be between 1 and {len(groups)}")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError("two groups have the same name")
    ids = [m.id for g in groups for m in g.members]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"two custodians have the id {dup[0]}; name them apart or give ids as id=name")


def read_passphrase_lines(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, who, passphrase)`` of each ``who=passphrase`` line (``#`` comments and blank lines
    skipped; ``who`` NFKC-normalized) of a passphrase file, which must be private (mode 0600)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(str(path), f"cannot read passphrase file ({e.strerror})") from None
    check_private_mode(path, st.st_mode & 0o777)
    out: list[tuple[int, str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        who, sep, passphrase = line.partition("=")
        if not sep:
            raise InputError(f"{path}:{lineno}", "expected member=passphrase")
        out.append((lineno, unicodedata.normalize("NFKC", who.strip()), passphrase.strip()))
    return out


def read_passphrase_file(path: Path, groups: Sequence[GroupSpec]) -> dict[str, str]:
    """``member=passphrase`` lines (member by id or name; ``#`` comments) → passphrase per custodian id.
    The file must be private (mode 0600)."""
    by_name = {m.name: m.id for g in groups for m in g.members}
    ids = {m.id for g in groups for m in g.members}
    out: dict[str, str] = {}
    for lineno, who, passphrase in read_passphrase_lines(path):
        mid = who if who in ids else by_name.get(who) or (slug(who) if slug(who) in ids else None)
        if mid is None:
            raise InputError(f"{path}:{lineno}", f"no custodian {who!r} in the groups")
        out[mid] = passphrase
    missing = [m.id for g in groups for m in g.members if m.id not in out]
    if missing:
        raise InputError(str(path), f"no passphrase for {', '.join(missing)}")
    return out


# --- share files ------------------------------------------------------------------------------------------


def _normalize_passphrase(passphrase: str) -> bytes:
    # NFKC: full-width and half-width input (IME) give the same passphrase.
    return unicodedata.normalize("NFKC", passphrase).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _share_aad(doc: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in doc.items() if k != "ciphertext"}, option=orjson.OPT_SORT_KEYS)


def write_share_file(
    path: Path,
    mnemonic: str,
    passphrase: str,
    *,
    hospital: str,
    custodian: Custodian,
    of: int,
    release_fingerprint: str,
    share_set: int,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> None:
    """Write one share encrypted under ``passphrase`` (scrypt → AES-256-GCM; the header is the AAD, so
    hospital and member cannot be changed without the file failing).  Mode 0600; never overwrites."""
    if len(unicodedata.normalize("NFKC", passphrase)) < MIN_PASSPHRASE:
        raise ConfigError(
            f"passphrase for {custodian.id} is too short (at least {MIN_PASSPHRASE} characters)"
        )
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    doc: dict[str, Any] = {
        "format": SHARE_FORMAT,
        "version": VERSION,
        "hospital": hospital,
        "group": custodian.group,
        "member": custodian.id,
        "member_name": custodian.name,
        "n": custodian.n,
        "of": of,
        "release_key_fingerprint": release_fingerprint,
        "share_set": share_set,
        "kdf": {"name": "scrypt", "n": 2**scrypt_log_n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
        "cipher": {"name": "aes-256-gcm", "nonce": _b64(nonce)},
    }
    key = Scrypt(salt=salt, length=32, n=2**scrypt_log_n, r=SCRYPT_R, p=SCRYPT_P).derive(
        _normalize_passphrase(passphrase)
    )
    doc["ciphertext"] = _b64(AESGCM(key).encrypt(nonce, mnemonic.encode("ascii"), _share_aad(doc)))
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"
    write_key_bytes(path, data, PRIVATE_FILE_MODE)


@dataclass(frozen=True)
class ShareInput:
    """A share with where it came from (for errors) and, from a share file, the hospital it names."""

    mnemonic: str = field(repr=False)
    where: str
    hospital: str | None = None

    def __repr__(self) -> str:
        return f"ShareInput(where={self.where!r}, hospital={self.hospital!r})"


def share_file_header(path: Path) -> dict[str, Any]:
    """A share file's public header (hospital, group, member, …) without decrypting it."""
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(str(path), "share file not found") from None
    except (OSError, orjson.JSONDecodeError):
        raise InputError(str(path), "not a Hakobune share file") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARE_FORMAT or doc.get("version") != VERSION:
        raise InputError(str(path), "not a Hakobune share file (unknown format or version)")
    return doc


def read_share_file(path: Path, passphrase: str, *, hospital: str | None = None) -> str:
    """Decrypt a share file; the mnemonic.  :class:`InputError` naming the file for a wrong passphrase,
    an altered file or (with ``hospital``) another hospital's share."""
    doc = share_file_header(path)
    try:
        kdf, cipher = doc["kdf"], doc["cipher"]
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        if kdf["name"] != "scrypt" or cipher["name"] != "aes-256-gcm":
            raise ValueError("algorithm")
        if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("parameters")
        if len(salt) < 16 or len(nonce) != 12:
            raise ValueError("parameters")
        file_hospital = str(doc["hospital"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise InputError(str(path), "not a Hakobune share file (bad header)") from None
    if hospital is not None and file_hospital != hospital:
        raise InputError(str(path), f"share file is for hospital {file_hospital}, not {hospital}")
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(_normalize_passphrase(passphrase))
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, _share_aad(doc))
    except InvalidTag:
        raise InputError(
            str(path), "wrong passphrase for this share file (or the file was altered)"
        ) from None
    return plain.decode("ascii")


# --- word sheets -----------------------------------------------------------------------------------------


def render_word_sheet(
    mnemonic: str, *, policy: CustodyPolicy, custodian: Custodian, of: int, policy_sha256: str
) -> str:
    """The printable word list for one custodian (UTF-8 text, Japanese/English)."""
    words = mnemonic.split()
    rows = (len(words) + 2) // 3
    cells = [f"{i + 1:>2}. {w:<10}" for i, w in enumerate(words)]
    lines = [
        "方舟 Hakobune — 復号鍵の分割片 / RELEASE KEY SHARE (SLIP-39)",
        "=" * 68,
        f"病院 Hospital            : {policy.hospital}",
        f"保管者 Custodian         : {custodian.name} (id: {custodian.id})",
        f"グループ Group           : {custodian.group}",
        f"分割片 Share             : {custodian.n} of {of}  ({of}枚中{custodian.n}枚目)",
        f"復元条件 Rule            : {policy.rule_text()}",
        f"                           {policy.rule_text_ja()}",
        f"復号鍵指紋 Key fingerprint: {policy.release_fingerprint}",
        f"ポリシー Policy SHA-256  : {policy_sha256}",
        f"分割片セット Share set   : {policy.share_set}",
        f"作成日 Date              : {policy.created_at[:10]}",
        "",
        f"{_WORDS_BEGIN}  ({len(words)} words / {len(words)}語)",
    ]
    for r in range(rows):
        lines.append("   ".join(cells[c * rows + r] for c in range(3) if c * rows + r < len(cells)).rstrip())
    lines += [
        _WORDS_END,
        "",
        "取り扱い: この用紙は金庫に保管し、複写・撮影しないでください。単語は順番どおりに全て必要です。",
        "Keep this sheet in a safe. Do not copy or photograph it. All words are needed, in order.",
        "Alone it cannot unlock anything; together with the other custodians' shares it can.",
        "The same share is also in the passphrase-protected file of the same name (.share).",
        "",
    ]
    return "\n".join(lines)


def parse_mnemonic(text: str) -> str:
    """Words typed or read back: numbering (``12.``), case and extra spaces are ignored; a word may be
    given by its first four letters (SLIP-39 words are unique in four).  Unknown words are left as they
    are for :func:`recover_release_key` to report by position."""
    tokens = [t for t in re.split(r"[\s,]+", text.lower()) if t and not re.fullmatch(r"\d+\.?", t)]
    out: list[str] = []
    for t in tokens:
        if t not in WORD_INDEX_MAP and len(t) >= 4:
            matches = [w for w in WORDLIST if w.startswith(t[:4])]
            if len(matches) == 1 and matches[0].startswith(t):
                t = matches[0]
        out.append(t)
    return " ".join(out)


def read_word_sheet(path: Path) -> str:
    """The mnemonic on a word sheet written by the ceremony (or typed into the same layout)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(str(path), f"cannot read word sheet ({e.strerror})") from None
    begin, end = text.find(_WORDS_BEGIN), text.find(_WORDS_END)
    if begin < 0 or end < begin:
        raise InputError(str(path), "not a Hakobune word sheet (no word section)")
    section = text[begin:end].splitlines()[1:]
    numbered = re.findall(r"(\d+)\.\s+(\S+)", "\n".join(section))
    if not numbered:
        raise InputError(str(path), "word sheet has no words")
    ordered = [w for _, w in sorted(numbered, key=lambda nw: int(nw[0]))]
    return parse_mnemonic(" ".join(ordered))


def load_share(path: Path, passphrase: str | None = None, *, hospital: str | None = None) -> ShareInput:
    """A share from a ``.share`` file (needs ``passphrase``) or a word sheet (``.txt``)."""
    if path.suffix == ".share":
        if passphrase is None:
            raise InputError(str(path), "a share file needs its passphrase")
        return ShareInput(
            read_share_file(path, passphrase, hospital=hospital),
            str(path),
            str(share_file_header(path)["hospital"]),
        )
    return ShareInput(read_word_sheet(path), str(path))


# --- reconstruction ----------------------------------------------------------------------------------------


def _decode(share: ShareInput) -> Share:
    words = share.mnemonic.split()
    for i, w in enumerate(words, start=1):
        if w.lower() not in WORD_INDEX_MAP:
            raise CustodyError(f"{share.where}: word {i} is not a SLIP-39 word; check it against the sheet")
    try:
        return Share.from_mnemonic(" ".join(words))
    except MnemonicError:
        raise CustodyError(
            f"{share.where}: checksum does not match ({len(words)} words; a word is wrong, missing or "
            "out of order)"
        ) from None


def _as_inputs(shares: Sequence[str | ShareInput]) -> list[ShareInput]:
    return [
        s if isinstance(s, ShareInput) else ShareInput(parse_mnemonic(s), f"share #{i}")
        for i, s in enumerate(shares, start=1)
    ]


def recover_release_key(policy: CustodyPolicy, shares: Sequence[str | ShareInput]) -> RecipientPrivateKey:
    """Put the release private key together from custodian shares (mnemonics, or :class:`ShareInput`
    from :func:`load_share`).  Extra shares are fine; a share that is unreadable, from another ceremony
    or hospital, or too few shares raise :class:`CustodyError` (one line, no key material).  The result
    is checked against the policy's release public key."""
    chosen: dict[tuple[int, int], tuple[Share, ShareInput]] = {}
    for s in _as_inputs(shares):
        if s.hospital is not None and s.hospital != policy.hospital:
            raise CustodyError(f"{s.where}: share is for hospital {s.hospital}, not {policy.hospital}")
        share = _decode(s)
        if share.identifier != policy.share_set or share.extendable != policy.extendable:
            raise CustodyError(
                f"{s.where}: share is from a different key ceremony (share set {share.identifier}; "
                f"the custody policy of {policy.hospital} has {policy.share_set})"
            )
        if (
            share.group_count != len(policy.groups)
            or share.group_threshold != policy.group_threshold
            or share.group_index >= len(policy.groups)
        ):
            raise CustodyError(f"{s.where}: share does not fit the groups of the custody policy")
        group = policy.groups[share.group_index]
        if share.member_threshold != group.threshold or share.index >= len(group.members):
            raise CustodyError(f"{s.where}: share does not fit group {group.name} of the custody policy")
        slot = (share.group_index, share.index)
        if slot in chosen and chosen[slot][0] != share:
            raise CustodyError(
                f"{s.where}: conflicts with {chosen[slot][1].where} (both claim share "
                f"{share.index + 1} of group {group.name})"
            )
        chosen[slot] = (share, s)
    present = [policy.groups[g].members[i].id for g, i in chosen]
    status = policy.rule_status(present)
    if not status.satisfied:
        raise CustodyError(f"too few shares: {status.describe('custodians')}")
    # combine_mnemonics wants exactly group_threshold groups with exactly threshold shares each.
    minimal: list[str] = []
    complete = [i for i, g in enumerate(policy.groups) if g.name in status.complete_groups]
    for gi in complete[: policy.group_threshold]:
        members = sorted((idx, sh) for (g, idx), (sh, _) in chosen.items() if g == gi)
        minimal += [sh.mnemonic() for _, sh in members[: policy.groups[gi].threshold]]
    try:
        master = combine_mnemonics(minimal)
    except MnemonicError:
        raise CustodyError("the shares do not combine (mixed or corrupted shares)") from None
    key = derive_release_key(bytes(master), policy.suite, policy.hospital)
    if not hmac.compare_digest(key.public.raw, policy.release_key.raw):
        raise CustodyError(
            f"the shares give a different key than the release key {policy.release_fingerprint} of "
            f"{policy.hospital} (shares of another ceremony or hospital?)"
        )
    return key


# --- the ceremony ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustodianFiles:
    custodian: Custodian
    word_sheet: Path
    share_file: Path
    signing_key: Path
    verify_key: Path


@dataclass(frozen=True)
class CeremonyResult:
    out: Path
    policy: CustodyPolicy
    policy_path: Path
    release_pub: Path
    custodians: tuple[CustodianFiles, ...]
    self_test_combinations: int

    def doc(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "hospital": self.policy.hospital,
            "suite": self.policy.suite,
            "release_key": self.policy.release_key.text().strip(),
            "release_key_fingerprint": self.policy.release_fingerprint,
            "release_pub": str(self.release_pub),
            "policy": str(self.policy_path),
            "policy_sha256": self.policy.sha256,
            "rule": self.policy.rule_text(),
            "share_set": self.policy.share_set,
            "custodians": [
                {
                    "id": c.custodian.id,
                    "name": c.custodian.name,
                    "group": c.custodian.group,
                    "n": c.custodian.n,
                    "word_sheet": str(c.word_sheet),
                    "share_file": str(c.share_file),
                    "signing_key": str(c.signing_key),
                    "verify_key": str(c.verify_key),
                    "fingerprint": c.custodian.verify_key.fingerprint,
                }
                for c in self.custodians
            ],
            "self_test": {"ok": True, "combinations": self.self_test_combinations},
        }


def _now_text(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ceremony(
    hospital: str,
    out: Path,
    groups: Sequence[GroupSpec],
    passphrases: Mapping[str, str],
    *,
    group_threshold: int = 1,
    suite: SuiteName = DEFAULT_SUITE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
    now: datetime | None = None,
) -> CeremonyResult:
    """Run the key ceremony into ``out`` (which must not exist or be empty): release key, shares, custodian
    keys, custody policy; then self-test every group combination from minimal share sets, the share files
    and the word sheets.  Everything is written to a hidden sibling folder first and renamed into place
    only when the self-test passed.  ``passphrases`` maps custodian id → share-file passphrase."""
    hospital = hospital.strip()
    if not hospital or any(unicodedata.category(ch).startswith("C") for ch in hospital):
        raise ConfigError("--hospital must be a non-empty hospital id")
    check_suite(suite)
    check_groups(groups, group_threshold)
    for g in groups:
        for m in g.members:
            p = passphrases.get(m.id)
            if p is None:
                raise ConfigError(f"no passphrase for custodian {m.id}")
            if len(unicodedata.normalize("NFKC", p)) < MIN_PASSPHRASE:
                raise ConfigError(
                    f"passphrase for {m.id} is too short (at least {MIN_PASSPHRASE} characters)"
                )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not empty; refusing to overwrite a ceremony")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    try:
        result = _ceremony_into(
            work, out, hospital, groups, passphrases, group_threshold, suite, scrypt_log_n, now
        )
        if out.exists():
            out.rmdir()
        os.rename(work, out)
        fsync_dir(out.parent)
        return result
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _ceremony_into(
    work: Path,
    out: Path,
    hospital: str,
    groups: Sequence[GroupSpec],
    passphrases: Mapping[str, str],
    group_threshold: int,
    suite: SuiteName,
    scrypt_log_n: int,
    now: datetime | None,
) -> CeremonyResult:
    master = secrets.token_bytes(MASTER_SECRET_BYTES)
    release = derive_release_key(master, suite, hospital)
    mnemonics: list[list[str]] = generate_mnemonics(
        group_threshold,
        [(g.threshold, len(g.members)) for g in groups],
        master,
        passphrase=b"",
        extendable=True,
        iteration_exponent=ITERATION_EXPONENT,
    )
    del master
    share_set = Share.from_mnemonic(mnemonics[0][0]).identifier
    (work / "shares").mkdir(mode=0o700)
    (work / "custodians").mkdir(mode=0o700)
    signing: dict[str, SigningKey] = {}
    policy_groups: list[CustodyGroup] = []
    for g in groups:
        members = []
        for i, m in enumerate(g.members, start=1):
            signing[m.id] = SigningKey.generate()
            members.append(Custodian(m.id, m.name, g.name, i, signing[m.id].public))
        policy_groups.append(CustodyGroup(g.name, g.threshold, tuple(members)))
    policy = CustodyPolicy(
        hospital=hospital,
        suite=suite,
        release_key=release.public,
        group_threshold=group_threshold,
        groups=tuple(policy_groups),
        share_set=share_set,
        extendable=True,
        iteration_exponent=ITERATION_EXPONENT,
        created_at=_now_text(now),
    )
    write_key(work / "release.pub", policy.release_key)
    write_policy(work / "custody.json", policy)
    sha = policy.sha256
    files: list[CustodianFiles] = []
    for pg, words in zip(policy.groups, mnemonics, strict=True):
        for c, mnemonic in zip(pg.members, words, strict=True):
            stem = f"{pg.name}-{c.n}-{c.id}"
            sheet = work / "shares" / f"{stem}.txt"
            sheet_text = render_word_sheet(
                mnemonic, policy=policy, custodian=c, of=len(pg.members), policy_sha256=sha
            )
            write_key_bytes(sheet, sheet_text.encode("utf-8"), PRIVATE_FILE_MODE)
            write_share_file(
                work / "shares" / f"{stem}.share",
                mnemonic,
                passphrases[c.id],
                hospital=hospital,
                custodian=c,
                of=len(pg.members),
                release_fingerprint=policy.release_fingerprint,
                share_set=share_set,
                scrypt_log_n=scrypt_log_n,
            )
            write_key(work / "custodians" / f"{c.id}.key", signing[c.id])
            write_key(work / "custodians" / f"{c.id}.pub", signing[c.id].public)
            files.append(
                CustodianFiles(
                    c,
                    out / "shares" / f"{stem}.txt",
                    out / "shares" / f"{stem}.share",
                    out / "custodians" / f"{c.id}.key",
                    out / "custodians" / f"{c.id}.pub",
                )
            )
    combos = self_test(work, policy, passphrases)
    for folder in (work / "shares", work / "custodians", work):
        fsync_dir(folder)
    return CeremonyResult(out, policy, out / "custody.json", out / "release.pub", tuple(files), combos)


def _member_sets(policy: CustodyPolicy) -> list[list[Custodian]]:
    """Minimal custodian sets: every combination of groups, and within each, every minimal member subset
    of one group with the first subset of the others (capped)."""
    sets: list[list[Custodian]] = []
    for combo in itertools.islice(
        itertools.combinations(policy.groups, policy.group_threshold), _SELF_TEST_CAP
    ):
        firsts = {g.name: list(g.members[: g.threshold]) for g in combo}
        for g in combo:
            for subset in itertools.islice(itertools.combinations(g.members, g.threshold), _SELF_TEST_CAP):
                members = [m for other in combo for m in (list(subset) if other is g else firsts[other.name])]
                if members not in sets:
                    sets.append(members)
    return sets


def self_test(directory: Path, policy: CustodyPolicy, passphrases: Mapping[str, str]) -> int:
    """Check a ceremony folder: the written policy reads back, every share file opens with its passphrase
    and matches its word sheet, and every minimal set of shares rebuilds the release key, which opens what
    is sealed to ``release.pub``.  Returns the number of combinations tried."""
    if load_policy(directory / "custody.json") != policy:
        raise CustodyError("self-test: custody.json does not read back")
    shares: dict[str, ShareInput] = {}
    for g in policy.groups:
        for c in g.members:
            stem = directory / "shares" / f"{g.name}-{c.n}-{c.id}"
            from_file = read_share_file(
                stem.with_suffix(".share"), passphrases[c.id], hospital=policy.hospital
            )
            if read_word_sheet(stem.with_suffix(".txt")) != from_file:
                raise CustodyError(f"self-test: word sheet and share file of {c.id} differ")
            shares[c.id] = ShareInput(from_file, str(stem.with_suffix(".share")), policy.hospital)
    if load_recipient_public(directory / "release.pub") != policy.release_key:
        raise CustodyError("self-test: release.pub does not match the policy")
    probe = secrets.token_bytes(32)
    sealed = policy.release_key.seal(probe, b"hakobune ceremony self-test")
    sets = _member_sets(policy)
    for members in sets:
        key = recover_release_key(policy, [shares[m.id] for m in members])
        if key.open(sealed, b"hakobune ceremony self-test") != probe:
            raise CustodyError("self-test: the rebuilt key does not open what is sealed to release.pub")
    for g in policy.groups:  # one short of a threshold must not be enough on its own
        if g.threshold > 1 and policy.group_threshold == 1:
            short = [shares[m.id] for m in g.members[: g.threshold - 1]]
            try:
                recover_release_key(policy, short)
            except CustodyError:
                continue
            raise CustodyError(f"self-test: {g.threshold - 1} shares of group {g.name} were enough")
    return len(sets)

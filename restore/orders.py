"""Release orders, custodian approvals and unlock (DESIGN §7).

A *release order* says: release these records (all, or listed patients) of hospital H, for this purpose,
to this recipient hospital, whose public key the media will be sealed to; valid until ``expires_at``.  It
names the custody policy it was made under (SHA-256) and the release key (fingerprint).

An order file is JSON ``{"format", "version", "order": {...}, "approvals": [...]}``.  The order body is
fixed once created; each approval is one custodian's Ed25519 signature over::

    b"hakobune-release-approval/v1\\n" + canonical JSON {"custodian": id, "order": body, "signed_at": t}

(canonical = keys sorted, no whitespace), so changing any field of the body, or moving a signature to
another custodian, breaks it.  Approvals satisfy the order under the *same* rule as the shares (e.g. the
director alone, or 2 of the 3 others); duplicates count once; a signature that does not verify, or by
someone the policy does not name, is a problem, not an approval.

:func:`unlock` needs a valid, approved, unexpired order for the hospital AND enough shares; the release
key exists only in memory, inside :class:`Unlocked`.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

from hakobune.custody import (
    CustodyPolicy,
    RuleStatus,
    ShareInput,
    load_policy,
    recover_release_key,
)
from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError, InputError
from hakobune.keys import RecipientPrivateKey, RecipientPublicKey, SigningKey, parse_key

FORMAT = "hakobune-release-order"
VERSION = 1
APPROVAL_CONTEXT = b"hakobune-release-approval/v1\n"
DEFAULT_EXPIRES = timedelta(hours=72)
MAX_EXPIRES = timedelta(days=90)

Status = Literal["approved", "pending", "expired", "invalid"]

_BODY_FIELDS = frozenset(
    {
        "id",
        "hospital",
        "scope",
        "purpose",
        "recipient",
        "recipient_key",
        "recipient_key_fingerprint",
        "created_at",
        "created_by",
        "expires_at",
        "policy_sha256",
        "release_key_fingerprint",
    }
)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, where: str = "time") -> datetime:
    """An ISO-8601 timestamp; naive ones are taken as UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{where}: not an ISO timestamp: {text!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_expires(text: str, now: datetime) -> datetime:
    """``72h``, ``3d``, ``90m`` (from ``now``) or an ISO timestamp; at most 90 days ahead."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        at = now + timedelta(**{unit: int(m.group(1))})
    else:
        try:
            at = parse_time(text, "--expires")
        except ConfigError:
            raise ConfigError(f"--expires {text!r}: expected e.g. 72h, 3d, 90m or an ISO timestamp") from None
    if at <= now:
        raise ConfigError(f"--expires {text!r}: the expiry must be in the future")
    if at - now > MAX_EXPIRES:
        raise ConfigError(f"--expires {text!r}: at most {MAX_EXPIRES.days} days")
    return at


# --- orders --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseOrder:
    """The signed part of an order.  ``body`` holds the document exactly as signed."""

    body: dict[str, Any] = field(repr=False)

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def hospital(self) -> str:
        return str(self.body["hospital"])

    @property
    def scope(self) -> Literal["all"] | tuple[str, ...]:
        s = self.body["scope"]
        return "all" if s == "all" else tuple(s)

    @property
    def purpose(self) -> str:
        return str(self.body["purpose"])

    @property
    def recipient_id(self) -> str:
        return str(self.body["recipient"]["id"])

    @property
    def recipient_name(self) -> str:
        return str(self.body["recipient"]["name"])

    @property
    def recipient_key(self) -> RecipientPublicKey:
        key = parse_key(self.body["recipient_key"], f"order {self.id}")
        assert isinstance(key, RecipientPublicKey)
        return key

    @property
    def created_at(self) -> datetime:
        return parse_time(self.body["created_at"])

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.body["expires_at"])

    @property
    def policy_sha256(self) -> str:
        return str(self.body["policy_sha256"])

    @property
    def release_key_fingerprint(self) -> str:
        return str(self.body["release_key_fingerprint"])

    def canonical(self) -> bytes:
        return orjson.dumps(self.body, option=orjson.OPT_SORT_KEYS)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def __repr__(self) -> str:
        return f"ReleaseOrder(id={self.id!r}, hospital={self.hospital!r})"


@dataclass(frozen=True)
class Approval:
    custodian: str
    key_fingerprint: str
    signed_at: str
    signature: bytes = field(repr=False)

    def doc(self) -> dict[str, Any]:
        return {
            "custodian": self.custodian,
            "key_fingerprint": self.key_fingerprint,
            "signed_at": self.signed_at,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }


def approval_message(order: ReleaseOrder, custodian: str, signed_at: str) -> bytes:
    """What a custodian signs."""
    return APPROVAL_CONTEXT + orjson.dumps(
        {"custodian": custodian, "order": order.body, "signed_at": signed_at}, option=orjson.OPT_SORT_KEYS
    )


@dataclass(frozen=True)
class OrderFile:
    order: ReleaseOrder
    approvals: tuple[Approval, ...] = ()

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "order": self.order.body,
            "approvals": [a.doc() for a in self.approvals],
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def create_order(
    policy: CustodyPolicy,
    *,
    scope: Literal["all"] | Sequence[str],
    purpose: str,
    recipient_id: str,
    recipient_name: str,
    recipient_key: RecipientPublicKey,
    expires_at: datetime,
    now: datetime,
    created_by: str = "",
) -> OrderFile:
    """A new, unapproved order under ``policy`` (for ``policy.hospital``)."""
    if scope != "all":
        patients = list(dict.fromkeys(p.strip() for p in scope if p.strip()))
        if not patients:
            raise ConfigError("scope: give 'all' or at least one patient id")
        scope_doc: str | list[str] = patients
    else:
        scope_doc = "all"
    if not purpose.strip():
        raise ConfigError("--purpose is required: say why the records are released")
    if not recipient_id.strip():
        raise ConfigError("--recipient is required (the receiving hospital's id)")
    if expires_at <= now:
        raise ConfigError("the order would already be expired")
    order_id = f"RO-{now.astimezone(UTC):%Y%m%d}-{secrets.token_hex(2)}"
    body = {
        "id": order_id,
        "hospital": policy.hospital,
        "scope": scope_doc,
        "purpose": purpose.strip(),
        "recipient": {"id": recipient_id.strip(), "name": (recipient_name or recipient_id).strip()},
        "recipient_key": recipient_key.text().strip(),
        "recipient_key_fingerprint": recipient_key.fingerprint,
        "created_at": _ts(now),
        "created_by": created_by,
        "expires_at": _ts(expires_at),
        "policy_sha256": policy.sha256,
        "release_key_fingerprint": policy.release_fingerprint,
    }
    return OrderFile(ReleaseOrder(body))


def _parse_order_file(data: bytes, where: str) -> OrderFile:
    def bad(reason: str) -> InputError:
        return InputError(where, f"not a valid release order ({reason})")

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise bad("unknown format or version")
    body = doc.get("order")
    if not isinstance(body, dict) or set(body) != _BODY_FIELDS:
        raise bad("wrong fields in the order")
    try:
        for k in _BODY_FIELDS - {"scope", "recipient"}:
            if not isinstance(body[k], str):
                raise bad(f"{k} is not text")
        scope = body["scope"]
        if scope != "all" and not (
            isinstance(scope, list) and scope and all(isinstance(p, str) and p for p in scope)
        ):
            raise bad("scope is neither 'all' nor a list of patient ids")
        r = body["recipient"]
        if not (
            isinstance(r, dict) and set(r) == {"id", "name"} and all(isinstance(v, str) for v in r.values())
        ):
            raise bad("recipient")
        order = ReleaseOrder(body)
        key = parse_key(body["recipient_key"], where)
        if not isinstance(key, RecipientPublicKey) or key.fingerprint != body["recipient_key_fingerprint"]:
            raise bad("recipient_key is not a recipient public key matching its fingerprint")
        _ = (order.created_at, order.expires_at)  # parse the timestamps now
        approvals = tuple(
            Approval(
                str(a["custodian"]),
                str(a["key_fingerprint"]),
                str(a["signed_at"]),
                base64.b64decode(a["signature"], validate=True),
            )
            for a in doc.get("approvals", [])
        )
    except (KeyError, TypeError, binascii.Error, ConfigError) as e:
        if isinstance(e, InputError):
            raise
        raise bad(f"malformed field {e}") from None
    return OrderFile(order, approvals)


def load_order(path: Path) -> OrderFile:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), "release order not found") from None
    except OSError as e:
        raise InputError(str(path), f"cannot read release order ({e.strerror})") from None
    return _parse_order_file(data, str(path))


def _write_atomic(path: Path, data: bytes, *, exclusive: bool) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ConfigError(f"{path}: already exists") from None
            except OSError:  # no hard links (e.g. a FAT USB stick)
                if path.exists():
                    raise ConfigError(f"{path}: already exists") from None
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_order(directory: Path, orders: OrderFile) -> Path:
    """Write a new order as ``DIRECTORY/<id>.json`` (never overwrites)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{orders.order.id}.json"
    _write_atomic(path, orders.to_bytes(), exclusive=True)
    return path


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize read-modify-write of orders in one folder (two custodians approving at once)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- approvals -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalCheck:
    """The approvals of an order under a policy."""

    approved_by: tuple[str, ...]  # custodian ids with a valid signature, once each
    problems: tuple[str, ...]  # signatures that do not count, and why
    rule: RuleStatus

    @property
    def satisfied(self) -> bool:
        return self.rule.satisfied


def check_policy_match(order: ReleaseOrder, policy: CustodyPolicy, where: str) -> None:
    """The order must be for the policy's hospital and made under this very policy."""
    if order.hospital != policy.hospital:
        raise InputError(
            where, f"release order {order.id} is for hospital {order.hospital}, not {policy.hospital}"
        )
    if order.policy_sha256 != policy.sha256 or order.release_key_fingerprint != policy.release_fingerprint:
        raise InputError(
            where,
            f"release order {order.id} was made under another custody policy "
            f"(policy {order.policy_sha256[:16]}…, this one {policy.sha256[:16]}…)",
        )


def approval_problem(order: ReleaseOrder, policy: CustodyPolicy, approval: Approval) -> str | None:
    """Why ``approval`` does not count (None if it is a valid signature of a custodian of ``policy``)."""
    c = policy.custodian(approval.custodian)
    if c is None:
        return f"approval by {approval.custodian!r}: not a custodian in the custody policy"
    message = approval_message(order, approval.custodian, approval.signed_at)
    if not c.verify_key.verify(approval.signature, message):
        return (
            f"approval by {approval.custodian}: signature does not verify (the order was changed after it "
            "was signed, or the signature is not this custodian's)"
        )
    return None


def check_approvals(orders: OrderFile, policy: CustodyPolicy) -> ApprovalCheck:
    """Verify every approval against the custodian's key in ``policy`` and evaluate the group rule."""
    good: list[str] = []
    problems: list[str] = []
    for a in orders.approvals:
        problem = approval_problem(orders.order, policy, a)
        if problem is not None:
            problems.append(problem)
        elif a.custodian not in good:
            good.append(a.custodian)
    return ApprovalCheck(tuple(good), tuple(problems), policy.rule_status(good))


def order_status(orders: OrderFile, policy: CustodyPolicy, now: datetime) -> tuple[Status, str]:
    """``approved`` / ``pending`` / ``expired`` / ``invalid`` and a one-line reason."""
    try:
        check_policy_match(orders.order, policy, orders.order.id)
    except InputError as e:
        return "invalid", e.reason
    check = check_approvals(orders, policy)
    if check.problems:
        return "invalid", check.problems[0]
    if now >= orders.order.expires_at:
        return "expired", f"expired at {_ts(orders.order.expires_at)}"
    if not check.satisfied:
        return "pending", check.rule.describe("approvals")
    return "approved", f"approved by {', '.join(check.approved_by)}"


def sign_approval(
    orders: OrderFile, policy: CustodyPolicy, key: SigningKey, *, custodian: str | None, now: datetime
) -> Approval:
    """A custodian's approval.  ``custodian`` may be omitted; the key then says who it is."""
    order = orders.order
    check_policy_match(order, policy, order.id)
    if now >= order.expires_at:
        raise InputError(order.id, f"release order {order.id} expired at {_ts(order.expires_at)}")
    owner = policy.custodian_by_key(key.public)
    if owner is None:
        raise InputError(
            order.id,
            f"key {key.public.fingerprint} is not a custodian key in the custody policy of {policy.hospital}",
        )
    if custodian is not None and custodian != owner.id:
        named = policy.custodian(custodian)
        if named is None:
            raise InputError(
                order.id, f"no custodian {custodian!r} in the custody policy of {policy.hospital}"
            )
        raise InputError(
            order.id, f"key {key.public.fingerprint} belongs to custodian {owner.id}, not {custodian}"
        )
    if owner.id in check_approvals(orders, policy).approved_by:
        raise InputError(order.id, f"custodian {owner.id} has already approved release order {order.id}")
    signed_at = _ts(now)
    return Approval(
        owner.id,
        key.public.fingerprint,
        signed_at,
        key.sign(approval_message(order, owner.id, signed_at)),
    )


def approve(
    path: Path, policy: CustodyPolicy, key: SigningKey, *, custodian: str | None, now: datetime
) -> tuple[OrderFile, Approval]:
    """Add a custodian's approval to the order file at ``path`` (locked, atomic)."""
    with _locked(path.parent):
        orders = load_order(path)
        try:
            approval = sign_approval(orders, policy, key, custodian=custodian, now=now)
        except InputError as e:
            raise InputError(str(path), e.reason) from None
        updated = OrderFile(orders.order, (*orders.approvals, approval))
        _write_atomic(path, updated.to_bytes(), exclusive=False)
    return updated, approval


def merge_approvals(path: Path, others: Sequence[Path], policy: CustodyPolicy) -> tuple[OrderFile, int]:
    """Copy valid approvals from other copies of the same order (custodians who approved elsewhere)
    into ``path``; the number added."""
    with _locked(path.parent):
        orders = load_order(path)
        have = set(check_approvals(orders, policy).approved_by)
        added: list[Approval] = []
        for other in others:
            copy = load_order(other)
            if copy.order.canonical() != orders.order.canonical():
                raise InputError(str(other), f"not the same release order as {orders.order.id}")
            for a in copy.approvals:
                if a.custodian in have:
                    continue
                if check_approvals(OrderFile(orders.order, (a,)), policy).approved_by:
                    added.append(a)
                    have.add(a.custodian)
        updated = OrderFile(orders.order, (*orders.approvals, *added))
        if added:
            _write_atomic(path, updated.to_bytes(), exclusive=False)
    return updated, len(added)


def validate_order(
    orders: OrderFile, policy: CustodyPolicy, *, hospital: str, now: datetime, where: str
) -> None:
    """Everything an unlock requires of the order; :class:`InputError` naming ``where`` otherwise."""
    order = orders.order
    if order.hospital != hospital:
        raise InputError(where, f"release order {order.id} is for hospital {order.hospital}, not {hospital}")
    if policy.hospital != hospital:
        raise InputError(where, f"the custody policy is for hospital {policy.hospital}, not {hospital}")
    check_policy_match(order, policy, where)
    check = check_approvals(orders, policy)
    if check.problems:
        raise InputError(where, check.problems[0])
    if now >= order.expires_at:
        raise InputError(where, f"release order {order.id} expired at {_ts(order.expires_at)}")
    if not check.satisfied:
        raise InputError(
            where, f"release order {order.id} is not approved: {check.rule.describe('approvals')}"
        )


@dataclass(frozen=True)
class OrderSummary:
    path: Path
    id: str
    hospital: str
    scope: str
    recipient: str
    expires_at: str
    approvals: tuple[str, ...]
    status: Status
    reason: str


def _looks_like_order(path: Path) -> bool:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def list_orders(directory: Path, policy: CustodyPolicy, now: datetime) -> list[OrderSummary]:
    """Every order file (``*.json`` that is an order) in ``directory`` with its status."""
    out: list[OrderSummary] = []
    if not directory.is_dir():
        raise InputError(str(directory), "not a folder")
    for path in sorted(directory.glob("*.json")):
        try:
            orders = load_order(path)
        except InputError as e:
            if not _looks_like_order(path):
                continue
            out.append(OrderSummary(path, path.stem, "", "", "", "", (), "invalid", e.reason))
            continue
        status, reason = order_status(orders, policy, now)
        o = orders.order
        out.append(
            OrderSummary(
                path,
                o.id,
                o.hospital,
                "all" if o.scope == "all" else f"{len(o.scope)} patients",
                f"{o.recipient_name} ({o.recipient_id})",
                _ts(o.expires_at),
                check_approvals(orders, policy).approved_by if status != "invalid" else (),
                status,
                reason,
            )
        )
    return out


# --- unlock --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unlocked:
    """An unlocked release: the hospital's release private key (in memory only), the order that allows
    it and the policy.  Its repr names fingerprints, never key material."""

    key: RecipientPrivateKey = field(repr=False)
    order: ReleaseOrder
    policy: CustodyPolicy = field(repr=False)
    approved_by: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Unlocked(order={self.order.id!r}, hospital={self.order.hospital!r}, "
            f"release_key={self.policy.release_fingerprint}, approved_by={self.approved_by!r})"
        )

    __str__ = __repr__


def unlock(
    order_path: Path,
    policy_path: Path,
    shares: Sequence[str | ShareInput],
    *,
    hospital: str,
    now: datetime,
) -> Unlocked:
    """Check the order (for ``hospital``, made under this policy, every approval verifies, the rule is met,
    not expired), then rebuild the release key from ``shares`` and check it against the policy."""
    policy = load_policy(policy_path)
    orders = load_order(order_path)
    validate_order(orders, policy, hospital=hospital, now=now, where=str(order_path))
    key = recover_release_key(policy, shares)
    return Unlocked(key, orders.order, policy, check_approvals(orders, policy).approved_by)

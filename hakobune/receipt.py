"""Signed receipts: the center's statement that it verified and stored a changeset.  The agent deletes an
outbox item only after it has fetched a receipt for it and checked it against the center's pinned key.

A receipt file is canonical JSON ``{"receipt": {...}, "signature": "<base64>"}``; the Ed25519 signature
covers the canonical JSON of the inner object (keys sorted, no whitespace).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from hakobune.errors import InputError
from hakobune.keys import SigningKey, VerifyKey

FORMAT = "hakobune-receipt"


@dataclass(frozen=True)
class Receipt:
    hospital: str
    stream: str
    sequence: int
    changeset: str  # the changeset hash (header hash)
    size: int
    received_at: str
    center: str  # fingerprint of the signing key
    format: str = FORMAT
    version: int = 1

    def body(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)

    def sign(self, key: SigningKey) -> bytes:
        signature = base64.b64encode(key.sign(self.body())).decode("ascii")
        return orjson.dumps({"receipt": asdict(self), "signature": signature}, option=orjson.OPT_SORT_KEYS)


def parse_receipt(data: bytes, key: VerifyKey, where: str) -> Receipt:
    """Check a receipt's signature against the center's key and return it."""
    try:
        doc = orjson.loads(data)
        inner: dict[str, Any] = doc["receipt"]
        signature = base64.b64decode(doc["signature"], validate=True)
        receipt = Receipt(**inner)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
        raise InputError(where, "not a Hakobune receipt") from None
    if receipt.format != FORMAT or receipt.version != 1:
        raise InputError(where, "not a Hakobune receipt (unknown format or version)")
    if not key.verify(signature, receipt.body()):
        raise InputError(where, f"receipt signature does not verify with the center key {key.fingerprint}")
    return receipt


def matches(receipt: Receipt, *, hospital: str, stream: str, sequence: int, changeset: str) -> bool:
    """True if ``receipt`` is for exactly this changeset."""
    return (
        receipt.hospital == hospital
        and receipt.stream == stream
        and receipt.sequence == sequence
        and hmac.compare_digest(receipt.changeset, changeset)
    )

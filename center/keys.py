"""The center's own key: Ed25519, signs receipts (and, later, media manifests and audit heads).  The
center holds no key that decrypts clinical data: it never sees a release or analysis private key."""

from __future__ import annotations

from center.layout import CenterLayout
from hakobune.keys import SigningKey, VerifyKey, load_signing_key, load_verify_key, write_key


def create_center_key(layout: CenterLayout) -> VerifyKey:
    key = SigningKey.generate()
    layout.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_key(layout.signing_key, key)
    write_key(layout.public_key, key.public)
    return key.public


def load_center_signing_key(layout: CenterLayout) -> SigningKey:
    return load_signing_key(layout.signing_key)


def load_center_public_key(layout: CenterLayout) -> VerifyKey:
    return load_verify_key(layout.public_key)

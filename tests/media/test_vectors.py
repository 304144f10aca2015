"""The worked example in docs/media.md, recomputed from its inputs: a browser or another implementation
can check itself against the page, and the page cannot drift from the code."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import orjson
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hakobune.keys import SigningKey
from media.crypto import PassphraseWrap, normalize_passphrase, subkey, unwrap_passphrase
from media.manifest import SIGN_CONTEXT, sign
from media.stream import decrypt_chunks, encrypt_all, segment_nonce, stream_aad

DOC = Path(__file__).resolve().parents[2] / "docs" / "media.md"


def _vector() -> dict[str, Any]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Test vector", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None, "docs/media.md has no JSON test vector"
    doc: dict[str, Any] = orjson.loads(block.group(1))
    return doc


def test_the_stream_vector_in_the_docs() -> None:
    v = _vector()
    disk_key = bytes.fromhex(v["disk_key"])
    name, seg = v["logical_name"], v["segment_size"]
    key = subkey(disk_key, v["disk_id"], f"file {name}")
    assert key.hex() == v["file_key"]
    assert stream_aad(name).decode() == v["aad"]
    n = len(v["segments"])
    assert [segment_nonce(i, i == n - 1).hex() for i in range(n)] == v["nonces"]
    # the sealed stream is the plaintext's zstd frames (one here: the plaintext is less than a block)
    plaintext, compressed = v["plaintext"].encode(), bytes.fromhex(v["compressed"])
    assert zstandard.ZstdDecompressor().decompress(compressed) == plaintext
    assert zstandard.frame_content_size(compressed) == len(plaintext)
    sealed = encrypt_all(key, name, compressed, seg)
    assert sealed.hex() == "".join(v["segments"])
    # each segment is plain AES-GCM under its nonce: what a browser does with WebCrypto
    last = AESGCM(key).decrypt(
        bytes.fromhex(v["nonces"][-1]), bytes.fromhex(v["segments"][-1]), stream_aad(name)
    )
    assert last == compressed[(n - 1) * seg :]
    assert b"".join(decrypt_chunks(key, name, [sealed], seg)) == compressed


def test_the_passphrase_vector_in_the_docs() -> None:
    v = _vector()
    assert normalize_passphrase(v["passphrase_typed"]).decode() == v["passphrase_normalized"]
    wrap = PassphraseWrap(
        v["pbkdf2_iterations"],
        bytes.fromhex(v["salt"]),
        bytes.fromhex(v["wrap_nonce"]),
        bytes.fromhex(v["wrapped"]),
    )
    assert unwrap_passphrase(wrap, v["disk_id"], v["passphrase_typed"]).hex() == v["disk_key"]
    kek = bytes.fromhex(v["kek"])
    assert AESGCM(kek).decrypt(
        wrap.nonce, wrap.wrapped, f"hakobune-media-v1 passphrase {v['disk_id']}".encode()
    ) == (bytes.fromhex(v["disk_key"]))


def test_the_signature_vector_in_the_docs() -> None:
    v = _vector()
    key = SigningKey(bytes.fromhex(v["signing_seed"]))
    assert key.public.fingerprint == v["signer_fingerprint"]
    manifest = v["manifest"].encode()
    assert sign(manifest, key).decode() == v["manifest_sig"]
    sig = orjson.loads(v["manifest_sig"])

    assert key.public.verify(base64.b64decode(sig["signature"]), SIGN_CONTEXT + manifest)

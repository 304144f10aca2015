"""Regenerate the sealed-changeset test vectors in this folder (docs/format.md quotes them).

    .venv/bin/python tests/vectors/generate.py

The keys are fixed test keys, published here on purpose: never use them for anything else.  HPKE and
AES-GCM nonces are random, so a regenerated file differs byte for byte from the committed one; the tests
check the committed file, which stays valid forever (that is the point of a vector).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hakobune.keys import RecipientPrivateKey, SigningKey
from hakobune.sealed import ChangesetWriter, Epoch

HERE = Path(__file__).parent
SIGNING_SEED = hashlib.sha256(b"hakobune test vector agent key").digest()
RELEASE = {
    "mlkem768-x25519": hashlib.sha512(b"hakobune test vector release key").digest()
    + hashlib.sha256(b"hakobune test vector x25519").digest(),
    "cryptrec-p256": hashlib.sha256(b"hakobune test vector p256").digest(),
}
TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")
KID = bytes.fromhex("0f0e0d0c0b0a09080706050403020100")
DATA_KEY = hashlib.sha256(b"hakobune test vector patient key").digest()
OPS = [
    b'{"put":{"kind":"allergy","v":1,"r":{"key":{"patient_id":"0000000001","care_date":"20250401",'
    b'"data_type":"ADT-00","order_no":"000000000000000","item":"1"},"allergen":{"code":"J7FH",'
    b'"display":"\xe3\x83\x9a\xe3\x83\x8b\xe3\x82\xb7\xe3\x83\xaa\xe3\x83\xb3","system":"99XYZ"},'
    b'"category":"DA","severity":"SV","reaction":"","identified":""}}}\n',
    b'{"del":["0000000001","20250301","OMP-01","000000000000123","1"]}\n',
]
ERASED = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def main() -> None:
    signer = SigningKey(SIGNING_SEED)
    for suite, raw in RELEASE.items():
        private = RecipientPrivateKey(suite, raw)  # type: ignore[arg-type]
        epoch = Epoch.create(private.public, "1310000001", "clinical")
        out = HERE / f"changeset-{suite}.hkcs"
        writer = ChangesetWriter(
            out,
            hospital="1310000001",
            stream="clinical",
            sequence=2,
            prev="ab" * 32,
            kind="incremental",
            epoch=epoch,
            recipient=private.public,
            signer=signer,
            created_at="2026-11-21T02:00:00Z",
        )
        writer.add(TOKEN, KID, DATA_KEY, OPS)
        writer.tombstone(ERASED)
        header = writer.finish()
        meta = {
            "file": out.name,
            "suite": suite,
            "signing_public": signer.public.raw.hex(),
            "release_private": private.raw.hex(),
            "release_public_sha256": hashlib.sha256(private.public.raw).hexdigest(),
            "header": json.loads(header.to_json()),
            "changeset_hash": header.hash,
            "epoch_key": epoch.key.hex(),
            "data_key": DATA_KEY.hex(),
            "token": TOKEN.hex(),
            "kid": KID.hex(),
            "ops": [op.decode() for op in OPS],
            "file_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "size": out.stat().st_size,
        }
        (HERE / f"changeset-{suite}.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )


if __name__ == "__main__":
    main()

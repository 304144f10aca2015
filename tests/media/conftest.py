"""A real released hospital for the disk tests: synthetic hospital → agent sync → center ingest →
ceremony (director alone) → approved order for a recipient whose private key the tests hold → unlock into
a restore folder.  Built once for tests/media (small: 24 patients)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.commands.sync import run_once
from center.catalog import Catalog
from center.ingest import ingest_all
from center.layout import CenterLayout
from hakobune.custody import ceremony, load_policy, parse_group_spec
from hakobune.keys import RecipientPrivateKey, SigningKey, load_signing_key, write_key
from hakobune.provision import provision_local
from hakobune.synth import SSMIX2_DIR, generate
from media.volumes import AlignedWriter
from restore.commands.restore import gather_shares, run_unlock
from restore.orders import approve, create_order, write_order

HOSPITAL = "1310000009"
PASSPHRASES = {"director": "director-pass"}
#: A lower PBKDF2 count keeps the tests quick; the format accepts it (>= 100k), the CLI always uses 600k.
TEST_ITERATIONS = 100_000


def fail_disk_writes_after(monkeypatch: pytest.MonkeyPatch, good: int) -> Callable[[], int]:
    """Make the disk refuse (ENOSPC) every direct write after the first ``good`` ones; returns how many
    writes were attempted so far."""
    real = AlignedWriter._write_all
    calls = 0

    def full_disk(self: AlignedWriter, views: list[memoryview], offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls > good:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, views, offset)

    monkeypatch.setattr(AlignedWriter, "_write_all", full_disk)
    return lambda: calls


def viewer_available() -> bool:
    try:
        import media.viewer  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Released:
    root: Path
    restore: Path
    order: Path
    policy: Path
    center: Path
    center_key: Path  # the center's private signing key file
    center_pub: Path
    recipient: Path  # the recipient hospital's private key file
    recipient_pub: Path
    audit: Path

    @property
    def signing_key(self) -> SigningKey:
        return load_signing_key(self.center_key)

    def new_order(self, *, approved: bool = True, hours: float = 72, recipient: Path | None = None) -> Path:
        """Another order for the same hospital (e.g. never approved, or for another recipient)."""
        policy = load_policy(self.policy)
        now = datetime.now(UTC)
        key = RecipientPrivateKey.generate("cryptrec-p256").public if recipient is None else None
        if recipient is not None:
            from hakobune.keys import load_recipient_public

            key = load_recipient_public(recipient)
        assert key is not None
        of = create_order(
            policy,
            scope="all",
            purpose="media test",
            recipient_id="9990000099",
            recipient_name="災害拠点病院",
            recipient_key=key,
            expires_at=now + timedelta(hours=hours),
            now=now,
        )
        path = write_order(self.root / "orders", of)
        if approved:
            signer = load_signing_key(self.policy.parent / "custodians" / "director.key")
            approve(path, policy, signer, custodian="director", now=now)
        return path


@pytest.fixture(scope="package")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    root = tmp_path_factory.mktemp("media-world")
    generate(root / "hospital", 24, 4, seed=3, workers=1)
    cer = root / "ceremony"
    ceremony(HOSPITAL, cer, [parse_group_spec("director:1/1:director=院長")], PASSPHRASES, scrypt_log_n=4)
    local = provision_local(
        hospital=HOSPITAL,
        ssmix2=root / "hospital" / SSMIX2_DIR,
        center_home=root / "center",
        agent_home=root / "agent",
        release=load_policy(cer / "custody.json").release_key,
    )
    assert not run_once(local.agent.home)["ship"]["errors"]
    with Catalog.open(local.center.catalog_url) as catalog:
        assert not ingest_all(local.center, catalog).rejected
    recipient = RecipientPrivateKey.generate()  # the default suite, ML-KEM-768 + X25519
    write_key(root / "recipient.key", recipient)
    write_key(root / "recipient.pub", recipient.public)
    w = Released(
        root=root,
        restore=root / "restore",
        order=Path(),
        policy=cer / "custody.json",
        center=local.center.layout.home,
        center_key=CenterLayout(local.center.layout.home).signing_key,
        center_pub=CenterLayout(local.center.layout.home).public_key,
        recipient=root / "recipient.key",
        recipient_pub=root / "recipient.pub",
        audit=root / "audit",
    )
    w.order = w.new_order(recipient=w.recipient_pub)
    share = next((cer / "shares").glob("*-director.share"))
    run_unlock(
        order=w.order,
        policy=w.policy,
        shares=gather_shares([share], PASSPHRASES, HOSPITAL, interactive=False),
        hospital=HOSPITAL,
        out=w.restore,
        audit=w.audit,
        actor="test",
        center=w.center,
        show_progress=False,
        workers=1,
    )
    yield w

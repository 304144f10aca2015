"""The whole backup path through a real OpenSSH sshd on 127.0.0.1 with the generated configuration:
agent sync → SFTP upload into the chrooted, append-only inbox → ingest → signed receipt → agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.status import agent_status
from agent.commands.sync import run_once
from agent.config import load_config
from agent.home import open_state_db
from center.catalog import Catalog
from center.ingest import ingest_all
from hakobune.keys import RecipientPrivateKey
from hakobune.naming import changeset_name
from hakobune.provision import provision_local
from hakobune.synth import SSMIX2_DIR, advance, generate
from restore.replay import replay
from tests.pipeline import decoded, expected_state
from tests.sshd import SSHD_MARKS, running_sshd, sshd_home, unique_hospital

pytestmark = SSHD_MARKS


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, object]]:
    generate(tmp_path / "hospital", 25, 3, seed=5, workers=1)
    ssmix2 = tmp_path / "hospital" / SSMIX2_DIR
    release = RecipientPrivateKey.generate()
    hospital = unique_hospital("H")
    with sshd_home() as layout:
        local = provision_local(
            hospital=hospital,
            ssmix2=ssmix2,
            center_home=layout.home,
            agent_home=tmp_path / "agent",
            release=release.public,
        )
        ssh_line = local.agent.ssh_key.with_name(local.agent.ssh_key.name + ".pub").read_text().strip()
        with running_sshd(layout, {hospital: ssh_line}) as server:
            assert local.agent.known_hosts is not None
            server.write_known_hosts(local.agent.known_hosts)
            toml = local.agent.home / "agent.toml"
            text = toml.read_text()
            toml.write_text(
                text.replace(f'url = "{layout.inbox(hospital).as_uri()}"', f'url = "{server.url(hospital)}"')
            )
            assert load_config(local.agent.home).center_url.startswith("sftp://")
            yield {
                "hospital": hospital,
                "local": local,
                "server": server,
                "release": release,
                "ssmix2": ssmix2,
            }


def test_agent_to_sshd_to_ingest_to_receipt_and_back(world: dict[str, object]) -> None:
    hospital, local, release = world["hospital"], world["local"], world["release"]
    assert isinstance(hospital, str) and isinstance(release, RecipientPrivateKey)
    center, agent = local.center, local.agent  # type: ignore[attr-defined]
    ssmix2 = world["ssmix2"]
    assert isinstance(ssmix2, Path)

    doc = run_once(agent.home)
    assert doc["ship"]["uploaded"] == [changeset_name("clinical", 1)]
    incoming = center.layout.incoming(hospital) / changeset_name("clinical", 1)
    assert incoming.stat().st_uid != 0  # written by the hospital's own SFTP account
    with Catalog.open(center.catalog_url) as catalog:
        report = ingest_all(center, catalog)
    assert report.stored == [changeset_name("clinical", 1)] and not incoming.exists()

    advance(ssmix2.parent, 1, workers=1, change_rate=0.3)
    doc = run_once(agent.home)  # fetches receipt 1 over SFTP, uploads changeset 2
    assert doc["ship"]["acked"] == [changeset_name("clinical", 1)]
    assert doc["ship"]["uploaded"] == [changeset_name("clinical", 2)]
    with Catalog.open(center.catalog_url) as catalog:
        assert ingest_all(center, catalog).stored == [changeset_name("clinical", 2)]
    doc = run_once(agent.home)
    assert doc["sync"]["status"] == "nothing"
    assert doc["ship"]["acked"] == [changeset_name("clinical", 2)]
    assert not list(agent.outbox.iterdir())
    with open_state_db(agent.home) as db:
        assert agent_status(db)["streams"][0]["acked_sequence"] == 2

    stored = sorted(center.layout.store(hospital, "clinical").glob("*.hkcs"))
    from hakobune.keys import load_signing_key

    state = replay(stored, release, load_signing_key(agent.signing_key).public, hospital=hospital)
    assert decoded(state.records) == decoded(expected_state(ssmix2))

"""Provision a hospital and a center on one machine (the drill, tests, a demo): the same steps the runbooks
give operators — center init, agent init, enroll, exchange of public keys — through the same APIs, with a
``file://`` inbox instead of sshd.  Idempotent: what exists is kept.

With ``analysis`` (the analysis center's public key) and ``linkage_key`` (the network's linkage key) the
agent's research stream is turned on as ``hakobune agent research-keys`` does; without them it stays off."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig, config_path, load_config
from agent.research import install_research_key_values
from agent.setup import init_agent
from center.catalog import Catalog
from center.config import CenterConfig, load_center_config
from center.enroll import enroll, init_center
from hakobune.keys import RecipientPublicKey, load_signing_key, write_key


@dataclass(frozen=True)
class LocalWorld:
    center: CenterConfig
    agent: AgentConfig


def provision_local(
    *,
    hospital: str,
    ssmix2: Path,
    center_home: Path,
    agent_home: Path,
    release: RecipientPublicKey,
    journal: Path | None = None,
    catalog_url: str | None = None,
    analysis: RecipientPublicKey | None = None,
    linkage_key: bytes | None = None,
) -> LocalWorld:
    if not (center_home / "center.toml").exists():
        init_center(center_home, catalog_url)
    center = load_center_config(center_home)
    inbox = center.layout.inbox(hospital)
    if not config_path(agent_home).exists():
        cfg, _ = init_agent(
            agent_home,
            hospital=hospital,
            ssmix2=ssmix2,
            center_url=inbox.resolve().as_uri(),
            journal=journal,
            suite=release.suite,
        )
        write_key(cfg.release_key, release)
        assert cfg.center_key is not None
        shutil.copyfile(center.layout.public_key, cfg.center_key)
    if analysis is not None and linkage_key is not None:
        install_research_key_values(agent_home, analysis=analysis, linkage=linkage_key)
    cfg = load_config(agent_home)
    with Catalog.open(center.catalog_url) as catalog:
        if catalog.get_hospital(hospital) is None:
            ssh_line = cfg.ssh_key.with_name(cfg.ssh_key.name + ".pub").read_text(encoding="ascii").strip()
            enroll(center, catalog, hospital, hospital, load_signing_key(cfg.signing_key).public, ssh_line)
    return LocalWorld(center, cfg)

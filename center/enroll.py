"""Setting a center up and enrolling hospitals."""

from __future__ import annotations

import os
from pathlib import Path

from center.catalog import Catalog, HospitalRow
from center.config import CenterConfig, load_center_config, render_center_config
from center.keys import create_center_key
from center.layout import CenterLayout
from hakobune.errors import ConfigError, InputError
from hakobune.keys import VerifyKey, parse_key


def init_center(home: Path, catalog_url: str | None = None) -> CenterConfig:
    """Create a center home: configuration, receipt-signing key, catalog (migrated), folders."""
    layout = CenterLayout(Path(home))
    if layout.config.exists():
        raise ConfigError(f"{layout.config}: a center is already set up here")
    layout.home.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.home, 0o755)  # inbox chroots live below: the path must not be group/world writable
    layout.config.write_text(render_center_config(catalog_url), encoding="utf-8")
    create_center_key(layout)
    for folder in ("inbox", "store", "rejected"):
        (layout.home / folder).mkdir(mode=0o755, exist_ok=True)
    cfg = load_center_config(layout.home)
    Catalog.open(cfg.catalog_url).close()
    return cfg


def parse_agent_key(text: str, where: str) -> VerifyKey:
    """The agent's public signing key as ``agent init`` printed it (``ed25519:public:...``), or a path."""
    candidate = Path(text)
    if not text.startswith("ed25519:") and candidate.is_file():
        where, text = str(candidate), candidate.read_text(encoding="ascii")
    key = parse_key(text, where)
    if not isinstance(key, VerifyKey):
        raise InputError(where, "not an Ed25519 public key")
    return key


def read_ssh_key(text: str) -> str:
    """An OpenSSH public key line, given as the line or as a path to a ``.pub`` file."""
    candidate = Path(text)
    if not text.startswith(("ssh-", "ecdsa-")) and candidate.is_file():
        text = candidate.read_text(encoding="ascii")
    return text.strip()


def enroll(
    cfg: CenterConfig, catalog: Catalog, hospital: str, name: str, agent_key: VerifyKey, ssh_key: str
) -> HospitalRow:
    """Register a hospital and create its inbox folders.  The SFTP account itself is made when the sshd
    configuration is generated (``center sshd``), which needs root."""
    row = catalog.add_hospital(hospital, name, agent_key.raw, ssh_key)
    layout = cfg.layout
    for folder in (layout.incoming(hospital), layout.receipts(hospital)):
        folder.mkdir(parents=True, exist_ok=True)
    return row

"""The agent's keys under ``HOME/keys``: its Ed25519 signing key, its SSH client key, the token key that
turns patient IDs into pseudonymous tokens, and two public keys it is given: the hospital's release key
(what clinical changesets are sealed to) and the center's receipt key.  Private files are 0600.

With the research stream on, two more: the analysis center's public key (research changesets are sealed
to it) and the network's linkage key (:mod:`agent.linkage`).  The research pseudonyms' secret is derived
from the token key (:func:`agent.deidentify.derive_research_secret`), so it needs no file of its own."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.config import AgentConfig, ResearchConfig
from agent.deidentify import Pseudonymizer, derive_research_secret
from agent.linkage import load_linkage_key
from hakobune.errors import ConfigError
from hakobune.keys import (
    PRIVATE_FILE_MODE,
    RecipientPublicKey,
    SigningKey,
    VerifyKey,
    load_recipient_public,
    load_secret_bytes,
    load_signing_key,
    load_verify_key,
    write_key,
    write_key_bytes,
)

TOKEN_KEY_SIZE = 32


@dataclass(frozen=True, repr=False)
class ResearchKeys:
    """What the research stream needs: the key it is sealed to and the hospital's keyed hashes."""

    analysis: RecipientPublicKey
    pseudonymizer: Pseudonymizer

    @classmethod
    def load(cls, research: ResearchConfig, token_key: bytes) -> ResearchKeys:
        return cls(
            load_recipient_public(research.analysis_key),
            Pseudonymizer(derive_research_secret(token_key), load_linkage_key(research.linkage_key)),
        )


@dataclass(frozen=True, repr=False)
class AgentKeys:
    signing: SigningKey
    token: bytes
    release: RecipientPublicKey
    #: None: the research stream is off.
    research: ResearchKeys | None = None

    @classmethod
    def load(cls, cfg: AgentConfig) -> AgentKeys:
        token = load_token_key(cfg.token_key)
        return cls(
            load_signing_key(cfg.signing_key),
            token,
            load_recipient_public(cfg.release_key),
            ResearchKeys.load(cfg.research, token) if cfg.research is not None else None,
        )


def load_center_key(cfg: AgentConfig) -> VerifyKey:
    if cfg.center_key is None:
        raise ConfigError("center.public_key is not configured: receipts cannot be checked")
    return load_verify_key(cfg.center_key)


def write_private_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_key_bytes(path, data, PRIVATE_FILE_MODE)


def load_token_key(path: Path) -> bytes:
    return load_secret_bytes(path, TOKEN_KEY_SIZE, "token key")


@dataclass(frozen=True)
class CreatedKeys:
    signing_public: str
    ssh_public: str


def create_agent_keys(cfg: AgentConfig) -> CreatedKeys:
    """Create the agent's own keys (signing, SSH, token).  Refuses to overwrite any of them."""
    for path in (cfg.signing_key, cfg.ssh_key, cfg.token_key):
        if path.exists():
            raise ConfigError(f"{path}: already exists; refusing to overwrite a key")
    signing = SigningKey.generate()
    write_key(cfg.signing_key, signing)
    write_key(cfg.signing_key.with_suffix(".pub"), signing.public)
    ssh = ed25519.Ed25519PrivateKey.generate()
    write_private_bytes(
        cfg.ssh_key,
        ssh.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    ssh_public = ssh.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    ssh_line = ssh_public.decode("ascii") + f" hakobune-agent-{cfg.hospital}\n"
    cfg.ssh_key.with_name(cfg.ssh_key.name + ".pub").write_text(ssh_line, encoding="ascii")
    write_private_bytes(cfg.token_key, base64.b64encode(os.urandom(TOKEN_KEY_SIZE)) + b"\n")
    return CreatedKeys(signing.public.text().strip(), ssh_line.strip())


def agent_public_key(cfg: AgentConfig) -> VerifyKey:
    return load_signing_key(cfg.signing_key).public

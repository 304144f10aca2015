"""Setting up an agent home: what ``hakobune agent init`` does, and what the drill and tests reuse."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, config_path, load_config, render_config
from agent.home import open_state_db
from agent.keys import CreatedKeys, create_agent_keys
from hakobune.errors import ConfigError
from hakobune.keys import SuiteName


def init_agent(
    home: Path,
    *,
    hospital: str,
    ssmix2: Path,
    center_url: str,
    journal: Path | None = None,
    suite: SuiteName = "mlkem768-x25519",
) -> tuple[AgentConfig, CreatedKeys]:
    """Create ``home`` (0700) with ``agent.toml``, the agent's own keys and its state database.  The keys
    it is *given* (release, center, known_hosts) are installed by the caller.  Refuses an existing setup."""
    if config_path(home).exists():
        raise ConfigError(f"{config_path(home)}: the agent is already set up here")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = render_config(
        hospital=hospital,
        ssmix2=ssmix2.resolve(),
        center_url=center_url,
        journal=journal.resolve() if journal else None,
        suite=suite,
    )
    config_path(home).write_text(text, encoding="utf-8")
    cfg = load_config(home)
    created = create_agent_keys(cfg)
    open_state_db(home).close()
    return cfg, created

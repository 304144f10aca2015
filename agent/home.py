"""The agent's home directory: where its state (``state.db``), keys and outbox live.  Every ``hakobune agent``
command takes ``--home`` (or ``HAKOBUNE_AGENT_HOME``) through :func:`home_option`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agent.state import StateDB
from hakobune.errors import ConfigError

HOME_ENVVAR = "HAKOBUNE_AGENT_HOME"
DEFAULT_HOME = Path("hakobune-agent")
STATE_DB_NAME = "state.db"


def state_db_path(home: Path) -> Path:
    """Where the agent's state database lives under ``home``."""
    return Path(home) / STATE_DB_NAME


def home_option() -> Any:
    """A typer option for ``--home DIR`` (envvar ``HAKOBUNE_AGENT_HOME``, default ``./hakobune-agent``).

    Use as a parameter default: ``home: Path = home_option()``."""
    return typer.Option(
        DEFAULT_HOME,
        "--home",
        envvar=HOME_ENVVAR,
        file_okay=False,
        dir_okay=True,
        help=f"Agent home directory (state.db, keys, outbox). Env: {HOME_ENVVAR}.",
    )


def open_state_db(home: Path, *, create: bool = True) -> StateDB:
    """Open ``home``'s state database.  With ``create=False`` a missing database is a :class:`ConfigError`
    rather than a new empty one: read-only commands must not report "nothing" for a mistyped ``--home``."""
    path = state_db_path(home)
    if not create and not path.exists():
        raise ConfigError(f"{path}: no agent state here; check --home or {HOME_ENVVAR}")
    return StateDB.open(path)

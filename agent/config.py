"""The agent's configuration, ``HOME/agent.toml`` (example: ``config/agent.toml``).

Relative paths in the file are relative to the agent home.  Every value is checked when the file is
loaded; a bad value is one :class:`ConfigError` naming the file, the key and what is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakobune.errors import ConfigError
from hakobune.keys import SuiteName, check_suite
from hakobune.naming import check_hospital_id
from hakobune.tomlfile import read_toml, table

CONFIG_NAME = "agent.toml"
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class GuardConfig:
    """When a day looks like an attack or a broken export, hold it for an operator (DESIGN §6).  Shares
    are of the files the agent knew before the day; the guard only judges trees of ``min_files`` or more."""

    max_removed_share: float = 0.05
    max_rewritten_share: float = 0.01
    max_unreadable_share: float = 0.05
    min_files: int = 200


@dataclass(frozen=True)
class ResearchConfig:
    """The research stream (DESIGN §10): on when both keys are configured in ``[research]``.
    ``analysis_key``: the analysis center's public key (research changesets are sealed to it);
    ``linkage_key``: the network's linkage key (0600; never given to the analysis center)."""

    analysis_key: Path
    linkage_key: Path


@dataclass(frozen=True)
class AgentConfig:
    home: Path
    hospital: str
    ssmix2: Path
    center_url: str
    journal: Path | None = None
    known_hosts: Path | None = None
    center_key: Path | None = None
    signing_key: Path = Path("keys/agent.key")
    ssh_key: Path = Path("keys/ssh_ed25519")
    token_key: Path = Path("keys/token.key")
    release_key: Path = Path("keys/release.pub")
    suite: SuiteName = "mlkem768-x25519"
    bwlimit: int | None = None
    daily_at: str = "02:00"
    watch: bool = False
    polling: bool = False
    rebaseline_days: int = 90
    workers: int = 0
    guard: GuardConfig = field(default_factory=GuardConfig)
    #: None: the research stream is off.
    research: ResearchConfig | None = None

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"


def config_path(home: Path) -> Path:
    return Path(home) / CONFIG_NAME


def load_config(home: Path) -> AgentConfig:
    """Read and check ``HOME/agent.toml``."""
    home = Path(home)
    path = config_path(home)
    doc = read_toml(path, "run 'hakobune agent init' first")
    return parse_config(doc, home, str(path))


def parse_config(doc: dict[str, Any], home: Path, where: str) -> AgentConfig:
    def get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{where}: {key} must be {getattr(kind, '__name__', kind)}")
        return value

    def path(value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else home / p

    def required(table: dict[str, Any], key: str) -> str:
        value = get(table, key, str)
        if not value:
            raise ConfigError(f"{where}: {key} is required")
        return str(value)

    center = table(doc, "center", where)
    keys = table(doc, "keys", where)
    schedule = table(doc, "schedule", where)
    sync = table(doc, "sync", where)
    guard = table(doc, "guard", where)
    research_table = table(doc, "research", where)
    try:
        hospital = check_hospital_id(required(doc, "hospital"))
        suite = check_suite(get(keys, "suite", str, "mlkem768-x25519"))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    daily_at = get(schedule, "daily", str, "02:00")
    if not _HHMM.fullmatch(daily_at):
        raise ConfigError(f"{where}: schedule.daily must be HH:MM (24 h), not {daily_at!r}")
    shares = {}
    for key, default in (
        ("max_removed_share", 0.05),
        ("max_rewritten_share", 0.01),
        ("max_unreadable_share", 0.05),
    ):
        value = float(get(guard, key, (int, float), default))
        if not 0 <= value <= 1:
            raise ConfigError(f"{where}: guard.{key} must be between 0 and 1")
        shares[key] = value
    bwlimit = get(center, "bwlimit", int, 0)
    rebaseline_days = get(sync, "rebaseline_days", int, 90)
    if bwlimit < 0 or rebaseline_days < 0:
        raise ConfigError(f"{where}: center.bwlimit and sync.rebaseline_days must not be negative")
    analysis_key = path(get(research_table, "analysis_key", str))
    linkage_key = path(get(research_table, "linkage_key", str))
    if (analysis_key is None) != (linkage_key is None):
        raise ConfigError(
            f"{where}: research.analysis_key and research.linkage_key go together "
            "(set both to turn the research stream on, or neither)"
        )
    research = ResearchConfig(analysis_key, linkage_key) if analysis_key and linkage_key else None
    return AgentConfig(
        home=home,
        hospital=hospital,
        ssmix2=path(required(doc, "ssmix2")) or home,
        center_url=required(center, "url"),
        journal=path(get(doc, "journal", str)),
        known_hosts=path(get(center, "known_hosts", str, "keys/known_hosts")),
        center_key=path(get(center, "public_key", str, "keys/center.pub")),
        signing_key=path(get(keys, "signing", str, "keys/agent.key")) or home,
        ssh_key=path(get(keys, "ssh", str, "keys/ssh_ed25519")) or home,
        token_key=path(get(keys, "token", str, "keys/token.key")) or home,
        release_key=path(get(keys, "release", str, "keys/release.pub")) or home,
        suite=suite,
        bwlimit=bwlimit or None,
        daily_at=daily_at,
        watch=bool(get(schedule, "watch", bool, False)),
        polling=bool(get(schedule, "polling", bool, False)),
        rebaseline_days=rebaseline_days,
        workers=get(sync, "workers", int, 0),
        guard=GuardConfig(min_files=get(guard, "min_files", int, 200), **shares),
        research=research,
    )


def render_config(
    *,
    hospital: str,
    ssmix2: Path,
    center_url: str,
    journal: Path | None = None,
    suite: SuiteName = "mlkem768-x25519",
) -> str:
    """A fresh ``agent.toml`` (what ``agent init`` writes), every setting shown with its default."""
    journal_line = f'journal = "{journal}"' if journal else '# journal = "/path/to/TR files"'
    return f"""# Hakobune agent configuration.  Relative paths are relative to the agent home (this folder).
hospital = "{hospital}"
ssmix2 = "{ssmix2}"
{journal_line}

[center]
url = "{center_url}"
known_hosts = "keys/known_hosts"   # pinned host key of the center's sshd
public_key = "keys/center.pub"     # the center's receipt-signing key
bwlimit = 0                        # bytes per second; 0 = unlimited

[keys]
signing = "keys/agent.key"
ssh = "keys/ssh_ed25519"
token = "keys/token.key"
release = "keys/release.pub"       # the hospital's release public key, from 'hakobune keys ceremony'
suite = "{suite}"

[schedule]
daily = "02:00"
watch = false                      # also sync shortly after files change
polling = false                    # watch by polling (network shares, where inotify sees nothing)

[sync]
rebaseline_days = 90
workers = 0                        # reader processes; 0 = one per core

[guard]
max_removed_share = 0.05
max_rewritten_share = 0.01
max_unreadable_share = 0.05
min_files = 200

# The de-identified research stream, off until both keys are set ('hakobune agent research-keys'):
# [research]
# analysis_key = "keys/analysis.pub"   # the analysis center's public key
# linkage_key = "keys/linkage.key"     # the network's linkage key (0600), from the network operator
"""

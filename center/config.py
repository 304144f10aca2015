"""The center's configuration, ``HOME/center.toml`` (example: ``config/center.toml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from center.layout import CenterLayout
from hakobune.errors import ConfigError
from hakobune.tomlfile import read_toml, table

HOME_ENVVAR = "HAKOBUNE_CENTER_HOME"
DEFAULT_HOME = Path("hakobune-center")
DEFAULT_DASHBOARD = "127.0.0.1:8470"


@dataclass(frozen=True)
class MirrorConfig:
    """Where ``center replicate`` (and ``center serve``, every ``every_minutes``) copies the store to.

    ``url`` is a mirror center home reachable as a directory (the drill, tests, a mirror on this machine)
    or ``sftp://host[:port]``: the mirror's own sshd, where the primary logs in as each hospital's account
    (``hkb-<id>``) with its replication key.  ``center_key`` is the mirror's receipt key (its
    ``keys/center.pub``), which the primary pins to trust the mirror's receipts."""

    url: str
    center_key: Path | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    every_minutes: float = 0.0
    #: An audit log directory whose latest signed head is copied along (a directory mirror only).
    audit: Path | None = None
    #: Bytes per second for the uploads (None: no limit).
    bwlimit: int | None = None

    @property
    def is_sftp(self) -> bool:
        return self.url.startswith("sftp://")


@dataclass(frozen=True)
class CenterConfig:
    layout: CenterLayout
    catalog_url: str
    listen: str = "0.0.0.0"
    port: int = 22
    sweep_seconds: float = 60.0
    partial_timeout_hours: float = 24.0
    stale_hours: float = 26.0
    mirror: MirrorConfig | None = None
    #: ``host:port`` the dashboard listens on (loopback unless an operator decides otherwise).
    dashboard_listen: str = DEFAULT_DASHBOARD
    dashboard_refresh_seconds: int = 60


def render_center_config(catalog_url: str | None = None) -> str:
    catalog = catalog_url or "sqlite:///catalog.db"
    return f"""# Hakobune center configuration.  Relative paths are relative to this folder (the center home).
# PostgreSQL in production: catalog = "postgresql+psycopg://hakobune@db.example/hakobune"
catalog = "{catalog}"

[sshd]
listen = "0.0.0.0"
port = 22

[ingest]
sweep_seconds = 60            # a full sweep of the inboxes besides the file watcher
partial_timeout_hours = 24    # an upload still incomplete after this long is moved aside as truncated
stale_hours = 26              # 'center status' flags a hospital with no changeset for this long

[dashboard]
listen = "{DEFAULT_DASHBOARD}"     # 'center dashboard': read-only page, loopback by default
refresh_seconds = 60

# The mirror center in another region (docs/replication.md).  Uncomment to replicate:
# [mirror]
# url = "sftp://mirror.example:22"          # or a mirror center home: "/srv/hakobune-mirror"
# center_key = "keys/mirror.pub"            # the mirror's keys/center.pub: its receipts are checked with it
# ssh_key = "keys/replication_ed25519"      # sftp: the key the mirror enrolled for our uploads
# known_hosts = "keys/mirror_known_hosts"   # sftp: the mirror's pinned host key
# every_minutes = 60                        # 'center serve' replicates this often (0: only by hand)
# audit = "/var/lib/hakobune/audit"         # copy this audit log's signed head (directory mirror only)
# bwlimit = 0                               # bytes per second, 0: no limit
"""


def load_center_config(home: Path) -> CenterConfig:
    layout = CenterLayout(Path(home))
    path = layout.config
    doc = read_toml(path, "run 'hakobune center init' first")
    where = str(path)
    catalog = doc.get("catalog", "sqlite:///catalog.db")
    if not isinstance(catalog, str):
        raise ConfigError(f"{where}: catalog must be a database URL")
    if catalog.startswith("sqlite:///") and not catalog.startswith("sqlite:////"):
        catalog = f"sqlite:///{layout.home.resolve() / catalog[len('sqlite:///') :]}"
    sshd, ingest = table(doc, "sshd", where), table(doc, "ingest", where)
    dashboard = table(doc, "dashboard", where)
    mirror = _mirror(layout, table(doc, "mirror", where), where) if "mirror" in doc else None
    try:
        cfg = CenterConfig(
            layout=layout,
            catalog_url=catalog,
            listen=str(sshd.get("listen", "0.0.0.0")),
            port=int(sshd.get("port", 22)),
            sweep_seconds=float(ingest.get("sweep_seconds", 60)),
            partial_timeout_hours=float(ingest.get("partial_timeout_hours", 24)),
            stale_hours=float(ingest.get("stale_hours", 26)),
            mirror=mirror,
            dashboard_listen=str(dashboard.get("listen", DEFAULT_DASHBOARD)),
            dashboard_refresh_seconds=int(dashboard.get("refresh_seconds", 60)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: bad value ({e})") from None
    parse_listen(cfg.dashboard_listen, f"{where}: [dashboard] listen")
    if cfg.dashboard_refresh_seconds < 5:
        raise ConfigError(f"{where}: [dashboard] refresh_seconds must be at least 5")
    return cfg


def _mirror(layout: CenterLayout, doc: dict[str, Any], where: str) -> MirrorConfig:
    url = doc.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{where}: [mirror] url must be sftp://host:port or a mirror center home")

    def path(key: str) -> Path | None:
        value = doc.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where}: [mirror] {key} must be a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() else layout.home / p

    try:
        every = float(doc.get("every_minutes", 0))
        bwlimit = int(doc.get("bwlimit", 0))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: [mirror] bad value ({e})") from None
    if every < 0 or bwlimit < 0:
        raise ConfigError(f"{where}: [mirror] every_minutes and bwlimit must not be negative")
    return mirror_config(
        url.strip(),
        home=layout.home,
        center_key=path("center_key"),
        ssh_key=path("ssh_key"),
        known_hosts=path("known_hosts"),
        every_minutes=every,
        audit=path("audit"),
        bwlimit=bwlimit or None,
        where=f"{where}: [mirror]",
    )


def mirror_config(
    url: str,
    *,
    home: Path | None = None,
    center_key: Path | None = None,
    ssh_key: Path | None = None,
    known_hosts: Path | None = None,
    every_minutes: float = 0.0,
    audit: Path | None = None,
    bwlimit: int | None = None,
    where: str = "--mirror",
) -> MirrorConfig:
    """A checked :class:`MirrorConfig`.  A directory URL (``/path``, ``file:///path`` or a path relative to
    ``home``) is made absolute; ``sftp://`` needs the three key files."""
    if url.startswith("sftp://"):
        missing = [
            name
            for name, value in (
                ("center_key", center_key),
                ("ssh_key", ssh_key),
                ("known_hosts", known_hosts),
            )
            if value is None
        ]
        if missing:
            raise ConfigError(f"{where}: an sftp mirror needs {', '.join(missing)} in [mirror]")
    elif "://" in url and not url.startswith("file://"):
        raise ConfigError(f"{where}: mirror {url!r}: expected sftp://host:port or a directory")
    else:
        local = Path(url[len("file://") :] if url.startswith("file://") else url).expanduser()
        if not local.is_absolute():
            local = (home or Path.cwd()) / local
        url = str(local.resolve())
    return MirrorConfig(
        url=url,
        center_key=center_key,
        ssh_key=ssh_key,
        known_hosts=known_hosts,
        every_minutes=every_minutes,
        audit=audit,
        bwlimit=bwlimit,
    )


def parse_listen(text: str, where: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); :class:`ConfigError` naming ``where``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: {text!r} is not host:port (e.g. 127.0.0.1:8470)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)

"""The center's configuration, ``HOME/center.toml`` (example: ``config/center.toml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from center.layout import CenterLayout
from hakobune.errors import ConfigError
from hakobune.tomlfile import read_toml, table

HOME_ENVVAR = "HAKOBUNE_CENTER_HOME"
DEFAULT_HOME = Path("hakobune-center")


@dataclass(frozen=True)
class CenterConfig:
    layout: CenterLayout
    catalog_url: str
    listen: str = "0.0.0.0"
    port: int = 22
    sweep_seconds: float = 60.0
    partial_timeout_hours: float = 24.0
    stale_hours: float = 26.0


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
    try:
        return CenterConfig(
            layout=layout,
            catalog_url=catalog,
            listen=str(sshd.get("listen", "0.0.0.0")),
            port=int(sshd.get("port", 22)),
            sweep_seconds=float(ingest.get("sweep_seconds", 60)),
            partial_timeout_hours=float(ingest.get("partial_timeout_hours", 24)),
            stale_hours=float(ingest.get("stale_hours", 26)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: bad value ({e})") from None

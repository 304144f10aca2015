"""The analysis center's home folder: everything ``hakobune research`` keeps, in one place.

::

    HOME/
      studies.sqlite      study registry: applications, ethics decisions (append-only), releases and
                          every value each release published (research.studies)
      protocols/<study>/  the submitted protocol files, copied (their SHA-256 is in the registry)
      released/<study>/<run>/  what left the analysis center: table.csv, table.html, charts, note.md
      audit/              the audit log (hakobune.audit): study.submit, study.decide, research.run
                          (and research.ingest when its --audit points here)
      research.duckdb     the de-identified database (default of --db; research ingest fills it)

``--home DIR`` or the environment variable HAKOBUNE_RESEARCH_HOME names it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hakobune.errors import ConfigError

HOME_ENV = "HAKOBUNE_RESEARCH_HOME"
REGISTRY_FILE = "studies.sqlite"
DEFAULT_DB = "research.duckdb"


@dataclass(frozen=True)
class ResearchHome:
    root: Path

    @property
    def registry(self) -> Path:
        return self.root / REGISTRY_FILE

    @property
    def protocols(self) -> Path:
        return self.root / "protocols"

    @property
    def released(self) -> Path:
        return self.root / "released"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def default_db(self) -> Path:
        return self.root / DEFAULT_DB

    def ensure(self) -> ResearchHome:
        """Create the folders (owner-only: the registry and protocols are not for everyone)."""
        for d in (self.root, self.protocols, self.released, self.audit):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self


def resolve_home(option: Path | None) -> ResearchHome:
    """The home from ``--home`` or HAKOBUNE_RESEARCH_HOME, created if missing."""
    if option is None:
        env = os.environ.get(HOME_ENV, "").strip()
        if not env:
            raise ConfigError(f"no analysis-center home: pass --home DIR or set {HOME_ENV}")
        option = Path(env)
    if option.exists() and not option.is_dir():
        raise ConfigError(f"{option}: the analysis-center home is not a directory")
    return ResearchHome(Path(option)).ensure()

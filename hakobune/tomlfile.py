"""Reading a TOML configuration file: one place for the errors an operator sees."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hakobune.errors import ConfigError


def read_toml(path: Path, missing_hint: str) -> dict[str, Any]:
    """The parsed file; :class:`ConfigError` naming the file if it is missing (with ``missing_hint``),
    unreadable or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; {missing_hint}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None


def table(doc: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """``doc[name]`` as a TOML table (empty when absent)."""
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value

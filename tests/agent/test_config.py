"""Configuration files: the shipped examples load, and every bad value is one clear error naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.config import load_config
from center.config import load_center_config
from hakobune.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_examples_load(tmp_path: Path) -> None:
    shutil.copy(CONFIG / "agent.toml", tmp_path / "agent.toml")
    cfg = load_config(tmp_path)
    assert cfg.hospital == "1310000001" and cfg.center_url.startswith("sftp://")
    assert cfg.signing_key == tmp_path / "keys/agent.key" and cfg.daily_at == "02:00"
    shutil.copy(CONFIG / "center.toml", tmp_path / "center.toml")
    center = load_center_config(tmp_path)
    assert center.catalog_url == f"sqlite:///{tmp_path.resolve()}/catalog.db" and center.stale_hours == 26


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('hospital = "1310000001"', 'hospital = "13 10"'), "bad hospital id"),
        (('hospital = "1310000001"', ""), "hospital is required"),
        (('daily = "02:00"', 'daily = "25:00"'), "schedule.daily must be HH:MM"),
        (("max_removed_share = 0.05", "max_removed_share = 5"), "guard.max_removed_share"),
        (('suite = "mlkem768-x25519"', 'suite = "rsa"'), "unknown suite"),
        (("bwlimit = 0 ", "bwlimit = -1 "), "must not be negative"),
        (("[center]", "center = 1\n[x]"), "[center] must be a table"),
        (("[sync]", "[sync\n"), "cannot read"),
    ],
)
def test_bad_agent_config_is_one_clear_error(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = (CONFIG / "agent.toml").read_text()
    assert change[0] in text
    (tmp_path / "agent.toml").write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert message in str(e.value) and "agent.toml" in str(e.value)


def test_missing_config_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent init"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="center init"):
        load_center_config(tmp_path)

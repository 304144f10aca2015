"""The ``hakobune`` command imports only the group it runs, and help still lists every group and command."""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import agent.cli
from hakobune.cli import COMMANDS, Lazy, app
from hakobune.keys import RecipientPrivateKey
from hakobune.provision import LocalWorld, provision_local
from hakobune.synth import advance, generate

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
#: What other roles load (analysis, FHIR, charts, the daemon's scheduler, SFTP): never for the agent's sync.
HEAVY = ("duckdb", "scipy", "matplotlib", "fhir", "apscheduler", "watchdog", "paramiko")


def _modules_loaded_by(*argv: str) -> set[str]:
    """Top-level packages imported by ``hakobune ARGV`` (run in a fresh interpreter)."""
    code = (
        "import json, sys\n"
        f"sys.argv = ['hakobune', *{list(argv)!r}]\n"
        "from hakobune.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nMODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    line = proc.stderr.rsplit("MODULES ", 1)
    assert len(line) == 2, proc.stderr
    return set(json.loads(line[1]))


@pytest.mark.parametrize("argv", [("agent", "--help"), ("agent", "sync", "--help"), ("--help",)])
def test_agent_commands_do_not_import_other_roles(argv: tuple[str, ...]) -> None:
    loaded = _modules_loaded_by(*argv)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not loaded & {"center", "restore", "media", "research"}, sorted(loaded)


def test_root_help_lists_every_group_and_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name, entry in COMMANDS.items():
        assert f"{name} " in result.output
        assert entry.help in " ".join(result.output.split())


def test_agent_help_lists_every_command() -> None:
    result = runner.invoke(app, ["agent", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name, entry in agent.cli.COMMANDS.items():
        assert f"{name} " in result.output
        assert entry.help in " ".join(result.output.split())


@pytest.mark.parametrize("argv", [["agent", "sync", "--help"], ["agent", "consent", "list", "--help"]])
def test_lazy_commands_run(argv: list[str]) -> None:
    result = runner.invoke(app, argv, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "--home" in result.output


def _entries() -> list[tuple[str, Lazy]]:
    return [*COMMANDS.items(), *(("agent " + k, v) for k, v in agent.cli.COMMANDS.items())]


@pytest.mark.parametrize(("name", "entry"), _entries(), ids=[n for n, _ in _entries()])
def test_every_entry_imports_and_its_help_matches(name: str, entry: Lazy) -> None:
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        return  # a group: the table's help is its help
    doc = " ".join((target.__doc__ or "").split())
    assert doc.startswith(entry.help), (name, doc)


def test_console_script_is_main() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["hakobune"] == "hakobune.cli:main"


class _NoProcesses:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a small day must be read in the sync's own process")


def _hospital(tmp_path: Path, *, patients: int, days: int, seed: int) -> tuple[Path, LocalWorld]:
    """A synthetic hospital with a journal and a local (file://) center, provisioned."""
    home = tmp_path / "hospital"
    generate(home, patients=patients, days=days, seed=seed, workers=1)
    world = provision_local(
        hospital="H1",
        ssmix2=home / "ssmix2",
        center_home=tmp_path / "center",
        agent_home=tmp_path / "agent",
        release=RecipientPrivateKey.generate().public,
        journal=home / "journal",
    )
    return home, world


def test_a_small_day_is_read_without_reader_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, world = _hospital(tmp_path, patients=40, days=5, seed=3)
    sync = ["agent", "sync", "--json", "--no-ship", "--home", str(world.agent.home)]
    assert runner.invoke(app, sync).exit_code == 0  # the baseline (reader processes allowed)
    day = advance(home, 1)
    assert day.files_written > 0
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _NoProcesses)
    result = runner.invoke(app, sync)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["sync"]
    assert (doc["status"], doc["kind"], doc["scan"]["mode"]) == ("sealed", "incremental", "journal")
    assert doc["build"]["units_read"] > 0


def test_a_json_daily_sync_loads_neither_sqlalchemy_nor_rich(tmp_path: Path) -> None:
    """The daily sync's memory budget (issue 3: < 64 MB peak): the state database is on the stdlib
    sqlite3, output that is only JSON needs no rich, and a file:// center needs no SSH."""
    _, world = _hospital(tmp_path, patients=20, days=3, seed=5)
    loaded = _modules_loaded_by("agent", "sync", "--json", "--home", str(world.agent.home))
    assert "agent" in loaded and "zstandard" in loaded  # it did run the sync
    assert not loaded & {"sqlalchemy", "rich", "paramiko", "invoke", "asyncio", *HEAVY}, sorted(loaded)

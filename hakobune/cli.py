"""The ``hakobune`` command: one typer app with a group per role.  Commands are thin: parse options, call the
role's API, render the result.  A :class:`HakobuneError` becomes one line on stderr and its exit code.

Groups and commands are imported only when they run (:class:`LazyGroup`): ``hakobune agent sync`` does not
load the center's, restore's or research's modules (DuckDB, SciPy, matplotlib, FHIR models…), which would
cost a hospital's daily sync seconds of start-up and tens of MB of memory.  Help lists every entry from its
table without importing it."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup

from hakobune.errors import HakobuneError


@dataclass(frozen=True)
class Lazy:
    """A command or group imported when it runs: ``module.attribute`` is a typer app (a group) or a
    command function; ``help`` is what the parent's help lists (and the group's help, as
    ``add_typer(help=…)`` gave it)."""

    module: str
    attribute: str
    help: str


class LazyGroup(TyperGroup):
    """A typer group whose entries (``lazy``: name -> :class:`Lazy`) are imported on first use."""

    lazy: ClassVar[dict[str, Lazy]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*(n for n in self.commands if n not in self.lazy), *self.lazy]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = self.lazy.get(cmd_name)
        if entry is None or cmd_name in self.commands:
            return self.commands.get(cmd_name)
        if self._listing:  # help lists the entry without importing it
            return TyperCommand(name=cmd_name, help=entry.help)
        command = _load(cmd_name, entry)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def lazy_group(entries: dict[str, Lazy]) -> type[LazyGroup]:
    """A :class:`LazyGroup` class over ``entries`` (pass it as ``typer.Typer(cls=…)``)."""
    return type("LazyGroup", (LazyGroup,), {"lazy": entries})


def _load(name: str, entry: Lazy) -> Any:
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)
        group.name, group.help = name, entry.help
        return group
    single = typer.Typer(add_completion=False)
    single.command(name=name)(target)
    return typer.main.get_command(single)


#: The root's groups and commands, in the order help lists them.
COMMANDS: dict[str, Lazy] = {
    "drill": Lazy(
        "hakobune.commands.drill",
        "drill",
        "Run the pipeline stage by stage and print each stage's figures; exit 1 if any stage fails.",
    ),
    "synth": Lazy(
        "hakobune.commands.synth",
        "synth",
        "Write a realistic, deterministic synthetic SS-MIX2 hospital (or advance one by more days).",
    ),
    "agent": Lazy("agent.cli", "app", "Hospital side: read SS-MIX2, consent, sync (hospital IT)."),
    "center": Lazy(
        "center.cli",
        "app",
        "Server center: enroll, sshd, ingest, replicate, verify, status, dashboard (center operators).",
    ),
    "keys": Lazy("hakobune.commands.keys", "app", "Release-key ceremony (hospital director, custodians)."),
    "release": Lazy(
        "restore.commands.release", "app", "Release orders: create, approve, show, list (custodians)."
    ),
    "restore": Lazy(
        "restore.commands.restore",
        "app",
        "Disaster base: unlock a released hospital, search patients, export FHIR.",
    ),
    "media": Lazy("media.cli", "app", "Helicopter disks: write, verify and open encrypted portable media."),
    "research": Lazy(
        "research.cli",
        "app",
        "Analysis center: de-identified database, studies, disclosure-controlled analyses.",
    ),
    "audit": Lazy(
        "hakobune.commands.audit", "app", "Audit log: verify, show, sign heads, export FHIR AuditEvents."
    ),
}

app = typer.Typer(
    name="hakobune",
    help="Hakobune (方舟): disaster-recovery backup of hospital medical records.",
    cls=lazy_group(COMMANDS),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Hakobune (方舟): disaster-recovery backup of hospital medical records."""


def main() -> None:
    try:
        app()
    except HakobuneError as e:
        typer.echo(f"hakobune: error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()

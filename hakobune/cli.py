"""The ``hakobune`` command: one typer app with a group per role.  Commands are thin: parse options, call the
role's API, render the result.  A :class:`HakobuneError` becomes one line on stderr and its exit code."""

from __future__ import annotations

import sys

import typer

from agent.cli import app as agent_app
from center.cli import app as center_app
from hakobune.commands.drill import drill
from hakobune.commands.synth import synth
from hakobune.errors import HakobuneError

app = typer.Typer(
    name="hakobune",
    help="Hakobune (方舟): disaster-recovery backup of hospital medical records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent", help="Hospital side: read SS-MIX2, consent, sync (hospital IT).")
app.add_typer(
    center_app, name="center", help="Server center: enroll, sshd, ingest, status (center operators)."
)
app.command(name="drill")(drill)
app.command(name="synth")(synth)


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

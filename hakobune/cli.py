"""The ``hakobune`` command: one typer app with a group per role.  Commands are thin: parse options, call the
role's API, render the result.  A :class:`HakobuneError` becomes one line on stderr and its exit code."""

from __future__ import annotations

import sys

import typer

from agent.cli import app as agent_app
from center.cli import app as center_app
from hakobune.commands.audit import app as audit_app
from hakobune.commands.drill import drill
from hakobune.commands.keys import app as keys_app
from hakobune.commands.synth import synth
from hakobune.errors import HakobuneError
from media.cli import app as media_app
from research.cli import app as research_app
from restore.commands.release import app as release_app
from restore.commands.restore import app as restore_app

app = typer.Typer(
    name="hakobune",
    help="Hakobune (方舟): disaster-recovery backup of hospital medical records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent", help="Hospital side: read SS-MIX2, consent, sync (hospital IT).")
app.add_typer(
    center_app,
    name="center",
    help="Server center: enroll, sshd, ingest, replicate, verify, status, dashboard (center operators).",
)
app.add_typer(keys_app, name="keys", help="Release-key ceremony (hospital director, custodians).")
app.add_typer(release_app, name="release", help="Release orders: create, approve, show, list (custodians).")
app.add_typer(
    restore_app,
    name="restore",
    help="Disaster base: unlock a released hospital, search patients, export FHIR.",
)
app.add_typer(
    media_app, name="media", help="Helicopter disks: write, verify and open encrypted portable media."
)
app.add_typer(
    research_app,
    name="research",
    help="Analysis center: de-identified database, studies, disclosure-controlled analyses.",
)
app.add_typer(audit_app, name="audit", help="Audit log: verify, show, sign heads, export FHIR AuditEvents.")
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

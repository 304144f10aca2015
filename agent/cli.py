"""``hakobune agent …``: one module per command under :mod:`agent.commands`; this file only assembles them."""

from __future__ import annotations

import typer

from agent.commands import consent
from agent.commands.check import check

app = typer.Typer(no_args_is_help=True, help="Hospital side: read SS-MIX2, consent, sync (hospital IT).")
app.command(name="check")(check)
app.add_typer(
    consent.app, name="consent", help="Patients' opt-outs (consent CSV import, set, remove, list, show)."
)

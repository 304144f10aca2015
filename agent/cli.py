"""``hakobune agent …``: one module per command under :mod:`agent.commands`; this file only assembles them."""

from __future__ import annotations

import typer

from agent.commands import consent
from agent.commands.check import check
from agent.commands.init import init
from agent.commands.research_keys import research_keys
from agent.commands.run import run
from agent.commands.status import status
from agent.commands.sync import confirm, sync

app = typer.Typer(no_args_is_help=True, help="Hospital side: read SS-MIX2, consent, sync (hospital IT).")
app.command(name="check")(check)
app.command(name="init")(init)
app.command(name="sync")(sync)
app.command(name="confirm")(confirm)
app.command(name="status")(status)
app.command(name="run")(run)
app.command(name="research-keys")(research_keys)
app.add_typer(
    consent.app, name="consent", help="Patients' opt-outs (consent CSV import, set, remove, list, show)."
)

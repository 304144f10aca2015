"""``hakobune agent …``: one module per command under :mod:`agent.commands`; this file only assembles them."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Hospital side: read SS-MIX2, consent, sync (hospital IT).")

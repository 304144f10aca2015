"""``hakobune media …``: helicopter disks (write, verify, open)."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True, help="Helicopter disks: write, verify and open encrypted portable media."
)

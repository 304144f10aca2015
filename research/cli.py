"""``hakobune research …``: the analysis center (data managers, ethics committee, analysts).

The command modules register themselves on :data:`app`; they are imported at the bottom so that each role's
commands live in their own module (``ingest``: research changesets into the de-identified database;
``studies``: applications and ethics decisions; ``analysis``: approved, disclosure-controlled runs)."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True,
    help="Analysis center: ingest the de-identified copy, studies and ethics decisions, released analyses.",
)

from research.commands import analysis as _analysis  # noqa: E402,F401
from research.commands import ingest as _ingest  # noqa: E402,F401
from research.commands import studies as _studies  # noqa: E402,F401

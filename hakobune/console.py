"""Output helpers shared by every command: rich for people (progress on stderr, only on a terminal),
plain JSON on stdout for scripts."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """One JSON document on stdout (UTF-8, not ASCII-escaped, keys as given)."""
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def progress(enabled: bool = True) -> Progress:
    """A progress display on stderr; silent when stderr is not a terminal or ``enabled`` is False."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not (enabled and err_console.is_terminal),
        transient=True,
    )

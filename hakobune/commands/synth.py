"""``hakobune synth``: write (or advance) a realistic, deterministic synthetic SS-MIX2 hospital."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hakobune.synth import SynthStats, advance, generate


def synth(
    patients: int = typer.Option(1000, "--patients", min=0, help="Number of patients."),
    days: int = typer.Option(30, "--days", min=0, help="Days of history (day-by-day changes) to simulate."),
    out: Path = typer.Option(
        ..., "--out", help="Output directory: OUT/ssmix2, OUT/consent.csv, OUT/synth.json."
    ),
    seed: int = typer.Option(
        1, "--seed", help="Random seed (same seed and parameters, byte-identical tree)."
    ),
    advance_days: int | None = typer.Option(
        None,
        "--advance",
        min=0,
        help="Continue the tree in OUT by this many days, in place (parameters come from synth.json).",
    ),
    change_rate: float | None = typer.Option(
        None,
        "--change-rate",
        min=0.0,
        help="Share of files that change per simulated day (new visits, updates, deletions); default 0.01.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Worker processes (default: CPU count)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
) -> None:
    """Write a realistic, deterministic synthetic SS-MIX2 hospital (or advance one by more days)."""
    console = Console(stderr=True)
    show = sys.stderr.isatty() and not as_json
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=True,
    ) as bar:
        task = bar.add_task("advancing" if advance_days is not None else "generating", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if advance_days is not None:
            stats = advance(out, advance_days, workers=workers, change_rate=change_rate, progress=progress)
        else:
            rate = 0.01 if change_rate is None else change_rate
            stats = generate(
                out, patients, days, seed=seed, workers=workers, change_rate=rate, progress=progress
            )
    if as_json:
        typer.echo(json.dumps(stats.to_json(), ensure_ascii=False, indent=2))
        return
    _print_summary(console if not sys.stdout.isatty() else Console(), stats, out, advance_days is not None)


def _print_summary(console: Console, s: SynthStats, out: Path, advanced: bool) -> None:
    from rich.table import Table

    table = Table(title=f"hakobune synth → {out}", show_header=False)
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("patients", f"{s.patients:,}")
    table.add_row("days simulated", f"{s.days_done}" + (f" (+{s.days_done - s.days})" if advanced else ""))
    table.add_row("seed", str(s.seed))
    table.add_row("files in tree", f"{s.files:,}")
    for flag, label in (("1", "current (_1)"), ("2", "superseded (_2)"), ("0", "deleted (_0)")):
        table.add_row(f"  {label}", f"{s.files_by_flag.get(flag, 0):,}")
    for dtype, n in sorted(s.files_by_type.items()):
        table.add_row(f"  {dtype}", f"{n:,}")
    table.add_row("bytes in tree", f"{s.bytes:,}")
    table.add_row("files written / renamed", f"{s.files_written:,} / {s.files_renamed:,}")
    if s.renames_missing:
        table.add_row("renames missing (tree edited?)", f"{s.renames_missing:,}")
    table.add_row(
        "consent rows (all / research)", f"{s.consent.get('all', 0)} / {s.consent.get('research', 0)}"
    )
    table.add_row("workers", str(s.workers))
    table.add_row("seconds", f"{s.seconds:.1f}")
    if s.seconds > 0:
        table.add_row("files per second", f"{s.files_written / s.seconds:,.0f}")
    console.print(table)

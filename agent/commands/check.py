"""``hakobune agent check``: the conformance check hospital IT runs before enrolling."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from agent.check import CheckReport, check_tree
from hakobune.console import console, print_json, progress
from hakobune.errors import InputError


def check(
    ssmix2: Path = typer.Option(..., "--ssmix2", help="Root of the SS-MIX2 standardized storage."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the report as JSON (schema: docs/agent-check.md)."
    ),
    workers: int = typer.Option(0, "--workers", help="Reader processes (0 = one per core)."),
    fail_on_quarantine: bool = typer.Option(
        False, "--fail-on-quarantine", help="Exit with status 1 when any file would be quarantined."
    ),
) -> None:
    """Report what a sync would read: files and patients by data type, date range, and every file it
    would quarantine, with the reason."""
    if not ssmix2.is_dir():
        raise InputError(str(ssmix2), "not a directory (expected the root of an SS-MIX2 storage)")
    with progress(not json_out) as bar:
        task = bar.add_task("reading SS-MIX2", total=None, rate="")
        started = time.perf_counter()

        def tick(done: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:,.0f} files/s")

        report = check_tree(ssmix2, workers=workers, on_progress=tick)
    if json_out:
        print_json(report.to_json())
    else:
        _render(report)
    if fail_on_quarantine and report.quarantined:
        raise typer.Exit(1)


def _render(rep: CheckReport) -> None:
    j = rep.to_json()
    console.print(
        f"[bold]{rep.root}[/]: {rep.files:,} files ({rep.bytes / 1e6:,.1f} MB), {rep.patients:,} patients, "
        f"care dates {j['date_range']['first'] or '-'} … {j['date_range']['last'] or '-'}"
    )
    t = Table("data type", "files", "current", "superseded", "deleted", "patients", "records", title="read")
    for dtype, c in sorted(rep.by_type.items()):
        t.add_row(
            dtype, *(f"{v:,}" for v in (c.files, c.current, c.superseded, c.deleted, c.patients, c.records))
        )
    console.print(t)
    if rep.skipped_by_type:
        console.print(
            "skipped (not backed up): "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(rep.skipped_by_type.items()))
        )
    for w, n in sorted(rep.warnings.items()):
        console.print(f"[yellow]warning[/]: {w}: {n:,} files")
    if rep.quarantine:
        q = Table(title=f"quarantined: {rep.quarantined:,} files", title_style="bold red")
        q.add_column("file", overflow="fold")
        q.add_column("reason", overflow="fold")
        for item in rep.quarantine:
            q.add_row(item.file, item.reason)
        console.print(q)
    else:
        console.print("[green]no file would be quarantined[/]")
    console.print(f"{rep.files:,} files in {rep.seconds:.2f} s")

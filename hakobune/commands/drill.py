"""``hakobune drill``: run every stage on embedded defaults (or on a given SS-MIX2 tree)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hakobune.console import console, err_console, print_json
from hakobune.drill import DrillConfig, StageResult, run_drill

_STATUS = {"ok": "[green]✔[/]", "failed": "[red]✘[/]", "skipped": "[dim]·[/]"}


def drill(
    ssmix2: Path | None = typer.Option(
        None, "--ssmix2", help="Run on this SS-MIX2 tree (default: synthetic)."
    ),
    consent: Path | None = typer.Option(None, "--consent", help="Consent CSV (patient_id,scope)."),
    out: Path = typer.Option(
        Path("drill-out"), "--out", help="The drill's world; reused to run incrementally."
    ),
    patients: int = typer.Option(2000, "--patients", help="Synthetic hospital size (without --ssmix2)."),
    days: int = typer.Option(30, "--days", help="Days of synthetic history (without --ssmix2)."),
    seed: int = typer.Option(1, "--seed", help="Synthetic hospital seed."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0 = one per core)."),
    json_out: bool = typer.Option(
        False, "--json", help="Print report.json to stdout instead of the stage list."
    ),
) -> None:
    """Run the pipeline stage by stage and print each stage's figures; exit 1 if any stage fails."""
    config = DrillConfig(
        out=out, ssmix2=ssmix2, consent=consent, patients=patients, days=days, seed=seed, workers=workers
    )
    status = None if json_out else err_console.status("")

    def start(name: str) -> None:
        if status is not None:
            status.update(f"{name} …")
            status.start()

    def done(r: StageResult) -> None:
        if status is not None:
            status.stop()
        if not json_out:
            console.print(
                f"{_STATUS[r.status]} [bold]{r.name:<10}[/] {_figures(r.figures)}"
                + (f"  [dim]({r.seconds:.1f} s)[/]" if r.status != "skipped" else "")
            )
            if r.error:
                console.print(f"  [red]{r.error}[/]")

    report = run_drill(config, on_start=start, on_done=done)
    if json_out:
        print_json(report)
    else:
        q = len(report["quarantine"])
        console.print(f"report: {out / 'report.json'}" + (f" ({q} files in quarantine)" if q else ""))
        console.print("[bold green]drill passed[/]" if report["ok"] else "[bold red]drill FAILED[/]")
    if not report["ok"]:
        raise typer.Exit(1)


def _figures(fig: dict[str, Any]) -> str:
    parts = []
    for k, v in fig.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b:,}" if isinstance(b, int) else f"{a} {b}" for a, b in v.items())
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        parts.append(f"{k}={v}")
    return "  ".join(parts)

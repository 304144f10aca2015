"""``hakobune synth``: write a synthetic hospital (placeholder until the generator lands)."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    patients: int = typer.Option(1000, "--patients", help="Number of patients."),
    days: int = typer.Option(30, "--days", help="Days of history."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    seed: int = typer.Option(1, "--seed", help="Random seed (same seed, same hospital)."),
) -> None:
    """Write a realistic, deterministic synthetic SS-MIX2 hospital."""
    raise typer.Exit(2)

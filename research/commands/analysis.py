"""``hakobune research run STUDY SPEC``: an approved study's disclosure-controlled analysis
(research.analysis); ``hakobune research specs``: the ready-made specs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from hakobune.console import console, print_json
from research.analysis import run_analysis
from research.cli import app as app
from research.home import HOME_ENV, resolve_home
from research.spec import SPEC_DIR, load_spec, shipped_specs


@app.command("run")
def run(
    study: str = typer.Argument(..., help="The study id (e.g. S2025-0001)."),
    spec: str = typer.Argument(..., help="A spec file (TOML) or the name of a ready-made spec."),
    home: Path | None = typer.Option(
        None, "--home", envvar=HOME_ENV, help="The analysis-center home folder.", file_okay=False
    ),
    db: Path | None = typer.Option(
        None, "--db", help="The research database (default HOME/research.duckdb)."
    ),
    actor: str | None = typer.Option(None, "--actor", help="The analyst (default: the login name)."),
    charts: bool = typer.Option(True, "--charts/--no-charts", help="Draw the charts."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run SPEC for STUDY and release the disclosure-controlled table, charts and note
    (audit: research.run).  Refuses unapproved, expired or out-of-scope studies."""
    h = resolve_home(home)
    result = run_analysis(h, study, spec, db=db, actor=actor, charts=charts)
    if json_out:
        print_json(result.to_json())
        return
    console.print(
        f"released [bold]{result.run_id}[/] for study {result.study_id}: {result.cells} cells,"
        f" {result.primary} primary and {result.secondary} secondary suppressed,"
        f" {result.stats_withheld} distributions withheld; LP audit of {result.audited} suppressed cells OK"
        f" ({result.seconds.get('total', 0.0):.2f} s)",
        soft_wrap=True,
    )
    console.print(f"→ {escape(str(result.directory))}: {', '.join(result.files)}", soft_wrap=True)


@app.command("specs")
def specs(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the ready-made analysis specs (research/specs/)."""
    rows = []
    for name in shipped_specs():
        s = load_spec(SPEC_DIR / f"{name}.toml")
        rows.append(
            {"name": name, "title": s.title, "items": sorted(s.data_items()), "window": str(s.window)}
        )
    if json_out:
        print_json(rows)
        return
    for r in rows:
        console.print(
            f"[bold]{r['name']}[/]: {escape(str(r['title']))} (items: {', '.join(r['items'])};"
            f" window {r['window']})",
            soft_wrap=True,
        )

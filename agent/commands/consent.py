"""``hakobune agent consent …``: the opt-out registry.  Thin: options in, :class:`ConsentRegistry` call,
rendering out.

JSON output (``--json``), one object on stdout:

- ``import``: ``{"file", "rows", "added", "changed", "unchanged"}``
- ``list``: ``{"total", "by_scope": {"all", "research"},
  "patients": [{"patient_id", "scope", "updated_at", "source"}, …]}`` ordered by patient ID
- ``show``: ``{"patient_id", "scope" (null if no opt-out),
  "history": [{"at", "old_scope", "new_scope", "source"}, …]}`` oldest first; null scopes mean "none"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from agent.consent import ConsentRegistry, Scope, normalize_patient_id
from agent.home import home_option, open_state_db

app = typer.Typer(
    no_args_is_help=True,
    help="Patients' opt-outs: 'all' (no backup, no research) or 'research' (backup only).",
)


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))


def _scope_text(scope: Scope | None) -> str:
    return scope.value if scope is not None else "(none)"


@app.command("import")
def import_(
    file: Path = typer.Argument(
        ..., metavar="FILE", help="Consent CSV: header 'patient_id,scope'; UTF-8 or Shift_JIS."
    ),
    home: Path = home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Add or change opt-outs from a hospital's CSV.  A bad file is refused whole; patients not in the file
    keep their opt-out (withdraw with 'consent remove')."""
    with open_state_db(home) as db:
        result = ConsentRegistry(db).import_csv(file)
    if as_json:
        _emit_json(
            {
                "file": result.file,
                "rows": result.rows,
                "added": result.added,
                "changed": result.changed,
                "unchanged": result.unchanged,
            }
        )
        return
    typer.echo(
        f"{result.file}: {result.rows} rows; {result.added} added, {result.changed} changed, "
        f"{result.unchanged} unchanged"
    )


@app.command("set")
def set_(
    patient_id: str = typer.Argument(..., metavar="PATIENT_ID", help="Patient ID as in SS-MIX2."),
    scope: Scope = typer.Argument(
        ..., case_sensitive=False, metavar="SCOPE", help="What the patient opted out of."
    ),
    home: Path = home_option(),
) -> None:
    """Record a patient's opt-out (replaces any earlier scope)."""
    with open_state_db(home) as db:
        old = ConsentRegistry(db).set(patient_id, scope, source="cli")
    if old == scope:
        typer.echo(f"opt-out unchanged: {scope.value}")
    else:
        typer.echo(f"opt-out recorded: {scope.value} (was {_scope_text(old)})")


@app.command("remove")
def remove(
    patient_id: str = typer.Argument(..., metavar="PATIENT_ID", help="Patient ID as in SS-MIX2."),
    home: Path = home_option(),
) -> None:
    """The patient withdraws the opt-out: their records may be sent again."""
    with open_state_db(home) as db:
        old = ConsentRegistry(db).remove(patient_id, source="cli")
    if old is None:
        typer.echo("no opt-out was recorded for this patient; nothing changed")
    else:
        typer.echo(f"opt-out withdrawn (was {old.value})")


@app.command("list")
def list_(
    home: Path = home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (keys in the module docs)."),
) -> None:
    """List every opt-out."""
    with open_state_db(home, create=False) as db:
        registry = ConsentRegistry(db)
        entries = registry.entries()
    by_scope = {scope.value: 0 for scope in Scope}
    for entry in entries:
        by_scope[entry.scope.value] += 1
    if as_json:
        _emit_json(
            {
                "total": len(entries),
                "by_scope": by_scope,
                "patients": [
                    {
                        "patient_id": e.patient_id,
                        "scope": e.scope.value,
                        "updated_at": e.updated_at,
                        "source": e.source,
                    }
                    for e in entries
                ],
            }
        )
        return
    table = Table(title=f"Opt-outs: {len(entries)} (all {by_scope['all']}, research {by_scope['research']})")
    table.add_column("patient ID", no_wrap=True)
    for column in ("scope", "updated (UTC)", "source"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.patient_id, e.scope.value, e.updated_at, e.source)
    Console().print(table)


@app.command("show")
def show(
    patient_id: str = typer.Argument(..., metavar="PATIENT_ID", help="Patient ID as in SS-MIX2."),
    home: Path = home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (keys in the module docs)."),
) -> None:
    """Show a patient's current opt-out and its history."""
    with open_state_db(home, create=False) as db:
        registry = ConsentRegistry(db)
        current = registry.get(patient_id)
        history = registry.history(patient_id)
    if as_json:
        _emit_json(
            {
                "patient_id": normalize_patient_id(patient_id),
                "scope": current.value if current is not None else None,
                "history": [
                    {
                        "at": h.at,
                        "old_scope": h.old.value if h.old is not None else None,
                        "new_scope": h.new.value if h.new is not None else None,
                        "source": h.source,
                    }
                    for h in history
                ],
            }
        )
        return
    console = Console()
    console.print(f"current opt-out: {_scope_text(current)}")
    if not history:
        console.print("no recorded changes")
        return
    table = Table(title="History")
    for column in ("at (UTC)", "from", "to", "source"):
        table.add_column(column)
    for h in history:
        table.add_row(h.at, _scope_text(h.old), _scope_text(h.new), h.source)
    console.print(table)

"""``hakobune audit …``: verify, show, sign and export the audit log (DESIGN §7, docs/audit.md)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from hakobune.audit import (
    HEAD_FILE,
    LOG_FILE,
    AuditEntry,
    AuditLog,
    canonical,
    export_fhir,
    read_entries,
    verify_log,
)
from hakobune.console import console, print_json
from hakobune.errors import InputError
from hakobune.keys import load_verify_key

app = typer.Typer(
    no_args_is_help=True,
    help="Audit log: verify the hash chain and signed heads, show entries, sign a head, export FHIR.",
)


def _log() -> Any:
    return typer.Option(..., "--log", help="The audit log directory.", file_okay=False)


@app.command()
def verify(
    log: Path = _log(),
    key: Path | None = typer.Option(
        None, "--key", help="The log's public key (audit.pub) as pinned elsewhere (default: the log's own)."
    ),
    head: list[Path] = typer.Option(
        [], "--head", help="A signed head copied to the mirror or the hospital (repeatable)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every entry, the hash chain and every signed head; exit 1 on any problem."""
    report = verify_log(log, load_verify_key(key) if key is not None else None, heads=head)
    if json_out:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            console.print(f"[red]✘[/] {escape(problem)}", soft_wrap=True)
        if report.omitted:
            console.print(f"[red]✘[/] … and {report.omitted} more problems")
        console.print(
            f"{report.entries:,} entries ({report.signed:,} covered by a valid signed head), "
            f"{report.heads} heads checked against key {report.key or '—'}; root {report.root}",
            soft_wrap=True,
        )
        if report.ok and report.signed < report.entries:
            console.print(
                f"[yellow]![/] {report.entries - report.signed} entries are not yet covered by a signed"
                " head (run 'hakobune audit head')"
            )
        console.print("[bold green]audit log OK[/]" if report.ok else "[bold red]audit log FAILED[/]")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def show(
    log: Path = _log(),
    last: int | None = typer.Option(None, "--last", min=1, help="Only the last N entries."),
    json_out: bool = typer.Option(False, "--json", help="One canonical JSON entry per line."),
) -> None:
    """List the entries (not verified: use 'verify')."""
    entries: deque[AuditEntry] = deque(maxlen=last)
    entries.extend(read_entries(log))
    if json_out:
        for entry in entries:
            typer.echo(entry.encode().decode("utf-8"))
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("seq", "time", "action", "actor", "hospital", "details"):
        table.add_column(col, overflow="fold")
    for entry in entries:
        details = " ".join(f"{k}={_value(v)}" for k, v in sorted(entry.details.items()))
        table.add_row(
            str(entry.seq),
            entry.time,
            escape(entry.action),
            escape(entry.actor),
            escape(entry.hospital),
            escape(details),
        )
    console.print(table)


@app.command("export-fhir")
def export_fhir_command(
    log: Path = _log(),
    out: Path = typer.Option(..., "--out", help="The NDJSON file to write (one AuditEvent per line)."),
) -> None:
    """Export every entry as a FHIR R4 AuditEvent, one per line (NDJSON)."""
    count = export_fhir(log, out)
    console.print(f"{count:,} AuditEvents written to {escape(str(out))}")


@app.command()
def head(
    log: Path = _log(),
    json_out: bool = typer.Option(False, "--json", help="Print only the signed head (JSON)."),
) -> None:
    """Verify the log, sign its current size and root, append the head to heads.log and write head.json."""
    if not (log / LOG_FILE).is_file():
        raise InputError(str(log), "not an audit log (no audit.log)")
    with AuditLog.open(log) as audit:
        signed = audit.sign_head()
    if json_out:
        print_json(signed.to_json())
        return
    console.print(
        f"signed head: {signed.size:,} entries, root {signed.root}, {signed.time}, key {signed.key}",
        soft_wrap=True,
    )
    console.print(
        f"copy {escape(str(log / HEAD_FILE))} to the mirror center and the hospital"
        " (check later with 'hakobune audit verify --head COPY')",
        soft_wrap=True,
    )


def _value(value: object) -> str:
    return value if isinstance(value, str) else canonical(value).decode("utf-8")

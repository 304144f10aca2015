"""``hakobune research study …``: applications and ethics-committee decisions (research.studies)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from hakobune import audit
from hakobune.console import console, print_json
from hakobune.errors import InputError
from research.cli import app as app
from research.home import HOME_ENV, resolve_home
from research.spec import DateRange
from research.studies import Decision, Registry, Study, parse_items, state_of

study_app = typer.Typer(
    no_args_is_help=True,
    help="Studies: submit an application, record the ethics committee's decision, list and show.",
)
app.add_typer(study_app, name="study")


def _home() -> Any:
    return typer.Option(
        None, "--home", envvar=HOME_ENV, help="The analysis-center home folder.", file_okay=False
    )


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(option, f"{value!r} is not a date (YYYY-MM-DD)") from None


def _json() -> Any:
    return typer.Option(False, "--json", help="Print JSON for scripts.")


@study_app.command()
def submit(
    title: str = typer.Option(..., "--title", help="Title of the study."),
    applicant: str = typer.Option(..., "--applicant", help="The applicant (principal investigator)."),
    purpose: str = typer.Option(..., "--purpose", help="Purpose of the study."),
    protocol: Path = typer.Option(..., "--protocol", help="The protocol file (copied into the home)."),
    items: str = typer.Option(
        ...,
        "--items",
        help="Requested data items, comma-separated (demographics, conditions, allergies,"
        " prescriptions, injections, labs).",
    ),
    period_from: str = typer.Option(..., "--from", help="First date of care requested (YYYY-MM-DD)."),
    period_until: str = typer.Option(..., "--until", help="Last date of care requested (YYYY-MM-DD)."),
    home: Path | None = _home(),
    json_out: bool = _json(),
) -> None:
    """Register a study application (audit: study.submit)."""
    h = resolve_home(home)
    start, end = _day(period_from, "--from"), _day(period_until, "--until")
    assert start is not None and end is not None
    with Registry(h) as reg:
        study = reg.submit(
            title=title,
            applicant=applicant,
            purpose=purpose,
            protocol=protocol,
            items=parse_items(items),
            period=DateRange(start, end),
        )
    audit.record(
        h.audit,
        "study.submit",
        actor=applicant,
        details={
            "study": study.id,
            "protocol_sha256": study.protocol_sha256,
            "items": list(study.items),
            "period": str(study.period),
        },
    )
    if json_out:
        print_json(study.to_json())
    else:
        console.print(
            f"study [bold]{study.id}[/] submitted; protocol sha256 {study.protocol_sha256}", soft_wrap=True
        )


@study_app.command()
def decide(
    study: str = typer.Argument(..., help="The study id (e.g. S2025-0001)."),
    decision: str = typer.Option(..., "--decision", help="approve or reject."),
    approver: str = typer.Option(..., "--approver", help="Who decided (ethics committee chair)."),
    conditions: str = typer.Option("", "--conditions", help="Conditions attached to the approval."),
    valid_from: str | None = typer.Option(None, "--valid-from", help="First valid day (default today)."),
    valid_until: str | None = typer.Option(
        None, "--valid-until", help="Last valid day of an approval (at most 2 years)."
    ),
    home: Path | None = _home(),
    json_out: bool = _json(),
) -> None:
    """Record the ethics committee's decision (audit: study.decide).  A later decision renews or revokes."""
    h = resolve_home(home)
    with Registry(h) as reg:
        d = reg.decide(
            study,
            decision=decision,
            approver=approver,
            conditions=conditions,
            valid_from=_day(valid_from, "--valid-from"),
            valid_until=_day(valid_until, "--valid-until"),
        )
    audit.record(
        h.audit,
        "study.decide",
        actor=approver,
        details={
            "study": study,
            "decision": d.decision,
            "valid_from": str(d.valid_from or ""),
            "valid_until": str(d.valid_until or ""),
        },
    )
    if json_out:
        print_json({"study": study, **d.to_json()})
    else:
        period = f" valid {d.valid_from} .. {d.valid_until}" if d.decision == "approve" else ""
        console.print(f"study [bold]{study}[/]: {d.decision}{period}")


def _state(reg: Registry, s: Study, today: date) -> tuple[str, Decision | None]:
    latest = reg.latest(s.id)
    return state_of(latest, today), latest


@study_app.command("list")
def list_studies(home: Path | None = _home(), json_out: bool = _json()) -> None:
    """List the studies with their state today."""
    h = resolve_home(home)
    today = date.today()
    with Registry(h) as reg:
        rows = [(s, *_state(reg, s, today), len(reg.releases(s.id))) for s in reg.studies()]
    if json_out:
        print_json(
            [
                {**s.to_json(), "state": st, "decision": d.to_json() if d else None, "releases": n}
                for s, st, d, n in rows
            ]
        )
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("study", "state", "valid until", "items", "releases", "title"):
        table.add_column(col, overflow="fold")
    for s, st, d, n in rows:
        until = str(d.valid_until) if d and d.valid_until else "—"
        table.add_row(s.id, st, until, ",".join(s.items), str(n), escape(s.title))
    console.print(table)


@study_app.command()
def show(
    study: str = typer.Argument(..., help="The study id."),
    home: Path | None = _home(),
    json_out: bool = _json(),
) -> None:
    """Show a study: application, every decision, every release."""
    h = resolve_home(home)
    today = date.today()
    with Registry(h) as reg:
        s = reg.get(study)
        decisions = reg.decisions(study)
        releases = reg.releases(study)
        state = state_of(decisions[-1] if decisions else None, today)
    if json_out:
        print_json(
            {
                **s.to_json(),
                "state": state,
                "decisions": [d.to_json() for d in decisions],
                "releases": [r.to_json() for r in releases],
            }
        )
        return
    console.print(f"[bold]{s.id}[/] {escape(s.title)} — [bold]{state}[/]")
    console.print(f"applicant: {escape(s.applicant)}; submitted {s.submitted_at}")
    console.print(f"purpose: {escape(s.purpose)}", soft_wrap=True)
    console.print(f"protocol: {escape(s.protocol_name)} sha256 {s.protocol_sha256}", soft_wrap=True)
    console.print(f"items: {', '.join(s.items)}; period of care {s.period}")
    for d in decisions:
        period = f" valid {d.valid_from} .. {d.valid_until}" if d.decision == "approve" else ""
        cond = f"; conditions: {escape(d.conditions)}" if d.conditions else ""
        console.print(
            f"decision #{d.seq} {d.decided_at}: {d.decision} by {escape(d.approver)}{period}{cond}",
            soft_wrap=True,
        )
    for r in releases:
        stamp = datetime.fromisoformat(r.released_at.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
        console.print(
            f"release {r.run_id} {stamp}: {escape(r.spec_name)}, {r.cells} cells"
            f" ({r.primary_cells} primary, {r.secondary_cells} secondary suppressed) → {escape(r.directory)}",
            soft_wrap=True,
        )

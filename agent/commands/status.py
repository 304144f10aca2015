"""``hakobune agent status``: last receipt, pending outbox, quarantine, holds and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from agent.home import home_option, open_state_db
from agent.ledger import Hold, OutboxItem, StreamState
from agent.state import StateDB
from hakobune.console import console, print_json


def agent_status(db: StateDB) -> dict[str, Any]:
    """The agent's state as a JSON-ready dict."""
    with db.transaction() as s:  # one snapshot of everything shown
        streams = []
        for st in StreamState.all(s):
            last_acked = s.execute(
                "SELECT acked_at FROM outbox WHERE stream = ? AND status = 'acked'"
                " ORDER BY sequence DESC LIMIT 1",
                (st.stream,),
            ).fetchone()
            streams.append(
                {
                    "stream": st.stream,
                    "last_sequence": st.last_sequence,
                    "acked_sequence": st.acked_sequence,
                    "baseline_sequence": st.baseline_sequence,
                    "baseline_at": st.baseline_at,
                    "last_receipt_at": last_acked[0] if last_acked else None,
                }
            )
        pending = [
            {
                "name": o.name,
                "size": o.size,
                "kind": o.kind,
                "created_at": o.created_at,
                "attempts": o.attempts,
                "last_error": o.last_error,
            }
            for o in OutboxItem.select(s, "WHERE status = 'pending' ORDER BY sequence")
        ]
        quarantine = [
            {"file": relpath.rsplit("/", 1)[-1], "path": relpath, "reason": reason, "since": first_seen}
            for relpath, reason, first_seen in s.execute(
                "SELECT relpath, reason, first_seen FROM quarantine ORDER BY relpath"
            )
        ]
        holds = [
            {"at": h.at, "reason": h.reason, "confirmed_at": h.confirmed_at, "confirmed_by": h.confirmed_by}
            for h in Hold.select(s, "WHERE released_sequence IS NULL ORDER BY id")
        ]
        (total_sent,) = s.execute("SELECT count(*) FROM outbox").fetchone()
    return {
        "streams": streams,
        "changesets": total_sent,
        "pending": pending,
        "held": holds,
        "quarantine": quarantine,
        "errors": [p["last_error"] for p in pending if p["last_error"]],
    }


def status(
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    home: Path = home_option(),
) -> None:
    """Show the last receipt, the pending outbox, held days, quarantined files and errors."""
    with open_state_db(home, create=False) as db:
        doc = agent_status(db)
    if json_out:
        print_json(doc)
        return
    for st in doc["streams"]:
        console.print(
            f"[bold]{st['stream']}[/]: sealed up to {st['last_sequence']}, acknowledged up to "
            f"{st['acked_sequence']} (last receipt {st['last_receipt_at'] or 'never'}), "
            f"baseline {st['baseline_sequence']} at {st['baseline_at'] or '-'}"
        )
    if not doc["streams"]:
        console.print("nothing synced yet")
    if doc["pending"]:
        t = Table("changeset", "bytes", "kind", "sealed at", "attempts", "last error", title="pending")
        for p in doc["pending"]:
            t.add_row(
                p["name"],
                f"{p['size']:,}",
                p["kind"],
                p["created_at"],
                str(p["attempts"]),
                p["last_error"] or "",
            )
        console.print(t)
    for h in doc["held"]:
        state = (
            f"confirmed by {h['confirmed_by']}"
            if h["confirmed_at"]
            else "waiting for 'hakobune agent confirm'"
        )
        console.print(f"[red]held[/] {h['at']}: {h['reason']} ({state})")
    if doc["quarantine"]:
        q = Table(
            "file", "reason", title=f"quarantined: {len(doc['quarantine'])} files", title_style="bold red"
        )
        for item in doc["quarantine"]:
            q.add_row(item["file"], item["reason"])
        console.print(q)

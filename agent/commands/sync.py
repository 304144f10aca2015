"""``hakobune agent sync`` (one run) and ``hakobune agent confirm`` (release a held day)."""

from __future__ import annotations

import getpass
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from agent.config import load_config
from agent.home import home_option, open_state_db
from agent.sync import confirm_hold, run_sync
from hakobune.console import console, print_json, progress
from hakobune.errors import HakobuneError


def sync(
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for the center's receipts."),
    no_ship: bool = typer.Option(False, "--no-ship", help="Seal into the outbox but do not upload."),
    home: Path = home_option(),
) -> None:
    """One sync: find the day's changes, seal a changeset into the outbox, upload what is pending and
    collect receipts.  Exit status 3 when the attack guard holds the day back."""
    doc = run_once(home, wait=wait, ship_it=not no_ship, show_progress=not json_out)
    if json_out:
        print_json(doc)
    else:
        _render(doc)
    if doc["ship"] and doc["ship"]["errors"]:
        raise typer.Exit(1)


def run_once(
    home: Path, *, wait: float = 0.0, ship_it: bool = True, show_progress: bool = False
) -> dict[str, Any]:
    """Sync and ship once; the result as a JSON-ready dict (used by ``sync``, ``run`` and the drill)."""
    cfg = load_config(home)
    with open_state_db(home) as db:
        with progress(show_progress) as bar:
            task = bar.add_task("sealing", total=None, rate="")
            started = time.perf_counter()

            def tick(n: int) -> None:
                bar.advance(task, n)
                done = bar.tasks[0].completed
                bar.update(task, rate=f"{done / max(time.perf_counter() - started, 1e-9):,.0f} patients/s")

            result = run_sync(cfg, db, on_progress=tick)
        doc: dict[str, Any] = {"sync": asdict(result), "ship": None}
        if ship_it:
            from agent.ship import connect, ship  # the transports (SFTP) load only when shipping

            with connect(cfg) as transport:
                shipped = ship(cfg, db, transport, wait=wait)
            doc["ship"] = shipped.__dict__
    return doc


def _render(doc: dict[str, Any]) -> None:
    s = doc["sync"]
    if s["status"] == "sealed":
        b = s["build"]
        console.print(
            f"sealed [bold]{s['name']}[/] ({s['kind']}, {s['size']:,} bytes): {b['patients']:,} patients, "
            f"{b['puts']:,} upserts, {b['dels']:,} deletions, {b['tombstones']:,} tombstones "
            f"in {s['seconds']:.2f} s"
        )
    else:
        console.print(f"nothing to send ({s['seconds']:.2f} s)")
    r = s.get("research")
    if r is not None and r["status"] == "sealed":
        b = r["build"]
        console.print(
            f"sealed [bold]{r['name']}[/] ({r['kind']}, {r['size']:,} bytes, de-identified): "
            f"{b['patients']:,} patients, {b['puts']:,} upserts, {b['dels']:,} deletions, "
            f"{b['tombstones']:,} tombstones, {b['opted_out']:,} opted out of research"
        )
    elif r is not None:
        console.print("research: nothing to send")
    if s["build"].get("quarantined"):
        console.print(
            f"[yellow]{s['build']['quarantined']:,} files quarantined[/]; see 'hakobune agent status'"
        )
    sh = doc["ship"]
    if sh is not None:
        console.print(
            f"uploaded {len(sh['uploaded'])}, acknowledged {len(sh['acked'])}, pending {len(sh['pending'])}"
        )
        for err in sh["errors"]:
            console.print(f"[red]error[/]: {err}", soft_wrap=True)


def confirm(
    by: str = typer.Option("", "--by", help="Who confirms (recorded); default: the login name."),
    home: Path = home_option(),
) -> None:
    """Confirm the day the attack guard held back: the next sync sends it."""
    with open_state_db(home, create=False) as db:
        hold = confirm_hold(db, by or getpass.getuser())
    if hold is None:
        raise HakobuneError("no held day to confirm")
    console.print(f"confirmed the hold of {hold.at} ({hold.reason}); the next sync sends it")

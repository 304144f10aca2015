"""``hakobune center …``: the server center's commands (center operators)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from center.catalog import Catalog
from center.config import DEFAULT_HOME, HOME_ENVVAR, load_center_config
from center.enroll import enroll as enroll_hospital
from center.enroll import init_center, parse_agent_key, read_ssh_key
from center.ingest import IngestReport, ingest_all
from center.keys import load_center_public_key
from hakobune.console import console, print_json

app = typer.Typer(
    no_args_is_help=True, help="Server center: enroll, sshd, ingest, status (center operators)."
)
log = logging.getLogger("hakobune.center")


def _home() -> Any:
    return typer.Option(DEFAULT_HOME, "--home", envvar=HOME_ENVVAR, help=f"Center home. Env: {HOME_ENVVAR}.")


@app.command()
def init(
    catalog: str | None = typer.Option(None, "--catalog", help="Catalog URL (default: SQLite in the home)."),
    home: Path = _home(),
) -> None:
    """Create a center home: configuration, receipt key, catalog, folders."""
    cfg = init_center(home, catalog)
    key = load_center_public_key(cfg.layout)
    console.print(f"center home [bold]{home}[/] ready; catalog {cfg.catalog_url.split('@')[-1]}")
    console.print(
        f"receipt key (give to every agent as keys/center.pub): {key.text().strip()}", soft_wrap=True
    )


@app.command()
def enroll(
    hospital: str = typer.Option(..., "--hospital", help="Hospital ID."),
    name: str = typer.Option("", "--name", help="Hospital name (for operators; never in released data)."),
    agent_key: str = typer.Option(..., "--agent-key", help="The agent's public signing key, or its file."),
    ssh_key: str = typer.Option(..., "--ssh-key", help="The agent's SSH public key line, or its .pub file."),
    home: Path = _home(),
) -> None:
    """Register a hospital: its agent signing key and SSH key; create its inbox."""
    cfg = load_center_config(home)
    with Catalog.open(cfg.catalog_url) as catalog:
        row = enroll_hospital(
            cfg,
            catalog,
            hospital,
            name or hospital,
            parse_agent_key(agent_key, "--agent-key"),
            read_ssh_key(ssh_key),
        )
    console.print(
        f"enrolled [bold]{row.id}[/]; run 'hakobune center sshd' (as root) to give it an SFTP account"
    )


@app.command()
def sshd(
    port: int | None = typer.Option(None, "--port", help="Port (default from center.toml)."),
    listen: str | None = typer.Option(None, "--listen", help="Address (default from center.toml)."),
    home: Path = _home(),
) -> None:
    """Generate the OpenSSH sshd configuration and one append-only SFTP account per enrolled hospital
    (needs root).  Start it with: sshd -f HOME/sshd/sshd_config."""
    from center.sshd import write_sshd

    cfg = load_center_config(home)
    with Catalog.open(cfg.catalog_url) as catalog:
        hospitals = {h.id: h.ssh_key for h in catalog.hospitals() if h.active}
    path = write_sshd(cfg.layout, hospitals, listen=listen or cfg.listen, port=port or cfg.port)
    console.print(f"wrote {path} for {len(hospitals)} hospitals")


@app.command()
def ingest(
    once: bool = typer.Option(True, "--once/--no-once", help="One pass over the inboxes (the default)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    home: Path = _home(),
) -> None:
    """Verify and store what the hospitals uploaded; write signed receipts."""
    cfg = load_center_config(home)
    with Catalog.open(cfg.catalog_url) as catalog:
        report = ingest_all(cfg, catalog)
    if json_out:
        print_json(dataclasses.asdict(report))
    else:
        _render_ingest(report)
    if report.rejected:
        raise typer.Exit(1)


def _render_ingest(r: IngestReport) -> None:
    console.print(
        f"stored {len(r.stored)} ({r.bytes:,} bytes), duplicates {len(r.duplicates)}, "
        f"waiting {len(r.waiting)}, uploading {len(r.incomplete)}, rejected {len(r.rejected)}, "
        f"shredded keys {r.shredded}"
    )
    for name, reason in r.rejected:
        console.print(f"[red]rejected[/] {name}: {reason}", soft_wrap=True)


@app.command()
def serve(home: Path = _home()) -> None:
    """Run ingest continuously: a watcher on the inboxes plus a periodic sweep."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_center_config(home)
    wake = threading.Event()

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            wake.set()

    observer = Observer()
    inbox = cfg.layout.home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    observer.schedule(Wake(), str(inbox), recursive=True)
    observer.start()
    log.info("center ingest running; sweep every %.0f s", cfg.sweep_seconds)
    try:
        with Catalog.open(cfg.catalog_url) as catalog:
            while True:
                report = ingest_all(cfg, catalog)
                if report.stored or report.rejected:
                    log.info("stored %d, rejected %d", len(report.stored), len(report.rejected))
                wake.wait(cfg.sweep_seconds)
                wake.clear()
    except KeyboardInterrupt:
        pass
    finally:
        observer.stop()
        observer.join()


@app.command()
def status(
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    home: Path = _home(),
) -> None:
    """Per hospital: last changeset, its age, gaps, bytes, errors; stale ones flagged."""
    cfg = load_center_config(home)
    with Catalog.open(cfg.catalog_url) as catalog:
        rows = catalog.status(datetime.now(UTC), stale_hours=cfg.stale_hours)
    if json_out:
        print_json([_status_doc(r) for r in rows])
        return
    t = Table(
        "hospital", "stream", "last", "age (h)", "changesets", "bytes", "gaps", "rejected 7d", "last error"
    )
    for r in rows:
        age = "-" if r.age_hours is None else f"{r.age_hours:.1f}"
        t.add_row(
            r.hospital,
            r.stream,
            str(r.last_sequence or "-"),
            f"[red]{age} STALE[/]" if r.stale else age,
            str(r.changesets),
            f"{r.bytes:,}",
            ", ".join(f"{a}-{b}" for a, b in r.gaps) or "-",
            str(r.rejections),
            r.last_error or "",
        )
    console.print(t)


def _status_doc(r: Any) -> dict[str, Any]:
    doc = dataclasses.asdict(r)
    for k, v in doc.items():
        if isinstance(v, datetime):
            doc[k] = v.strftime("%Y-%m-%dT%H:%M:%SZ")
    return doc

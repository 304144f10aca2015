"""``hakobune center …``: the server center's commands (center operators)."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from center.catalog import Catalog
from center.config import (
    DEFAULT_HOME,
    HOME_ENVVAR,
    CenterConfig,
    MirrorConfig,
    load_center_config,
    mirror_config,
    parse_listen,
)
from center.enroll import enroll as enroll_hospital
from center.enroll import init_center, parse_agent_key, read_ssh_key
from center.ingest import IngestReport, ingest_all
from center.keys import load_center_public_key
from hakobune.console import console, print_json, progress
from hakobune.errors import ConfigError, InputError

app = typer.Typer(
    no_args_is_help=True,
    help="Server center: enroll, sshd, ingest, replicate, verify, status, dashboard (center operators).",
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
    """Run ingest continuously: a watcher on the inboxes plus a periodic sweep; and, when the mirror
    section of center.toml sets every_minutes, replication to the mirror on that schedule."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    from center.replicate import replicate_every

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_center_config(home)
    wake = threading.Event()
    stop = threading.Event()
    if cfg.mirror is not None and cfg.mirror.every_minutes > 0:
        threading.Thread(target=replicate_every, args=(cfg, stop), name="replicate", daemon=True).start()
        log.info("replicating to %s every %g min", cfg.mirror.url, cfg.mirror.every_minutes)

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
        stop.set()
        observer.stop()
        observer.join()


@app.command()
def replicate(
    mirror: str | None = typer.Option(
        None,
        "--mirror",
        help="The mirror center: its home directory, or sftp://host:port "
        "(default: url in the mirror section of center.toml).",
    ),
    audit: Path | None = typer.Option(
        None,
        "--audit",
        help="Audit log directory whose signed head is copied too (default: audit in the mirror section).",
    ),
    recheck: bool = typer.Option(
        False, "--recheck", help="Check every changeset's receipt at the mirror again, not only new ones."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    home: Path = _home(),
) -> None:
    """Copy every stored changeset the mirror has not confirmed yet; the mirror verifies each one itself.
    Exit 1 if the mirror refused anything or a hospital could not be replicated."""
    from center.replicate import open_mirror, pending_bytes
    from center.replicate import replicate as run_replication

    cfg = load_center_config(home)
    spec = _mirror_spec(cfg, mirror)
    target = open_mirror(spec, cfg.layout)
    try:
        with Catalog.open(cfg.catalog_url) as catalog:
            total = pending_bytes(catalog, target.key.fingerprint, recheck=recheck)
            with progress(not json_out) as bar:
                task = bar.add_task("replicating", total=total, rate="")
                report = run_replication(
                    cfg,
                    catalog,
                    target,
                    audit=audit or spec.audit,
                    recheck=recheck,
                    on_progress=lambda n: bar.advance(task, n),
                )
    finally:
        target.close()
    if json_out:
        print_json(report.to_json())
    else:
        _render_replication(report)
    if not report.ok:
        raise typer.Exit(1)


def _mirror_spec(cfg: CenterConfig, url: str | None) -> MirrorConfig:
    configured = cfg.mirror
    if url is None:
        if configured is None:
            raise ConfigError(
                f"{cfg.layout.config}: no [mirror] configured; pass --mirror DIR|sftp://host:port"
            )
        return configured
    if configured is None:
        return mirror_config(url)
    return mirror_config(
        url,
        center_key=configured.center_key,
        ssh_key=configured.ssh_key,
        known_hosts=configured.known_hosts,
        audit=configured.audit,
        bwlimit=configured.bwlimit,
    )


def _render_replication(report: Any) -> None:
    console.print(
        f"mirror [bold]{escape(report.mirror)}[/] (receipt key {report.mirror_key}): sent {report.sent} "
        f"changesets ({report.bytes_sent:,} bytes)",
        soft_wrap=True,
    )
    for h in report.hospitals:
        for s in h.streams:
            state = "[green]in sync[/]" if not s.lag else f"[yellow]{s.lag} behind[/]"
            console.print(
                f"  {escape(h.hospital)} {s.stream}: primary #{s.primary}, mirror #{s.mirrored} ({state}), "
                f"sent {len(s.sent)}"
            )
        for name, reason in h.refused:
            console.print(
                f"  [red]refused by the mirror[/] {escape(h.hospital)}/{escape(name)}: {escape(reason)}",
                soft_wrap=True,
            )
        for error in h.errors:
            console.print(f"  [red]error[/] {escape(error)}", soft_wrap=True)
    if report.audit_head is not None:
        a = report.audit_head
        verb = "copied" if a.copied else "already at the mirror:"
        console.print(f"audit head {verb} {a.size:,} entries, {a.time}, key {a.key}", soft_wrap=True)
    for note in report.notes:
        console.print(f"[yellow]![/] {escape(note)}", soft_wrap=True)
    for error in report.errors:
        console.print(f"[red]error[/] {escape(error)}", soft_wrap=True)


@app.command("verify")
def verify_store(
    heal_from: Path | None = typer.Option(
        None,
        "--heal-from",
        help="The mirror center's home (a directory, local or mounted read-only): replace bad blobs with "
        "its verified copies.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    home: Path = _home(),
) -> None:
    """Scrub the store: re-hash and re-verify every stored changeset against the catalog, and list files
    the catalog does not know.  Exit 0 when all is good (or healed), 1 when problems are left."""
    from center.scrub import heal_source, scrub, total_bytes

    cfg = load_center_config(home)
    source = heal_source(heal_from, cfg.layout) if heal_from is not None else None
    with Catalog.open(cfg.catalog_url) as catalog:
        total = total_bytes(catalog)
        with progress(not json_out) as bar:
            task = bar.add_task("verifying", total=total, rate="")
            report = scrub(cfg, catalog, heal_from=source, on_progress=lambda n: bar.advance(task, n))
    if json_out:
        print_json(report.to_json())
    else:
        for p in report.problems:
            mark = "[green]healed[/]" if p.healed else "[red]✘[/]"
            line = f"{mark} {escape(p.hospital)} {escape(p.line())}"
            if p.note:
                line += f" — {escape(p.note)}"
            console.print(line, soft_wrap=True)
        doc = report.to_json()
        console.print(
            f"checked {doc['blobs']:,} changesets ({doc['bytes']:,} bytes) of {len(report.hospitals)} "
            f"hospitals: {doc['problems']} problems, {doc['healed']} healed, {len(report.left)} left"
        )
        console.print("[bold green]store OK[/]" if report.ok else "[bold red]store has problems[/]")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def status(
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    html: Path | None = typer.Option(
        None, "--html", help="Also write the dashboard page to this file (one static HTML file)."
    ),
    home: Path = _home(),
) -> None:
    """Per hospital: last changeset, its age, gaps, bytes, errors, the mirror's lag and the last scrub;
    stale ones flagged."""
    from center.dashboard import collect_status, render_page, status_json

    cfg = load_center_config(home)
    now = datetime.now(UTC)
    with Catalog.open(cfg.catalog_url) as catalog:
        rows = collect_status(cfg, catalog, now)
    if html is not None:
        _write_text(
            html,
            render_page(
                rows, now=now, stale_hours=cfg.stale_hours, refresh_seconds=cfg.dashboard_refresh_seconds
            ),
        )
    if json_out:
        print_json([status_json(r) for r in rows])
        return
    t = Table(
        "hospital",
        "stream",
        "last",
        "age (h)",
        "changesets",
        "bytes",
        "gaps",
        "rejected 7d",
        "mirror lag",
        "scrub",
        "last error",
    )
    for r in rows:
        age = "-" if r.age_hours is None else f"{r.age_hours:.1f}"
        scrub = "-" if r.scrub_at is None else ("ok" if not r.scrub_problems else f"{r.scrub_problems} left")
        t.add_row(
            escape(r.hospital),
            r.stream,
            str(r.last_sequence or "-"),
            f"[red]{age} STALE[/]" if r.stale else age,
            str(r.changesets),
            f"{r.bytes:,}",
            ", ".join(f"{a}-{b}" for a, b in r.gaps) or "-",
            str(r.rejections),
            "-" if r.mirror_lag is None else str(r.mirror_lag),
            scrub if not r.scrub_problems else f"[red]{scrub}[/]",
            escape(r.last_error or ""),
        )
    console.print(t)
    if html is not None:
        console.print(f"wrote {escape(str(html))}")


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` atomically (temporary name, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(str(path), f"cannot write ({e.strerror})") from None


@app.command()
def dashboard(
    listen: str | None = typer.Option(
        None,
        "--listen",
        help="host:port to serve on (default: the dashboard section of center.toml, 127.0.0.1:8470).",
    ),
    home: Path = _home(),
) -> None:
    """Serve the read-only status page (auto-refreshing) until Ctrl-C; /status.json has the same data."""
    from center.dashboard import DashboardServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_center_config(home)
    host, port = parse_listen(listen or cfg.dashboard_listen, "--listen")
    with Catalog.open(cfg.catalog_url) as catalog:
        try:
            server = DashboardServer(cfg, catalog, host, port)
        except OSError as e:
            raise ConfigError(f"dashboard: cannot listen on {host}:{port} ({e.strerror or e})") from None
        console.print(f"dashboard on {server.url} (read-only; Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()

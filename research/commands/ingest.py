"""``hakobune research ingest`` (research changesets into the de-identified database), ``research
export-parquet`` (its tables as Parquet files) and ``research keygen`` (the analysis center's key pair)."""

from __future__ import annotations

from pathlib import Path

import typer

from hakobune import audit as audit_log
from hakobune.commands.options import actor_option, audit_option
from hakobune.console import console, err_console, print_json, progress
from hakobune.errors import ConfigError
from hakobune.keys import (
    RecipientPrivateKey,
    check_suite,
    load_recipient_private,
    write_key,
)
from hakobune.sealed import SealedFile
from research.cli import app as app
from research.database import INGEST_MEMORY_LIMIT, ResearchDB
from research.ingest import IngestReport, ingest, sources_from_center, sources_from_store


@app.command("ingest")
def ingest_command(
    center: Path | None = typer.Option(
        None, "--center", help="A center (or mirror) home: its store and its catalog's agent keys."
    ),
    store: Path | None = typer.Option(
        None, "--store", help="A store folder of <hospital>/research/ changesets (instead of --center)."
    ),
    agent_keys: Path | None = typer.Option(
        None, "--agent-keys", help="With --store: folder of <hospital>.pub agent public keys."
    ),
    key: Path = typer.Option(..., "--key", help="The analysis center's private key (0600)."),
    db: Path = typer.Option(..., "--db", help="The research database (DuckDB file; created if missing)."),
    memory_limit: str = typer.Option(
        INGEST_MEMORY_LIMIT,
        "--memory-limit",
        help="DuckDB's memory cap (it spills the rest beside the database), e.g. 1GB.",
    ),
    audit: Path = audit_option(),
    actor: str = actor_option(),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Load every new research changeset into the de-identified database, hospital by hospital, each
    changeset verified, decrypted, staged and applied in one transaction (audit: research.ingest).  Exit
    status 2 if any was refused."""
    if (center is None) == (store is None):
        raise ConfigError("give either --center HOME or --store DIR (with --agent-keys DIR)")
    if store is not None and agent_keys is None:
        raise ConfigError("--store needs --agent-keys DIR (the hospitals' <hospital>.pub agent keys)")
    private = load_recipient_private(key)
    if center is not None:
        sources = sources_from_center(center)
    else:
        assert store is not None and agent_keys is not None
        sources = sources_from_store(store, agent_keys)
    with ResearchDB.open(db, memory_limit=memory_limit) as database, progress(not json_out) as bar:
        task = bar.add_task("ingesting", total=None, rate="")

        def tick(sealed: SealedFile) -> None:
            bar.advance(task, 1)
            bar.update(task, description=f"{sealed.header.hospital} {sealed.path.name}")

        report = ingest(database, sources, private, on_changeset=tick)
        counts = database.counts()
    audit_log.record(audit, "research.ingest", actor=actor, details=report.audit_details())
    doc = {**report.to_json(), "tables": counts}
    if json_out:
        print_json(doc)
    else:
        _render(report, counts)
    if report.refused:
        raise typer.Exit(2)


def _render(report: IngestReport, counts: dict[str, int]) -> None:
    doc = report.to_json()
    for h in report.hospitals:
        line = (
            f"[bold]{h.hospital}[/]: applied {len(h.applied)} changeset(s) "
            f"({h.puts:,} records, {h.dels:,} deletions, {h.tombstones:,} tombstones), "
            f"{h.already} already in the database"
        )
        console.print(line)
        if h.gap:
            console.print(f"  [yellow]gap[/]: {h.gap}", soft_wrap=True)
        for name, reason in h.unreadable:
            console.print(f"  [yellow]unreadable[/]: {name}: {reason}", soft_wrap=True)
    for file, reason in report.refused:
        err_console.print(f"[red]refused[/] {file}: {reason}", soft_wrap=True)
    rate = doc["records_per_second"]
    console.print(
        f"{doc['records']:,} records in {report.seconds:.1f} s"
        + (f" ({rate:,} records/s)" if rate else "")
        + "; rows: "
        + ", ".join(f"{t} {n:,}" for t, n in counts.items() if t not in ("meta", "ingested", "tokens"))
    )


@app.command("export-parquet")
def export_parquet_command(
    db: Path = typer.Option(..., "--db", help="The research database (DuckDB file)."),
    out: Path = typer.Option(..., "--out", help="Folder for one <table>.parquet per table."),
    json_out: bool = typer.Option(False, "--json", help="Print the files written as JSON."),
) -> None:
    """Write every table of the de-identified database as a Parquet file (the open, scalable store)."""
    with ResearchDB.open(db, create=False) as database:
        files = database.export_parquet(out)
        counts = database.counts()
    if json_out:
        print_json({t: {"file": str(p), "rows": counts[t]} for t, p in files.items()})
        return
    for table, path in files.items():
        console.print(f"{path}  ({counts[table]:,} rows)")


@app.command("keygen")
def keygen_command(
    out: Path = typer.Option(..., "--out", help="Folder for analysis.key (0600) and analysis.pub."),
    suite: str = typer.Option(
        "mlkem768-x25519", "--suite", help="mlkem768-x25519 (default) or cryptrec-p256."
    ),
) -> None:
    """Create the analysis center's key pair: hospitals seal research changesets to analysis.pub; the
    private key stays at the analysis center (research ingest --key)."""
    key = RecipientPrivateKey.generate(check_suite(suite))
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_key(out / "analysis.key", key)
    write_key(out / "analysis.pub", key.public)
    console.print(
        f"analysis key pair in [bold]{out}[/] (fingerprint {key.public.fingerprint}); "
        "give analysis.pub to the hospitals, keep analysis.key here"
    )

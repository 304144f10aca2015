"""``hakobune media …``: helicopter disks (write, verify, open).  Thin: options in, :mod:`media.write`,
:mod:`media.verify` and :mod:`media.open` do the work, results out (rich for people, ``--json`` for
scripts).  docs/media.md describes the disk."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.panel import Panel

from hakobune.commands.options import actor_option, audit_option
from hakobune.console import console, err_console, print_json, progress
from hakobune.errors import ConfigError, InputError
from hakobune.keys import (
    SigningKey,
    load_recipient_private,
    load_recipient_public,
    load_signing_key,
    load_verify_key,
)
from media.manifest import TrustAnchor
from media.open import DiskRejected, open_disk
from media.stream import SEGMENT_SIZE
from media.verify import VerifyReport, verify_disk
from media.volumes import DEFAULT_PART_SIZE, parse_size
from media.write import WriteOutcome, write_release
from restore.fhir import ExportWindow
from restore.orders import parse_time

app = typer.Typer(
    no_args_is_help=True, help="Helicopter disks: write, verify and open encrypted portable media."
)


@app.callback()
def _media() -> None:
    """Helicopter disks: write, verify and open encrypted portable media."""


def _center_key_opt() -> Any:
    return typer.Option(
        ...,
        "--center-key",
        help="The center's public key file, or its fingerprint (32 hex digits): the only signer trusted.",
    )


def trust_anchor(value: str) -> TrustAnchor:
    """``--center-key``: a key file, else a fingerprint."""
    path = Path(value)
    if path.exists():
        return TrustAnchor.of_key(load_verify_key(path))
    return TrustAnchor.of_fingerprint(value)


def _signing_key(signing_key: Path | None, center: Path | None) -> SigningKey:
    if signing_key is not None:
        return load_signing_key(signing_key)
    if center is None:
        raise ConfigError("give --signing-key FILE or --center HOME (the center's key signs the manifest)")
    from center.keys import load_center_signing_key
    from center.layout import CenterLayout

    return load_center_signing_key(CenterLayout(center))


def write_secret_file(path: Path, text: str) -> None:
    """A new file, mode 0600 from the start, never over an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(str(path), "already exists; refusing to overwrite") from None
    except OSError as e:
        raise InputError(str(path), f"cannot create ({e.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def _show_written(w: WriteOutcome, passphrase_file: Path | None) -> None:
    d = w.disk
    vols = len(d.roots)
    console.print(
        f"disk {d.disk_id}: {d.patients:,} patients of {w.hospital} (order {w.order}) for {w.recipient}; "
        f"{vols} volume{'s' if vols > 1 else ''}, {d.files} files, {d.disk_bytes / 1e6:,.1f} MB "
        f"in {d.seconds:.1f} s; signed by {w.signer_key}"
    )
    for r in d.roots:
        console.print(f"  {r}")
    for s in w.skipped:
        err_console.print(f"[yellow]skipped[/]: {s}")
    if passphrase_file is not None:
        console.print(f"passphrase written to {passphrase_file} (0600): send it by another channel")
        return
    console.print(
        Panel(
            f"[bold]{w.passphrase}[/]\n\n"
            "このパスフレーズは一度だけ表示されます。\n"
            "ディスクとは別の経路（電話・別便）で受領病院へ伝えてください。\n"
            "Shown once. Send it to the recipient by another channel\n"
            "(phone, separate courier), never with the disk.",
            title=f"passphrase / パスフレーズ — disk {d.disk_id}",
            expand=False,
        )
    )


@app.command()
def write(
    restore: Path = typer.Option(
        ..., "--restore", "-r", help="The restore folder (made by 'restore unlock')."
    ),
    order: Path = typer.Option(
        ..., "--order", help="The release order the restore folder was unlocked with."
    ),
    out: Path = typer.Option(..., "--out", help="New or empty folder: the disk (or its volume-N folders)."),
    recipient_key: Path | None = typer.Option(
        None, "--recipient-key", help="The recipient hospital's public key: must be the one the order names."
    ),
    max_volume: str | None = typer.Option(
        None, "--max-volume", help="Split across volumes of at most this size (700M, 4.7G, 64GiB …)."
    ),
    part_size: str = typer.Option(
        str(DEFAULT_PART_SIZE), "--part-size", help="Largest payload file (default just below 4 GiB, FAT32)."
    ),
    segment_size: int = typer.Option(SEGMENT_SIZE, "--segment-size", hidden=True),
    signing_key: Path | None = typer.Option(None, "--signing-key", help="The center's Ed25519 key file."),
    center: Path | None = typer.Option(None, "--center", help="Or: the center home (its key signs)."),
    policy: Path | None = typer.Option(
        None, "--policy", help="custody.json: also check the order's approvals."
    ),
    no_viewer: bool = typer.Option(False, "--no-viewer", help="Leave out the offline browser viewer."),
    passphrase_file: Path | None = typer.Option(
        None, "--passphrase-file", help="Write the passphrase to this new file (0600) instead of showing it."
    ),
    months: int = typer.Option(6, "--months", min=1, help="Medications and labs of the last N months."),
    as_of: str | None = typer.Option(None, "--as-of", help="Window end date (default: today)."),
    workers: int = typer.Option(0, "--workers", help="Processes building bundles (0 = one per core)."),
    now: str | None = typer.Option(None, "--now", hidden=True, help="Pretend it is this time (drills)."),
    audit: Path = audit_option(),
    actor: str = actor_option(),
    json: bool = typer.Option(False, "--json", help="Print the figures (and the passphrase) as JSON."),
) -> None:
    """Write the released patients to an encrypted, signed disk (and print its passphrase once)."""
    try:
        end = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise ConfigError(f"--as-of {as_of!r}: expected YYYY-MM-DD") from None
    if passphrase_file is not None and passphrase_file.exists():
        raise InputError(str(passphrase_file), "already exists; refusing to overwrite")
    outcome = write_release(
        restore,
        order=order,
        out=out,
        signing_key=_signing_key(signing_key, center),
        audit=audit,
        actor=actor,
        recipient_key=load_recipient_public(recipient_key) if recipient_key is not None else None,
        policy=policy,
        max_volume=parse_size(max_volume, "--max-volume") if max_volume is not None else None,
        part_size=parse_size(part_size, "--part-size"),
        segment_size=segment_size,
        viewer=not no_viewer,
        window=ExportWindow(months_medications=months, months_labs=months),
        as_of=end,
        workers=workers,
        now=datetime.now(UTC) if now is None else parse_time(now, "--now"),
        show_progress=not json,
    )
    if passphrase_file is not None:
        write_secret_file(passphrase_file, outcome.passphrase)
    if json:
        print_json(outcome.to_json(with_passphrase=passphrase_file is None))
        return
    _show_written(outcome, passphrase_file)


def _bytes_progress(label: str, enabled: bool) -> Any:
    bar = progress(enabled)
    task = bar.add_task(label, total=None, rate="")

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, rate=f"{done / 1e6:,.0f}/{total / 1e6:,.0f} MB")

    return bar, update


def _show_report(report: VerifyReport) -> None:
    m = report.manifest
    if m is not None:
        console.print(
            f"disk {m.disk_id}: hospital {m.hospital}, order {m.order_id}, {m.patients:,} patients, "
            f"{m.volume_count} volume(s); {report.files} files, {report.bytes / 1e6:,.1f} MB checked"
        )
    for n in report.notes:
        err_console.print(f"[yellow]note[/]: {n}", highlight=False)
    for p in report.problems:
        err_console.print(f"[red]problem[/]: {p}", highlight=False)
    console.print(
        "[green]PASS[/]: complete, unaltered, signed by the trusted center key"
        if report.ok
        else "[red]FAIL[/]"
    )


@app.command()
def verify(
    dirs: list[Path] = typer.Argument(..., help="The volume folders (or the folder holding volume-N)."),
    center_key: str = _center_key_opt(),
    json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check signature, completeness across volumes and every file's SHA-256.  Exit 0 pass, 1 fail."""
    anchor = trust_anchor(center_key)
    bar, update = _bytes_progress("verifying", not json)
    with bar:
        report = verify_disk(dirs, anchor, on_progress=update)
    if json:
        print_json(report.to_json())
    else:
        _show_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _read_passphrase(passphrase: bool, passphrase_file: Path | None) -> str | None:
    if passphrase_file is not None:
        try:
            lines = passphrase_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise InputError(str(passphrase_file), f"cannot read ({e.strerror})") from None
        if not lines or not lines[0].strip():
            raise InputError(str(passphrase_file), "empty")
        return lines[0]
    if passphrase:
        return str(typer.prompt("Passphrase / パスフレーズ", hide_input=True))
    return None


@app.command(name="open")
def open_(
    dirs: list[Path] = typer.Argument(..., help="The volume folders (or the folder holding volume-N)."),
    out: Path = typer.Option(..., "--out", help="New or empty folder for fhir/*.json and bundles.ndjson."),
    key: Path | None = typer.Option(None, "--key", help="The recipient hospital's private key file."),
    passphrase: bool = typer.Option(False, "--passphrase", help="Open with the passphrase (asked, hidden)."),
    passphrase_file: Path | None = typer.Option(
        None, "--passphrase-file", help="Read the passphrase from this file instead of asking."
    ),
    center_key: str = _center_key_opt(),
    audit: Path = audit_option(),
    actor: str = actor_option(),
    json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Verify the disk, then decrypt it into OUT (refused, with nothing written, if anything fails)."""
    if (key is not None) == (passphrase or passphrase_file is not None):
        raise ConfigError("give either --key FILE or --passphrase [--passphrase-file F]")
    anchor = trust_anchor(center_key)
    private = load_recipient_private(key) if key is not None else None
    secret = _read_passphrase(passphrase, passphrase_file)
    bar = progress(not json)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total, rate="")
        bar.update(tasks[phase], completed=done, total=total, rate=f"{done / 1e6:,.0f}/{total / 1e6:,.0f} MB")

    try:
        with bar:
            result = open_disk(
                dirs,
                anchor,
                out,
                key=private,
                passphrase=secret,
                audit=audit,
                actor=actor,
                on_progress=update,
            )
    except DiskRejected as e:
        if json:
            print_json(e.report.to_json())
        else:
            _show_report(e.report)
        raise
    if json:
        print_json(result.to_json())
        return
    console.print(
        f"disk {result.disk_id} opened: {result.patients:,} bundles of {result.hospital} "
        f"(order {result.order}) in {result.out}/fhir and {result.out}/bundles.ndjson "
        f"({result.seconds:.1f} s)"
    )
    if result.unnamed:
        err_console.print(
            f"[yellow]note[/]: {result.unnamed} bundle(s) named by position (no usable patient ID)"
        )

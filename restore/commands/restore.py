"""``hakobune restore …``: unlock a released hospital, find its patients, export FHIR (disaster base).

``unlock`` is the only command that touches the release key: it checks the order and the custodians'
shares, rebuilds the key in memory, replays the hospital's chain into a restore folder (optionally writing
each patient's bundle as soon as it is rebuilt) and forgets the key when it exits.  ``search``, ``show``
and ``export`` work on that folder.  Every unlock, search and export is an audit-log entry; entries carry
counts and tokens, never names or IDs.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from hakobune.audit import AuditLog
from hakobune.audit import record as audit_record
from hakobune.commands.options import actor_option, audit_option
from hakobune.console import console, err_console, print_json, progress
from hakobune.custody import ShareInput, load_share, parse_mnemonic, read_passphrase_lines, share_file_header
from hakobune.errors import ConfigError, HakobuneError, InputError
from hakobune.keys import VerifyKey, load_verify_key
from restore.chain import plan_chain
from restore.database import RestoreDB
from restore.export import BundleExporter, ExportReport
from restore.fhir import ExportWindow
from restore.orders import parse_time
from restore.orders import unlock as unlock_order
from restore.rebuild import RebuildReport, rebuild
from restore.search.index import PatientIndex, Query

app = typer.Typer(
    no_args_is_help=True, help="Disaster base: unlock a released hospital, search patients, export FHIR."
)


@app.callback()
def _restore() -> None:
    """Disaster base: unlock a released hospital, search patients, export FHIR."""


def _folder_opt() -> Any:
    return typer.Option(..., "--restore", "-r", help="The restore folder (made by 'restore unlock').")


def read_passphrases(path: Path | None) -> dict[str, str]:
    """``custodian-id=passphrase`` lines from a private file (0600); none without a file."""
    return {} if path is None else {who: p for _, who, p in read_passphrase_lines(path)}


def gather_shares(
    shares: list[Path], passphrases: dict[str, str], hospital: str, *, interactive: bool
) -> list[ShareInput]:
    """Load each share file (``.share``: passphrase from ``passphrases`` by custodian id, else prompted) or
    word sheet (``.txt``)."""
    out: list[ShareInput] = []
    for path in shares:
        passphrase: str | None = None
        if path.suffix == ".share":
            member = str(share_file_header(path).get("member", ""))
            passphrase = passphrases.get(member)
            if passphrase is None:
                if not interactive:
                    raise InputError(str(path), f"no passphrase for custodian {member} (use --passphrases)")
                passphrase = typer.prompt(f"Passphrase of {member} for {path.name}", hide_input=True)
        out.append(load_share(path, passphrase, hospital=hospital))
    return out


def _signer(center: Path | None, agent_key: Path | None, hospital: str) -> VerifyKey:
    if agent_key is not None:
        return load_verify_key(agent_key)
    if center is None:
        raise ConfigError("give --center HOME (the center's catalog knows the hospital) or --agent-key PUB")
    from center.catalog import Catalog
    from center.config import load_center_config

    cfg = load_center_config(center)
    with Catalog.open(cfg.catalog_url) as catalog:
        row = catalog.get_hospital(hospital)
    if row is None:
        raise ConfigError(f"hospital {hospital} is not enrolled at the center {center}")
    return VerifyKey(row.agent_key)


def _store(center: Path | None, store: Path | None, hospital: str) -> Path:
    if store is not None:
        return store
    if center is None:
        raise ConfigError("give --center HOME or --store DIR (the hospital's clinical changesets)")
    from center.layout import CenterLayout

    return CenterLayout(center).store(hospital, "clinical")


def run_unlock(
    *,
    order: Path,
    policy: Path,
    shares: list[ShareInput],
    hospital: str,
    out: Path,
    audit: Path,
    actor: str,
    center: Path | None = None,
    store: Path | None = None,
    agent_key: Path | None = None,
    export: Path | None = None,
    ndjson: Path | None = None,
    window: ExportWindow | None = None,
    as_of: date | None = None,
    now: datetime | None = None,
    show_progress: bool = True,
    workers: int = 0,
) -> dict[str, Any]:
    """Unlock (order + shares), replay into ``out`` and optionally stream the export.  The figures;
    ``started`` is the unlock's start on the :func:`time.perf_counter` clock."""
    t0 = time.perf_counter()
    moment = now or datetime.now(UTC)
    with AuditLog.open(audit) as log:
        try:
            unlocked = unlock_order(order, policy, shares, hospital=hospital, now=moment)
        except HakobuneError as e:
            log.append(
                "unlock", actor=actor, hospital=hospital, details={"ok": False, "reason": str(e)[:200]}
            )
            raise
        o = unlocked.order
        log.append(
            "unlock",
            actor=actor,
            hospital=hospital,
            details={
                "ok": True,
                "order": o.id,
                "order_sha256": o.sha256,
                "approved_by": list(unlocked.approved_by),
                "shares": len(shares),
                "release_key": unlocked.policy.release_fingerprint,
            },
        )
        unlocked_s = time.perf_counter() - t0
        plan = plan_chain(_store(center, store, hospital), hospital)
        signer = _signer(center, agent_key, hospital)
        scope = None if o.scope == "all" else frozenset(o.scope)
        meta = {
            "order": o.id,
            "order_sha256": o.sha256,
            "recipient": o.recipient_id,
            "recipient_name": o.recipient_name,
            "expires_at": o.expires_at.isoformat(),
            "scope": "all" if scope is None else "listed",
            "unlocked_at": moment.isoformat(timespec="seconds"),
        }
        exporter = (
            BundleExporter(
                hospital=hospital,
                folder=export,
                ndjson=ndjson,
                window=window,
                as_of=as_of,
                started=t0,
                workers=workers,
            )
            if export is not None or ndjson is not None
            else None
        )
        with progress(show_progress) as bar:
            task = bar.add_task("replaying", total=None, rate="")
            try:
                report = rebuild(
                    out,
                    plan,
                    unlocked.key,
                    signer,
                    scope=scope,
                    meta=meta,
                    on_stored=exporter.write_stored if exporter is not None else None,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            except BaseException:
                if exporter is not None:
                    exporter.abort()
                raise
        if exporter is not None:
            exporter.close()
        del unlocked  # the key goes with it; nothing else holds it
        log.append("replay", actor=actor, hospital=hospital, details=_replay_details(report, o.id))
        if exporter is not None:
            log.append(
                "export",
                actor=actor,
                hospital=hospital,
                details={"order": o.id, "bundles": exporter.report.bundles, "ndjson": ndjson is not None},
            )
        log.sign_head()
    doc: dict[str, Any] = {
        "hospital": hospital,
        "order": o.id,
        "restore": str(out),
        "started": t0,
        "unlock_seconds": round(unlocked_s, 3),
        "replay": report.to_json(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if exporter is not None:
        doc["export"] = exporter.report.to_json()
    return doc


def _replay_details(report: RebuildReport, order: str) -> dict[str, object]:
    return {
        "order": order,
        "sequence": report.sequence,
        "head": report.head,
        "changesets": report.changesets,
        "patients": report.patients,
        "records": report.records,
        "erased": report.erased,
        "out_of_scope": report.out_of_scope,
    }


@app.command()
def unlock(
    order: Path = typer.Option(..., "--order", help="The approved release order (JSON)."),
    policy: Path = typer.Option(..., "--policy", help="The hospital's custody policy (custody.json)."),
    share: list[Path] = typer.Option([], "--share", help="A share: .share file or .txt word sheet. Repeat."),
    typed: int = typer.Option(
        0, "--typed", min=0, max=16, help="Ask for this many shares typed from the word sheets (hidden)."
    ),
    passphrases: Path | None = typer.Option(
        None, "--passphrases", help="custodian-id=passphrase lines for the .share files (0600); else asked."
    ),
    hospital: str = typer.Option(..., "--hospital", help="The hospital being released."),
    out: Path = typer.Option(..., "--out", help="Restore folder to (re)build."),
    center: Path | None = typer.Option(None, "--center", help="Center home (store and hospital keys)."),
    store: Path | None = typer.Option(None, "--store", help="Or: the hospital's changeset folder (mirror)."),
    agent_key: Path | None = typer.Option(None, "--agent-key", help="With --store: the agent's public key."),
    export: Path | None = typer.Option(None, "--export", help="Also write each bundle here as it is ready."),
    ndjson: Path | None = typer.Option(None, "--ndjson", help="Also write all bundles to this NDJSON file."),
    months: int = typer.Option(6, "--months", min=1, help="Medications and labs of the last N months."),
    audit: Path = audit_option(),
    actor: str = actor_option(),
    now: str | None = typer.Option(None, "--now", hidden=True, help="Pretend it is this time (drills)."),
    workers: int = typer.Option(0, "--workers", help="Processes building bundles (0 = one per core)."),
    json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Unlock a released hospital with an approved order and enough shares; rebuild its patients."""
    moment = datetime.now(UTC) if now is None else parse_time(now, "--now")
    shares = gather_shares(share, read_passphrases(passphrases), hospital, interactive=passphrases is None)
    for i in range(1, typed + 1):
        words = typer.prompt(f"Words of typed share {i} (numbers and spaces are ignored)", hide_input=True)
        shares.append(ShareInput(parse_mnemonic(words), f"typed share {i}"))
    if not shares:
        raise ConfigError("no shares: give --share FILE (repeat) and/or --typed N")
    doc = run_unlock(
        order=order,
        policy=policy,
        shares=shares,
        hospital=hospital,
        out=out,
        audit=audit,
        actor=actor,
        center=center,
        store=store,
        agent_key=agent_key,
        export=export,
        ndjson=ndjson,
        window=ExportWindow(months_medications=months, months_labs=months),
        now=moment,
        show_progress=not json,
        workers=workers,
    )
    if json:
        print_json(doc)
        return
    r = doc["replay"]
    console.print(
        f"order {doc['order']}: {r['patients']:,} patients, {r['records']:,} records restored to {out} "
        f"(sequence {r['sequence']}, newest data {r['newest_data']}) in {doc['seconds']:.1f} s"
    )
    if r["stopped"]:
        err_console.print(f"[yellow]warning[/]: the chain stops {r['stopped']}")
    if "export" in doc:
        e = doc["export"]
        console.print(f"{e['bundles']:,} bundles written; first after {e['first_bundle_seconds'] or 0:.2f} s")


@app.command()
def search(
    folder: Path = _folder_opt(),
    name: str = typer.Option("", "--name", help="Name in kanji or kana (family and given)."),
    birth: str = typer.Option(
        "", "--birth", help="Birth date: 1975-03-04, 19750304, S50.3.4, 昭和50年3月4日."
    ),
    sex: str = typer.Option("", "--sex", help="M / F (男 / 女)."),
    address: str = typer.Option("", "--address", help="Address, or part of it."),
    limit: int = typer.Option(10, "--limit", min=1, max=100),
    audit: Path = audit_option(),
    actor: str = actor_option(),
    json: bool = typer.Option(False, "--json", help="Print candidates as JSON."),
) -> None:
    """Find a patient: ranked candidates with a score and the reasons.  A clinician confirms the match."""
    if not (name or birth or address):
        raise ConfigError("give at least --name, --birth or --address")
    with RestoreDB.open(folder) as db:
        meta = db.meta()
        with PatientIndex.open(db.path) as index:
            found = index.search(Query(name=name, birth_date=birth, sex=sex, address=address), limit=limit)
        rows = [(c, db.get(c.patient_id)) for c in found]
    audit_record(
        audit,
        "search",
        actor=actor,
        hospital=str(meta.get("hospital", "")),
        details={
            "order": str(meta.get("order", "")),
            "fields": [
                f for f, v in (("name", name), ("birth", birth), ("sex", sex), ("address", address)) if v
            ],
            "candidates": len(found),
        },
    )
    if json:
        print_json(
            [
                {
                    "patient_id": c.patient_id,
                    "score": round(c.score, 3),
                    "reasons": list(c.reasons),
                    "name_kanji": f"{p.patient.family_kanji} {p.patient.given_kanji}".strip() if p else "",
                    "name_kana": f"{p.patient.family_kana} {p.patient.given_kana}".strip() if p else "",
                    "birth_date": p.patient.birth_date if p else "",
                    "sex": p.patient.sex if p else "",
                    "address": p.patient.address if p else "",
                }
                for c, p in rows
            ]
        )
        return
    table = Table("#", "ID", "氏名", "カナ", "生年月日", "性別", "住所", "スコア", "理由")
    for i, (c, p) in enumerate(rows, 1):
        d = p.patient if p else None
        table.add_row(
            str(i),
            c.patient_id,
            f"{d.family_kanji} {d.given_kanji}" if d else "",
            f"{d.family_kana} {d.given_kana}" if d else "",
            d.birth_date if d else "",
            d.sex if d else "",
            d.address if d else "",
            f"{c.score:.2f}",
            "、".join(c.reasons),
        )
    console.print(table if rows else "候補なし (no candidates)")


def run_export(
    folder: Path,
    *,
    out: Path | None,
    ndjson: Path | None,
    patients: list[str] | None,
    audit: Path,
    actor: str,
    window: ExportWindow | None = None,
    as_of: date | None = None,
    show_progress: bool = True,
    workers: int = 0,
) -> ExportReport:
    with RestoreDB.open(folder) as db:
        meta = db.meta()
        hospital = str(meta.get("hospital", ""))
        total = len(patients) if patients is not None else db.count()
        with (
            BundleExporter(
                hospital=hospital, folder=out, ndjson=ndjson, window=window, as_of=as_of, workers=workers
            ) as exporter,
            progress(show_progress) as bar,
        ):
            task = bar.add_task("exporting", total=total, rate="")
            for patient_id, records in db.stored(patients):
                exporter.write_stored(patient_id, records)
                bar.advance(task)
        if patients is not None and exporter.report.bundles < len(patients):
            missing = len(patients) - exporter.report.bundles
            exporter.report.skipped.append(f"{missing} requested patient(s) not in this restore")
    audit_record(
        audit,
        "export",
        actor=actor,
        hospital=hospital,
        details={
            "order": str(meta.get("order", "")),
            "bundles": exporter.report.bundles,
            "ndjson": ndjson is not None,
            "requested": "all" if patients is None else len(patients),
        },
    )
    return exporter.report


@app.command()
def export(
    folder: Path = _folder_opt(),
    out: Path | None = typer.Option(
        None, "--out", help="Write <patient-id>.json bundles here (a file each: slower for a whole hospital)."
    ),
    ndjson: Path | None = typer.Option(
        None, "--ndjson", help="Write all bundles to this NDJSON file (the whole-hospital form)."
    ),
    patient: list[str] = typer.Option([], "--patient", help="Only these patient IDs. Repeat."),
    months: int = typer.Option(6, "--months", min=1, help="Medications and labs of the last N months."),
    as_of: str | None = typer.Option(None, "--as-of", help="Window end date (default: today)."),
    audit: Path = audit_option(),
    actor: str = actor_option(),
    workers: int = typer.Option(0, "--workers", help="Processes building bundles (0 = one per core)."),
    json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Write FHIR document Bundles (IPS-shaped, JP Core) for the restored patients."""
    if out is None and ndjson is None:
        raise ConfigError("give --out DIR, --ndjson FILE or both")
    try:
        end = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise ConfigError(f"--as-of {as_of!r}: expected YYYY-MM-DD") from None
    report = run_export(
        folder,
        out=out,
        ndjson=ndjson,
        patients=patient or None,
        audit=audit,
        actor=actor,
        window=ExportWindow(months_medications=months, months_labs=months),
        as_of=end,
        show_progress=not json,
        workers=workers,
    )
    if json:
        print_json(report.to_json())
        return
    console.print(f"{report.bundles:,} bundles, {report.bytes / 1e6:,.1f} MB")
    for s in report.skipped:
        err_console.print(f"[yellow]skipped[/]: {s}")


@app.command()
def show(folder: Path = _folder_opt(), json: bool = typer.Option(False, "--json")) -> None:
    """What a restore folder holds: hospital, order, chain position, newest data, patients."""
    with RestoreDB.open(folder) as db:
        doc = {**db.meta(), "patients": db.count()}
    if json:
        print_json(doc)
        return
    for k, v in doc.items():
        console.print(f"{k:>16}: {v}")

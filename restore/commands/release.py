"""``hakobune release …``: release orders (who may receive which records) and custodian approvals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import typer
from rich.table import Table

from hakobune.audit import record as audit_record
from hakobune.console import console, print_json
from hakobune.custody import CustodyPolicy, load_policy
from hakobune.errors import ConfigError, InputError
from hakobune.keys import RecipientPublicKey, load_signing_key, parse_key, read_key_text
from restore.orders import (
    OrderFile,
    approval_problem,
    check_approvals,
    create_order,
    list_orders,
    load_order,
    merge_approvals,
    order_status,
    parse_expires,
    parse_time,
    write_order,
)
from restore.orders import approve as approve_order

app = typer.Typer(no_args_is_help=True, help="Release orders: create, approve (custodians), show, list.")

_STATUS = {
    "approved": "[green]approved[/]",
    "pending": "[yellow]pending[/]",
    "expired": "[dim]expired[/]",
    "invalid": "[red]invalid[/]",
}


@app.callback()
def _release() -> None:
    """Release orders: create, approve (custodians), show, list."""


def _policy_opt() -> Any:
    return typer.Option(..., "--policy", help="The hospital's custody policy (custody.json).")


def _now(value: str | None) -> datetime:
    return datetime.now(UTC) if value is None else parse_time(value, "--now")


def _now_opt() -> Any:
    return typer.Option(None, "--now", hidden=True, help="Pretend it is this time (tests, drills).")


def _recipient_key(text: str) -> RecipientPublicKey:
    where = "--recipient-key"
    candidate = Path(text)
    if ":public:" not in text and candidate.is_file():
        where, text = str(candidate), read_key_text(candidate)[0]
    key = parse_key(text, where)
    if not isinstance(key, RecipientPublicKey):
        raise InputError(where, "not a recipient public key (mlkem768-x25519 or cryptrec-p256)")
    return key


def _read_patients(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(str(path), f"cannot read patient list ({e.strerror})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _show_doc(orders: OrderFile, status: str, reason: str, policy: CustodyPolicy) -> dict[str, Any]:
    check = check_approvals(orders, policy)
    return {
        "path": None,
        "order": orders.order.body,
        "approvals": [
            {
                "custodian": a.custodian,
                "key_fingerprint": a.key_fingerprint,
                "signed_at": a.signed_at,
                "valid": approval_problem(orders.order, policy, a) is None,
            }
            for a in orders.approvals
        ],
        "approved_by": list(check.approved_by),
        "problems": list(check.problems),
        "rule": policy.rule_text(),
        "status": status,
        "reason": reason,
    }


@app.command()
def create(
    policy_path: Path = _policy_opt(),
    scope: str | None = typer.Option(None, "--scope", help="'all' to release every patient's records."),
    patient: list[str] = typer.Option([], "--patient", help="A patient id to release (repeatable)."),
    patients_file: Path | None = typer.Option(
        None, "--patients-file", help="File of patient ids, one a line."
    ),
    purpose: str = typer.Option(
        ..., "--purpose", help="Why (e.g. 'transfer of inpatients after the quake')."
    ),
    recipient: str = typer.Option(..., "--recipient", help="Receiving hospital ID."),
    recipient_name: str = typer.Option("", "--recipient-name", help="Receiving hospital name."),
    recipient_key: str = typer.Option(
        ..., "--recipient-key", help="The receiving hospital's public key, or its file."
    ),
    expires: str = typer.Option("72h", "--expires", help="Valid for (72h, 3d) or until (ISO time)."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for the order file."),
    by: str = typer.Option("", "--by", help="Who asks for the release (recorded in the order)."),
    audit: Path | None = typer.Option(None, "--audit", help="Audit log folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the order as JSON."),
    now_text: str | None = _now_opt(),
) -> None:
    """Write a new release order (unapproved) for custodians to approve."""
    policy = load_policy(policy_path)
    listed = [*patient, *(_read_patients(patients_file) if patients_file else [])]
    if scope is not None and scope != "all":
        raise ConfigError("--scope takes only 'all'; list patients with --patient or --patients-file")
    if (scope == "all") == bool(listed):
        raise ConfigError("give either --scope all or patients (--patient / --patients-file), not both")
    now = _now(now_text)
    chosen: Literal["all"] | list[str] = "all" if scope == "all" else listed
    orders = create_order(
        policy,
        scope=chosen,
        purpose=purpose,
        recipient_id=recipient,
        recipient_name=recipient_name,
        recipient_key=_recipient_key(recipient_key),
        expires_at=parse_expires(expires, now),
        now=now,
        created_by=by,
    )
    path = write_order(out, orders)
    o = orders.order
    audit_record(
        audit,
        "order.create",
        actor=by or "operator",
        hospital=o.hospital,
        details={
            "order": o.id,
            "scope": "all" if o.scope == "all" else "patients",
            "patients": 0 if o.scope == "all" else len(o.scope),
            "recipient": o.recipient_id,
            "recipient_key_fingerprint": o.recipient_key.fingerprint,
            "expires_at": o.body["expires_at"],
            "policy_sha256": o.policy_sha256,
        },
    )
    if json_out:
        print_json({"path": str(path), "order": o.body})
        return
    console.print(f"release order [bold]{o.id}[/] written to {path}")
    console.print(f"needs approval by custodians: {policy.rule_text()}; expires {o.body['expires_at']}")


@app.command()
def approve(
    order: Path = typer.Argument(..., help="The order file."),
    key: Path = typer.Option(..., "--key", help="Your custodian signing key (custodians/<id>.key)."),
    custodian: str | None = typer.Option(
        None, "--custodian", help="Your custodian id (checked with the key)."
    ),
    policy_path: Path = _policy_opt(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    audit: Path | None = typer.Option(None, "--audit", help="Audit log folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    now_text: str | None = _now_opt(),
) -> None:
    """Approve (sign) a release order with your custodian key."""
    policy = load_policy(policy_path)
    signing = load_signing_key(key)
    current = load_order(order)
    if not yes:
        _render(current, policy, _now(now_text))
        typer.confirm(f"Approve release order {current.order.id}?", abort=True)
    updated, approval = approve_order(order, policy, signing, custodian=custodian, now=_now(now_text))
    status, reason = order_status(updated, policy, _now(now_text))
    audit_record(
        audit,
        "order.approve",
        actor=approval.custodian,
        hospital=policy.hospital,
        details={
            "order": updated.order.id,
            "custodian": approval.custodian,
            "key_fingerprint": approval.key_fingerprint,
            "approvals": len(check_approvals(updated, policy).approved_by),
            "status": status,
        },
    )
    if json_out:
        print_json(
            {"order": updated.order.id, "custodian": approval.custodian, "status": status, "reason": reason}
        )
        return
    console.print(
        f"approved [bold]{updated.order.id}[/] as {approval.custodian}; status {_STATUS[status]}: {reason}"
    )


@app.command()
def merge(
    order: Path = typer.Argument(..., help="The order file to add approvals to."),
    others: list[Path] = typer.Argument(..., help="Copies of the same order approved elsewhere."),
    policy_path: Path = _policy_opt(),
    now_text: str | None = _now_opt(),
) -> None:
    """Collect approvals made on other copies of the same order (custodians in other places)."""
    policy = load_policy(policy_path)
    updated, added = merge_approvals(order, others, policy)
    status, reason = order_status(updated, policy, _now(now_text))
    console.print(f"added {added} approvals to {updated.order.id}; status {_STATUS[status]}: {reason}")


def _render(orders: OrderFile, policy: CustodyPolicy, now: datetime) -> None:
    o = orders.order
    status, reason = order_status(orders, policy, now)
    check = check_approvals(orders, policy)
    t = Table(show_header=False, box=None)
    scope = "all patients / 全患者" if o.scope == "all" else f"{len(o.scope)} patients: {', '.join(o.scope)}"
    for k, v in (
        ("order", o.id),
        ("hospital", o.hospital),
        ("scope", scope),
        ("purpose", o.purpose),
        ("recipient", f"{o.recipient_name} ({o.recipient_id}), key {o.recipient_key.fingerprint}"),
        (
            "created",
            f"{o.body['created_at']}" + (f" by {o.body['created_by']}" if o.body["created_by"] else ""),
        ),
        ("expires", o.body["expires_at"]),
        ("release key", o.release_key_fingerprint),
        ("policy", o.policy_sha256),
        ("rule", policy.rule_text()),
        ("approved by", ", ".join(check.approved_by) or "-"),
        ("status", f"{_STATUS[status]}: {reason}"),
    ):
        t.add_row(f"[bold]{k}[/]", v)
    console.print(t, soft_wrap=True)
    for p in check.problems:
        console.print(f"[red]problem[/] {p}", soft_wrap=True)


@app.command()
def show(
    order: Path = typer.Argument(..., help="The order file."),
    policy_path: Path = _policy_opt(),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
    now_text: str | None = _now_opt(),
) -> None:
    """Show an order and whether its approvals satisfy the custody policy."""
    policy = load_policy(policy_path)
    orders = load_order(order)
    now = _now(now_text)
    if json_out:
        status, reason = order_status(orders, policy, now)
        doc = _show_doc(orders, status, reason, policy)
        doc["path"] = str(order)
        print_json(doc)
        return
    _render(orders, policy, now)


@app.command(name="list")
def list_(
    directory: Path = typer.Argument(..., help="Folder of order files."),
    policy_path: Path = _policy_opt(),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
    now_text: str | None = _now_opt(),
) -> None:
    """List the orders in a folder with their status (approved / pending / expired / invalid)."""
    policy = load_policy(policy_path)
    rows = list_orders(directory, policy, _now(now_text))
    if json_out:
        print_json(
            [
                {
                    "path": str(r.path),
                    "id": r.id,
                    "hospital": r.hospital,
                    "scope": r.scope,
                    "recipient": r.recipient,
                    "expires_at": r.expires_at,
                    "approved_by": list(r.approvals),
                    "status": r.status,
                    "reason": r.reason,
                }
                for r in rows
            ]
        )
        return
    t = Table("order", "hospital", "scope", "recipient", "expires", "approved by", "status")
    for r in rows:
        t.add_row(
            r.id,
            r.hospital,
            r.scope,
            r.recipient,
            r.expires_at,
            ", ".join(r.approvals) or "-",
            _STATUS[r.status],
        )
    console.print(t)
    if not rows:
        console.print(f"no release orders in {directory}")

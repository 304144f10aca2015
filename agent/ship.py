"""Ship the outbox: upload pending changesets in order (resuming partial uploads), fetch the center's
signed receipts, and delete an outbox file only once a valid receipt for exactly that changeset is in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.config import AgentConfig
from agent.keys import load_center_key
from agent.ledger import OutboxItem
from agent.state import StateDB, to_iso
from agent.transport import Transport, open_transport
from hakobune.errors import HakobuneError, InputError
from hakobune.keys import VerifyKey
from hakobune.naming import check_stream, receipt_name
from hakobune.receipt import matches, parse_receipt


@dataclass
class ShipResult:
    uploaded: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_sent: int = 0


def connect(cfg: AgentConfig) -> Transport:
    return open_transport(
        cfg.center_url,
        key_file=cfg.ssh_key,
        known_hosts=cfg.known_hosts,
        bwlimit=cfg.bwlimit,
    )


def ship(
    cfg: AgentConfig,
    db: StateDB,
    transport: Transport,
    *,
    wait: float = 0.0,
    poll: float = 1.0,
    on_progress: Callable[[int], None] | None = None,
) -> ShipResult:
    """Upload every pending outbox item and collect receipts; wait up to ``wait`` seconds for receipts of
    what was uploaded (the center ingests asynchronously)."""
    center_key = load_center_key(cfg)
    result = ShipResult()
    with db.connection() as conn:
        items = list(OutboxItem.select(conn, "WHERE status = 'pending' ORDER BY stream, sequence"))
    for item in items:
        if _collect(cfg, db, transport, center_key, item, result):
            continue
        path = cfg.outbox / item.name
        if not path.exists():
            result.errors.append(f"{item.name}: missing from the outbox and not acknowledged by the center")
            continue
        remote = transport.exists(item.name)
        try:
            if remote is None or remote < item.size:
                transport.upload(path, item.name, on_progress)
                result.uploaded.append(item.name)
                result.bytes_sent += item.size - (remote or 0)
        except HakobuneError as e:
            _note_error(db, item, str(e))
            result.errors.append(f"{item.name}: {e}")
            break  # keep the order: later changesets wait for this one
    deadline = time.monotonic() + wait
    while True:
        for item in items:
            if item.name not in result.acked:
                _collect(cfg, db, transport, center_key, item, result)
        result.pending = [i.name for i in items if i.name not in result.acked]
        if not result.pending or time.monotonic() >= deadline:
            return result
        time.sleep(poll)


def _collect(
    cfg: AgentConfig,
    db: StateDB,
    transport: Transport,
    center_key: VerifyKey,
    item: OutboxItem,
    result: ShipResult,
) -> bool:
    name = receipt_name(check_stream(item.stream), item.sequence)
    data = transport.fetch_receipt(name)
    if data is None:
        return False
    try:
        receipt = parse_receipt(data, center_key, name)
    except InputError as e:
        _note_error(db, item, str(e))
        result.errors.append(str(e))
        return False
    if not matches(
        receipt, hospital=cfg.hospital, stream=item.stream, sequence=item.sequence, changeset=item.header_hash
    ):
        reason = f"{name}: receipt is for another changeset (hash {receipt.changeset[:12]}…)"
        _note_error(db, item, reason)
        result.errors.append(reason)
        return False
    with db.transaction() as s:
        s.execute(
            "UPDATE outbox SET status = 'acked', receipt = ?, acked_at = ?, last_error = NULL"
            " WHERE stream = ? AND sequence = ?",
            (data, to_iso(datetime.now(UTC)), item.stream, item.sequence),
        )
        s.execute(
            "UPDATE stream_state SET acked_sequence = ? WHERE stream = ? AND acked_sequence < ?",
            (item.sequence, item.stream, item.sequence),
        )
    (cfg.outbox / item.name).unlink(missing_ok=True)
    result.acked.append(item.name)
    return True


def _note_error(db: StateDB, item: OutboxItem, reason: str) -> None:
    with db.transaction() as s:
        s.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE stream = ? AND sequence = ?",
            (reason, item.stream, item.sequence),
        )

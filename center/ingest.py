"""Ingest: take verified changesets out of each hospital's inbox into its partition of the store.

For every file in ``inbox/<hospital>/incoming`` (in sequence order):

1. an upload still in progress (shorter than its header says) is left alone, unless it has not grown
   for ``partial_timeout`` — then it is moved aside as truncated;
2. the file is copied into the store (a file the hospital account never had a handle on) and the
   **copy** is verified: format, the signature of *this inbox's* hospital, the hospital named inside,
   sizes, key table and payload hashes;
3. the chain is checked: the next sequence with ``prev`` equal to the stored head is stored; an already
   stored sequence with the same hash is a harmless re-upload (its receipt is written again); a sequence
   further ahead waits in the inbox (a gap, reported by ``center status``); anything else is refused;
4. catalog row, tombstones applied (earlier blobs of the erased patients are crypto-shredded), signed
   receipt in ``receipts/``, and only then the upload is removed from the inbox.

Anything refused is moved to ``rejected/<hospital>/`` beside a ``.reason`` file and recorded in the
catalog; it is never stored.  A crash at any step leaves the upload in the inbox, and the next pass
finishes the work idempotently.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from center.catalog import Catalog, ChangesetRow, DuplicateChangeset, HospitalRow
from center.config import CenterConfig
from center.keys import load_center_signing_key
from center.layout import CenterLayout
from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from hakobune.keys import SigningKey, VerifyKey
from hakobune.naming import Stream, check_stream, parse_changeset_name, receipt_name
from hakobune.receipt import Receipt
from hakobune.sealed import ZERO_HASH, Incomplete, SealedFile, read_header, shred, verify


@dataclass
class IngestReport:
    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    shredded: int = 0
    bytes: int = 0

    def merge(self, other: IngestReport) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.waiting += other.waiting
        self.incomplete += other.incomplete
        self.rejected += other.rejected
        self.shredded += other.shredded
        self.bytes += other.bytes


@contextmanager
def ingest_lock(layout: CenterLayout) -> Iterator[None]:
    """One ingest at a time per center home (the daemon and an operator's ``--once`` may overlap)."""
    layout.home.mkdir(parents=True, exist_ok=True)
    with open(layout.home / "ingest.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ingest_all(cfg: CenterConfig, catalog: Catalog, *, now: datetime | None = None) -> IngestReport:
    """One pass over every enrolled hospital's inbox."""
    report = IngestReport()
    key = load_center_signing_key(cfg.layout)
    with ingest_lock(cfg.layout):
        for hospital in catalog.hospitals():
            if hospital.active:
                report.merge(ingest_hospital(cfg, catalog, hospital, key, now=now))
    return report


def ingest_hospital(
    cfg: CenterConfig,
    catalog: Catalog,
    hospital: HospitalRow,
    key: SigningKey,
    *,
    now: datetime | None = None,
) -> IngestReport:
    layout = cfg.layout
    report = IngestReport()
    incoming = layout.incoming(hospital.id)
    if not incoming.is_dir():
        return report
    agent_key = VerifyKey(hospital.agent_key)
    waiting: dict[Stream, list[int]] = {"clinical": [], "research": []}
    entries = []
    for path in incoming.iterdir():
        parsed = parse_changeset_name(path.name)
        if parsed is None:
            if path.name.startswith("."):
                continue  # editors' and sftp clients' temporaries are not ours to judge
            _reject(cfg, catalog, hospital.id, path, "not a changeset file name", report)
            continue
        entries.append((parsed, path))
    for (stream, sequence), path in sorted(entries):
        try:
            outcome = _ingest_one(cfg, catalog, hospital, agent_key, key, path, stream, sequence, report, now)
        except Incomplete as e:
            if _stalled(path, cfg.partial_timeout_hours):
                _reject(cfg, catalog, hospital.id, path, f"truncated upload ({e.reason})", report)
            else:
                report.incomplete.append(path.name)
            continue
        except InputError as e:
            _reject(cfg, catalog, hospital.id, path, e.reason, report)
            continue
        if outcome == "waiting":
            waiting[stream].append(sequence)
            report.waiting.append(path.name)
    for stream, sequences in waiting.items():
        catalog.set_waiting(hospital.id, stream, sequences)
    return report


def _ingest_one(
    cfg: CenterConfig,
    catalog: Catalog,
    hospital: HospitalRow,
    agent_key: VerifyKey,
    key: SigningKey,
    path: Path,
    stream: Stream,
    sequence: int,
    report: IngestReport,
    now: datetime | None,
) -> str:
    layout = cfg.layout
    head = read_header(path).header  # Incomplete while uploading; cheap
    if head.stream != stream or head.sequence != sequence:
        raise InputError(
            str(path), f"file name says {stream} {sequence}, header says {head.stream} {head.sequence}"
        )
    stored = catalog.get_changeset(hospital.id, stream, sequence)
    if stored is not None:
        sealed = verify(path, agent_key, hospital=hospital.id)
        if not hmac.compare_digest(stored.header_hash, sealed.hash):
            raise InputError(
                str(path), f"sequence {sequence} is already stored with another hash (replayed or forged)"
            )
        _write_receipt(layout, key, stored)
        path.unlink()
        report.duplicates.append(path.name)
        return "duplicate"
    last = catalog.last_changeset(hospital.id, stream)
    expected = 1 if last is None else last.sequence + 1
    if sequence < expected:
        raise InputError(
            str(path), f"sequence {sequence} is older than the stored head {expected - 1} (replayed)"
        )
    if sequence > expected:
        verify(path, agent_key, hospital=hospital.id)
        return "waiting"
    # Copy first, then verify the copy: the hospital account may still hold the upload open.
    target = layout.stored(hospital.id, stream, sequence)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        sealed = verify(tmp, agent_key, hospital=hospital.id)
        _check_chain(path, sealed, last.header_hash if last else ZERO_HASH)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    header = sealed.header
    row = ChangesetRow(
        hospital=hospital.id,
        stream=stream,
        sequence=sequence,
        header_hash=sealed.hash,
        prev_hash=header.prev,
        kind=header.kind,
        created_at=datetime.strptime(header.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC),
        received_at=now or datetime.now(UTC),
        size=sealed.size,
        path=str(target.relative_to(layout.home)),
        patients=header.key_count,
    )
    try:
        catalog.add_changeset(row)
    except DuplicateChangeset as e:  # a concurrent ingest stored it first
        if e.existing is None or e.existing.header_hash != row.header_hash:
            raise InputError(str(path), "conflicts with a changeset stored meanwhile") from None
    if header.tombstones:
        catalog.add_tombstones(hospital.id, stream, sequence, list(header.tombstones))
        report.shredded += shred_earlier(catalog, layout, hospital.id, stream, sequence, header.tombstones)
    _write_receipt(layout, key, row)
    path.unlink()
    report.stored.append(path.name)
    report.bytes += sealed.size
    return "stored"


def _check_chain(path: Path, sealed: SealedFile, head: str) -> None:
    if not hmac.compare_digest(sealed.header.prev, head):
        raise InputError(
            str(path), "does not chain to the stored head (prev hash differs): reordered or forged"
        )


def shred_earlier(
    catalog: Catalog,
    layout: CenterLayout,
    hospital: str,
    stream: Stream,
    sequence: int,
    tokens: tuple[str, ...],
) -> int:
    """Crypto-shred ``tokens`` in every stored changeset before ``sequence``."""
    wanted = {bytes.fromhex(t) for t in tokens}
    count = 0
    for row in catalog.changesets(hospital, stream):
        if row.sequence >= sequence:
            break
        count += shred(layout.home / row.path, wanted)
    return count


def _write_receipt(layout: CenterLayout, key: SigningKey, row: ChangesetRow) -> None:
    receipt = Receipt(
        hospital=row.hospital,
        stream=row.stream,
        sequence=row.sequence,
        changeset=row.header_hash,
        size=row.size,
        received_at=row.received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        center=key.public.fingerprint,
    )
    folder = layout.receipts(row.hospital)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / receipt_name(check_stream(row.stream), row.sequence)
    tmp = folder / f".{target.name}.tmp"
    tmp.write_bytes(receipt.sign(key))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def _reject(
    cfg: CenterConfig, catalog: Catalog, hospital: str, path: Path, reason: str, report: IngestReport
) -> None:
    folder = cfg.layout.rejected(hospital)
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"{stamp}-{path.name}"
    try:
        shutil.move(path, target)
    except OSError as e:
        reason = f"{reason} (and it could not be moved aside: {e.strerror})"
    (folder / f"{target.name}.reason").write_text(reason + "\n", encoding="utf-8")
    catalog.add_rejection(hospital, path.name, reason)
    report.rejected.append((f"{hospital}/{path.name}", reason))


def _stalled(path: Path, hours: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > hours * 3600
    except FileNotFoundError:
        return False

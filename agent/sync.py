"""One sync run: find the day's changes, guard against an attack-shaped day, seal a changeset into the
outbox.  (Shipping it is :mod:`agent.ship`.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from agent.changeset import (
    BATCH,
    Builder,
    BuildStats,
    PatientWork,
    all_patients,
    late_opt_outs,
    read_patients_work,
    whole_patient,
    withdrawn_opt_outs,
    work_from_changes,
)
from agent.config import AgentConfig, GuardConfig
from agent.consent import ConsentRegistry
from agent.fileindex import FileIndex, ScanResult
from agent.keys import AgentKeys
from agent.ledger import Hold, OutboxItem, QuarantinedFile, SentUnit, StreamState
from agent.ssmix2.layout import BadName, parse_name, patient_folder
from agent.state import StateDB, to_iso
from hakobune.errors import HakobuneError
from hakobune.naming import Stream, changeset_name, parse_changeset_name
from hakobune.parallel import ordered_map
from hakobune.sealed import ZERO_HASH, ChangesetWriter, Epoch

SyncStatus = Literal["sealed", "nothing", "held"]


class Held(HakobuneError):
    """The day was held back by the attack guard."""

    exit_code = 3

    def __init__(self, message: str, reason: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.reason = reason
        self.figures = figures


@dataclass
class SyncResult:
    status: SyncStatus
    sequence: int | None = None
    name: str | None = None
    kind: str | None = None
    size: int = 0
    scan: dict[str, Any] = field(default_factory=dict)
    build: dict[str, int] = field(default_factory=dict)
    hold_reason: str | None = None
    seconds: float = 0.0


def recover_outbox(outbox: Path, db: StateDB) -> list[str]:
    """Remove what a crash left in the outbox: temporary files and sealed files the ledger never
    committed (the next run seals their changes again).  Returns the names removed."""
    removed: list[str] = []
    if not outbox.is_dir():
        return removed
    with db.session() as s:
        known = {(row.stream, row.sequence) for row in s.scalars(select(OutboxItem))}
    for path in outbox.iterdir():
        parsed = parse_changeset_name(path.name)
        if parsed is None or parsed not in known:
            path.unlink()
            removed.append(path.name)
    return removed


def guard_scan(scan: ScanResult, guard: GuardConfig) -> str | None:
    """Why the scanned day looks like an attack or a broken export, or None."""
    before = scan.index_before
    if before < guard.min_files:
        return None
    checks = (
        (scan.removed - scan.renamed, scan.removed_share, guard.max_removed_share, "of the files vanished"),
        (
            scan.rewritten,
            scan.rewritten_share,
            guard.max_rewritten_share,
            "of the files were rewritten in place",
        ),
        (
            scan.unreadable_names,
            scan.unreadable_share,
            guard.max_unreadable_share,
            "of the files have names that are not SS-MIX2",
        ),
    )
    for count, share, limit, what in checks:
        if share > limit:
            return f"{share:.0%} {what} since the last run ({count} of {before}; threshold {limit:.0%})"
    return None


def guard_build(stats: BuildStats, guard: GuardConfig, index_before: int) -> str | None:
    looked = stats.units_read + stats.quarantined
    if index_before < guard.min_files or looked < max(20, guard.min_files // 10):
        return None
    if stats.quarantined / looked > guard.max_unreadable_share:
        return (
            f"{stats.quarantined / looked:.0%} of the changed files cannot be read "
            f"({stats.quarantined} of {looked}; threshold {guard.max_unreadable_share:.0%})"
        )
    return None


def run_sync(
    cfg: AgentConfig,
    db: StateDB,
    *,
    stream: Stream = "clinical",
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SyncResult:
    """Scan, guard, build and seal one changeset into the outbox.  Raises :class:`Held` when the guard
    holds the day (nothing is sealed; an operator confirms with ``agent confirm``)."""
    started = time.monotonic()
    moment = now or datetime.now(UTC)
    stamp = to_iso(moment)
    keys = AgentKeys.load(cfg)
    cfg.outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    recover_outbox(cfg.outbox, db)
    index = FileIndex(db)
    scan = index.scan(cfg.ssmix2, journal_dir=cfg.journal, workers=2)
    scan_figures = scan.figures()

    confirmed = _confirmed_hold(db)
    reason = None if confirmed is not None else guard_scan(scan, cfg.guard)
    if reason is not None:
        index.discard()
        _hold(db, stamp, reason, scan_figures)
        raise Held(_held_message(reason), reason, scan_figures)
    try:
        return _build(cfg, db, keys, index, scan, stream, moment, confirmed, on_progress, started)
    except Held as held:
        index.discard()
        _hold(db, stamp, held.reason, {**scan_figures, **held.figures})
        raise


def _build(
    cfg: AgentConfig,
    db: StateDB,
    keys: AgentKeys,
    index: FileIndex,
    scan: ScanResult,
    stream: Stream,
    moment: datetime,
    confirmed: int | None,
    on_progress: Callable[[int], None] | None,
    started: float,
) -> SyncResult:
    stamp = to_iso(moment)
    scan_figures = scan.figures()
    consent = ConsentRegistry(db).snapshot()
    with db.session() as s:
        state = s.get(StreamState, stream)
        if state is None:
            state = StreamState(stream=stream, last_sequence=0, last_hash=ZERO_HASH)
            s.add(state)
            s.flush()
        baseline = (
            state.last_sequence == 0
            or state.epoch_recipient != keys.release.fingerprint
            or _rebaseline_due(state.baseline_at, cfg.rebaseline_days, moment)
        )
        if baseline or state.epoch_id is None:
            epoch = Epoch.create(keys.release, cfg.hospital, stream)
            state.epoch_id, state.epoch_key, state.epoch_sealed = epoch.id, epoch.key, epoch.sealed
            state.epoch_recipient = keys.release.fingerprint
        else:
            assert state.epoch_key is not None and state.epoch_sealed is not None
            epoch = Epoch(state.epoch_id, state.epoch_key, state.epoch_sealed)
        if baseline:
            s.execute(delete(SentUnit).where(SentUnit.stream == stream))
        sequence = state.last_sequence + 1
        name = changeset_name(stream, sequence)
        writer = ChangesetWriter(
            cfg.outbox / name,
            hospital=cfg.hospital,
            stream=stream,
            sequence=sequence,
            prev=state.last_hash,
            kind="baseline" if baseline else "incremental",
            epoch=epoch,
            recipient=keys.release,
            signer=keys.signing,
            created_at=stamp,
        )
        builder = Builder(
            s,
            writer,
            stream=stream,
            sequence=sequence,
            token_key=keys.token,
            consent=consent,
            fresh=baseline,
            now=stamp,
        )
        try:
            for pid in late_opt_outs(s, stream, consent):
                builder.erase(pid)
                builder.exclude(pid)
            withdrawn = set(withdrawn_opt_outs(s, stream, consent))
            gone: list[str] = []
            work = _work(cfg.ssmix2, index, baseline, withdrawn, gone)
            for results in ordered_map(read_patients_work, _batched(str(cfg.ssmix2), work), cfg.workers):
                for result in results:
                    builder.add(result)
                    if on_progress:
                        on_progress(1)
            builder.finish()
            _forget_removed_quarantine(s, gone)
            reason = (
                None if confirmed is not None else guard_build(builder.stats, cfg.guard, scan.index_before)
            )
            if reason is not None:
                raise Held(_held_message(reason), reason, builder.stats.as_dict())
            stats = builder.stats
            if not baseline and stats.puts == 0 and stats.dels == 0 and stats.tombstones == 0:
                writer.abort()
                index.commit(s)
                return SyncResult(
                    "nothing", scan=scan_figures, build=stats.as_dict(), seconds=_since(started)
                )
            header = writer.finish()
        except BaseException:
            writer.abort()
            raise
        try:
            s.add(
                OutboxItem(
                    stream=stream,
                    sequence=sequence,
                    name=name,
                    header_hash=header.hash,
                    size=header.total_size,
                    kind=header.kind,
                    created_at=stamp,
                    patients=header.key_count,
                    puts=stats.puts,
                    dels=stats.dels,
                    tombstones=len(header.tombstones),
                )
            )
            state.last_sequence, state.last_hash = sequence, header.hash
            if baseline:
                state.baseline_sequence, state.baseline_at = sequence, stamp
            if confirmed is not None:
                hold = s.get(Hold, confirmed)
                if hold is not None:
                    hold.released_sequence = sequence
            index.commit(s)
            s.flush()
        except BaseException:
            (cfg.outbox / name).unlink(missing_ok=True)
            raise
    return SyncResult(
        "sealed",
        sequence=sequence,
        name=name,
        kind=header.kind,
        size=header.total_size,
        scan=scan_figures,
        build=stats.as_dict(),
        seconds=_since(started),
    )


def _held_message(reason: str) -> str:
    return f"held: {reason}; check the SS-MIX2 storage, then 'hakobune agent confirm' to send it anyway"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _rebaseline_due(baseline_at: str | None, days: int, now: datetime) -> bool:
    if not days or baseline_at is None:
        return False
    then = datetime.strptime(baseline_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return now - then >= timedelta(days=days)


def _work(
    root: Path, index: FileIndex, baseline: bool, withdrawn: set[str], gone: list[str]
) -> Iterator[PatientWork]:
    """The patients to read; ``gone`` collects, as a side effect of the one pass over the index's
    changes, the paths of files that disappeared."""
    if baseline:
        for change in index.iter_changed_dirs():
            gone.extend(f"{change.leaf_dir}/{name}" for name in change.removed)
        yield from all_patients(root)
        return
    for pid in sorted(withdrawn):
        yield whole_patient(root, patient_folder(pid))
    for work in work_from_changes(_touched(index, gone)):
        if work.patient_id not in withdrawn:
            yield work


def _touched(index: FileIndex, gone: list[str]) -> Iterator[tuple[str, set[str] | None]]:
    """(leaf dir, order numbers touched) for every changed type folder; None = look at every unit.
    Removed files' paths are appended to ``gone``."""
    for change in index.iter_changed_dirs():
        gone.extend(f"{change.leaf_dir}/{name}" for name in change.removed)
        orders: set[str] = set()
        for name in [*(f.name for f in change.added), *change.removed, *(f.name for f in change.rewritten)]:
            try:
                orders.add(parse_name(name).order_no)
            except BadName:
                continue
        yield change.leaf_dir, orders


def _batched(root: str, work: Iterator[PatientWork]) -> Iterator[tuple[str, list[PatientWork]]]:
    batch: list[PatientWork] = []
    for w in work:
        batch.append(w)
        if len(batch) >= BATCH:
            yield root, batch
            batch = []
    if batch:
        yield root, batch


def _forget_removed_quarantine(session: Session, gone: list[str]) -> None:
    for i in range(0, len(gone), 500):
        session.execute(delete(QuarantinedFile).where(QuarantinedFile.relpath.in_(gone[i : i + 500])))


def _confirmed_hold(db: StateDB) -> int | None:
    with db.session() as s:
        row = s.scalars(
            select(Hold)
            .where(Hold.confirmed_at.is_not(None), Hold.released_sequence.is_(None))
            .order_by(Hold.id)
        ).first()
        return row.id if row is not None else None


def _hold(db: StateDB, at: str, reason: str, figures: dict[str, Any]) -> None:
    with db.session() as s:
        s.add(Hold(at=at, reason=reason, figures=orjson.dumps(figures)))


def confirm_hold(db: StateDB, by: str, now: datetime | None = None) -> Hold | None:
    """Confirm the latest unconfirmed hold: the next sync ships the day without the guard."""
    with db.session() as s:
        row = s.scalars(select(Hold).where(Hold.confirmed_at.is_(None)).order_by(Hold.id.desc())).first()
        if row is None:
            return None
        row.confirmed_at, row.confirmed_by = to_iso(now or datetime.now(UTC)), by
        return row

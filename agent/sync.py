"""One sync run: find the day's changes, guard against an attack-shaped day, seal a changeset per stream
into the outbox (clinical; research too when it is on).  (Shipping them is :mod:`agent.ship`.)

Both streams are built in one pass, in one state-database transaction: each patient's changed files are
read once (in the reader processes, which also de-identify when research is on) and the result goes to
each stream's builder.  Either both sealed files and their ledger rows are committed, or neither.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

from agent.changeset import (
    BATCH,
    Builder,
    BuildStats,
    DirWork,
    PatientResult,
    PatientWork,
    ResearchTask,
    all_patients,
    late_opt_outs,
    read_patients_research,
    read_patients_work,
    whole_patient,
    withdrawn_opt_outs,
    work_from_changes,
)
from agent.config import AgentConfig, GuardConfig
from agent.consent import ConsentRegistry, ConsentSnapshot
from agent.fileindex import FileIndex, ScanResult
from agent.keys import AgentKeys, ResearchKeys
from agent.ledger import Hold, OutboxItem, StreamState
from agent.research import ResearchBuilder, known_births
from agent.ssmix2.layout import BadName, parse_name, patient_folder
from agent.state import StateDB, to_iso
from hakobune.errors import HakobuneError
from hakobune.keys import RecipientPublicKey
from hakobune.naming import Stream, changeset_name, parse_changeset_name
from hakobune.parallel import ordered_map, resolve_workers
from hakobune.sealed import ZERO_HASH, ChangesetWriter, Epoch, Header

SyncStatus = Literal["sealed", "nothing", "held"]

#: A day that adds or rewrites fewer files than this is read in this process, one batch at a time.  Reading
#: costs about 0.5 ms of CPU a file, so reader processes would save a second or two, and they cost memory:
#: each is a copy of this process, and up to ``4 × workers`` batches of their results wait here to be
#: sealed.  Baselines, days that read patients whole and bigger days use ``sync.workers`` processes.
IN_PROCESS_BELOW = 5000
#: Patients read at a time in this process (reader processes take ``agent.changeset.BATCH``, to amortize
#: the hand-over); a batch's records are in memory until they are sealed.
IN_PROCESS_BATCH = 4


class Held(HakobuneError):
    """The day was held back by the attack guard."""

    exit_code = 3

    def __init__(self, message: str, reason: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.reason = reason
        self.figures = figures


@dataclass
class StreamResult:
    """What a sync sealed for a stream other than the clinical one."""

    status: SyncStatus
    sequence: int | None = None
    name: str | None = None
    kind: str | None = None
    size: int = 0
    build: dict[str, int] = field(default_factory=dict)


@dataclass
class SyncResult:
    """A sync's outcome.  The top-level fields are the clinical stream's; ``research`` is the research
    stream's (None when it is off)."""

    status: SyncStatus
    sequence: int | None = None
    name: str | None = None
    kind: str | None = None
    size: int = 0
    scan: dict[str, Any] = field(default_factory=dict)
    build: dict[str, int] = field(default_factory=dict)
    hold_reason: str | None = None
    seconds: float = 0.0
    research: StreamResult | None = None


def recover_outbox(outbox: Path, db: StateDB) -> list[str]:
    """Remove what a crash left in the outbox: temporary files and sealed files the ledger never
    committed (the next run seals their changes again).  Returns the names removed."""
    removed: list[str] = []
    if not outbox.is_dir():
        return removed
    with db.connection() as conn:
        known: set[tuple[str, int]] = set(conn.execute("SELECT stream, sequence FROM outbox"))
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
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SyncResult:
    """Scan, guard, build and seal one changeset per stream into the outbox: the clinical one, and the
    research one when the research stream is on (both from the same scan and the same file reads).
    Raises :class:`Held` when the guard holds the day (nothing is sealed; an operator confirms with
    ``agent confirm``)."""
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
        return _build(cfg, db, keys, index, scan, moment, confirmed, on_progress, started)
    except Held as held:
        index.discard()
        _hold(db, stamp, held.reason, {**scan_figures, **held.figures})
        raise


@dataclass
class _StreamRun:
    """One stream's part of a sync: its chain state, epoch, sealed file being written and builder."""

    stream: Stream
    state: StreamState
    baseline: bool
    sequence: int
    name: str
    writer: ChangesetWriter
    builder: Builder
    header: Header | None = None


def _open_stream(
    s: sqlite3.Connection,
    cfg: AgentConfig,
    keys: AgentKeys,
    stream: Stream,
    recipient: RecipientPublicKey,
    consent: ConsentSnapshot,
    moment: datetime,
) -> _StreamRun:
    stamp = to_iso(moment)
    state = StreamState.load(s, stream)
    if state is None:
        state = StreamState(stream, last_sequence=0, last_hash=ZERO_HASH)
        state.save(s)
    baseline = (
        state.last_sequence == 0
        or state.epoch_recipient != recipient.fingerprint
        or _rebaseline_due(state.baseline_at, cfg.rebaseline_days, moment)
    )
    if baseline or state.epoch_id is None:
        epoch = Epoch.create(recipient, cfg.hospital, stream)
        state.epoch_id, state.epoch_key, state.epoch_sealed = epoch.id, epoch.key, epoch.sealed
        state.epoch_recipient = recipient.fingerprint
    else:
        assert state.epoch_key is not None and state.epoch_sealed is not None
        epoch = Epoch(state.epoch_id, state.epoch_key, state.epoch_sealed)
    if baseline:
        s.execute("DELETE FROM sent_unit WHERE stream = ?", (stream,))
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
        recipient=recipient,
        signer=keys.signing,
        created_at=stamp,
    )
    builder: Builder
    if stream == "research":
        assert keys.research is not None
        builder = ResearchBuilder(
            s,
            writer,
            sequence=sequence,
            token_key=keys.token,
            pseudonymizer=keys.research.pseudonymizer,
            root=cfg.ssmix2,
            consent=consent,
            fresh=baseline,
            now=stamp,
        )
    else:
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
    return _StreamRun(stream, state, baseline, sequence, name, writer, builder)


def _build(
    cfg: AgentConfig,
    db: StateDB,
    keys: AgentKeys,
    index: FileIndex,
    scan: ScanResult,
    moment: datetime,
    confirmed: int | None,
    on_progress: Callable[[int], None] | None,
    started: float,
) -> SyncResult:
    stamp = to_iso(moment)
    scan_figures = scan.figures()
    consent = ConsentRegistry(db).snapshot()
    with db.transaction() as s:
        runs = [_open_stream(s, cfg, keys, "clinical", keys.release, consent, moment)]
        if keys.research is not None:
            runs.append(_open_stream(s, cfg, keys, "research", keys.research.analysis, consent, moment))
        clinical = runs[0]
        try:
            withdrawn: set[str] = set()
            for run in runs:
                for pid in late_opt_outs(s, run.stream, consent):
                    run.builder.erase(pid)
                    run.builder.exclude(pid)
                withdrawn.update(withdrawn_opt_outs(s, run.stream, consent))
            gone: list[str] = []
            baselines = [run.baseline for run in runs]
            work = _work(cfg.ssmix2, index, all(baselines), any(baselines), withdrawn, gone)
            small = not any(baselines) and scan.added + scan.rewritten + len(withdrawn) < IN_PROCESS_BELOW
            for results in _read(cfg, s, work, keys.research, 1 if small else cfg.workers):
                for result in results:
                    for run in runs:
                        run.builder.add(result)
                    if on_progress:
                        on_progress(1)
            for run in runs:
                run.builder.finish()
            _forget_removed_quarantine(s, gone)
            reason = (
                None
                if confirmed is not None
                else guard_build(clinical.builder.stats, cfg.guard, scan.index_before)
            )
            if reason is not None:
                raise Held(_held_message(reason), reason, clinical.builder.stats.as_dict())
            for run in runs:
                stats = run.builder.stats
                if not run.baseline and stats.puts == 0 and stats.dels == 0 and stats.tombstones == 0:
                    run.writer.abort()
                else:
                    run.header = run.writer.finish()
            if all(run.header is None for run in runs):
                for run in runs:
                    run.state.save(s)
                index.commit(s)
                return SyncResult(
                    "nothing",
                    scan=scan_figures,
                    build=clinical.builder.stats.as_dict(),
                    seconds=_since(started),
                    research=_research_result(runs),
                )
        except BaseException:
            for run in runs:
                run.writer.abort()
                if run.header is not None:
                    (cfg.outbox / run.name).unlink(missing_ok=True)
            raise
        try:
            for run in runs:
                if run.header is not None:
                    _record_sealed(s, run, stamp)
                run.state.save(s)
            if confirmed is not None:
                s.execute(
                    "UPDATE hold SET released_sequence = ? WHERE id = ?",
                    (clinical.sequence if clinical.header else None, confirmed),
                )
            index.commit(s)
        except BaseException:
            for run in runs:
                (cfg.outbox / run.name).unlink(missing_ok=True)
            raise
    head = clinical.header
    return SyncResult(
        "sealed" if head is not None else "nothing",
        sequence=clinical.sequence if head is not None else None,
        name=clinical.name if head is not None else None,
        kind=head.kind if head is not None else None,
        size=head.total_size if head is not None else 0,
        scan=scan_figures,
        build=clinical.builder.stats.as_dict(),
        seconds=_since(started),
        research=_research_result(runs),
    )


def _record_sealed(s: sqlite3.Connection, run: _StreamRun, stamp: str) -> None:
    """The ledger side of a sealed changeset: its outbox row and the stream's new chain head (saved by the
    caller)."""
    header = run.header
    assert header is not None
    stats = run.builder.stats
    OutboxItem(
        stream=run.stream,
        sequence=run.sequence,
        name=run.name,
        header_hash=header.hash,
        size=header.total_size,
        kind=header.kind,
        created_at=stamp,
        patients=header.key_count,
        puts=stats.puts,
        dels=stats.dels,
        tombstones=len(header.tombstones),
    ).insert(s)
    run.state.last_sequence, run.state.last_hash = run.sequence, header.hash
    if run.baseline:
        run.state.baseline_sequence, run.state.baseline_at = run.sequence, stamp


def _research_result(runs: list[_StreamRun]) -> StreamResult | None:
    run = next((r for r in runs if r.stream == "research"), None)
    if run is None:
        return None
    build = run.builder.stats.as_dict()
    if isinstance(run.builder, ResearchBuilder):
        build["refreshed"] = run.builder.refreshed
    head = run.header
    if head is None:
        return StreamResult("nothing", build=build)
    return StreamResult("sealed", run.sequence, run.name, head.kind, head.total_size, build)


def _read(
    cfg: AgentConfig,
    s: sqlite3.Connection,
    work: Iterator[PatientWork],
    research: ResearchKeys | None,
    workers: int,
) -> Iterator[list[PatientResult]]:
    """Read the work in ``workers`` reader processes (1: in this one), in order; de-identified too when
    research is on."""
    root = str(cfg.ssmix2)
    size = IN_PROCESS_BATCH if resolve_workers(workers) <= 1 else BATCH
    if research is None:
        yield from ordered_map(read_patients_work, _batched(root, work, size), workers)
        return
    p = research.pseudonymizer
    tasks: Iterator[ResearchTask] = (
        (root, batch, p, known_births(s, [w.patient_id for w in batch]))
        for _, batch in _batched(root, work, size)
    )
    yield from ordered_map(read_patients_research, tasks, workers)


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
    root: Path, index: FileIndex, baseline: bool, everyone: bool, withdrawn: set[str], gone: list[str]
) -> Iterator[PatientWork]:
    """The patients to read; ``gone`` collects, as a side effect of the one pass over the index's
    changes, the paths of files that disappeared.

    ``baseline``: every stream starts a baseline, read everyone.  ``everyone`` without ``baseline``: one
    stream starts a baseline while another goes on incrementally (research just turned on, or their
    re-baselines fall on different days), so everyone is read whole and the day's changed folders are
    merged in, so that the incremental stream still sees units whose files vanished.  Otherwise the
    day's changes, and patients whose opt-out was withdrawn read whole (merged with their changes)."""
    if baseline:
        for change in index.iter_changed_dirs():
            gone.extend(f"{change.leaf_dir}/{name}" for name in change.removed)
        yield from all_patients(root)
        return
    if not everyone and not withdrawn:
        yield from work_from_changes(_touched(index, gone))
        return
    changed: dict[str, dict[str, set[str] | None]] = {}
    for leaf_dir, orders in _touched(index, gone):
        changed.setdefault(leaf_dir.split("/")[2], {})[leaf_dir] = orders
    whole = (
        all_patients(root)
        if everyone
        else (whole_patient(root, patient_folder(p)) for p in sorted(withdrawn))
    )
    for w in whole:
        yield _merged(w, changed.pop(w.patient_id, {}))
    for dirs in changed.values():
        yield from work_from_changes(dirs.items())


def _merged(work: PatientWork, changed: dict[str, set[str] | None]) -> PatientWork:
    """A whole-patient read that also looks at the changed order numbers of its folders (a unit whose
    files all vanished is not found by listing) and at changed folders that no longer exist."""
    if not changed:
        return work
    dirs = [
        DirWork(d.leaf_dir, None, frozenset(changed.pop(d.leaf_dir, None) or ()))
        if d.leaf_dir in changed
        else d
        for d in work.dirs
    ]
    dirs += [
        DirWork(leaf, frozenset(orders) if orders is not None else None) for leaf, orders in changed.items()
    ]
    return PatientWork(work.patient_id, tuple(dirs))


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


def _batched(root: str, work: Iterator[PatientWork], size: int) -> Iterator[tuple[str, list[PatientWork]]]:
    batch: list[PatientWork] = []
    for w in work:
        batch.append(w)
        if len(batch) >= size:
            yield root, batch
            batch = []
    if batch:
        yield root, batch


def _forget_removed_quarantine(s: sqlite3.Connection, gone: list[str]) -> None:
    s.executemany("DELETE FROM quarantine WHERE relpath = ?", ((relpath,) for relpath in gone))


def _confirmed_hold(db: StateDB) -> int | None:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT id FROM hold WHERE confirmed_at IS NOT NULL AND released_sequence IS NULL"
            " ORDER BY id LIMIT 1"
        ).fetchone()
    return int(row[0]) if row is not None else None


def _hold(db: StateDB, at: str, reason: str, figures: dict[str, Any]) -> None:
    with db.transaction() as s:
        s.execute(
            "INSERT INTO hold (at, reason, figures) VALUES (?, ?, ?)", (at, reason, orjson.dumps(figures))
        )


def confirm_hold(db: StateDB, by: str, now: datetime | None = None) -> Hold | None:
    """Confirm the latest unconfirmed hold: the next sync ships the day without the guard."""
    with db.transaction() as s:
        row = next(Hold.select(s, "WHERE confirmed_at IS NULL ORDER BY id DESC LIMIT 1"), None)
        if row is None:
            return None
        row = dataclasses.replace(row, confirmed_at=to_iso(now or datetime.now(UTC)), confirmed_by=by)
        s.execute(
            "UPDATE hold SET confirmed_at = ?, confirmed_by = ? WHERE id = ?",
            (row.confirmed_at, row.confirmed_by, row.id),
        )
        return row

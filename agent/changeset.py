"""Build one changeset per stream: the day's changes found by the file index, turned into record upserts and
deletions against what was sent before, filtered by consent, and sealed into the outbox.

The work per patient: list the changed type folders, pick each touched unit's current file (flag ``1``,
newest timestamp), read it in a worker process, and compare its records with the hashes in
``sent_unit``.  A unit with no current file left is deleted; a current file that cannot be read is
quarantined and the unit keeps what was sent before (nothing is lost to a bad file).

Everything the build changes in the state database happens in one transaction that commits only after the
sealed file is safely in the outbox; a crash anywhere before that leaves the previous state, and the next
run finds the same changes again.

The research stream reuses all of this (:class:`agent.research.ResearchBuilder`): when it is on, the
reader processes also de-identify what they read (:func:`read_patients_research`), so one read of each file
feeds both streams.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from agent.consent import ConsentSnapshot
from agent.deidentify import Pseudonymizer, birth_of, deidentify
from agent.ledger import PatientKey, patient_key
from agent.ssmix2.layout import BadName, FoundFile, iter_patient_dirs, parse_name
from agent.ssmix2.reader import Status, read_found
from hakobune.parallel import cycle_collection_paused
from hakobune.records import Record, encode, hash_encoded
from hakobune.sealed import ChangesetWriter

#: Patients per worker task.
BATCH = 32
#: New sent-unit (and patient-key) rows are inserted this many at a time.  A sent-unit row holds its
#: records' hashes (a few KB for a lab file), so a larger batch costs the daily sync's peak RSS (256 rows:
#: ~1.5 MB) and saves almost nothing: executemany's gain over one statement per row is made by 32 rows.
UNIT_ROWS_PER_INSERT = 32

_INSERT_UNIT = (
    "INSERT INTO sent_unit (stream, unit, patient_id, source, hashes, sequence) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_KEY = (
    'INSERT INTO patient_key (stream, patient_id, token, kid, "key", created_at) VALUES (?, ?, ?, ?, ?, ?)'
)


@dataclass(frozen=True, slots=True)
class DirWork:
    """A type folder to look at: all its units (``touched`` None) or only those order numbers.  ``also``:
    order numbers to look at besides every unit found (``touched`` None), for units whose files vanished."""

    leaf_dir: str
    touched: frozenset[str] | None
    also: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PatientWork:
    patient_id: str
    dirs: tuple[DirWork, ...]


@dataclass(slots=True)
class UnitResult:
    """The current state of one unit as read from the tree."""

    unit: str  # patient/date/type/order
    source: str | None  # current file name; None: no current file (the unit is deleted)
    quarantined: tuple[str, str] | None = None  # (relpath, reason)
    skipped: bool = False
    records: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # item -> (hash, encoded)
    #: The same records de-identified (research stream on), item -> (hash, research encoding).
    research: dict[str, tuple[str, bytes]] | None = None


@dataclass(slots=True)
class PatientResult:
    patient_id: str
    units: list[UnitResult]
    strays: list[tuple[str, str]]  # (relpath, reason) of entries that are not SS-MIX2 files
    #: Research stream on: the birth date a patient record read here gives (None: no patient record read).
    birth_read: str | None = None


@dataclass
class BuildStats:
    patients: int = 0
    units_read: int = 0
    files_read: int = 0
    puts: int = 0
    dels: int = 0
    tombstones: int = 0
    opted_out: int = 0
    quarantined: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def read_patients_work(args: tuple[str, list[PatientWork]]) -> list[PatientResult]:
    """Worker: the current state of every touched unit of these patients."""
    root, work = args
    with cycle_collection_paused():
        return [_read_patient(root, w) for w in work]


ResearchTask = tuple[str, list[PatientWork], Pseudonymizer, dict[str, str]]


def read_patients_research(args: ResearchTask) -> list[PatientResult]:
    """Worker: as :func:`read_patients_work`, and each unit's records de-identified for the research
    stream.  The last element holds the birth dates the agent knows (patient ID -> ``YYYY-MM-DD``) for
    patients whose patient record is not among what is read."""
    root, work, pseudonymizer, births = args
    with cycle_collection_paused():
        return [read_patient(root, w, pseudonymizer, births.get(w.patient_id)) for w in work]


def read_patient(
    root: str, work: PatientWork, research: Pseudonymizer | None = None, birth: str | None = None
) -> PatientResult:
    """One patient's touched units; with ``research``, also de-identified (ages from the birth date a
    patient record read here gives, else ``birth``)."""
    if research is None:
        return _read_patient(root, work)
    kept: list[tuple[UnitResult, list[Record]]] = []
    result = _read_patient(root, work, kept)
    read = birth_of(r for _, records in kept for r in records)
    pid = research.pseudonym(work.patient_id)
    for unit in result.units:
        unit.research = {}
    for unit, records in kept:
        assert unit.research is not None
        order = research.order_hash(work.patient_id, unit.unit.rsplit("/", 1)[1]) if records else None
        for record in records:
            data = deidentify(research, record, read or birth, pid, order)
            unit.research[record.key.item] = (hash_encoded(data), data)
    result.birth_read = read
    return result


def _read_patient(
    root: str, work: PatientWork, kept: list[tuple[UnitResult, list[Record]]] | None = None
) -> PatientResult:
    units: list[UnitResult] = []
    strays: list[tuple[str, str]] = []
    for d in work.dirs:
        try:
            with os.scandir(os.path.join(root, d.leaf_dir)) as it:
                names = [e.name for e in it if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            names = []
        rel_dir = tuple(d.leaf_dir.split("/"))
        _, _, pid, date, dtype = rel_dir
        best: dict[str, tuple[str, str]] = {}  # order -> (timestamp, name)
        orders: set[str] = set()
        for name in sorted(names):
            try:
                parsed = parse_name(name)
            except BadName as e:
                strays.append((f"{d.leaf_dir}/{name}", str(e)))
                continue
            if d.touched is not None and parsed.order_no not in d.touched:
                continue
            orders.add(parsed.order_no)
            if parsed.current and (
                parsed.order_no not in best or parsed.timestamp > best[parsed.order_no][0]
            ):
                best[parsed.order_no] = (parsed.timestamp, name)
        for order in sorted(orders | (d.touched if d.touched is not None else d.also)):
            unit = f"{pid}/{date}/{dtype}/{order}"
            if order not in best:
                units.append(UnitResult(unit, None))
                continue
            _, name = best[order]
            # size -1: the reader takes it from the open file (one path look-up fewer than a stat here)
            outcome = read_found(root, FoundFile(f"{d.leaf_dir}/{name}", rel_dir, name, -1, 0))
            result = UnitResult(unit, name)
            if outcome.status is Status.QUARANTINED:
                result.quarantined = (outcome.relpath, outcome.reason)
            elif outcome.status is Status.SKIPPED:
                result.skipped = True
            else:
                for record in outcome.records:
                    data = encode(record)
                    result.records[record.key.item] = (hash_encoded(data), data)
                if kept is not None:
                    kept.append((result, outcome.records))
            units.append(result)
    return PatientResult(work.patient_id, units, strays)


def patient_token(token_key: bytes, stream: str, patient_id: str) -> bytes:
    """The patient's pseudonymous token in sealed files: HMAC-SHA256(token key, stream, patient ID),
    first 16 bytes.  Stable across re-baselines and agent reinstalls (the token key is backed up with the
    agent keys), meaningless to the center."""
    return hmac.new(token_key, f"{stream}\x00{patient_id}".encode(), hashlib.sha256).digest()[:16]


def excluded_predicate(stream: str, consent: ConsentSnapshot) -> Callable[[str], bool]:
    """Who must not be in ``stream``: opted out of everything (clinical), or of research too (research)."""
    return consent.excluded_from_research if stream == "research" else consent.excluded_from_backup


def put_op(encoded: bytes) -> bytes:
    return b'{"put":' + encoded + b"}\n"


def del_op(unit: str, item: str) -> bytes:
    return b'{"del":' + orjson.dumps([*unit.split("/"), item]) + b"}\n"


def work_from_changes(changes: Iterable[tuple[str, set[str] | None]]) -> Iterator[PatientWork]:
    """Group (leaf dir, touched orders) pairs, ordered by leaf dir, into per-patient work."""
    current: str | None = None
    dirs: list[DirWork] = []
    for leaf_dir, touched in changes:
        pid = leaf_dir.split("/")[2]
        if pid != current and current is not None:
            yield PatientWork(current, tuple(dirs))
            dirs = []
        current = pid
        dirs.append(DirWork(leaf_dir, frozenset(touched) if touched is not None else None))
    if current is not None:
        yield PatientWork(current, tuple(dirs))


def whole_patient(root: Path, patient_rel: str) -> PatientWork:
    """Work that reads every unit of one patient folder."""
    pid = patient_rel.rsplit("/", 1)[-1]
    dirs = []
    base = root / patient_rel
    try:
        for date in sorted(os.listdir(base)):
            if os.path.isdir(base / date):
                for dtype in sorted(os.listdir(base / date)):
                    if os.path.isdir(base / date / dtype):
                        dirs.append(DirWork(f"{patient_rel}/{date}/{dtype}", None))
    except FileNotFoundError:
        pass
    return PatientWork(pid, tuple(dirs))


def all_patients(root: Path) -> Iterator[PatientWork]:
    for item in iter_patient_dirs(str(root)):
        if isinstance(item, str):
            yield whole_patient(root, item)


class Builder:
    """Turns per-patient read results into sealed frames and ledger updates, inside the transaction of
    ``conn``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        writer: ChangesetWriter,
        *,
        stream: str,
        sequence: int,
        token_key: bytes,
        consent: ConsentSnapshot,
        fresh: bool,
        now: str,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.stream = stream
        self.sequence = sequence
        self.token_key = token_key
        self.consent = consent
        self.fresh = fresh
        self.now = now
        self.stats = BuildStats()
        self._unit_rows: list[tuple[str, str, str, str, bytes, int]] = []
        self._key_rows: list[tuple[str, str, bytes, bytes, bytes, str]] = []
        self._excluded = excluded_predicate(stream, consent)

    # --- consent ---------------------------------------------------------------------------------------

    def erase(self, patient_id: str) -> None:
        """A patient opted out after data was sent: drop the key and what was sent, send a tombstone."""
        key = patient_key(self.conn, self.stream, patient_id)
        if key is not None:
            self.writer.tombstone(key.token)
            self.conn.execute(
                "DELETE FROM patient_key WHERE stream = ? AND patient_id = ?", (self.stream, patient_id)
            )
            self.stats.tombstones += 1
        self.conn.execute(
            "DELETE FROM sent_unit WHERE stream = ? AND patient_id = ?", (self.stream, patient_id)
        )

    def exclude(self, patient_id: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO excluded_patient (stream, patient_id) VALUES (?, ?)",
            (self.stream, patient_id),
        )

    # --- one patient -----------------------------------------------------------------------------------

    def add(self, result: PatientResult) -> None:
        for relpath, reason in result.strays:
            self._quarantine(relpath, reason)
        pid = result.patient_id
        if self._excluded(pid):
            self.stats.opted_out += 1
            self.erase(pid)
            self.exclude(pid)
            return
        result = self._prepare(result)
        ops: list[bytes] = []
        for unit in result.units:
            ops.extend(self._unit(pid, unit))
        if ops:
            key = self._patient_key(pid)
            self.writer.add(key.token, key.kid, key.key, ops)
            self.stats.patients += 1
        self._flush_units()

    # --- hooks a stream's builder overrides (:class:`agent.research.ResearchBuilder`) -------------------

    def _prepare(self, result: PatientResult) -> PatientResult:
        """The result to build from (the clinical stream takes it as read)."""
        return result

    def _records(self, unit: UnitResult) -> dict[str, tuple[str, bytes]]:
        """The unit's records as this stream sends them: item -> (content hash, encoding)."""
        return unit.records

    def _del(self, unit: str, item: str) -> bytes:
        """The operation that deletes record ``item`` of ``unit`` (``patient/date/type/order``)."""
        return del_op(unit, item)

    def _unit(self, pid: str, unit: UnitResult) -> list[bytes]:
        old_row = (
            None
            if self.fresh
            else self.conn.execute(
                "SELECT hashes FROM sent_unit WHERE stream = ? AND unit = ?", (self.stream, unit.unit)
            ).fetchone()
        )
        old: dict[str, str] = orjson.loads(old_row[0]) if old_row is not None else {}
        if unit.quarantined is not None:
            self._quarantine(*unit.quarantined)
            return []  # keep what was sent: a bad new file must not erase good data
        if unit.skipped:
            self.stats.skipped += 1
            return []
        ops: list[bytes] = []
        if unit.source is None:
            ops = [self._del(unit.unit, item) for item in sorted(old)]
            if old_row is not None:
                self.conn.execute(
                    "DELETE FROM sent_unit WHERE stream = ? AND unit = ?", (self.stream, unit.unit)
                )
            self.stats.dels += len(ops)
            return ops
        self.stats.units_read += 1
        records = self._records(unit)
        for item, (digest, data) in records.items():
            if old.get(item) != digest:
                ops.append(put_op(data))
                self.stats.puts += 1
        for item in sorted(set(old) - set(records)):
            ops.append(self._del(unit.unit, item))
            self.stats.dels += 1
        hashes = orjson.dumps({item: digest for item, (digest, _) in records.items()})
        if old_row is None:
            self._unit_rows.append((self.stream, unit.unit, pid, unit.source, hashes, self.sequence))
        else:
            self.conn.execute(
                "UPDATE sent_unit SET source = ?, hashes = ?, sequence = ? WHERE stream = ? AND unit = ?",
                (unit.source, hashes, self.sequence, self.stream, unit.unit),
            )
        return ops

    def _flush_units(self, force: bool = False) -> None:
        """Insert the new sent-unit and patient-key rows gathered so far (when enough are waiting)."""
        if (
            force
            or len(self._unit_rows) >= UNIT_ROWS_PER_INSERT
            or len(self._key_rows) >= UNIT_ROWS_PER_INSERT
        ):
            if self._unit_rows:
                self.conn.executemany(_INSERT_UNIT, self._unit_rows)
                self._unit_rows = []
            if self._key_rows:
                self.conn.executemany(_INSERT_KEY, self._key_rows)
                self._key_rows = []

    def finish(self) -> None:
        self._flush_units(force=True)

    def _patient_key(self, patient_id: str) -> PatientKey:
        # A patient is added once per changeset (the writer refuses a second time), so a key made here is
        # never looked up again before :meth:`_flush_units` inserts it with the others.
        key = patient_key(self.conn, self.stream, patient_id)
        if key is None:
            key = PatientKey(
                patient_token(self.token_key, self.stream, patient_id), os.urandom(16), os.urandom(32)
            )
            self._key_rows.append((self.stream, patient_id, key.token, key.kid, key.key, self.now))
        return key

    def _quarantine(self, relpath: str, reason: str) -> None:
        self.stats.quarantined += 1
        self.conn.execute(
            "INSERT INTO quarantine (relpath, reason, first_seen, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (relpath) DO UPDATE SET reason = excluded.reason, last_seen = excluded.last_seen",
            (relpath, reason, self.now, self.now),
        )


def late_opt_outs(conn: sqlite3.Connection, stream: str, consent: ConsentSnapshot) -> list[str]:
    """Patients with data sent (a key) who now opt out of the stream (backup, or research)."""
    if not consent:  # nobody opted out: no need to go through every key
        return []
    excluded = excluded_predicate(stream, consent)
    rows = conn.execute("SELECT patient_id FROM patient_key WHERE stream = ?", (stream,))
    return [pid for (pid,) in rows if excluded(pid)]


def withdrawn_opt_outs(conn: sqlite3.Connection, stream: str, consent: ConsentSnapshot) -> list[str]:
    """Patients whose data was held back from the stream by an opt-out that has since been withdrawn."""
    excluded = excluded_predicate(stream, consent)
    rows = conn.execute("SELECT patient_id FROM excluded_patient WHERE stream = ?", (stream,))
    back = [pid for (pid,) in rows if not excluded(pid)]
    conn.executemany(
        "DELETE FROM excluded_patient WHERE stream = ? AND patient_id = ?", ((stream, pid) for pid in back)
    )
    return back

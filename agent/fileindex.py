"""What the agent knows of the SS-MIX2 tree between runs, so that a day's changes are found without
re-reading unchanged files.

SS-MIX2 files are never rewritten in place: a new version is a new file and an update or deletion renames
the old one (``_1``→``_2``, ``_1``→``_0``).  So the *names* carry almost everything, and the index keeps
one row per file: ``file_index(relpath, size, mtime_ns)``.

A scan computes the changes since the last *committed* scan and stores them in ``pending_change``:

``journal``
    read the gateway's transaction journal (``TR_*.DAT``, :mod:`agent.ssmix2.journal`) from the saved
    position and list only the leaf folders it names.  Cost O(changes).
``walk``
    list every folder of the tree (names only: no stat of unchanged files) and merge-join the listing
    with the index streamed from SQLite in the same order.  Cost O(folders).
``verify``
    a walk that also stats every file and reports files whose size or mtime changed in place
    (``rewritten``: SS-MIX2 never does that, so it signals tampering or ransomware).
``auto``
    ``journal`` when a journal and a saved position exist and the last full walk is recent, else ``walk``.

The caller reads the changes (:meth:`FileIndex.iter_changed_dirs`), seals them, and applies them with
:meth:`FileIndex.commit` inside the transaction that records the changeset, so a crash before that loses
nothing: the next scan finds the same changes again.  Everything streams: memory does not grow with the
tree (see ``docs/change-detection.md``).  Nothing here logs paths, which hold patient IDs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

from agent.ssmix2.journal import JournalError, JournalPosition, JournalReader, journal_end, journal_files
from agent.state import StateDB, utc_now
from hakobune.errors import HakobuneError, InputError

Mode = Literal["auto", "journal", "walk", "verify"]
ScanMode = Literal["journal", "walk", "verify"]
Change = Literal["added", "removed", "rewritten"]
#: ``on_progress(folders listed, files seen)``, called every few hundred folders.
Progress = Callable[[int, int], None]

#: An ``auto`` scan walks the whole tree when the last committed walk is older than this (a journal can
#: miss what was changed by hand; the walk catches it).
FULL_WALK_EVERY = timedelta(days=7)
#: Pending rows written per transaction (short write locks; the scan itself is not one transaction).
WRITE_BATCH = 5000
#: Index rows fetched from SQLite at a time while streaming.
FETCH_BATCH = 2000
#: Patient folders listed per unit of work handed to a listing thread.
PATIENTS_PER_UNIT = 32
#: Units listed ahead of the merge, per thread (bounds memory).
LOOKAHEAD_PER_WORKER = 4

_NO_PENDING = (
    "pending_status = 'none', pending_token = NULL, pending_mode = NULL, pending_started_at = NULL,"
    " pending_journal_file = NULL, pending_journal_offset = NULL"
)


# ------------------------------------------------------------------------------------------------ tables
SCHEMA = (
    # One file of the SS-MIX2 tree as of the last committed scan.  ``relpath``: relative to the SS-MIX2
    # root, ``PID[0:3]/PID[3:6]/PID/date/type/name``.
    """
    CREATE TABLE IF NOT EXISTS file_index (
        relpath VARCHAR NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        PRIMARY KEY (relpath)
    ) WITHOUT ROWID""",
    # A change found by the last scan and not yet committed (replaced by every scan).  ``size`` and
    # ``mtime_ns``: the file's stat now (added, rewritten) or as indexed (removed).
    """
    CREATE TABLE IF NOT EXISTS pending_change (
        leaf_dir VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        change VARCHAR NOT NULL,
        size INTEGER,
        mtime_ns INTEGER,
        PRIMARY KEY (leaf_dir, name),
        CONSTRAINT known_change CHECK (change IN ('added', 'removed', 'rewritten'))
    ) WITHOUT ROWID""",
    # A single row: journal positions, walk times and the state of the pending scan.  ``files``: rows in
    # ``file_index`` (kept by :meth:`FileIndex.commit`).  ``journal_*``: end of the last committed journal
    # read ("" file: before every journal file; NULL: none yet).  ``reread_*``: where the next journal read
    # starts, one read behind ``journal_*``, so every journal line is looked at by two scans (a gateway
    # that logs a rename just before doing it is still caught).
    """
    CREATE TABLE IF NOT EXISTS scan_state (
        id INTEGER NOT NULL,
        files INTEGER NOT NULL,
        journal_file VARCHAR,
        journal_offset INTEGER,
        reread_file VARCHAR,
        reread_offset INTEGER,
        last_walk_at VARCHAR,
        last_verify_at VARCHAR,
        last_commit_at VARCHAR,
        pending_status VARCHAR NOT NULL,
        pending_token VARCHAR,
        pending_mode VARCHAR,
        pending_started_at VARCHAR,
        pending_journal_file VARCHAR,
        pending_journal_offset INTEGER,
        PRIMARY KEY (id),
        CONSTRAINT single_row CHECK (id = 1),
        CONSTRAINT known_status CHECK (pending_status IN ('none', 'scanning', 'ready'))
    )""",
)


# ----------------------------------------------------------------------------------------------- results
class ScanError(HakobuneError):
    """A scan cannot run or cannot be committed; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class ChangedFile:
    """A file added (or rewritten in place) in a leaf folder, with its stat at scan time."""

    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class DirChange:
    """The pending changes of one leaf folder (``PID[0:3]/PID[3:6]/PID/date/type``)."""

    leaf_dir: str
    added: tuple[ChangedFile, ...]
    removed: tuple[str, ...]  # names
    rewritten: tuple[ChangedFile, ...]  # with their stat now (verify scans only)

    @property
    def patient_id(self) -> str:
        return self.leaf_dir.split("/")[2]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scan found.  Shares are of the files indexed before the scan (0 when there were none)."""

    mode: ScanMode
    reason: str  # why this mode ("requested", "first scan", "journal", "last full walk …", …)
    added: int
    removed: int  # names gone (renames included: a rename is a removed name plus an added one)
    rewritten: int  # same name, other size or mtime (verify only)
    renamed: int  # removed names whose file is still there under another condition flag (_1→_2, →_0)
    marked_deleted: int  # of those, renamed to ``_0``
    unreadable_names: int  # added names that are not SS-MIX2 names (``x_1.locked``, …)
    stray_entries: int  # things where SS-MIX2 has none (files above the leaf level, links, …)
    unlisted_dirs: int  # folders that could not be listed (permissions): their files kept as they were
    dirs_listed: int
    files_statted: int
    index_before: int
    index_after: int
    seconds: float
    journal_files: int = 0
    journal_lines: int = 0
    journal_malformed: int = 0
    journal_unnamed: int = 0

    @property
    def changes(self) -> int:
        return self.added + self.removed + self.rewritten

    @property
    def removed_share(self) -> float:
        """Share of the indexed files gone for good (renamed ones are not gone)."""
        return (self.removed - self.renamed) / self.index_before if self.index_before else 0.0

    @property
    def rewritten_share(self) -> float:
        return self.rewritten / self.index_before if self.index_before else 0.0

    @property
    def unreadable_share(self) -> float:
        return self.unreadable_names / self.index_before if self.index_before else 0.0

    def figures(self) -> dict[str, Any]:
        """Every figure, for reports and ``--json`` (counts only: no paths)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["seconds"] = round(self.seconds, 3)
        for name in ("removed_share", "rewritten_share", "unreadable_share"):
            out[name] = round(getattr(self, name), 6)
        return out


@dataclass(frozen=True, slots=True)
class IndexState:
    """The committed state of the index (for status displays)."""

    files: int
    journal_position: JournalPosition | None
    last_walk_at: str | None
    last_verify_at: str | None
    last_commit_at: str | None
    pending: Literal["none", "scanning", "ready"]
    pending_mode: str | None


@dataclass(slots=True)
class _Counts:
    added: int = 0
    removed: int = 0
    rewritten: int = 0
    renamed: int = 0
    marked_deleted: int = 0
    unreadable: int = 0
    stray: int = 0
    unlisted: int = 0
    dirs: int = 0
    files_seen: int = 0
    statted: int = 0


# ------------------------------------------------------------------------------------------------ the index
class FileIndex:
    """The file index in the agent state database.  One scan at a time per database (the agent's run
    lock serialises runs; a second concurrent scan makes the first one fail rather than mix results)."""

    def __init__(self, db: StateDB) -> None:
        self._db = db
        with self._db.connection() as conn:
            conn.execute("INSERT OR IGNORE INTO scan_state (id, files, pending_status) VALUES (1, 0, 'none')")

    # -- reading the state
    def count(self) -> int:
        """Files in the index (as of the last commit)."""
        return self.state().files

    def state(self) -> IndexState:
        with self._db.connection() as conn:
            row = conn.execute(
                "SELECT files, journal_file, journal_offset, last_walk_at, last_verify_at, last_commit_at,"
                " pending_status, pending_mode FROM scan_state WHERE id = 1"
            ).fetchone()
        files, jf, jo, walk_at, verify_at, commit_at, status, pmode = row
        pos = JournalPosition(jf, jo or 0) if jf is not None else None
        return IndexState(int(files), pos, walk_at, verify_at, commit_at, status, pmode)

    # -- scanning
    def scan(
        self,
        root: Path,
        *,
        mode: Mode = "auto",
        journal_dir: Path | None = None,
        workers: int = 2,
        on_progress: Progress | None = None,
        full_walk_every: timedelta | None = FULL_WALK_EVERY,
    ) -> ScanResult:
        """Find what changed in the tree at ``root`` since the last committed scan and store it as the
        pending changes (replacing any earlier pending changes).  See the module doc for the modes;
        ``workers`` threads list folders in walk and verify mode."""
        started = time.perf_counter()
        started_at = utc_now()
        root = Path(root)
        if not root.is_dir():
            raise InputError(str(root), "not a folder: the SS-MIX2 storage root must be an existing folder")
        chosen, reason, reader = self._choose(mode, journal_dir, full_walk_every)
        before = self.count()
        token = uuid.uuid4().hex
        counts = _Counts()
        journal_stats = (0, 0, 0, 0)
        with self._db.connection() as w:
            self._begin_pending(w, token, chosen, started_at)
            writer = _PendingWriter(w, token, self._db.path)
            end: JournalPosition | None
            if reader is not None:
                self._scan_journal(str(root), reader, writer, counts, on_progress)
                end = reader.position
                journal_stats = (reader.files_read, reader.lines, reader.malformed, reader.unnamed)
            else:
                end = None
                if journal_dir is not None:  # taken before the walk: the walk covers what came before it
                    try:
                        end = journal_end(journal_dir)
                    except JournalError:
                        end = None
                self._scan_walk(str(root), writer, counts, workers, chosen == "verify", before, on_progress)
            writer.flush()
            self._finish_pending(w, token, end)
        return ScanResult(
            mode=chosen,
            reason=reason,
            added=counts.added,
            removed=counts.removed,
            rewritten=counts.rewritten,
            renamed=counts.renamed,
            marked_deleted=counts.marked_deleted,
            unreadable_names=counts.unreadable,
            stray_entries=counts.stray,
            unlisted_dirs=counts.unlisted,
            dirs_listed=counts.dirs,
            files_statted=counts.statted,
            index_before=before,
            index_after=before + counts.added - counts.removed,
            seconds=time.perf_counter() - started,
            journal_files=journal_stats[0],
            journal_lines=journal_stats[1],
            journal_malformed=journal_stats[2],
            journal_unnamed=journal_stats[3],
        )

    def _choose(
        self, mode: Mode, journal_dir: Path | None, full_walk_every: timedelta | None
    ) -> tuple[ScanMode, str, JournalReader | None]:
        if mode in ("walk", "verify"):
            return cast(ScanMode, mode), "requested", None
        if mode not in ("auto", "journal"):
            raise ValueError(f"unknown scan mode {mode!r}")
        with self._db.connection() as conn:
            row = conn.execute(
                "SELECT files, last_walk_at, journal_file, journal_offset, reread_file, reread_offset"
                " FROM scan_state WHERE id = 1"
            ).fetchone()
        files, last_walk, jf, jo, rf, ro = row
        problem: str | None = None
        reader: JournalReader | None = None
        if last_walk is None and not files:
            problem = "first scan: the whole tree is walked once"
        elif journal_dir is None:
            problem = "no journal folder configured"
        elif jf is None:
            problem = "no journal position saved (the last walk ran without a journal)"
        elif mode == "auto" and not journal_files(journal_dir):
            problem = "the journal folder holds no TR_*.DAT files"
        elif mode == "auto" and full_walk_every is not None and _older_than(last_walk, full_walk_every):
            problem = f"last full walk older than {full_walk_every.days} days"
        else:
            try:  # the end of the last read must still fit the journal (else it was cut or rewritten)
                reader = JournalReader(journal_dir, JournalPosition(jf, jo or 0))
            except JournalError as e:
                problem = str(e)
            if reader is not None and rf is not None:
                # Start one read earlier (see scan_state.reread_file); if that older file is gone, the
                # lines after the last read are still all there.
                with contextlib.suppress(JournalError):
                    reader = JournalReader(journal_dir, JournalPosition(rf, ro or 0))
        if reader is not None:
            return "journal", "journal", reader
        assert problem is not None
        if mode == "journal":
            where = journal_dir if journal_dir is not None else self._db.path
            raise ScanError(f"{where}: cannot scan by journal: {problem}")
        return "walk", problem, None

    # -- journal mode
    def _scan_journal(
        self,
        root: str,
        reader: JournalReader,
        writer: _PendingWriter,
        counts: _Counts,
        progress: Progress | None,
    ) -> None:
        with self._db.connection() as r:
            r.execute("CREATE TEMP TABLE IF NOT EXISTS fi_dirty (dir TEXT PRIMARY KEY) WITHOUT ROWID")
            r.execute("DELETE FROM temp.fi_dirty")
            try:
                buf: list[tuple[str]] = []
                for d in reader.dirty_dirs():
                    buf.append((d,))
                    if len(buf) >= 1000:
                        r.executemany("INSERT OR IGNORE INTO temp.fi_dirty (dir) VALUES (?)", buf)
                        buf.clear()
                if buf:
                    r.executemany("INSERT OR IGNORE INTO temp.fi_dirty (dir) VALUES (?)", buf)
                lister = _LeafLister(root)
                index = r.cursor()
                for (leaf,) in r.execute("SELECT dir FROM temp.fi_dirty ORDER BY dir"):
                    listing = lister.list(leaf)
                    counts.dirs += 1
                    indexed = index.execute(
                        "SELECT relpath, size, mtime_ns FROM file_index WHERE relpath >= ? AND relpath < ?",
                        (leaf + "/", leaf + "0"),  # "0" is the character after "/"
                    ).fetchall()
                    if listing is None:
                        counts.unlisted += 1
                        continue
                    _diff_dir(root, leaf, listing, None, indexed, writer, counts)
                    if progress is not None and counts.dirs % 500 == 0:
                        progress(counts.dirs, counts.files_seen)
            finally:
                r.execute("DROP TABLE IF EXISTS temp.fi_dirty")

    # -- walk and verify modes
    def _scan_walk(
        self,
        root: str,
        writer: _PendingWriter,
        counts: _Counts,
        workers: int,
        verify: bool,
        before: int,
        progress: Progress | None,
    ) -> None:
        # A first scan stats every file anyway: let the listing threads do it.
        stat_all = verify or before == 0
        with self._db.connection() as r:
            r.execute("BEGIN")  # one read snapshot of the index for the whole merge
            try:
                cur = r.execute("SELECT relpath, size, mtime_ns FROM file_index ORDER BY relpath")
                rows = _rows(cur)
                row = next(rows, None)
                for prefix, listing, stats in _walk(root, workers, stat_all, counts, progress):
                    while row is not None and row[0] < prefix:  # folders gone
                        _removed_row(row, writer, counts)
                        row = next(rows, None)
                    indexed: list[tuple[str, int, int]] = []
                    while row is not None and row[0].startswith(prefix):
                        indexed.append(row)
                        row = next(rows, None)
                    if listing is None:  # could not be listed: keep what the index has
                        continue
                    _diff_dir(root, prefix[:-1], listing, stats, indexed, writer, counts, verify=verify)
                while row is not None:
                    _removed_row(row, writer, counts)
                    row = next(rows, None)
            finally:
                r.execute("COMMIT")

    # -- pending state
    def _begin_pending(self, w: sqlite3.Connection, token: str, mode: str, started_at: str) -> None:
        w.execute("BEGIN IMMEDIATE")
        try:
            w.execute("DELETE FROM pending_change")
            w.execute(
                "UPDATE scan_state SET pending_status = 'scanning', pending_token = ?, pending_mode = ?,"
                " pending_started_at = ?, pending_journal_file = NULL, pending_journal_offset = NULL"
                " WHERE id = 1",
                (token, mode, started_at),
            )
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise

    def _finish_pending(self, w: sqlite3.Connection, token: str, end: JournalPosition | None) -> None:
        w.execute("BEGIN IMMEDIATE")
        try:
            _check_token(w, token, self._db.path)
            w.execute(
                "UPDATE scan_state SET pending_status = 'ready', pending_journal_file = ?,"
                " pending_journal_offset = ? WHERE id = 1",
                (end.file if end else None, end.offset if end else None),
            )
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise

    def iter_changed_dirs(self) -> Iterator[DirChange]:
        """The pending changes grouped by leaf folder, in leaf-folder order (streamed)."""
        with self._db.connection() as r:
            (status,) = r.execute("SELECT pending_status FROM scan_state WHERE id = 1").fetchone()
            if status != "ready":
                raise ScanError(
                    f"{self._db.path}: no completed scan is pending (status {status}); scan first"
                )
            cur = r.execute(
                "SELECT leaf_dir, name, change, size, mtime_ns FROM pending_change ORDER BY leaf_dir, name"
            )
            leaf: str | None = None
            added: list[ChangedFile] = []
            removed: list[str] = []
            rewritten: list[ChangedFile] = []
            for d, name, change, size, mtime_ns in _rows(cur):
                if d != leaf:
                    if leaf is not None:
                        yield DirChange(leaf, tuple(added), tuple(removed), tuple(rewritten))
                    leaf, added, removed, rewritten = d, [], [], []
                if change == "added":
                    added.append(ChangedFile(name, size, mtime_ns))
                elif change == "removed":
                    removed.append(name)
                else:
                    rewritten.append(ChangedFile(name, size, mtime_ns))
            if leaf is not None:
                yield DirChange(leaf, tuple(added), tuple(removed), tuple(rewritten))

    def commit(self, conn: sqlite3.Connection) -> None:
        """Apply the pending changes to the index and advance the journal position, inside the caller's
        transaction on ``conn`` (commit it together with what was sealed)."""
        row = conn.execute(
            "SELECT pending_status, pending_mode, pending_started_at, pending_journal_file,"
            " pending_journal_offset, journal_file, journal_offset, reread_file, reread_offset"
            " FROM scan_state WHERE id = 1"
        ).fetchone()
        status, pmode, started_at, pjf, pjo, jf, jo, rf, ro = row
        if status != "ready":
            raise ScanError(
                f"{self._db.path}: nothing to commit: no completed scan is pending (status {status})"
            )
        added = conn.execute(
            "INSERT OR IGNORE INTO file_index (relpath, size, mtime_ns)"
            " SELECT leaf_dir || '/' || name, size, mtime_ns FROM pending_change WHERE change = 'added'"
        ).rowcount
        conn.execute(
            "INSERT OR REPLACE INTO file_index (relpath, size, mtime_ns)"
            " SELECT leaf_dir || '/' || name, size, mtime_ns FROM pending_change WHERE change = 'rewritten'"
        )
        removed = conn.execute(
            "DELETE FROM file_index WHERE relpath IN"
            " (SELECT leaf_dir || '/' || name FROM pending_change WHERE change = 'removed')"
        ).rowcount
        conn.execute("DELETE FROM pending_change")
        if pmode == "journal":  # the next read starts where this one found new lines (read twice)
            positions = (pjf, pjo, jf, jo)
        elif pjf is not None:  # a walk covers the journal up to where it started
            positions = (pjf, pjo, pjf, pjo)
        else:  # a walk without a journal leaves the positions (re-reading is harmless)
            positions = (jf, jo, rf, ro)
        walked = pmode in ("walk", "verify")
        conn.execute(
            "UPDATE scan_state SET files = files + ? - ?, journal_file = ?, journal_offset = ?,"
            " reread_file = ?, reread_offset = ?,"
            " last_walk_at = CASE WHEN ? THEN ? ELSE last_walk_at END,"
            " last_verify_at = CASE WHEN ? THEN ? ELSE last_verify_at END,"
            f" last_commit_at = ?, {_NO_PENDING} WHERE id = 1",
            (
                max(added, 0),
                max(removed, 0),
                *positions,
                walked,
                started_at,
                pmode == "verify",
                started_at,
                utc_now(),
            ),
        )

    def discard(self) -> None:
        """Drop the pending changes (the next scan finds them again)."""
        with self._db.connection() as w:
            w.execute("BEGIN IMMEDIATE")
            try:
                w.execute("DELETE FROM pending_change")
                w.execute(f"UPDATE scan_state SET {_NO_PENDING} WHERE id = 1")
                w.execute("COMMIT")
            except BaseException:
                w.execute("ROLLBACK")
                raise


# ----------------------------------------------------------------------------------------------- helpers
def _older_than(iso: str | None, age: timedelta) -> bool:
    if iso is None:
        return True
    then = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return datetime.now(UTC) - then >= age


def _rows(cur: sqlite3.Cursor) -> Iterator[Any]:
    while True:
        batch = cur.fetchmany(FETCH_BATCH)
        if not batch:
            return
        yield from batch


def _check_token(w: sqlite3.Connection, token: str, db_path: Path) -> None:
    (current,) = w.execute("SELECT pending_token FROM scan_state WHERE id = 1").fetchone()
    if current != token:
        raise ScanError(f"{db_path}: another scan started while this one ran; run the scan again")


class _PendingWriter:
    """Buffers pending rows and writes them in short transactions."""

    def __init__(self, conn: sqlite3.Connection, token: str, db_path: Path) -> None:
        self._conn = conn
        self._token = token
        self._db_path = db_path
        self._rows: list[tuple[str, str, str, int | None, int | None]] = []

    def add(self, leaf: str, name: str, change: Change, size: int | None, mtime_ns: int | None) -> None:
        self._rows.append((leaf, name, change, size, mtime_ns))
        if len(self._rows) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        w = self._conn
        w.execute("BEGIN IMMEDIATE")
        try:
            _check_token(w, self._token, self._db_path)
            w.executemany(
                "INSERT INTO pending_change (leaf_dir, name, change, size, mtime_ns) VALUES (?, ?, ?, ?, ?)",
                self._rows,
            )
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        self._rows.clear()


def _removed_row(row: tuple[str, int, int], writer: _PendingWriter, counts: _Counts) -> None:
    leaf, name = row[0].rsplit("/", 1)
    counts.removed += 1
    writer.add(leaf, name, "removed", row[1], row[2])


def _diff_dir(
    root: str,
    leaf: str,
    names: list[str],
    stats: list[tuple[int, int]] | None,
    indexed: list[tuple[str, int, int]],
    writer: _PendingWriter,
    counts: _Counts,
    *,
    verify: bool = False,
) -> None:
    """Compare one leaf folder's sorted listing with its sorted index rows and write the differences.
    ``stats`` (size, mtime_ns per name) is given when the listing statted every file."""
    counts.files_seen += len(names)
    cut = len(leaf) + 1
    i = j = 0
    added: list[str] = []
    removed: list[str] = []
    while i < len(names) or j < len(indexed):
        name = names[i] if i < len(names) else None
        known = indexed[j][0][cut:] if j < len(indexed) else None
        if known is None or (name is not None and name < known):
            assert name is not None
            st = stats[i] if stats is not None else _lstat(root, leaf, name, counts)
            if st is not None:
                added.append(name)
                writer.add(leaf, name, "added", st[0], st[1])
            i += 1
        elif name is None or known < name:
            removed.append(known)
            writer.add(leaf, known, "removed", indexed[j][1], indexed[j][2])
            j += 1
        else:
            if verify and stats is not None:
                size, mtime_ns = stats[i]
                if (size, mtime_ns) != (indexed[j][1], indexed[j][2]):
                    counts.rewritten += 1
                    writer.add(leaf, name, "rewritten", size, mtime_ns)
            i += 1
            j += 1
    counts.added += len(added)
    counts.removed += len(removed)
    if removed and added:  # renames to another condition flag: same name up to the flag
        gone = {n[:-1] for n in removed if _is_ssmix_name(n)}
        for n in added:
            if n[:-1] in gone and _is_ssmix_name(n):
                counts.renamed += 1
                if n.endswith("_0"):
                    counts.marked_deleted += 1
    for n in added:
        if not _is_ssmix_name(n):
            counts.unreadable += 1


def _lstat(root: str, leaf: str, name: str, counts: _Counts) -> tuple[int, int] | None:
    """(size, mtime_ns) of a new file; None if it vanished or is not a regular file."""
    counts.statted += 1
    try:
        st = os.lstat(f"{root}/{leaf}/{name}")
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        counts.stray += 1
        return None
    return st.st_size, st.st_mtime_ns


#: A valid SS-MIX2 file name (as :func:`agent.ssmix2.layout.parse_name` accepts, but in one match).
_NAME = re.compile(
    r"[0-9A-Za-z]+_(-|[0-9]{8})_[A-Z][A-Z0-9]{2}(?:-[0-9A-Z]{2})?_[0-9A-Za-z]+_[0-9]{8,17}_(?:-|[0-9A-Za-z]+)_[012]"
)


def _is_ssmix_name(name: str) -> bool:
    m = _NAME.fullmatch(name)
    if m is None:
        return False
    care_date = m.group(1)
    return care_date == "-" or _valid_care_date(care_date)


@lru_cache(maxsize=4096)
def _valid_care_date(care_date: str) -> bool:
    try:
        date(int(care_date[0:4]), int(care_date[4:6]), int(care_date[6:8]))
    except ValueError:
        return False
    return True


def _usable(name: str) -> bool:
    """Names the index can hold (the state database stores UTF-8; undecodable names are strays)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _LeafLister:
    """Lists leaf folders named by a journal, refusing symbolic links on the way down (as the walk does).
    Folders come in sorted order, so the check of their shared ancestors is remembered."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._checked: dict[str, bool] = {}  # ancestors of the previous folder only

    def list(self, leaf: str) -> list[str] | None:
        """Sorted names of the regular files in ``leaf`` ([] if it or an ancestor is missing or not a
        real folder), or None if it cannot be listed."""
        parts = leaf.split("/")
        keep: dict[str, bool] = {}
        for n in range(1, len(parts) + 1):
            rel = "/".join(parts[:n])
            ok = self._checked.get(rel)
            if ok is None:
                try:
                    ok = stat.S_ISDIR(os.lstat(f"{self.root}/{rel}").st_mode)
                except (FileNotFoundError, NotADirectoryError):
                    ok = False
                except OSError:
                    self._checked = keep
                    return None
            keep[rel] = ok
            if not ok:
                self._checked = keep
                return []
        self._checked = keep
        try:
            listing = _list_files(f"{self.root}/{leaf}", None)
        except OSError:
            return None
        return listing[0] if listing is not None else []


_Item = tuple[str, list[str] | None, list[tuple[int, int]] | None]


@dataclass(slots=True)
class _Unit:
    """The listing of a run of patient folders: (folder prefix ending in "/", names, stats) in order;
    names None means the folder could not be listed."""

    items: list[_Item] = field(default_factory=list)
    dirs: int = 0
    stray: int = 0
    unlisted: int = 0
    statted: int = 0

    def subdirs(self, path: str) -> list[str] | None:
        """Sub-folder names of ``path`` in walk order (``name + "/"``: full-path string order); other
        entries are strays.  None if ``path`` cannot be listed; [] if it vanished."""
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            return None
        self.dirs += 1
        out: list[str] = []
        for e in entries:
            if e.is_dir(follow_symlinks=False) and (e.name.isascii() or _usable(e.name)):
                out.append(e.name)
            else:
                self.stray += 1
        if len(out) > 1:
            out.sort(key=lambda n: n + "/")
        return out

    def unlistable(self, rel: str) -> None:
        self.unlisted += 1
        self.items.append((rel + "/", None, None))


def _list_files(
    path: str, unit: _Unit | None, stat_all: bool = False
) -> tuple[list[str], list[tuple[int, int]] | None] | None:
    """Sorted regular-file names of a leaf folder (and their stats when ``stat_all``); None if it vanished.
    Raises OSError if it cannot be listed."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if unit is not None:
        unit.dirs += 1
    files: list[os.DirEntry[str]] = []
    for e in entries:
        if e.is_file(follow_symlinks=False) and (e.name.isascii() or _usable(e.name)):
            files.append(e)
        elif unit is not None:
            unit.stray += 1
    if len(files) > 1:
        files.sort(key=lambda e: e.name)
    if not stat_all:
        return [e.name for e in files], None
    names: list[str] = []
    stats: list[tuple[int, int]] = []
    if unit is not None:
        unit.statted += len(files)
    for e in files:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        names.append(e.name)
        stats.append((st.st_size, st.st_mtime_ns))
    return names, stats


def _list_unit(root: str, patients: list[tuple[str, bool]], stat_all: bool) -> _Unit:
    """List every leaf folder below a run of patient folders (runs in a listing thread).  An entry
    ``(rel, False)`` is an upper folder that could not be listed, passed through in order."""
    unit = _Unit()
    for prel, listable in patients:
        if not listable:
            unit.unlistable(prel)
            continue
        dates = unit.subdirs(f"{root}/{prel}")
        if dates is None:
            unit.unlistable(prel)
            continue
        for d in dates:
            drel = f"{prel}/{d}"
            types = unit.subdirs(f"{root}/{drel}")
            if types is None:
                unit.unlistable(drel)
                continue
            for t in types:
                leaf = f"{drel}/{t}"
                try:
                    listing = _list_files(f"{root}/{leaf}", unit, stat_all)
                except OSError:
                    unit.unlistable(leaf)
                    continue
                if listing is not None:
                    unit.items.append((leaf + "/", listing[0], listing[1]))
    return unit


def _patient_dirs(root: str, top: _Unit) -> Iterator[tuple[str, bool]]:
    """Patient folders (``aaa/bbb/PID``, True) in walk order, with the upper folders that could not be
    listed (False) in their place.  The two levels above the patients are listed here."""
    level1 = top.subdirs(root)
    if level1 is None:
        raise InputError(root, "cannot list the SS-MIX2 storage root (permission denied?)")
    for a in level1:
        level2 = top.subdirs(f"{root}/{a}")
        if level2 is None:
            yield a, False
            continue
        for b in level2:
            rel = f"{a}/{b}"
            level3 = top.subdirs(f"{root}/{rel}")
            if level3 is None:
                yield rel, False
                continue
            for p in level3:
                yield f"{rel}/{p}", True


def _batches(items: Iterable[tuple[str, bool]], size: int) -> Iterator[list[tuple[str, bool]]]:
    batch: list[tuple[str, bool]] = []
    for x in items:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _walk(
    root: str, workers: int, stat_all: bool, counts: _Counts, progress: Progress | None
) -> Iterator[_Item]:
    """Every leaf folder of the tree as (prefix, names, stats), in full-path string order, listed by
    ``workers`` threads with a bounded look-ahead."""
    top = _Unit()  # the upper levels, listed in this thread

    def take(unit: _Unit) -> list[_Item]:
        counts.dirs += unit.dirs + top.dirs
        counts.stray += unit.stray + top.stray
        counts.unlisted += unit.unlisted
        counts.statted += unit.statted
        top.dirs = top.stray = 0
        if progress is not None:
            progress(counts.dirs, counts.files_seen)
        return unit.items

    units = _batches(_patient_dirs(root, top), PATIENTS_PER_UNIT)
    if workers <= 1:
        for patients in units:
            yield from take(_list_unit(root, patients, stat_all))
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fileindex") as pool:
            ahead: deque[Future[_Unit]] = deque()
            for patients in units:
                ahead.append(pool.submit(_list_unit, root, patients, stat_all))
                while len(ahead) >= workers * LOOKAHEAD_PER_WORKER:
                    yield from take(ahead.popleft().result())
            while ahead:
                yield from take(ahead.popleft().result())
    take(_Unit())

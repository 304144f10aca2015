"""The study registry: applications, ethics-committee decisions and the record of every release.

An analysis runs only for an approved, unexpired study, only over the data items and the period of care
it requested (DESIGN §10).  The registry is one SQLite file in the analysis-center home
(research.home) whose tables are **append-only** — triggers refuse UPDATE and DELETE — so the history of
applications and decisions cannot be rewritten through Hakobune; every submission, decision and run is also
in the hash-chained audit log.  A study's state is its latest decision: a later decision renews (approve
with a new period) or revokes (reject) an earlier one.

The registry also keeps, per release, every value it published (never the suppressed ones) and each
table's definition, so that a later release of the study is disclosure-controlled against all of them
(research.disclosure).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from hakobune.sqlite import BUSY_TIMEOUT_MS, create_private_file
from research.home import ResearchHome
from research.schema import DATA_ITEMS
from research.spec import DateRange

#: The longest approval the ethics committee may give (DESIGN §10).
MAX_APPROVAL_YEARS = 2
DECISIONS = ("approve", "reject")
_STUDY_ID = re.compile(r"S[0-9]{4}-[0-9]{4}")
_MAX_TEXT = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    applicant TEXT NOT NULL,
    purpose TEXT NOT NULL,
    protocol_name TEXT NOT NULL,
    protocol_sha256 TEXT NOT NULL,
    items TEXT NOT NULL,
    period_from TEXT NOT NULL,
    period_until TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL REFERENCES studies(id),
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    approver TEXT NOT NULL,
    conditions TEXT NOT NULL,
    valid_from TEXT,
    valid_until TEXT,
    decided_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    run_id TEXT PRIMARY KEY,
    study_id TEXT NOT NULL REFERENCES studies(id),
    spec_name TEXT NOT NULL,
    spec_sha256 TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    released_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    cells INTEGER NOT NULL,
    primary_cells INTEGER NOT NULL,
    secondary_cells INTEGER NOT NULL,
    directory TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS released_tables (
    run_id TEXT NOT NULL REFERENCES releases(run_id),
    position INTEGER NOT NULL,
    column_name TEXT NOT NULL,
    universe TEXT NOT NULL,
    definition TEXT NOT NULL,
    cells TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX IF NOT EXISTS released_tables_universe ON released_tables (universe);
"""
_TABLES = ("studies", "decisions", "releases", "released_tables")


class Refused(InputError):
    """The registry refuses: unknown study, not approved, rejected, expired, out of scope."""


@dataclass(frozen=True)
class Study:
    id: str
    title: str
    applicant: str
    purpose: str
    protocol_name: str
    protocol_sha256: str
    items: tuple[str, ...]
    period: DateRange
    submitted_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "applicant": self.applicant,
            "purpose": self.purpose,
            "protocol": self.protocol_name,
            "protocol_sha256": self.protocol_sha256,
            "items": list(self.items),
            "period_from": self.period.start.isoformat(),
            "period_until": self.period.end.isoformat(),
            "submitted_at": self.submitted_at,
        }


@dataclass(frozen=True)
class Decision:
    seq: int
    study_id: str
    decision: str
    approver: str
    conditions: str
    valid_from: date | None
    valid_until: date | None
    decided_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "decision": self.decision,
            "approver": self.approver,
            "conditions": self.conditions,
            "valid_from": self.valid_from.isoformat() if self.valid_from else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "decided_at": self.decided_at,
        }


@dataclass(frozen=True)
class Release:
    run_id: str
    study_id: str
    spec_name: str
    spec_sha256: str
    snapshot: str
    released_at: str
    actor: str
    cells: int
    primary_cells: int
    secondary_cells: int
    directory: str

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ReleasedTable:
    """One published count table as the registry keeps it."""

    run_id: str
    column: str
    universe: str
    definition: list[dict[str, Any]]
    labels: list[tuple[str, ...]]
    values: list[int | None]
    status: list[str]


def add_years(d: date, years: int) -> date:
    """The same calendar day ``years`` later (29 February becomes 28 February)."""
    try:
        return d.replace(year=d.year + years)
    except ValueError:
        return d.replace(year=d.year + years, day=28)


def state_of(decision: Decision | None, today: date) -> str:
    """submitted | approved | rejected | expired | not_yet_valid."""
    if decision is None:
        return "submitted"
    if decision.decision == "reject":
        return "rejected"
    assert decision.valid_from is not None and decision.valid_until is not None
    if today < decision.valid_from:
        return "not_yet_valid"
    if today > decision.valid_until:
        return "expired"
    return "approved"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise InputError(what, "must not be empty")
    if len(value) > _MAX_TEXT:
        raise InputError(what, f"longer than {_MAX_TEXT} characters")
    return value


def parse_items(text: str | Sequence[str]) -> tuple[str, ...]:
    """Data items from ``a,b,c`` (or a list): each a research.schema.DATA_ITEMS key."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    items = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not items:
        raise InputError("--items", f"name at least one data item ({', '.join(DATA_ITEMS)})")
    for item in items:
        if item not in DATA_ITEMS:
            raise InputError("--items", f"{item!r} is not a data item ({', '.join(DATA_ITEMS)})")
    return items


class Registry:
    """The registry in a research home.  Every write is one SQLite transaction."""

    def __init__(self, home: ResearchHome) -> None:
        self.home = home
        create_private_file(home.registry)
        self._conn = sqlite3.connect(home.registry, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        for table in _TABLES:
            for op in ("UPDATE", "DELETE"):
                self._conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}"
                    f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- studies ---------------------------------------------------------------------------------------
    def submit(
        self,
        *,
        title: str,
        applicant: str,
        purpose: str,
        protocol: Path,
        items: Sequence[str],
        period: DateRange,
        today: date | None = None,
    ) -> Study:
        """Register an application; the protocol file is copied into the home and its SHA-256 kept."""
        title = _text(title, "--title")
        applicant = _text(applicant, "--applicant")
        purpose = _text(purpose, "--purpose")
        items = parse_items(items)
        if period.end < period.start:
            raise InputError("--until", "the requested period ends before it starts")
        if not protocol.is_file():
            raise InputError(str(protocol), "protocol file not found")
        today = today or date.today()
        with self._write() as conn:
            prefix = f"S{today.year:04d}-"
            n = conn.execute("SELECT count(*) FROM studies WHERE id LIKE ?", (prefix + "%",)).fetchone()[0]
            study_id = f"{prefix}{n + 1:04d}"
            sha = _copy_protocol(protocol, self.home.protocols / study_id)
            study = Study(study_id, title, applicant, purpose, protocol.name, sha, items, period, _now())
            conn.execute(
                "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    study.id,
                    title,
                    applicant,
                    purpose,
                    study.protocol_name,
                    sha,
                    orjson.dumps(list(items)).decode(),
                    period.start.isoformat(),
                    period.end.isoformat(),
                    study.submitted_at,
                ),
            )
        return study

    def decide(
        self,
        study_id: str,
        *,
        decision: str,
        approver: str,
        conditions: str = "",
        valid_from: date | None = None,
        valid_until: date | None = None,
        today: date | None = None,
    ) -> Decision:
        """Record the ethics committee's decision.  An approval is valid from ``valid_from`` (default
        today) through ``valid_until``, at most two years (it must end before the same day two years
        later); a rejection carries no period."""
        self.get(study_id)
        if decision not in DECISIONS:
            raise InputError("--decision", f"{decision!r} is not one of {', '.join(DECISIONS)}")
        approver = _text(approver, "--approver")
        conditions = conditions.strip()
        if len(conditions) > _MAX_TEXT:
            raise InputError("--conditions", f"longer than {_MAX_TEXT} characters")
        if decision == "approve":
            valid_from = valid_from or today or date.today()
            if valid_until is None:
                raise InputError("--valid-until", "an approval needs the last day it is valid")
            if valid_until < valid_from:
                raise InputError("--valid-until", f"{valid_until} is before --valid-from {valid_from}")
            limit = add_years(valid_from, MAX_APPROVAL_YEARS)
            if valid_until >= limit:
                raise InputError(
                    "--valid-until",
                    f"{valid_until} makes the approval longer than {MAX_APPROVAL_YEARS} years"
                    f" (from {valid_from}, the last possible day is"
                    f" {date.fromordinal(limit.toordinal() - 1)})",
                )
        elif valid_from is not None or valid_until is not None:
            raise InputError("--valid-until", "a rejection has no period of validity")
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO decisions (study_id, decision, approver, conditions, valid_from, valid_until,"
                " decided_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    study_id,
                    decision,
                    approver,
                    conditions,
                    valid_from.isoformat() if valid_from else None,
                    valid_until.isoformat() if valid_until else None,
                    _now(),
                ),
            )
            seq = int(cur.lastrowid or 0)
        return next(d for d in self.decisions(study_id) if d.seq == seq)

    def get(self, study_id: str) -> Study:
        if not _STUDY_ID.fullmatch(study_id):
            raise Refused(f"study {study_id}", "not a study id (like S2025-0001)")
        row = self._conn.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise Refused(f"study {study_id}", f"no such study in {self.home.registry}")
        return _study(row)

    def studies(self) -> list[Study]:
        return [_study(r) for r in self._conn.execute("SELECT * FROM studies ORDER BY id")]

    def decisions(self, study_id: str) -> list[Decision]:
        rows = self._conn.execute(
            "SELECT seq, study_id, decision, approver, conditions, valid_from, valid_until, decided_at"
            " FROM decisions WHERE study_id = ? ORDER BY seq",
            (study_id,),
        )
        return [
            Decision(
                int(r[0]),
                r[1],
                r[2],
                r[3],
                r[4],
                date.fromisoformat(r[5]) if r[5] else None,
                date.fromisoformat(r[6]) if r[6] else None,
                r[7],
            )
            for r in rows
        ]

    def latest(self, study_id: str) -> Decision | None:
        d = self.decisions(study_id)
        return d[-1] if d else None

    def require_active(self, study_id: str, today: date) -> tuple[Study, Decision]:
        """The study and its approval, or :class:`Refused` saying why an analysis may not run."""
        study = self.get(study_id)
        decision = self.latest(study_id)
        state = state_of(decision, today)
        where = f"study {study_id}"
        if state == "submitted":
            raise Refused(where, "not approved: the ethics committee has not decided yet")
        if state == "rejected":
            assert decision is not None
            raise Refused(
                where, f"rejected by the ethics committee ({decision.decided_at[:10]}); no analysis"
            )
        assert decision is not None
        if state == "expired":
            raise Refused(where, f"the approval expired on {decision.valid_until}; ask for a renewal")
        if state == "not_yet_valid":
            raise Refused(where, f"the approval is valid only from {decision.valid_from}")
        return study, decision

    # --- releases -------------------------------------------------------------------------------------
    def releases(self, study_id: str) -> list[Release]:
        rows = self._conn.execute(
            "SELECT run_id, study_id, spec_name, spec_sha256, snapshot, released_at, actor, cells,"
            " primary_cells, secondary_cells, directory FROM releases WHERE study_id = ?"
            " ORDER BY released_at, run_id",
            (study_id,),
        )
        return [Release(*r) for r in rows]

    def released_tables(self, study_id: str, universe: str) -> list[ReleasedTable]:
        """Every table the study released about the units ``universe`` identifies, oldest first."""
        rows = self._conn.execute(
            "SELECT t.run_id, t.column_name, t.universe, t.definition, t.cells FROM released_tables t"
            " JOIN releases r ON r.run_id = t.run_id WHERE r.study_id = ? AND t.universe = ?"
            " ORDER BY r.released_at, r.run_id, t.position",
            (study_id, universe),
        )
        out = []
        for run_id, column, uni, definition, cells in rows:
            doc = orjson.loads(cells)
            out.append(
                ReleasedTable(
                    run_id,
                    column,
                    uni,
                    orjson.loads(definition),
                    [tuple(c[0]) for c in doc],
                    [c[1] for c in doc],
                    [c[2] for c in doc],
                )
            )
        return out

    def record_release(self, release: Release, tables: Sequence[ReleasedTable]) -> None:
        """Keep the release and every value it published (suppressed values are stored as null)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(getattr(release, k) for k in release.__dataclass_fields__),
            )
            for pos, t in enumerate(tables):
                cells = [[list(lb), v, s] for lb, v, s in zip(t.labels, t.values, t.status, strict=True)]
                conn.execute(
                    "INSERT INTO released_tables VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        release.run_id,
                        pos,
                        t.column,
                        t.universe,
                        orjson.dumps(t.definition).decode(),
                        orjson.dumps(cells).decode(),
                    ),
                )


def _study(row: Sequence[Any]) -> Study:
    return Study(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        tuple(orjson.loads(row[6])),
        DateRange(date.fromisoformat(row[7]), date.fromisoformat(row[8])),
        row[9],
    )


def _copy_protocol(src: Path, directory: Path) -> str:
    """Copy the protocol durably into ``directory``; its SHA-256."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = directory / src.name
    tmp = directory / f".{src.name}.{os.getpid()}.tmp"
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        raise InputError(str(src), f"cannot copy the protocol ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(directory)
    return h.hexdigest()

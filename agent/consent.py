"""The consent (opt-out) registry: which patients must not be backed up (scope ``all``) or must not reach the
research copy (scope ``research``).  No entry means no opt-out.

The hospital hands us a CSV exported from its own system or from Excel:

    patient_id,scope
    0001234,all
    0005678,research

Header ``patient_id,scope`` (any case, spaces around names allowed); scope ``all`` or ``research`` (any
case); UTF-8 with or without BOM, or Shift_JIS/CP932; CRLF or LF; blank lines (and Excel's all-empty rows
or trailing empty cells) ignored.  Patient IDs are NFKC-normalised and trimmed, so full-width digits typed in
Excel (``０００１２３４``) match the half-width IDs of SS-MIX2.  A bad file is refused whole, with the file,
line and reason in one line; nothing is imported.  An import only adds or changes opt-outs: a patient who
withdraws is removed explicitly (:meth:`ConsentRegistry.remove`), so a truncated export can never silently
re-enable sending.

Patient IDs are data: errors here name line numbers, never IDs.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from agent.state import StateDB, to_iso, utc_now
from hakobune.errors import InputError

HEADER = ("patient_id", "scope")
_ENCODINGS = ("UTF-8", "Shift_JIS/CP932")
_UTF8_BOM = b"\xef\xbb\xbf"
_ODD_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff\ufffd]")


class Scope(StrEnum):
    """What a patient opted out of."""

    #: No backup and no research: nothing about the patient leaves the hospital.
    ALL = "all"
    #: Backed up for care, but never in the research copy.
    RESEARCH = "research"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``text`` as a scope (case and surrounding spaces ignored); ValueError if it is neither."""
        return cls(text.strip().lower())


class ConsentFileError(InputError):
    """A consent CSV that cannot be imported.  ``str()`` is ``<file> line <n>: <reason>``."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path} line {line}", reason)
        self.path = str(path)
        self.line = line


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did.  ``rows`` counts data rows (header and blank lines excluded, repeats included);
    ``added + changed + unchanged`` is the number of distinct patients in the file."""

    file: str
    rows: int
    added: int
    changed: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One patient's current opt-out."""

    patient_id: str
    scope: Scope
    updated_at: str
    source: str


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One history event.  ``old`` None: no opt-out before; ``new`` None: the opt-out was withdrawn."""

    at: str
    old: Scope | None
    new: Scope | None
    source: str


@dataclass(frozen=True, slots=True)
class ConsentSnapshot:
    """An immutable in-memory view of the registry for filtering many records: set lookups, no database.
    It does not follow later changes; take a new snapshot per run."""

    scope_all: frozenset[str]
    scope_research: frozenset[str]

    @classmethod
    def empty(cls) -> ConsentSnapshot:
        return cls(frozenset(), frozenset())

    def get(self, patient_id: str) -> Scope | None:
        if patient_id in self.scope_all:
            return Scope.ALL
        if patient_id in self.scope_research:
            return Scope.RESEARCH
        return None

    def excluded_from_backup(self, patient_id: str) -> bool:
        """True if nothing about the patient may be sent (scope ``all``)."""
        return patient_id in self.scope_all

    def excluded_from_research(self, patient_id: str) -> bool:
        """True if the patient must not be in the research copy (scope ``all`` or ``research``)."""
        return patient_id in self.scope_all or patient_id in self.scope_research

    def __len__(self) -> int:
        return len(self.scope_all) + len(self.scope_research)


def normalize_patient_id(text: str) -> str:
    """The patient ID as stored and matched: NFKC (full-width digits and letters become half-width) and
    trimmed, including the ideographic space.  May return ``""``; callers refuse that."""
    return unicodedata.normalize("NFKC", text).strip()


class ConsentRegistry:
    """The opt-out registry in the agent's state database."""

    def __init__(self, db: StateDB, clock: Callable[[], datetime] | None = None) -> None:
        self._db = db
        self._now: Callable[[], str] = (lambda: to_iso(clock())) if clock is not None else utc_now

    # --- import ---------------------------------------------------------------------------------------

    def import_csv(self, path: Path | str) -> ImportResult:
        """Add or change opt-outs from a consent CSV, atomically.  Patients not in the file are left as they
        are.  Raises :class:`ConsentFileError` (an :class:`InputError`) for a bad file and imports nothing;
        :class:`InputError` if the file cannot be read."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(str(path), f"cannot read ({e.strerror})") from e
        wanted, rows = parse_consent_csv(data, path)
        source = f"csv:{path.name}"
        now = self._now()
        added = changed = 0
        with self._db.transaction() as conn:
            current = {
                pid: Scope(scope) for pid, scope in conn.execute("SELECT patient_id, scope FROM consent")
            }
            new_rows: list[tuple[str, str, str, str]] = []
            changed_rows: list[tuple[str, str, str, str]] = []
            events: list[_Event] = []
            for pid, scope in wanted.items():
                old = current.get(pid)
                if old == scope:
                    continue
                if old is None:
                    new_rows.append((pid, scope.value, now, source))
                    added += 1
                else:
                    changed_rows.append((scope.value, now, source, pid))
                    changed += 1
                events.append(_event(pid, old, scope, now, source))
            # An import of a whole hospital's opt-out list can be hundreds of thousands of rows.
            conn.executemany(_INSERT_CONSENT, new_rows)
            conn.executemany(
                "UPDATE consent SET scope = ?, updated_at = ?, source = ? WHERE patient_id = ?", changed_rows
            )
            conn.executemany(_INSERT_EVENT, events)
        return ImportResult(
            file=str(path), rows=rows, added=added, changed=changed, unchanged=len(wanted) - added - changed
        )

    # --- single changes -------------------------------------------------------------------------------

    def set(self, patient_id: str, scope: Scope | str, source: str = "cli") -> Scope | None:
        """Record that the patient opted out of ``scope``; returns the previous scope (None if none).
        Setting the scope a patient already has changes nothing and records no event."""
        pid = _checked_id(patient_id)
        new = scope if isinstance(scope, Scope) else _checked_scope(scope)
        now = self._now()
        with self._db.transaction() as conn:
            old = _scope_of(conn, pid)
            if old == new:
                return old
            if old is None:
                conn.execute(_INSERT_CONSENT, (pid, new.value, now, source))
            else:
                conn.execute(
                    "UPDATE consent SET scope = ?, updated_at = ?, source = ? WHERE patient_id = ?",
                    (new.value, now, source, pid),
                )
            conn.execute(_INSERT_EVENT, _event(pid, old, new, now, source))
        return old

    def remove(self, patient_id: str, source: str = "cli") -> Scope | None:
        """The patient withdraws the opt-out.  Returns the scope that was removed, None if there was none."""
        pid = _checked_id(patient_id)
        now = self._now()
        with self._db.transaction() as conn:
            old = _scope_of(conn, pid)
            if old is None:
                return None
            conn.execute("DELETE FROM consent WHERE patient_id = ?", (pid,))
            conn.execute(_INSERT_EVENT, _event(pid, old, None, now, source))
        return old

    # --- queries --------------------------------------------------------------------------------------

    def get(self, patient_id: str) -> Scope | None:
        """The patient's current opt-out scope, None if none."""
        with self._db.connection() as conn:
            return _scope_of(conn, normalize_patient_id(patient_id))

    def all(self) -> dict[str, Scope]:
        """Every opt-out, patient ID → scope."""
        with self._db.connection() as conn:
            return {pid: Scope(scope) for pid, scope in conn.execute("SELECT patient_id, scope FROM consent")}

    def entries(self) -> list[ConsentEntry]:
        """Every opt-out with when and where it was last set, ordered by patient ID."""
        with self._db.connection() as conn:
            rows = conn.execute(
                "SELECT patient_id, scope, updated_at, source FROM consent ORDER BY patient_id"
            )
            return [ConsentEntry(pid, Scope(scope), at, source) for pid, scope, at, source in rows]

    def counts(self) -> dict[Scope, int]:
        """Number of patients per scope (every scope present, zero included)."""
        result = dict.fromkeys(Scope, 0)
        for scope in self.all().values():
            result[scope] += 1
        return result

    def excluded_from_backup(self, patient_id: str) -> bool:
        """True if nothing about the patient may be sent.  For many records use :meth:`snapshot`."""
        return self.get(patient_id) is Scope.ALL

    def excluded_from_research(self, patient_id: str) -> bool:
        """True if the patient must not be in the research copy.  For many records use :meth:`snapshot`."""
        return self.get(patient_id) is not None

    def snapshot(self) -> ConsentSnapshot:
        """An immutable in-memory view of the registry as of now."""
        by_scope: dict[str, list[str]] = {Scope.ALL.value: [], Scope.RESEARCH.value: []}
        with self._db.connection() as conn:
            for pid, scope in conn.execute("SELECT patient_id, scope FROM consent"):
                by_scope[scope].append(pid)
        return ConsentSnapshot(
            frozenset(by_scope[Scope.ALL.value]), frozenset(by_scope[Scope.RESEARCH.value])
        )

    def history(self, patient_id: str) -> list[ConsentChange]:
        """Every recorded change for the patient, oldest first."""
        pid = normalize_patient_id(patient_id)
        with self._db.connection() as conn:
            rows = conn.execute(
                "SELECT at, old_scope, new_scope, source FROM consent_event WHERE patient_id = ? ORDER BY id",
                (pid,),
            )
            return [
                ConsentChange(at, _scope_or_none(old), _scope_or_none(new), src) for at, old, new, src in rows
            ]


# --- the CSV reader -----------------------------------------------------------------------------------


def parse_consent_csv(data: bytes, path: Path | str) -> tuple[dict[str, Scope], int]:
    """Parse a consent CSV's bytes.  Returns (patient ID → scope, number of data rows).  Raises
    :class:`ConsentFileError` naming ``path``, the line and the reason at the first problem."""
    text = _decode(data, path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    wanted: dict[str, Scope] = {}
    first_line: dict[str, int] = {}
    rows = 0
    header_seen = False
    line = 1
    try:
        for record in reader:
            line = reader.line_num
            cells = _trim(record)
            if not cells:
                continue
            if not header_seen:
                if tuple(c.lower() for c in cells) != HEADER:
                    raise ConsentFileError(path, line, "expected the header 'patient_id,scope'")
                header_seen = True
                continue
            rows += 1
            if len(cells) != 2:
                raise ConsentFileError(
                    path, line, f"expected 2 fields (patient_id,scope), found {len(cells)}"
                )
            pid = normalize_patient_id(cells[0])
            if not pid:
                raise ConsentFileError(path, line, "empty patient_id")
            if not cells[1]:
                raise ConsentFileError(path, line, "empty scope (expected all or research)")
            scope = _row_scope(cells[1], path, line)
            previous = wanted.get(pid)
            if previous is None:
                wanted[pid] = scope
                first_line[pid] = line
            elif previous != scope:
                raise ConsentFileError(
                    path,
                    line,
                    f"patient listed twice with different scopes (first on line {first_line[pid]})",
                )
    except csv.Error as e:
        raise ConsentFileError(path, reader.line_num or line, f"malformed CSV ({e})") from e
    if not header_seen:
        raise ConsentFileError(path, 1, "empty file (expected the header 'patient_id,scope')")
    return wanted, rows


def _decode(data: bytes, path: Path | str) -> str:
    text = _decode_bytes(data, path)
    # CP932 maps nearly every byte to something (0xFF becomes a private-use character), so a binary file
    # or an odd encoding can "decode"; text that holds control or private-use characters is refused.
    odd = _ODD_CHARACTER.search(text)
    if odd is not None:
        line = text.count("\n", 0, odd.start()) + 1
        raise ConsentFileError(
            path, line, f"unexpected character U+{ord(odd.group()):04X}; not a {' or '.join(_ENCODINGS)} CSV"
        )
    return text


def _decode_bytes(data: bytes, path: Path | str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConsentFileError(path, 1, "UTF-16 text; save it as CSV in UTF-8 or Shift_JIS")
    if data.startswith(_UTF8_BOM):
        try:
            return data[len(_UTF8_BOM) :].decode("utf-8")
        except UnicodeDecodeError as e:
            pos = e.start + len(_UTF8_BOM)
            raise ConsentFileError(
                path, _line_of(data, pos), _bad_byte("not UTF-8 despite its BOM", data, pos)
            ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        try:
            return data.decode("cp932")
        except UnicodeDecodeError as cp932_error:
            # The decoder that read further is the likelier intended encoding; report where it stopped.
            pos = max(utf8_error.start, cp932_error.start)
            reason = _bad_byte(f"not {' or '.join(_ENCODINGS)}", data, pos)
            raise ConsentFileError(path, _line_of(data, pos), reason) from None


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _bad_byte(what: str, data: bytes, pos: int) -> str:
    column = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
    return f"{what} (byte 0x{data[pos]:02X} at column {column})"


def _trim(record: list[str]) -> list[str]:
    """Cells stripped of surrounding spaces, with Excel's trailing empty cells beyond the second dropped;
    ``[]`` for a row with nothing in it."""
    cells = [c.strip() for c in record]
    if not any(cells):
        return []
    while len(cells) > len(HEADER) and not cells[-1]:
        cells.pop()
    return cells


def _row_scope(text: str, path: Path | str, line: int) -> Scope:
    try:
        return Scope.parse(text)
    except ValueError:
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise ConsentFileError(path, line, f"unknown scope {shown!r} (expected all or research)") from None


def _checked_id(patient_id: str) -> str:
    pid = normalize_patient_id(patient_id)
    if not pid:
        raise InputError("patient ID", "empty")
    return pid


def _checked_scope(text: str) -> Scope:
    try:
        return Scope.parse(text)
    except ValueError:
        raise InputError("scope", f"unknown scope {text!r} (expected all or research)") from None


def _scope_or_none(value: str | None) -> Scope | None:
    return Scope(value) if value is not None else None


_INSERT_CONSENT = "INSERT INTO consent (patient_id, scope, updated_at, source) VALUES (?, ?, ?, ?)"
_INSERT_EVENT = (
    "INSERT INTO consent_event (patient_id, old_scope, new_scope, at, source) VALUES (?, ?, ?, ?, ?)"
)
#: A ``consent_event`` row as :data:`_INSERT_EVENT` takes it.
_Event = tuple[str, str | None, str | None, str, str]


def _scope_of(conn: sqlite3.Connection, pid: str) -> Scope | None:
    row = conn.execute("SELECT scope FROM consent WHERE patient_id = ?", (pid,)).fetchone()
    return Scope(row[0]) if row is not None else None


def _event(pid: str, old: Scope | None, new: Scope | None, at: str, source: str) -> _Event:
    return (pid, old.value if old is not None else None, new.value if new is not None else None, at, source)

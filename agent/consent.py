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
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy import bindparam, delete, insert, select, update

from agent.state import Consent, ConsentEvent, StateDB, to_iso, utc_now
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
        with self._db.session() as s:
            current = {
                pid: Scope(scope) for pid, scope in s.execute(select(Consent.patient_id, Consent.scope))
            }
            new_rows: list[dict[str, str]] = []
            changed_rows: list[dict[str, str]] = []
            events: list[dict[str, str | None]] = []
            for pid, scope in wanted.items():
                old = current.get(pid)
                if old == scope:
                    continue
                row = {"patient_id": pid, "scope": scope.value, "updated_at": now, "source": source}
                if old is None:
                    new_rows.append(row)
                    added += 1
                else:
                    changed_rows.append(row)
                    changed += 1
                events.append(_event(pid, old, scope, now, source))
            # Core executemany on the session's connection: the ORM bulk path costs ~5x more per row,
            # and an import of a whole hospital's opt-out list can be hundreds of thousands of rows.
            conn = s.connection()
            if new_rows:
                conn.execute(insert(Consent), new_rows)
            if changed_rows:
                conn.execute(
                    update(Consent)
                    .where(Consent.patient_id == bindparam("pid"))
                    .values(
                        scope=bindparam("new_scope"), updated_at=bindparam("at"), source=bindparam("src")
                    ),
                    [
                        {
                            "pid": r["patient_id"],
                            "new_scope": r["scope"],
                            "at": r["updated_at"],
                            "src": r["source"],
                        }
                        for r in changed_rows
                    ],
                )
            if events:
                conn.execute(insert(ConsentEvent), events)
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
        with self._db.session() as s:
            row = s.get(Consent, pid)
            old = Scope(row.scope) if row is not None else None
            if old == new:
                return old
            if row is None:
                s.add(Consent(patient_id=pid, scope=new.value, updated_at=now, source=source))
            else:
                row.scope, row.updated_at, row.source = new.value, now, source
            s.execute(insert(ConsentEvent), [_event(pid, old, new, now, source)])
        return old

    def remove(self, patient_id: str, source: str = "cli") -> Scope | None:
        """The patient withdraws the opt-out.  Returns the scope that was removed, None if there was none."""
        pid = _checked_id(patient_id)
        now = self._now()
        with self._db.session() as s:
            row = s.get(Consent, pid)
            if row is None:
                return None
            old = Scope(row.scope)
            s.execute(delete(Consent).where(Consent.patient_id == pid))
            s.execute(insert(ConsentEvent), [_event(pid, old, None, now, source)])
        return old

    # --- queries --------------------------------------------------------------------------------------

    def get(self, patient_id: str) -> Scope | None:
        """The patient's current opt-out scope, None if none."""
        pid = normalize_patient_id(patient_id)
        with self._db.session() as s:
            scope = s.scalars(select(Consent.scope).where(Consent.patient_id == pid)).one_or_none()
        return Scope(scope) if scope is not None else None

    def all(self) -> dict[str, Scope]:
        """Every opt-out, patient ID → scope."""
        with self._db.session() as s:
            return {pid: Scope(scope) for pid, scope in s.execute(select(Consent.patient_id, Consent.scope))}

    def entries(self) -> list[ConsentEntry]:
        """Every opt-out with when and where it was last set, ordered by patient ID."""
        with self._db.session() as s:
            rows = s.scalars(select(Consent).order_by(Consent.patient_id)).all()
            return [ConsentEntry(r.patient_id, Scope(r.scope), r.updated_at, r.source) for r in rows]

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
        by_scope: dict[Scope, list[str]] = {Scope.ALL: [], Scope.RESEARCH: []}
        for pid, scope in self.all().items():
            by_scope[scope].append(pid)
        return ConsentSnapshot(frozenset(by_scope[Scope.ALL]), frozenset(by_scope[Scope.RESEARCH]))

    def history(self, patient_id: str) -> list[ConsentChange]:
        """Every recorded change for the patient, oldest first."""
        pid = normalize_patient_id(patient_id)
        with self._db.session() as s:
            events = s.scalars(
                select(ConsentEvent).where(ConsentEvent.patient_id == pid).order_by(ConsentEvent.id)
            ).all()
            return [
                ConsentChange(e.at, _scope_or_none(e.old_scope), _scope_or_none(e.new_scope), e.source)
                for e in events
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


def _event(pid: str, old: Scope | None, new: Scope | None, at: str, source: str) -> dict[str, str | None]:
    return {
        "patient_id": pid,
        "old_scope": old.value if old is not None else None,
        "new_scope": new.value if new is not None else None,
        "at": at,
        "source": source,
    }

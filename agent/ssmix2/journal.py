"""SS-MIX2 transaction journals (``TR_yyyyMMdd.DAT``): the format Hakobune writes and a tolerant reader.

A gateway that keeps a journal appends one line per storage operation to the day's file.  The format
written here (by :func:`format_line`, and by ``hakobune synth``) is UTF-8, LF-terminated::

    <yyyyMMddHHmmssfff> TAB <op> TAB <relpath> [TAB <new relpath>]

``op`` is ``ADD`` (a file was written), ``RENAME`` (``relpath`` became ``new relpath``: ``_1``→``_2``
superseded, ``_1``→``_0`` deleted) or ``DELETE`` (a file was removed from the storage); paths are relative
to the SS-MIX2 root with ``/`` separators.

Reading is tolerant, because other vendors write other layouts: every SS-MIX2 file name found anywhere on
a line (as a whole token or as the last component of a path) marks the folder that name belongs in
(``PID[0:3]/PID[3:6]/PID/date/type``) as dirty.  A line that is not in the format above is counted as
*malformed*; one that names no SS-MIX2 file at all is also counted as *unnamed* (its change, if any, is
left to the next full walk).  Neither is fatal.  A last line without its newline is an append in
progress: it is left for the next read, unless a later journal file exists (then the writer has moved on
and the line is taken as it is).

A read position is (journal file name, byte offset of the next unread line).  Files sort by name, which
for ``TR_yyyyMMdd.DAT`` is by day.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from agent.ssmix2.layout import BadName, SsmixName, parse_name
from hakobune.errors import HakobuneError

Op = Literal["ADD", "RENAME", "DELETE"]
OPS: frozenset[str] = frozenset(("ADD", "RENAME", "DELETE"))

#: Journal file names: ``TR_`` + anything + ``.DAT`` (case-insensitive).
TR_NAME = re.compile(r"^TR_[^/\\]*\.DAT$", re.IGNORECASE)
#: Lines longer than this are not journal lines (a binary or encrypted file): counted and skipped.
MAX_LINE = 64 * 1024

_TOKEN = re.compile(rb"[0-9A-Za-z_\-]+")
_TS17 = re.compile(rb"^[0-9]{17}$")
_CHUNK = 1 << 20


class JournalError(HakobuneError):
    """The saved read position no longer fits the journal (a file vanished or shrank)."""


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """Where the next read starts: journal file name and byte offset.  ``file=""`` is "before every
    file" (the journal was empty when the position was taken)."""

    file: str
    offset: int


def journal_file_name(day: str) -> str:
    """``TR_<yyyyMMdd>.DAT`` for a day given as yyyyMMdd."""
    return f"TR_{day}.DAT"


def format_line(timestamp: str, op: Op, relpath: str, new_relpath: str | None = None) -> str:
    """One journal line (with its LF) in the format Hakobune writes."""
    if not _TS17.match(timestamp.encode("ascii", "replace")):
        raise ValueError("journal timestamp must be yyyyMMddHHmmssfff (17 digits)")
    if op not in OPS:
        raise ValueError(f"unknown journal op {op!r}")
    if (op == "RENAME") != (new_relpath is not None):
        raise ValueError("a RENAME line, and only a RENAME line, has a new path")
    for p in (relpath, new_relpath):
        if p is not None and ("\t" in p or "\n" in p or "\r" in p):
            raise ValueError("journal paths must not contain tabs or line breaks")
    tail = f"\t{new_relpath}" if new_relpath is not None else ""
    return f"{timestamp}\t{op}\t{relpath}{tail}\n"


def journal_files(journal_dir: Path) -> list[str]:
    """Names of the journal files in ``journal_dir``, sorted (one per day: a short list).  A missing
    directory has none."""
    try:
        with os.scandir(journal_dir) as it:
            names = [e.name for e in it if TR_NAME.match(e.name) and e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise JournalError(f"{journal_dir}: cannot list the journal folder ({e.strerror})") from e
    return sorted(names)


def journal_end(journal_dir: Path) -> JournalPosition:
    """The position just after the last complete line of the newest journal file (``("", 0)`` when there
    is none): taken before a full walk, so that the walk covers everything before it."""
    files = journal_files(journal_dir)
    if not files:
        return JournalPosition("", 0)
    name = files[-1]
    path = journal_dir / name
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            pos = size
            while pos > 0:
                start = max(0, pos - _CHUNK)
                fh.seek(start)
                block = fh.read(pos - start)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    return JournalPosition(name, start + nl + 1)
                pos = start
    except OSError as e:
        raise JournalError(f"{path}: cannot read the journal ({e.strerror})") from e
    return JournalPosition(name, 0)


def names_on_line(line: bytes) -> list[SsmixName]:
    """Every SS-MIX2 file name on a journal line, whatever the line's format (path components and
    surrounding fields are separate tokens).  Names whose folder would be malformed (patient ID shorter
    than 4 characters) are left out."""
    out: list[SsmixName] = []
    for tok in _TOKEN.findall(line):
        if tok.count(b"_") != 6:
            continue
        try:
            name = parse_name(tok.decode("ascii"))
        except BadName:
            continue
        if len(name.patient_id) >= 4:
            out.append(name)
    return out


def is_well_formed(line: bytes) -> bool:
    """True if ``line`` (without its line break) is in the format Hakobune writes."""
    fields = line.split(b"\t")
    if len(fields) not in (3, 4) or not _TS17.match(fields[0]):
        return False
    op = fields[1].decode("ascii", "replace")
    if op not in OPS or (op == "RENAME") != (len(fields) == 4):
        return False
    for rel in fields[2:]:
        parts = rel.split(b"/")
        if len(parts) != 6 or any(p in (b"", b".", b"..") for p in parts):
            return False
        try:
            parse_name(parts[5].decode("ascii"))
        except (BadName, UnicodeDecodeError):
            return False
    return True


class JournalReader:
    """Reads the journal from a position, yielding the dirty leaf folders named on each line.

    Iterate :meth:`dirty_dirs` to the end; then :attr:`position` is where the next read starts and the
    counters describe what was read.  Memory is bounded by :data:`MAX_LINE`, whatever the journal size.
    """

    def __init__(self, journal_dir: Path, since: JournalPosition) -> None:
        self.journal_dir = journal_dir
        self.since = since
        self.position = since
        self.files_read = 0
        self.bytes_read = 0
        self.lines = 0  # non-blank lines read
        self.malformed = 0  # lines not in the format Hakobune writes (names on them still count)
        self.unnamed = 0  # lines that name no SS-MIX2 file (their change, if any, waits for a walk)
        self.names = 0  # SS-MIX2 names found
        self._files = self._plan()

    def _plan(self) -> list[tuple[str, int]]:
        """(file, start offset) to read, checking that the saved position still fits the journal."""
        files = journal_files(self.journal_dir)
        since = self.since
        if since.file and since.file not in files:
            raise JournalError(
                f"{self.journal_dir / since.file}: the journal file of the saved position is gone"
            )
        plan: list[tuple[str, int]] = []
        for name in files:
            if since.file and name < since.file:
                continue
            offset = since.offset if name == since.file else 0
            if offset:
                try:
                    size = (self.journal_dir / name).stat().st_size
                except OSError as e:
                    raise JournalError(f"{self.journal_dir / name}: cannot read ({e.strerror})") from e
                if size < offset:
                    raise JournalError(
                        f"{self.journal_dir / name}: shorter than the saved position (truncated or rewritten)"
                    )
            plan.append((name, offset))
        return plan

    @property
    def pending_files(self) -> int:
        """Journal files this read covers (at least partly)."""
        return len(self._files)

    def dirty_dirs(self) -> Iterator[str]:
        """Leaf folders (``PID[0:3]/PID[3:6]/PID/date/type``) named on the lines read; duplicates are
        possible (the caller de-duplicates)."""
        for i, (name, offset) in enumerate(self._files):
            last = i == len(self._files) - 1
            yield from self._read_file(name, offset, last)

    def _read_file(self, name: str, offset: int, last: bool) -> Iterator[str]:
        path = self.journal_dir / name
        try:
            fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as e:
            raise JournalError(f"{path}: cannot read the journal ({e.strerror})") from e
        with fh:
            fh.seek(offset)
            pos = offset
            self.files_read += 1
            while True:
                line = fh.readline(MAX_LINE)
                if not line:
                    break
                if not line.endswith(b"\n"):
                    if len(line) >= MAX_LINE:  # an overlong line: skip to its end
                        pos += len(line) + self._skip_line(fh)
                        self.bytes_read += len(line)
                        self.lines += 1
                        self.malformed += 1
                        self.unnamed += 1
                        continue
                    if last:  # an append in progress: read it next time
                        break
                pos += len(line)
                self.bytes_read += len(line)
                yield from self._take(line.rstrip(b"\r\n"))
            self.position = JournalPosition(name, pos)

    @staticmethod
    def _skip_line(fh: BinaryIO) -> int:
        skipped = 0
        while True:
            part = fh.readline(MAX_LINE)
            skipped += len(part)
            if not part or part.endswith(b"\n"):
                return skipped

    def _take(self, line: bytes) -> Iterator[str]:
        if not line.strip():
            return
        self.lines += 1
        if not is_well_formed(line):
            self.malformed += 1
        names = names_on_line(line)
        if not names:
            self.unnamed += 1
            return
        self.names += len(names)
        seen: set[str] = set()
        for n in names:
            folder = n.folder
            if folder not in seen:
                seen.add(folder)
                yield folder

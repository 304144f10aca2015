"""Read an SS-MIX2 tree into records.

Every file ends in exactly one of three states: **read** (its records returned), **skipped** (a data type
outside scope, counted by type) or **quarantined** (with a one-line reason).  Nothing is dropped silently and
no input stops the rest.  Large trees are read by a pool of worker processes over patient folders, in
bounded batches, so memory stays flat however many files the hospital holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import TypeVar

from agent.ssmix2.layout import (
    IN_SCOPE,
    BadName,
    FoundFile,
    SsmixName,
    StrayEntry,
    check_folder,
    iter_patient_dirs,
    iter_patient_files,
    parse_name,
    patient_folder,
)
from agent.ssmix2.mapping import FIELD_MASKS, MissingSegment, to_records
from agent.ssmix2.message import parse
from hakobune.compiled import compiled
from hakobune.errors import UnreadableMessage
from hakobune.parallel import cycle_collection_paused, ordered_map
from hakobune.records import Record

T = TypeVar("T")

#: Files larger than this are not SS-MIX2 messages (the largest real ones are a few hundred KB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class Status(StrEnum):
    READ = "read"
    SKIPPED = "skipped"
    QUARANTINED = "quarantined"


@dataclass(slots=True)
class FileOutcome:
    """What became of one file.  ``records`` is filled for read files (current or not)."""

    relpath: str
    status: Status
    name: SsmixName | None = None
    reason: str = ""
    size: int = 0
    mtime_ns: int = 0
    records: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


def read_found(root: str, found: FoundFile) -> FileOutcome:
    """Read one file found by the walk (name checks, folder checks, decode, validate, map).

    ``found.size`` is -1 when the walk did not stat the file: the size and mtime then come from the open
    file (or, for a file that is not read, from one ``lstat``)."""
    return _finish(*_fetch(root, found))


Fetched = tuple[FileOutcome, SsmixName | None, bytes | None]


def _fetch(root: str, found: FoundFile) -> Fetched:
    """The I/O half of :func:`read_found`: name and folder checks, then the file's bytes.  Bytes None: the
    outcome is already final (quarantined or skipped)."""
    out = FileOutcome(found.relpath, Status.QUARANTINED, size=found.size, mtime_ns=found.mtime_ns)
    name = _name_checks(out, found.file_name, found.rel_dir)
    if name is None:
        return _stat_unread(root, out), None, None
    try:
        raw = _read_message(os.path.join(root, found.relpath), out)
    except OSError as e:
        out.reason = f"cannot read: {e.strerror or e}"
        return out, None, None
    if raw is None:
        _too_large(out)
    return out, name, raw


def _too_large(out: FileOutcome) -> None:
    out.reason = f"too large for an SS-MIX2 message ({out.size} bytes)"


def _name_checks(out: FileOutcome, file_name: str, rel_dir: tuple[str, ...]) -> SsmixName | None:
    """The file's name, if the file is to be read; else None, with ``out`` quarantined (a bad name, the
    wrong folder) or skipped (a data type not backed up) and its reason."""
    try:
        name = parse_name(file_name)
    except BadName as e:
        out.reason = str(e)
        return None
    out.name = name
    wrong = check_folder(rel_dir, name)
    if wrong is not None:
        out.reason = wrong
        return None
    return _in_scope(out, name)


def _in_scope(out: FileOutcome, name: SsmixName) -> SsmixName | None:
    """``name``, or None with ``out`` skipped when its data type is not backed up."""
    if name.data_type not in IN_SCOPE:
        out.status = Status.SKIPPED
        out.reason = f"data type {name.data_type} is not backed up"
        return None
    return name


def _fetch_patient_fast(root: str, patient_rel: str) -> list[Fetched] | None:
    """A patient folder's files through the compiled walk (agent/ssmix2/_fastwalk.c), which lists the
    folders and reads the files of the data types backed up; None where it steps aside (anything but
    plain folders and files, an error, a file that changes while read) or is not built: the Python walk
    then takes the folder."""
    fast = _fast_walk
    if fast is None:
        return None
    entries = fast(os.path.join(root, patient_rel), IN_SCOPE, MAX_MESSAGE_BYTES)
    if entries is None:
        return None
    head = tuple(patient_rel.split("/"))
    # the walk gives a name's fields when it is well formed and its folders are its patient's, date's and
    # type's: then this folder must be the patient's too (else _name_checks words the reason)
    placed = patient_rel == patient_folder(head[-1])
    fetched: list[Fetched] = []
    for date, dtype, file_name, raw, size, mtime_ns, fields in entries:
        out = FileOutcome(
            f"{patient_rel}/{date}/{dtype}/{file_name}", Status.QUARANTINED, size=size, mtime_ns=mtime_ns
        )
        name: SsmixName | None
        if fields is not None and placed:
            out.name = SsmixName(*fields)
            name = _in_scope(out, out.name)
        else:
            name = _name_checks(out, file_name, (*head, date, dtype))
        if name is None:
            fetched.append((out, None, None))
            continue
        if raw is None:  # (a data type backed up is read, unless the file is too large)
            _too_large(out)
        fetched.append((out, name, raw))
    return fetched


#: (date, data type, file name, bytes, size, mtime_ns, the name's 7 fields or None)
WalkEntry = tuple[str, str, str, bytes | None, int, int, tuple[str, str, str, str, str, str, str] | None]


FastWalk = Callable[[str, frozenset[str], int], list[WalkEntry] | None]


def _load_fast_walk() -> FastWalk | None:
    def load() -> FastWalk:
        from agent.ssmix2._fastwalk import read_patient

        return read_patient

    return compiled(load)


#: The compiled walk of one patient folder, or None (without a C compiler, or HAKOBUNE_PURE_PYTHON=1).
_fast_walk = _load_fast_walk()


def _finish(out: FileOutcome, name: SsmixName | None, raw: bytes | None) -> FileOutcome:
    """The CPU half of :func:`read_found`: decode, validate and map the bytes :func:`_fetch` read."""
    if raw is None or name is None:
        return out
    try:
        msg = parse(raw, name.data_type, FIELD_MASKS.get(name.data_type))
        out.records = to_records(msg, name, out.warnings)
    except (UnreadableMessage, MissingSegment) as e:
        out.reason = str(e)
        return out
    except (UnicodeError, ValueError, IndexError, KeyError) as e:
        # A reader defect must not stop the tree; the file is quarantined and the defect named.
        out.reason = (
            f"unreadable (reader error {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
        return out
    out.status = Status.READ
    return out


def _read_message(path: str, out: FileOutcome) -> bytes | None:
    """The file's bytes, or None when it is larger than :data:`MAX_MESSAGE_BYTES`; fills ``out.size`` and
    ``out.mtime_ns`` when the walk left them unknown.

    A tree holds millions of small files, so this costs three system calls (open, read, close; plus fstat
    when the size is unknown) where Python's buffered ``open().read()`` makes nine (fstat twice, isatty's
    ioctl, two lseeks, a read at EOF): on this file system that is ~12 µs of kernel time per file.  One read
    of ``size + 1`` bytes that returns exactly ``size`` is the whole file; anything else (the file grew or
    shrank since the walk, a short read) reads on to the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = out.size
        if size < 0:
            st = os.fstat(fd)
            size = out.size = st.st_size
            out.mtime_ns = st.st_mtime_ns
        if size > MAX_MESSAGE_BYTES:
            return None
        data = os.read(fd, size + 1)
        if len(data) == size:
            return data
        parts = [data]
        total = len(data)
        while total <= MAX_MESSAGE_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            total += len(chunk)
        out.size = total
        return None
    finally:
        os.close(fd)


def _stat_unread(root: str, out: FileOutcome) -> FileOutcome:
    """Fill the size and mtime of a file that is not read, if the walk left them unknown."""
    if out.size < 0:
        try:
            st = os.lstat(os.path.join(root, out.relpath))
            out.size, out.mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            out.size = 0
    return out


def read_file(root: str, relpath: str) -> FileOutcome:
    """Read one file given by its path relative to the storage root."""
    full = os.path.join(root, relpath)
    try:
        st = os.stat(full)
    except OSError as e:
        return FileOutcome(relpath, Status.QUARANTINED, reason=f"cannot read: {e.strerror or e}")
    parts = tuple(relpath.split("/"))
    if len(parts) != 6:
        return FileOutcome(
            relpath,
            Status.QUARANTINED,
            size=st.st_size,
            reason="not in the SS-MIX2 layout (expected PID[0:3]/PID[3:6]/PID/date/type/file)",
        )
    return read_found(root, FoundFile(relpath, parts[:5], parts[5], st.st_size, st.st_mtime_ns))


def _stray(entry: StrayEntry) -> FileOutcome:
    return FileOutcome(entry.relpath, Status.QUARANTINED, reason=entry.reason)


def read_patients(root: str, patient_rels: list[str]) -> list[FileOutcome]:
    """Every file of the given patient folders (the unit of work a worker process does).

    The batch is read in two passes: first every folder is listed and every file read (system calls
    only), then the bytes are parsed.  Interleaving the two costs ~20% more user time per file here: each
    system call leaves the caches and branch predictors colder for the parser that follows.  The cyclic
    garbage collector is paused meanwhile (:func:`hakobune.parallel.cycle_collection_paused`)."""
    fetched: list[Fetched] = []
    for rel in patient_rels:
        fast = _fetch_patient_fast(root, rel)
        if fast is not None:
            fetched += fast
            continue
        try:
            for found in iter_patient_files(root, rel):
                fetched.append(
                    (_stray(found), None, None) if isinstance(found, StrayEntry) else _fetch(root, found)
                )
        except OSError as e:
            fetched.append(
                (
                    FileOutcome(rel, Status.QUARANTINED, reason=f"cannot list folder: {e.strerror or e}"),
                    None,
                    None,
                )
            )
    with cycle_collection_paused():
        return [_finish(*item) for item in fetched]


def _batches(root: str, batch: int) -> Iterator[list[str] | FileOutcome]:
    pending: list[str] = []
    for item in iter_patient_dirs(root):
        if isinstance(item, StrayEntry):
            if pending:  # keep sorted path order: the folders before the stray entry go first
                yield pending
                pending = []
            yield _stray(item)
            continue
        pending.append(item)
        if len(pending) >= batch:
            yield pending
            pending = []
    if pending:
        yield pending


def map_patients(
    root: str | os.PathLike[str],
    fn: Callable[[str, list[str]], T],
    workers: int = 1,
    batch: int = 64,
) -> Iterator[T | FileOutcome]:
    """Apply ``fn(root, patient_folders)`` to the tree in batches of patient folders, in sorted order.

    ``fn`` must be a module-level function (it runs in worker processes when ``workers > 1``).  Stray
    entries found above patient level are yielded as quarantined :class:`FileOutcome` in their place.  At
    most ``4 × workers`` batches are in flight, so memory is bounded by the batch size, not the tree.
    ``workers=0`` means one per core."""
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise FileNotFoundError(root_s)
    yield from ordered_map(partial(fn, root_s), _batches(root_s, batch), workers, passthrough=FileOutcome)


def read_tree(root: str | os.PathLike[str], workers: int = 1, batch: int = 64) -> Iterator[FileOutcome]:
    """Every file under ``root`` as a :class:`FileOutcome` (records included), in sorted path order."""
    for item in map_patients(root, read_patients, workers, batch):
        if isinstance(item, FileOutcome):
            yield item
        else:
            yield from item

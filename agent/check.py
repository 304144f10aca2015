"""``agent check``: what a sync would read, computed in one streaming pass over the tree.

Patient counts use the fact that :func:`agent.ssmix2.read_tree` yields files grouped by patient folder, so
only the current patient's data types are held in memory, never a set of all patient IDs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

from agent.ssmix2 import FileOutcome, Status
from agent.ssmix2.reader import map_patients, read_patients
from hakobune.parallel import cycle_collection_paused
from hakobune.records import Record


@dataclass(slots=True)
class QuarantinedFile:
    file: str  # file name (what hospital IT searches for)
    path: str  # path relative to the storage root
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "path": self.path, "reason": self.reason}


@dataclass(slots=True)
class TypeCounts:
    files: int = 0
    current: int = 0
    superseded: int = 0
    deleted: int = 0
    patients: int = 0
    records: int = 0


@dataclass(slots=True)
class CheckReport:
    root: str
    files: int = 0
    bytes: int = 0
    read: int = 0
    skipped: int = 0
    quarantined: int = 0
    patients: int = 0
    by_type: dict[str, TypeCounts] = field(default_factory=dict)
    skipped_by_type: Counter[str] = field(default_factory=Counter)
    records_by_kind: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    first_date: str = ""
    last_date: str = ""
    quarantine: list[QuarantinedFile] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The documented ``agent check --json`` object (see docs/agent-check.md)."""
        return {
            "root": self.root,
            "files": self.files,
            "bytes": self.bytes,
            "read": self.read,
            "skipped": self.skipped,
            "quarantined": self.quarantined,
            "patients": self.patients,
            "date_range": {"first": _iso(self.first_date), "last": _iso(self.last_date)},
            "by_type": {
                t: {
                    "files": c.files,
                    "current": c.current,
                    "superseded": c.superseded,
                    "deleted": c.deleted,
                    "patients": c.patients,
                    "records": c.records,
                }
                for t, c in sorted(self.by_type.items())
            },
            "skipped_by_type": dict(sorted(self.skipped_by_type.items())),
            "records_by_kind": dict(sorted(self.records_by_kind.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "quarantine": [q.to_json() for q in self.quarantine],
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files / self.seconds) if self.seconds > 0 else None,
        }


def _iso(d: str) -> str | None:
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}" if d else None


def _merge_counter(a: Counter[str], b: Counter[str]) -> None:
    for k, v in b.items():
        a[k] += v


def merge(into: CheckReport, part: CheckReport) -> None:
    """Add a batch's summary into the running report (batches hold whole patient folders)."""
    for name in ("files", "bytes", "read", "skipped", "quarantined", "patients"):
        setattr(into, name, getattr(into, name) + getattr(part, name))
    for t, c in part.by_type.items():
        tc = into.by_type.setdefault(t, TypeCounts())
        for name in ("files", "current", "superseded", "deleted", "patients", "records"):
            setattr(tc, name, getattr(tc, name) + getattr(c, name))
    _merge_counter(into.skipped_by_type, part.skipped_by_type)
    _merge_counter(into.records_by_kind, part.records_by_kind)
    _merge_counter(into.warnings, part.warnings)
    if part.first_date and (not into.first_date or part.first_date < into.first_date):
        into.first_date = part.first_date
    if part.last_date > into.last_date:
        into.last_date = part.last_date
    into.quarantine.extend(part.quarantine)


def _patient_folder(relpath: str) -> str:
    """``aaa/bbb/PID`` of a path below a patient folder; "" for a path above one."""
    a = relpath.find("/")
    b = relpath.find("/", a + 1) if a >= 0 else -1
    c = relpath.find("/", b + 1) if b >= 0 else -1
    return relpath[:c] if c >= 0 else ""


_kind = attrgetter("kind")


def summarize(outcomes: list[FileOutcome], root: str = "") -> CheckReport:
    """Summary of the outcomes of whole patient folders (files of one patient are adjacent).

    Runs once per file of the tree, so the counts are kept in locals, a file's patient folder is found
    again only when its path leaves the current one, and the records are counted by kind in one C loop
    (``Counter.update``) over the whole batch."""
    rep = CheckReport(root=root)
    by_type = rep.by_type
    current: list[list[Record]] = []  # the records of current files, counted by kind at the end
    files = size = read = 0
    first_date = last_date = ""
    cur_patient = cur_prefix = ""
    cur_types: set[str] = set()
    any_read = False

    def close_patient() -> None:
        nonlocal any_read
        for t in cur_types:
            by_type[t].patients += 1
        if any_read:
            rep.patients += 1
        cur_types.clear()
        any_read = False

    for o in outcomes:
        files += 1
        size += o.size
        if not (cur_prefix and o.relpath.startswith(cur_prefix)):
            folder = _patient_folder(o.relpath)
            if folder != cur_patient:
                close_patient()
                cur_patient = folder
                cur_prefix = folder + "/" if folder else ""
        status = o.status
        if status is Status.QUARANTINED:
            rep.quarantined += 1
            rep.quarantine.append(QuarantinedFile(o.file_name, o.relpath, o.reason))
            continue
        if status is Status.SKIPPED:
            rep.skipped += 1
            rep.skipped_by_type[o.name.data_type if o.name else "?"] += 1
            continue
        name = o.name
        assert name is not None
        read += 1
        data_type = name.data_type
        tc = by_type.get(data_type)
        if tc is None:
            tc = by_type[data_type] = TypeCounts()
        tc.files += 1
        flag = name.flag
        if flag == "1":
            tc.current += 1
            cur_types.add(data_type)
            any_read = True
            records = o.records
            tc.records += len(records)
            current.append(records)
        elif flag == "2":
            tc.superseded += 1
        else:
            tc.deleted += 1
        care_date = name.care_date
        if care_date != "-":
            if not first_date or care_date < first_date:
                first_date = care_date
            if care_date > last_date:
                last_date = care_date
        if o.warnings:
            rep.warnings.update(o.warnings)
    close_patient()
    rep.records_by_kind.update(map(_kind, chain.from_iterable(current)))
    rep.files, rep.bytes, rep.read = files, size, read
    rep.first_date, rep.last_date = first_date, last_date
    return rep


def summarize_patients(root: str, patient_folders: list[str]) -> CheckReport:
    """Worker function: read and summarise a batch of patient folders.  The cyclic collector stays paused
    until the batch's records are gone (freed by reference counting as the summary is made), so that no
    collection walks them when it resumes."""
    with cycle_collection_paused():
        return summarize(read_patients(root, patient_folders), root)


def check_tree(
    root: str | os.PathLike[str],
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Read the whole tree as a sync would and summarise it (``on_progress`` gets files done so far).
    Raises FileNotFoundError for a missing root."""
    rep = CheckReport(root=os.fspath(root))
    started = time.perf_counter()
    for part in map_patients(root, summarize_patients, workers=workers):
        merge(rep, summarize([part]) if isinstance(part, FileOutcome) else part)
        if on_progress is not None:
            on_progress(rep.files)
    rep.root = os.fspath(root)
    rep.seconds = time.perf_counter() - started
    return rep

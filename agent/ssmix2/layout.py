"""The SS-MIX2 standardized storage layout: file names, folder checks and the walk.

``root/PID[0:3]/PID[3:6]/PID/(yyyyMMdd|-)/<data type>/<file>``; a file name is 7 fields joined by ``_``:
patient ID, care date, data type, order number, timestamp, department, condition flag (``1`` current,
``2`` superseded, ``0`` deleted).  The logical key of a file is (patient, date, type, order no): updates
and deletions rename files, so the key, not the name, identifies the thing a file holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from operator import attrgetter

from hakobune.records import record

#: The data types read into records, with the HL7 message code (MSH-9.1) each must carry.
MESSAGE_CODE = {
    "ADT-00": "ADT",
    "ADT-61": "ADT",
    "PPR-01": "PPR",
    "OMP-01": "RDE",
    "OMP-02": "RDE",
    "OMP-11": "RAS",
    "OMP-12": "RAS",
    "OML-11": "OUL",
}
#: Data types read into records; every other type is counted and skipped.
IN_SCOPE = frozenset(MESSAGE_CODE)
FLAGS = {"1": "current", "2": "superseded", "0": "deleted"}

_DATA_TYPE = re.compile(r"^[A-Z][A-Z0-9]{2}(?:-[0-9A-Z]{2})?$")
_ALNUM = re.compile(r"^[0-9A-Za-z]+$")
_DIGITS = re.compile(r"^[0-9]+$")
#: A well-formed name in one match (the fast path); names it refuses get the field-by-field checks, which
#: word the reason.  The care date's calendar validity is checked apart (cached: few distinct dates).
_NAME = re.compile(
    r"([0-9A-Za-z]+)_(-|[0-9]{8})_([A-Z][A-Z0-9]{2}(?:-[0-9A-Z]{2})?)_([0-9A-Za-z]+)_([0-9]{8,17})"
    r"_(-|[0-9A-Za-z]+)_([120])"
)
_GOOD_DATES: set[str] = {"-"}


@record
class SsmixName:
    """The 7 fields of an SS-MIX2 file name."""

    patient_id: str
    care_date: str  # yyyyMMdd or "-"
    data_type: str
    order_no: str
    timestamp: str
    department: str
    flag: str  # "1" | "2" | "0"

    @property
    def file_key(self) -> tuple[str, str, str, str]:
        return (self.patient_id, self.care_date, self.data_type, self.order_no)

    @property
    def current(self) -> bool:
        return self.flag == "1"

    @property
    def folder(self) -> str:
        """Path of the folder the file belongs in, relative to the storage root."""
        return f"{patient_folder(self.patient_id)}/{self.care_date}/{self.data_type}"

    @property
    def file_name(self) -> str:
        return "_".join(
            (
                self.patient_id,
                self.care_date,
                self.data_type,
                self.order_no,
                self.timestamp,
                self.department,
                self.flag,
            )
        )


def patient_folder(patient_id: str) -> str:
    """A patient's folder relative to the storage root: ``PID[0:3]/PID[3:6]/PID``."""
    return f"{patient_id[0:3]}/{patient_id[3:6]}/{patient_id}"


class BadName(ValueError):
    """A file name that is not an SS-MIX2 name; the message is the quarantine reason."""


def parse_name(name: str) -> SsmixName:
    """Parse a file name; raises :class:`BadName` with a one-line reason."""
    m = _NAME.fullmatch(name)
    if m is not None:
        care_date = m.group(2)
        if care_date in _GOOD_DATES or _valid_date(care_date):
            if len(_GOOD_DATES) < 100_000:
                _GOOD_DATES.add(care_date)
            return SsmixName(*m.groups())
    return _parse_name_checked(name)


def _parse_name_checked(name: str) -> SsmixName:
    parts = name.split("_")
    if len(parts) != 7:
        raise BadName(f"bad file name: expected 7 fields separated by '_', found {len(parts)}")
    pid, care_date, dtype, order_no, ts, dept, flag = parts
    if not pid or not _ALNUM.match(pid):
        raise BadName("bad file name: patient ID field is empty or not alphanumeric")
    if care_date != "-" and not _valid_date(care_date):
        raise BadName(f"bad file name: care date {care_date!r} is not yyyyMMdd or '-'")
    if not _DATA_TYPE.match(dtype):
        raise BadName(f"bad file name: data type {dtype!r} is not like 'OMP-01'")
    if not order_no or not _ALNUM.match(order_no):
        raise BadName("bad file name: order number field is empty or not alphanumeric")
    if not _DIGITS.match(ts) or not 8 <= len(ts) <= 17:
        raise BadName(f"bad file name: timestamp {ts!r} is not yyyyMMddHHmmssfff")
    if not dept or not (dept == "-" or _ALNUM.match(dept)):
        raise BadName(f"bad file name: department {dept!r} is not a code or '-'")
    if flag not in FLAGS:
        raise BadName(f"bad file name: condition flag {flag!r} is not 1, 2 or 0")
    return SsmixName(pid, care_date, dtype, order_no, ts, dept, flag)


def _valid_date(s: str) -> bool:
    if len(s) != 8 or not s.isdigit():
        return False
    try:
        date(int(s[0:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return False
    return True


def check_folder(rel_dir: tuple[str, ...], name: SsmixName) -> str | None:
    """Reason the file is in the wrong folder, or None.  ``rel_dir`` is the 5 folder names below root."""
    pid = name.patient_id
    if rel_dir == (pid[0:3], pid[3:6], pid, name.care_date, name.data_type):
        return None
    return f"wrong folder: filed under {'/'.join(rel_dir)} but its name belongs in {name.folder}"


@dataclass(frozen=True, slots=True)
class StrayEntry:
    """Something in the tree that is not where SS-MIX2 puts files (quarantined with its reason)."""

    relpath: str
    reason: str


def iter_patient_dirs(root: str) -> Iterator[str | StrayEntry]:
    """Patient folders (``root/aaa/bbb/PID``, relative) in sorted order, and anything stray on the way."""
    for a in _sorted_entries(root):
        rel_a = a.name
        if not a.is_dir(follow_symlinks=False):
            yield StrayEntry(rel_a, "not in the SS-MIX2 layout: a file where patient-ID folders belong")
            continue
        for b in _sorted_entries(a.path):
            rel_b = f"{rel_a}/{b.name}"
            if not b.is_dir(follow_symlinks=False):
                yield StrayEntry(rel_b, "not in the SS-MIX2 layout: a file where patient-ID folders belong")
                continue
            for p in _sorted_entries(b.path):
                rel_p = f"{rel_b}/{p.name}"
                if not p.is_dir(follow_symlinks=False):
                    yield StrayEntry(rel_p, "not in the SS-MIX2 layout: a file where patient folders belong")
                    continue
                yield rel_p


@record
class FoundFile:
    relpath: str
    rel_dir: tuple[str, ...]
    file_name: str
    size: int
    mtime_ns: int


def iter_patient_files(root: str, patient_rel: str) -> Iterator[FoundFile | StrayEntry]:
    """Files below one patient folder (``date/type/file``), sorted (one ``scandir`` per folder).  Files are
    not stat-ed here (size -1): the reader takes size and mtime from the open file, one path look-up
    fewer per file."""
    base = os.path.join(root, patient_rel)
    head = tuple(patient_rel.split("/"))
    for d in _sorted_entries(base):
        rel_d = f"{patient_rel}/{d.name}"
        if not d.is_dir(follow_symlinks=False):
            yield StrayEntry(rel_d, "not in the SS-MIX2 layout: a file where care-date folders belong")
            continue
        for t in _sorted_entries(d.path):
            rel_t = f"{rel_d}/{t.name}"
            if not t.is_dir(follow_symlinks=False):
                yield StrayEntry(rel_t, "not in the SS-MIX2 layout: a file where data-type folders belong")
                continue
            rel_dir = (*head, d.name, t.name)
            for f in _sorted_entries(t.path):
                rel_f = f"{rel_t}/{f.name}"
                if not f.is_file(follow_symlinks=False):
                    yield StrayEntry(rel_f, "not a regular file (folder or link where message files belong)")
                    continue
                yield FoundFile(rel_f, rel_dir, f.name, -1, 0)  # the reader stats the open file


def _sorted_entries(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=_entry_name)


_entry_name = attrgetter("name")

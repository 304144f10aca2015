"""Write (and advance) a synthetic SS-MIX2 tree, in parallel over patient ranges.

Every patient's files are a pure function of (seed, patient index, per-day change rates): workers take
ranges of patients and write their files, so the tree is byte-identical for any worker count.  ``advance``
re-simulates each patient up to the new last day and applies only the difference to the tree: renames
(``_1``→``_2`` superseded, ``_1``→``_0`` deleted) and new files.

Like a gateway that keeps a transaction journal, the generator also writes ``out/journal/TR_<day>.DAT``:
one line per storage operation of each simulated day (``ADD`` of a new ``_1`` file, ``RENAME`` to ``_2`` or
``_0``), in the format of :mod:`agent.ssmix2.journal`.  The history before day 0 is what the storage held
when journaling started, so it has no journal.  Lines of a day are sorted (by timestamp first), so the
journal, too, is the same for any worker count, and ``generate(n)`` + ``advance(k)`` writes the same
journal files as ``generate(n + k)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.ssmix2.journal import format_line, journal_file_name
from hakobune.errors import InputError
from hakobune.synth.messages import render
from hakobune.synth.model import (
    BASE_RATE,
    NEVER,
    START,
    History,
    Version,
    ms_of,
    rate_multipliers,
    simulate,
    ts17,
    ymd_of_day,
)

FORMAT = 1
SSMIX2_DIR = "ssmix2"
CONSENT_FILE = "consent.csv"
META_FILE = "synth.json"
JOURNAL_DIR = "journal"
DEFAULT_CHANGE_RATE = BASE_RATE

Progress = Callable[[int, int], None]


def _model_version() -> str:
    """Hash of the modules that decide a tree's content: ``advance`` must run the code that wrote the tree."""
    h = hashlib.sha256()
    for name in ("clinical.py", "messages.py", "model.py", "names.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


MODEL_VERSION = _model_version()


@dataclass
class SynthStats:
    """What a run produced (``to_json`` for ``--json``)."""

    patients: int
    days: int  # days of history the tree was first generated with
    days_done: int  # days simulated so far (days + every advance)
    seed: int
    change_rates: list[tuple[int, float]]
    files: int = 0  # files in the tree
    files_by_flag: dict[str, int] = field(default_factory=dict)
    files_by_type: dict[str, int] = field(default_factory=dict)
    bytes: int = 0  # bytes of all files in the tree
    files_written: int = 0  # this run
    files_renamed: int = 0  # this run (superseded or deleted)
    bytes_written: int = 0
    renames_missing: int = 0  # renames whose source was no longer there (tree edited by hand)
    consent: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "days": self.days,
            "days_done": self.days_done,
            "seed": self.seed,
            "change_rates": [list(x) for x in self.change_rates],
            "start_date": START.isoformat(),
            "last_date": _iso(ymd_of_day(self.days_done - 1)) if self.days_done else None,
            "files": self.files,
            "files_by_flag": dict(sorted(self.files_by_flag.items())),
            "files_by_type": dict(sorted(self.files_by_type.items())),
            "bytes": self.bytes,
            "files_written": self.files_written,
            "files_renamed": self.files_renamed,
            "bytes_written": self.bytes_written,
            "renames_missing": self.renames_missing,
            "consent": dict(sorted(self.consent.items())),
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }


def _iso(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


@dataclass
class _Chunk:
    files_by_flag: Counter[str] = field(default_factory=Counter)
    files_by_type: Counter[str] = field(default_factory=Counter)
    written: int = 0
    renamed: int = 0
    bytes_written: int = 0
    missing: int = 0
    consent: list[tuple[str, str]] = field(default_factory=list)
    patients: int = 0
    journal: list[tuple[int, str]] = field(default_factory=list)  # (simulated day, journal line)


@dataclass(frozen=True)
class _Task:
    root: str
    seed: int
    start: int
    stop: int
    multipliers: tuple[float, ...]
    t_from: int | None  # None: fresh tree; else the number of days already on disk


_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, _O_FLAGS, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)


def _run(task: _Task) -> _Chunk:
    out = _Chunk()
    t_to = len(task.multipliers)
    mults = list(task.multipliers)
    made_prefix: set[str] = set()
    for i in range(task.start, task.stop):
        h = simulate(task.seed, i, mults)
        out.patients += 1
        if h.profile.consent:
            out.consent.append((h.profile.pid, h.profile.consent))
        if task.t_from is None:
            _write_patient(task, h, t_to, out, made_prefix)
        else:
            _advance_patient(task, h, task.t_from, t_to, out)
    return out


def _patient_dir(root: str, pid: str) -> tuple[str, str]:
    prefix = f"{root}/{pid[0:3]}/{pid[3:6]}"
    return prefix, f"{prefix}/{pid}"


def _write_patient(task: _Task, h: History, t_to: int, out: _Chunk, made_prefix: set[str]) -> None:
    pid = h.profile.pid
    prefix, pdir = _patient_dir(task.root, pid)
    if prefix not in made_prefix:
        os.makedirs(prefix, exist_ok=True)
        made_prefix.add(prefix)
    _mkdir(pdir)
    made: set[str] = set()
    for v in h.versions:
        flag = v.flag_at(t_to)
        ddir = f"{pdir}/{v.date}"
        tdir = f"{ddir}/{v.dtype}"
        if tdir not in made:
            if ddir not in made:
                _mkdir(ddir)
                made.add(ddir)
            _mkdir(tdir)
            made.add(tdir)
        data = render(task.seed, pid, v)
        _write(f"{tdir}/{v.name(pid, flag)}", data)
        out.files_by_flag[flag] += 1
        out.files_by_type[v.dtype] += 1
        out.written += 1
        out.bytes_written += len(data)
    out.journal.extend(_journal_lines(pid, h.versions, 0, t_to, set()))


def _advance_patient(task: _Task, h: History, t_from: int, t_to: int, out: _Chunk) -> None:
    pid = h.profile.pid
    _prefix, pdir = _patient_dir(task.root, pid)
    made: set[str] = set()
    failed: set[int] = set()
    for i, v in enumerate(h.versions):
        flag = v.flag_at(t_to)
        out.files_by_flag[flag] += 1
        out.files_by_type[v.dtype] += 1
        tdir = f"{pdir}/{v.date}/{v.dtype}"
        if v.day < t_from:
            old = v.flag_at(t_from)
            if old != flag:
                try:
                    os.rename(f"{tdir}/{v.name(pid, old)}", f"{tdir}/{v.name(pid, flag)}")
                    out.renamed += 1
                except FileNotFoundError:
                    out.missing += 1
                    failed.add(i)
            continue
        if tdir not in made:
            os.makedirs(tdir, exist_ok=True)
            made.add(tdir)
        data = render(task.seed, pid, v)
        _write(f"{tdir}/{v.name(pid, flag)}", data)
        out.written += 1
        out.bytes_written += len(data)
    out.journal.extend(_journal_lines(pid, h.versions, t_from, t_to, failed))


def _journal_lines(
    pid: str, versions: list[Version], d_from: int, t_to: int, failed: set[int]
) -> Iterator[tuple[int, str]]:
    """(day, line) for the storage operations of simulated days ``[d_from, t_to)``: each new file is an
    ``ADD`` of its ``_1`` name, each supersession or deletion a ``RENAME`` (just before the new version is
    written, or at a time of day derived from the name).  ``failed``: versions whose rename did not happen."""
    folder = f"{pid[0:3]}/{pid[3:6]}/{pid}"
    successor: dict[int, Version] = {}
    last: dict[tuple[str, str, str], int] = {}
    for i, v in enumerate(versions):
        key = (v.date, v.dtype, v.order)
        prev = last.get(key)
        if prev is not None and versions[prev].end_flag == "2":
            successor[prev] = v
        last[key] = i
    for i, v in enumerate(versions):
        rel = f"{folder}/{v.date}/{v.dtype}/{v.name(pid, '1')}"
        if d_from <= v.day < t_to:
            yield v.day, format_line(ts17(v.ts), "ADD", rel)
        if v.end_day != NEVER and d_from <= v.end_day < t_to and i not in failed:
            nxt = successor.get(i)
            at = nxt.ts - 1 if nxt is not None else _deletion_time(v.end_day, rel)
            new = f"{folder}/{v.date}/{v.dtype}/{v.name(pid, v.end_flag)}"
            yield v.end_day, format_line(ts17(at), "RENAME", rel, new)


def _deletion_time(day: int, rel: str) -> int:
    """A stable time of day (08:00-18:00) for a deletion, which the model does not time."""
    h = int.from_bytes(hashlib.blake2b(rel.encode("ascii"), digest_size=4).digest(), "big")
    return ms_of(day, 8 * 3_600_000 + h % (10 * 3_600_000))


class _JournalSpool:
    """Journal lines arrive per chunk, in any order: each day's lines are appended to a spool file and
    written sorted at the end (memory: one day's lines)."""

    def __init__(self, out: Path, fresh: bool) -> None:
        self.dir = out / JOURNAL_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.days: set[int] = set()
        for p in self.dir.iterdir():
            if p.name.startswith(".spool-") or (fresh and p.name.startswith("TR_")):
                p.unlink()

    def _spool(self, day: int) -> Path:
        return self.dir / f".spool-{ymd_of_day(day)}.tmp"

    def add(self, lines: list[tuple[int, str]]) -> None:
        by_day: dict[int, list[str]] = {}
        for day, line in lines:
            by_day.setdefault(day, []).append(line)
        for day, day_lines in by_day.items():
            with open(self._spool(day), "a", encoding="utf-8", newline="\n") as fh:
                fh.writelines(day_lines)
            self.days.add(day)

    def finish(self) -> None:
        for day in sorted(self.days):
            spool = self._spool(day)
            lines = spool.read_text(encoding="utf-8").splitlines(keepends=True)
            lines.sort()
            final = self.dir / journal_file_name(ymd_of_day(day))
            part = final.with_name(final.name + ".part")
            with open(part, "w", encoding="utf-8", newline="\n") as fh:
                fh.writelines(lines)
            os.replace(part, final)
            spool.unlink()


def _tasks(
    root: Path, seed: int, patients: int, mults: list[float], t_from: int | None, workers: int
) -> list[_Task]:
    size = max(20, min(500, patients // max(1, workers * 16) or 1))
    m = tuple(mults)
    return [_Task(str(root), seed, s, min(patients, s + size), m, t_from) for s in range(0, patients, size)]


def _execute(tasks: list[_Task], workers: int, patients: int, progress: Progress | None) -> Iterator[_Chunk]:
    done = 0
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            c = _run(t)
            done += c.patients
            if progress is not None:
                progress(done, patients)
            yield c
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        for c in pool.imap_unordered(_run, tasks):
            done += c.patients
            if progress is not None:
                progress(done, patients)
            yield c


def _collect(stats: SynthStats, chunks: Iterator[_Chunk], journal: _JournalSpool) -> list[tuple[str, str]]:
    flags: Counter[str] = Counter()
    types: Counter[str] = Counter()
    consent: list[tuple[str, str]] = []
    for c in chunks:
        flags.update(c.files_by_flag)
        types.update(c.files_by_type)
        stats.files_written += c.written
        stats.files_renamed += c.renamed
        stats.bytes_written += c.bytes_written
        stats.renames_missing += c.missing
        consent.extend(c.consent)
        journal.add(c.journal)
    journal.finish()
    stats.files_by_flag = dict(flags)
    stats.files_by_type = dict(types)
    stats.files = sum(flags.values())
    consent.sort()
    stats.consent = dict(Counter(scope for _, scope in consent))
    return consent


def _meta(stats: SynthStats) -> dict[str, Any]:
    """synth.json: parameters and tree figures, nothing that depends on the machine or the clock."""
    j = stats.to_json()
    for k in ("files_written", "files_renamed", "bytes_written", "renames_missing", "workers", "seconds"):
        j.pop(k)
    return {"generator": "hakobune synth", "format": FORMAT, "model_version": MODEL_VERSION, **j}


def _write_meta(out: Path, stats: SynthStats) -> None:
    (out / META_FILE).write_text(
        json.dumps(_meta(stats), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def _workers(workers: int | None) -> int:
    return max(1, workers if workers is not None else (os.cpu_count() or 1))


def generate(
    out: Path,
    patients: int,
    days: int,
    seed: int = 1,
    workers: int | None = None,
    change_rate: float = DEFAULT_CHANGE_RATE,
    progress: Progress | None = None,
) -> SynthStats:
    """Write ``out/ssmix2`` (the tree after ``days`` simulated days), ``out/consent.csv``, ``out/synth.json``
    and the transaction journal ``out/journal/TR_<day>.DAT`` of days 0 to ``days - 1``.

    Refuses a directory whose ``ssmix2`` already holds files."""
    if patients < 0 or days < 0:
        raise InputError(str(out), "patients and days must not be negative")
    if change_rate < 0:
        raise InputError(str(out), "change rate must not be negative")
    root = out / SSMIX2_DIR
    if root.exists() and any(root.iterdir()):
        raise InputError(
            str(root), "already holds an SS-MIX2 tree; use --advance to continue it or choose an empty --out"
        )
    root.mkdir(parents=True, exist_ok=True)
    n_workers = _workers(workers)
    started = time.perf_counter()
    rates = [(0, float(change_rate))]
    stats = SynthStats(patients, days, days, seed, rates, workers=n_workers)
    mults = rate_multipliers(rates, days)
    consent = _collect(
        stats,
        _execute(_tasks(root, seed, patients, mults, None, n_workers), n_workers, patients, progress),
        _JournalSpool(out, fresh=True),
    )
    stats.bytes = stats.bytes_written
    lines = ["patient_id,scope", *(f"{pid},{scope}" for pid, scope in consent)]
    (out / CONSENT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_meta(out, stats)
    stats.seconds = time.perf_counter() - started
    return stats


def read_meta(out: Path) -> dict[str, Any]:
    """The parameters of an existing synthetic tree (``out/synth.json``)."""
    path = out / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), "not found: not a tree written by hakobune synth") from None
    except json.JSONDecodeError as e:
        raise InputError(str(path), f"not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(str(path), "unknown synth.json format")
    return meta


def advance(
    out: Path,
    days: int,
    workers: int | None = None,
    change_rate: float | None = None,
    progress: Progress | None = None,
) -> SynthStats:
    """Continue the tree in ``out`` by ``days`` more days, in place: renames and new files only.

    The result is byte-identical to generating ``days_done + days`` days at once (with the same rates)."""
    meta = read_meta(out)
    if days < 0:
        raise InputError(str(out), "days must not be negative")
    if meta.get("model_version") != MODEL_VERSION:
        raise InputError(
            str(out / META_FILE),
            "written by another version of the generator: regenerate the tree to advance it",
        )
    root = out / SSMIX2_DIR
    patients, seed, t_from = int(meta["patients"]), int(meta["seed"]), int(meta["days_done"])
    rates = [(int(d), float(r)) for d, r in meta["change_rates"]]
    if change_rate is not None and change_rate != rates[-1][1]:
        if change_rate < 0:
            raise InputError(str(out), "change rate must not be negative")
        rates = [*(x for x in rates if x[0] < t_from), (t_from, float(change_rate))]
    n_workers = _workers(workers)
    started = time.perf_counter()
    t_to = t_from + days
    stats = SynthStats(patients, int(meta["days"]), t_to, seed, rates, workers=n_workers)
    mults = rate_multipliers(rates, t_to)
    _collect(
        stats,
        _execute(_tasks(root, seed, patients, mults, t_from, n_workers), n_workers, patients, progress),
        _JournalSpool(out, fresh=False),
    )
    stats.bytes = int(meta.get("bytes", 0)) + stats.bytes_written
    stats.consent = {k: int(v) for k, v in meta.get("consent", {}).items()}
    _write_meta(out, stats)
    stats.seconds = time.perf_counter() - started
    return stats

"""Scrub and heal the store: ``hakobune center verify [--heal-from MIRROR]`` (DESIGN §6).

Disks rot and operators slip.  A scrub reads every stored changeset the catalog lists and checks it against
its catalog row and against itself: the size, the header hash (the chain link the catalog and the receipts
recorded), the Ed25519 signature by the hospital's registered key, the key table and the payload hash
(:func:`hakobune.sealed.verify`, streamed in 1 MiB reads: memory stays flat whatever the blob size).  That
covers every byte of the file; crypto-shredded key entries (zeros) still verify, by design.  It also lists
the store for files the catalog does not know.  Problems, per hospital and file:

* ``missing``    the catalog lists it, the file is gone;
* ``truncated``  shorter than the catalog says;
* ``altered``    any other difference (a flipped byte, a foreign or re-signed file, a longer file);
* ``unexpected`` a file (or folder) in the store the catalog does not list.

With a mirror (``--heal-from``, the mirror center's home as a directory: local, or mounted read-only) a
missing, truncated or altered blob is replaced by the mirror's copy of the same changeset once that copy
passes the same checks against **this** center's catalog and the hospital's key (the mirror's catalog is
not trusted, nor needed).  Patients erased by later tombstones are shredded in the copy again, as ingest
did here.  The bad file is kept under ``quarantine/<hospital>/`` beside a ``.reason`` file, and the good
one takes its place atomically (hard link aside, then rename over).  Unexpected files inside a hospital's
stream folders are moved to quarantine too.  A blob bad on both sides stays as it is and is reported.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from center.catalog import Catalog, ChangesetRow, HospitalRow, ScrubRow
from center.config import CenterConfig
from center.ingest import ingest_lock
from center.layout import CenterLayout
from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError, InputError
from hakobune.keys import VerifyKey
from hakobune.naming import STREAMS, Stream, check_stream, parse_changeset_name
from hakobune.sealed import Incomplete, shred, verify

Kind = Literal["missing", "truncated", "altered", "unexpected"]
#: Called with the bytes of each blob checked.
Tick = Callable[[int], None]
#: A ``*.tmp`` in a stream folder younger than this is an ingest (or heal) at work, not a problem.
TEMP_GRACE_SECONDS = 3600.0
_COPY = 1 << 20


@dataclass
class Problem:
    hospital: str
    #: Relative to the center home.
    path: str
    kind: Kind
    reason: str
    healed: bool = False
    #: How it was healed, or why it could not be.
    note: str | None = None
    #: Where the bad file was kept (relative to the center home).
    quarantined: str | None = None

    def line(self) -> str:
        return f"{self.path}: {self.kind}: {self.reason}"


@dataclass
class HospitalScrub:
    hospital: str
    blobs: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def left(self) -> list[Problem]:
        return [p for p in self.problems if not p.healed]


@dataclass
class ScrubReport:
    heal_from: str | None
    hospitals: list[HospitalScrub] = field(default_factory=list)
    #: Entries of the store outside every enrolled hospital's partition.
    strays: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for h in self.hospitals for p in h.problems] + self.strays

    @property
    def left(self) -> list[Problem]:
        return [p for p in self.problems if not p.healed]

    @property
    def ok(self) -> bool:
        """Nothing wrong, or everything healed."""
        return not self.left

    def to_json(self) -> dict[str, Any]:
        def problem(p: Problem) -> dict[str, Any]:
            return dict(p.__dict__)

        return {
            "ok": self.ok,
            "heal_from": self.heal_from,
            "blobs": sum(h.blobs for h in self.hospitals),
            "bytes": sum(h.bytes for h in self.hospitals),
            "problems": len(self.problems),
            "healed": len(self.problems) - len(self.left),
            "hospitals": [
                {
                    "hospital": h.hospital,
                    "blobs": h.blobs,
                    "bytes": h.bytes,
                    "problems": [problem(p) for p in h.problems],
                }
                for h in self.hospitals
            ],
            "strays": [problem(p) for p in self.strays],
        }


def heal_source(path: Path, primary: CenterLayout) -> CenterLayout:
    """The mirror center home at ``path`` as a source of good copies (only its ``store/`` is read)."""
    layout = CenterLayout(Path(path))
    if not layout.store_root.is_dir():
        raise ConfigError(f"--heal-from {path}: not a center home (no store/ folder)")
    if layout.home.resolve() == primary.home.resolve():
        raise ConfigError(f"--heal-from {path}: is this center itself; heal from the mirror")
    return layout


def scrub(
    cfg: CenterConfig,
    catalog: Catalog,
    *,
    heal_from: CenterLayout | None = None,
    on_progress: Tick | None = None,
    now: datetime | None = None,
) -> ScrubReport:
    """Check every stored blob and the store's listing; heal from ``heal_from`` when given.  The result of
    each hospital is recorded in the catalog (``center status`` shows it)."""
    report = ScrubReport(heal_from=None if heal_from is None else str(heal_from.home))
    tick: Tick = on_progress or (lambda n: None)
    hospitals = catalog.hospitals()
    for hospital in hospitals:
        result = _scrub_hospital(cfg, catalog, hospital, heal_from, tick)
        report.hospitals.append(result)
        left = result.left
        catalog.record_scrub(
            ScrubRow(
                hospital=hospital.id,
                checked_at=now or datetime.now(UTC),
                blobs=result.blobs,
                bytes=result.bytes,
                problems=len(result.problems),
                healed=len(result.problems) - len(left),
                summary=left[0].line() if left else None,
            )
        )
    report.strays = _strays(cfg.layout, {h.id for h in hospitals})
    return report


def total_bytes(catalog: Catalog) -> int:
    """Bytes the catalog lists (a progress bar's total)."""
    return sum(s.bytes for s in catalog.status())


def _scrub_hospital(
    cfg: CenterConfig,
    catalog: Catalog,
    hospital: HospitalRow,
    heal_from: CenterLayout | None,
    tick: Tick,
) -> HospitalScrub:
    layout = cfg.layout
    result = HospitalScrub(hospital.id)
    key = VerifyKey(hospital.agent_key)
    for stream in STREAMS:
        bad: list[tuple[ChangesetRow, Problem]] = []
        expected: set[str] = set()
        for row in catalog.changesets(hospital.id, stream):
            expected.add(Path(row.path).name)
            result.blobs += 1
            result.bytes += row.size
            problem = check_blob(layout, key, row)
            if problem is not None:
                bad.append((row, problem))
            tick(row.size)
        for row, problem in bad:
            result.problems.append(problem)
            if heal_from is not None:
                _heal_blob(layout, catalog, key, row, problem, heal_from)
        for problem in _unexpected(layout, catalog, hospital.id, stream, expected):
            result.problems.append(problem)
            if heal_from is not None:
                _quarantine_unexpected(layout, problem)
    partition = layout.store_root / hospital.id
    if partition.is_dir():
        for entry in sorted(partition.iterdir()):
            if entry.name not in STREAMS:
                result.problems.append(
                    Problem(
                        hospital.id, _rel(layout, entry), "unexpected", "not a stream folder of the store"
                    )
                )
    return result


def check_blob(layout: CenterLayout, key: VerifyKey, row: ChangesetRow) -> Problem | None:
    """What is wrong with the stored blob of ``row``, or None if it is exactly what the catalog lists."""
    path = layout.home / row.path

    def problem(kind: Kind, reason: str) -> Problem:
        return Problem(row.hospital, row.path, kind, reason)

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return problem("missing", "listed in the catalog, not in the store")
    except OSError as e:
        return problem("missing", f"cannot be read ({e.strerror})")
    if size < row.size:
        return problem("truncated", f"{size} of {row.size} bytes")
    if size > row.size:
        return problem("altered", f"{size} bytes, the catalog says {row.size}")
    return _check_copy(path, key, row, problem)


def _check_copy(
    path: Path, key: VerifyKey, row: ChangesetRow, problem: Callable[[Kind, str], Problem]
) -> Problem | None:
    try:
        sealed = verify(path, key, hospital=row.hospital)
    except Incomplete as e:
        return problem("truncated", e.reason)
    except InputError as e:
        return problem("altered", e.reason)
    header = sealed.header
    if sealed.size != row.size:
        return problem("altered", f"{sealed.size} bytes, the catalog says {row.size}")
    if sealed.hash != row.header_hash:
        return problem(
            "altered",
            f"header hash {sealed.hash[:12]}… differs from the catalog's {row.header_hash[:12]}… "
            "(another changeset, validly signed)",
        )
    if header.stream != row.stream or header.sequence != row.sequence:
        return problem("altered", f"holds {header.stream} {header.sequence}, not {row.stream} {row.sequence}")
    return None


def _unexpected(
    layout: CenterLayout, catalog: Catalog, hospital: str, stream: Stream, expected: set[str]
) -> list[Problem]:
    """Entries of the stream's folder the catalog does not list.  Listed under the ingest lock, and a
    changeset name is looked up again, so a changeset ingest stores meanwhile is not taken for a stray."""
    folder = layout.store(hospital, stream)
    out: list[Problem] = []
    with ingest_lock(layout):
        try:
            entries = sorted(folder.iterdir())
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name in expected:
                continue
            if entry.is_dir():
                out.append(Problem(hospital, _rel(layout, entry), "unexpected", "a folder inside the store"))
                continue
            if entry.name.endswith(".tmp") and time.time() - entry.stat().st_mtime < TEMP_GRACE_SECONDS:
                continue
            parsed = parse_changeset_name(entry.name)
            if parsed is not None and parsed[0] == stream:
                row = catalog.get_changeset(hospital, stream, parsed[1])
                if row is not None and Path(row.path).name == entry.name:
                    continue
            out.append(Problem(hospital, _rel(layout, entry), "unexpected", "not in the catalog"))
    return out


def _strays(layout: CenterLayout, hospitals: set[str]) -> list[Problem]:
    root = layout.store_root
    if not root.is_dir():
        return []
    return [
        Problem(
            "-",
            _rel(layout, entry),
            "unexpected",
            "outside every enrolled hospital's partition (look at it and move it away by hand)",
        )
        for entry in sorted(root.iterdir())
        if entry.name not in hospitals
    ]


# --- healing ----------------------------------------------------------------------------------------------


def _heal_blob(
    layout: CenterLayout,
    catalog: Catalog,
    key: VerifyKey,
    row: ChangesetRow,
    problem: Problem,
    source: CenterLayout,
) -> None:
    stream = check_stream(row.stream)
    good = source.stored(row.hospital, stream, row.sequence)
    target = layout.home / row.path
    if not good.is_file():
        problem.note = f"not healed: the mirror has no {good.name} (is it behind? 'center replicate' first)"
        return
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = target.with_name(f".{target.name}.heal.tmp")
    try:
        with open(good, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY)
            dst.flush()
            os.fsync(dst.fileno())
        size = tmp.stat().st_size
        wrong = (
            Problem(row.hospital, row.path, "altered", f"{size} bytes, the catalog says {row.size}")
            if size != row.size
            else _check_copy(
                tmp, key, row, lambda kind, reason: Problem(row.hospital, row.path, kind, reason)
            )
        )
        if wrong is not None:
            problem.note = f"not healed: the mirror's copy is bad too ({wrong.kind}: {wrong.reason})"
            return
        with ingest_lock(layout):  # ingest shreds stored blobs in place: not while we swap this one
            tokens = catalog.tombstones_after(row.hospital, stream, row.sequence)
            if tokens:
                shred(tmp, {bytes.fromhex(t) for t in tokens})
            if target.exists():
                problem.quarantined = _keep_aside(layout, row.hospital, target, problem.line())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        problem.healed = True
        problem.note = f"replaced by the mirror's copy ({good})"
    except OSError as e:
        problem.note = f"not healed: {e.strerror or e}"
    finally:
        tmp.unlink(missing_ok=True)


def _quarantine_unexpected(layout: CenterLayout, problem: Problem) -> None:
    path = layout.home / problem.path
    if not path.is_file():
        problem.note = "not moved: only files are moved to quarantine; look at it by hand"
        return
    try:
        with ingest_lock(layout):
            problem.quarantined = _keep_aside(layout, problem.hospital, path, problem.line(), move=True)
        fsync_dir(path.parent)
    except OSError as e:
        problem.note = f"not moved: {e.strerror or e}"
        return
    problem.healed = True
    problem.note = "moved to quarantine"


def _keep_aside(layout: CenterLayout, hospital: str, path: Path, reason: str, *, move: bool = False) -> str:
    """Put ``path`` into ``quarantine/<hospital>/`` with its reason; return where (relative to home).
    Without ``move`` it is hard-linked (the caller renames the good copy over ``path`` next), so ``path``
    never stops existing."""
    folder = layout.quarantine(hospital)
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    parent = path.parent.name
    kept = folder / f"{stamp}-{parent}-{path.name}"
    if move:
        os.replace(path, kept)
    else:
        try:
            os.link(path, kept)
        except OSError:  # another file system, or links not allowed: a copy does the same
            shutil.copy2(path, kept)
    (folder / f"{kept.name}.reason").write_text(reason + "\n", encoding="utf-8")
    fsync_dir(folder)
    return _rel(layout, kept)


def _rel(layout: CenterLayout, path: Path) -> str:
    try:
        return str(path.relative_to(layout.home))
    except ValueError:
        return str(path)

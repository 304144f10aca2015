"""The file index: a day's changes found by journal, walk and verify scans, committed with the caller's
transaction, and never more than that."""

from __future__ import annotations

import gc
import os
import sqlite3
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.fileindex as fileindex
from agent.fileindex import ChangedFile, DirChange, FileIndex, ScanError, ScanMode, ScanResult
from agent.ssmix2.journal import format_line, journal_file_name
from agent.ssmix2.layout import BadName, parse_name
from agent.state import StateDB
from hakobune.errors import InputError

# Leaf folders chosen so that plain string order and folder order differ ("OMP-01/…" < "OMP/…").
PIDS = ("1234567890", "1234567891", "9990001112")
DATES = ("-", "20250401", "20250402")
TYPES = ("OMP-01", "OMP", "ADT-00")
Stat = tuple[int, int]
Changes = set[tuple[str, str, str]]  # (leaf dir, name, change)


# ------------------------------------------------------------------------------------------- test world
@dataclass
class World:
    """A small SS-MIX2 tree, its journal and a model of what the index should hold."""

    root: Path
    journal: Path
    clock: int = 0
    day: int = 1
    tail: bytes = b""  # the rest of a partial journal line, written at the start of the next round
    indexed: dict[str, Stat] = field(default_factory=dict)  # what the index holds after each commit

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def name(self, pid: str, date: str, dtype: str, order: int, flag: str = "1") -> str:
        ts = f"20250401{self.tick():09d}"
        rel = f"{pid[0:3]}/{pid[3:6]}/{pid}/{date}/{dtype}"
        return f"{rel}/{pid}_{date}_{dtype}_{order:015d}_{ts}_01_{flag}"

    def write(self, rel: str, size: int) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        t = 1_700_000_000_000_000_000 + self.tick() * 1_000_000_007
        os.utime(path, ns=(t, t))

    def log(self, line: str | bytes) -> None:
        self.journal.mkdir(exist_ok=True)
        data = line.encode() if isinstance(line, str) else line
        with open(self.journal / journal_file_name(f"202504{self.day:02d}"), "ab") as fh:
            fh.write(data)

    def ts(self) -> str:
        return f"20250401{self.tick():09d}"

    def tree(self) -> dict[str, Stat]:
        out: dict[str, Stat] = {}
        for dirpath, _dirs, names in os.walk(self.root):
            for n in names:
                p = os.path.join(dirpath, n)
                s = os.lstat(p)
                out[os.path.relpath(p, self.root).replace(os.sep, "/")] = (s.st_size, s.st_mtime_ns)
        return out

    def current(self, flag: str = "1") -> list[str]:
        return sorted(r for r in self.tree() if r.endswith("_" + flag))


def open_index(tmp: Path) -> tuple[StateDB, FileIndex]:
    db = StateDB.open(tmp / "state.db")
    return db, FileIndex(db)


def pending(index: FileIndex) -> Changes:
    out: Changes = set()
    for c in index.iter_changed_dirs():
        out |= {(c.leaf_dir, f.name, "added") for f in c.added}
        out |= {(c.leaf_dir, n, "removed") for n in c.removed}
        out |= {(c.leaf_dir, f.name, "rewritten") for f in c.rewritten}
    return out


def expected(w: World, verify: bool) -> Changes:
    now = w.tree()
    out: Changes = set()
    for rel in now.keys() - w.indexed.keys():
        out.add((*rel.rsplit("/", 1), "added"))  # type: ignore[arg-type]
    for rel in w.indexed.keys() - now.keys():
        out.add((*rel.rsplit("/", 1), "removed"))  # type: ignore[arg-type]
    if verify:
        for rel in now.keys() & w.indexed.keys():
            if now[rel] != w.indexed[rel]:
                out.add((*rel.rsplit("/", 1), "rewritten"))  # type: ignore[arg-type]
    return out


def index_rows(db: StateDB) -> dict[str, Stat]:
    with sqlite3.connect(db.path) as conn:
        return {r: (s, m) for r, s, m in conn.execute("SELECT relpath, size, mtime_ns FROM file_index")}


def commit(db: StateDB, index: FileIndex) -> None:
    with db.transaction() as conn:
        index.commit(conn)


def committed(w: World, db: StateDB, index: FileIndex, verify: bool) -> None:
    """Commit and check the index against the model: the tree's names, with the stat each file had when
    it was indexed (a walk or journal scan does not look at files it already knows; verify does)."""
    now = w.tree()
    commit(db, index)
    w.indexed = {r: (now[r] if verify or r not in w.indexed else w.indexed[r]) for r in now}
    assert index_rows(db) == w.indexed
    assert index.count() == len(now)


# --------------------------------------------------------------------------------------- property test
Op = Literal["add", "supersede", "delete", "remove", "rewrite"]


def apply_op(w: World, data: st.DataObject, op: Op) -> None:
    if op == "add":
        pid, date, dtype = (data.draw(st.sampled_from(x)) for x in (PIDS, DATES, TYPES))
        rel = w.name(pid, date, dtype, data.draw(st.integers(1, 5)))
        w.write(rel, data.draw(st.integers(1, 40)))
        w.log(format_line(w.ts(), "ADD", rel))
        return
    files = w.current() if op in ("supersede", "delete") else sorted(w.tree())
    if not files:
        return
    rel = data.draw(st.sampled_from(files))
    if op == "remove":
        (w.root / rel).unlink()
        w.log(format_line(w.ts(), "DELETE", rel))
    elif op == "rewrite":  # in place: SS-MIX2 never does this, and no journal says so
        w.write(rel, (w.root / rel).stat().st_size + 1)
    else:
        flag = "2" if op == "supersede" else "0"
        new = rel[:-1] + flag
        os.rename(w.root / rel, w.root / new)
        w.log(format_line(w.ts(), "RENAME", rel, new))
        if op == "supersede":
            n = parse_name(rel.rsplit("/", 1)[1])
            newer = w.name(n.patient_id, n.care_date, n.data_type, int(n.order_no))
            w.write(newer, data.draw(st.integers(1, 40)))
            w.log(format_line(w.ts(), "ADD", newer))


def journal_noise(w: World, data: st.DataObject) -> None:
    """Garbage lines, another vendor's format, a new day's file, a partial last line."""
    if w.tail:
        w.log(w.tail)
        w.tail = b""
    if data.draw(st.booleans()):
        w.day += 1
    if data.draw(st.booleans()):
        w.log(b"\x00\xffgarbage line\n### header\n\n")
    if data.draw(st.booleans()):
        known = sorted(w.tree())
        if known:
            rel = data.draw(st.sampled_from(known))  # a vendor line naming a file (no change needed)
            w.log(f'2025/04/01,TOUCH,"D:\\SSMIX2\\{rel.replace("/", chr(92))}"\r\n'.encode())
    if data.draw(st.booleans()):
        line = format_line(w.ts(), "ADD", w.name(PIDS[0], DATES[1], TYPES[0], 9)).encode()
        cut = data.draw(st.integers(1, len(line) - 1))
        w.log(line[:cut])  # names a file that does not exist: a harmless, partial line
        w.tail = line[cut:]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_each_commit_leaves_the_index_equal_to_the_tree_and_each_scan_finds_exactly_the_difference(
    data: st.DataObject,
) -> None:
    ops: list[Op] = ["add", "supersede", "delete", "remove", "rewrite"]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        w = World(tmp / "ssmix2", tmp / "journal")
        w.root.mkdir()
        db, index = open_index(tmp)
        try:
            for _ in range(data.draw(st.integers(0, 6))):
                apply_op(w, data, "add")
            first = index.scan(w.root, journal_dir=w.journal, workers=data.draw(st.sampled_from([1, 2])))
            assert first.mode == "walk" and first.added == len(w.tree()) and first.index_before == 0
            assert pending(index) == expected(w, verify=False)
            committed(w, db, index, verify=False)
            for _round in range(data.draw(st.integers(1, 4))):
                for op in data.draw(st.lists(st.sampled_from(ops), max_size=8)):
                    apply_op(w, data, op)
                journal_noise(w, data)
                mode: ScanMode = data.draw(st.sampled_from(["journal", "walk", "verify"]))
                verify = mode == "verify"
                want = expected(w, verify)
                if mode != "verify" and data.draw(st.booleans()):  # journal and walk agree
                    other: ScanMode = "walk" if mode == "journal" else "journal"
                    index.scan(w.root, mode=other, journal_dir=w.journal)
                    assert pending(index) == want
                if data.draw(st.booleans()):  # a crash before the commit: the next scan finds it all again
                    index.scan(w.root, mode=mode, journal_dir=w.journal)
                    if data.draw(st.booleans()):
                        index.discard()
                res = index.scan(w.root, mode=mode, journal_dir=w.journal, workers=2)
                got = pending(index)
                assert got == want
                assert res.mode == mode
                assert (res.added, res.removed, res.rewritten) == tuple(
                    sum(1 for c in want if c[2] == k) for k in ("added", "removed", "rewritten")
                )
                committed(w, db, index, verify)
        finally:
            db.close()


# ------------------------------------------------------------------------------------------ fixed cases
@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, StateDB, FileIndex]]:
    w = World(tmp_path / "ssmix2", tmp_path / "journal")
    w.root.mkdir()
    for pid in PIDS:
        for date in DATES:
            for n in (1, 2):
                w.write(w.name(pid, date, "OMP-01", n), 10 + n)
    db, index = open_index(tmp_path)
    yield w, db, index
    db.close()


def scan(index: FileIndex, w: World, **kw: Any) -> ScanResult:
    return index.scan(w.root, journal_dir=w.journal, **kw)


def test_first_scan_walks_and_adds_everything_then_nothing_is_new(
    world: tuple[World, StateDB, FileIndex],
) -> None:
    w, db, index = world
    res = scan(index, w, mode="auto")
    assert (res.mode, res.reason) == ("walk", "first scan: the whole tree is walked once")
    assert (res.added, res.index_before, res.index_after) == (18, 0, 18)
    changes = list(index.iter_changed_dirs())
    assert [c.leaf_dir for c in changes] == sorted(c.leaf_dir for c in changes)
    assert all(isinstance(f, ChangedFile) and f.size in (11, 12) for c in changes for f in c.added)
    assert changes[0].patient_id == PIDS[0]
    committed(w, db, index, verify=False)
    again = scan(index, w)
    assert (again.mode, again.reason) == ("walk", "the journal folder holds no TR_*.DAT files")
    assert again.changes == 0
    assert scan(index, w, mode="walk").changes == 0


def test_auto_uses_the_journal_and_falls_back_to_a_walk_with_a_reason(
    world: tuple[World, StateDB, FileIndex],
) -> None:
    w, db, index = world
    scan(index, w)
    committed(w, db, index, verify=False)
    rel = w.name(PIDS[1], DATES[2], "OMP", 7)
    w.write(rel, 5)
    w.log(format_line(w.ts(), "ADD", rel))
    res = scan(index, w)
    assert (res.mode, res.added, res.dirs_listed, res.journal_lines) == ("journal", 1, 1, 1)
    committed(w, db, index, verify=False)
    assert scan(index, w).journal_lines == 1  # each line is read by two scans
    assert scan(index, w, full_walk_every=timedelta(0)).reason.startswith("last full walk older than")
    assert index.scan(w.root).reason == "no journal folder configured"
    with pytest.raises(ScanError, match="cannot scan by journal: no journal folder configured"):
        index.scan(w.root, mode="journal")
    # A journal cut short (rotated or rewritten by hand): walk, and say why.
    (w.journal / journal_file_name("20250401")).write_bytes(b"")
    res = scan(index, w)
    assert res.mode == "walk" and "shorter than the saved position" in res.reason and res.changes == 0
    with pytest.raises(ScanError, match=r"TR_20250401\.DAT: shorter than the saved position"):
        scan(index, w, mode="journal")


def test_scan_without_commit_is_found_again_and_commit_needs_a_finished_scan(
    world: tuple[World, StateDB, FileIndex],
) -> None:
    w, db, index = world
    scan(index, w)
    committed(w, db, index, verify=False)
    old = w.current()[0]
    os.rename(w.root / old, w.root / (old[:-1] + "0"))
    w.log(format_line(w.ts(), "RENAME", old, old[:-1] + "0"))
    first = scan(index, w)
    found = pending(index)
    assert (first.renamed, first.marked_deleted, first.removed_share) == (1, 1, 0.0)
    second = scan(index, w)  # the agent crashed before sealing: the same changes again
    assert pending(index) == found and second.changes == first.changes == 2
    index.discard()
    with pytest.raises(ScanError, match="no completed scan is pending"):
        list(index.iter_changed_dirs())
    with pytest.raises(ScanError, match="nothing to commit"), db.transaction() as conn:
        index.commit(conn)
    scan(index, w)
    assert pending(index) == found
    committed(w, db, index, verify=False)
    assert scan(index, w, mode="walk").changes == 0


def test_a_scan_started_during_another_makes_the_first_fail(world: tuple[World, StateDB, FileIndex]) -> None:
    w, _db, index = world
    nested: list[ScanResult] = []

    def meddle(_dirs: int, _files: int) -> None:
        if not nested:
            nested.append(index.scan(w.root, mode="walk"))

    with pytest.raises(ScanError, match="another scan started while this one ran"):
        index.scan(w.root, mode="walk", workers=1, on_progress=meddle)
    assert nested and nested[0].added == 18
    assert len(pending(index)) == 18  # the later scan's result stands


def test_verify_finds_files_rewritten_in_place_and_walk_does_not(
    world: tuple[World, StateDB, FileIndex],
) -> None:
    w, db, index = world
    scan(index, w)
    committed(w, db, index, verify=False)
    victims = w.current()[:3]
    for rel in victims:
        w.write(rel, 100)
    assert scan(index, w, mode="walk").changes == 0
    res = scan(index, w, mode="verify")
    assert (res.rewritten, res.files_statted) == (3, 18)
    assert res.rewritten_share == pytest.approx(3 / 18)
    assert {(c[1], c[2]) for c in pending(index)} == {(v.rsplit("/", 1)[1], "rewritten") for v in victims}
    committed(w, db, index, verify=True)
    assert scan(index, w, mode="verify").changes == 0
    assert index.state().last_verify_at is not None


def test_ransomware_renames_strays_and_links_are_counted_not_followed(
    world: tuple[World, StateDB, FileIndex],
) -> None:
    w, db, index = world
    scan(index, w)
    committed(w, db, index, verify=False)
    for rel in w.current()[:4]:
        os.rename(w.root / rel, w.root / (rel + ".locked"))
    (w.root / PIDS[0][0:3] / "README.txt").write_text("x")  # a file where folders belong
    leaf = w.root / w.current()[0].rsplit("/", 1)[0]
    (leaf / "sub").mkdir()  # a folder where files belong
    outside = w.root.parent / "outside"
    outside.mkdir()
    (outside / "secret_1").write_text("x")
    os.symlink(outside, w.root / PIDS[2][0:3] / PIDS[2][3:6] / PIDS[2] / "20250403")
    os.symlink(outside / "secret_1", leaf / "link_1")
    res = scan(index, w, mode="walk")
    assert (res.removed, res.added, res.unreadable_names, res.renamed) == (4, 4, 4, 0)
    assert res.removed_share == pytest.approx(4 / 18) and res.unreadable_share == pytest.approx(4 / 18)
    assert res.stray_entries == 4  # README, sub/, the folder link, the file link
    assert all("secret" not in c[1] for c in pending(index))
    # The journal names the linked folder: it is not followed either.
    w.log(format_line(w.ts(), "ADD", w.name(PIDS[2], "20250403", "OMP-01", 1)))
    res = scan(index, w, mode="journal")
    assert res.journal_lines == 1 and all("secret" not in c[1] for c in pending(index))


def test_folders_that_cannot_be_listed_keep_their_files(
    world: tuple[World, StateDB, FileIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, db, index = world
    scan(index, w)
    committed(w, db, index, verify=False)
    locked = f"{PIDS[1][0:3]}/{PIDS[1][3:6]}/{PIDS[1]}"
    real = os.scandir

    def scandir(path: Any) -> Any:
        if str(path).endswith(locked):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for workers in (1, 2):
        res = scan(index, w, mode="walk", workers=workers)
        assert (res.unlisted_dirs, res.removed, res.added) == (1, 0, 0)


def test_missing_root_is_a_one_line_error(tmp_path: Path) -> None:
    db, index = open_index(tmp_path)
    with pytest.raises(InputError, match=r"nowhere: not a folder"):
        index.scan(tmp_path / "nowhere")
    db.close()


def test_quick_name_check_agrees_with_parse_name() -> None:
    samples = [
        "1234567_20240401_OMP-01_000000000000001_20240401120000000_01_1",
        "1234567_-_ADT-00_999999999999999_20240401120000000_-_0",
        "1234567_20240230_OMP-01_1_20240401120000000_01_1",  # 30 February
        "1234567_20240401_OMP-01_1_2024040112000000000_01_1",  # timestamp too long
        "1234567_20240401_omp-01_1_20240401120000000_01_1",
        "1234567_20240401_OMP-01_1_20240401120000000_01_1\n",
        "1234567_20240401_OMP-01_1_20240401120000000_01_1.locked",
        "x.hl7",
    ]
    for name in samples:
        try:
            parse_name(name)
            ok = True
        except BadName:
            ok = False
        assert fileindex._is_ssmix_name(name) == ok, name


@given(st.lists(st.sampled_from(["1234567", "-", "20240401", "20241301", "OMP-01", "OMP", "x", "1", "2", ""]),
                min_size=7, max_size=7))  # fmt: skip
def test_quick_name_check_agrees_with_parse_name_on_field_mixes(parts: list[str]) -> None:
    name = "_".join(parts)
    try:
        parse_name(name)
        ok = True
    except BadName:
        ok = False
    assert fileindex._is_ssmix_name(name) == ok


# ------------------------------------------------------------------------------------------------ memory
def _tree(root: Path, patients: int) -> None:
    for i in range(patients):  # spread over folders as real IDs are: no folder lists more than 40 entries
        pid = f"{100 + i % 16:03d}{i // 16:03d}{i:04d}"
        for date in ("-", "20250401", "20250402"):
            leaf = root / pid[0:3] / pid[3:6] / pid / date / "OMP-01"
            leaf.mkdir(parents=True)
            for n in range(3):
                (leaf / f"{pid}_{date}_OMP-01_{n:015d}_20250401000000000_01_1").write_bytes(b"x")


def _peak_incremental(tmp: Path, patients: int) -> int:
    root = tmp / "ssmix2"
    _tree(root, patients)
    db, index = open_index(tmp)
    try:
        index.scan(root)
        commit(db, index)
        for i, leaf in enumerate(sorted(p for p in root.glob("*/*/*/*/*"))):
            if i % 50 == 0:
                (
                    leaf / f"{leaf.parts[-3]}_{leaf.parts[-2]}_OMP-01_{99:015d}_20250402000000000_01_1"
                ).write_bytes(b"y")
        # One listing thread: with more, how many listed units wait for the merge depends on the threads'
        # timing, and so would the peak (the look-ahead bound is the same either way).
        gc.collect()
        tracemalloc.start()
        res = index.scan(root, mode="walk", workers=1)
        n = sum(len(c.added) for c in index.iter_changed_dirs())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert n == res.added > 0
        return peak
    finally:
        db.close()


def test_memory_does_not_grow_with_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileindex, "PATIENTS_PER_UNIT", 4)
    monkeypatch.setattr(fileindex, "WRITE_BATCH", 100)
    monkeypatch.setattr(fileindex, "FETCH_BATCH", 100)
    small = _peak_incremental(tmp_path / "small", 40)  # 360 files
    large = _peak_incremental(tmp_path / "large", 320)  # 2,880 files
    assert large < small * 1.5, (small, large)


def test_results_are_counts_and_changes_stream() -> None:
    for f in ScanResult.__dataclass_fields__.values():
        assert f.type in ("int", "float", "str", "ScanMode"), f.name
    assert DirChange.__dataclass_fields__["added"].type.startswith("tuple")
    assert FileIndex.iter_changed_dirs.__annotations__["return"] == "Iterator[DirChange]"

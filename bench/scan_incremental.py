"""Change detection on a synthetic tree of at least 200k files: a daily incremental (about 1% of files new
or renamed) found by the file index in walk mode (1 and 2 listing threads), journal mode and verify mode.

Prints seconds, files/s, folders listed and peak RSS of each scan (each runs in a fresh process that
imports only the agent's state database and file index), beside two references on the same tree: ``find``
and a plain Python stat walk (``os.walk`` + ``lstat`` of every file).  Target (issue: change detection
that scales): far faster than restic on the same tree (about 25 s here) with peak RSS < 64 MB.

The cached tree (``bench/_common.synthetic_tree``) is copied to a scratch folder first (``cp -a``) so the
cache stays pristine; the day is made with ``hakobune synth --advance 1``, which also writes the day's
transaction journal (``journal/TR_<day>.DAT``).

    .venv/bin/python bench/scan_incremental.py [--files 200000] [--scratch DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import CACHE, PeakRSS, mb, synthetic_tree


# ------------------------------------------------------------------------------------------ child process
def child(args: argparse.Namespace) -> None:
    """One scan in a fresh process: prints its figures and peak RSS as JSON."""
    from agent.fileindex import FileIndex
    from agent.state import StateDB

    journal = Path(args.journal) if args.journal else None
    with PeakRSS() as rss, StateDB.open(Path(args.db)) as db:
        index = FileIndex(db)
        t = time.perf_counter()
        result = index.scan(Path(args.root), mode=args.mode, journal_dir=journal, workers=args.workers)
        scan_s = time.perf_counter() - t
        t = time.perf_counter()
        if args.commit:
            with db.transaction() as conn:
                index.commit(conn)
        else:
            index.discard()
        finish_s = time.perf_counter() - t
    out = result.figures()
    out.update(
        scan_seconds=round(scan_s, 3),
        finish_seconds=round(finish_s, 3),
        peak_rss_sampled=rss.peak_single,
        peak_rss_max=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    print(json.dumps(out))


def run_child(root: Path, db: Path, journal: Path, mode: str, workers: int, commit: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--root",
        str(root),
        "--db",
        str(db),
        "--journal",
        str(journal),
        "--workers",
        str(workers),
    ]
    if commit:
        cmd.append("--commit")
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------- references
def stat_walk(root: Path) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n, time.perf_counter() - t


def find_seconds(root: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["find", str(root), "-type", "f"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------ the day
def manual_day(home: Path, root: Path, journal: Path) -> dict[str, int]:
    """A day made by hand when the cached tree cannot be advanced (written by another generator version):
    about 0.7% of files get a new visit (a new file in a new care-date folder), 0.2% are superseded
    (``_1``→``_2`` plus a new ``_1``) and 0.1% deleted (``_1``→``_0``); every operation is journaled.
    Files are picked by a hash of their path, so the day is the same on every run."""
    import zlib

    from agent.ssmix2.journal import format_line, journal_file_name
    from agent.ssmix2.layout import parse_name

    meta = json.loads((home / "synth.json").read_text(encoding="utf-8"))
    last = meta.get("last_date") or "2025-04-30"
    day = (date.fromisoformat(last) + timedelta(days=1)).strftime("%Y%m%d")
    picks: list[tuple[int, str]] = []
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            h = zlib.crc32(rel.encode()) % 1000
            if h < 7 or (h < 10 and name.endswith("_1")):
                picks.append((h, rel))
    lines: list[str] = []
    written = renamed = 0
    for n, (h, rel) in enumerate(picks):
        folder, name = rel.rsplit("/", 1)
        nm = parse_name(name)
        ts = f"{day}{9 + n % 9:02d}{n % 60:02d}{(n * 7) % 60:02d}{n % 1000:03d}"
        data = (root / rel).read_bytes()
        if h < 7:  # a new visit of this patient: a new care-date folder
            pid = nm.patient_id
            order = f"{day[2:]}{n:09d}"
            new = f"{pid}_{day}_{nm.data_type}_{order}_{ts}_{nm.department}_1"
            new_rel = f"{pid[0:3]}/{pid[3:6]}/{pid}/{day}/{nm.data_type}/{new}"
            (root / new_rel).parent.mkdir(parents=True, exist_ok=True)
            (root / new_rel).write_bytes(data)
            lines.append(format_line(ts, "ADD", new_rel))
            written += 1
            continue
        flag = "2" if h < 9 else "0"
        old_rel = f"{folder}/{name[:-1]}{flag}"
        os.rename(root / rel, root / old_rel)
        lines.append(format_line(ts, "RENAME", rel, old_rel))
        renamed += 1
        if flag == "2":
            new = "_".join((nm.patient_id, nm.care_date, nm.data_type, nm.order_no, ts, nm.department, "1"))
            (root / folder / new).write_bytes(data + b"\r")
            lines.append(format_line(ts, "ADD", f"{folder}/{new}"))
            written += 1
    journal.mkdir(exist_ok=True)
    with open(journal / journal_file_name(day), "a", encoding="utf-8", newline="\n") as fh:
        fh.writelines(sorted(lines))
    return {"files_written": written, "files_renamed": renamed}


def make_day(home: Path, root: Path, journal: Path) -> dict[str, Any]:
    from hakobune.errors import InputError
    from hakobune.synth import advance

    try:
        stats = advance(home, 1, workers=2)
        return {"how": "synth --advance 1", "files_written": stats.files_written,
                "files_renamed": stats.files_renamed}  # fmt: skip
    except InputError as e:  # the cache was written by another generator version
        log(f"cannot advance the cached tree ({e.reason}); making the day by hand")
        return {"how": "by hand (see manual_day)", **manual_day(home, root, journal)}


def new_lines(path: Path, since: int) -> int:
    """Lines appended to a journal file after it was ``since`` bytes long."""
    with open(path, "rb") as fh:
        fh.seek(since)
        return fh.read().count(b"\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--scratch", type=Path, default=CACHE / "scan-incremental")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy afterwards")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["auto", "journal", "walk", "verify"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--journal", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--commit", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return

    from hakobune.synth import JOURNAL_DIR, SSMIX2_DIR

    cached = synthetic_tree(args.files).parent
    home = args.scratch / "hospital"
    shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True)
    log(f"copying {cached} to {home}")
    t = time.perf_counter()
    subprocess.run(["cp", "-a", str(cached), str(home)], check=True)
    copy_s = time.perf_counter() - t
    root, journal, db = home / SSMIX2_DIR, home / JOURNAL_DIR, args.scratch / "state.db"
    results: dict[str, Any] = {"tree": str(root), "cores": os.cpu_count(), "copy_seconds": round(copy_s, 1)}

    try:
        log("references: find, python stat walk")
        find_seconds(root)  # warm the page cache: every measurement sees the same (warm) cache
        results["find_seconds"] = round(find_seconds(root), 2)
        files, walk_s = stat_walk(root)
        results.update(files=files, python_stat_walk_seconds=round(walk_s, 2))

        # The index as the agent keeps it after its first run (a full walk), then one simulated day.
        log("first index: full walk + commit")
        results["build"] = run_child(root, db, journal, "walk", 2, commit=True)
        results["db_bytes"] = db.stat().st_size + sum(
            p.stat().st_size for p in db.parent.glob(db.name + "-*") if p.is_file()
        )
        log("one day of changes")
        t = time.perf_counter()
        sizes = {p.name: p.stat().st_size for p in journal.glob("TR_*.DAT")}
        day = make_day(home, root, journal)
        day.update(
            share_of_files=round((day["files_written"] + day["files_renamed"]) / files, 4),
            journal_lines=sum(new_lines(p, sizes.get(p.name, 0)) for p in journal.glob("TR_*.DAT")),
            seconds=round(time.perf_counter() - t, 1),
        )
        results["day"] = day
        find_seconds(root)  # re-warm after the day's writes

        cases = [("walk_1w", "walk", 1), ("walk_2w", "walk", 2), ("journal", "journal", 2)]
        cases += [("verify_2w", "verify", 2), ("auto", "auto", 2)]
        for label, mode, workers in cases:
            log(f"scan: {label}")
            results[label] = run_child(root, db, journal, mode, workers, commit=False)
        # Commit the day by journal, then check that a full walk finds nothing left.
        results["commit"] = run_child(root, db, journal, "journal", 2, commit=True)
        check = run_child(root, db, journal, "walk", 2, commit=False)
        results["walk_after_commit_changes"] = check["added"] + check["removed"] + check["rewritten"]
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    report(results)


def report(r: dict[str, Any]) -> None:
    files = r["files"]
    print(f"tree: {r['tree']}  ({files:,} files)  cores: {r['cores']}")
    print(
        f"references: find {r['find_seconds']} s; python stat walk {r['python_stat_walk_seconds']} s "
        "(restic on this tree: about 25 s, not run here)"
    )
    b = r["build"]
    print(
        f"first index (full walk + commit): scan {b['scan_seconds']} s + commit {b['finish_seconds']} s, "
        f"{b['dirs_listed']:,} folders, peak RSS {mb(b['peak_rss_max'])}; state.db {mb(r['db_bytes'])}"
    )
    d = r["day"]
    print(
        f"the day ({d['how']}): {d['files_written']:,} files written, {d['files_renamed']:,} renamed "
        f"({d['share_of_files']:.2%} of the files), {d['journal_lines']:,} journal lines"
    )
    head = ("scan", "seconds", "files/s", "folders", "statted", "changes", "peak RSS")
    print(f"{head[0]:<10} {head[1]:>8} {head[2]:>12} {head[3]:>9} {head[4]:>8} {head[5]:>8} {head[6]:>10}")
    for label in ("walk_1w", "walk_2w", "journal", "verify_2w", "auto"):
        x = r[label]
        changes = x["added"] + x["removed"] + x["rewritten"]
        print(
            f"{label:<10} {x['scan_seconds']:>8.2f} {round(files / x['scan_seconds']):>12,} "
            f"{x['dirs_listed']:>9,} {x['files_statted']:>8,} {changes:>8,} {mb(x['peak_rss_max']):>10}"
            + (f"  ({x['mode']}: {x['reason']})" if label == "auto" else "")
        )
    c = r["commit"]
    print(
        f"journal scan + commit: {c['scan_seconds']} s + {c['finish_seconds']} s; "
        f"a full walk afterwards finds {r['walk_after_commit_changes']} changes"
    )


if __name__ == "__main__":
    main()

"""Parse throughput of the SS-MIX2 reader on a synthetic tree of at least 200k files.

Prints files/s, MB/s and peak RSS for the reader with 1 and 2 worker processes, beside two references:
the bare filesystem walk + read (the floor any reader pays here) and python-hl7 (a general HL7 parser) on a
sample.  Target (issue 2): >= 20,000 files/s per core, both cores used, peak RSS < 200 MB.

    .venv/bin/python bench/parse_throughput.py [--files 200000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.check import check_tree
from agent.ssmix2.layout import IN_SCOPE, parse_name
from agent.ssmix2.mapping import to_records
from agent.ssmix2.message import parse
from bench._common import PeakRSS, mb, synthetic_tree
from hakobune.hl7 import decode


def walk_and_read(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            with open(os.path.join(dirpath, n), "rb") as fh:
                size += len(fh.read())
            files += 1
    return files, size


def sample_files(root: Path, n: int) -> list[tuple[str, bytes]]:
    paths: list[str] = []
    for dirpath, _dirs, names in os.walk(root):
        paths.extend(os.path.join(dirpath, x) for x in names if x.endswith("_1"))
    random.Random(1).shuffle(paths)
    out = []
    for p in paths[:n]:
        with open(p, "rb") as fh:
            out.append((os.path.basename(p), fh.read()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    root = synthetic_tree(args.files)
    results: dict[str, object] = {"tree": str(root), "cores": os.cpu_count()}

    # Warm the page cache once so every measurement below sees the same cache state.
    files, size = walk_and_read(root)
    results.update(files=files, bytes=size)

    t = time.perf_counter()
    subprocess.run(["find", str(root), "-type", "f"], stdout=subprocess.DEVNULL, check=True)
    results["find_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    walk_and_read(root)
    results["python_walk_read_seconds"] = round(time.perf_counter() - t, 2)

    for workers in (1, 2):
        with PeakRSS() as rss:
            t = time.perf_counter()
            rep = check_tree(root, workers=workers)
            dt = time.perf_counter() - t
        assert rep.files == files, (rep.files, files)
        results[f"reader_{workers}w"] = {
            "seconds": round(dt, 2),
            "files_per_s": round(files / dt),
            "files_per_s_per_core": round(files / dt / workers),
            "MB_per_s": round(size / dt / 1e6, 1),
            "peak_rss_total": rss.peak_total,
            "peak_rss_single_process": rss.peak_single,
            "records": sum(rep.records_by_kind.values()),
            "quarantined": rep.quarantined,
        }

    sample = sample_files(root, 3000)
    t = time.perf_counter()
    for name, raw in sample:
        n = parse_name(name)
        if n.data_type in IN_SCOPE:
            to_records(parse(raw, n.data_type), n, [])
        else:
            parse(raw, n.data_type)
    results["parse_in_memory_files_per_s"] = round(len(sample) / (time.perf_counter() - t))
    try:
        import hl7  # python-hl7, the general parser used as a test oracle

        t = time.perf_counter()
        for _name, raw in sample:
            hl7.parse(decode(raw).rstrip("\x1c"))
        results["python_hl7_files_per_s"] = round(len(sample) / (time.perf_counter() - t))
    except ImportError:
        results["python_hl7_files_per_s"] = None

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"tree: {root}  ({files:,} files, {mb(size)})  cores: {os.cpu_count()}")
    print(
        f"floor: find {results['find_seconds']} s; python walk+read {results['python_walk_read_seconds']} s"
    )
    for w in (1, 2):
        r = results[f"reader_{w}w"]
        assert isinstance(r, dict)
        print(
            f"reader, {w} worker(s): {r['seconds']} s  {r['files_per_s']:,} files/s "
            f"({r['files_per_s_per_core']:,}/core)  {r['MB_per_s']} MB/s  "
            f"peak RSS {mb(r['peak_rss_total'])} total, {mb(r['peak_rss_single_process'])} largest process"
        )
    print(
        f"parse+map in memory (no filesystem): {results['parse_in_memory_files_per_s']:,} files/s on one core"
    )
    if results["python_hl7_files_per_s"]:
        print(f"python-hl7 parse (reference): {results['python_hl7_files_per_s']:,} files/s")


if __name__ == "__main__":
    main()

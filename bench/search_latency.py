"""Patient search on a million patients: index build time, query latency (p50/p95/p99), accuracy, peak RSS.

    python bench/search_latency.py [--patients 1000000] [--queries 1000] [--workers N] [--reuse-index]

The patients are the synthetic hospital's demographics (``make_profile``, the generator behind ``hakobune
synth``; no SS-MIX2 files), generated once on all cores and cached as TSV under the bench cache, with the
query set (~1000 mixed queries with the desk's usual mistakes, tests/restore/search_queries.py).  The index
is built from scratch into a fresh SQLite file, streaming the TSV (``--reuse-index`` keeps the last one);
then the queries run one by one on a read-only connection.  Peak RSS is sampled for each phase.
Target (issue): p95 < 50 ms per query on 1M patients.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CACHE, PeakRSS, mb
from restore.search import PatientIndex, Query, SearchPatient
from tests.restore.search_queries import LabeledQuery, make_queries, patient


def _chunk(args: tuple[int, int, int]) -> list[str]:
    seed, lo, hi = args
    return ["\t".join(vars(patient(seed, i)).values()) for i in range(lo, hi)]


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _read(path: Path) -> Iterator[SearchPatient]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield SearchPatient(*line.rstrip("\n").split("\t"))


def patients_file(n: int, seed: int) -> Path:
    """The first ``n`` patients of the synthetic hospital ``seed`` as TSV, generated once and cached."""
    path = CACHE / f"search-patients-{n}-{seed}.tsv"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        step = 20_000
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        with Pool(os.cpu_count() or 1) as pool, tmp.open("w", encoding="utf-8") as f:
            for lines in pool.imap(_chunk, [(seed, lo, min(n, lo + step)) for lo in range(0, n, step)]):
                f.write("\n".join(lines) + "\n")
        tmp.rename(path)
        print(f"generated {n:,} patients in {time.perf_counter() - t0:.0f} s → {path}")
    return path


def _make_queries(args: tuple[Path, int, Path]) -> None:
    source, count, out = args
    queries = make_queries(list(_read(source)), count, seed=1)
    rows = [{"kind": q.kind, "patient_id": q.patient_id, "query": vars(q.query)} for q in queries]
    out.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def queries_file(source: Path, count: int) -> list[LabeledQuery]:
    """The query set for ``source``, drawn once in a child process (not to weigh on this one's RSS)."""
    path = source.with_name(f"{source.stem}-queries-{count}.json")
    if not path.exists():
        with Pool(1) as pool:
            pool.apply(_make_queries, ((source, count, path),))
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [LabeledQuery(r["kind"], Query(**r["query"]), r["patient_id"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reuse-index", action="store_true")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="normalizing processes")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    source = patients_file(args.patients, args.seed)
    queries = queries_file(source, args.queries)
    db = CACHE / f"search-index-{args.patients}-{args.seed}.db"
    build_s = None
    cpu0 = _cpu()
    with PeakRSS() as build_rss:
        if not (args.reuse_index and db.exists()):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            t0 = time.perf_counter()
            with PatientIndex.open(db) as index:
                index.add_many(_read(source), workers=args.workers)  # streamed
            build_s = time.perf_counter() - t0
    build_cpu = _cpu() - cpu0
    latencies: list[float] = []
    top1 = top5 = 0
    with PeakRSS() as search_rss, PatientIndex.open(db, readonly=True) as index:
        for lq in queries:
            t0 = time.perf_counter()
            found = index.search(lq.query, limit=10)
            latencies.append(time.perf_counter() - t0)
            ids = [c.patient_id for c in found]
            top1 += ids[:1] == [lq.patient_id]
            top5 += lq.patient_id in ids[:5]
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    figures = {
        "patients": args.patients,
        "queries": len(queries),
        "index_build_s": None if build_s is None else round(build_s, 1),
        "index_build_cpu_s": round(build_cpu, 1),
        "index_size_mb": round(db.stat().st_size / 1e6, 1),
        "p50_ms": round(pct(0.50), 2),
        "p95_ms": round(pct(0.95), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "top1": round(top1 / len(queries), 4),
        "top5": round(top5 / len(queries), 4),
        "peak_rss_build": build_rss.peak_single,
        "peak_rss_search": search_rss.peak_single,
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "load_avg": round(os.getloadavg()[0], 1),
    }
    build = "reused" if build_s is None else f"{build_s:.1f} s ({build_cpu:.0f} CPU-s in all processes)"
    print(f"patients {args.patients:,}  index build {build}  index size {figures['index_size_mb']} MB")
    print(
        f"{len(queries)} queries: p50 {figures['p50_ms']} ms  p95 {figures['p95_ms']} ms  "
        f"p99 {figures['p99_ms']} ms  max {figures['max_ms']} ms"
    )
    print(f"right patient first {top1 / len(queries):.1%}, in top 5 {top5 / len(queries):.1%}")
    print(
        f"peak RSS: build {mb(build_rss.peak_single)}, search {mb(search_rss.peak_single)}; "
        f"{os.cpu_count()} CPUs shared with other work (load average {os.getloadavg()[0]:.1f})"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

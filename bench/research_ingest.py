"""Research ingest of a large hospital's research baseline: records per second, MB per second, peak RSS.

    python bench/research_ingest.py [--patients 100000] [--repeat 1]

Builds (once, cached under the bench cache) a synthetic hospital of ``--patients`` patients (30 days, seed
11: the same tree ``bench/restore_export.py`` makes, reused when that bench already made it), syncs it once
through a local center with the research stream on (the agent reads every file once and seals both
streams), then measures, into a fresh DuckDB file each time:

- research ingest: verify, decrypt, stage and load the research baseline (``research.ingest``),
  records/s (wall clock and per CPU second, all threads), MB/s of sealed changeset, peak RSS of the
  process and the load average;
- the Parquet export of the loaded tables.

The agent's one-off baseline sync is timed too (both streams from one read), beside the clinical-only
sync time the restore bench prints for the same tree.  The analysis key of this bench lives in the cache
as a plain key file: a bench is not a deployment.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE, PeakRSS, mb, remove

from hakobune.keys import RecipientPrivateKey, load_recipient_private, write_key
from research.database import INGEST_MEMORY_LIMIT

HOSPITAL = "9990000003"
BENCH = Path(CACHE)
SEED, DAYS = 11, 30


def hospital_tree(patients: int) -> Path:
    """The synthetic hospital's SS-MIX2 root (the restore bench's tree when it exists; same parameters)."""
    from hakobune.synth import SSMIX2_DIR, generate, read_meta

    shared = BENCH / f"restore-{patients}" / "hospital"
    if (shared / "synth.json").exists():
        meta = read_meta(shared)
        if meta.get("seed") == SEED and meta.get("days_done") == DAYS:
            return shared / SSMIX2_DIR
    own = BENCH / f"research-{patients}" / "hospital"
    if not (own / "synth.json").exists():
        t0 = time.perf_counter()
        stats = generate(own, patients, DAYS, seed=SEED)
        took = time.perf_counter() - t0
        print(f"generated {stats.patients:,} patients, {stats.files:,} files in {took:.0f} s")
    return own / SSMIX2_DIR


def prepare(patients: int) -> Path:
    """A center holding the hospital's research baseline; returns the bench world folder."""
    from agent.commands.sync import run_once
    from center.catalog import Catalog
    from center.config import load_center_config
    from center.ingest import ingest_all
    from hakobune.provision import provision_local

    world = BENCH / f"research-{patients}"
    done = world / "synced"
    if done.exists():
        return world
    ssmix2 = hospital_tree(patients)
    for stale in ("agent", "center", "analysis.key"):
        remove(world / stale)
    world.mkdir(parents=True, exist_ok=True)
    release = RecipientPrivateKey.generate()
    analysis = RecipientPrivateKey.generate()
    write_key(world / "analysis.key", analysis)
    provision_local(
        hospital=HOSPITAL,
        ssmix2=ssmix2,
        center_home=world / "center",
        agent_home=world / "agent",
        release=release.public,
        analysis=analysis.public,
        linkage_key=os.urandom(32),
    )
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        doc = run_once(world / "agent")
        seconds = time.perf_counter() - t0
    s, r = doc["sync"], doc["sync"]["research"]
    print(
        f"baseline sync, both streams from one read: {seconds:.0f} s; clinical {s['size'] / 1e6:,.0f} MB, "
        f"research {r['size'] / 1e6:,.0f} MB ({r['build']['puts']:,} records, {r['build']['patients']:,} "
        f"patients); peak RSS {mb(rss.peak_total)} (all processes)"
    )
    cfg = load_center_config(world / "center")
    with Catalog.open(cfg.catalog_url) as catalog:
        ingest_all(cfg, catalog)
    done.touch()
    return world


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--memory-limit",
        default=INGEST_MEMORY_LIMIT,
        help=f"DuckDB memory cap (research ingest --memory-limit; default {INGEST_MEMORY_LIMIT})",
    )
    args = ap.parse_args()
    world = prepare(args.patients)

    from research.database import ResearchDB
    from research.ingest import ingest, sources_from_center

    private = load_recipient_private(world / "analysis.key")
    sources = sources_from_center(world / "center")
    sealed = sum(p.stat().st_size for s in sources for p in s.folder.glob("*.hkcs"))
    print(f"research chain: {sealed / 1e6:,.1f} MB sealed")
    for run in range(args.repeat):
        db = world / f"bench-{run}.duckdb"
        for leftover in (db, db.with_name(db.name + ".wal")):
            leftover.unlink(missing_ok=True)
        cpu = _cpu_seconds()
        with PeakRSS() as rss, ResearchDB.open(db, memory_limit=args.memory_limit) as database:
            report = ingest(database, sources, private)
            counts = database.counts()
        cpu = _cpu_seconds() - cpu
        assert not report.refused, report.refused
        records, seconds = report.records, report.seconds
        print(
            f"research ingest: {records:,} records ({report.bytes / 1e6:,.1f} MB sealed) "
            f"in {seconds:.1f} s = {records / seconds:,.0f} records/s, "
            f"{report.bytes / 1e6 / seconds:,.1f} MB/s; CPU {cpu:.1f} s = {records / cpu:,.0f} records per "
            f"CPU second; DB {db.stat().st_size / 1e6:,.0f} MB; peak RSS {mb(rss.peak_total)} "
            f"(DuckDB memory limit {args.memory_limit}); load average "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
        )
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items() if t not in ("meta", "ingested")))
        with ResearchDB.open(db) as database:
            t0 = time.perf_counter()
            files = database.export_parquet(world / f"parquet-{run}")
            parquet = sum(p.stat().st_size for p in files.values())
        print(f"parquet export: {parquet / 1e6:,.0f} MB in {time.perf_counter() - t0:.1f} s")
        db.unlink(missing_ok=True)
        shutil.rmtree(world / f"parquet-{run}", ignore_errors=True)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (DuckDB's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()

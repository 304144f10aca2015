"""Disaster-day restore of a large hospital: replay, export from the restore database, streaming export.

    python bench/restore_export.py [--patients 100000] [--workers 2] [--as-of YYYY-MM-DD | --as-of data]
                                   [--export ndjson|files|both]

Builds (once, cached under the bench cache) a synthetic hospital of ``--patients`` patients, syncs it
through a local center exactly as the agent does, then measures, from a cold start with the release key
in memory, three runs one after the other:

1. replay only: verify and index the chain, rebuild every patient into a fresh restore database and index
   it (no export);
2. ``restore export`` of the whole hospital from that restore database: one NDJSON file (``--ndjson``,
   the whole-hospital form, by default) and/or one file per patient (``--out``; ``--export files`` or
   ``both``), wall time, bundles/s and CPU milliseconds per bundle;
3. the streaming export during unlock: unlock → first bundle and → last bundle while the chain is replayed.

Each with its peak RSS (this process and its workers) and the load average, since the machine may be
shared.  ``--as-of`` is the summary's date: by default today, as the command does; the synthetic data ends
on its own last day, so today leaves only problems and allergies in most bundles, ``--as-of data`` (the
data's last day) gives full summaries (about four times the work per bundle).  What the runs write (the
bundles, ~16 GB for 100k patients) is removed at the end unless ``--keep``; the replayed database stays,
for bench/media_write.py.

The release key of this bench lives in the cache as a plain key file: a bench is not a deployment.
Targets (issue 4): whole 100k-patient export < 2 min; first bundle within 1 s of unlock.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE, PeakRSS, mb, remove

from hakobune.keys import RecipientPrivateKey, load_recipient_private, load_signing_key, write_key

HOSPITAL = "9990000002"


def parse_as_of(text: str, world: Path) -> date | None:
    """``--as-of``: a date, ``data`` (the last day of the synthetic hospital in ``world``), or "" (today,
    as the commands do: None)."""
    if text == "data":
        from hakobune.synth import read_meta

        return date.fromisoformat(str(read_meta(world / "hospital")["last_date"]))
    return date.fromisoformat(text) if text else None


def prepare(patients: int) -> tuple[Path, Path]:
    """A synced center for a ``patients``-patient hospital; returns (center store folder, world folder)."""
    from agent.commands.sync import run_once
    from center.catalog import Catalog
    from center.config import load_center_config
    from center.ingest import ingest_all
    from hakobune.provision import provision_local
    from hakobune.synth import SSMIX2_DIR, generate

    world = CACHE / f"restore-{patients}"
    done = world / "synced"
    if not done.exists():
        if world.exists():
            shutil.rmtree(world)
        world.mkdir(parents=True)
        t0 = time.perf_counter()
        stats = generate(world / "hospital", patients, 30, seed=11)
        print(
            f"generated {stats.patients:,} patients, {stats.files:,} files "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        key = RecipientPrivateKey.generate()
        write_key(world / "release.key", key)
        provision_local(
            hospital=HOSPITAL,
            ssmix2=world / "hospital" / SSMIX2_DIR,
            center_home=world / "center",
            agent_home=world / "agent",
            release=key.public,
            journal=None,
        )
        t0 = time.perf_counter()
        doc = run_once(world / "agent")
        print(f"baseline sync {doc['sync']['size'] / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f} s")
        cfg = load_center_config(world / "center")
        with Catalog.open(cfg.catalog_url) as catalog:
            ingest_all(cfg, catalog)
        done.touch()
    return world / "center" / "store" / HOSPITAL / "clinical", world


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def _cpu() -> float:
    """CPU seconds of this process and its finished workers: what a run costs however loaded the machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--as-of", default="", help="YYYY-MM-DD, or 'data' for the synthetic data's last day")
    ap.add_argument(
        "--export",
        choices=("ndjson", "files", "both"),
        default="ndjson",
        help="what step 2 writes: one NDJSON file, one file per patient, or each in turn",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep what the runs wrote (~16 GB of bundles for 100k patients), not only the replayed database",
    )
    args = ap.parse_args()
    store, world = prepare(args.patients)

    from restore.chain import plan_chain
    from restore.commands.restore import run_export
    from restore.export import BundleExporter, ExportReport
    from restore.rebuild import rebuild

    as_of = parse_as_of(args.as_of, world)
    private = load_recipient_private(world / "release.key")
    signer = load_signing_key(world / "agent" / "keys" / "agent.key").public
    out = CACHE / f"restore-{args.patients}-out"
    if out.exists():
        shutil.rmtree(out)
    plan = plan_chain(store, HOSPITAL)
    print(
        f"chain: {len(plan.files)} changeset(s), {sum(s.size for s in plan.files) / 1e6:,.0f} MB; "
        f"{args.workers} workers; as of {as_of or 'today'}; {_load()}"
    )

    def bundles(r: ExportReport) -> str:
        n = max(r.bundles, 1)
        return f"{r.bundles:,} bundles ({r.resources / n:.0f} entries, {r.bytes / n / 1e3:.1f} kB each)"

    # 1. replay only
    with PeakRSS() as rss:
        t0, c0 = time.perf_counter(), _cpu()
        report = rebuild(out / "replay-only", plan, private, signer)
        replay_s = time.perf_counter() - t0
    print(
        f"1. replay only: {report.patients:,} patients, {report.records:,} records in {replay_s:.1f} s "
        f"({_cpu() - c0:.0f} CPU s; first patient at {report.seconds_to_first:.2f} s; search index "
        f"{report.indexed:,}); peak RSS {mb(rss.peak_total)}; {_load()}"
    )

    # 2. `restore export` from the restore database
    forms = ("ndjson", "files") if args.export == "both" else (args.export,)
    for form in forms:
        with PeakRSS() as rss:
            t0, c0 = time.perf_counter(), _cpu()
            r = run_export(
                out / "replay-only",
                out=out / "fhir-export" if form == "files" else None,
                ndjson=out / "fhir.ndjson" if form == "ndjson" else None,
                patients=None,
                audit=out / "audit.log",
                actor="bench",
                as_of=as_of,
                show_progress=False,
                workers=args.workers,
            )
            export_s, cpu_s = time.perf_counter() - t0, _cpu() - c0
        print(
            f"2. restore export from the database ({form}): {bundles(r)} in {export_s:.1f} s wall "
            f"({cpu_s:.0f} CPU s, {cpu_s / max(r.bundles, 1) * 1e3:.2f} ms per bundle), "
            f"{r.bundles / export_s:,.0f} bundles/s; first bundle {r.first_bundle_seconds or 0:.2f} s; "
            f"peak RSS {mb(rss.peak_total)}; {_load()}"
        )

    # 3. streaming export during unlock
    with PeakRSS() as rss:
        t0, c0 = time.perf_counter(), _cpu()
        with BundleExporter(
            hospital=HOSPITAL, folder=out / "fhir", started=t0, workers=args.workers, as_of=as_of
        ) as exporter:
            rebuild(out / "streaming", plan, private, signer, on_stored=exporter.write_stored)
        total = time.perf_counter() - t0
    s = exporter.report
    print(
        f"3. streaming export during unlock: first bundle {s.first_bundle_seconds or 0:.2f} s, "
        f"last bundle {s.last_bundle_seconds or 0:.1f} s, total with index {total:.1f} s "
        f"({_cpu() - c0:.0f} CPU s, replay included); {bundles(s)}, "
        f"{s.bundles / (s.last_bundle_seconds or 1):,.0f} bundles/s, {mb(s.bytes)} written; "
        f"peak RSS {mb(rss.peak_total)}; {_load()}"
    )
    if not args.keep:  # the bundles written (twice the hospital's size) would fill the disk over runs
        for written in ("fhir", "fhir-export", "fhir.ndjson", "streaming"):
            remove(out / written)


if __name__ == "__main__":
    main()

"""Disaster-day restore of a large hospital: replay, unlock to first bundle, bundles per second, peak RSS.

    python bench/restore_export.py [--patients 100000] [--workers 0]

Builds (once, cached under the bench cache) a synthetic hospital of ``--patients`` patients, syncs it
through a local center exactly as the agent does, then measures, from a cold start with the release key
in memory:

- replay: verify and index the chain, rebuild every patient into a fresh restore database and index it;
- unlock → first bundle and → last bundle with the streaming export (bundles written while replaying);
- bundles per second, bytes written, and peak RSS.

The release key of this bench lives in the cache as a plain key file: a bench is not a deployment.
Targets (issue 4): whole 100k-patient export < 2 min; first bundle within 1 s of unlock.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE, PeakRSS, mb

from hakobune.keys import RecipientPrivateKey, load_recipient_private, load_signing_key, write_key

HOSPITAL = "9990000002"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    args = ap.parse_args()
    store, world = prepare(args.patients)

    from restore.chain import plan_chain
    from restore.export import BundleExporter
    from restore.rebuild import rebuild

    private = load_recipient_private(world / "release.key")
    signer = load_signing_key(world / "agent" / "keys" / "agent.key").public
    out = CACHE / f"restore-{args.patients}-out"
    if out.exists():
        shutil.rmtree(out)
    plan = plan_chain(store, HOSPITAL)
    print(f"chain: {len(plan.files)} changeset(s), {sum(s.size for s in plan.files) / 1e6:,.0f} MB")

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        report = rebuild(out / "replay-only", plan, private, signer)
        replay_s = time.perf_counter() - t0
    print(
        f"replay into restore DB: {report.patients:,} patients, {report.records:,} records "
        f"in {replay_s:.1f} s "
        f"(chain verified and indexed in {report.seconds_to_first:.2f} s; search index {report.indexed:,}); "
        f"peak RSS {mb(rss.peak_total)}"
    )

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        with BundleExporter(hospital=HOSPITAL, folder=out / "fhir", started=t0) as exporter:
            rebuild(out / "streaming", plan, private, signer, on_patient=exporter.write)
        total = time.perf_counter() - t0
    r = exporter.report
    print(
        f"unlock → first bundle {r.first_bundle_seconds:.2f} s, → last bundle {r.last_bundle_seconds:.1f} s, "
        f"total with index {total:.1f} s; {r.bundles:,} bundles, {r.bundles_per_second:,.0f} bundles/s, "
        f"{mb(r.bytes)} written; peak RSS {mb(rss.peak_total)}"
    )


if __name__ == "__main__":
    main()

"""Helicopter-disk throughput for a large release: write and verify against ``cp`` of the same bytes.

    python bench/media_write.py [--patients 100000] [--runs 3] [--out DIR] [--skip-whole]
                                [--whole-only] [--as-of YYYY-MM-DD | --as-of data] [--compare]

Uses the cached synthetic hospital and restore folder of bench/restore_export.py (built the same way if
missing) and measures, each with peak RSS (1, 2: this process's high-water mark; 3: with its children):

1. the disk writer over already-built bundles (the release's NDJSON, cached, read straight into the
   writer's block buffers): cut, compress, seal, hash, write, fsync, manifest, against ``cp`` of the
   same file plus ``sync`` of the copy, with the CPU time of each of the writer's threads; then fed bundle by
   bundle, as ``media write`` feeds it (``DiskWriter.add`` of each bundle as restore.export hands it
   over, the bundles split into objects before the clock starts), (1b) without the offline viewer,
   (1c) with it, parsing and summarizing each bundle, and (1d) with it given each bundle's summary, as
   ``media write`` gives it (made by the export's workers; here before the clock starts), each against
   the same ``cp`` (``media write`` writes the viewer unless ``--no-viewer``);
2. ``media verify`` of that disk (signature, every file's SHA-256) against the same ``cp``: the release's
   size over the time to verify it (the disk holds it compressed), and the disk's bytes read a second;
3. the whole ``media write`` path: bundles built from the restore database (process pool, each bundle
   summarized for the viewer where it is built), the disk writer and the offline viewer; ``--as-of``
   as in bench/restore_export.py (``data``: the synthetic data's last day, full summaries), and with
   ``--compare`` the same with the viewer parsing and summarizing the bundles' bytes itself.

Best of ``--runs`` for ``cp``, 1 and 2 (the machine is shared; the best run is the least disturbed one);
``cp`` and the writer take turns, so that both meet the same load (1 is also given turn by turn: each
writer run against the ``cp`` just before it).  ``--skip-whole`` leaves out 3.
Target (issue 5): 1 and 2 at least 80 % of ``cp``, memory bounded.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE, PeakRSS, mb

from hakobune.keys import RecipientPrivateKey, SigningKey
from media.crypto import generate_passphrase, new_disk_key, wrap_to_passphrase, wrap_to_recipient
from media.manifest import TrustAnchor
from media.verify import verify_disk
from media.write import DiskInfo, DiskWriter, new_disk_id, viewer_factory

HOSPITAL = "9990000002"


def restore_folder(patients: int) -> Path:
    """The bench's restore folder (bench/restore_export.py's cache), rebuilt if missing."""
    folder = CACHE / f"restore-{patients}-out" / "replay-only"
    if (folder / "restore.db").exists():
        return folder
    from restore_export import prepare

    from hakobune.keys import load_recipient_private, load_signing_key
    from restore.chain import plan_chain
    from restore.rebuild import rebuild

    store, world = prepare(patients)
    private = load_recipient_private(world / "release.key")
    signer = load_signing_key(world / "agent" / "keys" / "agent.key").public
    rebuild(folder, plan_chain(store, HOSPITAL), private, signer)
    return folder


def bundles_ndjson(restore: Path, patients: int) -> Path:
    """The release's bundles as NDJSON (built once with restore.export and cached)."""
    path = CACHE / f"media-{patients}-bundles.ndjson"
    if not path.exists():
        from restore.database import RestoreDB
        from restore.export import BundleExporter

        t0 = time.perf_counter()
        with RestoreDB.open(restore) as db, BundleExporter(hospital=HOSPITAL, ndjson=path) as exporter:
            for row in db.patients():
                exporter.write(row)
        print(f"built the bundles once: {mb(path.stat().st_size)} in {time.perf_counter() - t0:.0f} s")
    return path


def disk_info(disk_key: bytes) -> DiskInfo:
    disk_id = new_disk_id()
    recipient = RecipientPrivateKey.generate().public
    return DiskInfo(
        disk_id=disk_id,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        hospital=HOSPITAL,
        order_id="RO-BENCH",
        order_sha256="0" * 64,
        recipient_id="9990000099",
        recipient_name="bench",
        recipient_key=recipient,
        recipient_wrap=wrap_to_recipient(disk_key, disk_id, recipient),
        passphrase_wrap=wrap_to_passphrase(disk_key, disk_id, generate_passphrase()),
    )


class PeakSelf:
    """Peak RSS of this process alone: the kernel's high-water mark, reset on entry (Linux).  For (1) and
    (2), which run in this process: exact, and unlike PeakRSS's sampling thread (about 0.13 s of CPU a
    second) it costs nothing, so it neither competes with the writer nor counts in its CPU time."""

    peak = 0

    def __enter__(self) -> PeakSelf:
        Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        status = Path("/proc/self/status").read_text()
        self.peak = 1024 * int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def cp_seconds(src: Path, dst: Path) -> tuple[float, float]:
    """``cp`` plus ``sync`` of the copy (what the disk writer's fsyncs amount to): wall and CPU seconds."""
    dst.unlink(missing_ok=True)
    t0, c0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)
    s = time.perf_counter() - t0
    dst.unlink()
    return s, cpu_seconds(resource.RUSAGE_CHILDREN) - c0


@dataclass
class Run:
    """One run of (1): seconds, plaintext and disk bytes, CPU seconds of all threads, and per thread."""

    seconds: float
    plain: int
    disk: int
    cpu: float
    threads: dict[str, float]

    def per_thread(self) -> str:
        return ", ".join(f"{name} {s:.2f} s" for name, s in self.threads.items())


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each of the disk writer's threads so far (``media-seal``, ``media-hash``, …)."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        if t.name.startswith("media-") and t.ident is not None:
            name = t.name.rsplit("_", 1)[0]  # ThreadPoolExecutor appends _<n>
            try:
                out[name] = out.get(name, 0.0) + time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except OSError:  # it ended meanwhile
                continue
    return out


#: Where a bundle of restore.fhir names its patient: the Patient's identifier (its ``value`` follows).
_PATIENT_ID_SYSTEM = b'"urn:oid:1.2.392.100495.20.3.51.'


def bundles_in_memory(ndjson: Path) -> list[tuple[str, bytes]]:
    """The release's bundles as restore.export hands them to ``media write``'s sink: (patient ID, bundle
    bytes), each its own bytes object.  Made before the clock starts: splitting the file is the bench's
    work, not the writer's (restore.export's comes out of its process pool as such objects)."""
    out: list[tuple[str, bytes]] = []
    with open(ndjson, "rb") as f:
        for line in f:
            bundle = line[:-1] if line.endswith(b"\n") else line
            at = bundle.find(b'"value":"', bundle.find(_PATIENT_ID_SYSTEM)) + 9
            out.append((bundle[at : bundle.index(b'"', at)].decode("ascii"), bundle))
    return out


def write_plain(
    ndjson: Path,
    out: Path,
    key: SigningKey,
    *,
    bundles: list[tuple[str, bytes]] | None = None,
    viewer: bool = False,
    summaries: list[Any] | None = None,
) -> Run:
    """(1): the writer fed the already-built bundles, read from the file straight into its segment
    buffers (``add_ndjson_file``), or given ``bundles``, one by one (``add``, as ``media write`` does;
    ``viewer``: with the offline viewer, which ``media write`` writes unless ``--no-viewer``; with
    ``summaries``, each bundle's viewer summary comes with it, as restore.export's workers make them)."""
    disk_key = new_disk_key()
    info = disk_info(disk_key)  # PBKDF2 and HPKE are not part of the stream being measured
    t0, c0, m0 = time.perf_counter(), cpu_seconds(), time.thread_time()
    disk = DiskWriter(out, info, disk_key, viewer=viewer_factory(info, disk_key) if viewer else None)
    if bundles is not None:
        add = disk.add
        if summaries is None:
            for patient_id, bundle in bundles:
                add(patient_id, bundle)
        else:
            for (patient_id, bundle), summary in zip(bundles, summaries, strict=True):
                add(patient_id, bundle, summary)
    else:
        with open(ndjson, "rb", buffering=0) as f:
            disk.add_ndjson_file(f)
    threads = {"caller": time.thread_time() - m0, **thread_cpu()}  # (before finish ends the threads)
    result = disk.finish(key)
    s = time.perf_counter() - t0
    return Run(s, result.plaintext_bytes, result.disk_bytes, cpu_seconds() - c0, threads)


def bundle_by_bundle(ndjson: Path, scratch: Path, key: SigningKey, cp_rate: float, patients: int) -> None:
    """(1b), (1c) and (1d): the bundle-by-bundle feed of ``media write``, without the viewer, with it
    (parsing each bundle) and with it given each bundle's summary (as ``media write`` gives it: made by
    the export's workers), each right after a ``cp`` (the same load) and against the best ``cp``."""
    from media.viewer_summary import parse_bundle, stored_summary

    bundles = bundles_in_memory(ndjson)
    summaries = [stored_summary(parse_bundle(b)) for _, b in bundles]  # (the workers' part, not the writer's)
    caller: dict[str, float] = {}
    for label, viewer, given in (
        ("(1b) bundle by bundle (DiskWriter.add), no viewer", False, None),
        ("(1c) bundle by bundle with the offline viewer, which parses each bundle", True, None),
        ("(1d) bundle by bundle with the viewer, summaries given (media write)", True, summaries),
    ):
        cp_now = ndjson.stat().st_size / cp_seconds(ndjson, scratch / "cp.copy")[0]
        run = write_plain(
            ndjson, scratch / "disk-bundles", key, bundles=bundles, viewer=viewer, summaries=given
        )
        shutil.rmtree(scratch / "disk-bundles")
        rate = run.plain / run.seconds
        caller[label[:4]] = run.threads["caller"]
        print(
            f"{label}: {run.plain / 1e6:,.0f} MB in {run.seconds:.2f} s, {rate / 1e6:,.0f} MB/s = "
            f"{rate / cp_rate:.0%} of cp ({rate / cp_now:.0%} of the cp just before); CPU {run.cpu:.2f} s "
            f"({run.per_thread()}); caller {run.threads['caller'] / patients * 1e6:.1f} µs a bundle "
            f"(load {load()})"
        )
    del bundles, summaries
    release_freed_memory()
    for run_label, what in (("(1c)", "parse, summary, index row, chunks"), ("(1d)", "index row, chunks")):
        share = caller[run_label] - caller["(1b)"]
        print(
            f"     the viewer's share of the caller's CPU in {run_label}: {share:.2f} s, "
            f"{share / patients * 1e6:.0f} µs a bundle ({what})"
        )


def release_freed_memory() -> None:
    """Give freed memory back to the system (glibc keeps what the bundles' objects held), so that the
    peak RSS measured next is that step's own."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=CACHE / "media-bench", help="Scratch folder (same disk).")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--skip-whole", action="store_true", help="Skip (3), the whole media write.")
    ap.add_argument("--whole-only", action="store_true", help="Only (3), the whole media write.")
    ap.add_argument("--as-of", default="", help="(3): YYYY-MM-DD, or 'data' for the data's last day")
    ap.add_argument("--compare", action="store_true", help="(3) also with the viewer parsing the bundles")
    args = ap.parse_args()
    restore = restore_folder(args.patients)
    if args.whole_only:
        scratch = args.out
        shutil.rmtree(scratch, ignore_errors=True)
        whole(restore, scratch / "full", SigningKey.generate(), args.workers, _as_of(args), args.compare)
        shutil.rmtree(scratch)
        return
    ndjson = bundles_ndjson(restore, args.patients)
    size = ndjson.stat().st_size
    scratch: Path = args.out
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    key = SigningKey.generate()
    print(f"release: {args.patients:,} patients, NDJSON {mb(size)}; {os.cpu_count()} cores, load {load()}")

    # cp and the writer take turns, so both meet the same load; both read the input from the page cache
    # (the first cp warms it) and both end with their output on the disk (sync of the copy; fsync).
    cps: list[tuple[float, float]] = []
    turns: list[float] = []  # each run's writer against the cp just before it (the same load)
    best: Run | None = None
    with PeakSelf() as rss1:
        for i in range(args.runs):
            cps.append(cp_seconds(ndjson, scratch / "cp.copy"))
            disk = scratch / f"disk-{i}"
            run = write_plain(ndjson, disk, key)
            turns.append(cps[-1][0] / run.seconds * run.plain / size)
            print(
                f"  run {i + 1}: cp + sync {size / cps[-1][0] / 1e6:,.0f} MB/s, "
                f"writer {run.plain / run.seconds / 1e6:,.0f} MB/s, CPU {run.cpu:.2f} s "
                f"({run.per_thread()}) (load {load()})"
            )
            if best is None or run.seconds < best.seconds:
                best = run
            if i < args.runs - 1:
                shutil.rmtree(disk)
    assert best is not None
    cp, cp_cpu = min(cps)
    cp_rate = size / cp
    print(
        f"cp + sync of {mb(size)}: {cp:.2f} s, {cp_rate / 1e6:,.0f} MB/s (best of {args.runs}; "
        f"CPU {cp_cpu:.2f} s)"
    )
    s, plain = best.seconds, best.plain
    print(
        f"(1) disk writer: {mb(plain)} → {mb(best.disk)} in {s:.2f} s, {plain / s / 1e6:,.0f} MB/s = "
        f"{plain / s / cp_rate:.0%} of cp (turn by turn: {', '.join(f'{t:.0%}' for t in turns)}); "
        f"CPU {best.cpu:.2f} s ({best.cpu / plain * 1e9:.2f} ms/MB, all "
        f"threads, feed included; before finish: {best.per_thread()}); peak RSS {mb(rss1.peak)}"
    )
    bundle_by_bundle(ndjson, scratch, key, cp_rate, args.patients)
    disk = scratch / f"disk-{args.runs - 1}"
    anchor = TrustAnchor.of_key(key.public)
    times: list[float] = []
    c0 = cpu_seconds()
    with PeakSelf() as rss2:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            report = verify_disk([disk], anchor)
            times.append(time.perf_counter() - t0)
            assert report.ok, report.problems
    used = (cpu_seconds() - c0) / args.runs
    s, cold = min(times), report.bytes / times[0] / 1e6
    print(
        f"(2) verify: the {mb(size)} release ({mb(report.bytes)} on the disk, compressed) in {s:.3f} s = "
        f"{size / s / 1e6:,.0f} MB/s of the release = {size / s / cp_rate:.0%} of cp; the disk's bytes read "
        f"and hashed at {report.bytes / s / 1e6:,.0f} MB/s (first run, cold: {cold:,.0f} MB/s); "
        f"CPU {used:.2f} s a run; peak RSS {mb(rss2.peak)}"
    )
    shutil.rmtree(disk)
    if not args.skip_whole:
        whole(restore, scratch / "full", key, args.workers, _as_of(args), args.compare)
    shutil.rmtree(scratch)
    print(f"load average at the end: {load()} (other work shares these cores: figures vary between runs)")


def _as_of(args: argparse.Namespace) -> date | None:
    from restore_export import parse_as_of

    return parse_as_of(args.as_of, CACHE / f"restore-{args.patients}")


def whole(restore: Path, out: Path, key: SigningKey, workers: int, as_of: date | None, compare: bool) -> None:
    """(3): bundles built from the restore database, the disk writer and the viewer, as ``media write``
    does it (summaries made where the bundles are built), then with the viewer parsing each bundle."""
    from media.viewer_summary import stored_summary
    from restore.database import RestoreDB
    from restore.export import BundleExporter

    runs: list[tuple[str, Any]] = [("summaries made with the bundles", stored_summary)]
    if compare:
        runs.append(("viewer parses", None))
    for label, summarizer in runs:
        disk_key = new_disk_key()
        info = disk_info(disk_key)
        c0, k0 = cpu_seconds(), cpu_seconds(resource.RUSAGE_CHILDREN)
        with PeakRSS() as rss3:
            t0 = time.perf_counter()
            writer = DiskWriter(out, info, disk_key, viewer=viewer_factory(info, disk_key))
            with (
                RestoreDB.open(restore) as db,
                BundleExporter(
                    hospital=HOSPITAL, workers=workers, sink=writer.add, as_of=as_of, summarize=summarizer
                ) as exporter,
            ):
                for patient_id, records in db.stored():
                    exporter.write_stored(patient_id, records)
            result = writer.finish(key)
            s = time.perf_counter() - t0
        main, workers_cpu = cpu_seconds() - c0, cpu_seconds(resource.RUSAGE_CHILDREN) - k0
        print(
            f"(3) whole media write, as of {as_of or 'today'}, {label}: {result.patients:,} patients, "
            f"{mb(result.disk_bytes)} on disk ({result.files} files) in {s:.1f} s, "
            f"{result.patients / s:,.0f} patients/s; CPU {main:.0f} s here + {workers_cpu:.0f} s in the "
            f"workers; peak RSS {mb(rss3.peak_total)} (all processes), {mb(rss3.peak_single)} largest "
            f"process (load {load()})"
        )
        shutil.rmtree(out)


if __name__ == "__main__":
    main()

"""The offline viewer on a large disk: time from passphrase to search-ready, search and open latency, and
the browser's peak memory, for 100k synthetic patients in real headless Chromium.

    python bench/viewer_open.py [--patients 100000] [--runs 3] [--rebuild]

Patients are the synthetic hospital's profiles (``make_profile``, the generator behind ``hakobune synth``):
names, birth dates, problems, chronic medications and allergies, plus an injection for one in ten and two
lab visits of 20 items each, as records; ``restore.fhir.patient_bundle`` makes each Bundle (on all cores)
and :class:`media.viewer.ViewerWriter` writes the disk, as ``media write`` would.  The disk is cached under
the bench cache and rebuilt when the writer or the summary extraction changes (``viewer.html`` is made
again from the current page sources on every run).  Then Chromium opens ``viewer.html`` from
``file://`` ``--runs`` times with the real PBKDF2 count (600,000), and the script prints:

- unlock (PBKDF2 + unwrap), index load (decrypt + gunzip + parse of every index part) and total
  passphrase → search-ready, as the page measures them, and as seen from outside (Enter → search screen);
- search latency (typed query → results drawn) for kana, kanji-variant and birth-date queries;
- opening a patient (one summary chunk decrypted and drawn);
- peak memory (PSS) of the browser's processes and the page's JS heap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CACHE, mb
from hakobune.records import (
    Allergy,
    Coding,
    Condition,
    Injection,
    InjectionComponent,
    LabResult,
    Patient,
    Prescription,
    Record,
    RecordKey,
)
from hakobune.synth import clinical as C
from hakobune.synth.model import make_profile
from media import viewer as V
from media.crypto import new_disk_key, wrap_to_passphrase
from restore.fhir import dumps, patient_bundle

SEED = 7
AS_OF = date(2025, 4, 30)
GENERATED = datetime(2025, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=9)))
DISK_ID = "HKD-BENCH-0001"
PASSPHRASE = "BENC-HMAR-K234-5678-9ABC-DEFG"
CHROMIUM = "/usr/bin/chromium"
_LABS = list(C.LAB_ITEMS.values())[:20]
#: Bump when records_of changes (the cached disk is keyed by it, the writer and the summary extraction).
GENERATOR = "1"
#: Batches of bundles in flight between the workers and the writer (bounds the bench's own memory).
IN_FLIGHT = 4
#: Each query is run this many times (the machine is shared: the minimum is the unloaded figure).
REPEAT = 5


def _iso(ymd: str) -> str:
    return f"{ymd[:4]}-{ymd[4:6]}-{ymd[6:]}"


def records_of(i: int) -> tuple[Patient, list[Record]]:
    """Patient i of the synthetic hospital as records (demographics, problems, drugs, allergies, labs)."""
    p = make_profile(SEED, i)
    d = p.demo
    pid = p.pid
    rng = random.Random(f"viewer-bench:{i}")
    patient = Patient(
        RecordKey(pid, "-", "ADT-00", "999999999999999", "PID"),
        d.family, d.given, d.family_kana, d.given_kana, _iso(d.birth), d.sex, d.postal, d.address,
    )  # fmt: skip
    out: list[Record] = []
    for n, prob in enumerate(p.problems, 1):
        dx = C.DIAGNOSES[prob.diagnosis]
        out.append(
            Condition(
                RecordKey(pid, "-", "PPR-01", "999999999999999", str(n)),
                Coding(dx.medis, dx.name, "MDCDX2"),
                icd10=dx.icd10,
                name=dx.name,
                onset=_iso(prob.onset),
                recorded=_iso(prob.recorded),
                resolved=_iso(prob.resolved) if prob.resolved else "",
                outcome=Coding("R" if prob.resolved else "N", "", "HL70241"),
                main=prob.main,
            )
        )
    for n, a in enumerate((*p.al1, *p.iam), 1):
        allergen = C.ALLERGENS[a.allergen]
        sev_code, sev_name = C.SEVERITIES[a.severity]
        out.append(
            Allergy(
                RecordKey(pid, "-", "ADT-61", "999999999999999", str(n)),
                Coding(allergen.category, allergen.category_name, "HL70127"),
                Coding(allergen.code, allergen.name, allergen.system),
                Coding(sev_code, sev_name, "HL70128"),
                a.reaction,
                _iso(a.onset),
            )
        )
    for n, key in enumerate(p.meds, 1):
        drug = C.ORAL_DRUGS[key]
        usage = C.USAGES[drug.usage]
        start = AS_OF - timedelta(days=rng.randrange(1, 40))
        out.append(
            Prescription(
                RecordKey(pid, start.strftime("%Y%m%d"), "OMP-01", f"{i:010d}{n:05d}", "1"),
                "order",
                Coding(drug.hot9, drug.name, "HOT9"),
                amount=drug.dose,
                unit=Coding(drug.unit, drug.unit_name, "MR9P"),
                total_daily=str(int(drug.dose) * usage.per_day) if drug.dose.isdigit() else "",
                usage=Coding(usage.code, usage.text, "JAMISDP01"),
                days=str(rng.choice((14, 28, 56))),
                start=start.isoformat(),
                ordered_at=start.isoformat() + "T09:00",
                rp=str(n),
            )
        )
    if rng.random() < 0.1:
        recipe = rng.choice(C.INJECTION_RECIPES)
        day = AS_OF - timedelta(days=rng.randrange(0, 20))
        drugs = (recipe.base, *recipe.additives)
        out.append(
            Injection(
                RecordKey(pid, day.strftime("%Y%m%d"), "OMP-02", f"{i:010d}99999", "1"),
                "order",
                tuple(
                    InjectionComponent(
                        "B" if k == recipe.base else "A",
                        Coding(C.INJECTION_DRUGS[k].hot9, C.INJECTION_DRUGS[k].name, "HOT9"),
                        "1",
                        Coding(C.INJECTION_DRUGS[k].unit, C.INJECTION_DRUGS[k].unit_name, "MR9P"),
                    )
                    for k in drugs
                ),
                instructions=recipe.instruction,
                start=day.isoformat() + "T10:00",
                end=day.isoformat() + "T15:00",
                ordered_at=day.isoformat() + "T09:00",
            )
        )
    for visit in range(2):
        day = AS_OF - timedelta(days=rng.randrange(1, 80) + 90 * visit)
        for n, item in enumerate(_LABS, 1):
            z = p.lab_z[n - 1] + rng.gauss(0, 0.5)
            value = round(item.mean + z * item.sd, item.decimals)
            low, high = (item.low_m, item.high_m) if d.sex == "M" else (item.low_f, item.high_f)
            flag = (
                "H" if high is not None and value > high else "L" if low is not None and value < low else ""
            )
            rr = f"{'' if low is None else low}-{'' if high is None else high}"
            out.append(
                LabResult(
                    RecordKey(pid, day.strftime("%Y%m%d"), "OML-11", f"{i:010d}{visit:05d}", f"1.{n}"),
                    Coding(item.jlac10, item.name, "JC10"),
                    "NM",
                    f"{value:.{item.decimals}f}",
                    item.unit,
                    rr,
                    flag,
                    "F",
                    day.isoformat() + "T10:00",
                    Coding("023", "血清", "JC10"),
                )
            )
    return patient, out


def _bundles(lo_hi: tuple[int, int]) -> list[tuple[str, bytes]]:
    out = []
    for i in range(*lo_hi):
        patient, records = records_of(i)
        b = patient_bundle(
            patient,
            records,
            hospital="1310000001",
            hospital_name="箱舟総合病院",
            as_of=AS_OF,
            generated_at=GENERATED,
        )
        out.append((patient.key.patient_id, dumps(b)))
    return out


def _bounded(pool: Any, ranges: list[tuple[int, int]]) -> Iterator[list[tuple[str, bytes]]]:
    """The batches in order, at most IN_FLIGHT of them made ahead of the writer."""
    pending: deque[Any] = deque()
    for r in ranges:
        pending.append(pool.apply_async(_bundles, (r,)))
        if len(pending) >= IN_FLIGHT:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _data_hash() -> str:
    """What the disk's data depends on: the writer, the summary extraction and the record generator (the
    page's code is re-rendered into viewer.html on every run, so changing it needs no rewrite)."""
    h = hashlib.sha256(GENERATOR.encode())
    for path in (Path(V.__file__), Path(V.__file__).with_name("viewer_summary.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _refresh_html(disk: Path) -> None:
    """viewer.html again from the current sources, same config (same key wrap, same chunks)."""
    (disk / "viewer.html").write_text(V.render_html(json.loads(_config(disk))), encoding="utf-8")


def build_disk(n: int, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """The cached disk of ``n`` patients (written once per data version) and its write figures."""
    home = CACHE / f"viewer-{n}-{_data_hash()}"
    info = home / "bench.json"
    if info.exists() and not rebuild:
        _refresh_html(home / "disk")
        return home / "disk", json.loads(info.read_text())
    shutil.rmtree(home, ignore_errors=True)
    (home / "disk").mkdir(parents=True)
    disk_key = new_disk_key()
    wrap = wrap_to_passphrase(disk_key, DISK_ID, PASSPHRASE)  # the real 600,000 iterations
    writer = V.ViewerWriter(
        home / "disk",
        disk_key=disk_key,
        disk_id=DISK_ID,
        passphrase_wrap=wrap.doc(),
        label={"hospital_name": "箱舟総合病院", "recipient_name": "ベンチ災害拠点病院", "disk_id": DISK_ID},
    )
    step = 500
    t0 = time.perf_counter()
    write_s = 0.0
    bundle_bytes = 0
    with Pool(os.cpu_count() or 1) as pool:
        for batch in _bounded(pool, [(lo, min(n, lo + step)) for lo in range(0, n, step)]):
            t = time.perf_counter()
            for pid, data in batch:
                writer.add(pid, data)
                bundle_bytes += len(data)
            write_s += time.perf_counter() - t
        t = time.perf_counter()
        files = writer.close()
        write_s += time.perf_counter() - t
    sizes = [(home / "disk" / f).stat().st_size for f in files]
    figures = {
        "patients": n,
        "bundle_bytes": bundle_bytes,
        "files": len(files),
        "disk_bytes": sum(sizes),
        "index_bytes": sum(s for f, s in zip(files, sizes, strict=True) if "/i" in f),
        "html_bytes": (home / "disk" / "viewer.html").stat().st_size,
        "total_s": time.perf_counter() - t0,
        "writer_s": write_s,
        "peak_rss_max": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    info.write_text(json.dumps(figures))
    return home / "disk", figures


class BrowserMemory:
    """Peak summed PSS of the Chromium processes under this process, sampled every 100 ms (PSS shares
    the pages processes have in common among them, so the sum is what the browser really holds)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    if "chrom" in p.name():
                        total += p.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> BrowserMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _queries(n: int) -> Iterator[tuple[str, str, str]]:
    """(label, name, birth date) of patients on the disk, in the forms a desk types."""
    for i in (n // 7, n // 3, n - 5):
        d = make_profile(SEED, i).demo
        hira = "".join(
            chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in d.family_kana + " " + d.given_kana
        )
        yield "kana (hiragana) name", hira, ""
        yield (
            "kanji name + era date",
            d.family + d.given,
            f"S{int(d.birth[:4]) - 1925}.{int(d.birth[4:6])}.{int(d.birth[6:])}",
        )
        yield "birth date alone", "", d.birth
        yield "family name alone (kana)", d.family_kana, ""


def run_browser(disk: Path, runs: int, n: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    opens: list[dict[str, float]] = []
    outside: list[float] = []
    searches: dict[str, list[float]] = {}
    scans: dict[str, list[float]] = {}
    summary_ms: list[float] = []
    heap = 0
    with sync_playwright() as pw, BrowserMemory() as memory:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.goto((disk / "viewer.html").as_uri())
            page.fill("#passphrase", PASSPHRASE)
            t = time.perf_counter()
            page.press("#passphrase", "Enter")
            page.wait_for_selector("#screen-search:not([hidden])", timeout=120_000)
            outside.append((time.perf_counter() - t) * 1000)
            opens.append(page.evaluate("window.hakobuneViewer.timing()"))
            for label, name, birth in _queries(n):
                for _ in range(REPEAT):
                    ms = page.evaluate(
                        """([name, birth]) => {
                            document.getElementById('q-name').value = name;
                            document.getElementById('q-birth').value = birth;
                            const t = performance.now();
                            document.getElementById('search-form').requestSubmit();
                            const total = performance.now() - t;
                            return [total, window.hakobuneViewer.timing().lastSearch.scanMs]; }""",
                        [name, birth],
                    )
                    searches.setdefault(label, []).append(ms[0])
                    scans.setdefault(label, []).append(ms[1])
            for k in range(3):
                t = time.perf_counter()
                page.locator("#results .result").nth(k).click()
                page.wait_for_selector("#screen-summary:not([hidden])")
                summary_ms.append((time.perf_counter() - t) * 1000)
                page.keyboard.press("Escape")
                page.wait_for_selector("#screen-search:not([hidden])")
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            heap = max(heap, int(metrics.get("JSHeapUsedSize", 0)))
            context.close()
        browser.close()
    return {
        "opens": opens,
        "outside_ms": outside,
        "searches": searches,
        "scans": scans,
        "summary_ms": summary_ms,
        "peak_browser_pss": memory.peak,
        "js_heap": heap,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true", help="write the disk again even if cached")
    args = ap.parse_args()

    disk, w = build_disk(args.patients, args.rebuild)
    print(f"disk: {w['patients']:,} patients, {w['files']:,} files, {mb(w['disk_bytes'])} "
          f"(index {mb(w['index_bytes'])}, viewer.html {w['html_bytes'] / 1e3:,.0f} kB); "
          f"bundles {mb(w['bundle_bytes'])}")  # fmt: skip
    rate = w["patients"] / w["writer_s"]
    if "peak_rss_max" in w:
        print(f"writer process peak RSS (bundles in flight included): {mb(w['peak_rss_max'])}")
    print(f"write: {w['total_s']:,.1f} s total (bundles on {os.cpu_count()} cores + writer), "
          f"writer alone {w['writer_s']:,.1f} s = {rate:,.0f} patients/s")  # fmt: skip
    r = run_browser(disk, args.runs, args.patients)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ms (min {min(xs):,.0f}, max {max(xs):,.0f})"

    print(f"chromium {CHROMIUM}, {args.runs} runs, PBKDF2 600,000 iterations")
    print(f"  unlock (PBKDF2 + unwrap):        {med([o['unlockMs'] for o in r['opens']])}")
    print(f"  index load ({len(json.loads(_config(disk))['index'])} parts):          "
          f"{med([o['indexMs'] for o in r['opens']])}")  # fmt: skip
    print(f"  passphrase -> search-ready:      {med([o['readyMs'] for o in r['opens']])}")
    print(f"  ... seen from outside (Enter -> search screen): {med(r['outside_ms'])}")
    print(f"  ... of which building the index's arrays: {med([o['buildMs'] for o in r['opens']])}")
    steps = ("load", "decode", "decrypt", "inflate", "parse")
    each = [f"{k} {statistics.median(o['chunks'][k] for o in r['opens']):,.0f} ms" for k in steps]
    print("  ... chunk steps summed over the parts (they overlap): " + ", ".join(each))
    for label, xs in r["searches"].items():
        print(f"  search, {label + ':':28s} {med(xs)}; the scan alone {med(r['scans'][label])}")
    print(f"  open a patient (chunk decrypt + draw): {med(r['summary_ms'])}")
    print(f"  peak memory (PSS) of the browser processes: {mb(r['peak_browser_pss'])}; "
          f"JS heap used: {mb(r['js_heap'])}")  # fmt: skip


def _config(disk: Path) -> str:
    html = (disk / "viewer.html").read_text(encoding="utf-8")
    start = html.index('id="hakobune-config">') + len('id="hakobune-config">')
    return html[start : html.index("</script>", start)]


if __name__ == "__main__":
    main()

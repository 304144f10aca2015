"""Helpers shared by the benchmark scripts: a cached synthetic tree and a process-tree RSS sampler."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import psutil

from hakobune.synth import SSMIX2_DIR, advance, generate, read_meta
from hakobune.synth.generator import MODEL_VERSION

CACHE = Path(os.environ.get("HAKOBUNE_BENCH_CACHE", "/tmp/hakobune-bench"))


def synthetic_tree(min_files: int, seed: int = 7) -> Path:
    """A synthetic hospital with at least ``min_files`` files, generated once and cached."""
    home = CACHE / f"hospital-{min_files}-{seed}"
    if (home / "synth.json").exists() and read_meta(home).get("model_version") != MODEL_VERSION:
        shutil.rmtree(home)  # made by an older generator: it could not be advanced
    if not (home / "synth.json").exists():
        patients = max(100, min_files // 9)
        generate(home, patients, 30, seed=seed)
        while int(read_meta(home)["files"]) < min_files:
            advance(home, 5)
    return home / SSMIX2_DIR


class PeakRSS:
    """Samples the RSS of this process and its children every 20 ms; ``peak_total`` and ``peak_single``.
    ``include_self=False``: the children only (a command the benchmark runs, without the benchmark)."""

    def __init__(self, include_self: bool = True) -> None:
        self.include_self = include_self
        self.peak_total = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)] if self.include_self else me.children(True)
                rss = [p.memory_info().rss for p in procs]
            except psutil.Error:
                continue
            if not rss:
                time.sleep(0.02)
                continue
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_single = max(self.peak_single, max(rss))
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def remove(path: Path) -> None:
    """Remove a folder with what it holds, or a file; nothing when neither is there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"

"""Write released patients as FHIR: one IPS-shaped document Bundle per patient (``<patient-id>.json``)
and/or one NDJSON file for the whole release.

:class:`BundleExporter` takes patients one at a time, so it serves both the export from a restore database
and the streaming export during unlock (first bundle out while later patients are still being replayed).
Files are written under a temporary name and renamed; the folder is fsynced once at the end.

Building a bundle (decoding records, shaping resources, serializing, writing its file) is the costly part,
so with more than one worker it runs in a process pool, a bounded window of patients in flight, NDJSON
lines and sink calls in the order the patients came.  A patient can be handed over as the restore
database stores it (:meth:`BundleExporter.write_stored`), so the main process, which also replays the
chain during unlock, does no more than pass on a few compressed kilobytes.
"""

from __future__ import annotations

import gc
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import zstandard

from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from hakobune.parallel import cycle_collection_paused, resolve_workers
from restore.database import PatientRow, stored_row
from restore.fhir import ExportWindow
from restore.fhir.bundle import Json, LabEntry, readable_bundle, serialized_bundle

#: Patient IDs become file names: only these characters are allowed (SS-MIX2 IDs are alphanumeric).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


#: What reads each bundle where it is built: ``summarize(bundle, labs)``, with the bundle's dicts and, when
#: the compiled lab section made its results section, that section's Observations (else None; see
#: :func:`restore.fhir.bundle.readable_bundle`).
Summarize = Callable[[Json, list[LabEntry] | None], Any]


@dataclass(frozen=True)
class _Settings:
    hospital: str
    hospital_name: str
    as_of: date
    window: ExportWindow
    generated_at: datetime
    #: Where the per-patient files go (written by whoever builds the bundle).
    folder: Path | None = None
    #: Whether the serialized bundle is needed back (an NDJSON file or a sink): else only its size.
    keep: bool = True
    #: Made from each bundle where it is built and handed to the sink with it (the offline viewer's
    #: summary: no one parses the bundle again); a module-level function, since workers get it pickled.
    summarize: Summarize | None = None


#: A patient to export: a row, or a row as a restore database stores it (ID and compressed records), which
#: a worker process unpacks itself (less to pickle, less work in the main process).
Work = PatientRow | tuple[str, bytes]
#: A built bundle: its bytes (empty unless wanted back), size, number of entries and what
#: ``summarize`` made of it (None without one, or when it raised ValueError: the sink finds out itself).
Built = tuple[bytes, int, int, Any]

_dctx: zstandard.ZstdDecompressor | None = None  # one per worker process, made on first use


def _row(item: Work) -> PatientRow:
    global _dctx
    if isinstance(item, PatientRow):
        return item
    if _dctx is None:
        _dctx = zstandard.ZstdDecompressor()
    return stored_row(item[0], item[1], _dctx)


def _build(settings: _Settings, item: Work) -> Built:
    """One patient's bundle: written to its file when there is a folder, returned when wanted (runs in a
    worker process)."""
    row = _row(item)
    args: dict[str, Any] = {
        "hospital": settings.hospital,
        "hospital_name": settings.hospital_name,
        "as_of": settings.as_of,
        "window": settings.window,
        "generated_at": settings.generated_at,
    }
    summary = None
    if settings.summarize is None:
        data, entries = serialized_bundle(row.patient, row.encoded, **args)
    else:  # the bundle as dicts too (the same bytes), which the summary reads
        data, entries, bundle, labs = readable_bundle(row.patient, row.encoded, **args)
        try:
            summary = settings.summarize(bundle, labs)
        except ValueError:
            summary = None
    if settings.folder is not None:
        path = settings.folder / f"{row.patient_id}.json"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return (data if settings.keep else b""), len(data), entries, summary


def _build_many(settings: _Settings, items: list[Work]) -> list[Built]:
    """A batch of patients' bundles (one task for a worker process: a task per patient costs more in
    pickling and queueing than building a small bundle does).

    The cyclic garbage collector is off meanwhile: a bundle is a tree of a few thousand dicts that
    reference counting frees, and the collector would walk each of them two or three times while it is
    being built (about 4% of the instructions)."""
    with cycle_collection_paused():
        return [_build(settings, item) for item in items]


def _start_worker() -> None:
    """Initializer of a worker process: whatever it inherited from the parent (during an unlock, the
    replay's memory) goes to the collector's permanent generation, so no collection walks it, and its
    pages stay shared with the parent instead of being copied when a collection touches them."""
    gc.freeze()


def _ready() -> None:
    """A task that does nothing: starts a worker process before the first patient is ready."""


#: Patients per worker task.  The first tasks are small so that the first bundle is out at once; later
#: ones amortise the cost of a task.
_FIRST_BATCH, _MAX_BATCH = 1, 32


@dataclass
class ExportReport:
    bundles: int = 0
    bytes: int = 0
    resources: int = 0
    #: Seconds from the exporter's start to the first and to the last bundle written.
    first_bundle_seconds: float | None = None
    last_bundle_seconds: float | None = None
    bundles_per_second: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BundleExporter:
    """Write each patient handed to :meth:`write` as a bundle file in ``folder``, a line of ``ndjson``
    and/or a call of ``sink(patient_id, bundle_bytes, summary)`` (in patient order, e.g. an encrypted disk;
    ``summary`` is ``summarize(bundle, labs)``, made where the bundle is built, or None).  Use as a context
    manager; :attr:`report` has the figures."""

    def __init__(
        self,
        *,
        hospital: str,
        folder: Path | None = None,
        ndjson: Path | None = None,
        hospital_name: str = "",
        as_of: date | None = None,
        window: ExportWindow | None = None,
        started: float | None = None,
        workers: int = 0,
        sink: Callable[[str, bytes, Any], None] | None = None,
        generated_at: datetime | None = None,
        summarize: Summarize | None = None,
    ) -> None:
        if folder is None and ndjson is None and sink is None:
            raise ValueError("nothing to write: give a folder, an NDJSON file or a sink")
        generated_at = generated_at or datetime.now(UTC)  # given: the same bytes as another export
        self.settings = _Settings(
            hospital,
            hospital_name,
            as_of or generated_at.date(),
            window or ExportWindow(),
            generated_at,
            folder,
            keep=ndjson is not None or sink is not None,
            summarize=summarize if sink is not None else None,
        )
        self.folder = folder
        self.sink = sink
        self.report = ExportReport()
        self._t0 = started if started is not None else time.perf_counter()
        self._ndjson_path = ndjson
        self._ndjson: BinaryIO | None = None
        self._workers = resolve_workers(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._window: deque[tuple[list[str], Future[list[Built]]]] = deque()
        self._batch: list[Work] = []
        self._batch_ids: list[str] = []
        self._batch_size = _FIRST_BATCH
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if ndjson is not None:
                ndjson.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._ndjson = open(ndjson.with_name(ndjson.name + ".tmp"), "wb")  # noqa: SIM115
        except OSError as e:
            raise InputError(
                str(e.filename or folder or ndjson), f"cannot write there ({e.strerror})"
            ) from None
        if self._workers > 1:
            # start the workers now, not when the first patient is ready (a fork is cheaper before the
            # replay has grown this process, and the first bundle does not wait for it)
            self._pool = ProcessPoolExecutor(max_workers=self._workers, initializer=_start_worker)
            for _ in range(self._workers):
                self._pool.submit(_ready)

    def write(self, row: PatientRow) -> None:
        """Export one patient (now, or soon when workers build the bundles)."""
        self._add(row.patient_id, row)

    def write_stored(self, patient_id: str, records: bytes) -> None:
        """Export one patient as a restore database stores it (:meth:`RestoreDB.stored`): the records are
        unpacked where the bundle is built."""
        self._add(patient_id, (patient_id, records))

    def _add(self, patient_id: str, item: Work) -> None:
        if not _SAFE_ID.fullmatch(patient_id):
            self.report.skipped.append("a patient whose ID cannot be a file name")
            return
        if self._workers <= 1:
            self._emit(patient_id, *_build(self.settings, item))
            return
        self._batch.append(item)
        self._batch_ids.append(patient_id)
        if len(self._batch) >= self._batch_size:
            self._submit()
        while self._window and self._window[0][1].done():  # out as soon as built: the first bundle too
            self._drain_one()

    def _submit(self) -> None:
        if not self._batch:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers, initializer=_start_worker)
        batch, ids, self._batch, self._batch_ids = self._batch, self._batch_ids, [], []
        self._batch_size = min(2 * self._batch_size, _MAX_BATCH)
        self._window.append((ids, self._pool.submit(_build_many, self.settings, batch)))
        while len(self._window) > 2 * self._workers:
            self._drain_one()

    def _drain_one(self) -> None:
        patient_ids, future = self._window.popleft()
        for patient_id, built in zip(patient_ids, future.result(), strict=True):
            self._emit(patient_id, *built)

    def _emit(self, patient_id: str, data: bytes, size: int, entries: int, summary: Any) -> None:
        if self._ndjson is not None:  # (orjson writes no newline: the check is all a bundle costs here)
            self._ndjson.write(data.replace(b"\n", b"") if b"\n" in data else data)
            self._ndjson.write(b"\n")
        if self.sink is not None:
            self.sink(patient_id, data, summary)
        self.report.bundles += 1
        self.report.bytes += size
        self.report.resources += entries
        now = time.perf_counter() - self._t0
        if self.report.first_bundle_seconds is None:
            self.report.first_bundle_seconds = now
        self.report.last_bundle_seconds = now

    def close(self) -> None:
        """Finish every bundle in flight, then make the output durable."""
        try:
            self._submit()
            while self._window:
                self._drain_one()
        finally:
            self._shutdown()
        if self._ndjson is not None and self._ndjson_path is not None:
            self._ndjson.flush()
            os.fsync(self._ndjson.fileno())
            self._ndjson.close()
            os.replace(self._ndjson.name, self._ndjson_path)
            self._ndjson = None
        if self.folder is not None:
            fsync_dir(self.folder)
        r = self.report
        if r.bundles and r.last_bundle_seconds and r.first_bundle_seconds is not None:
            span = r.last_bundle_seconds - r.first_bundle_seconds
            r.bundles_per_second = round(r.bundles / span, 1) if span > 0 else float(r.bundles)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._window.clear()
        self._batch, self._batch_ids = [], []

    def abort(self) -> None:
        self._shutdown()
        if self._ndjson is not None:
            self._ndjson.close()
            Path(self._ndjson.name).unlink(missing_ok=True)
            self._ndjson = None

    def __enter__(self) -> BundleExporter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

"""Write released patients as FHIR: one IPS-shaped document Bundle per patient (``<patient-id>.json``)
and/or one NDJSON file for the whole release.

:class:`BundleExporter` takes patients one at a time, so it serves both the export from a restore database
and the streaming export during unlock (first bundle out while later patients are still being replayed).
Files are written under a temporary name and renamed; the folder is fsynced once at the end.

Building a bundle (decoding records, shaping resources, serializing) is the costly part, so with more
than one worker it runs in a process pool, a bounded window of patients in flight, results written in
the order the patients came.
"""

from __future__ import annotations

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

from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from hakobune.parallel import resolve_workers
from hakobune.records import decode
from restore.database import PatientRow
from restore.fhir import ExportWindow, dumps, patient_bundle
from restore.fhir.bundle import in_window

#: Patient IDs become file names: only these characters are allowed (SS-MIX2 IDs are alphanumeric).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class _Settings:
    hospital: str
    hospital_name: str
    as_of: date
    window: ExportWindow
    generated_at: datetime


def _build(settings: _Settings, row: PatientRow) -> tuple[bytes, int]:
    """One patient's bundle, serialized, and its number of entries (runs in a worker process)."""
    needed = in_window(row.encoded, as_of=settings.as_of, window=settings.window)
    bundle = patient_bundle(
        row.patient,
        [decode(e) for e in needed],
        hospital=settings.hospital,
        hospital_name=settings.hospital_name,
        as_of=settings.as_of,
        window=settings.window,
        generated_at=settings.generated_at,
    )
    return dumps(bundle), len(bundle.get("entry", ()))


def _build_many(settings: _Settings, rows: list[PatientRow]) -> list[tuple[bytes, int]]:
    """A batch of patients' bundles (one task for a worker process: a task per patient costs more in
    pickling and queueing than building a small bundle does)."""
    return [_build(settings, row) for row in rows]


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
    and/or a call of ``sink(patient_id, bundle_bytes)`` (in patient order, e.g. an encrypted disk).  Use as
    a context manager; :attr:`report` has the figures."""

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
        sink: Callable[[str, bytes], None] | None = None,
        generated_at: datetime | None = None,
    ) -> None:
        if folder is None and ndjson is None and sink is None:
            raise ValueError("nothing to write: give a folder, an NDJSON file or a sink")
        generated_at = generated_at or datetime.now(UTC)  # given: the same bytes as another export
        self.settings = _Settings(
            hospital, hospital_name, as_of or generated_at.date(), window or ExportWindow(), generated_at
        )
        self.folder = folder
        self.sink = sink
        self.report = ExportReport()
        self._t0 = started if started is not None else time.perf_counter()
        self._ndjson_path = ndjson
        self._ndjson: BinaryIO | None = None
        self._workers = resolve_workers(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._window: deque[tuple[list[str], Future[list[tuple[bytes, int]]]]] = deque()
        self._batch: list[PatientRow] = []
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

    def write(self, row: PatientRow) -> None:
        """Export one patient (now, or soon when workers build the bundles)."""
        if not _SAFE_ID.fullmatch(row.patient_id):
            self.report.skipped.append("a patient whose ID cannot be a file name")
            return
        if self._workers <= 1:
            self._emit(row.patient_id, *_build(self.settings, row))
            return
        self._batch.append(row)
        if len(self._batch) >= self._batch_size:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers)
        batch, self._batch = self._batch, []
        self._batch_size = min(2 * self._batch_size, _MAX_BATCH)
        future = self._pool.submit(_build_many, self.settings, batch)
        self._window.append(([row.patient_id for row in batch], future))
        while len(self._window) > 2 * self._workers:
            self._drain_one()

    def _drain_one(self) -> None:
        patient_ids, future = self._window.popleft()
        for patient_id, built in zip(patient_ids, future.result(), strict=True):
            self._emit(patient_id, *built)

    def _emit(self, patient_id: str, data: bytes, entries: int) -> None:
        if self.folder is not None:
            path = self.folder / f"{patient_id}.json"
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        if self._ndjson is not None:
            self._ndjson.write(data.replace(b"\n", b"") + b"\n")
        if self.sink is not None:
            self.sink(patient_id, data)
        self.report.bundles += 1
        self.report.bytes += len(data)
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
        self._batch = []

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

"""The restore database: a released hospital's patients, rebuilt from its changesets, ready for search and
export at the disaster-base hospital.

One SQLite file (``restore.db``, mode 0600) per restore folder:

``restore_meta``     what was restored: hospital, order, chain head and sequence, newest data time …
``restore_patient``  one row per patient: ID, demographics for display, and all current records as
                     zstd-compressed canonical encodings (:func:`hakobune.records.encode`, one per line)
``search_*``         the patient index (:mod:`restore.search`)

It holds released clinical data in the clear, as the FHIR files written from it do: it lives only at the
restore site, readable by its owner alone, and goes with the release when the order ends.
A rebuild writes a new file beside the old one and renames it into place, so a crash or a failed
verification never leaves a half-restored database behind.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from hakobune.records import Patient, Record, RecordKey, decode
from hakobune.sqlite import create_private_file

DB_FILE = "restore.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS restore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS restore_patient (
    patient_id TEXT PRIMARY KEY,
    family_kanji TEXT NOT NULL, given_kanji TEXT NOT NULL,
    family_kana TEXT NOT NULL, given_kana TEXT NOT NULL,
    birth_date TEXT NOT NULL, sex TEXT NOT NULL,
    address TEXT NOT NULL, postal_code TEXT NOT NULL,
    record_count INTEGER NOT NULL,
    records BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class PatientRow:
    """A restored patient: demographics, and every current record as its canonical encoding (decoded on
    demand: an export worker decodes in its own process)."""

    patient_id: str
    patient: Patient
    encoded: tuple[bytes, ...]

    @property
    def records(self) -> list[Record]:
        return [decode(e) for e in self.encoded]


def demographics(patient_id: str, records: Iterable[Record]) -> Patient:
    """The patient's demographics record, or an empty one keyed by the ID when the hospital never sent one
    (SS-MIX2 allows a patient folder without ADT-00)."""
    for r in records:
        if isinstance(r, Patient):
            return r
    return Patient(RecordKey(patient_id, "-", "ADT-00", "", ""))


_PATIENT_ENCODING = b'{"kind":"patient"'


def patient_row(patient_id: str, encoded: Iterable[bytes]) -> PatientRow:
    """A row from encodings; only the demographics record is decoded here."""
    lines = tuple(encoded)
    adt = [decode(e) for e in lines if e.startswith(_PATIENT_ENCODING)]
    return PatientRow(patient_id, demographics(patient_id, adt), lines)


def stored_row(patient_id: str, blob: bytes, dctx: zstandard.ZstdDecompressor) -> PatientRow:
    """A row from its stored form (the ``records`` column): the same row as :func:`patient_row` of its
    encodings, found without looking at each line (a quote that starts no line is escaped)."""
    data = dctx.decompress(blob)
    lines = tuple(filter(None, data.split(b"\n")))
    at = data.find(_PATIENT_ENCODING)
    if at < 0:
        return PatientRow(patient_id, demographics(patient_id, ()), lines)
    end = data.find(b"\n", at)
    return PatientRow(
        patient_id, demographics(patient_id, [decode(data[at : end if end >= 0 else None])]), lines
    )


class RestoreDB:
    """A restore database.  :meth:`create` makes a fresh one at a temporary name; :meth:`publish` puts it
    in place; :meth:`open` opens the published one for reading (search, export)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, final: Path) -> None:
        self._conn = conn
        self.path = path
        self._final = final
        self._cctx = zstandard.ZstdCompressor(level=3)
        self._dctx = zstandard.ZstdDecompressor()

    @classmethod
    def create(cls, folder: Path) -> RestoreDB:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / DB_FILE
        tmp = folder / (DB_FILE + ".new")
        for stale in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            stale.unlink(missing_ok=True)
        create_private_file(tmp)
        conn = sqlite3.connect(tmp, isolation_level=None)
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        return cls(conn, tmp, final)

    @classmethod
    def open(cls, folder: Path) -> RestoreDB:
        path = folder / DB_FILE
        if not path.is_file():
            raise InputError(str(path), "no restore database here: run 'hakobune restore unlock' first")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            version = conn.execute("SELECT value FROM restore_meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise InputError(str(path), f"not a restore database ({e})") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise InputError(
                str(path), f"restore database schema {version and version[0]} is not {SCHEMA_VERSION}"
            )
        return cls(conn, path, path)

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    # --- writing ----------------------------------------------------------------------------------------

    def add(self, patient: Patient, encoded: Iterable[bytes]) -> bytes:
        """Store a patient; returns the records as stored (for :func:`stored_row`)."""
        lines = sorted(encoded)
        blob = self._cctx.compress(b"\n".join(lines))
        self._conn.execute(
            "INSERT OR REPLACE INTO restore_patient VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                patient.key.patient_id,
                patient.family_kanji,
                patient.given_kanji,
                patient.family_kana,
                patient.given_kana,
                patient.birth_date,
                patient.sex,
                patient.address,
                patient.postal_code,
                len(lines),
                blob,
            ),
        )
        return blob

    def set_meta(self, values: dict[str, Any]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO restore_meta VALUES (?, ?)",
            [(k, orjson.dumps(v).decode()) for k, v in values.items()],
        )

    def commit(self) -> None:
        """Commit what was added (the file stays at its temporary name until :meth:`publish`)."""
        self.set_meta({"schema": SCHEMA_VERSION})
        self._conn.execute("COMMIT")

    def publish(self) -> None:
        """Make the committed file durable and rename it into place."""
        self._conn.close()
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.path, self._final)
        fsync_dir(self._final.parent)
        self.path = self._final

    def discard(self) -> None:
        self._conn.close()
        if self.path != self._final:
            self.path.unlink(missing_ok=True)

    # --- reading ----------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {k: orjson.loads(v) for k, v in self._conn.execute("SELECT key, value FROM restore_meta")}

    def demographics(self, batch: int = 5000) -> Iterator[tuple[str, str, str, str, str, str, str, str, str]]:
        """(ID, family/given kanji, family/given kana, birth date, sex, address, postal code) of every
        patient in ID order, without decoding records: what the patient index is built from.  Read in
        batches so that no read stays open while another connection writes the same file."""
        last = ""
        while True:
            rows = self._conn.execute(
                "SELECT patient_id, family_kanji, given_kanji, family_kana, given_kana, birth_date, sex,"
                " address, postal_code FROM restore_patient WHERE patient_id > ? ORDER BY patient_id LIMIT ?",
                (last, batch),
            ).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM restore_patient").fetchone()[0])

    def _row(self, patient_id: str, blob: bytes) -> PatientRow:
        return stored_row(patient_id, blob, self._dctx)

    def get(self, patient_id: str) -> PatientRow | None:
        found = self._conn.execute(
            "SELECT patient_id, records FROM restore_patient WHERE patient_id = ?", (patient_id,)
        ).fetchone()
        return None if found is None else self._row(found[0], found[1])

    def patients(self, ids: Iterable[str] | None = None) -> Iterator[PatientRow]:
        """Every patient (in ID order), or those of ``ids`` that exist (in the order given)."""
        for pid, blob in self.stored(ids):
            yield self._row(pid, blob)

    def stored(self, ids: Iterable[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """:meth:`patients` as stored: (ID, compressed records), for :func:`stored_row` elsewhere (an
        export worker)."""
        if ids is None:
            yield from self._conn.execute(
                "SELECT patient_id, records FROM restore_patient ORDER BY patient_id"
            )
            return
        for pid in ids:
            found = self._conn.execute(
                "SELECT patient_id, records FROM restore_patient WHERE patient_id = ?", (pid,)
            ).fetchone()
            if found is not None:
                yield found[0], found[1]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RestoreDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Research ingest: each hospital's research changesets into the de-identified database.

For every hospital partition the chain is planned from the newest baseline (:func:`restore.chain.plan_chain`
on the ``research`` stream), and every changeset not applied yet is, in sequence order:

1. verified and opened with :func:`hakobune.sealed.open_changeset`: signature by the hospital's registered
   agent key, the hospital named inside, key table and payload hashes, then the epoch key opened with the
   analysis center's private key — a tampered, forged or foreign file, or one sealed to another key, is
   refused here with one line naming it, before anything is applied;
2. applied in **one DuckDB transaction** (all or nothing): a baseline first removes every row of that
   hospital; ``put`` replaces the rows of its ``rkey``, ``del`` removes them; tombstones remove every row
   of the pseudonym the token stands for (``tokens``); then one ``ingested`` row.

Already applied sequences are skipped (idempotent); a missing sequence or a broken link stops that
hospital's run there and is reported (a gap); a refused changeset stops its hospital too (what follows it
cannot be applied) and the others go on.

Bulk loading: decrypted frames are appended as they come, unparsed, to a temporary NDJSON file beside the
database, and DuckDB's JSON reader loads it into a temporary table in one statement per 256 MB; each table
then takes its rows with one ``INSERT … SELECT``.  Python touches each frame once (a few byte counts check
that every operation of a frame belongs to the frame's patient), never each record.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import duckdb
import orjson

from center.catalog import Catalog
from center.config import load_center_config
from hakobune.errors import InputError
from hakobune.keys import RecipientPrivateKey, VerifyKey, load_verify_key
from hakobune.naming import Stream, check_hospital_id
from hakobune.sealed import SealedFile, open_changeset
from research.database import ResearchDB, first_line
from restore.chain import plan_chain

STREAM: Stream = "research"
#: Bytes of operations loaded per statement (memory is bounded by this and by what one changeset adds).
FLUSH_BYTES = 64 << 20

_KEY = 'STRUCT(pid VARCHAR, "date" VARCHAR, "type" VARCHAR, "order" VARCHAR, item VARCHAR)'
_COMPONENT = "STRUCT(role VARCHAR, code VARCHAR, system VARCHAR, amount DOUBLE, unit VARCHAR)"
#: Every field of every research record kind (docs/research-stream.md); a kind's absent fields read NULL.
_RECORD = (
    f"STRUCT(key {_KEY}, link VARCHAR, birth_ym VARCHAR, sex VARCHAR, "
    '"date" DATE, age SMALLINT, icd10 VARCHAR, medis VARCHAR, onset DATE, resolved DATE, outcome VARCHAR, '
    "main BOOLEAN, category VARCHAR, code VARCHAR, system VARCHAR, event VARCHAR, amount DOUBLE, "
    f"unit VARCHAR, days INTEGER, components {_COMPONENT}[], value DOUBLE, flag VARCHAR)"
)
_OPS_COLUMNS = (
    "{'put': 'STRUCT(kind VARCHAR, v INTEGER, r " + _RECORD.replace("'", "''") + ")', 'del': 'VARCHAR[]'}"
)
_KINDS = ("patient", "condition", "allergy", "prescription", "injection", "lab")
_RKEY = (
    'concat_ws(\'/\', put.r.key.pid, put.r.key."date", put.r.key."type", put.r.key."order", put.r.key.item)'
)
_NO_COMPONENT = (
    "[{'role': NULL::VARCHAR, 'code': NULL::VARCHAR, 'system': NULL::VARCHAR, "
    "'amount': NULL::DOUBLE, 'unit': NULL::VARCHAR}]"
)
#: Table <- the SELECT list over ``_ops`` rows of one kind (``rkey`` and ``pid`` come first).
_INSERTS: dict[str, tuple[str, str]] = {
    "patient": (
        "patient_records",
        f"{_RKEY}, put.r.key.pid, put.r.key.\"date\", $source, put.r.link, coalesce(put.r.sex, 'U'), "
        "put.r.birth_ym",
    ),
    "condition": (
        "conditions",
        f'{_RKEY}, put.r.key.pid, put.r."date", put.r.icd10, put.r.medis, put.r.onset, put.r.resolved, '
        "put.r.outcome, put.r.main, put.r.age",
    ),
    "allergy": (
        "allergies",
        f'{_RKEY}, put.r.key.pid, put.r."date", put.r.category, put.r.code, put.r.system, put.r.age',
    ),
    "prescription": (
        "prescriptions",
        f'{_RKEY}, put.r.key.pid, put.r."date", put.r.event, put.r.code, put.r.system, put.r.amount, '
        "put.r.unit, put.r.days, put.r.age",
    ),
    "lab": (
        "labs",
        f"{_RKEY}, put.r.key.pid, put.r.\"date\", coalesce(put.r.code, ''), put.r.value, put.r.unit, "
        "put.r.flag, put.r.age",
    ),
}
#: Tables whose rows are keyed by ``rkey`` (what ``put`` and ``del`` address).
_RKEY_TABLES = ("patient_records", "conditions", "allergies", "prescriptions", "injections", "labs")
_PID_TABLES = ("conditions", "allergies", "prescriptions", "injections", "labs")


@dataclass(frozen=True)
class Source:
    """One hospital's research changesets and the key that must have signed them (None: no key known,
    ``key_error`` says why)."""

    hospital: str
    folder: Path
    key: VerifyKey | None
    key_error: str = ""


@dataclass
class HospitalReport:
    hospital: str
    applied: list[int] = field(default_factory=list)
    already: int = 0
    puts: int = 0
    dels: int = 0
    tombstones: int = 0
    bytes: int = 0
    #: Why the run stopped before the newest changeset (a missing sequence or a broken link).
    gap: str | None = None
    #: ``(file, reason)`` of a changeset refused (nothing of it applied).
    refused: tuple[str, str] | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class IngestReport:
    hospitals: list[HospitalReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def refused(self) -> list[tuple[str, str]]:
        return [h.refused for h in self.hospitals if h.refused is not None]

    @property
    def records(self) -> int:
        return sum(h.puts for h in self.hospitals)

    @property
    def bytes(self) -> int:
        return sum(h.bytes for h in self.hospitals)

    def to_json(self) -> dict[str, object]:
        return {
            "hospitals": [h.__dict__ for h in self.hospitals],
            "changesets": sum(len(h.applied) for h in self.hospitals),
            "records": self.records,
            "bytes": self.bytes,
            "refused": [{"file": f, "reason": r} for f, r in self.refused],
            "gaps": [{"hospital": h.hospital, "reason": h.gap} for h in self.hospitals if h.gap],
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records / self.seconds) if self.seconds else None,
        }


# --- where the changesets are -------------------------------------------------------------------------------


def sources_from_center(home: Path) -> list[Source]:
    """Every hospital of a center (or its mirror) with a research partition, with its registered agent key
    from the center's catalog."""
    cfg = load_center_config(home)
    with Catalog.open(cfg.catalog_url) as catalog:
        hospitals = catalog.hospitals()
    out = []
    for h in sorted(hospitals, key=lambda h: h.id):
        folder = cfg.layout.store(h.id, STREAM)
        if folder.is_dir():
            out.append(Source(h.id, folder, VerifyKey(h.agent_key)))
    return out


def sources_from_store(store: Path, agent_keys: Path) -> list[Source]:
    """Every ``STORE/<hospital>/research`` folder, each with the agent key ``AGENT_KEYS/<hospital>.pub``."""
    if not store.is_dir():
        raise InputError(str(store), "not a directory (expected a store of <hospital>/research folders)")
    out = []
    for folder in sorted(store.iterdir()):
        research = folder / STREAM
        if not research.is_dir():
            continue
        hospital = check_hospital_id(folder.name)
        key_file = agent_keys / f"{hospital}.pub"
        try:
            out.append(Source(hospital, research, load_verify_key(key_file)))
        except InputError as e:
            out.append(Source(hospital, research, None, str(e)))
    return out


# --- ingest ----------------------------------------------------------------------------------------------


def ingest(
    db: ResearchDB,
    sources: list[Source],
    private: RecipientPrivateKey,
    *,
    now: datetime | None = None,
    on_changeset: Callable[[SealedFile], None] | None = None,
) -> IngestReport:
    """Apply every new research changeset of every source to ``db``; ``on_changeset`` hears of each one
    applied."""
    started = time.perf_counter()
    report = IngestReport()
    for source in sources:
        report.hospitals.append(_ingest_hospital(db, source, private, now, on_changeset))
    report.seconds = time.perf_counter() - started
    return report


def _ingest_hospital(
    db: ResearchDB,
    source: Source,
    private: RecipientPrivateKey,
    now: datetime | None,
    on_changeset: Callable[[SealedFile], None] | None,
) -> HospitalReport:
    rep = HospitalReport(source.hospital)
    try:
        plan = plan_chain(source.folder, source.hospital, STREAM)
    except InputError as e:
        rep.gap = e.reason
        return rep
    rep.unreadable = plan.unreadable
    if plan.stopped is not None:
        rep.gap = f"stopped after sequence {plan.stopped[0]}: {plan.stopped[1]}"
    files = plan.files
    last = db.last_ingested(source.hospital)
    if last is not None and last.sequence >= files[0].header.sequence:
        rep.already = sum(1 for f in files if f.header.sequence <= last.sequence)
        files = [f for f in files if f.header.sequence > last.sequence]
        if files and files[0].header.prev != last.hash:
            first = files[0]
            rep.refused = (
                str(first.path),
                f"does not chain to sequence {last.sequence} already in the research database "
                "(the hospital's chain was rebuilt or forged)",
            )
            return rep
    if source.key is None:
        if files:
            rep.refused = (str(files[0].path), source.key_error or "no agent key for this hospital")
        return rep
    for sealed in files:
        try:
            puts, dels, tombstones = apply_changeset(db, sealed, source.key, private, now=now)
        except InputError as e:
            rep.refused = (e.path, e.reason)
            return rep
        rep.applied.append(sealed.header.sequence)
        rep.puts += puts
        rep.dels += dels
        rep.tombstones += tombstones
        rep.bytes += sealed.size
        if on_changeset is not None:
            on_changeset(sealed)
    return rep


def apply_changeset(
    db: ResearchDB,
    sealed: SealedFile,
    signer: VerifyKey,
    private: RecipientPrivateKey,
    *,
    now: datetime | None = None,
) -> tuple[int, int, int]:
    """Verify, decrypt and apply one research changeset in one transaction.  Returns (puts, dels,
    tombstones).  :class:`InputError` naming the file if it is refused; nothing of it is then applied."""
    path = sealed.path
    opened, frames, _ = open_changeset(path, private, signer, hospital=sealed.header.hospital)
    header = opened.header
    if header.stream != STREAM:
        raise InputError(str(path), f"a {header.stream} changeset, not a research one")
    source = header.hospital
    conn = db.conn
    scratch = Path(tempfile.mkdtemp(prefix=".ingest-", dir=db.path.parent))
    conn.begin()
    try:
        if header.kind == "baseline":
            _clear_source(conn, source)
        loader = _Loader(conn, scratch, source, replace=header.kind != "baseline", where=str(path))
        for frame in frames:
            loader.add(frame.token.hex(), frame.ops)
        loader.flush()
        pids = loader.pids | _tombstone(conn, source, list(header.tombstones))
        _rebuild_patients(conn, source, None if header.kind == "baseline" else pids)
        conn.execute(
            "INSERT INTO ingested VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                source,
                header.sequence,
                header.hash,
                header.kind,
                (now or datetime.now(UTC)).replace(tzinfo=None),
                loader.puts,
                loader.dels,
                len(header.tombstones),
            ],
        )
        conn.commit()
    except duckdb.Error as e:
        conn.rollback()
        raise InputError(str(path), f"cannot be applied ({first_line(e)})") from None
    except BaseException:
        conn.rollback()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return loader.puts, loader.dels, len(header.tombstones)


class _Loader:
    """Collects a changeset's operations in a scratch NDJSON file and loads them in bulk."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, scratch: Path, source: str, *, replace: bool, where: str
    ) -> None:
        self.conn = conn
        self.source = source
        self.replace = replace
        self.where = where
        self.path = scratch / "ops.ndjson"
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in flush
        self._size = 0
        self._tokens: dict[str, str] = {}
        self.pids: set[str] = set()
        self.puts = 0
        self.dels = 0

    def add(self, token: str, ops: list[bytes]) -> None:
        """One frame: ``ops`` are one patient's operation lines."""
        if not ops:
            return
        data = b"".join(ops)
        pid = _first_pid(ops[0], self.where)
        marker = pid.encode()
        puts, dels = data.count(b'{"put":{'), data.count(b'{"del":[')
        if puts + dels != len(ops):
            raise InputError(self.where, "a frame holds an operation that is neither put nor del")
        if (
            data.count(b'"key":{"pid":"' + marker + b'"') != puts
            or data.count(b'{"del":["' + marker + b'"') != dels
        ):
            raise InputError(self.where, "a frame mixes operations of different patients")
        known = self._tokens.setdefault(token, pid)
        if known != pid:
            raise InputError(self.where, "one patient token stands for two pseudonyms")
        self.pids.add(pid)
        self.puts += puts
        self.dels += dels
        if not data.endswith(b"\n"):
            data += b"\n"
        self._file.write(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        self._file.close()
        if self._size:
            self._load()
        self._file = open(self.path, "wb")  # noqa: SIM115
        self._size = 0

    def _load(self) -> None:
        c = self.conn
        c.execute(
            f"CREATE OR REPLACE TEMP TABLE _ops AS SELECT * FROM read_json(?, format = 'newline_delimited', "
            f"columns = {_OPS_COLUMNS}, maximum_object_size = {64 << 20})",
            [str(self.path)],
        )
        kinds = ", ".join(f"'{k}'" for k in _KINDS)
        bad = c.execute(
            "SELECT count(*) FROM _ops WHERE NOT coalesce("
            f"(del IS NULL AND put.v = 1 AND put.kind IN ({kinds}) AND put.r.key.pid IS NOT NULL) "
            "OR (put IS NULL AND len(del) = 5), false)"
        ).fetchone()
        if bad and bad[0]:
            raise InputError(self.where, f"{bad[0]} operations are not research records of a known kind")
        if self.replace:
            c.execute(
                "CREATE OR REPLACE TEMP TABLE _touched AS "
                f"SELECT {_RKEY} AS rkey FROM _ops WHERE put IS NOT NULL "
                "UNION ALL SELECT array_to_string(del, '/') FROM _ops WHERE del IS NOT NULL"
            )
            for table in _RKEY_TABLES:
                c.execute(f"DELETE FROM {table} WHERE rkey IN (SELECT rkey FROM _touched)")
        for kind, (table, columns) in _INSERTS.items():
            c.execute(
                f"INSERT INTO {table} SELECT {columns} FROM _ops WHERE put.kind = $kind",
                {"kind": kind, "source": self.source} if "$source" in columns else {"kind": kind},
            )
        c.execute(
            "INSERT INTO injections SELECT rkey, pid, d, event, c.role, c.code, c.system, c.amount, c.unit, "
            "age "
            f'FROM (SELECT {_RKEY} AS rkey, put.r.key.pid AS pid, put.r."date" AS d, put.r.event AS event, '
            f"put.r.age AS age, unnest(CASE WHEN len(put.r.components) > 0 THEN put.r.components "
            f"ELSE {_NO_COMPONENT} END) AS c FROM _ops WHERE put.kind = 'injection')"
        )
        tokens, pids = list(self._tokens), list(self._tokens.values())
        c.execute(
            "INSERT INTO tokens SELECT $source, unnest($tokens), unnest($pids) ON CONFLICT DO NOTHING",
            {"source": self.source, "tokens": tokens, "pids": pids},
        )
        clash = c.execute(
            "SELECT count(*) FROM tokens t JOIN (SELECT unnest($tokens) AS token, unnest($pids) AS pid) b "
            "ON t.token = b.token WHERE t.source = $source AND t.pid <> b.pid",
            {"source": self.source, "tokens": tokens, "pids": pids},
        ).fetchone()
        if clash and clash[0]:
            raise InputError(self.where, "a patient token stands for another pseudonym than before")
        self._tokens = {}
        c.execute("DROP TABLE IF EXISTS _ops")
        c.execute("DROP TABLE IF EXISTS _touched")


def _first_pid(line: bytes, where: str) -> str:
    try:
        op = orjson.loads(line)
        pid = op["put"]["r"]["key"]["pid"] if "put" in op else op["del"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise InputError(where, "a frame does not start with a research operation") from None
    if not isinstance(pid, str) or not pid or not pid.isalnum():
        raise InputError(where, "a research operation without a pseudonym")
    return pid


_SOURCE_PIDS = (
    "SELECT pid FROM tokens WHERE source = $source "
    "UNION SELECT pid FROM patient_records WHERE source = $source"
)


def _clear_source(conn: duckdb.DuckDBPyConnection, source: str) -> None:
    """A baseline replaces the hospital's rows: remove them all."""
    for table in _PID_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE pid IN ({_SOURCE_PIDS})", {"source": source})
    for table in ("patient_records", "patients", "tokens"):
        conn.execute(f"DELETE FROM {table} WHERE source = $source", {"source": source})


def _tombstone(conn: duckdb.DuckDBPyConnection, source: str, tokens: list[str]) -> set[str]:
    """Remove every row of the patients these tokens stand for; returns their pseudonyms."""
    if not tokens:
        return set()
    rows = conn.execute(
        "SELECT pid FROM tokens WHERE source = $source AND token IN (SELECT unnest($tokens))",
        {"source": source, "tokens": tokens},
    ).fetchall()
    pids = [str(r[0]) for r in rows]
    if pids:
        for table in (*_PID_TABLES, "patient_records", "patients"):
            conn.execute(f"DELETE FROM {table} WHERE pid IN (SELECT unnest($pids))", {"pids": pids})
    conn.execute(
        "DELETE FROM tokens WHERE source = $source AND token IN (SELECT unnest($tokens))",
        {"source": source, "tokens": tokens},
    )
    return set(pids)


def _rebuild_patients(conn: duckdb.DuckDBPyConnection, source: str, pids: set[str] | None) -> None:
    """``patients`` rows of ``pids`` (None: the whole source) from their patient records: the
    date-independent one first, else the newest care date."""
    params: dict[str, object]
    if pids is None:
        where, params = "source = $source", {"source": source}
    elif not pids:
        return
    else:
        where, params = "pid IN (SELECT unnest($pids))", {"pids": list(pids)}
    conn.execute(f"DELETE FROM patients WHERE {where}", params)
    conn.execute(
        "INSERT INTO patients SELECT pid, link, source, sex, birth_ym FROM patient_records "
        f"WHERE {where} QUALIFY row_number() OVER "
        "(PARTITION BY pid ORDER BY care_date = '-' DESC, care_date DESC, rkey DESC) = 1",
        params,
    )

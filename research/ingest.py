"""Research ingest: each hospital's research changesets into the de-identified database.

For every hospital partition the chain is planned from the newest baseline (:func:`restore.chain.plan_chain`
on the ``research`` stream), and every changeset not applied yet is, in sequence order:

1. verified and opened (:func:`hakobune.sealed.open_changeset`): signature by the hospital's registered
   agent key, the hospital named inside, key table and payload hashes, then the epoch key opened with the
   analysis center's private key — a tampered, forged or foreign file, or one sealed to another key, is
   refused here with one line naming it, before anything is applied;
2. staged in bounded batches (:class:`_Stage`): decrypted frames are appended as they come, unparsed, to
   a scratch NDJSON file beside the database; every :data:`FLUSH_BYTES` DuckDB's JSON reader parses the
   batch, checks it, and writes each table's rows, the batch's tokens and (for a delta) the ``rkey`` of
   every put and del as Parquet files in the scratch folder.  The database is not touched; a bad batch
   refuses the changeset;
3. applied in **one DuckDB transaction** (all or nothing, :func:`_apply`): a baseline first removes every
   row of that hospital; ``put`` replaces the rows of its ``rkey``, ``del`` removes them; tombstones remove
   every row of the pseudonym the token stands for (``tokens``); then one ``ingested`` row.  Each table
   takes its rows with one ``INSERT … SELECT`` streaming from the staged files.

Memory does not grow with the hospital's size: Python holds one frame and one batch's tokens, DuckDB one
batch and, while applying, no more than its memory limit (large inserts go to the database file as they
are written; the rest spills to ``<database>.tmp``).  A crash leaves the database as it was and a scratch
folder ``.<database>.ingest-*``, which the next ingest removes.

Already applied sequences are skipped (idempotent); a missing sequence or a broken link stops that
hospital's run there and is reported (a gap); a refused changeset stops its hospital too (what follows it
cannot be applied) and the others go on.  Python touches each frame once (a few byte counts check that
every operation of a frame belongs to the frame's patient), never each record.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
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
from hakobune.sealed import Header, SealedFile, open_changeset
from research.database import ResearchDB, first_line
from restore.chain import plan_chain

STREAM: Stream = "research"
#: Bytes of operation lines staged per batch: what DuckDB parses at once (memory is bounded by this and by
#: DuckDB's memory limit, never by the size of the changeset).
FLUSH_BYTES = 32 << 20
#: The longest operation line accepted (a research record is a few hundred bytes).
MAX_OPERATION_BYTES = 1 << 20
_TWO_PSEUDONYMS = "one patient token stands for two pseudonyms"

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

    def audit_details(self) -> dict[str, object]:
        """What the audit log keeps of a run: counts only (never a pseudonym, a token or a record)."""
        return {
            "hospitals": len(self.hospitals),
            "changesets": sum(len(h.applied) for h in self.hospitals),
            "records": self.records,
            "deletions": sum(h.dels for h in self.hospitals),
            "tombstones": sum(h.tombstones for h in self.hospitals),
            "refused": len(self.refused),
            "gaps": sum(1 for h in self.hospitals if h.gap),
        }

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
    _sweep_scratch(db)
    report = IngestReport()
    for source in sources:
        report.hospitals.append(_ingest_hospital(db, source, private, now, on_changeset))
    report.seconds = time.perf_counter() - started
    return report


def _scratch_prefix(db: ResearchDB) -> str:
    return f".{db.path.name}.ingest-"


def _sweep_scratch(db: ResearchDB) -> None:
    """Remove the scratch folders a crashed ingest left beside the database (``db`` is open for writing,
    so no other ingest of it runs)."""
    for leftover in db.path.parent.glob(_scratch_prefix(db) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


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
    """Verify, decrypt and apply one research changeset: staged in bounded batches, then applied in one
    transaction.  Returns (puts, dels, tombstones).  :class:`InputError` naming the file if it is refused;
    nothing of it is then applied."""
    path = sealed.path
    opened, frames, _ = open_changeset(path, private, signer, hospital=sealed.header.hospital)
    header = opened.header
    if header.stream != STREAM:
        raise InputError(str(path), f"a {header.stream} changeset, not a research one")
    scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(db), dir=db.path.parent))
    stage = _Stage(db.conn, scratch, header.hospital, delta=header.kind != "baseline", where=str(path))
    try:
        for frame in frames:
            stage.add(frame.token.hex(), frame.ops)
        stage.flush()
        stage.check()
        _apply(db.conn, stage, header, now or datetime.now(UTC))
    except duckdb.Error as e:
        raise InputError(str(path), f"cannot be applied ({first_line(e)})") from None
    finally:
        stage.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return stage.puts, stage.dels, len(header.tombstones)


def _apply(conn: duckdb.DuckDBPyConnection, stage: _Stage, header: Header, now: datetime) -> None:
    """The staged changeset into the real tables, in one transaction of bulk statements (each streams
    from the staged files; DuckDB writes large inserts to the database file as they go, so the
    transaction holds no more than its memory limit)."""
    source = header.hospital
    conn.begin()
    try:
        if not stage.delta:
            _clear_source(conn, source)
        elif stage.batches:
            for table in _RKEY_TABLES:
                conn.execute(
                    f"DELETE FROM {table} WHERE rkey IN (SELECT rkey FROM read_parquet($files))",
                    {"files": stage.files("touched")},
                )
        if stage.batches:
            for table in _RKEY_TABLES:
                conn.execute(
                    f"INSERT INTO {table} SELECT * FROM read_parquet($files)", {"files": stage.files(table)}
                )
            tokens = {"source": source, "files": stage.files("tokens")}
            conn.execute(
                "INSERT INTO tokens SELECT DISTINCT $source, token, pid FROM read_parquet($files) "
                "ON CONFLICT DO NOTHING",
                tokens,
            )
            clash = conn.execute(
                "SELECT count(*) FROM tokens t JOIN read_parquet($files) s ON t.token = s.token "
                "WHERE t.source = $source AND t.pid <> s.pid",
                tokens,
            ).fetchone()
            if clash and clash[0]:
                raise InputError(stage.where, "a patient token stands for another pseudonym than before")
        _tombstone(conn, source, list(header.tombstones))
        _rebuild_patients(conn, source, stage.files("tokens") if stage.delta else None)
        conn.execute(
            "INSERT INTO ingested VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                source,
                header.sequence,
                header.hash,
                header.kind,
                now.replace(tzinfo=None),
                stage.puts,
                stage.dels,
                len(header.tombstones),
            ],
        )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


class _Stage:
    """A changeset's rows, staged batch by batch as Parquet files in a scratch folder beside the database:
    per batch, one file per table it fills (``labs-<n>.parquet`` …), its tokens (``tokens-<n>``: token,
    pseudonym) and, for a delta, the ``rkey`` of every put and del (``touched-<n>``).  DuckDB parses one
    batch at a time and the database is not touched until :func:`_apply`; a crash leaves only the scratch
    folder, which the next ingest removes."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, scratch: Path, source: str, *, delta: bool, where: str
    ) -> None:
        self.conn = conn
        self.scratch = scratch
        self.source = source
        self.delta = delta
        self.where = where
        self.path = scratch / "ops.ndjson"
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in flush and close
        self._size = 0
        #: Token -> pseudonym of the current batch (across batches: :meth:`check`).
        self._tokens: dict[str, str] = {}
        self.puts = 0
        self.dels = 0
        self.batches = 0

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
            raise InputError(self.where, _TWO_PSEUDONYMS)
        self.puts += puts
        self.dels += dels
        if not data.endswith(b"\n"):
            data += b"\n"
        self._file.write(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Stage the batch written so far."""
        self._file.close()
        if self._size:
            self._load()
            self.batches += 1
        self._file = open(self.path, "wb")  # noqa: SIM115
        self._size = 0

    def files(self, name: str) -> list[str]:
        """The staged files of a table (or ``tokens``, ``touched``), one per batch."""
        return [str(self.scratch / f"{name}-{n}.parquet") for n in range(self.batches)]

    def check(self) -> None:
        """What no single batch can see: a token standing for two pseudonyms in different batches."""
        if self.batches < 2:
            return
        two = self.conn.execute(
            "SELECT count(*) FROM (SELECT token FROM read_parquet($files) GROUP BY token "
            "HAVING min(pid) <> max(pid))",
            {"files": self.files("tokens")},
        ).fetchone()
        if two and two[0]:
            raise InputError(self.where, _TWO_PSEUDONYMS)

    def close(self) -> None:
        self._file.close()
        self.conn.execute("DROP TABLE IF EXISTS _stage_ops")

    def _copy(self, name: str, select: str, params: Mapping[str, object] | None = None) -> None:
        target = str(self.scratch / f"{name}-{self.batches}.parquet").replace("'", "''")
        self.conn.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet, COMPRESSION snappy)", params)

    def _load(self) -> None:
        c = self.conn
        c.execute(
            "CREATE OR REPLACE TEMP TABLE _stage_ops AS SELECT * FROM read_json(?, format = "
            f"'newline_delimited', columns = {_OPS_COLUMNS}, maximum_object_size = {MAX_OPERATION_BYTES})",
            [str(self.path)],
        )
        kinds = ", ".join(f"'{k}'" for k in _KINDS)
        bad = c.execute(
            "SELECT count(*) FROM _stage_ops WHERE NOT coalesce("
            f"(del IS NULL AND put.v = 1 AND put.kind IN ({kinds}) AND put.r.key.pid IS NOT NULL) "
            "OR (put IS NULL AND len(del) = 5), false)"
        ).fetchone()
        if bad and bad[0]:
            raise InputError(self.where, f"{bad[0]} operations are not research records of a known kind")
        if self.delta:
            self._copy(
                "touched",
                f"SELECT {_RKEY} AS rkey FROM _stage_ops WHERE put IS NOT NULL "
                "UNION ALL SELECT array_to_string(del, '/') FROM _stage_ops WHERE del IS NOT NULL",
            )
        for kind, (table, columns) in _INSERTS.items():
            params = {"kind": kind, "source": self.source} if "$source" in columns else {"kind": kind}
            self._copy(table, f"SELECT {columns} FROM _stage_ops WHERE put.kind = $kind", params)
        self._copy(
            "injections",
            "SELECT rkey, pid, d, event, c.role, c.code, c.system, c.amount, c.unit, age "
            f'FROM (SELECT {_RKEY} AS rkey, put.r.key.pid AS pid, put.r."date" AS d, put.r.event AS event, '
            f"put.r.age AS age, unnest(CASE WHEN len(put.r.components) > 0 THEN put.r.components "
            f"ELSE {_NO_COMPONENT} END) AS c FROM _stage_ops WHERE put.kind = 'injection')",
        )
        self._copy(
            "tokens",
            "SELECT unnest($tokens) AS token, unnest($pids) AS pid",
            {"tokens": list(self._tokens), "pids": list(self._tokens.values())},
        )
        self._tokens = {}
        c.execute("DROP TABLE _stage_ops")


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


def _rebuild_patients(conn: duckdb.DuckDBPyConnection, source: str, tokens: list[str] | None) -> None:
    """``patients`` rows from their patient records (the date-independent one first, else the newest care
    date): of the whole source after a baseline (``tokens`` None), else of the patients in the staged
    token files."""
    params: dict[str, object]
    if tokens is None:
        where, params = "source = $source", {"source": source}
    elif not tokens:
        return
    else:
        where, params = "pid IN (SELECT pid FROM read_parquet($files))", {"files": tokens}
    conn.execute(f"DELETE FROM patients WHERE {where}", params)
    conn.execute(
        "INSERT INTO patients SELECT pid, link, source, sex, birth_ym FROM patient_records "
        f"WHERE {where} QUALIFY row_number() OVER "
        "(PARTITION BY pid ORDER BY care_date = '-' DESC, care_date DESC, rkey DESC) = 1",
        params,
    )

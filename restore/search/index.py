"""The patient index of the disaster desk: blocking keys in SQLite, ranking in Python.

Tables (all prefixed ``search_``, inside the restore database or any SQLite file):

``search_meta``     schema version and the normalizer version (a hash of the variant table and rules); when
                    either changes, :meth:`PatientIndex.open` re-derives every key from the stored fields
``search_patient``  one row per patient: the demographics as given plus their normalized forms
``search_key``      (64-bit hash of a blocking key, patient row) — WITHOUT ROWID, so a lookup is one B-tree
                    probe: loose kana full name, folded kanji full name, birth date, family / given name
                    (kana and kanji) each with the birth date, family name alone

A search turns the query into keys — the family/given keys once per *plausible* birth date (exact,
day/month swapped, ±1 in a part, one digit off: about 50) — and looks them up with ``IN (…)``: never a
scan.  Candidates are then scored in Python (:func:`score`): name 50, birth date 35, sex 5, address 10,
each with a human-readable reason.  The index only proposes candidates; it never merges patients.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import sqlite3
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

from hakobune.errors import HakobuneError, InputError
from restore.search.normalize import (
    VARIANTS_FILE,
    Address,
    DateParts,
    address_key,
    compare_addresses,
    compare_dates,
    date_variants,
    fold_kanji,
    is_kana,
    kana_key,
    kana_loose,
    name_as_written,
    nfkc,
    normalize_sex,
    parse_address,
    parse_date,
    split_name,
)

SCHEMA_VERSION = 1
#: Bump when a normalization or key rule changes: stored keys are then re-derived on open.
RULES_VERSION = 2
BATCH = 5000
#: Most rows one broad key (a family name alone, a birth date alone) may bring in.
BROAD_LIMIT = 2000
#: Most candidates scored per query (the specific keys' hits come first).
MAX_CANDIDATES = 4000
#: The broad keys are looked up only when the specific ones found fewer candidates than this (none).
FALLBACK_BELOW = 1

W_NAME, W_BIRTH, W_SEX, W_ADDRESS = 50.0, 35.0, 5.0, 10.0
SEX_MISMATCH = -10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS search_patient (
    pid INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL UNIQUE,
    family_kanji TEXT NOT NULL, given_kanji TEXT NOT NULL,
    family_kana TEXT NOT NULL, given_kana TEXT NOT NULL,
    birth_date TEXT NOT NULL, sex TEXT NOT NULL, address TEXT NOT NULL, postal_code TEXT NOT NULL,
    n_fk TEXT NOT NULL, n_gk TEXT NOT NULL, n_fr TEXT NOT NULL, n_gr TEXT NOT NULL,
    n_fa TEXT NOT NULL, n_ga TEXT NOT NULL, n_fl TEXT NOT NULL, n_gl TEXT NOT NULL,
    n_birth TEXT NOT NULL, n_sex TEXT NOT NULL, n_addr TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS search_key (
    h INTEGER NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (h, pid)
) WITHOUT ROWID;
"""
_LOAD = "search_key_load"
_MARKS = ", ".join("?" * 21)
_RAW = "patient_id, family_kanji, given_kanji, family_kana, given_kana, birth_date, sex, address, postal_code"
_NORM = "n_fk, n_gk, n_fr, n_gr, n_fa, n_ga, n_fl, n_gl, n_birth, n_sex, n_addr"


class SearchQueryError(HakobuneError):
    """A query that cannot be used (the message never repeats what was typed)."""

    exit_code = 2


@dataclass(frozen=True)
class SearchPatient:
    """The demographics the index keeps for one patient (as the hospital wrote them)."""

    patient_id: str
    family_kanji: str
    given_kanji: str
    family_kana: str
    given_kana: str
    birth_date: str  # YYYY-MM-DD
    sex: str  # M | F | O | U
    address: str
    postal_code: str = ""


@dataclass(frozen=True)
class Query:
    """What the desk typed.  ``name``: kanji or kana, any width, with or without a space between family and
    given name (a single word may be the family name alone).  ``birth_date``: ``1975-03-04``, ``19750304``,
    ``S50.3.4``, ``昭和50年3月4日`` …  ``sex``: M/F/男/女 …  ``address``: any part of it."""

    name: str = ""
    birth_date: str = ""
    sex: str = ""
    address: str = ""


@dataclass(frozen=True)
class Candidate:
    """A patient who may be the one sought: score 0–100 and the reasons, for a clinician to confirm."""

    patient_id: str
    score: float
    reasons: tuple[str, ...]


# ------------------------------------------------------------------------------------ normalization
@dataclass(frozen=True, slots=True)
class _Norm:
    fk: str  # folded kanji
    gk: str
    fr: str  # kanji as written (NFKC, no IVS, no spaces)
    gr: str
    fa: str  # strict kana
    ga: str
    fl: str  # loose kana
    gl: str
    birth: str  # YYYYMMDD or ""
    sex: str
    addr: str  # prefecture|city|town|block|postal


def _birth8(s: str) -> str:
    if len(s) == 10 and s[4] == s[7] == "-" and (d := s[:4] + s[5:7] + s[8:]).isdigit():
        return d  # the stored ISO form: fast path
    d8 = parse_date(s) if s else None
    return d8.iso() if d8 is not None and d8.day is not None else ""


_NOT_DIGIT = re.compile(r"\D")


def _norm(p: SearchPatient) -> _Norm:
    a = parse_address(p.address)
    postal = _NOT_DIGIT.sub("", nfkc(p.postal_code)) if p.postal_code else ""
    return _Norm(
        fold_kanji(p.family_kanji),
        fold_kanji(p.given_kanji),
        name_as_written(p.family_kanji),
        name_as_written(p.given_kanji),
        kana_key(p.family_kana),
        kana_key(p.given_kana),
        kana_loose(p.family_kana),
        kana_loose(p.given_kana),
        _birth8(p.birth_date),
        normalize_sex(p.sex) or "U",
        f"{a.prefecture}|{address_key(a)}|{postal or a.postal}",
    )


def _address_of(n_addr: str) -> Address:
    pref, city, town, block, postal = n_addr.split("|")
    return Address(pref, city, town, block, "", postal)


_HALF = 1 << 63


def _h(key: str) -> int:
    """64-bit key hash (CRC-32 and Adler-32 side by side, signed for SQLite).  A collision only brings in an
    extra candidate, which scoring then ranks on its own merits."""
    b = key.encode()
    return ((zlib.crc32(b) << 32) | zlib.adler32(b)) - _HALF


def _keys(n: _Norm) -> set[int]:
    """The blocking keys of a patient."""
    ks: list[str] = []
    if n.fl or n.gl:
        ks.append(f"N:{n.fl}{n.gl}")
        if n.fl:
            ks.append(f"FO:{n.fl}")
    if n.fk or n.gk:
        ks.append(f"J:{n.fk}{n.gk}")
        if n.fk:
            ks.append(f"JFO:{n.fk}")
            if n.gl:
                ks.append(f"M:{n.fk}|{n.gl}")  # family in kanji, given name in kana
    if n.birth:
        ks.append(f"B:{n.birth}")
        for tag, v in (("F", n.fl), ("G", n.gl), ("JF", n.fk), ("JG", n.gk)):
            if v:
                ks.append(f"{tag}:{v}|{n.birth}")
    crc32, adler32 = zlib.crc32, zlib.adler32  # _h inlined: this runs ten times per patient
    return {((crc32(b) << 32) | adler32(b)) - _HALF for b in (k.encode() for k in ks)}


@lru_cache(maxsize=1)
def normalizer_version() -> str:
    """Changes whenever stored keys would: the rules version and the variant table's content."""
    digest = hashlib.sha256(VARIANTS_FILE.read_bytes()).hexdigest()[:16]
    return f"{RULES_VERSION}:{digest}"


# --------------------------------------------------------------------------------------- the index
class PatientIndex:
    """The patient index inside a SQLite file.  Open with :meth:`open`; usable as a context manager."""

    def __init__(self, conn: sqlite3.Connection, *, readonly: bool = False) -> None:
        """Use an open connection (e.g. the restore database's own).  Creates the ``search_`` tables unless
        ``readonly``; re-derives the keys when they were made by other normalization rules."""
        self._conn = conn
        self._readonly = readonly
        if readonly:
            try:
                meta = dict(conn.execute("SELECT key, value FROM search_meta").fetchall())
            except sqlite3.Error:
                meta = {}
            if meta.get("normalizer") != normalizer_version():
                raise HakobuneError(
                    "the patient index was built with other normalization rules (or not at all): "
                    "open it writable once to rebuild its keys"
                )
            return
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM search_meta").fetchall())
        version = normalizer_version()
        stale = meta.get("normalizer") not in (None, version) or meta.get("schema") not in (
            None,
            str(SCHEMA_VERSION),
        )
        if stale:
            self.reindex()
        self._set_meta({"schema": str(SCHEMA_VERSION), "normalizer": version})

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> PatientIndex:
        """Open (and create if absent, unless ``readonly``) the index tables in the SQLite file ``path``."""
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            else:
                conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA cache_size=-131072")  # 128 MiB for this connection
            if readonly:
                conn.execute("SELECT 1 FROM search_patient LIMIT 1")
        except sqlite3.Error as e:
            raise InputError(str(path), f"cannot open the patient index: {e}") from None
        return cls(conn, readonly=readonly)

    # ------------------------------------------------------------------------------------- writing
    def _set_meta(self, values: dict[str, str]) -> None:
        self._conn.executemany(
            "INSERT INTO search_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            values.items(),
        )

    def add_many(self, patients: Iterable[SearchPatient], *, workers: int = 1) -> int:
        """Insert or replace (by ``patient_id``) patients; streams, in batches.  Returns how many were given
        (a repeated ID counts once per batch).

        Into an empty index (the first build) everything is one transaction and the keys go to a temporary
        table first, then into ``search_key`` in sorted order: far faster than random B-tree inserts, and
        a crash leaves the index as it was.  Otherwise each batch is one transaction.  ``workers`` > 1
        normalizes in that many processes (for a first build of a large hospital).  Inside a transaction
        the caller already holds on this connection, the writes join it (savepoints)."""
        self._writable()
        next_pid = (self._conn.execute("SELECT max(pid) FROM search_patient").fetchone()[0] or 0) + 1
        bulk = next_pid == 1
        batches = _batches(patients)
        pool: Any = None
        prepared: Iterable[list[_Prepared]]
        if workers > 1:
            pool = multiprocessing.get_context("spawn").Pool(workers)
            prepared = _bounded(pool, batches, 2 * workers)
        else:
            prepared = map(_prepare, batches)
        total = 0
        try:
            if bulk:
                with self._savepoint():
                    self._conn.execute(
                        f"CREATE TEMP TABLE {_LOAD} (pid INTEGER NOT NULL, keys TEXT NOT NULL)"
                    )
                    for batch in prepared:
                        if bulk:
                            try:
                                with self._savepoint("search_batch"):
                                    next_pid = self._write(batch, next_pid, True)
                            except sqlite3.IntegrityError:  # a patient given again: leave bulk mode
                                self._move_load()
                                bulk = False
                        if not bulk:
                            next_pid = self._write(batch, next_pid, False)
                        total += len(batch)
                    if bulk:
                        self._move_load()
            else:
                for batch in prepared:
                    with self._savepoint():
                        next_pid = self._write(batch, next_pid, False)
                    total += len(batch)
        finally:
            if pool is not None:
                pool.terminate()
        return total

    @contextmanager
    def _savepoint(self, name: str = "search_write") -> Iterator[None]:
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")

    def _write(self, batch: list[_Prepared], next_pid: int, bulk: bool) -> int:
        old = {} if bulk else self._existing([row[0] for row in batch])
        self._delete_keys(old.items())
        rows: list[tuple[Any, ...]] = []
        keys: list[tuple[int, int]] = []
        staged: list[tuple[int, str]] = []
        for patient_id, values, hashes in batch:
            if patient_id in old:
                pid = old[patient_id][0]
            else:
                pid, next_pid = next_pid, next_pid + 1
            rows.append((pid, *values))
            if bulk:  # one row a patient, its keys as a JSON array: 10x fewer rows to bind
                staged.append((pid, f"[{','.join(map(str, hashes))}]"))
            else:
                keys.extend((h, pid) for h in hashes)
        verb = "INSERT" if bulk else "INSERT OR REPLACE"  # in bulk, a repeated patient_id raises
        self._conn.executemany(f"{verb} INTO search_patient (pid, {_RAW}, {_NORM}) VALUES ({_MARKS})", rows)
        if bulk:
            self._conn.executemany(f"INSERT INTO temp.{_LOAD} (pid, keys) VALUES (?, ?)", staged)
        else:
            keys.sort()
            self._conn.executemany("INSERT OR IGNORE INTO search_key (h, pid) VALUES (?, ?)", keys)
        return next_pid

    def _move_load(self) -> None:
        """Move the staged keys into search_key, sorted (inside the bulk transaction)."""
        self._conn.execute(
            "INSERT OR IGNORE INTO search_key (h, pid) "
            f"SELECT k.value, s.pid FROM temp.{_LOAD} AS s, json_each(s.keys) AS k ORDER BY 1, 2"
        )
        self._conn.execute(f"DROP TABLE temp.{_LOAD}")

    def _existing(self, ids: list[str]) -> dict[str, tuple[int, _Norm]]:
        out: dict[str, tuple[int, _Norm]] = {}
        for chunk in _chunks(ids, 900):
            marks = ", ".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT patient_id, pid, {_NORM} FROM search_patient WHERE patient_id IN ({marks})", chunk
            ):
                out[row[0]] = (row[1], _Norm(*row[2:]))
        return out

    def _delete_keys(self, old: Iterable[tuple[str, tuple[int, _Norm]]]) -> None:
        self._conn.executemany(
            "DELETE FROM search_key WHERE h = ? AND pid = ?",
            [(h, pid) for _, (pid, n) in old for h in _keys(n)],
        )

    def remove(self, patient_ids: Iterable[str]) -> int:
        """Remove patients (e.g. an erased one) from the index; returns how many were there."""
        self._writable()
        removed = 0
        for chunk in _chunks(list(dict.fromkeys(patient_ids)), BATCH):
            with self._savepoint():
                old = self._existing(chunk)
                self._delete_keys(old.items())
                self._conn.executemany(
                    "DELETE FROM search_patient WHERE pid = ?", [(v[0],) for v in old.values()]
                )
            removed += len(old)
        return removed

    def reindex(self) -> int:
        """Re-derive every normalized field and key from the stored demographics (after a rules or
        variant-table change)."""
        self._writable()
        raw = [
            SearchPatient(*r) for r in self._conn.execute(f"SELECT {_RAW} FROM search_patient ORDER BY pid")
        ]
        with self._savepoint():  # all or nothing
            self._conn.execute("DELETE FROM search_key")
            self._conn.execute("DELETE FROM search_patient")
            return self.add_many(raw)

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM search_patient").fetchone()[0])

    def _writable(self) -> None:
        if self._readonly:
            raise HakobuneError("the patient index was opened read-only")

    # ------------------------------------------------------------------------------------- search
    def search(self, query: Query, limit: int = 10) -> list[Candidate]:
        """Ranked candidates for ``query`` (best first, at most ``limit``).  Raises SearchQueryError when
        the query has nothing usable (or a birth date that cannot be read)."""
        q = _ParsedQuery.of(query)
        specific, broad = q.keys()
        pids = self._lookup(specific, MAX_CANDIDATES)
        if len(pids) < FALLBACK_BELOW and broad:
            pids |= self._lookup(broad, BROAD_LIMIT)
        if not pids:
            return []
        scored: list[Candidate] = []
        for chunk in _chunks(sorted(pids), 900):
            marks = ", ".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT patient_id, {_NORM} FROM search_patient WHERE pid IN ({marks})", chunk
            ):
                c = score(q, row[0], _Norm(*row[1:]))
                if c is not None:
                    scored.append(c)
        scored.sort(key=lambda c: (-c.score, c.patient_id))
        return scored[:limit]

    def _lookup(self, hashes: list[int], limit: int) -> set[int]:
        out: set[int] = set()
        for chunk in _chunks(hashes, 900):
            marks = ", ".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT pid FROM search_key WHERE h IN ({marks}) LIMIT {limit - len(out)}", chunk
            ).fetchall()
            out.update(r[0] for r in rows)
            if len(out) >= limit:
                break
        return out

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PatientIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: One patient ready to write: (patient_id, raw + normalized column values, key hashes).
_Prepared = tuple[str, tuple[str, ...], list[int]]


def _batches(patients: Iterable[SearchPatient]) -> Iterator[list[SearchPatient]]:
    it = iter(patients)
    while batch := list(islice(it, BATCH)):
        yield list({p.patient_id: p for p in batch}.values())  # the last of duplicates wins


def _bounded(pool: Any, batches: Iterable[list[SearchPatient]], window: int) -> Iterator[list[_Prepared]]:
    """Prepare batches in the pool, in order, with at most ``window`` in flight (``imap`` would read the
    whole input ahead)."""
    pending: deque[Any] = deque()
    for batch in batches:
        pending.append(
            pool.apply_async(_prepare_raw, ([_raw_tuple(p) for p in batch],))
        )  # tuples pickle fast
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _prepare_raw(batch: list[tuple[str, ...]]) -> list[_Prepared]:
    return _prepare([SearchPatient(*t) for t in batch])


def _prepare(batch: list[SearchPatient]) -> list[_Prepared]:
    """Normalize a batch (pure: runs in worker processes too)."""
    out: list[_Prepared] = []
    for p in batch:
        n = _norm(p)
        out.append((p.patient_id, (*_raw_tuple(p), *_norm_tuple(n)), sorted(_keys(n))))
    return out


def _raw_tuple(p: SearchPatient) -> tuple[str, ...]:
    return (
        p.patient_id,
        p.family_kanji,
        p.given_kanji,
        p.family_kana,
        p.given_kana,
        p.birth_date,
        p.sex,
        p.address,
        p.postal_code,
    )


def _norm_tuple(n: _Norm) -> tuple[str, ...]:
    return (n.fk, n.gk, n.fr, n.gr, n.fa, n.ga, n.fl, n.gl, n.birth, n.sex, n.addr)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ------------------------------------------------------------------------------------------ queries
@dataclass(frozen=True, slots=True)
class _Part:
    """One typed name part: kana (strict + loose) or kanji (as typed + folded)."""

    kana: bool
    strict: str
    loose: str

    @classmethod
    def of(cls, s: str) -> _Part:
        if is_kana(s):
            return cls(True, kana_key(s), kana_loose(s))
        return cls(False, name_as_written(s), fold_kanji(s))


@dataclass(frozen=True, slots=True)
class _ParsedQuery:
    parts: tuple[_Part, ...]
    birth: DateParts | None
    births: tuple[str, ...]  # plausible complete dates, exact first
    sex: str
    address: Address
    has_address: bool

    @classmethod
    def of(cls, query: Query) -> _ParsedQuery:
        birth = None
        if query.birth_date.strip():
            birth = parse_date(query.birth_date)
            if birth is None:
                raise SearchQueryError(
                    "birth date not understood: use YYYY-MM-DD, YYYYMMDD or an era form such as S50.3.4"
                )
        parts = tuple(_Part.of(p) for p in split_name(query.name))
        address = parse_address(query.address) if query.address.strip() else Address()
        if not parts and birth is None and address.empty:
            raise SearchQueryError("give at least a name, a birth date or an address")
        sex = normalize_sex(query.sex)
        births = tuple(date_variants(birth)) if birth is not None else ()
        return cls(parts, birth, births, sex, address, not address.empty)

    def keys(self) -> tuple[list[int], list[int]]:
        """(specific keys, broad keys) as hashes."""
        specific: list[str] = []
        broad: list[str] = []
        exact = self.births[:2]  # the date as typed and day/month swapped
        if self.parts:
            full = self.parts[0] if len(self.parts) == 1 else None
            if full is None:
                fam, giv = self.parts
                if fam.kana == giv.kana:
                    tag = "N:" if fam.kana else "J:"
                    specific += [tag + fam.loose + giv.loose, tag + giv.loose + fam.loose]  # either order
                elif giv.kana:
                    specific.append(f"M:{fam.loose}|{giv.loose}")
                named = [(fam, "F", "JF"), (giv, "G", "JG")]
            else:
                specific.append(("N:" if full.kana else "J:") + full.loose)
                named = [(full, "F", "JF")]
            for part, kana_tag, kanji_tag in named:
                tag = kana_tag if part.kana else kanji_tag
                specific.extend(f"{tag}:{part.loose}|{b}" for b in self.births)
            specific.extend(f"B:{b}" for b in exact)
            if not self.births:  # a family name alone, or a misspelt name without a birth date
                fam = self.parts[0]
                broad.append(("FO:" if fam.kana else "JFO:") + fam.loose)
        else:
            specific.extend(f"B:{b}" for b in exact)
            broad.extend(f"B:{b}" for b in self.births[2:])
        return [_h(k) for k in dict.fromkeys(specific)], [_h(k) for k in dict.fromkeys(broad)]


# ------------------------------------------------------------------------------------------ scoring
def _within_one(a: str, b: str) -> bool:
    """Levenshtein distance of a and b is exactly 1."""
    la, lb = len(a), len(b)
    if abs(la - lb) > 1 or a == b:
        return False
    if la > lb:
        a, b, la, lb = b, a, lb, la
    i = 0
    while i < la and a[i] == b[i]:
        i += 1
    return a[i + 1 :] == b[i + 1 :] if la == lb else a[i:] == b[i + 1 :]


def _match(part: _Part, strict: str, loose: str) -> tuple[float, str]:
    """How one typed part matches one stored name (given as strict and loose/folded forms)."""
    if not loose and not strict:
        return 0.0, ""
    if part.kana:
        if part.strict == strict:
            return 1.0, "カナ一致"
        if part.loose == loose:
            return 0.9, "カナ類似（長音・小書き・濁点の違い）"
        if len(loose) >= 3 and _within_one(part.loose, loose):
            return 0.55, "カナ1文字違い"
        return 0.0, ""
    if part.strict == strict:
        return 1.0, "漢字一致"
    if part.loose == loose:
        return 0.95, "漢字異体字一致"
    if len(loose) >= 2 and _within_one(part.loose, loose):
        return 0.45, "漢字1文字違い"
    return 0.0, ""


def _forms(part: _Part, n: _Norm, which: str) -> tuple[str, str]:
    """The stored forms of the family (f), given (g) or full (fg) name comparable with ``part``."""
    if part.kana:
        if which == "f":
            return n.fa, n.fl
        return (n.ga, n.gl) if which == "g" else (n.fa + n.ga, n.fl + n.gl)
    if which == "f":
        return n.fr, n.fk
    return (n.gr, n.gk) if which == "g" else (n.fr + n.gr, n.fk + n.gk)


def _name_score(q: _ParsedQuery, n: _Norm) -> tuple[float, list[str]]:
    if not q.parts:
        return 0.0, []
    if len(q.parts) == 2:
        fam, giv = q.parts
        wf, rf = _match(fam, *_forms(fam, n, "f"))
        wg, rg = _match(giv, *_forms(giv, n, "g"))
        if wf == 0.0 and wg == 0.0:  # typed given name first?
            sf, rsf = _match(fam, *_forms(fam, n, "g"))
            sg, rsg = _match(giv, *_forms(giv, n, "f"))
            if sf > 0 and sg > 0:
                reversed_ = ["氏名: 姓と名が逆順", f"姓: {rsg}", f"名: {rsf}"]
                return 0.8 * (sf + sg) / 2 * W_NAME, reversed_
        if wf == 1.0 and wg == 1.0:
            if fam.kana and giv.kana:
                return W_NAME, ["カナ氏名一致"]
            return W_NAME, ["漢字氏名一致" if not (fam.kana or giv.kana) else "氏名一致"]
        if rf == rg and wf > 0:
            return (wf + wg) / 2 * W_NAME, [f"氏名: {rf}"]
        reasons = [f"姓: {rf}" if rf else "姓不一致", f"名: {rg}" if rg else "名不一致"]
        if wf == 0.0 and wg >= 0.9:
            reasons[0] = "姓不一致（改姓の可能性）"
        return (wf + wg) / 2 * W_NAME, reasons
    (part,) = q.parts
    options = [
        (*_match(part, *_forms(part, n, "fg")), 1.0, "氏名"),
        (*_match(part, *_forms(part, n, "f")), 0.6, "姓のみ入力"),
        (*_match(part, *_forms(part, n, "g")), 0.4, "名のみ入力"),
    ]
    w, reason, scale, label = max(options, key=lambda o: o[0] * o[2])
    if w == 0.0:
        return 0.0, []
    if label == "氏名" and w == 1.0:
        return W_NAME, ["カナ氏名一致" if part.kana else "漢字氏名一致"]
    return w * scale * W_NAME, [f"{label}: {reason}"]


def score(q: _ParsedQuery, patient_id: str, n: _Norm) -> Candidate | None:
    """Score one candidate; None when nothing typed relates to the patient."""
    total, reasons = _name_score(q, n)
    if q.birth is not None:
        w, why = compare_dates(q.birth, n.birth)
        total += w * W_BIRTH
        if why:
            reasons.append(why)
    if q.sex in ("M", "F", "O"):
        if n.sex == q.sex:
            total += W_SEX
            reasons.append("性別一致")
        elif n.sex in ("M", "F") and q.sex in ("M", "F"):
            total += SEX_MISMATCH
            reasons.append("性別不一致")
    if q.has_address:
        w, why = compare_addresses(q.address, _address_of(n.addr))
        total += w * W_ADDRESS
        if why:
            reasons.append(why)
    if total <= 0:
        return None
    return Candidate(patient_id, round(total, 1), tuple(reasons))


# ---------------------------------------------------------------------------------- for the CLI
def search_database(path: Path, query: Query, limit: int = 10) -> list[Candidate]:
    """Open the index in ``path`` read-only, search, close: what ``restore search`` calls."""
    with PatientIndex.open(path, readonly=True) as index:
        return index.search(query, limit)


def index_patients(path: Path, patients: Iterable[SearchPatient]) -> int:
    """Add or replace patients in the index in ``path`` (created if absent)."""
    with PatientIndex.open(path) as index:
        return index.add_many(patients)

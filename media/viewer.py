"""The offline viewer of a helicopter disk: ``viewer.html`` at the disk's root plus encrypted data chunks
under ``viewer/d/`` (docs/viewer.md).

A receiving hospital may have nothing but a locked-down PC with a browser.  ``viewer.html`` is one
self-contained file (code and styles inline, a Content-Security-Policy that forbids any network access)
that asks for the disk's passphrase, unwraps the disk key with WebCrypto exactly as :mod:`media.crypto`
does, and then loads the data chunks it needs.  A page opened from ``file://`` cannot ``fetch()`` its
sibling files, but it may load ``<script src>`` elements relative to itself, so each chunk is a tiny
script ``hakobuneData("<name>","<base64>")`` whose payload is::

    nonce (12 bytes) || AES-256-GCM(subkey(disk key, disk id, "viewer <name>"), nonce,
                                    gzip(JSON), associated data = <name>)

Chunks: ``m`` (meta: counts and the kanji-variant map the query folding needs), ``i000``, ``i001`` … (the
search index, columnar, :data:`INDEX_PART` patients each) and ``s00000`` … (patient summaries, at most
:data:`SUMMARY_PATIENTS` patients or :data:`SUMMARY_BYTES` of JSON each, opened on demand).  Nothing on
the disk tells a patient's data without the passphrase; ``viewer.html`` carries only the passphrase wrap,
the disk id, the non-patient label and chunk names.

:class:`ViewerWriter` streams: it keeps one summary chunk and one index part in memory and writes each
when full, so memory stays bounded however many patients the disk holds.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import zlib
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hakobune.durable import fsync_dir
from hakobune.errors import InputError
from media.crypto import FORMAT, KEY_BYTES, PassphraseWrap, subkey
from media.viewer_summary import Stored, SummaryError, parse_bundle, stored_summary
from restore.search.normalize import fold_kanji, kana_key, kana_loose, kanji_variants, name_as_written

VIEWER_VERSION = 1
HTML_NAME = "viewer.html"
DATA_DIR = "viewer/d"
META_CHUNK = "m"
#: Patients per index part: 100k patients load as four parts, decrypted in parallel.
INDEX_PART = 25_000
#: A summary chunk holds at most this many patients or this much JSON (before gzip): opening a patient
#: loads and decrypts one file of about a hundred kilobytes.
SUMMARY_PATIENTS = 200
SUMMARY_BYTES = 1 << 20
#: The viewer's sources (media/viewer/), concatenated in this order into one inline script.
SOURCE_DIR = Path(__file__).resolve().parent / "viewer"
JS_FILES = ("normalize.js", "search.js", "data.js", "summary.js", "app.js")
TRUSTED_TYPES_POLICY = "hakobune-viewer"
_CHUNK_NAME = re.compile(r"[a-z][0-9]{0,8}")
_DATA_FILE = re.compile(rb'^hakobuneData\("([a-z][0-9]{0,8})","([A-Za-z0-9+/=]*)"\);\n?$')


class ChunkError(ValueError):
    """A data chunk that does not open (wrong key, tampered, or not a chunk file)."""


# ---------------------------------------------------------------------------------------- chunks
def _chunk_key(disk_key: bytes, disk_id: str, name: str) -> bytes:
    return subkey(disk_key, disk_id, f"viewer {name}")


def seal_chunk(disk_key: bytes, disk_id: str, name: str, payload: bytes) -> bytes:
    """The data file of chunk ``name`` holding ``payload`` (JSON bytes)."""
    if not _CHUNK_NAME.fullmatch(name):
        raise ValueError("bad chunk name")
    nonce = os.urandom(12)
    plain = gzip.compress(payload, compresslevel=6, mtime=0)
    sealed = nonce + AESGCM(_chunk_key(disk_key, disk_id, name)).encrypt(nonce, plain, name.encode("ascii"))
    return b'hakobuneData("%s","%s");\n' % (name.encode("ascii"), base64.b64encode(sealed))


def open_chunk(disk_key: bytes, disk_id: str, name: str, data: bytes) -> Any:
    """The JSON value in a chunk's data file; :class:`ChunkError` unless it is chunk ``name`` of this disk
    under this key, unmodified."""
    m = _DATA_FILE.match(data)
    if m is None or m.group(1).decode("ascii") != name:
        raise ChunkError(f"chunk {name}: not a viewer data file for this chunk")
    try:
        raw = base64.b64decode(m.group(2), validate=True)
        plain = AESGCM(_chunk_key(disk_key, disk_id, name)).decrypt(raw[:12], raw[12:], name.encode("ascii"))
    except (InvalidTag, ValueError):  # altered, truncated, another disk's or another key's
        raise ChunkError(f"chunk {name}: does not decrypt under this disk key") from None
    try:
        return orjson.loads(gzip.decompress(plain))
    except (OSError, EOFError, zlib.error, ValueError):  # authentic but not gzip(JSON): a writer bug
        raise ChunkError(f"chunk {name}: decrypts but holds no gzip JSON") from None


def read_chunk(root: Path, disk_key: bytes, disk_id: str, name: str) -> Any:
    """Open chunk ``name`` of the viewer on the disk at ``root``."""
    return open_chunk(disk_key, disk_id, name, (root / DATA_DIR / f"{name}.js").read_bytes())


# ---------------------------------------------------------------------------------------- index
#: Index columns.  Display values always; search keys only where they differ from what they derive from
#: (None in the column), so a typical name costs its display text plus the loose kana key.
INDEX_COLUMNS = (
    "id",  # patient ID
    "fj",  # family name, kanji (display)
    "gj",  # given name, kanji (display)
    "fn",  # family name, kana (display)
    "gn",  # given name, kana (display)
    "b",  # birth date as the Bundle has it (YYYY-MM-DD)
    "x",  # sex: M F O U
    "c",  # summary chunk number
    "p",  # position in the chunk
    "fr",  # family kanji as written (name_as_written), None = same as fj
    "gr",
    "fk",  # family kanji folded (fold_kanji), None = same as fr
    "gk",
    "fa",  # family kana strict (kana_key), None = same as fn
    "ga",
    "fl",  # family kana loose (kana_loose), None = same as fa
    "gl",
)


def _elide(value: str, base: str) -> str | None:
    return None if value == base else value


def index_row(patient: dict[str, str], chunk: int, position: int) -> tuple[Any, ...]:
    """One patient's index row (:data:`INDEX_COLUMNS`), keys made by restore.search.normalize."""
    fj, gj, fn, gn = (
        patient["family_kanji"],
        patient["given_kanji"],
        patient["family_kana"],
        patient["given_kana"],
    )
    fr, gr = name_as_written(fj), name_as_written(gj)
    fk, gk = fold_kanji(fj), fold_kanji(gj)
    fa, ga = kana_key(fn), kana_key(gn)
    fl, gl = kana_loose(fn), kana_loose(gn)
    return (
        patient["id"],
        fj,
        gj,
        fn,
        gn,
        patient["birth"],
        patient["sex"],
        chunk,
        position,
        _elide(fr, fj),
        _elide(gr, gj),
        _elide(fk, fr),
        _elide(gk, gr),
        _elide(fa, fn),
        _elide(ga, gn),
        _elide(fl, fa),
        _elide(gl, ga),
    )


def variant_subset(folded_chars: set[str]) -> dict[str, str]:
    """The part of the kanji-variant table a query needs on this disk: variants whose canonical character
    occurs in some folded name (a query folding to anything else cannot match anyway)."""
    return {v: c for v, c in kanji_variants().items() if c in folded_chars}


# ----------------------------------------------------------------------------------------- html
def _sources() -> tuple[str, str, str]:
    template = (SOURCE_DIR / "template.html").read_text(encoding="utf-8")
    css = (SOURCE_DIR / "viewer.css").read_text(encoding="utf-8")
    parts = [(SOURCE_DIR / name).read_text(encoding="utf-8") for name in JS_FILES]
    js = "(() => {\n'use strict';\n" + "\n".join(parts) + "\n})();\n"
    for text, end in ((js, "</script"), (css, "</style")):
        if end in text.lower() or "<!--" in text:
            raise RuntimeError(f"viewer source holds {end!r} or '<!--': it would end its element early")
    return template, css, js


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def content_security_policy(css: str, js: str) -> str:
    """No network: nothing but the inline script and style (by hash) and scripts from the page's own
    files (the data chunks; ``'self'`` is what Chromium matches on ``file://``, ``file:`` the fallback for
    browsers whose file origins are opaque).  Trusted Types forbid every HTML-string sink, so no data can
    ever reach ``innerHTML``; the one policy only creates ``viewer/d/<chunk>.js`` script URLs."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_csp_hash(js)} 'self' file:",
            f"style-src {_csp_hash(css)}",
            "base-uri 'none'",
            "form-action 'none'",
            "require-trusted-types-for 'script'",
            f"trusted-types {TRUSTED_TYPES_POLICY}",
        )
    )


def _json_for_html(value: Any) -> str:
    text = orjson.dumps(value).decode("utf-8")
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(config: dict[str, Any]) -> str:
    """``viewer.html``: the template with the inline style, script, policy and ``config`` filled in."""
    template, css, js = _sources()
    out = template
    for mark, value in (
        ("{{CSP}}", content_security_policy(css, js).replace('"', "&quot;")),
        ("{{CONFIG}}", _json_for_html(config)),
        ("{{STYLE}}", css),
        ("{{SCRIPT}}", js),
    ):
        if out.count(mark) != 1:
            raise RuntimeError(f"viewer template: {mark} must occur once")
        head, tail = out.split(mark)
        out = head + value + tail
    return out


# --------------------------------------------------------------------------------------- writer
def _write_file(path: Path, data: bytes) -> None:
    """Write durably: a temporary name, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ViewerWriter:
    """Writes the offline viewer of one disk.  ``add`` each patient's Bundle, then ``close``; ``abort``
    removes what was written.  Memory holds one summary chunk and one index part at a time."""

    summary_patients = SUMMARY_PATIENTS
    summary_bytes = SUMMARY_BYTES
    index_part = INDEX_PART

    def __init__(
        self,
        root: Path,
        *,
        disk_key: bytes,
        disk_id: str,
        passphrase_wrap: dict[str, Any],
        label: dict[str, str],
    ) -> None:
        if len(disk_key) != KEY_BYTES:
            raise ValueError("disk key must be 32 bytes")
        if not disk_id or not disk_id.isprintable():
            raise ValueError("disk id must be printable text")
        PassphraseWrap.from_doc(passphrase_wrap)  # refuses a wrap the viewer could not use
        if not root.is_dir():
            raise InputError(str(root), "not a directory")
        for existing in (root / HTML_NAME, root / "viewer"):
            if existing.exists():
                raise InputError(str(existing), "already exists: this disk already holds a viewer")
        self.root = root
        self._key = disk_key
        self._disk_id = disk_id
        self._wrap = dict(passphrase_wrap)
        self._label = {str(k): str(v) for k, v in label.items()}
        self._written: list[Path] = []
        self._dirs: list[Path] = []
        for d in (root / "viewer", root / DATA_DIR):
            d.mkdir()
            self._dirs.append(d)
        self._summaries: list[bytes] = []
        self._summary_size = 0
        self._chunk = 0
        self._rows: list[tuple[Any, ...]] = []
        self._index_parts: list[str] = []
        self._folded: set[str] = set()
        self.patients = 0
        self._closed = False

    # -- writing -------------------------------------------------------------------------------------
    def _write_chunk(self, name: str, payload: bytes) -> None:
        path = self.root / DATA_DIR / f"{name}.js"
        self._written.append(path)
        _write_file(path, seal_chunk(self._key, self._disk_id, name, payload))

    def _flush_summaries(self) -> None:
        if self._summaries:
            self._write_chunk(f"s{self._chunk:05d}", b"[" + b",".join(self._summaries) + b"]")
            self._chunk += 1
            self._summaries, self._summary_size = [], 0

    def _flush_index(self) -> None:
        if self._rows:
            columns = {
                name: list(values)
                for name, values in zip(INDEX_COLUMNS, zip(*self._rows, strict=True), strict=True)
            }
            name = f"i{len(self._index_parts):03d}"
            self._write_chunk(name, orjson.dumps({"n": len(self._rows), "columns": columns}))
            self._index_parts.append(name)
            self._rows = []

    def add(self, patient_id: str, bundle: bytes, summary: Stored | None = None) -> None:
        """Add one patient's serialized FHIR document Bundle, with :func:`stored_summary` of it when that
        was made where the bundle was built (else it is made here from ``bundle``).  InputError names the
        bundle by its number in this disk (never by patient data) when it is not a summary the viewer
        can show."""
        if self._closed:
            raise RuntimeError("viewer already closed")
        n = self.patients + 1
        try:
            data, patient = summary if summary is not None else stored_summary(parse_bundle(bundle))
        except SummaryError as e:
            raise InputError(f"bundle #{n}", f"cannot be shown in the viewer: {e}") from None
        if patient["id"] != patient_id:
            raise InputError(f"bundle #{n}", "its Patient identifier is not the patient it was added for")
        if self._summaries and (
            len(self._summaries) >= self.summary_patients
            or self._summary_size + len(data) > self.summary_bytes
        ):
            self._flush_summaries()
        row = index_row(patient, self._chunk, len(self._summaries))
        self._summaries.append(data)
        self._summary_size += len(data)
        self._folded.update(fold_kanji(patient["family_kanji"]) + fold_kanji(patient["given_kanji"]))
        self._rows.append(row)
        self.patients = n
        if len(self._rows) >= self.index_part:
            self._flush_index()

    def close(self) -> list[str]:
        """Write what is left, the meta chunk and ``viewer.html`` (last: a disk without it has no viewer);
        the relative paths of every file written."""
        if self._closed:
            raise RuntimeError("viewer already closed")
        self._flush_summaries()
        self._flush_index()
        meta = {
            "v": VIEWER_VERSION,
            "patients": self.patients,
            "summaries": self._chunk,
            "index": self._index_parts,
            "variants": variant_subset(self._folded),
        }
        self._write_chunk(META_CHUNK, orjson.dumps(meta))
        config = {
            "format": FORMAT,
            "viewer": VIEWER_VERSION,
            "disk_id": self._disk_id,
            "wrap": self._wrap,
            "label": self._label,
            "data": DATA_DIR + "/",
            "meta": META_CHUNK,
            "index": self._index_parts,
        }
        html = self.root / HTML_NAME
        self._written.append(html)
        _write_file(html, render_html(config).encode("utf-8"))
        for d in (self.root / DATA_DIR, self.root / "viewer", self.root):
            fsync_dir(d)
        self._closed = True
        return [p.relative_to(self.root).as_posix() for p in self._written]

    def abort(self) -> None:
        """Remove every file and folder this writer made (also after ``close``)."""
        self._closed = True
        for path in reversed(self._written):
            for p in (path, path.with_name(f".{path.name}.tmp")):
                p.unlink(missing_ok=True)
        self._written = []
        for d in reversed(self._dirs):
            for leftover in d.glob(".*.tmp"):
                leftover.unlink()
            if d.exists() and not any(d.iterdir()):
                d.rmdir()
        self._dirs = []
        self._summaries, self._rows = [], []

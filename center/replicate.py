"""Replication to the mirror center in another region (DESIGN §6; docs/replication.md).

The mirror is a center home of its own: its own catalog, its own receipt key, and the same hospitals
enrolled **by its own operators** with each hospital's agent key (the trust anchor must not come from the
primary it is meant to back up: a primary taken over by an attacker could otherwise register a forged key
and push forged history to the mirror too).  The primary delivers to the mirror exactly as an agent
delivers to the primary, through the same transports (``agent.transport``): it appends each changeset to
the mirror's ``inbox/<hospital>/incoming`` and reads the mirror's signed receipts back.  The mirror's own
ingest (``center/ingest.py``, unchanged) verifies every changeset independently — signature by the
hospital's key as registered *on the mirror*, chain, sequence — before storing and cataloguing it, and
refuses anything else into its ``rejected/``.  So:

* nothing on the mirror can be deleted or overwritten from the primary (uploads only append; an SFTP
  mirror puts the primary in the same append-only, chrooted accounts the hospitals have);
* replication is incremental: the catalog remembers, per mirror key, the highest sequence the mirror
  confirmed with a valid receipt (``mirror_acks``), and a run starts after it;
* it is idempotent and resumable: an interrupted upload is completed by appending the missing bytes, a
  re-sent changeset the mirror already holds just gets its receipt again.

A mirror reachable as a directory (the drill, tests, a mirror on the same machine) is ingested in the same
run, so the report says at once what the mirror stored or refused.  An SFTP mirror ingests with its own
``center serve``; the next run collects the receipts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from agent.transport import FileTransport, SftpTransport, Transport
from center.catalog import Catalog, ChangesetRow, HospitalRow, MirrorAck
from center.config import CenterConfig, MirrorConfig, load_center_config
from center.ingest import IngestReport, ingest_hospital, ingest_lock
from center.keys import load_center_public_key, load_center_signing_key
from center.layout import CenterLayout
from hakobune.audit import HEAD_FILE, PUB_FILE, SignedHead, read_heads
from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError, HakobuneError, InputError
from hakobune.keys import VerifyKey, load_verify_key
from hakobune.naming import STREAMS, Stream, account_name, changeset_name, check_stream, receipt_name
from hakobune.receipt import matches, parse_receipt
from hakobune.sealed import ZERO_HASH, read_header

log = logging.getLogger("hakobune.center.replicate")

#: Called with a number of bytes done (uploaded, or found already at the mirror).
Tick = Callable[[int], None]


# --- the mirror as the primary sees it --------------------------------------------------------------------


class Mirror(Protocol):
    """A mirror center: its inboxes (one per hospital), its receipt key, and what it can do in-process."""

    #: Where the mirror is, for messages.
    where: str
    #: The mirror's receipt-signing key (pinned): only its receipts count.
    key: VerifyKey
    #: Whether :meth:`ingest` runs the mirror's ingest here (a directory mirror) or the mirror does.
    ingests_here: bool

    def check_hospital(self, hospital: HospitalRow) -> str | None:
        """Why the mirror cannot take ``hospital``'s changesets, or None."""
        ...

    def open_inbox(self, hospital: str) -> Transport: ...

    def ingest(self, hospital: str) -> IngestReport: ...

    def close(self) -> None: ...


class LocalMirror:
    """A mirror center home reachable as a directory.  Its ingest runs in this process, under its own
    configuration, catalog and receipt key, taking its ingest lock as its own ``center serve`` would."""

    ingests_here = True

    def __init__(self, home: Path, *, pinned: VerifyKey | None = None, bwlimit: int | None = None) -> None:
        home = Path(home)
        if not (home / "center.toml").is_file():
            raise ConfigError(
                f"mirror {home}: not a center home (no center.toml); run 'hakobune center init' there"
            )
        self.cfg = load_center_config(home)
        self.key = load_center_public_key(self.cfg.layout)
        if pinned is not None and pinned.raw != self.key.raw:
            raise ConfigError(
                f"mirror {home}: its receipt key {self.key.fingerprint} is not the pinned mirror key "
                f"{pinned.fingerprint} ([mirror] center_key)"
            )
        self.where = str(home)
        self._bwlimit = bwlimit
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog.open(self.cfg.catalog_url)
        return self._catalog

    def check_hospital(self, hospital: HospitalRow) -> str | None:
        theirs = self.catalog.get_hospital(hospital.id)
        if theirs is None:
            return (
                f"hospital {hospital.id} is not enrolled on the mirror {self.where}: its operators enroll "
                "it there with the hospital's agent key ('hakobune center enroll')"
            )
        if not theirs.active:
            return f"hospital {hospital.id} is inactive on the mirror {self.where}"
        if theirs.agent_key != hospital.agent_key:
            return (
                f"hospital {hospital.id} is enrolled on the mirror with another agent key "
                f"({VerifyKey(theirs.agent_key).fingerprint}, "
                f"here {VerifyKey(hospital.agent_key).fingerprint}): confirm the right one with the "
                "hospital before anything is copied"
            )
        return None

    def open_inbox(self, hospital: str) -> Transport:
        return FileTransport(self.cfg.layout.inbox(hospital).resolve(), bwlimit=self._bwlimit)

    def ingest(self, hospital: str) -> IngestReport:
        row = self.catalog.get_hospital(hospital)
        if row is None:
            return IngestReport()
        key = load_center_signing_key(self.cfg.layout)
        with ingest_lock(self.cfg.layout):
            return ingest_hospital(self.cfg, self.catalog, row, key)

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


class SftpMirror:
    """A mirror center behind its own sshd.  Its operators enrolled every hospital with the hospital's
    agent key and, as the account's SSH key, the primary's replication key; the primary logs in as
    ``hkb-<id>`` (chrooted to that inbox, append-only) with pinned host keys, like an agent."""

    ingests_here = False

    def __init__(
        self,
        url: str,
        *,
        key: VerifyKey,
        ssh_key: Path,
        known_hosts: Path,
        bwlimit: int | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 1.0,
    ) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or 22
        except ValueError as e:
            raise ConfigError(f"mirror {url!r}: {e}") from e
        if parts.scheme != "sftp" or not parts.hostname or parts.username or parts.path not in ("", "/"):
            raise ConfigError(
                f"mirror {url!r}: expected sftp://host[:port] (no account: each hospital's is used)"
            )
        self.host = unquote(parts.hostname)
        self.port = port
        self.where = f"sftp://{parts.netloc}"
        self.key = key
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts
        self.bwlimit = bwlimit
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def check_hospital(self, hospital: HospitalRow) -> str | None:
        return None  # the mirror's sshd and ingest decide; a refusal shows as an error or a refusal

    def open_inbox(self, hospital: str) -> Transport:
        return SftpTransport(
            self.host,
            self.port,
            account_name(hospital),
            key_file=self.ssh_key,
            known_hosts=self.known_hosts,
            bwlimit=self.bwlimit,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
        )

    def ingest(self, hospital: str) -> IngestReport:
        raise HakobuneError(f"mirror {self.where} ingests with its own 'center serve'")

    def close(self) -> None:
        pass


def open_mirror(
    spec: MirrorConfig,
    primary: CenterLayout,
    *,
    timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> Mirror:
    """The mirror ``spec`` names.  :class:`ConfigError` for a mirror that is this center itself, is not a
    center home, or whose receipt key is not the pinned one."""
    pinned = load_verify_key(spec.center_key) if spec.center_key is not None else None
    if spec.is_sftp:
        if pinned is None or spec.ssh_key is None or spec.known_hosts is None:
            raise ConfigError("an sftp mirror needs center_key, ssh_key and known_hosts in [mirror]")
        return SftpMirror(
            spec.url,
            key=pinned,
            ssh_key=spec.ssh_key,
            known_hosts=spec.known_hosts,
            bwlimit=spec.bwlimit,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )
    home = Path(spec.url)
    if home.resolve() == primary.home.resolve():
        raise ConfigError(f"mirror {home}: is this center's own home; a mirror must be another center")
    return LocalMirror(home, pinned=pinned, bwlimit=spec.bwlimit)


def configured_mirror_key(cfg: CenterConfig) -> str | None:
    """Fingerprint of the configured mirror's receipt key (the pinned one, or a directory mirror's own);
    None without a mirror or when the key cannot be read (status then shows the last mirror used)."""
    spec = cfg.mirror
    if spec is None:
        return None
    try:
        if spec.center_key is not None:
            return load_verify_key(spec.center_key).fingerprint
        if not spec.is_sftp:
            return load_center_public_key(CenterLayout(Path(spec.url))).fingerprint
    except (HakobuneError, OSError):
        return None
    return None


# --- the report -------------------------------------------------------------------------------------------


@dataclass
class StreamReplication:
    stream: str
    #: The primary's newest sequence, and the highest the mirror confirmed (everything up to it is there).
    primary: int
    mirrored: int
    sent: list[str] = field(default_factory=list)
    bytes_sent: int = 0

    @property
    def lag(self) -> int:
        return max(self.primary - self.mirrored, 0)


@dataclass
class HospitalReplication:
    hospital: str
    streams: list[StreamReplication] = field(default_factory=list)
    #: (file name, reason) of changesets the mirror refused.
    refused: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class AuditHeadCopy:
    key: str
    size: int
    time: str
    #: False when the mirror already held this very head.
    copied: bool
    path: str


@dataclass
class ReplicationReport:
    mirror: str
    mirror_key: str
    hospitals: list[HospitalReplication] = field(default_factory=list)
    audit_head: AuditHeadCopy | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(not h.refused and not h.errors for h in self.hospitals)

    @property
    def sent(self) -> int:
        return sum(len(s.sent) for h in self.hospitals for s in h.streams)

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for h in self.hospitals for s in h.streams)

    def to_json(self) -> dict[str, object]:
        return {
            "mirror": self.mirror,
            "mirror_key": self.mirror_key,
            "ok": self.ok,
            "sent": self.sent,
            "bytes_sent": self.bytes_sent,
            "hospitals": [
                {
                    "hospital": h.hospital,
                    "streams": [
                        {
                            "stream": s.stream,
                            "primary": s.primary,
                            "mirrored": s.mirrored,
                            "lag": s.lag,
                            "sent": s.sent,
                            "bytes_sent": s.bytes_sent,
                        }
                        for s in h.streams
                    ],
                    "refused": [{"name": n, "reason": r} for n, r in h.refused],
                    "errors": h.errors,
                }
                for h in self.hospitals
            ],
            "audit_head": None if self.audit_head is None else self.audit_head.__dict__,
            "notes": self.notes,
            "errors": self.errors,
        }


# --- replication ------------------------------------------------------------------------------------------


@contextmanager
def replicate_lock(layout: CenterLayout) -> Iterator[None]:
    """One replication at a time per center home (``center serve``'s schedule and an operator's run)."""
    layout.home.mkdir(parents=True, exist_ok=True)
    with open(layout.replicate_lock, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HakobuneError(f"{layout.replicate_lock}: another replication is running") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def pending_bytes(catalog: Catalog, mirror_key: str, *, recheck: bool = False) -> int:
    """Bytes of the changesets the mirror has not confirmed yet (a progress bar's total)."""
    acks = {} if recheck else catalog.mirror_acks(mirror_key)
    total = 0
    for hospital in catalog.hospitals():
        for stream in STREAMS:
            ack = acks.get((hospital.id, stream))
            total += sum(
                r.size for r in catalog.changesets(hospital.id, stream, (ack.sequence if ack else 0) + 1)
            )
    return total


def replicate(
    cfg: CenterConfig,
    catalog: Catalog,
    mirror: Mirror,
    *,
    audit: Path | None = None,
    recheck: bool = False,
    on_progress: Tick | None = None,
) -> ReplicationReport:
    """Copy every stored changeset the mirror has not confirmed, hospital by hospital and in sequence
    order, and record what the mirror confirmed.  ``recheck`` ignores the recorded confirmations and checks
    every changeset's receipt again (after the mirror was restored from a backup, say).  ``audit``: an
    audit log directory whose latest signed head is copied too (a directory mirror only).

    Failures of one hospital (transport, refusals) are reported and the others still replicate."""
    report = ReplicationReport(mirror=mirror.where, mirror_key=mirror.key.fingerprint)
    tick: Tick = on_progress or (lambda n: None)
    with replicate_lock(cfg.layout):
        acks = {} if recheck else catalog.mirror_acks(mirror.key.fingerprint)
        for hospital in catalog.hospitals():
            report.hospitals.append(_replicate_hospital(cfg, catalog, mirror, hospital, acks, tick))
        if audit is not None:
            if isinstance(mirror, LocalMirror):
                try:
                    report.audit_head = copy_audit_head(audit, mirror.cfg.layout)
                except HakobuneError as e:
                    report.errors.append(str(e))
            else:
                report.notes.append(
                    f"audit head not copied: {mirror.where} takes changesets only; copy "
                    f"{audit / HEAD_FILE} to the mirror out of band (docs/replication.md)"
                )
    return report


@dataclass
class _Stream:
    """One stream of one hospital during a run."""

    stream: Stream
    ack: MirrorAck
    rows: list[ChangesetRow]
    result: StreamReplication
    #: Rows not confirmed yet, in order (the first of them blocks everything after it from the ack).
    open_rows: list[ChangesetRow] = field(default_factory=list)
    error: str | None = None


def _replicate_hospital(
    cfg: CenterConfig,
    catalog: Catalog,
    mirror: Mirror,
    hospital: HospitalRow,
    acks: dict[tuple[str, str], MirrorAck],
    tick: Tick,
) -> HospitalReplication:
    out = HospitalReplication(hospital.id)
    streams: list[_Stream] = []
    now = datetime.now(UTC)
    for stream in STREAMS:
        ack = acks.get((hospital.id, stream)) or MirrorAck(
            hospital.id, stream, mirror.key.fingerprint, 0, ZERO_HASH, 0, now
        )
        rows = list(catalog.changesets(hospital.id, stream, ack.sequence + 1))
        last = catalog.last_changeset(hospital.id, stream)
        if last is None and (hospital.id, stream) not in acks:
            continue  # nothing of this stream, ever
        primary = last.sequence if last else 0
        streams.append(_Stream(stream, ack, rows, StreamReplication(stream, primary, ack.sequence)))
    out.streams = [s.result for s in streams]
    if not any(s.rows for s in streams):
        return out
    reason = mirror.check_hospital(hospital)
    if reason is not None:
        out.errors.append(reason)
        return out
    try:
        with mirror.open_inbox(hospital.id) as inbox:
            receipts = set(inbox.list_receipts())
            for s in streams:
                _send(cfg, mirror, inbox, receipts, s, out, tick)
            if mirror.ingests_here and any(s.result.sent for s in streams):
                ingested = mirror.ingest(hospital.id)
                for name, why in ingested.rejected:
                    out.refused.append((name.rpartition("/")[2], why))
                receipts = set(inbox.list_receipts())
            for s in streams:
                _collect(mirror, inbox, receipts, s, out)
    except HakobuneError as e:  # transport down, mirror misconfigured: this hospital waits for the next run
        out.errors.append(f"{hospital.id}: {e}")
    for s in streams:
        catalog.set_mirror_ack(
            MirrorAck(
                hospital=hospital.id,
                stream=s.stream,
                mirror=mirror.key.fingerprint,
                sequence=s.ack.sequence,
                header_hash=s.ack.header_hash,
                sent=s.ack.sent,
                updated_at=datetime.now(UTC),
                last_error=s.error,
            )
        )
    return out


def _send(
    cfg: CenterConfig,
    mirror: Mirror,
    inbox: Transport,
    receipts: set[str],
    s: _Stream,
    out: HospitalReplication,
    tick: Tick,
) -> None:
    """Confirm what the mirror already holds and upload the rest, in order, until something blocks."""
    for row in s.rows:
        if s.error is not None:
            break
        verdict = _receipt(inbox, receipts, mirror.key, row)
        if verdict == "ok":
            if s.open_rows:  # confirmed in order by _collect, after the open ones before it
                s.open_rows.append(row)
            else:
                _confirm(s, row)
            tick(row.size)
            continue
        if verdict is not None:
            s.error = verdict
            out.errors.append(verdict)
            break
        s.open_rows.append(row)
        name = changeset_name(s.stream, row.sequence)
        damaged = _damaged(cfg.layout, row)
        if damaged is not None:
            s.error = f"{name}: the primary's copy {damaged}; run 'hakobune center verify --heal-from MIRROR'"
            out.errors.append(s.error)
            break
        if not mirror.ingests_here and row.sequence <= s.ack.sent and inbox.exists(name) is None:
            # sent before, gone from the mirror's inbox, no receipt: its ingest refused it (send it again,
            # a transient refusal such as a stalled upload then heals by itself)
            why = "sent before and gone from the mirror's inbox without a receipt: refused by the mirror"
            out.refused.append((name, f"{why} (see its rejected/ folder)"))
            s.error = f"{name}: {why}"
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            tick(n - done)
            done = n

        inbox.upload(cfg.layout.home / row.path, name, progress)
        s.result.sent.append(name)
        s.result.bytes_sent += row.size
        s.ack = _replace(s.ack, sent=max(s.ack.sent, row.sequence))


def _collect(
    mirror: Mirror, inbox: Transport, receipts: set[str], s: _Stream, out: HospitalReplication
) -> None:
    """Advance the confirmation over the rows still open, in order, as far as valid receipts go."""
    for row in s.open_rows:
        verdict = _receipt(inbox, receipts, mirror.key, row)
        if verdict != "ok":
            if verdict is not None and s.error is None:
                s.error = verdict
                out.errors.append(verdict)
            break
        _confirm(s, row)
    if mirror.ingests_here:
        refused = {name for name, _ in out.refused}
        for row in s.open_rows:
            name = changeset_name(s.stream, row.sequence)
            if name in refused and s.error is None:
                s.error = f"{name}: refused by the mirror"


def _confirm(s: _Stream, row: ChangesetRow) -> None:
    s.ack = _replace(
        s.ack, sequence=row.sequence, header_hash=row.header_hash, sent=max(s.ack.sent, row.sequence)
    )
    s.result.mirrored = row.sequence


def _replace(ack: MirrorAck, **changes: object) -> MirrorAck:
    values = dict(ack.__dict__)
    values.update(changes)
    return MirrorAck(**values)


def _receipt(inbox: Transport, receipts: set[str], key: VerifyKey, row: ChangesetRow) -> str | None:
    """``"ok"`` if the mirror's signed receipt for ``row`` is there and is for exactly this changeset,
    None if there is none, else the reason it does not count."""
    stream = check_stream(row.stream)
    name = receipt_name(stream, row.sequence)
    if name not in receipts:
        return None
    data = inbox.fetch_receipt(name)
    if data is None:
        return None
    try:
        receipt = parse_receipt(data, key, f"mirror receipt {row.hospital}/{name}")
    except InputError as e:
        return str(e)
    if not matches(
        receipt, hospital=row.hospital, stream=row.stream, sequence=row.sequence, changeset=row.header_hash
    ):
        return (
            f"{row.hospital}/{changeset_name(stream, row.sequence)}: the mirror holds another changeset "
            f"under this sequence (hash {receipt.changeset[:12]}…, ours {row.header_hash[:12]}…)"
        )
    return "ok"


def _damaged(layout: CenterLayout, row: ChangesetRow) -> str | None:
    """Why the primary's stored copy cannot be sent as it is (cheap checks: size and header hash; the
    mirror verifies everything else), or None."""
    path = layout.home / row.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size != row.size:
        return f"has {size} bytes, the catalog says {row.size}"
    try:
        sealed = read_header(path)
    except InputError as e:
        return f"is damaged ({e.reason})"
    if sealed.hash != row.header_hash:
        return "has another header than the catalog records"
    return None


# --- the audit log's signed head --------------------------------------------------------------------------


def copy_audit_head(audit: Path, mirror: CenterLayout) -> AuditHeadCopy:
    """Copy the latest signed head of the audit log in ``audit`` to ``mirror``'s
    ``audit-heads/<key fingerprint>/``: appended to ``heads.log`` (every head the mirror ever got) and
    as ``head.json``.  The head must verify with the log's ``audit.pub``; a head that covers fewer entries
    than one copied before, or the same number with another root, is refused: the log was truncated or
    rewritten (``hakobune audit verify --head …/heads.log`` at the primary says where)."""
    where = str(audit / HEAD_FILE)
    try:
        data = (audit / HEAD_FILE).read_bytes().strip()
    except FileNotFoundError:
        raise InputError(where, "no signed head yet (run 'hakobune audit head')") from None
    except OSError as e:
        raise InputError(where, f"cannot read ({e.strerror})") from None
    head = SignedHead.decode(data, where)
    key = load_verify_key(audit / PUB_FILE)
    if not head.verify(key):
        raise InputError(where, f"signed head does not verify with {audit / PUB_FILE} ({key.fingerprint})")
    folder = mirror.audit_heads / key.fingerprint
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    log = folder / "heads.log"
    previous = [h for _, h in read_heads(log) if isinstance(h, SignedHead)] if log.exists() else []
    if previous:
        last = max(previous, key=lambda h: h.size)
        if head.size < last.size or (head.size == last.size and head.root != last.root):
            raise InputError(
                where,
                f"signed head covers {head.size} entries (root {head.root[:12]}…) but the mirror holds "
                f"one of {last.size} (root {last.root[:12]}…): the audit log was truncated or rewritten; "
                "not copied",
            )
        if any(h.encode() == head.encode() for h in previous):
            return AuditHeadCopy(key.fingerprint, head.size, head.time, False, str(log))
    line = head.encode() + b"\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp = folder / f".{HEAD_FILE}.tmp"
    with open(tmp, "wb") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / HEAD_FILE)
    fsync_dir(folder)
    return AuditHeadCopy(key.fingerprint, head.size, head.time, True, str(log))


# --- on a schedule ----------------------------------------------------------------------------------------


def replicate_every(cfg: CenterConfig, stop: threading.Event) -> None:
    """``center serve``'s schedule: replicate to ``[mirror]`` now and then every ``every_minutes`` until
    ``stop`` is set.  A failed run is logged and retried at the next turn; it never stops ingest."""
    spec = cfg.mirror
    if spec is None or spec.every_minutes <= 0:
        return
    while not stop.is_set():
        try:
            mirror = open_mirror(spec, cfg.layout)
            try:
                with Catalog.open(cfg.catalog_url) as catalog:
                    report = replicate(cfg, catalog, mirror, audit=spec.audit)
            finally:
                mirror.close()
            lag = sum(s.lag for h in report.hospitals for s in h.streams)
            log.info(
                "replicated to %s: sent %d changesets (%d bytes), %d sequences still behind",
                report.mirror,
                report.sent,
                report.bytes_sent,
                lag,
            )
            for h in report.hospitals:
                for name, reason in h.refused:
                    log.warning("mirror refused %s/%s: %s", h.hospital, name, reason)
                for error in h.errors:
                    log.warning("replication of %s: %s", h.hospital, error)
            for error in report.errors:
                log.warning("replication: %s", error)
        except HakobuneError as e:
            log.warning("replication to %s failed: %s", spec.url, e)
        stop.wait(spec.every_minutes * 60)

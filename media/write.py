"""``media write``: stream a release onto a helicopter disk.

:class:`DiskWriter` takes bundles one at a time (``add``), so memory stays bounded however large the
release: each bundle becomes a line of the plaintext ``bundles.ndjson``, copied once into a segment
buffer; full segments are sealed (:mod:`media.stream`) in one thread, straight into page-aligned
buffers, hashed into their parts (:mod:`media.volumes`) in another and written to the disk from those
same buffers by two more, a bounded number of segments in flight (the GIL is released while sealing,
hashing and writing, so the caller and the threads share the cores).  The offline viewer
(:mod:`media.viewer`) gets each bundle too and writes its files on volume 1.

:meth:`DiskWriter.finish` closes the payload, places parts so that every volume fits ``--max-volume``
(moving the last parts of an over-full volume 1 to later volumes once the viewer's size is known), writes
the label, README and BagIt tag files of each volume, fsyncs, and writes the signed manifest last: a
folder without ``manifest.json`` is not a disk.

:func:`write_release` is the whole command: check the release order against the restore folder, make the
disk key and passphrase, wrap the key, build the bundles (restore.export, process pool) into the writer,
sign with the center's key and record a ``media.write`` audit entry.
"""

from __future__ import annotations

import base64
import hashlib
import mmap
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from hakobune.audit import record as audit_record
from hakobune.console import progress
from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError, InputError
from hakobune.keys import RecipientPublicKey, SigningKey
from media.crypto import (
    FORMAT,
    PBKDF2_ITERATIONS,
    PassphraseWrap,
    generate_passphrase,
    new_disk_key,
    subkey,
    wrap_to_passphrase,
    wrap_to_recipient,
)
from media.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
    FileEntry,
    LogicalFile,
    PartEntry,
    canonical,
    check_path,
    sign,
)
from media.pipeline import Compressor, Readable, SealPipeline, count_newlines
from media.stream import SEGMENT_SIZE, SegmentSealer, check_segment_size
from media.viewer_summary import Stored, stored_summary
from media.volumes import (
    BAG_MANIFEST,
    BAGIT,
    BAGIT_TEXT,
    DATA_DIR,
    DEFAULT_PART_SIZE,
    FAT32_MAX_FILE,
    MIN_PART_SIZE,
    MIN_VOLUME_SIZE,
    OS_METADATA,
    README,
    RESERVED_NAMES,
    TAG_MANIFEST,
    VIEWER_HTML,
    VOLUME_LABEL,
    Layout,
    Part,
    PartWriter,
    check_out_folder,
    file_sha256,
    move_part,
    readme,
    sha256_lines,
    volume_label,
)
from restore.database import RestoreDB
from restore.fhir import ExportWindow
from restore.orders import ReleaseOrder, load_order, validate_order


class Viewer(Protocol):
    """What the disk writer needs of the offline viewer (media.viewer.ViewerWriter)."""

    def add(self, patient_id: str, bundle: bytes, summary: Stored | None = None) -> None: ...
    def close(self) -> list[str]: ...
    def abort(self) -> None: ...


@dataclass(frozen=True)
class DiskInfo:
    """What the manifest says about the disk besides its files."""

    disk_id: str
    created_at: str
    hospital: str
    order_id: str
    order_sha256: str
    recipient_id: str
    recipient_name: str
    recipient_key: RecipientPublicKey
    recipient_wrap: bytes = field(repr=False)
    passphrase_wrap: PassphraseWrap = field(repr=False)

    @property
    def label(self) -> dict[str, str]:
        """Display strings for labels and the viewer: never patient data."""
        return {
            "disk_id": self.disk_id,
            "hospital": self.hospital,
            "order": self.order_id,
            "recipient": self.recipient_name,
            "created_at": self.created_at,
        }


@dataclass
class DiskResult:
    disk_id: str
    out: Path
    roots: list[Path]
    patients: int
    plaintext_bytes: int
    disk_bytes: int
    files: int
    viewer: bool
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "disk_id": self.disk_id,
            "out": str(self.out),
            "volumes": [str(r) for r in self.roots],
            "patients": self.patients,
            "plaintext_bytes": self.plaintext_bytes,
            "disk_bytes": self.disk_bytes,
            "files": self.files,
            "viewer": self.viewer,
            "seconds": round(self.seconds, 3),
        }


def new_disk_id() -> str:
    """``HKD-XXXX-XXXX-XXXX-XXXX``: 64 random bits, readable over the phone."""
    h = secrets.token_hex(8).upper()
    return "HKD-" + "-".join(h[i : i + 4] for i in range(0, 16, 4))


def _write_small(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DiskWriter:
    """Writes one disk into ``out`` (a new or empty folder).  ``add`` each patient's bundle in order (or,
    without the viewer, ``add_ndjson`` bundles already in NDJSON), then :meth:`finish`; :meth:`abort`
    removes everything written.  ``viewer`` makes the offline viewer's writer for the volume-1 root
    (None: no viewer)."""

    def __init__(
        self,
        out: Path,
        info: DiskInfo,
        disk_key: bytes,
        *,
        max_volume: int | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        segment_size: int = SEGMENT_SIZE,
        viewer: Callable[[Path], Viewer] | None = None,
        direct: bool = True,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= DEFAULT_PART_SIZE:
            raise ConfigError(
                f"--part-size {part_size}: expected {MIN_PART_SIZE} to {DEFAULT_PART_SIZE} bytes"
            )
        if max_volume is not None and max_volume < MIN_VOLUME_SIZE:
            raise ConfigError(f"--max-volume {max_volume}: at least {MIN_VOLUME_SIZE} bytes")
        try:
            check_segment_size(segment_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        check_out_folder(out)
        self.out = out
        self.info = info
        self.max_volume = max_volume
        self.layout = Layout(out, multi=max_volume is not None)
        #: Room for payload on a volume: the rest is kept for labels, tag files and the manifest.
        self._reserve = 0 if max_volume is None else min(1 << 20, max_volume // 4)
        room = None if max_volume is None else max_volume - self._reserve
        self._created_out = not out.exists()
        self._viewer: Viewer | None = None
        self._viewer_paths: list[str] = []
        self.patients = 0
        self._open_line = False  # add_ndjson ended in the middle of a line
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.layout.root(1).mkdir(exist_ok=True)
        except OSError as e:
            raise InputError(str(out), f"cannot write there ({e.strerror})") from None
        self._parts = PartWriter(
            self.layout,
            PAYLOAD_NAME,
            part_size=min(part_size, room or part_size),
            volume_room=room,
            direct=direct,
        )
        sealer = SegmentSealer(
            subkey(disk_key, info.disk_id, f"file {PAYLOAD_NAME}"), PAYLOAD_NAME, segment_size
        )
        # The bundles are compressed; each sealed segment of that is hashed into its part and lent to
        # the writes, from where it was sealed.
        self._pipeline = Compressor(SealPipeline(sealer, partial(self._parts.write, aligned=True)))
        self._segment_size = segment_size
        try:
            self._viewer = viewer(self.layout.root(1)) if viewer is not None else None
        except BaseException:
            self.abort()
            raise

    def add(self, patient_id: str, bundle: bytes, summary: Stored | None = None) -> None:
        """One patient's serialized document Bundle (a line of ``bundles.ndjson``), and the viewer's
        summary of it when it was made where the bundle was built (restore.export with ``summarize``;
        else the viewer parses the bundle)."""
        if self._open_line:
            raise ValueError("add: add_ndjson left a line unfinished")
        self._pipeline.line(bundle.replace(b"\n", b"") if b"\n" in bundle else bundle)
        if self._viewer is not None:
            self._viewer.add(patient_id, bundle, summary)
        self.patients += 1

    def add_ndjson(self, data: bytes | bytearray | mmap.mmap) -> None:
        """Bundles already serialized as NDJSON, one patient's document Bundle a line (as ``restore export
        --ndjson`` writes ``bundles.ndjson``), in pieces of any size cut anywhere (a read buffer, or a
        window of the file mapped with ``mmap``: no copy before the segment buffer): copied as they are,
        with no work per bundle but counting the newlines.  Not with the offline viewer, which needs each
        bundle by itself (:meth:`add`)."""
        self._check_no_viewer()
        if not data:
            return
        self._pipeline.write(data)
        self.patients += count_newlines(data, 0, len(data))
        self._open_line = data[-1] != 0x0A

    def add_ndjson_file(self, f: Readable) -> None:
        """:meth:`add_ndjson` of the rest of an open file, read straight into the segment buffers: the
        kernel's copy out of its page cache is the only one (and costs no page faults, unlike a mapping)."""
        self._check_no_viewer()
        lines, last = 0, -1
        for buf, start, end in self._pipeline.read(f):
            lines += count_newlines(buf, start, end)
            last = buf[end - 1]
        self.patients += lines
        if last >= 0:
            self._open_line = last != 0x0A

    def _check_no_viewer(self) -> None:
        if self._viewer is not None:
            raise ConfigError("the offline viewer needs the bundles one by one: add(), not add_ndjson()")

    # --- finishing ----------------------------------------------------------------------------------

    def finish(self, signing_key: SigningKey) -> DiskResult:
        """Close the payload and the viewer, lay out the volumes, write their plain files and the signed
        manifest.  On any error everything written is removed."""
        try:
            if self._open_line:
                raise ValueError("add_ndjson: the bundles do not end with a newline")
            self._pipeline.finish()
            parts = self._parts.close()
            viewer_files = self._close_viewer()
            plan, volumes, manifest, signature = self._plan(parts, viewer_files, signing_key)
            self._place(parts, plan)
            self._write_volumes(volumes, manifest, signature)
        except BaseException:
            self.abort()
            raise
        return DiskResult(
            disk_id=self.info.disk_id,
            out=self.out,
            roots=[self.layout.root(v.n) for v in volumes],
            patients=self.patients,
            plaintext_bytes=self._pipeline.size,
            disk_bytes=sum(f.size for v in volumes for f in v.files)
            + len(volumes) * (len(manifest) + len(signature)),
            files=sum(len(v.files) + 2 for v in volumes),
            viewer=self._viewer is not None,
        )

    def abort(self) -> None:
        """Remove everything this writer made (the folder too, if it made it)."""
        self._pipeline.abort()
        self._parts.abort()
        if self._viewer is not None:
            self._viewer.abort()
        if self._created_out:
            shutil.rmtree(self.out, ignore_errors=True)
        elif self.out.is_dir():  # it was empty but for the OS's own folders: leave those
            for child in self.out.iterdir():
                if child.name in OS_METADATA:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def _close_viewer(self) -> list[FileEntry]:
        if self._viewer is None:
            return []
        paths = self._viewer.close()
        self._viewer_paths = paths
        root = self.layout.root(1)
        out: list[FileEntry] = []
        buf = bytearray(4 << 20)
        for p in paths:
            try:
                check_path(p)
            except ValueError as e:
                raise InputError(
                    str(root / p), f"the viewer wrote a file the manifest cannot name ({e})"
                ) from None
            if p in RESERVED_NAMES or p.split("/")[0] == DATA_DIR:
                raise InputError(str(root / p), "the viewer wrote a file where the disk keeps its own")
            size, sha = file_sha256(root / p, buf)
            if size > FAT32_MAX_FILE:
                raise InputError(str(root / p), "the viewer wrote a file too large for FAT32")
            out.append(FileEntry(p, size, sha))
        return out

    def _plan(
        self, parts: list[Part], viewer_files: list[FileEntry], key: SigningKey
    ) -> tuple[list[Part], list[_Volume], bytes, bytes]:
        """Assign parts to volumes so every volume fits ``max_volume``; render each volume's plain files
        and the manifest.  Parts of an over-full volume move, last first, to the last volume or a new
        one (only volume 1 can overflow: the viewer's size is known only now)."""
        plan = list(parts)
        for _ in range(10 * len(plan) + 10):
            m = max(p.volume for p in plan)
            volumes = [self._render_volume(n, m, plan, viewer_files) for n in range(1, m + 1)]
            manifest = canonical(self._manifest_doc(plan, volumes, key))
            signature = sign(manifest, key)
            if self.max_volume is None:
                return plan, volumes, manifest, signature
            sizes = [sum(f.size for f in v.files) + len(manifest) + len(signature) for v in volumes]
            over = next((n for n, s in enumerate(sizes, 1) if s > self.max_volume), None)
            if over is None:
                return plan, volumes, manifest, signature
            mine = [i for i, p in enumerate(plan) if p.volume == over]
            if not mine or (len(mine) == 1 and over != 1):
                need = "the offline viewer and the disk's own files" if over == 1 else "a part and the labels"
                raise InputError(
                    str(self.out),
                    f"--max-volume {self.max_volume} is too small: volume {over} needs {sizes[over - 1]} "
                    f"bytes for {need}",
                )
            i = mine[-1]
            fits_last = over != m and sizes[m - 1] + plan[i].size <= self.max_volume
            target = m if fits_last else m + 1
            plan[i] = Part(plan[i].index, target, plan[i].path, plan[i].size, plan[i].sha256)
        raise InputError(str(self.out), f"--max-volume {self.max_volume}: cannot lay out the volumes")

    def _render_volume(self, n: int, m: int, plan: list[Part], viewer_files: list[FileEntry]) -> _Volume:
        info = self.info
        own = [p for p in plan if p.volume == n]
        plain: dict[str, bytes] = {
            VOLUME_LABEL: volume_label(info.disk_id, n, m, info.label),
            README: readme(info.disk_id, m, info.label, self._viewer is not None, payload=bool(own)),
            BAGIT: BAGIT_TEXT,
            BAG_MANIFEST: sha256_lines([(p.path, p.sha256) for p in own]),
        }
        extra = viewer_files if n == 1 else []
        tags = [(path, _sha(data)) for path, data in plain.items()] + [(f.path, f.sha256) for f in extra]
        plain[TAG_MANIFEST] = sha256_lines(tags)
        files = [FileEntry(path, len(data), _sha(data)) for path, data in plain.items()]
        files += extra
        files += [FileEntry(p.path, p.size, p.sha256) for p in own]
        return _Volume(n, m, plain, sorted(files, key=lambda f: f.path))

    def _manifest_doc(self, plan: list[Part], volumes: list[_Volume], key: SigningKey) -> dict[str, Any]:
        info = self.info
        logical = LogicalFile(
            PAYLOAD_NAME,
            self._pipeline.size,
            self._pipeline.out.size,
            self._segment_size,
            tuple(PartEntry(p.path, p.volume, p.size, p.sha256) for p in sorted(plan, key=lambda p: p.index)),
        )
        return {
            "format": FORMAT,
            "disk_id": info.disk_id,
            "created_at": info.created_at,
            "hospital": info.hospital,
            "order": {"id": info.order_id, "sha256": info.order_sha256},
            "recipient": {
                "id": info.recipient_id,
                "name": info.recipient_name,
                "key_fingerprint": info.recipient_key.fingerprint,
            },
            "signer": {
                "key_fingerprint": key.public.fingerprint,
                "public_key": base64.b64encode(key.public.raw).decode("ascii"),
            },
            "counts": {"patients": self.patients, "bytes": self._pipeline.size},
            "key_wraps": {
                "recipient": {
                    "suite": info.recipient_key.suite,
                    "key_fingerprint": info.recipient_key.fingerprint,
                    "hpke": base64.b64encode(info.recipient_wrap).decode("ascii"),
                },
                "passphrase": info.passphrase_wrap.doc(),
            },
            "files": [logical.doc()],
            "viewer": VIEWER_HTML if VIEWER_HTML in self._viewer_paths else None,
            "volumes": [{"n": v.n, "m": v.m, "files": [f.doc() for f in v.files]} for v in volumes],
        }

    def _place(self, parts: list[Part], plan: list[Part]) -> None:
        for before, after in zip(parts, plan, strict=True):
            if before.volume != after.volume:
                move_part(self.layout, before, after.volume)

    def _write_volumes(self, volumes: list[_Volume], manifest: bytes, signature: bytes) -> None:
        """Plain files of each volume, fsync of every folder, then the signature and the manifest."""
        for v in volumes:
            root = self.layout.root(v.n)
            root.mkdir(exist_ok=True)
            for name, data in v.plain.items():
                _write_small(root / name, data)
            for folder, _, _ in os.walk(root):
                fsync_dir(Path(folder))
        for v in volumes:
            root = self.layout.root(v.n)
            _write_small(root / SIGNATURE_NAME, signature)
            _write_small(root / MANIFEST_NAME, manifest)
            fsync_dir(root)
        if self.layout.multi:
            fsync_dir(self.out)


@dataclass(frozen=True)
class _Volume:
    """One volume as planned: its plain files' bytes and every file it holds."""

    n: int
    m: int
    plain: dict[str, bytes]
    files: list[FileEntry]


# --- the command --------------------------------------------------------------------------------------


def check_order(
    order_path: Path, meta: dict[str, Any], *, restore: Path, policy: Path | None, now: datetime
) -> ReleaseOrder:
    """The release order that allows this disk: readable, for the restore folder's hospital, the very
    order the folder was unlocked with, unexpired; with ``policy`` also approved under it."""
    orders = load_order(order_path)
    o = orders.order
    where = str(order_path)
    hospital = str(meta.get("hospital", ""))
    if o.hospital != hospital:
        raise InputError(
            where, f"release order {o.id} is for hospital {o.hospital}, {restore} holds {hospital}"
        )
    if meta.get("order") != o.id:
        raise InputError(where, f"{restore} was unlocked with release order {meta.get('order')}, not {o.id}")
    if meta.get("order_sha256", o.sha256) != o.sha256:
        raise InputError(where, f"release order {o.id} is not the one {restore} was unlocked with (changed)")
    if now >= o.expires_at:
        raise InputError(where, f"release order {o.id} expired at {o.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    if policy is not None:
        from hakobune.custody import load_policy

        validate_order(orders, load_policy(policy), hospital=hospital, now=now, where=where)
    return o


def viewer_factory(info: DiskInfo, disk_key: bytes) -> Callable[[Path], Viewer]:
    """The offline viewer's writer for a volume-1 root (media.viewer, imported only when wanted)."""
    try:
        from media.viewer import ViewerWriter
    except ImportError as e:
        raise ConfigError(f"the offline viewer is not available ({e}); give --no-viewer") from None

    def make(root: Path) -> Viewer:
        return ViewerWriter(
            root,
            disk_key=disk_key,
            disk_id=info.disk_id,
            passphrase_wrap=info.passphrase_wrap.doc(),
            label=info.label,
        )

    return make


@dataclass
class WriteOutcome:
    """A written disk and its passphrase (shown once, never stored by Hakobune)."""

    disk: DiskResult
    passphrase: str = field(repr=False)
    order: str
    hospital: str
    recipient: str
    recipient_key: str
    signer_key: str
    skipped: list[str]

    def to_json(self, *, with_passphrase: bool) -> dict[str, Any]:
        doc = {
            **self.disk.to_json(),
            "order": self.order,
            "hospital": self.hospital,
            "recipient": self.recipient,
            "recipient_key": self.recipient_key,
            "signer_key": self.signer_key,
            "skipped": self.skipped,
        }
        if with_passphrase:
            doc["passphrase"] = self.passphrase
        return doc


def write_release(
    restore: Path,
    *,
    order: Path,
    out: Path,
    signing_key: SigningKey,
    audit: Path,
    actor: str,
    recipient_key: RecipientPublicKey | None = None,
    policy: Path | None = None,
    max_volume: int | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    segment_size: int = SEGMENT_SIZE,
    viewer: bool = True,
    window: ExportWindow | None = None,
    as_of: date | None = None,
    workers: int = 0,
    now: datetime | None = None,
    show_progress: bool = True,
    iterations: int = PBKDF2_ITERATIONS,
) -> WriteOutcome:
    """Write the released patients of the restore folder ``restore`` to a disk in ``out``; records a
    ``media.write`` audit entry (also when it fails)."""
    from restore.export import BundleExporter

    t0 = time.perf_counter()
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    hospital = ""
    try:
        with RestoreDB.open(restore) as db:
            meta = db.meta()
            hospital = str(meta.get("hospital", ""))
            o = check_order(order, meta, restore=restore, policy=policy, now=moment)
            wanted = o.recipient_key
            if recipient_key is not None and recipient_key.fingerprint != wanted.fingerprint:
                raise InputError(
                    str(order),
                    f"release order {o.id} names recipient key {wanted.fingerprint}, "
                    f"not {recipient_key.fingerprint} (--recipient-key)",
                )
            disk_id = new_disk_id()
            disk_key = new_disk_key()
            passphrase = generate_passphrase()
            info = DiskInfo(
                disk_id=disk_id,
                created_at=moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                hospital=hospital,
                order_id=o.id,
                order_sha256=o.sha256,
                recipient_id=o.recipient_id,
                recipient_name=o.recipient_name,
                recipient_key=wanted,
                recipient_wrap=wrap_to_recipient(disk_key, disk_id, wanted),
                passphrase_wrap=wrap_to_passphrase(disk_key, disk_id, passphrase, iterations),
            )
            disk = DiskWriter(
                out,
                info,
                disk_key,
                max_volume=max_volume,
                part_size=part_size,
                segment_size=segment_size,
                viewer=viewer_factory(info, disk_key) if viewer else None,
            )
            try:
                exporter = BundleExporter(
                    hospital=hospital,
                    window=window,
                    as_of=as_of,
                    workers=workers,
                    sink=disk.add,
                    generated_at=moment,
                    summarize=stored_summary if viewer else None,
                )
                with exporter, progress(show_progress) as bar:
                    task = bar.add_task("writing disk", total=db.count(), rate="")
                    for patient_id, records in db.stored():
                        exporter.write_stored(patient_id, records)
                        bar.advance(task)
                result = disk.finish(signing_key)
            except BaseException:
                disk.abort()
                raise
    except (InputError, ConfigError, OSError) as e:
        audit_record(
            audit,
            "media.write",
            actor=actor,
            hospital=hospital,
            details={"ok": False, "reason": str(e)[:200]},
        )
        raise
    result.seconds = time.perf_counter() - t0
    audit_record(
        audit,
        "media.write",
        actor=actor,
        hospital=hospital,
        details={
            "ok": True,
            "order": o.id,
            "disk_id": disk_id,
            "patients": result.patients,
            "volumes": len(result.roots),
            "bytes": result.disk_bytes,
            "recipient_key": wanted.fingerprint,
            "signer_key": signing_key.public.fingerprint,
            "viewer": result.viewer,
        },
    )
    return WriteOutcome(
        disk=result,
        passphrase=passphrase,
        order=o.id,
        hospital=hospital,
        recipient=o.recipient_name,
        recipient_key=wanted.fingerprint,
        signer_key=signing_key.public.fingerprint,
        skipped=list(exporter.report.skipped),
    )

"""``media open``: verify a disk, unwrap its key and write its bundles out, ready to import.

Nothing is decrypted from a disk that does not verify completely (:func:`media.verify.verify_disk`).  The
disk key is then unwrapped with the recipient hospital's private key or with the passphrase; a wrong one
is one clear line and nothing is written.  The payload is decrypted and decompressed streaming, part
after part, into a temporary folder beside ``OUT``: ``bundles.ndjson`` (as it was written) and
``fhir/<patient-id>.json`` (one document Bundle per patient, named by the Patient's identifier).  Every
segment must authenticate, in order, ending with the last one (:mod:`media.stream`), the zstd frames must
end with it, and the sizes (compressed and not) and number of bundles must match the manifest; only then
is the folder renamed to ``OUT``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson
import zstandard

from hakobune.audit import record as audit_record
from hakobune.durable import fsync_dir
from hakobune.errors import HakobuneError, InputError
from hakobune.keys import RecipientPrivateKey
from media.crypto import WrongPassphrase, subkey, unwrap_passphrase, unwrap_recipient
from media.manifest import LogicalFile, Manifest, TrustAnchor
from media.stream import StreamDecryptor, StreamError
from media.verify import VerifyReport, verify_disk
from media.volumes import check_out_folder

ProgressFn = Callable[[str, int, int], None]
#: Patient IDs become file names (as in restore.export): only these characters.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: No bundle is this large; a longer "line" means the payload is not what the writer made.
MAX_LINE = 256 << 20
READ_SIZE = 4 << 20


class DiskRejected(HakobuneError):
    """The disk failed verification: ``report`` lists every problem."""

    exit_code = 1

    def __init__(self, report: VerifyReport) -> None:
        n = len(report.problems)
        first = report.problems[0] if report.problems else "no trusted manifest"
        super().__init__(f"refusing to open the disk: it does not verify ({n} problem(s); first: {first})")
        self.report = report


@dataclass
class OpenResult:
    out: Path
    disk_id: str
    order: str
    hospital: str
    patients: int
    bytes: int
    unnamed: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "disk_id": self.disk_id,
            "order": self.order,
            "hospital": self.hospital,
            "patients": self.patients,
            "bytes": self.bytes,
            "unnamed": self.unnamed,
            "seconds": round(self.seconds, 3),
        }


def unwrap_disk_key(manifest: Manifest, *, key: RecipientPrivateKey | None, passphrase: str | None) -> bytes:
    """The disk key, or :class:`InputError` saying the key or passphrase is not this disk's."""
    if key is not None:
        disk_key = unwrap_recipient(manifest.recipient_wrap, manifest.disk_id, key)
        if disk_key is None:
            want = manifest.recipient.get("key_fingerprint", "?")
            raise InputError(
                "--key",
                f"disk {manifest.disk_id} was written for recipient key {want}, not {key.public.fingerprint}",
            )
        return disk_key
    if passphrase is None:
        raise InputError("--passphrase", "give --key or --passphrase")
    try:
        return unwrap_passphrase(manifest.passphrase_wrap, manifest.disk_id, passphrase)
    except WrongPassphrase:
        raise InputError(
            "--passphrase", f"wrong passphrase: it does not open disk {manifest.disk_id}"
        ) from None


def bundle_patient_id(line: bytes) -> str | None:
    """The patient ID of a document Bundle: the first usable identifier of its Patient resource."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    for entry in doc.get("entry", ()) if isinstance(doc, dict) else ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and res.get("resourceType") == "Patient":
            for ident in res.get("identifier", ()):
                value = ident.get("value") if isinstance(ident, dict) else None
                if isinstance(value, str) and _SAFE_ID.fullmatch(value):
                    return value
            return None
    return None


class _BundleFiles:
    """Splits the plaintext NDJSON into ``fhir/<patient-id>.json`` files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self.unnamed = 0
        self._pending = bytearray()

    def feed(self, piece: bytes) -> None:
        start = 0
        while (i := piece.find(b"\n", start)) >= 0:
            if self._pending:
                self._pending += piece[start:i]
                self._emit(bytes(self._pending))
                self._pending.clear()
            else:
                self._emit(piece[start:i])
            start = i + 1
        self._pending += piece[start:]
        if len(self._pending) > MAX_LINE:
            raise StreamError("a bundle line longer than any bundle: not a disk payload")

    def _emit(self, line: bytes) -> None:
        self.count += 1
        pid = bundle_patient_id(line)
        name = f"{pid}.json" if pid else f"bundle-{self.count:07d}.json"
        try:
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # the same patient twice: keep both, the second by its position
            name = f"bundle-{self.count:07d}.json"
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            pid = None
        if pid is None:
            self.unnamed += 1
        with os.fdopen(fd, "wb") as f:
            f.write(line)

    def finish(self) -> None:
        if self._pending:
            raise StreamError("the payload does not end with a complete line")


class _Sealed:
    """The sealed stream of one logical file, decrypted part after part, as a source to read the zstd
    frames from (``read``).  It ends with the stream's last segment: ``done`` once that authenticated."""

    def __init__(
        self, lf: LogicalFile, roots: dict[int, Path], dec: StreamDecryptor, advance: Callable[[int], None]
    ) -> None:
        self._pieces = self._decrypted(lf, roots, dec, advance)
        self._pending = b""
        self.size = 0
        self.done = False

    def _decrypted(
        self, lf: LogicalFile, roots: dict[int, Path], dec: StreamDecryptor, advance: Callable[[int], None]
    ) -> Iterator[bytes]:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        for part in lf.parts:
            with open(roots[part.volume] / part.path, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    yield dec.update(view[:n].tobytes())
                    advance(n)
        yield dec.finish()
        self.done = True

    def read(self, n: int = -1) -> bytes:
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._pending = piece
        if 0 <= n < len(self._pending):
            out, self._pending = self._pending[:n], self._pending[n:]
        else:
            out, self._pending = self._pending, b""
        self.size += len(out)
        return out


def _decrypt(
    manifest: Manifest, roots: dict[int, Path], disk_key: bytes, tmp: Path, advance: Callable[[int], None]
) -> tuple[int, int]:
    """Decrypt and decompress every logical file into ``tmp``; the number of bundles and of those named
    by position."""
    bundles = _BundleFiles(tmp / "fhir")
    bundles.folder.mkdir(mode=0o700)
    for lf in manifest.logical_files:
        dec = StreamDecryptor(subkey(disk_key, manifest.disk_id, f"file {lf.name}"), lf.name, lf.segment_size)
        sealed = _Sealed(lf, roots, dec, advance)
        size = 0
        with open(tmp / lf.name, "xb") as out:
            try:
                with zstandard.ZstdDecompressor().stream_reader(
                    cast(IO[bytes], sealed),  # (it only calls read)
                    read_size=READ_SIZE,
                    read_across_frames=True,
                    closefd=False,
                ) as frames:
                    while plain := frames.read(READ_SIZE):
                        size += len(plain)
                        if size > lf.size:
                            raise StreamError(f"{lf.name}: more than the {lf.size} bytes the manifest says")
                        out.write(plain)
                        bundles.feed(plain)
            except zstandard.ZstdError as e:
                raise StreamError(f"{lf.name}: the payload does not decompress ({e})") from None
            if sealed.read(1) or not sealed.done:
                raise StreamError(f"{lf.name}: data after the last zstd frame")
            out.flush()
            os.fsync(out.fileno())
        if sealed.size != lf.compressed_size:
            raise StreamError(
                f"{lf.name}: {sealed.size} compressed bytes decrypted, the manifest says {lf.compressed_size}"
            )
        if size != lf.size:
            raise StreamError(f"{lf.name}: {size} bytes decrypted, the manifest says {lf.size}")
    bundles.finish()
    return bundles.count, bundles.unnamed


def open_disk(
    dirs: Iterable[Path],
    anchor: TrustAnchor,
    out: Path,
    *,
    key: RecipientPrivateKey | None,
    passphrase: str | None,
    audit: Path,
    actor: str,
    on_progress: ProgressFn | None = None,
) -> OpenResult:
    """Verify, unwrap, decrypt into ``out``; a ``media.open`` audit entry either way (after the manifest
    is trusted).  :class:`DiskRejected` when the disk does not verify."""
    t0 = time.perf_counter()
    check_out_folder(out, "a disk is opened", allow_os=False)

    def progress(phase: str) -> Callable[[int, int], None]:
        return lambda done, total: on_progress(phase, done, total) if on_progress else None

    report = verify_disk(list(dirs), anchor, on_progress=progress("verifying"))
    manifest = report.manifest
    if not report.ok or manifest is None:
        audit_record(
            audit,
            "media.open",
            actor=actor,
            hospital=manifest.hospital if manifest else "",
            details={
                "ok": False,
                "disk_id": manifest.disk_id if manifest else None,
                "reason": f"verification failed ({len(report.problems)} problem(s))",
            },
        )
        raise DiskRejected(report)
    how = "key" if key is not None else "passphrase"
    base = {"order": manifest.order_id, "disk_id": manifest.disk_id, "unlocked_with": how}
    try:
        disk_key = unwrap_disk_key(manifest, key=key, passphrase=passphrase)
    except InputError as e:
        audit_record(
            audit,
            "media.open",
            actor=actor,
            hospital=manifest.hospital,
            details={**base, "ok": False, "reason": e.reason},
        )
        raise
    tmp = out.parent / f".{out.name}.opening-{secrets.token_hex(4)}"
    total = sum(p.size for lf in manifest.logical_files for p in lf.parts)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress("decrypting", done, total)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
        count, unnamed = _decrypt(manifest, report.roots, disk_key, tmp, advance)
        if count != manifest.patients:
            raise StreamError(f"{count} bundles decrypted, the manifest says {manifest.patients}")
        fsync_dir(tmp / "fhir")
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except (StreamError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        audit_record(
            audit,
            "media.open",
            actor=actor,
            hospital=manifest.hospital,
            details={**base, "ok": False, "reason": str(e)[:200]},
        )
        if isinstance(e, StreamError):
            raise InputError(str(report.roots.get(1, out)), f"refusing the disk: {e}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    audit_record(
        audit,
        "media.open",
        actor=actor,
        hospital=manifest.hospital,
        details={
            **base,
            "ok": True,
            "patients": count,
            "volumes": manifest.volume_count,
            "bytes": total,
        },
    )
    return OpenResult(
        out=out,
        disk_id=manifest.disk_id,
        order=manifest.order_id,
        hospital=manifest.hospital,
        patients=count,
        bytes=total,
        unnamed=unnamed,
        seconds=time.perf_counter() - t0,
    )

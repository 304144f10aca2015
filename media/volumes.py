"""Where things go on a helicopter disk: volume folders, the payload's parts, and the plain-text files
every volume carries (label, README, BagIt tag files).

Without ``--max-volume`` the output folder is the only volume's root; with it, ``OUT/volume-1``,
``OUT/volume-2`` … (copy each to its own disk).  A volume root holds::

    VOLUME.txt               "Hakobune disk <id> — volume n of m" (Japanese and English)
    README.txt               what this is and how to verify and open it (Japanese first); no patient data
    bagit.txt                BagIt declaration
    manifest-sha256.txt      "<sha256>  data/<part>" for this volume's payload (``sha256sum -c`` works)
    tagmanifest-sha256.txt   the same for the other plain files of the volume (README, viewer …)
    manifest.json, .sig      the signed manifest of the whole disk (identical on every volume)
    data/bundles.ndjson.hkm.000 …   the sealed payload, cut into parts below the FAT32 file limit
    viewer.html, viewer/     the offline viewer (volume 1 only)

The payload is written straight into its parts (temporary names until each part is complete and
fsynced); the label, README, tag files and the manifest are written last, when the number of volumes is
known.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import re
import shutil
import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from io import FileIO
from pathlib import Path

from hakobune.errors import ConfigError, InputError
from media.manifest import MANIFEST_NAME, SIGNATURE_NAME

VOLUME_LABEL = "VOLUME.txt"
README = "README.txt"
BAGIT = "bagit.txt"
BAG_MANIFEST = "manifest-sha256.txt"
TAG_MANIFEST = "tagmanifest-sha256.txt"
DATA_DIR = "data"
VIEWER_HTML = "viewer.html"
#: Names at a volume's root that only the disk writer may write.
RESERVED_NAMES = frozenset(
    {VOLUME_LABEL, README, BAGIT, BAG_MANIFEST, TAG_MANIFEST, MANIFEST_NAME, SIGNATURE_NAME}
)
PART_SUFFIX = ".hkm"
#: FAT32 cannot hold a file of 4 GiB or more; a part stays a mebibyte below.
FAT32_MAX_FILE = (4 << 30) - 1
DEFAULT_PART_SIZE = (4 << 30) - (1 << 20)
MIN_PART_SIZE = 1 << 10
MIN_VOLUME_SIZE = 64 << 10
_VOLUME_DIR = re.compile(r"volume-([1-9][0-9]{0,2})")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(I?B?)\s*", re.IGNORECASE)


def parse_size(text: str, what: str) -> int:
    """``700M``, ``4.7G``, ``25GB`` (powers of 1000, as disks are sold), ``64MiB``, ``4GiB`` (powers of
    1024) or plain bytes."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ConfigError(f"{what} {text!r}: expected a size such as 700M, 4.7G, 64MiB or 1048576")
    unit, binary = m.group(2).upper(), m.group(3).upper().startswith("I")
    power = "KMGT".index(unit) + 1 if unit else 0
    return int(float(m.group(1)) * (1024 if binary else 1000) ** power)


def volume_dir_number(path: Path) -> int | None:
    """N for a folder named ``volume-N``."""
    m = _VOLUME_DIR.fullmatch(path.name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Layout:
    """Where volume ``n`` of a disk being written lives."""

    out: Path
    multi: bool

    def root(self, n: int) -> Path:
        return self.out / f"volume-{n}" if self.multi else self.out


def part_name(logical: str, index: int) -> str:
    return f"{DATA_DIR}/{logical}{PART_SUFFIX}.{index:03d}"


@dataclass(frozen=True)
class Part:
    """A finished part: its index in the logical file, the volume it is on, its path, size and hash."""

    index: int
    volume: int
    path: str
    size: int
    sha256: str


#: Writes go out in blocks of this size, aligned for O_DIRECT, from this many buffers (one being filled,
#: the others on their way to the disk) when the data does not come in page-aligned, whole blocks.
WRITE_BUFFER = 4 << 20
WRITE_BUFFERS = 3
#: File offsets, lengths and memory addresses of ``O_DIRECT`` writes are multiples of this.
BLOCK = 4096
#: At most this much in one write call: large enough for several of the disk's largest requests at
#: once (a direct write returns only when all are done).
WRITE_BATCH = 16 << 20
_MAX_IOV = 256
#: Write calls at once (``io`` threads): the disk gets the next batch while the last is finishing.
WRITERS = 2


class AlignedWriter:
    """A new file written in large block-aligned pieces, with ``O_DIRECT`` where the file system allows
    it (ext4, XFS, vfat and exFAT do; tmpfs does not): the ciphertext then goes from our memory to the
    disk without a copy into the page cache, which on a virtual machine can cost more CPU than sealing
    it (docs/media.md, Throughput), and the cache is not flooded with a disk's worth of data nobody will
    read here.  A direct write returns only when the disk has the data, so the writes are made by the
    ``io`` threads, each at the offset its batch was given when it was taken from the queue, while the
    caller goes on.

    Data lent with ``aligned`` (it starts at a page boundary and stays untouched until the writes
    :meth:`write` returns are done: the disk writer seals each segment into such memory) is written from
    where it is, in whole blocks, as long as the file so far is whole blocks; anything else is copied into
    page-aligned buffers that go out when full.  The unaligned tail is written with ``O_DIRECT`` cleared.
    ``close`` fsyncs."""

    def __init__(
        self, path: Path, buffers: list[mmap.mmap], io: ThreadPoolExecutor, *, direct: bool = True
    ) -> None:
        self.direct = False
        fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        if fd < 0:  # (a file system without O_DIRECT may have created the file before refusing)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.fd = fd
        self._bufs = buffers
        self._io = io
        self._writing: list[Future[None] | None] = [None] * len(buffers)
        #: Pieces for the ``io`` threads, in file order, each with the future it completes when written,
        #: and the file offset of the first (under the lock).
        self._queue: deque[tuple[memoryview, Future[None]]] = deque()
        self._lock = threading.Lock()
        self._offset = 0
        #: Every piece queued and not yet seen written (close and abort wait for them all).
        self._submitted: list[Future[None]] = []
        self._cur = 0
        self._fill = 0

    def write(self, data: bytes | memoryview, *, aligned: bool = False) -> list[Future[None]]:
        """Queue ``data`` for the file; the writes that still read from ``data`` itself (only when lent
        ``aligned``: the caller must not change it until they are done)."""
        view = memoryview(data)
        lent: list[Future[None]] = []
        if aligned and self._fill == 0 and len(view) >= BLOCK:
            whole = len(view) - len(view) % BLOCK
            lent.append(self._submit(view[:whole]))
            view = view[whole:]
        size = len(self._bufs[0])
        while view:
            buf = self._bufs[self._cur]
            n = min(len(view), size - self._fill)
            buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == size:
                self._writing[self._cur] = self._submit(memoryview(buf))
                self._cur = (self._cur + 1) % len(self._bufs)
                self._fill = 0
                pending, self._writing[self._cur] = self._writing[self._cur], None
                if pending is not None:  # that buffer is still on its way to the disk
                    pending.result()
        return lent

    def _submit(self, view: memoryview) -> Future[None]:
        """Queue ``view`` for the ``io`` threads; done when it is written."""
        self._submitted = [f for f in self._submitted if not f.done() or f.exception()]
        written: Future[None] = Future()
        with self._lock:
            self._queue.append((view, written))
        self._submitted.append(written)
        self._io.submit(self._write_queued)
        return written

    def _write_queued(self) -> None:
        """(an ``io`` thread) Write what is queued, in one call at its place in the file: the pieces that
        piled up while the last writes were on their way go out together (up to :data:`WRITE_BATCH`),
        as large requests, several in flight at once.  (Each piece queued asks for a call; the later ones
        may find nothing left.)"""
        batch: list[tuple[memoryview, Future[None]]] = []
        with self._lock:
            offset = size = self._offset
            while self._queue and size - offset < WRITE_BATCH and len(batch) < _MAX_IOV:
                batch.append(self._queue.popleft())
                size += len(batch[-1][0])
            self._offset = size
        if not batch:
            return
        try:
            self._write_all([view for view, _ in batch], offset)
        except BaseException as e:
            for _, written in batch:
                written.set_exception(e)
        else:
            for _, written in batch:
                written.set_result(None)

    def _write_all(self, views: list[memoryview], offset: int) -> None:
        while views:
            n = os.pwritev(self.fd, views, offset)
            offset += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if n:
                views[0] = views[0][n:]

    def _drain(self) -> BaseException | None:
        """Wait for every write in flight; the first error one of them raised."""
        error: BaseException | None = None
        for pending in self._submitted:
            try:
                pending.result()
            except BaseException as e:
                error = error or e
        self._submitted = []
        self._writing = [None] * len(self._bufs)
        return error

    def close(self) -> None:
        if (error := self._drain()) is not None:
            raise error
        with memoryview(self._bufs[self._cur]) as buf:
            aligned = self._fill - self._fill % BLOCK
            if aligned:
                self._write_all([buf[:aligned]], self._offset)
            if aligned < self._fill:
                if self.direct:
                    fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self._write_all([buf[aligned : self._fill]], self._offset + aligned)
        self._fill = 0
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> None:
        if self.fd >= 0:
            self._drain()  # no write may still use the descriptor once it is closed (errors: moot)
            os.close(self.fd)
            self.fd = -1


class PartWriter:
    """Writes a byte stream (the sealed payload) into parts of at most ``part_size`` bytes (whole 4 KiB
    blocks when larger than one), filling one volume's payload room (``volume_room``) before starting
    the next.  A part is written under a temporary name, fsynced when full and renamed; its SHA-256 is
    computed as it is written.  Called from one thread at a time; :meth:`close` or :meth:`abort` ends
    its writing thread."""

    def __init__(
        self, layout: Layout, logical: str, *, part_size: int, volume_room: int | None, direct: bool = True
    ) -> None:
        self.layout = layout
        self.direct = direct
        self._buffers = [mmap.mmap(-1, WRITE_BUFFER) for _ in range(WRITE_BUFFERS)]
        self._io = ThreadPoolExecutor(WRITERS, thread_name_prefix="media-io")
        self.logical = logical
        self.part_size = part_size
        self.volume_room = volume_room
        self.parts: list[Part] = []
        self._used: dict[int, int] = {}
        self._volume = 1
        self._file: AlignedWriter | None = None
        self._tmp: Path | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._limit = 0

    def _open_next(self) -> None:
        index = len(self.parts)
        limit = self.part_size
        if self.volume_room is not None:
            left = self.volume_room - self._used.get(self._volume, 0)
            if left < min(self.part_size, 64 << 10):
                self._volume += 1
                left = self.volume_room
            limit = min(limit, left)
        if limit > BLOCK:  # whole blocks, so that the next part too starts where direct writes can
            limit -= limit % BLOCK
        root = self.layout.root(self._volume)
        data = root / DATA_DIR
        data.mkdir(parents=True, exist_ok=True)
        final = root / part_name(self.logical, index)
        self._tmp = final.with_name(f".{final.name}.tmp")
        self._file = AlignedWriter(self._tmp, self._buffers, self._io, direct=self.direct)
        self._hash = hashlib.sha256()
        self._size = 0
        self._limit = limit

    def _close_current(self) -> None:
        assert self._file is not None and self._tmp is not None
        self._file.close()
        self._file = None
        index = len(self.parts)
        path = part_name(self.logical, index)
        os.replace(self._tmp, self.layout.root(self._volume) / path)
        self._tmp = None
        self.parts.append(Part(index, self._volume, path, self._size, self._hash.hexdigest()))
        self._used[self._volume] = self._used.get(self._volume, 0) + self._size

    def write(self, data: bytes | memoryview, *, aligned: bool = False) -> list[Future[None]]:
        """Hash ``data`` into its part(s) and queue it for the disk.  With ``aligned`` it is lent, as to
        :meth:`AlignedWriter.write`: the writes returned still read from it."""
        view = memoryview(data)
        lent: list[Future[None]] = []
        at = 0  # where ``view`` starts in ``data`` (a piece after a part's end is aligned only at a block)
        while view:
            if self._file is None:
                self._open_next()
            assert self._file is not None
            take = view[: self._limit - self._size]
            self._hash.update(take)
            lent += self._file.write(take, aligned=aligned and at % BLOCK == 0)
            self._size += len(take)
            at += len(take)
            view = view[len(take) :]
            if self._size >= self._limit:
                self._close_current()
        return lent

    def close(self) -> list[Part]:
        """Finish the last part; every part, in order."""
        if self._file is not None:
            self._close_current()
        self._io.shutdown()
        return list(self.parts)

    def abort(self) -> None:
        if self._file is not None:
            self._file.abort()
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._io.shutdown(cancel_futures=True)


def move_part(layout: Layout, part: Part, volume: int) -> Part:
    """Move a finished part to another volume folder (a rename when both are on one file system)."""
    src = layout.root(part.volume) / part.path
    dst = layout.root(volume) / part.path
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dst.with_name(f".{dst.name}.tmp")
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        src.unlink()
    return replace(part, volume=volume)


def file_sha256(
    path: Path, buffer: bytearray | None = None, on_bytes: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in pieces of ``buffer``'s size (4 MiB by default);
    ``on_bytes(n)`` after each piece.  A file larger than two pieces is read ahead by a second thread
    into a second buffer while this one hashes (both release the GIL): the time is that of the slower."""
    buf = buffer if buffer is not None else bytearray(4 << 20)
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size <= 2 * len(buf):
            reading = _read_pieces(f, memoryview(buf))
        else:
            reading = _read_ahead(f, [memoryview(buf), memoryview(bytearray(len(buf)))])
        with closing(reading) as pieces:  # (a read in flight ends before the file closes)
            for piece in pieces:
                h.update(piece)
                size += len(piece)
                if on_bytes is not None:
                    on_bytes(len(piece))
    return size, h.hexdigest()


def _read_pieces(f: FileIO, view: memoryview) -> Generator[memoryview]:
    while n := f.readinto(view):
        yield view[:n]


def _read_ahead(f: FileIO, views: list[memoryview]) -> Generator[memoryview]:
    """The file's pieces, each read (by a thread) while the one before is being used."""
    with ThreadPoolExecutor(1, thread_name_prefix="media-read") as reader:
        i = 0
        pending = reader.submit(f.readinto, views[i])
        while n := pending.result():
            piece = views[i][:n]
            i ^= 1
            pending = reader.submit(f.readinto, views[i])
            yield piece


def sha256_lines(entries: list[tuple[str, str]]) -> bytes:
    """``<sha256>  <path>`` lines (the format of ``sha256sum`` and BagIt manifests)."""
    return "".join(f"{sha}  {path}\n" for path, sha in entries).encode("utf-8")


BAGIT_TEXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"


def volume_label(disk_id: str, n: int, m: int, label: dict[str, str]) -> bytes:
    """``VOLUME.txt``: which disk and which volume, and nothing about any patient."""
    return (
        f"方舟（Hakobune）ディスク {disk_id} — 全{m}巻中 第{n}巻\n"
        f"Hakobune disk {disk_id} — volume {n} of {m}\n"
        "\n"
        f"病院 / hospital: {label.get('hospital', '')}\n"
        f"開示指示 / release order: {label.get('order', '')}\n"
        f"受領病院 / recipient: {label.get('recipient', '')}\n"
        f"作成日時 / created: {label.get('created_at', '')}\n"
    ).encode()


def readme(disk_id: str, m: int, label: dict[str, str], viewer: bool, payload: bool = True) -> bytes:
    """``README.txt`` (Japanese first, then English): what the disk is, how to verify and open it, and
    that the passphrase travels separately.  No patient data.  ``payload``: this volume holds parts of
    the payload (else its ``manifest-sha256.txt`` is empty, which ``sha256sum -c`` refuses: the quick
    check names only the tag manifest)."""
    quick = "sha256sum -c manifest-sha256.txt / " if payload else ""
    quick_en = "sha256sum -c manifest-sha256.txt; " if payload else ""
    vols = f"全{m}巻（VOLUME.txt に「第n巻」）" if m > 1 else "1巻"
    volumes_en = f"{m} volumes (see VOLUME.txt on each)" if m > 1 else "one volume"
    viewer_ja = (
        "■ パソコンだけで見る（インストール不要）\n"
        "  第1巻の viewer.html をブラウザ（Chrome / Edge）で開き、パスフレーズを入力します。\n"
        "  患者を氏名・カナ・生年月日で検索し、要約を表示・印刷できます。ネットワークは使いません。\n\n"
        if viewer
        else ""
    )
    viewer_en = (
        "Without installing anything: open viewer.html (volume 1) in Chrome or Edge and type the\n"
        "passphrase; search patients and read or print their summaries. No network is used.\n\n"
        if viewer
        else ""
    )
    text = (
        "方舟（Hakobune）災害時医療情報ディスク\n"
        "======================================\n\n"
        f"ディスクID: {disk_id}    構成: {vols}\n"
        f"提供元病院: {label.get('hospital', '')}    開示指示: {label.get('order', '')}\n"
        f"受領病院: {label.get('recipient', '')}    作成: {label.get('created_at', '')}\n\n"
        "このディスクには、開示指示に基づいて提供された患者さんの診療情報（FHIR 形式）が暗号化されて\n"
        "入っています。開くには、受領病院の秘密鍵、または別の経路（電話・別便など）で届く\n"
        "パスフレーズが必要です。パスフレーズはこのディスクには書かれていません。ディスクと同じ袋に\n"
        "入れないでください。紛失した場合は、直ちに提供元と方舟センターに連絡してください。\n\n"
        "■ 確認（出発前と到着時）\n"
        "  hakobune media verify <全巻のフォルダ> --center-key center.pub\n"
        "  署名・全ファイルの SHA-256・巻の欠落を確認します。簡易確認は各巻で\n"
        f"  {quick}sha256sum -c tagmanifest-sha256.txt\n\n"
        "■ 取り込み\n"
        "  hakobune media open <全巻のフォルダ> --center-key center.pub --passphrase --out 出力先\n"
        "  （受領病院の秘密鍵なら --key hospital.key）。確認に失敗したディスクは開きません。\n"
        "  出力先に fhir/<患者ID>.json（患者ごとの文書 Bundle）と bundles.ndjson ができます。\n\n"
        f"{viewer_ja}"
        "----------------------------------------------------------------------\n\n"
        "Hakobune disaster medical-records disk\n\n"
        f"Disk {disk_id}, {volumes_en}. Released by hospital {label.get('hospital', '')}\n"
        f"under order {label.get('order', '')} to {label.get('recipient', '')},\n"
        f"written {label.get('created_at', '')}.\n\n"
        "The patients' records on this disk (FHIR document Bundles) are encrypted. Opening them needs the\n"
        "recipient hospital's private key or the passphrase, which travels by another channel (phone,\n"
        "separate courier) and is not on this disk. Report a lost disk to the releasing hospital and the\n"
        "Hakobune center at once.\n\n"
        "Verify (before take-off and on arrival):\n"
        "  hakobune media verify <every volume folder> --center-key center.pub\n"
        f"  (quick check per volume: {quick_en}sha256sum -c tagmanifest-sha256.txt)\n"
        "Open (refused unless everything verifies):\n"
        "  hakobune media open <every volume folder> --center-key center.pub --passphrase --out DIR\n"
        "  (or --key hospital.key, the recipient hospital's private key).\n"
        "  DIR receives fhir/<patient-id>.json and bundles.ndjson.\n"
        f"{viewer_en}"
    )
    return text.encode()


#: What operating systems put on a disk by themselves (Windows on any USB disk, macOS on any it mounts).
#: Verification notes these at a volume's root instead of failing the disk; ``open`` never reads them.
OS_METADATA = frozenset(
    {"System Volume Information", "$RECYCLE.BIN", ".Spotlight-V100", ".fseventsd", ".Trashes", ".DS_Store"}
)


def check_out_folder(out: Path, what: str = "a disk is written", *, allow_os: bool = True) -> None:
    """The output folder must be new or empty (but for what the OS keeps on a fresh disk's root)."""
    if out.exists():
        if not out.is_dir():
            raise InputError(str(out), "not a folder")
        if any(not (allow_os and p.name in OS_METADATA) for p in out.iterdir()):
            raise InputError(str(out), f"not empty: {what} into a new or empty folder")

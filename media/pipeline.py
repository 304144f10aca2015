"""The disk writer's payload pipeline: bundles in, compressed and sealed segments out, on both cores.

The payload (``bundles.ndjson``) goes through two stages, each cutting what it is given into blocks held in
a few round-robin buffers (:class:`Blocks`):

1. :class:`Compressor` cuts the NDJSON into blocks of :data:`COMPRESS_BLOCK` bytes and compresses each
   into one zstd frame, in a pool of threads (zstd releases the GIL), handing the frames on in order;
2. :class:`SealPipeline` cuts the compressed stream into segments and seals them (:mod:`media.stream`) in
   a thread, straight into page-aligned buffers, which a second thread hands in order to the sink (the
   parts writer, which hashes them and writes them to the disk from there, media.volumes).

Memory is bounded by the buffers; an error in any thread reaches the caller at its next hand-over, at the
latest in ``finish``.
"""

from __future__ import annotations

import mmap
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Protocol

import zstandard

from media.stream import TAG_BYTES, SegmentSealer

#: Plaintext segment buffers: the caller fills one while the others wait to be sealed.
PLAIN_SLOTS = 3
#: Ciphertext segment buffers (page-aligned), this much in all (eight with 4 MiB segments): each holds a
#: sealed segment until the disk has it.  While the disk takes one batch of them, the next piles up and
#: goes out in one write (media.volumes): room for two batches.
SEALED_MEMORY = 32 << 20

#: The payload's compression (media.manifest.COMPRESSION_SCHEME): zstd at this level, one frame per
#: block of this many bytes, this many blocks at once (docs/media.md, Compression).
COMPRESS_LEVEL = 1
COMPRESS_BLOCK = 4 << 20
COMPRESS_THREADS = 2

#: What takes each sealed segment, in order: it may go on reading its argument until the writes it
#: returns are done (None: it is done with it when it returns).
Sink = Callable[[memoryview], Iterable[Future[None]] | None]


class Readable(Protocol):
    """A file opened for reading without Python's buffer (``open(path, "rb", buffering=0)``)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Blocks:
    """Cuts a byte stream into blocks of ``block`` bytes, copied once into round-robin buffers (or read
    from a file straight into them: :meth:`read`); a subclass's :meth:`_emit` takes each full block once
    more bytes follow it (and the rest at ``finish``, as the last one), and moves to the next buffer
    (:meth:`_next_buffer`) once it may be filled again.  ``size``: the bytes written so far."""

    def __init__(self, block: int, buffers: int) -> None:
        self._seg = block
        self._plains = [bytearray(block) for _ in range(max(2, buffers))]
        self._p = 0
        self._plain = self._plains[0]
        self._fill = 0
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        n, fill = len(data), self._fill
        if fill + n <= self._seg:  # the common case: a bundle fits in the current block
            self._plain[fill : fill + n] = data
            self._fill = fill + n
            self.size += n
            return
        view = memoryview(data)
        while view:
            if self._fill == self._seg:  # full, and more follows: not the last block
                self._emit(last=False)
            take = min(self._seg - self._fill, len(view))
            self._plain[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
        self.size += n

    def line(self, data: bytes) -> None:
        """``data`` and a newline (one bundle of the NDJSON payload)."""
        n, fill = len(data), self._fill
        if fill + n < self._seg:
            plain = self._plain
            plain[fill : fill + n] = data
            plain[fill + n] = 10  # b"\n"
            self._fill = fill + n + 1
            self.size += n + 1
        else:
            self.write(data)
            self.write(b"\n")

    def read(self, f: Readable) -> Iterator[tuple[bytearray, int, int]]:
        """Read ``f`` to its end straight into the block buffers (``readinto`` releases the GIL; no copy
        but the kernel's).  Yields each piece read as ``(buffer, start, end)``, for the caller to look at
        (count its lines) before the next read, which may hand the buffer on."""
        while True:
            if self._fill == self._seg:
                self._emit(last=False)
            plain, fill = self._plain, self._fill
            n = f.readinto(memoryview(plain)[fill:])
            if not n:
                return
            self._fill = fill + n
            self.size += n
            yield plain, fill, fill + n

    def _emit(self, *, last: bool) -> None:
        raise NotImplementedError

    def _next_buffer(self) -> int:
        """Move to the next buffer; its index (the subclass waits until it may be filled again)."""
        self._p = p = (self._p + 1) % len(self._plains)
        self._plain, self._fill = self._plains[p], 0
        return p


class SealPipeline(Blocks):
    """Cut a byte stream into segments and seal them with bounded memory, on both cores: a sealing thread
    encrypts each segment into a page-aligned ciphertext buffer (``encrypt_into`` releases the GIL) and a
    hashing thread hands that, in order, to ``sink`` (the parts writer hashes it and queues it for the
    disk from that very buffer, without a copy).

    Both kinds of buffer are used round-robin.  A plaintext buffer is filled again once its segment is
    sealed; a ciphertext buffer is sealed into again once ``sink`` has returned for it and the writes it
    returned are done.  So the caller is never more than ``sealed`` segments (ciphertext buffers; by
    default :data:`SEALED_MEMORY`'s worth) ahead of the disk, and an error in any thread reaches it there
    (:meth:`_wait_plain`, :meth:`_wait_sealed`), at the latest in :meth:`finish`."""

    def __init__(
        self, sealer: SegmentSealer, sink: Sink, *, plain: int = PLAIN_SLOTS, sealed: int | None = None
    ) -> None:
        super().__init__(sealer.segment_size, plain)
        self._sealer = sealer
        self._sink = sink
        seg = sealer.segment_size
        stride = -(-(seg + TAG_BYTES) // mmap.PAGESIZE) * mmap.PAGESIZE  # each starts on a page
        if sealed is None:  # (at most 32: the small segments of tests need no more)
            sealed = min(32, SEALED_MEMORY // stride)
        self._memory = memory = mmap.mmap(-1, stride * max(2, sealed))
        self._sealed = [memoryview(memory)[i : i + seg + TAG_BYTES] for i in range(0, len(memory), stride)]
        #: The sealing of each plaintext buffer's segment; the hashing of each ciphertext buffer's, which
        #: returns the writes still reading it.
        self._sealing: list[Future[None] | None] = [None] * len(self._plains)
        self._storing: list[Future[Iterable[Future[None]] | None] | None] = [None] * len(self._sealed)
        self._s = 0
        self._index = 0
        self._sealer_thread = ThreadPoolExecutor(1, thread_name_prefix="media-seal")
        self._hasher_thread = ThreadPoolExecutor(1, thread_name_prefix="media-hash")

    def _emit(self, *, last: bool) -> None:
        """Seal and hand on the current segment in the threads; move to the next plaintext buffer once
        its segment is sealed."""
        p, s, size = self._p, self._s, self._fill
        self._wait_sealed(s)  # its last segment is on the disk: it may be sealed into again
        out = self._sealed[s][: size + TAG_BYTES]
        sealing = self._sealer_thread.submit(
            self._sealer.seal_into, self._index, memoryview(self._plains[p])[:size], out, last
        )
        self._sealing[p] = sealing
        self._storing[s] = self._hasher_thread.submit(self._store, sealing, out)
        self._index += 1
        self._s = (s + 1) % len(self._sealed)
        self._wait_plain(self._next_buffer())

    def _store(self, sealing: Future[None], ciphertext: memoryview) -> Iterable[Future[None]] | None:
        sealing.result()
        return self._sink(ciphertext)

    def _wait_plain(self, p: int) -> None:
        """Until plaintext buffer ``p``'s segment is sealed (raising what sealing it raised)."""
        pending, self._sealing[p] = self._sealing[p], None
        if pending is not None:
            pending.result()

    def _wait_sealed(self, s: int) -> None:
        """Until ciphertext buffer ``s``'s segment is written (raising what sealing, hashing or writing
        it raised)."""
        pending, self._storing[s] = self._storing[s], None
        if pending is not None:
            for write in pending.result() or ():
                write.result()

    def finish(self) -> int:
        """Seal the rest as the last segment (possibly empty), wait for everything; the plaintext size."""
        try:
            self._emit(last=True)
            for i in range(len(self._sealed)):  # in order: the first error is the earliest segment's
                self._wait_sealed((self._s + i) % len(self._sealed))
        finally:
            self._shutdown()
        return self.size

    def _shutdown(self) -> None:
        for pool in (self._sealer_thread, self._hasher_thread):
            pool.shutdown(wait=True, cancel_futures=True)
        for view in self._sealed:
            view.release()
        with suppress(BufferError):  # (a write still reading it: the memory goes with the last view)
            self._memory.close()

    def abort(self) -> None:
        self._shutdown()
        self._sealing = [None] * len(self._plains)
        self._storing = [None] * len(self._sealed)


class Compressor(Blocks):
    """Compress a byte stream into ``out`` (the seal pipeline) as zstd frames, one per block of ``block``
    bytes (the last may be shorter; none for an empty stream), ``threads`` blocks at a time.  Each frame
    records its content size.  The frames go to ``out`` in order, from the caller's thread (a copy of a
    twentieth of the bytes, for NDJSON bundles).

    Independent frames cost almost nothing here (a 4 MiB block holds hundreds of bundles: about 2% larger
    than one frame for the whole stream) and let every core compress; any zstd decoder reads them as one
    stream.

    Bundles given one by one (:meth:`line`) are not copied by the caller: a block of them is a list of
    the bundles themselves (and their newlines), joined where it is compressed, so that the caller's
    thread, busy with a Python call a bundle, does no more than that.  Other bytes (:meth:`write`,
    :meth:`read`) are copied into block buffers, each filled again once its frame is made.  Either way a
    block ends at the same byte, so the frames are the same however the stream was fed."""

    def __init__(
        self,
        out: SealPipeline,
        *,
        level: int | None = None,
        block: int | None = None,
        threads: int | None = None,
        buffers: int | None = None,
    ) -> None:
        threads = threads or COMPRESS_THREADS
        super().__init__(block or COMPRESS_BLOCK, buffers or threads + 2)
        self.out = out
        self._level = COMPRESS_LEVEL if level is None else level
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="media-zstd")
        #: Frames being made, in stream order, each with its block buffer (-1: a list of bundles).
        self._frames: deque[tuple[int, Future[bytes]]] = deque()
        #: The current block when it is bundles lent by :meth:`line` (then the buffer is empty), and
        #: their bytes.
        self._lent: list[bytes | memoryview] = []
        self._lent_size = 0

    def _cctx(self) -> zstandard.ZstdCompressor:
        cctx: zstandard.ZstdCompressor | None = getattr(self._local, "cctx", None)
        if cctx is None:  # (a compression context serves one thread at a time)
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=self._level, write_content_size=True)
        return cctx

    def _compress(self, block: bytes | memoryview) -> bytes:
        frame: bytes = self._cctx().compress(block)
        return frame

    def _compress_lent(self, pieces: list[bytes | memoryview]) -> bytes:
        return self._compress(b"".join(pieces))  # (joined here, in the compressing thread)

    def line(self, data: bytes) -> None:
        if self._fill:  # (the block so far was copied: go on copying)
            super().line(data)
            return
        block = self._seg
        n = len(data) + 1
        self.size += n
        if self._lent_size + n < block:
            lent = self._lent
            lent.append(data)
            lent.append(b"\n")
            self._lent_size += n
            return
        for piece in (memoryview(data), memoryview(b"\n")):  # (the block ends in this line)
            while piece:
                if self._lent_size == block:  # full, and more follows
                    self._emit(last=False)
                take = min(len(piece), block - self._lent_size)
                self._lent.append(piece[:take])
                self._lent_size += take
                piece = piece[take:]

    def write(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        self._unlend()
        super().write(data)

    def read(self, f: Readable) -> Iterator[tuple[bytearray, int, int]]:
        self._unlend()
        return super().read(f)

    def _unlend(self) -> None:
        """Copy the bundles lent so far into the block buffer (when other bytes follow them)."""
        if self._lent:
            pieces, size = self._lent, self._lent_size
            self._lent, self._lent_size = [], 0
            self._plain[:size] = b"".join(pieces)
            self._fill = size

    def _emit(self, *, last: bool) -> None:
        frames = self._frames
        if self._lent:
            frames.append((-1, self._pool.submit(self._compress_lent, self._lent)))
            self._lent, self._lent_size = [], 0
            p = self._p
        else:
            if self._fill:
                block = memoryview(self._plains[self._p])[: self._fill]
                frames.append((self._p, self._pool.submit(self._compress, block)))
            p = self._next_buffer()
        # hand on the frames made so far, in order; wait for this buffer's own, and while as many blocks
        # are on their way as there are buffers
        while frames and (frames[0][1].done() or frames[0][0] == p or len(frames) >= len(self._plains)):
            self.out.write(frames.popleft()[1].result())

    def finish(self) -> int:
        """Compress and hand on the rest, finish ``out``; the uncompressed size."""
        try:
            self._emit(last=True)
            while self._frames:
                self.out.write(self._frames.popleft()[1].result())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.out.finish()
        return self.size

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._frames.clear()
        self._lent = []
        self.out.abort()


def count_newlines(data: bytes | bytearray | mmap.mmap, start: int, end: int) -> int:
    """The newlines in ``data[start:end]``, without a copy (``find`` is memchr: with lines of kilobytes
    much faster than ``count``)."""
    n, i = 0, data.find(b"\n", start, end)
    while i >= 0:
        n += 1
        i = data.find(b"\n", i + 1, end)
    return n

"""What every transport offers the agent, and the pieces the transports share.

A transport moves sealed changesets into the hospital's inbox at the center and brings signed receipts
back.  The inbox holds two directories: ``incoming/`` (the agent writes here, append-only) and
``receipts/`` (the center writes here, the agent only reads).  Uploads go straight to their final name,
because the hospital's SFTP account may not rename: an interrupted upload leaves a prefix of the file
there, and the next upload of the same file appends the missing bytes.  The center knows a changeset is
complete when it verifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from hakobune.errors import HakobuneError

#: Bytes read from the local file and written to the inbox at a time: the sender's memory stays bounded.
CHUNK_SIZE = 256 * 1024

#: A receipt is a small signed document; anything bigger is not one and is not read into memory.
MAX_RECEIPT_SIZE = 1024 * 1024

Progress = Callable[[int], None]
"""Called with the number of bytes of the local file the inbox holds so far (ends at the file size)."""


class TransportError(HakobuneError):
    """The inbox cannot be reached or refused what was asked; the message says where and why."""


class Transport(Protocol):
    """The hospital's inbox at the center, seen from the agent."""

    def upload(self, local: Path, name: str, on_progress: Progress | None = None) -> None:
        """Make ``incoming/<name>`` equal to ``local``.

        Absent: written from byte 0.  Shorter than ``local``: the missing bytes are appended (resume).
        Same size: nothing to do.  Larger: :class:`TransportError`.
        """
        ...

    def exists(self, name: str) -> int | None:
        """Size of ``incoming/<name>``, or None if there is no such file."""
        ...

    def fetch_receipt(self, name: str) -> bytes | None:
        """Bytes of ``receipts/<name>``, or None if the center has not written it (yet)."""
        ...

    def list_receipts(self) -> list[str]:
        """Sorted names of the regular files in ``receipts/`` (names starting with a dot are skipped)."""
        ...

    def close(self) -> None:
        """Release the connection; further calls are errors.  Closing twice is harmless."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def check_remote_name(name: str) -> str:
    """``name`` if it is a plain file name the inbox may hold, else :class:`TransportError`."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or len(name.encode()) > 255
        or any(c in name for c in "/\\\0")
        or not name.isprintable()
    ):
        raise TransportError(f"bad inbox file name {name!r}: expected a plain file name")
    return name


def local_size(local: Path) -> int:
    """Size of the regular file ``local``, or :class:`TransportError` naming it."""
    try:
        st = local.stat()
    except OSError as e:
        raise TransportError(f"{local}: cannot read the file to upload: {e.strerror or e}") from e
    if not local.is_file():
        raise TransportError(f"{local}: not a regular file, cannot upload it")
    return st.st_size


def too_large(where: str, remote: int, size: int) -> TransportError:
    return TransportError(
        f"{where} is larger than the local file ({remote} > {size} bytes): it is not a prefix of it; "
        "refusing to upload (the center must reject or remove it first)"
    )


def chunk_size_for(bwlimit: int | None) -> int:
    """Chunk size: :data:`CHUNK_SIZE`, smaller under a low bandwidth limit so the pacing stays smooth."""
    if bwlimit is None:
        return CHUNK_SIZE
    return max(4096, min(CHUNK_SIZE, bwlimit // 4))


class RateLimiter:
    """A token bucket: on average at most ``rate`` bytes per second, with bursts of at most ``burst``.

    :meth:`consume` is called *before* a chunk is sent and sleeps until the bucket holds enough tokens.
    Over any period starting at construction, bytes consumed <= ``rate * elapsed + burst``.  The clock
    and the sleep function are injectable so the arithmetic is tested without waiting.
    """

    def __init__(
        self,
        rate: int,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"bandwidth limit must be positive, got {rate}")
        self.rate = rate
        self.burst = chunk_size_for(rate) if burst is None else burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()

    def consume(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent, then take them from the bucket."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n  # may go negative for n > burst: the debt is paid by the sleep below
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)
            # the sleep refilled exactly the debt; restart accounting from the (real) clock
            self._last = self._clock()
            self._tokens = 0.0


def send_range(
    src: BinaryIO,
    write: Callable[[bytes], object],
    offset: int,
    size: int,
    *,
    chunk: int,
    limiter: RateLimiter | None,
    progress: Callable[[int], None] | None,
    local: Path,
) -> None:
    """Copy bytes ``[offset, size)`` of ``src`` (already positioned at ``offset``) through ``write`` in
    chunks, paced by ``limiter``, reporting the bytes done so far to ``progress`` after each chunk."""
    while offset < size:
        data = src.read(min(chunk, size - offset))
        if not data:
            raise TransportError(f"{local}: file shrank while uploading it")
        if limiter is not None:
            limiter.consume(len(data))
        write(data)
        offset += len(data)
        if progress is not None:
            progress(offset)

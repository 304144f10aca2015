"""The ``file://`` transport: the inbox is a local directory (the drill and single-machine tests).

It keeps the SFTP transport's semantics exactly: uploads go to the final name, a shorter file there is
completed by appending, a larger one is an error, and data reaches the disk (fsync) before
:meth:`FileTransport.upload` returns.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Self

from agent.transport.base import (
    MAX_RECEIPT_SIZE,
    Progress,
    RateLimiter,
    TransportError,
    check_remote_name,
    chunk_size_for,
    local_size,
    send_range,
    too_large,
)
from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError


class FileTransport:
    """The inbox directory ``root`` (holding ``incoming/`` and ``receipts/``) on this machine."""

    def __init__(self, root: Path, *, bwlimit: int | None = None, limiter: RateLimiter | None = None) -> None:
        if not root.is_absolute():
            raise ConfigError(f"file transport: inbox {root} is not an absolute path")
        if not (root / "incoming").is_dir():
            raise ConfigError(
                f"file transport: {root / 'incoming'} is not a directory "
                "(is the center set up for this hospital?)"
            )
        self.root = root
        self._chunk = chunk_size_for(bwlimit)
        self._limiter = limiter if limiter is not None else (RateLimiter(bwlimit) if bwlimit else None)
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"file transport to {self.root} is closed")

    def upload(self, local: Path, name: str, on_progress: Progress | None = None) -> None:
        self._check_open()
        target = self.root / "incoming" / check_remote_name(name)
        size = local_size(local)
        try:
            remote = self.exists(name)
            if remote is not None and remote > size:
                raise too_large(str(target), remote, size)
            if remote == size:
                if on_progress is not None:
                    on_progress(size)
                return
            offset = remote or 0
            # O_APPEND: every write lands at the end, never over bytes already there
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "ab") as out, local.open("rb") as src:
                src.seek(offset)
                send_range(
                    src,
                    out.write,
                    offset,
                    size,
                    chunk=self._chunk,
                    limiter=self._limiter,
                    progress=on_progress,
                    local=local,
                )
                out.flush()
                os.fsync(out.fileno())
            if remote is None:
                fsync_dir(target.parent)
        except OSError as e:
            raise TransportError(f"{target}: upload failed: {e.strerror or e}") from e
        final = self.exists(name)
        if final != size:
            raise TransportError(f"{target}: holds {final} bytes after upload, expected {size}")

    def exists(self, name: str) -> int | None:
        self._check_open()
        path = self.root / "incoming" / check_remote_name(name)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransportError(f"{path}: cannot stat: {e.strerror or e}") from e

    def fetch_receipt(self, name: str) -> bytes | None:
        self._check_open()
        path = self.root / "receipts" / check_remote_name(name)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_RECEIPT_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransportError(f"{path}: cannot read receipt: {e.strerror or e}") from e
        if len(data) > MAX_RECEIPT_SIZE:
            raise TransportError(f"{path}: larger than {MAX_RECEIPT_SIZE} bytes, not a receipt")
        return data

    def list_receipts(self) -> list[str]:
        self._check_open()
        directory = self.root / "receipts"
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise TransportError(f"{directory}: cannot list receipts: {e.strerror or e}") from e
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and stat.S_ISREG(e.stat(follow_symlinks=False).st_mode)
        )

    def close(self) -> None:
        self._closed = True

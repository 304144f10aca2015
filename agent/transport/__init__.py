"""Transports from the agent's outbox to the hospital's inbox at the center (see docs/transport.md).

``open_transport(url, ...)`` picks one by URL:

* ``file:///abs/path/inbox/H1``: a local directory holding ``incoming/`` and ``receipts/`` (the drill).
* ``sftp://account@host:port``: the hospital's chrooted SFTP account on the center's sshd.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from agent.transport.base import CHUNK_SIZE, Progress, RateLimiter, Transport, TransportError
from agent.transport.file import FileTransport
from hakobune.errors import ConfigError

if TYPE_CHECKING:
    from agent.transport.sftp import SftpTransport

__all__ = [
    "CHUNK_SIZE",
    "FileTransport",
    "Progress",
    "RateLimiter",
    "SftpTransport",
    "Transport",
    "TransportError",
    "open_transport",
]


def __getattr__(name: str) -> Any:
    # The SFTP transport (paramiko, several MB) is imported when first used, not by a file:// sync.
    if name == "SftpTransport":
        from agent.transport.sftp import SftpTransport

        return SftpTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_transport(
    url: str,
    *,
    key_file: Path | None = None,
    known_hosts: Path | None = None,
    bwlimit: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30,
) -> Transport:
    """The transport ``url`` names, connected.  ``bwlimit`` is in bytes per second.

    A malformed URL or missing SFTP setting is a :class:`ConfigError`; a center that cannot be reached or
    refuses us (after ``retries`` reconnections for transient failures) is a :class:`TransportError`.
    """
    if bwlimit is not None and bwlimit <= 0:
        raise ConfigError(f"bandwidth limit must be a positive number of bytes per second, got {bwlimit}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"transport URL {url!r}: {e}") from e
    if parts.query or parts.fragment:
        raise ConfigError(f"transport URL {url!r}: no query or fragment allowed")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"transport URL {url!r}: expected file:///absolute/path/to/inbox")
        root = unquote(parts.path)
        if not root.startswith("/") or root == "/":
            raise ConfigError(f"transport URL {url!r}: expected file:///absolute/path/to/inbox")
        return FileTransport(Path(root), bwlimit=bwlimit)
    if parts.scheme == "sftp":
        if parts.password is not None:
            raise ConfigError(f"transport URL {url!r}: passwords are not supported, the agent uses its key")
        if not parts.username or not parts.hostname:
            raise ConfigError(f"transport URL {url!r}: expected sftp://account@host:port")
        if parts.path not in ("", "/"):
            raise ConfigError(
                f"transport URL {url!r}: no path allowed (the account is chrooted to its inbox)"
            )
        if key_file is None:
            raise ConfigError(f"transport URL {url!r}: an ssh key file is required for sftp")
        if known_hosts is None:
            raise ConfigError(f"transport URL {url!r}: a known_hosts file pinning the center is required")
        from agent.transport.sftp import SftpTransport

        return SftpTransport(
            parts.hostname,
            22 if port is None else port,
            unquote(parts.username),
            key_file=key_file,
            known_hosts=known_hosts,
            bwlimit=bwlimit,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
        )
    raise ConfigError(f"transport URL {url!r}: unsupported scheme (expected file:// or sftp://)")

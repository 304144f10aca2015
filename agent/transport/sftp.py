"""The ``sftp://`` transport: paramiko to the center's OpenSSH sshd, one chrooted account per hospital.

Security decisions, all on purpose:

* The center's host key must be **pinned** in the agent's known_hosts file (OpenSSH format).  An unknown
  host or a changed key is refused; nothing is ever added automatically.
* Authentication uses only the agent's Ed25519 key file: no ssh-agent, no ``~/.ssh`` keys, no password.
* Host key and authentication failures are never retried.  Only transient network failures are
  (connection refused/reset, timeouts, the connection dropping mid-transfer): the transport reconnects
  after an exponential, jittered back-off and resumes from the size the inbox holds.

The account is chrooted to the hospital's inbox, so the remote paths are ``/incoming/<name>`` and
``/receipts/<name>``.  The sshd deny list forbids remove, rename and setstat, so an upload is written
straight to its final name and resumed by writing the missing bytes at their offsets.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import random
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

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
from hakobune.errors import ConfigError

# paramiko imports ``invoke`` (if installed) only to run the commands of ``Match exec`` lines in an OpenSSH
# client config; it treats a failed import as "not installed".  We never read an ssh config (no Match, no
# ProxyCommand: the host, key and known_hosts come from agent.toml), and invoke pulls in unittest.mock and
# asyncio: several MB of every sync's peak memory for nothing.  None in sys.modules makes the import fail.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]

import paramiko  # noqa: E402
from paramiko.sftp import CMD_EXTENDED  # noqa: E402

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait between two attempts, whatever the back-off grew to.
MAX_BACKOFF = 60.0

#: Errno values of a network that failed for now (worth reconnecting), as opposed to a refusal.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
    }
)

#: Ciphers in the order we prefer them (AEAD first); the others paramiko offers are dropped.
_CIPHERS = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes128-ctr")


class _CallbackFailed(Exception):
    """Carries an exception raised by the caller's progress callback through the retry loop unchanged."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The host field OpenSSH writes in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def _describe(error: BaseException) -> str:
    """One line saying what went wrong, without a traceback."""
    if isinstance(error, EOFError) and not str(error):
        return "connection closed by the server"
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def load_client_key(key_file: Path) -> Any:
    """The agent's Ed25519 private key (an unencrypted OpenSSH key file only the agent can read)."""
    try:
        mode = key_file.stat().st_mode
    except OSError as e:
        raise ConfigError(f"ssh key file {key_file}: {e.strerror or e}") from e
    if mode & 0o077:
        raise ConfigError(
            f"ssh key file {key_file}: permissions {stat.S_IMODE(mode):04o} are too open; "
            f"run chmod 600 {key_file}"
        )
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(key_file))
    except paramiko.PasswordRequiredException as e:
        raise ConfigError(f"ssh key file {key_file}: encrypted keys are not supported (no passphrase)") from e
    except (paramiko.SSHException, ValueError) as e:
        raise ConfigError(f"ssh key file {key_file}: not an OpenSSH Ed25519 private key") from e
    except OSError as e:
        raise ConfigError(f"ssh key file {key_file}: {e.strerror or e}") from e


def load_known_hosts(known_hosts: Path) -> Any:
    """The pinned host keys, read from an OpenSSH known_hosts file."""
    keys = paramiko.HostKeys()
    try:
        keys.load(str(known_hosts))
    except OSError as e:
        raise ConfigError(f"known_hosts file {known_hosts}: {e.strerror or e}") from e
    except Exception as e:  # paramiko's InvalidHostKey (bad base64) is not an SSHException
        raise ConfigError(f"known_hosts file {known_hosts}: unreadable entry ({_describe(e)})") from e
    return keys


class SftpTransport:
    """The hospital's inbox on the center, through the hospital's chrooted SFTP account.

    Connects at construction (so a wrong pin, key or address is reported at once) and reconnects by
    itself after a transient failure.  ``connects`` counts successful connections.
    """

    def __init__(
        self,
        host: str,
        port: int,
        account: str,
        *,
        key_file: Path,
        known_hosts: Path,
        bwlimit: int | None = None,
        retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ConfigError(
                f"sftp transport: retries ({retries}) and backoff ({backoff}) must be >= 0, "
                f"timeout ({timeout}) > 0"
            )
        self.host = host
        self.port = port
        self.account = account
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.key_file = key_file
        self.known_hosts = known_hosts
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.connects = 0
        self._key = load_client_key(key_file)
        self._host_keys = load_known_hosts(known_hosts)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._chunk = chunk_size_for(bwlimit)
        self._limiter = RateLimiter(bwlimit, clock=clock, sleep=sleep) if bwlimit else None
        self._sock: socket.socket | None = None
        self._ssh: Any = None
        self._sftp: Any = None
        self._closed = False
        # resumed uploads: where the current upload's last attempt started, and whether a later attempt
        # found more bytes at the center (then the failure count restarts: a flaky link that keeps making
        # progress never exhausts the retries of a large upload)
        self._upload_start: int | None = None
        self._advanced = False
        self._retrying("connection", lambda: None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Transport protocol ------------------------------------------------------------------------

    def upload(self, local: Path, name: str, on_progress: Progress | None = None) -> None:
        check_remote_name(name)
        size = local_size(local)
        self._upload_start = None
        self._retrying(f"upload of {name}", lambda: self._upload_once(local, name, size, on_progress))

    def exists(self, name: str) -> int | None:
        path = "/incoming/" + check_remote_name(name)
        return self._retrying(f"stat of {path}", lambda: self._size(path))

    def fetch_receipt(self, name: str) -> bytes | None:
        path = "/receipts/" + check_remote_name(name)
        return self._retrying(f"fetch of {path}", lambda: self._read_small(path))

    def list_receipts(self) -> list[str]:
        return self._retrying("listing of /receipts", self._list_receipts)

    def close(self) -> None:
        self._closed = True
        self._disconnect()

    # -- connection ------------------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock = sock
        ssh = self._ssh = paramiko.Transport(sock)
        ssh.banner_timeout = self.timeout
        ssh.auth_timeout = self.timeout
        ssh.handshake_timeout = self.timeout
        pinned = self._host_keys.lookup(known_hosts_name(self.host, self.port))
        options = ssh.get_security_options()
        options.ciphers = tuple(c for c in _CIPHERS if c in options.ciphers)
        if pinned is not None:
            # ask the server for the key type we pinned, so a server with several host keys shows that one
            types = [t for t in pinned if t in options.key_types]
            options.key_types = tuple(types + [t for t in options.key_types if t not in types])
        ssh.start_client(timeout=self.timeout)
        self._check_host_key(pinned, ssh.get_remote_server_key())
        self._authenticate(ssh)
        ssh.set_keepalive(max(1, int(self.timeout)))
        sftp = paramiko.SFTPClient.from_transport(ssh)
        sftp.get_channel().settimeout(self.timeout)
        self._sftp = sftp
        self.connects += 1
        log.info("connected to %s as %s", self.where, self.account)

    def _check_host_key(self, pinned: Any, offered: Any) -> None:
        shown = f"{offered.get_name()} {fingerprint(offered)}"
        if pinned is None:
            raise TransportError(
                f"host key of {self.where} is not pinned in {self.known_hosts}; the server offered {shown}; "
                "add the center's known_hosts line after checking it out of band (never accepted blindly)"
            )
        ours = pinned.get(offered.get_name())
        if ours is None or ours.asbytes() != offered.asbytes():
            raise TransportError(
                f"host key of {self.where} CHANGED: the server offered {shown}, which is not the key pinned "
                f"in {self.known_hosts} (possible man-in-the-middle); refusing to connect"
            )

    def _authenticate(self, ssh: Any) -> None:
        who = f"{self.account}@{self.where}"
        try:
            remaining = ssh.auth_publickey(self.account, self._key)
        except paramiko.BadAuthenticationType as e:
            raise TransportError(
                f"authentication of {who} refused: the server allows only {', '.join(e.allowed_types)}"
            ) from e
        except paramiko.AuthenticationException as e:
            raise TransportError(
                f"authentication of {who} with key {self.key_file} refused: the center does not accept "
                "this key for this account (is it the key registered for this hospital?)"
            ) from e
        if remaining:
            raise TransportError(
                f"authentication of {who} needs more than the key ({', '.join(remaining)}); "
                "the center must accept the key alone"
            )

    def _disconnect(self) -> None:
        sftp, ssh, sock = self._sftp, self._ssh, self._sock
        self._sftp = self._ssh = self._sock = None
        for thing in (sftp, ssh, sock):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing a broken connection may fail; it is gone either way
                    log.debug("ignored error while closing the connection to %s", self.where, exc_info=True)

    def _transient(self, error: BaseException) -> bool:
        """Whether ``error`` is the network failing for now (reconnect and retry) rather than a refusal."""
        if isinstance(
            error, paramiko.AuthenticationException | paramiko.BadHostKeyException | paramiko.IncompatiblePeer
        ):
            return False
        if isinstance(error, EOFError | TimeoutError | ConnectionError | socket.gaierror):
            return True
        if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
            return True
        if isinstance(error, paramiko.SSHException):
            return True  # banner/negotiation cut short, "server connection dropped", channel closed ...
        # another OSError (e.g. paramiko's "Socket is closed") is transient only if the link is gone;
        # SFTP refusals (permission denied, no such file, failure) arrive on a live link
        return isinstance(error, OSError) and (self._ssh is None or not self._ssh.is_active())

    def _delay(self, attempt: int) -> float:
        """Exponential back-off with jitter: between half and all of ``backoff * 2**(attempt-1)``."""
        delay = min(MAX_BACKOFF, self.backoff * 2.0 ** (attempt - 1))
        return delay * (0.5 + self._rng.random() / 2)

    def _retrying(self, what: str, operation: Callable[[], T]) -> T:
        if self._closed:
            raise TransportError(f"sftp transport to {self.where} is closed")
        attempt = 0
        while True:
            try:
                if self._sftp is None:
                    self._connect()
                return operation()
            except TransportError:
                self._disconnect()
                raise
            except _CallbackFailed as e:
                self._disconnect()  # an upload was left half-way: start the next operation afresh
                raise e.error from None
            except Exception as e:
                transient = self._transient(e)
                self._disconnect()
                if not transient:
                    raise TransportError(f"sftp {what} at {self.where} failed: {_describe(e)}") from e
                attempt = 1 if self._advanced else attempt + 1
                self._advanced = False
                if attempt > self.retries:
                    raise TransportError(
                        f"sftp {what} at {self.where} failed after {attempt} attempts: {_describe(e)}"
                    ) from e
                delay = self._delay(attempt)
                log.warning(
                    "sftp %s at %s failed (%s); retry %d of %d in %.1f s",
                    what,
                    self.where,
                    _describe(e),
                    attempt,
                    self.retries,
                    delay,
                )
                self._sleep(delay)

    # -- operations (one attempt each, on a live connection) -------------------------------------------

    def _size(self, path: str) -> int | None:
        try:
            return int(self._sftp.stat(path).st_size)
        except FileNotFoundError:
            return None

    def _upload_once(self, local: Path, name: str, size: int, on_progress: Progress | None) -> None:
        path = "/incoming/" + name

        def progress(done: int) -> None:
            if on_progress is not None:
                try:
                    on_progress(done)
                except Exception as e:
                    raise _CallbackFailed(e) from e

        remote = self._size(path)
        if remote is not None and remote > size:
            raise too_large(f"{self.where}:{path}", remote, size)
        if remote == size:
            progress(size)
            return
        offset = remote or 0
        if self._upload_start is not None and offset > self._upload_start:
            self._advanced = True
        self._upload_start = offset
        # Positional writes, not O_APPEND: a session we gave up on may still execute writes queued before
        # the drop; at explicit offsets those rewrite the very same bytes instead of appending them again.
        # "x": create exclusively (never truncate); "r+": continue an existing prefix in place.
        mode = "r+b" if remote is not None else "x+b"
        # No "with" for the remote file: after a failure, closing it would wait (up to the timeout) for
        # acknowledgements that may never come; every failure drops the whole connection instead.
        with local.open("rb") as src:
            f = self._sftp.open(path, mode, bufsize=0)
            f.set_pipelined(True)  # do not wait for each 32 KiB write to be acknowledged
            f.seek(offset)
            src.seek(offset)
            send_range(
                src,
                f.write,
                offset,
                size,
                chunk=self._chunk,
                limiter=self._limiter,
                progress=progress,
                local=local,
            )
            self._fsync(f)
            f.close()
        final = self._size(path)
        if final != size:
            raise TransportError(f"{self.where}:{path} holds {final} bytes after upload, expected {size}")

    def _fsync(self, f: Any) -> None:
        """Have the center flush the file to disk (OpenSSH's fsync extension), then surface write errors."""
        try:
            self._sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
        except OSError as e:
            if e.errno is not None or "unsupported" not in str(e).lower():
                raise
            log.debug("%s does not support fsync@openssh.com", self.where)
        f._check_exception()  # a pipelined write the server refused

    def _read_small(self, path: str) -> bytes | None:
        try:
            f = self._sftp.open(path, "rb")
        except FileNotFoundError:
            return None
        with f:
            data = bytes(f.read(MAX_RECEIPT_SIZE + 1))
        if len(data) > MAX_RECEIPT_SIZE:
            raise TransportError(
                f"{self.where}:{path} is larger than {MAX_RECEIPT_SIZE} bytes, not a receipt"
            )
        return data

    def _list_receipts(self) -> list[str]:
        try:
            entries = self._sftp.listdir_attr("/receipts")
        except FileNotFoundError:
            return []
        return sorted(
            str(a.filename)
            for a in entries
            if not a.filename.startswith(".") and a.st_mode is not None and stat.S_ISREG(a.st_mode)
        )

"""A real OpenSSH sshd for tests: center homes sshd accepts, client keys, and a running daemon.

Typical use (module-scoped, so one sshd serves a module)::

    from tests.sshd import SSHD_MARKS, sshd_center

    pytestmark = SSHD_MARKS

    @pytest.fixture(scope="module")
    def center(tmp_path_factory):
        with sshd_center(tmp_path_factory.mktemp("agents"), hospitals=2) as c:
            yield c

    def test_x(center):
        with center.open(center.hospitals[0]) as t:   # agent.transport.SftpTransport
            ...

Lower level: :func:`sshd_home` (a center home under ``/var/lib/hakobune-tests``; sshd refuses to chroot
below ``/tmp``), :func:`running_sshd` (``write_sshd`` + ``sshd -D`` on a free port of 127.0.0.1, yielding
an :class:`SshdServer` that unpacks as ``host, port, known_hosts_line``), :func:`make_client_key`.

Everything needs root and ``/usr/sbin/sshd``: elsewhere the tests are skipped, except under ``CI`` where
that is a failure.  The helpers create system accounts ``hkb-<random id>`` and delete them at teardown.
Mark tests with :data:`SSHD_MARKS` so ``pytest -n`` runs them on one worker (useradd takes a lock).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.transport import SftpTransport
from center.layout import CenterLayout
from center.sshd import SSHD, host_key_line, sshd_available, write_sshd
from hakobune.naming import account_name

#: Where test center homes live: root-owned and 0755 all the way up, as ChrootDirectory requires.
SSHD_TEST_ROOT = Path("/var/lib/hakobune-tests")

#: Marks for every test that runs a real sshd.
SSHD_MARKS = [pytest.mark.integration, pytest.mark.xdist_group("sshd")]


def sshd_unavailable() -> str | None:
    """Why a real sshd cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "real-sshd tests need root (system accounts, chroot)"
    if not sshd_available():
        return f"OpenSSH server not installed ({SSHD})"
    if shutil.which("useradd") is None:
        return "useradd not found"
    return None


def require_sshd() -> None:
    """Skip the test where a real sshd cannot run; under CI that is a failure instead."""
    reason = sshd_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def unique_hospital(prefix: str = "T") -> str:
    """A fresh hospital ID (mixed case, so inbox names and account names differ in case)."""
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ClientKey:
    """An agent's Ed25519 key pair: the private key file (0600) and the public ``ssh-ed25519`` line."""

    private_key: Path
    public_line: str


def make_client_key(directory: Path, name: str = "agent") -> ClientKey:
    key = Ed25519PrivateKey.generate()
    path = directory / f"{name}_ed25519"
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return ClientKey(path, f"{public.decode()} {name}")


def _hkb_accounts() -> set[str]:
    return {p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("hkb-")}


@contextmanager
def sshd_home() -> Iterator[CenterLayout]:
    """A fresh center home under :data:`SSHD_TEST_ROOT`; removed, with the accounts made for it, after."""
    require_sshd()
    SSHD_TEST_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(SSHD_TEST_ROOT, 0o755)
    home = Path(tempfile.mkdtemp(prefix="home-", dir=SSHD_TEST_ROOT))
    os.chmod(home, 0o755)  # mkdtemp makes it 0700
    before = _hkb_accounts()
    try:
        yield CenterLayout(home)
    finally:
        inboxes = home / "inbox"
        made = {account_name(p.name) for p in inboxes.iterdir()} if inboxes.is_dir() else set()
        for account in sorted((made & _hkb_accounts()) - before):
            subprocess.run(["userdel", account], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class SshdServer:
    """A running sshd.  Unpacks as ``host, port, known_hosts_line``."""

    host: str
    port: int
    known_hosts_line: str
    layout: CenterLayout
    config: Path
    process: subprocess.Popen[bytes]
    log: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.host, self.port, self.known_hosts_line))

    def url(self, hospital: str) -> str:
        return f"sftp://{account_name(hospital)}@{self.host}:{self.port}"

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.known_hosts_line + "\n")
        return path

    def signal_sessions(self, sig: int) -> list[int]:
        """Send ``sig`` to every connection's sshd processes (not the listening daemon); their PIDs."""
        victims = _descendants(self.process.pid)
        for pid in victims:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        return victims

    def kill_sessions(self) -> int:
        """SIGKILL every connection's sshd processes (the daemon keeps listening); how many were killed."""
        return len(self.signal_sessions(signal.SIGKILL))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_listening(process: subprocess.Popen[bytes], host: str, port: int, deadline: float) -> bool:
    """True once ``port`` accepts; False if sshd exited first."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"sshd did not listen on {host}:{port} within the deadline")


@contextmanager
def running_sshd(
    layout: CenterLayout, hospitals: Mapping[str, str], *, host: str = "127.0.0.1"
) -> Iterator[SshdServer]:
    """``write_sshd(layout, hospitals)`` and ``sshd -D`` on a free port of ``host``; stopped after."""
    require_sshd()
    log = layout.home / "sshd.log"
    for _attempt in range(3):
        port = free_port(host)
        config = write_sshd(layout, hospitals, listen=host, port=port)
        with log.open("ab") as err:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stderr=err
            )
        if _wait_listening(process, host, port, time.monotonic() + 10):
            break
        if "Address already in use" not in log.read_text(errors="replace"):
            raise AssertionError(f"sshd exited at start: {log.read_text(errors='replace')[-2000:]}")
    else:
        raise AssertionError("sshd found no free port in 3 attempts")
    server = SshdServer(host, port, host_key_line(layout, host, port), layout, config, process, log)
    try:
        yield server
    finally:
        server.kill_sessions()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class SshdCenter:
    """A center home with a running sshd and registered hospitals, each with its agent key."""

    layout: CenterLayout
    server: SshdServer
    hospitals: list[str]
    keys: dict[str, ClientKey]
    known_hosts: Path
    client_dir: Path

    def url(self, hospital: str) -> str:
        return self.server.url(hospital)

    def open(self, hospital: str, **options: Any) -> SftpTransport:
        """The agent's transport for ``hospital`` (``options`` go to :class:`SftpTransport`)."""
        options.setdefault("key_file", self.keys[hospital].private_key)
        options.setdefault("known_hosts", self.known_hosts)
        options.setdefault("timeout", 10.0)
        options.setdefault("backoff", 0.01)
        return SftpTransport(self.server.host, self.server.port, account_name(hospital), **options)

    @contextmanager
    def raw_sftp(self, hospital: str, *, key_file: Path | None = None) -> Iterator[Any]:
        """A plain paramiko SFTPClient logged in as ``hospital``'s account (to probe what it may do)."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.server.host,
                self.server.port,
                username=account_name(hospital),
                key_filename=str(key_file or self.keys[hospital].private_key),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(10)
            yield sftp
        finally:
            client.close()


@contextmanager
def sshd_center(client_dir: Path, *, hospitals: int = 2) -> Iterator[SshdCenter]:
    """A center with ``hospitals`` fresh hospitals (keys written to ``client_dir``) and its sshd running."""
    with sshd_home() as layout:
        ids = [unique_hospital() for _ in range(hospitals)]
        keys = {h: make_client_key(client_dir, h) for h in ids}
        with running_sshd(layout, {h: k.public_line for h, k in keys.items()}) as server:
            known_hosts = server.write_known_hosts(client_dir / "known_hosts")
            yield SshdCenter(layout, server, ids, keys, known_hosts, client_dir)

"""Agent transports: file:// and sftp:// (against a real OpenSSH sshd), resume, retries, pinning, pacing."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.transport import FileTransport, RateLimiter, SftpTransport, TransportError, open_transport
from agent.transport.base import CHUNK_SIZE, check_remote_name
from center.layout import CenterLayout
from hakobune.errors import ConfigError
from tests.sshd import SSHD_MARKS, SshdCenter, free_port, make_client_key, sshd_center

_names = itertools.count(1)


def fresh_name() -> str:
    return f"clinical-{next(_names):012d}.hkcs"


def write_random(path: Path, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    path.write_bytes(data)
    return data


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


# -- URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://center/inbox",
        "sftp://127.0.0.1:2222",  # no account
        "sftp://hkb-h1:secret@127.0.0.1:2222",  # password
        "sftp://hkb-h1@127.0.0.1:2222/incoming",  # path: the account is chrooted
        "sftp://hkb-h1@127.0.0.1:notaport",
        "sftp://hkb-h1@127.0.0.1:2222?x=1",
        "file://relative/inbox",
        "file:///",
        "inbox/H1",
    ],
)
def test_bad_urls_are_config_errors(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"transport URL|unsupported"):
        open_transport(url, key_file=tmp_path / "k", known_hosts=tmp_path / "kh")


def test_sftp_needs_key_and_known_hosts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ssh key file is required"):
        open_transport("sftp://hkb-h1@127.0.0.1:2222", known_hosts=tmp_path / "kh")
    with pytest.raises(ConfigError, match="known_hosts file pinning"):
        open_transport("sftp://hkb-h1@127.0.0.1:2222", key_file=tmp_path / "k")


def test_key_file_must_be_private_and_ed25519(tmp_path: Path) -> None:
    key = make_client_key(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    url = "sftp://hkb-h1@127.0.0.1:2222"
    key.private_key.chmod(0o644)
    with pytest.raises(ConfigError, match="too open"):
        open_transport(url, key_file=key.private_key, known_hosts=known_hosts)
    bogus = tmp_path / "bogus"
    bogus.write_text("not a key\n")
    bogus.chmod(0o600)
    with pytest.raises(ConfigError, match="not an OpenSSH Ed25519 private key"):
        open_transport(url, key_file=bogus, known_hosts=known_hosts)
    key.private_key.chmod(0o600)
    with pytest.raises(ConfigError, match=r"known_hosts file .*missing"):
        open_transport(url, key_file=key.private_key, known_hosts=tmp_path / "missing")


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".hidden", "x\0y", "x\ny"])
def test_bad_remote_names(name: str) -> None:
    with pytest.raises(TransportError, match="bad inbox file name"):
        check_remote_name(name)


# -- file:// ---------------------------------------------------------------------------------------------


@pytest.fixture
def file_inbox(tmp_path: Path) -> Path:
    inbox = CenterLayout(tmp_path / "center").inbox("H1")
    (inbox / "incoming").mkdir(parents=True)
    (inbox / "receipts").mkdir()
    return inbox


def test_file_upload_roundtrip_and_progress(file_inbox: Path, tmp_path: Path) -> None:
    local = tmp_path / "c.hkcs"
    data = write_random(local, 3 * CHUNK_SIZE + 17)
    seen: list[int] = []
    with open_transport(f"file://{file_inbox}") as t:
        assert t.exists("c.hkcs") is None
        t.upload(local, "c.hkcs", seen.append)
        assert t.exists("c.hkcs") == len(data)
    assert (file_inbox / "incoming" / "c.hkcs").read_bytes() == data
    assert seen == sorted(seen) and seen[-1] == len(data)


def test_file_resume_appends_only_the_missing_bytes(file_inbox: Path, tmp_path: Path) -> None:
    local = tmp_path / "c.hkcs"
    data = write_random(local, 2 * CHUNK_SIZE + 5)
    remote = file_inbox / "incoming" / "c.hkcs"
    remote.write_bytes(data[:100_000])
    inode = remote.stat().st_ino
    seen: list[int] = []
    t = FileTransport(file_inbox)
    t.upload(local, "c.hkcs", seen.append)
    assert remote.read_bytes() == data
    assert remote.stat().st_ino == inode  # appended in place, not rewritten
    assert min(seen) > 100_000 and seen[-1] == len(data)
    # same size: nothing to do, file untouched
    mtime = remote.stat().st_mtime_ns
    seen.clear()
    t.upload(local, "c.hkcs", seen.append)
    assert seen == [len(data)] and remote.stat().st_mtime_ns == mtime


def test_file_remote_larger_than_local_is_refused(file_inbox: Path, tmp_path: Path) -> None:
    local = tmp_path / "c.hkcs"
    data = write_random(local, 1000)
    remote = file_inbox / "incoming" / "c.hkcs"
    remote.write_bytes(data + b"extra")
    with pytest.raises(TransportError, match="larger than the local file"):
        FileTransport(file_inbox).upload(local, "c.hkcs")
    assert remote.read_bytes() == data + b"extra"


def test_file_receipts(file_inbox: Path) -> None:
    (file_inbox / "receipts" / "clinical-000000000002.receipt").write_bytes(b"r2")
    (file_inbox / "receipts" / "clinical-000000000001.receipt").write_bytes(b"r1")
    (file_inbox / "receipts" / ".clinical-000000000003.receipt.tmp").write_bytes(b"partial")
    (file_inbox / "receipts" / "subdir").mkdir()
    t = FileTransport(file_inbox)
    assert t.list_receipts() == ["clinical-000000000001.receipt", "clinical-000000000002.receipt"]
    assert t.fetch_receipt("clinical-000000000002.receipt") == b"r2"
    assert t.fetch_receipt("clinical-000000000009.receipt") is None
    t.close()
    with pytest.raises(TransportError, match="closed"):
        t.list_receipts()


def test_file_inbox_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="incoming is not a directory"):
        open_transport(f"file://{tmp_path}/nowhere")


# -- bandwidth limit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "burst"), [(100_000, 16_384), (1_000_000, CHUNK_SIZE), (5_000, 4096)])
def test_rate_limiter_keeps_average_under_limit(rate: int, burst: int) -> None:
    fake = FakeClock()
    limiter = RateLimiter(rate, burst=burst, clock=fake.clock, sleep=fake.sleep)
    rng = random.Random(rate)
    sent = 0
    for _ in range(300):
        n = rng.randint(1, 3 * burst)
        limiter.consume(n)
        sent += n
        assert sent <= rate * fake.now + burst + 1e-6
        fake.now += rng.random() * 0.001  # the send itself takes a little time
    assert sent / fake.now <= rate * 1.05
    assert sent / fake.now >= rate * 0.8  # and it does not throttle far below the limit


def test_rate_limiter_does_not_sleep_under_the_limit() -> None:
    fake = FakeClock()
    limiter = RateLimiter(1000, burst=1000, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        fake.now += 1.0
        limiter.consume(900)
    assert fake.sleeps == []


def test_file_upload_paced_by_limiter(file_inbox: Path, tmp_path: Path) -> None:
    local = tmp_path / "c.hkcs"
    data = write_random(local, 400_000)
    fake = FakeClock()
    limiter = RateLimiter(100_000, burst=10_000, clock=fake.clock, sleep=fake.sleep)
    FileTransport(file_inbox, limiter=limiter).upload(local, "c.hkcs")
    assert fake.now >= (len(data) - 10_000) / 100_000


# -- sftp against a real sshd ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdCenter]:
    with sshd_center(tmp_path_factory.mktemp("agents"), hospitals=2) as c:
        yield c


@pytest.fixture
def local_file(tmp_path: Path) -> tuple[Path, bytes]:
    local = tmp_path / "changeset.hkcs"
    return local, write_random(local, 3 * CHUNK_SIZE + 1234)


class TestSftp:
    pytestmark = SSHD_MARKS

    def test_upload_roundtrip_progress_and_exists(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        local, data = local_file
        h = center.hospitals[0]
        name = fresh_name()
        seen: list[int] = []
        with open_transport(
            center.url(h), key_file=center.keys[h].private_key, known_hosts=center.known_hosts
        ) as t:
            assert t.exists(name) is None
            t.upload(local, name, seen.append)
            assert t.exists(name) == len(data)
        remote = center.layout.incoming(h) / name
        assert remote.read_bytes() == data
        assert seen == sorted(seen) and seen[-1] == len(data)
        assert remote.stat().st_mode & 0o077 == 0  # -u 0077: only the account (and root) can read it

    def test_resume_completes_a_partial_upload(self, center: SshdCenter, tmp_path: Path) -> None:
        h = center.hospitals[0]
        local = tmp_path / "c.hkcs"
        data = write_random(local, 2 * CHUNK_SIZE + 999)
        prefix = tmp_path / "prefix"
        prefix.write_bytes(data[:300_000])
        name = fresh_name()
        seen: list[int] = []
        with center.open(h) as t:
            t.upload(prefix, name)  # what an interrupted upload leaves behind
            assert t.exists(name) == 300_000
            t.upload(local, name, seen.append)
            assert min(seen) > 300_000 and seen[-1] == len(data)
            seen.clear()
            t.upload(local, name, seen.append)  # complete already: nothing to do
            assert seen == [len(data)]
        assert (center.layout.incoming(h) / name).read_bytes() == data

    def test_remote_larger_than_local_is_refused(self, center: SshdCenter, tmp_path: Path) -> None:
        h = center.hospitals[0]
        local = tmp_path / "c.hkcs"
        data = write_random(local, 50_000)
        shorter = tmp_path / "short"
        shorter.write_bytes(data[:10_000])
        name = fresh_name()
        with center.open(h) as t:
            t.upload(local, name)
            with pytest.raises(TransportError, match="larger than the local file"):
                t.upload(shorter, name)
        assert (center.layout.incoming(h) / name).read_bytes() == data

    def test_connection_killed_mid_upload_is_resumed(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        local, data = local_file
        h = center.hospitals[0]
        name = fresh_name()
        killed: list[int] = []

        def kill_once(done: int) -> None:
            if not killed and done >= CHUNK_SIZE:
                killed.append(center.server.kill_sessions())

        with center.open(h, retries=3) as t:
            t.upload(local, name, kill_once)
            assert killed and killed[0] > 0
            assert t.connects == 2
        assert (center.layout.incoming(h) / name).read_bytes() == data

    def test_a_link_that_keeps_dropping_but_progresses_does_not_exhaust_retries(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        local, data = local_file
        h = center.hospitals[0]
        name = fresh_name()
        remote = center.layout.incoming(h) / name
        kills: list[int] = []
        fake = FakeClock()

        def size() -> int:
            return remote.stat().st_size if remote.exists() else 0

        with center.open(h, retries=1, sleep=fake.sleep) as t:

            def kill_once_per_connection_after_progress(done: int) -> None:
                if len(kills) < t.connects and done < len(data):
                    held = size()
                    deadline = time.monotonic() + 5
                    while size() <= held and time.monotonic() < deadline:
                        time.sleep(0.005)  # let the center write more first: real progress
                    kills.append(center.server.kill_sessions())

            t.upload(local, name, kill_once_per_connection_after_progress)
            assert len(kills) >= 3 and all(kills) and t.connects == len(kills) + 1
        assert remote.read_bytes() == data

    def test_socket_dropped_by_client_mid_upload_is_resumed(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        local, data = local_file
        h = center.hospitals[1]
        name = fresh_name()
        with center.open(h, retries=3) as t:
            dropped: list[int] = []

            def drop_once(done: int) -> None:
                if not dropped and done >= 2 * CHUNK_SIZE:
                    dropped.append(done)
                    assert t._sock is not None
                    t._sock.shutdown(socket.SHUT_RDWR)

            t.upload(local, name, drop_once)
            assert dropped and t.connects == 2
        assert (center.layout.incoming(h) / name).read_bytes() == data

    def test_stalled_session_that_wakes_up_late_does_not_corrupt_the_resumed_file(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        """The server hangs mid-upload: the agent times out, reconnects and finishes; then the old session
        wakes up and executes the writes still queued in its socket.  Writes at explicit offsets make those
        rewrite identical bytes (with O_APPEND they would append a second copy)."""
        local, data = local_file
        h = center.hospitals[1]
        name = fresh_name()
        stopped: list[int] = []

        def stall_once(done: int) -> None:
            if not stopped and done >= CHUNK_SIZE:
                stopped.extend(center.server.signal_sessions(signal.SIGSTOP))

        try:
            with center.open(h, retries=3, timeout=1.0) as t:
                t.upload(local, name, stall_once)
                assert stopped and t.connects == 2
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in stopped) and time.monotonic() < deadline:
            time.sleep(0.05)  # the woken session drains its queued writes, sees EOF and exits
        assert (center.layout.incoming(h) / name).read_bytes() == data

    def test_callback_errors_propagate_and_the_upload_resumes_later(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        local, data = local_file
        h = center.hospitals[0]
        name = fresh_name()

        class Stop(Exception):
            pass

        def stop(done: int) -> None:
            raise Stop

        with center.open(h) as t:
            with pytest.raises(Stop):
                t.upload(local, name, stop)
            partial = t.exists(name)
            assert partial is not None and 0 < partial < len(data)
            t.upload(local, name)
            assert t.connects == 2  # the abandoned upload's connection was dropped
        assert (center.layout.incoming(h) / name).read_bytes() == data

    def test_bandwidth_limit_paces_the_upload(
        self, center: SshdCenter, local_file: tuple[Path, bytes]
    ) -> None:
        local, data = local_file
        fake = FakeClock()
        with center.open(center.hospitals[0], bwlimit=200_000, clock=fake.clock, sleep=fake.sleep) as t:
            t.upload(local, fresh_name())
        assert fake.sleeps and fake.now >= (len(data) - 65_536) / 200_000

    def test_receipts_written_by_the_center_are_fetched(self, center: SshdCenter) -> None:
        h = center.hospitals[0]
        receipts = center.layout.receipts(h)
        (receipts / "clinical-000000000001.receipt").write_bytes(b"signed receipt 1")
        (receipts / "research-000000000007.receipt").write_bytes(b"signed receipt 7")
        (receipts / ".research-000000000008.receipt.tmp").write_bytes(b"being written")
        with center.open(h) as t:
            assert t.list_receipts() == ["clinical-000000000001.receipt", "research-000000000007.receipt"]
            assert t.fetch_receipt("clinical-000000000001.receipt") == b"signed receipt 1"
            assert t.fetch_receipt("clinical-000000000099.receipt") is None
        with center.open(center.hospitals[1]) as t:
            assert t.list_receipts() == []  # the other hospital sees its own (empty) receipts only

    def test_unknown_host_is_refused_without_retry(self, center: SshdCenter, tmp_path: Path) -> None:
        h = center.hospitals[0]
        known_hosts = tmp_path / "known_hosts"
        host, port, line = center.server
        known_hosts.write_text(line.replace(f"]:{port} ", f"]:{port + 1} ") + "\n")  # pinned for another port
        fake = FakeClock()
        with pytest.raises(
            TransportError, match=re.escape(f"host key of {host}:{port} is not pinned in {known_hosts}")
        ):
            center.open(h, known_hosts=known_hosts, sleep=fake.sleep)
        assert fake.sleeps == []

    def test_changed_host_key_is_refused(self, center: SshdCenter, tmp_path: Path) -> None:
        h = center.hospitals[0]
        host, port, _line = center.server
        other = make_client_key(tmp_path, "impostor").public_line.split()
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[{host}]:{port} {other[0]} {other[1]}\n")
        fake = FakeClock()
        with pytest.raises(TransportError, match=r"CHANGED.*man-in-the-middle"):
            center.open(h, known_hosts=known_hosts, sleep=fake.sleep)
        assert fake.sleeps == []

    def test_wrong_client_key_is_refused_clearly(self, center: SshdCenter, tmp_path: Path) -> None:
        h = center.hospitals[0]
        stranger = make_client_key(tmp_path, "stranger")
        fake = FakeClock()
        with pytest.raises(
            TransportError,
            match=rf"authentication of hkb-\S+ with key {re.escape(str(stranger.private_key))} refused",
        ):
            center.open(h, key_file=stranger.private_key, sleep=fake.sleep)
        # another hospital's (registered) key does not open this account either
        with pytest.raises(TransportError, match="refused"):
            center.open(h, key_file=center.keys[center.hospitals[1]].private_key, sleep=fake.sleep)
        assert fake.sleeps == []

    def test_refused_connections_are_retried_with_backoff(self, center: SshdCenter) -> None:
        h = center.hospitals[0]
        fake = FakeClock()
        with pytest.raises(TransportError, match="failed after 4 attempts"):
            SftpTransport(
                "127.0.0.1",
                free_port(),  # nothing listens there
                "hkb-x",
                key_file=center.keys[h].private_key,
                known_hosts=center.known_hosts,
                retries=3,
                backoff=1.0,
                sleep=fake.sleep,
                rng=random.Random(1),
            )
        assert len(fake.sleeps) == 3
        for attempt, delay in enumerate(fake.sleeps):
            assert 2**attempt / 2 <= delay <= 2**attempt

    def test_closed_transport_refuses_work(self, center: SshdCenter) -> None:
        t = center.open(center.hospitals[0])
        t.close()
        t.close()
        with pytest.raises(TransportError, match="closed"):
            t.exists("x.hkcs")

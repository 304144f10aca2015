"""The center's generated sshd: its configuration, the hospital accounts, and what a real sshd then allows.

The server-side guarantees are probed with a plain paramiko client logged in as the hospital account:
append-only inbox (no remove, rename, setstat, links, directories), chroot, isolation between hospitals,
key-only login, no forwarding.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from paramiko.sftp import CMD_EXTENDED

import center.sshd as sshd_mod
from agent.transport import open_transport
from center.layout import CenterLayout
from center.sshd import (
    SFTP_DENIED_REQUESTS,
    authorized_keys_dir,
    check_config,
    config_path,
    ensure_account,
    ensure_host_key,
    host_key_line,
    host_key_path,
    parse_public_key,
    render_sshd_config,
    write_sshd,
)
from hakobune.errors import ConfigError, HakobuneError
from hakobune.naming import account_name
from tests.sshd import SSHD_MARKS, SshdCenter, make_client_key, sshd_center, sshd_home, unique_hospital

SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")


def _directives(text: str) -> list[tuple[str, str]]:
    """(keyword, value) of every non-comment line, in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value.strip()))
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


# -- rendering (no root needed) ----------------------------------------------------------------------------


def test_render_has_the_hardening_and_one_jail_per_hospital(tmp_path: Path) -> None:
    layout = CenterLayout(tmp_path / "center")
    text = render_sshd_config(
        layout, ["H1", "Kyoto-02"], listen="10.8.0.1", port=2222, host_keys=[tmp_path / "hk"]
    )
    d = _directives(text)
    first_match = next(i for i, (k, _) in enumerate(d) if k == "Match")
    global_ = dict(d[:first_match])
    assert global_ == global_ | {
        "Port": "2222",
        "ListenAddress": "10.8.0.1",
        "HostKey": str(tmp_path / "hk"),
        "PidFile": "none",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PubkeyAuthentication": "yes",
        "AuthenticationMethods": "publickey",
        "PermitRootLogin": "no",
        "AllowUsers": "hkb-h1 hkb-kyoto-02",
        "AuthorizedKeysFile": f"{layout.sshd}/authorized_keys/%u",
        "DisableForwarding": "yes",
        "AllowTcpForwarding": "no",
        "X11Forwarding": "no",
        "PermitTTY": "no",
        "PermitTunnel": "no",
        "StrictModes": "yes",
    }
    assert global_["Subsystem"].startswith("sftp internal-sftp ")
    deny = ",".join(SFTP_DENIED_REQUESTS)
    assert d[first_match:] == [
        ("Match", "User hkb-h1"),
        ("ChrootDirectory", str(layout.inbox("H1"))),
        ("ForceCommand", f"internal-sftp -l INFO -u 0077 -P {deny}"),
        ("Match", "User hkb-kyoto-02"),
        ("ChrootDirectory", str(layout.inbox("Kyoto-02"))),  # the inbox keeps the ID's case
        ("ForceCommand", f"internal-sftp -l INFO -u 0077 -P {deny}"),
    ]
    assert set(SFTP_DENIED_REQUESTS) >= {"remove", "rename", "posix-rename", "setstat", "fsetstat"}
    assert set(SFTP_DENIED_REQUESTS) >= {"lsetstat", "symlink", "hardlink", "rmdir", "mkdir"}


def test_render_without_hospitals_lets_nobody_in(tmp_path: Path) -> None:
    d = dict(_directives(render_sshd_config(CenterLayout(tmp_path), [], host_keys=[tmp_path / "hk"])))
    assert d["DenyUsers"] == "*" and "AllowUsers" not in d and "Match" not in d


def test_deny_list_names_real_sftp_requests() -> None:
    if not SFTP_SERVER.exists():
        pytest.skip(f"{SFTP_SERVER} not installed")
    known = subprocess.run([str(SFTP_SERVER), "-Q", "requests"], capture_output=True, text=True, check=True)
    assert set(SFTP_DENIED_REQUESTS) <= set(known.stdout.split())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port 0"),
        ({"listen": "0.0.0.0 2222"}, "listen address"),
        ({"host_keys": []}, "host key"),
        ({"pid_file": Path("/run/x y.pid")}, "pid file"),
    ],
)
def test_render_rejects_what_sshd_config_cannot_say(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"host_keys": [tmp_path / "hk"]} | kwargs
    with pytest.raises(ConfigError, match=message):
        render_sshd_config(CenterLayout(tmp_path), ["H1"], **args)  # type: ignore[arg-type]


def test_render_rejects_unsafe_home_and_overlong_ids(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no spaces"):
        render_sshd_config(CenterLayout(tmp_path / "my center"), ["H1"], host_keys=[tmp_path / "hk"])
    with pytest.raises(ConfigError, match="1-28 letters"):
        render_sshd_config(CenterLayout(tmp_path), ["H" * 29], host_keys=[tmp_path / "hk"])


def test_public_key_validation(tmp_path: Path) -> None:
    good = make_client_key(tmp_path).public_line
    assert parse_public_key("H1", good) == " ".join(good.split()[:2])
    assert parse_public_key("H1", f"  {good}\n") == " ".join(good.split()[:2])
    bad = {
        "": "not an OpenSSH public key",
        "garbage": "not an OpenSSH public key",
        f'command="/bin/sh" {good}': "expected the key type ssh-ed25519",
        f"restrict {good}": "expected the key type ssh-ed25519",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ x": "expected the key type ssh-ed25519",
        "ssh-ed25519 !!!notbase64!!!": "does not parse",
        "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ": "does not parse",
        f"{good}\n{make_client_key(tmp_path, 'second').public_line}": "single line",
    }
    for line, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_public_key("H1", line)


def test_non_root_is_told_to_use_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    key = make_client_key(tmp_path).public_line
    with pytest.raises(HakobuneError, match="needs root"):
        ensure_account(CenterLayout(tmp_path), "H1", key)
    with pytest.raises(HakobuneError, match="needs root"):
        write_sshd(CenterLayout(tmp_path), {"H1": key})


# -- accounts and files (root, real useradd and sshd -t) ----------------------------------------------------


@pytest.fixture
def home() -> Iterator[CenterLayout]:
    with sshd_home() as layout:
        yield layout


@pytest.mark.integration
@pytest.mark.xdist_group("sshd")
class TestSetup:
    def test_ensure_account_creates_account_jail_and_key(self, home: CenterLayout, tmp_path: Path) -> None:
        h = unique_hospital()
        key = make_client_key(tmp_path).public_line
        ensure_account(home, h, key)
        pw = pwd.getpwnam(account_name(h))
        assert pw.pw_uid != 0 and pw.pw_dir == "/nonexistent" and pw.pw_shell.endswith(("nologin", "false"))
        assert (_owner(home.inbox(h)), _mode(home.inbox(h))) == ((0, 0), 0o755)
        assert (_owner(home.incoming(h)), _mode(home.incoming(h))) == ((pw.pw_uid, pw.pw_gid), 0o700)
        assert (_owner(home.receipts(h)), _mode(home.receipts(h))) == ((0, 0), 0o755)
        keyfile = authorized_keys_dir(home) / account_name(h)
        assert (_owner(keyfile), _mode(keyfile)) == ((0, 0), 0o644)
        assert keyfile.read_text() == f"restrict {' '.join(key.split()[:2])} hakobune:{h}\n"
        # idempotent, and it repairs what drifted
        os.chmod(home.incoming(h), 0o777)
        os.chown(home.inbox(h), pw.pw_uid, pw.pw_gid)
        ensure_account(home, h, key)
        assert pwd.getpwnam(account_name(h)).pw_uid == pw.pw_uid
        assert _mode(home.incoming(h)) == 0o700 and _owner(home.inbox(h)) == (0, 0)

    def test_home_below_tmp_is_refused_before_anything_is_created(self, tmp_path: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root")
        h = unique_hospital()
        with pytest.raises(ConfigError, match="group or world writable"):
            ensure_account(CenterLayout(tmp_path), h, make_client_key(tmp_path).public_line)
        with pytest.raises(KeyError):
            pwd.getpwnam(account_name(h))

    def test_write_sshd_validates_and_drops_removed_hospitals(
        self, home: CenterLayout, tmp_path: Path
    ) -> None:
        a, b = unique_hospital(), unique_hospital()
        keys = {h: make_client_key(tmp_path, h).public_line for h in (a, b)}
        config = write_sshd(home, keys, listen="127.0.0.1", port=2222)
        assert config == config_path(home) and _mode(config) == 0o644
        host_key = host_key_path(home).read_bytes()
        assert _mode(host_key_path(home)) == 0o600
        effective = subprocess.run(
            [
                str(sshd_mod.SSHD),
                "-T",
                "-f",
                str(config),
                "-C",
                f"user={account_name(a)},host=x,addr=127.0.0.1",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert f"chrootdirectory {home.inbox(a)}" in effective
        assert f"allowusers {account_name(a)}" in effective and f"allowusers {account_name(b)}" in effective
        assert any(
            line.startswith("forcecommand internal-sftp") and "-P remove," in line for line in effective
        )

        write_sshd(home, {a: keys[a]}, listen="127.0.0.1", port=2222)
        assert sorted(p.name for p in authorized_keys_dir(home).iterdir()) == [account_name(a)]
        assert f"AllowUsers {account_name(a)}\n" in config.read_text()
        assert host_key_path(home).read_bytes() == host_key  # generated once, kept

    def test_invalid_config_does_not_replace_the_good_one(self, home: CenterLayout, tmp_path: Path) -> None:
        h = unique_hospital()
        keys = {h: make_client_key(tmp_path).public_line}
        config = write_sshd(home, keys, listen="127.0.0.1", port=2222)
        good = config.read_text()
        with pytest.raises(HakobuneError, match="sshd rejects"):
            write_sshd(home, keys, listen="999.1.1.1", port=2222)
        assert config.read_text() == good
        assert sorted(p.name for p in home.sshd.iterdir()) == sorted(
            ["authorized_keys", "sshd_config", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
        )

    def test_rendered_config_passes_sshd_t(self, home: CenterLayout, tmp_path: Path) -> None:
        hospitals = [unique_hospital(), unique_hospital()]
        home.sshd.mkdir(mode=0o755)
        key = ensure_host_key(home)
        for hospitals_ in (hospitals, []):
            path = tmp_path / "sshd_config"
            path.write_text(
                render_sshd_config(
                    home, hospitals_, listen="127.0.0.1", port=2200, host_keys=[key], pid_file=tmp_path / "p"
                )
            )
            check_config(path)

    def test_host_key_line(self, home: CenterLayout, tmp_path: Path) -> None:
        home.sshd.mkdir(mode=0o755)
        ensure_host_key(home)
        kind, data = host_key_path(home).with_suffix(".pub").read_text().split()[:2]
        assert host_key_line(home, "10.8.0.1", 22) == f"10.8.0.1 {kind} {data}"
        assert host_key_line(home, "10.8.0.1", 2222) == f"[10.8.0.1]:2222 {kind} {data}"
        assert kind == "ssh-ed25519"


# -- what the running sshd allows the hospital accounts ------------------------------------------------------


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdCenter]:
    with sshd_center(tmp_path_factory.mktemp("agents"), hospitals=2) as c:
        yield c


def _uploaded(center: SshdCenter, hospital: str, name: str, tmp_path: Path) -> bytes:
    data = os.urandom(5000)
    local = tmp_path / name
    local.write_bytes(data)
    with open_transport(
        center.url(hospital), key_file=center.keys[hospital].private_key, known_hosts=center.known_hosts
    ) as t:
        t.upload(local, name)
    return data


class TestRunningSshd:
    pytestmark = SSHD_MARKS

    def test_uploaded_files_cannot_be_removed_renamed_or_changed(
        self, center: SshdCenter, tmp_path: Path
    ) -> None:
        h = center.hospitals[0]
        data = _uploaded(center, h, "clinical-000000000001.hkcs", tmp_path)
        path = "/incoming/clinical-000000000001.hkcs"
        local = center.layout.incoming(h) / "clinical-000000000001.hkcs"
        mode = _mode(local)
        with center.raw_sftp(h) as sftp:
            attempts: dict[str, Callable[[], object]] = {
                "remove": lambda: sftp.remove(path),
                "rename": lambda: sftp.rename(path, "/incoming/x"),
                "posix-rename": lambda: sftp.posix_rename(path, "/incoming/x"),
                "chmod": lambda: sftp.chmod(path, 0o777),
                "chown": lambda: sftp.chown(path, 0, 0),
                "utime": lambda: sftp.utime(path, (0, 0)),
                "truncate": lambda: sftp.truncate(path, 0),
                "symlink": lambda: sftp.symlink(path, "/incoming/link"),
                "hardlink": lambda: sftp._request(CMD_EXTENDED, "hardlink@openssh.com", path, "/incoming/hl"),
                "mkdir": lambda: sftp.mkdir("/incoming/d"),
                "rmdir": lambda: sftp.rmdir("/incoming"),
            }
            for what, attempt in attempts.items():
                with pytest.raises(PermissionError):
                    attempt()
                    pytest.fail(f"{what} was allowed")
            with sftp.open(path, "r") as f, pytest.raises(PermissionError):
                f.chmod(0o777)  # fsetstat
            assert sorted(sftp.listdir("/incoming")) == ["clinical-000000000001.hkcs"]
        assert local.read_bytes() == data and _mode(local) == mode

    @pytest.mark.xfail(
        strict=True,
        raises=AssertionError,
        reason="known limit: sftp-server cannot force O_APPEND, so a file still in incoming/ can be "
        "overwritten or truncated through open(); ingest must move uploads out promptly",
    )
    def test_uploaded_files_cannot_be_overwritten_before_ingest(
        self, center: SshdCenter, tmp_path: Path
    ) -> None:
        h = center.hospitals[1]
        data = _uploaded(center, h, "clinical-000000000002.hkcs", tmp_path)
        with center.raw_sftp(h) as sftp:
            with (
                contextlib.suppress(PermissionError),
                sftp.open("/incoming/clinical-000000000002.hkcs", "r+") as f,
            ):
                f.write(b"overwritten")
            with contextlib.suppress(PermissionError), sftp.open("/incoming/clinical-000000000002.hkcs", "w"):
                pass
        assert (center.layout.incoming(h) / "clinical-000000000002.hkcs").read_bytes() == data

    def test_chroot_hides_everything_outside_the_inbox(self, center: SshdCenter) -> None:
        h = center.hospitals[0]
        with center.raw_sftp(h) as sftp:
            assert sorted(sftp.listdir("/")) == ["incoming", "receipts"]
            assert sftp.normalize("../../..") == "/"
            for outside in ("/etc/passwd", "../../../etc/passwd", "/../../sshd/sshd_config"):
                with pytest.raises(FileNotFoundError):
                    sftp.stat(outside)
                with pytest.raises(FileNotFoundError):
                    sftp.open(outside, "r")

    def test_account_cannot_write_receipts_or_the_inbox_root(self, center: SshdCenter) -> None:
        h = center.hospitals[0]
        (center.layout.receipts(h) / "clinical-000000000005.receipt").write_bytes(b"from the center")
        with center.raw_sftp(h) as sftp:
            for target in ("/receipts/clinical-000000000006.receipt", "/evil", "/receipts/x"):
                with pytest.raises(PermissionError):
                    sftp.open(target, "w")
            with pytest.raises(PermissionError):
                sftp.open("/receipts/clinical-000000000005.receipt", "a")
            with sftp.open("/receipts/clinical-000000000005.receipt", "r") as f:
                assert f.read() == b"from the center"
        assert sorted(p.name for p in center.layout.receipts(h).iterdir()) == [
            "clinical-000000000005.receipt"
        ]
        assert sorted(p.name for p in center.layout.inbox(h).iterdir()) == ["incoming", "receipts"]

    def test_hospitals_cannot_see_each_other(self, center: SshdCenter, tmp_path: Path) -> None:
        a, b = center.hospitals
        _uploaded(center, b, "research-000000000042.hkcs", tmp_path)
        (center.layout.receipts(b) / "research-000000000042.receipt").write_bytes(b"for b")
        with center.raw_sftp(a) as sftp:
            assert "research-000000000042.hkcs" not in sftp.listdir("/incoming")
            assert "research-000000000042.receipt" not in sftp.listdir("/receipts")
            for path in (f"/../{b}/incoming/research-000000000042.hkcs", f"/../../inbox/{b}/receipts"):
                with pytest.raises(FileNotFoundError):
                    sftp.stat(path)

    def test_only_the_key_logs_in(self, center: SshdCenter, tmp_path: Path) -> None:
        h = center.hospitals[0]
        host, port, _ = center.server
        transport = paramiko.Transport((host, port))
        try:
            transport.start_client(timeout=10)
            with pytest.raises(paramiko.BadAuthenticationType) as refused:
                transport.auth_password(account_name(h), "any password")
            assert refused.value.allowed_types == ["publickey"]
        finally:
            transport.close()
        # root and unknown accounts are refused even with a registered key
        key = paramiko.Ed25519Key.from_private_key_file(str(center.keys[h].private_key))
        for user in ("root", "nobody", "hkb-unknown"):
            transport = paramiko.Transport((host, port))
            try:
                transport.start_client(timeout=10)
                with pytest.raises(paramiko.AuthenticationException):
                    transport.auth_publickey(user, key)
            finally:
                transport.close()

    def test_no_forwarding_and_no_shell(self, center: SshdCenter) -> None:
        h = center.hospitals[0]
        client = paramiko.SSHClient()
        client.load_host_keys(str(center.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        host, port, _ = center.server
        try:
            client.connect(
                host,
                port,
                username=account_name(h),
                key_filename=str(center.keys[h].private_key),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
            transport = client.get_transport()
            assert transport is not None
            with pytest.raises(paramiko.ChannelException):
                transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)
            channel = transport.open_session(timeout=10)
            channel.settimeout(10)
            with pytest.raises(paramiko.SSHException):
                channel.get_pty()
        finally:
            client.close()

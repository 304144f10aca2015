"""``hakobune media write | verify | open`` as an operator and a receiving hospital run them: the passphrase
shown once (or written 0600), verify's exit status, open with the passphrase asked or read from a file."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from hakobune.cli import app
from hakobune.errors import ConfigError, InputError
from hakobune.keys import SigningKey, write_key
from media.crypto import normalize_passphrase
from media.volumes import parse_size
from tests.media.conftest import Released, viewer_available

runner = CliRunner()


def _write_args(w: Released, out: Path, *extra: str) -> list[str]:
    args = [
        "media",
        "write",
        "-r",
        str(w.restore),
        "--order",
        str(w.order),
        "--out",
        str(out),
        "--center",
        str(w.center),
        "--audit",
        str(w.audit),
        "--part-size",
        "20000",
        "--segment-size",
        "4096",
        "--workers",
        "1",
        *extra,
    ]
    return args if viewer_available() else [*args, "--no-viewer"]


def _open_args(w: Released, disk: Path, out: Path, *extra: str) -> list[str]:
    where = ["--center-key", str(w.center_pub), "--out", str(out), "--audit", str(w.audit)]
    return ["media", "open", str(disk), *where, *extra]


@pytest.mark.integration
def test_write_verify_open_from_the_command_line(released: Released, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    res = runner.invoke(app, _write_args(released, disk, "--json"))
    assert res.exit_code == 0, res.output
    doc = orjson.loads(res.stdout)
    assert len(normalize_passphrase(doc["passphrase"])) == 24 and doc["patients"] > 0
    assert doc["volumes"] == [str(disk)] and doc["signer_key"]

    for anchor in (str(released.center_pub), doc["signer_key"]):  # key file or fingerprint
        res = runner.invoke(app, ["media", "verify", str(disk), "--center-key", anchor, "--json"])
        assert res.exit_code == 0, res.output
        assert orjson.loads(res.stdout)["ok"] is True

    secret = tmp_path / "pass.txt"
    secret.write_text(doc["passphrase"].lower() + "\n")
    res = runner.invoke(
        app,
        _open_args(released, disk, tmp_path / "in", "--passphrase-file", str(secret), "--json"),
    )
    assert res.exit_code == 0, res.output
    opened = orjson.loads(res.stdout)
    assert opened["patients"] == doc["patients"]
    assert len(list((tmp_path / "in" / "fhir").glob("*.json"))) == doc["patients"]

    # asked for, hidden, at the prompt: the wrong one is one line and nothing is written
    args = _open_args(released, disk, tmp_path / "again", "--passphrase")
    res = runner.invoke(app, args, input="ABCD-EFGH-JKMN-PQRS-TWXY-Z234\n")
    assert res.exit_code != 0 and isinstance(res.exception, InputError)
    assert "wrong passphrase" in str(res.exception) and not (tmp_path / "again").exists()
    assert doc["passphrase"] not in res.output
    res = runner.invoke(app, args, input=doc["passphrase"] + "\n")
    assert res.exit_code == 0, res.output
    assert doc["passphrase"] not in res.output  # hidden input is not echoed

    # tampering: verify exits 1 and names the file, open refuses
    part = disk / "data" / "bundles.ndjson.hkm.000"
    data = bytearray(part.read_bytes())
    data[-1] ^= 1
    part.write_bytes(bytes(data))
    res = runner.invoke(app, ["media", "verify", str(disk), "--center-key", str(released.center_pub)])
    assert res.exit_code == 1 and "bundles.ndjson.hkm.000: altered" in res.output and "FAIL" in res.output
    res = runner.invoke(
        app,
        _open_args(released, disk, tmp_path / "refused", "--passphrase-file", str(secret)),
    )
    assert (
        res.exit_code == 1 and "does not verify" in str(res.exception) and not (tmp_path / "refused").exists()
    )


@pytest.mark.integration
def test_the_passphrase_is_shown_once_or_written_to_a_private_file(
    released: Released, tmp_path: Path
) -> None:
    res = runner.invoke(app, _write_args(released, tmp_path / "shown"))
    assert res.exit_code == 0, res.output
    assert "Shown once" in res.output and "パスフレーズ" in res.output
    shown = re.findall(r"\b[A-Z0-9]{4}(?:-[A-Z0-9]{4}){5}\b", res.output)
    assert len(shown) == 1 and len(normalize_passphrase(shown[0])) == 24

    secret = tmp_path / "secret" / "pass.txt"
    secret.parent.mkdir()
    res = runner.invoke(
        app, _write_args(released, tmp_path / "filed", "--passphrase-file", str(secret), "--json")
    )
    assert res.exit_code == 0, res.output
    assert "passphrase" not in orjson.loads(res.stdout)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(normalize_passphrase(secret.read_text())) == 24
    # never over an existing file, and refused before anything is written
    res = runner.invoke(app, _write_args(released, tmp_path / "third", "--passphrase-file", str(secret)))
    assert isinstance(res.exception, InputError) and not (tmp_path / "third").exists()


@pytest.mark.integration
def test_verify_with_an_untrusted_key_fails_and_open_needs_one_way_in(
    released: Released, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    assert runner.invoke(app, _write_args(released, disk, "--json")).exit_code == 0
    intruder = write_key(tmp_path / "intruder.pub", SigningKey.generate().public)
    res = runner.invoke(app, ["media", "verify", str(disk), "--center-key", str(intruder), "--json"])
    assert res.exit_code == 1
    report = orjson.loads(res.stdout)
    assert not report["ok"] and any("not by the trusted center key" in p for p in report["problems"])
    res = runner.invoke(app, ["media", "verify", str(disk), "--center-key", "not-a-key"])
    assert isinstance(res.exception, ConfigError)
    res = runner.invoke(
        app, _open_args(released, disk, tmp_path / "o", "--key", str(released.recipient), "--passphrase")
    )
    assert isinstance(res.exception, ConfigError)
    res = runner.invoke(
        app,
        _open_args(released, disk, tmp_path / "o", "--key", str(released.recipient)),
    )
    assert res.exit_code == 0, res.output


def test_sizes_are_read_as_disks_are_sold() -> None:
    assert parse_size("700M", "--max-volume") == 700_000_000
    assert parse_size("4.7G", "--max-volume") == 4_700_000_000
    assert parse_size("25GB", "--max-volume") == 25_000_000_000
    assert parse_size("64MiB", "--max-volume") == 64 << 20
    assert parse_size("4gib", "--max-volume") == 4 << 30
    assert parse_size("1048576", "--part-size") == 1 << 20
    for bad in ("", "lots", "-5M", "4.7X"):
        with pytest.raises(ConfigError):
            parse_size(bad, "--max-volume")

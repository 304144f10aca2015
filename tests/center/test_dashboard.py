"""The center's status page: ``center dashboard`` in real headless Chromium, ``center status --html``, the
read-only server's answers, and escaping of whatever text the catalog holds."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from center.catalog import Catalog, ChangesetRow, MirrorAck, ScrubRow, StreamStatus
from center.config import CenterConfig, load_center_config, parse_listen
from center.dashboard import DashboardServer, render_page
from center.enroll import init_center
from hakobune.cli import app
from hakobune.console import real_console
from hakobune.errors import ConfigError
from hakobune.naming import changeset_name

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
NOW = datetime.now(UTC).replace(microsecond=0)
FRESH, STALE, EMPTY = "1310000001", "1310000002", "1310000003"
NASTY = '<script>alert("x")</script> & <b>Co</b>'
SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 hkb-agent"


def _row(hospital: str, sequence: int, created: datetime) -> ChangesetRow:
    return ChangesetRow(
        hospital=hospital,
        stream="clinical",
        sequence=sequence,
        header_hash=f"{sequence:064x}",
        prev_hash=f"{sequence - 1:064x}",
        kind="baseline" if sequence == 1 else "incremental",
        created_at=created,
        received_at=created + timedelta(minutes=5),
        size=10_000 * sequence,
        path=f"store/{hospital}/clinical/{changeset_name('clinical', sequence)}",
        patients=sequence,
    )


@pytest.fixture
def center(tmp_path: Path) -> CenterConfig:
    """Three hospitals: one fresh and mirrored, one stale with a gap and a failed scrub, one that never sent
    anything and whose (operator-entered) name is hostile markup."""
    cfg = init_center(tmp_path / "center")
    with Catalog.open(cfg.catalog_url) as c:
        c.add_hospital(FRESH, "運河総合病院", bytes(32), SSH)
        c.add_hospital(STALE, "山手クリニック", bytes(range(32)), SSH)
        c.add_hospital(EMPTY, NASTY, bytes(range(1, 33)), SSH)
        for seq in (1, 2):
            c.add_changeset(_row(FRESH, seq, NOW - timedelta(hours=3 - seq)))
            c.add_changeset(_row(STALE, seq, NOW - timedelta(hours=40 - seq)))
        c.set_waiting(STALE, "clinical", [4, 5])  # 3 is missing: a gap
        c.add_rejection(STALE, changeset_name("clinical", 3), "signature does not verify <img src=x>")
        c.set_mirror_ack(MirrorAck(FRESH, "clinical", "cd" * 16, 2, f"{2:064x}", 2, NOW))
        c.set_mirror_ack(MirrorAck(STALE, "clinical", "cd" * 16, 1, f"{1:064x}", 2, NOW))
        c.record_scrub(ScrubRow(STALE, NOW, 2, 30_000, 1, 0, "store/x: missing"))
    return cfg


@pytest.fixture
def server(center: CenterConfig) -> Iterator[DashboardServer]:
    with Catalog.open(center.catalog_url) as catalog:
        srv = DashboardServer(center, catalog, "127.0.0.1", 0)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield srv
        finally:
            srv.shutdown()
            srv.server_close()
            thread.join(5)


def require_chromium() -> None:
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests")
        pytest.skip(f"{CHROMIUM} not installed")


@pytest.mark.integration
def test_dashboard_in_headless_chromium_shows_hospitals_stale_flags_and_gaps(server: DashboardServer) -> None:
    require_chromium()
    from playwright.sync_api import Dialog, sync_playwright

    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 700})

            def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.goto(server.url)
            assert page.title().startswith("Hakobune center status")
            rows = page.locator("tbody tr")
            assert rows.count() == 3
            assert [rows.nth(i).get_attribute("data-hospital") for i in range(3)] == [FRESH, STALE, EMPTY]

            fresh = page.locator(f'tr[data-hospital="{FRESH}"]')
            assert "OK 正常" in fresh.locator("td.state").inner_text()
            assert "STALE" not in fresh.inner_text()
            assert "in sync" in fresh.locator("td.mirror").inner_text()
            assert "運河総合病院" in fresh.locator("td.hospital").inner_text()

            stale = page.locator(f'tr[data-hospital="{STALE}"]')
            assert "stale" in (stale.get_attribute("class") or "")
            state = stale.locator("td.state").inner_text()
            assert "STALE 停滞" in state and "GAP 欠番" in state and "REJECTED" in state
            assert stale.locator("td.gaps").inner_text().startswith("3")
            assert "1 behind" in stale.locator("td.mirror").inner_text()
            assert "1 problem 異常" in stale.locator("td.scrub").inner_text()
            assert "signature does not verify <img src=x>" in stale.locator("td.errors").inner_text()

            empty = page.locator(f'tr[data-hospital="{EMPTY}"]')
            assert "STALE" in empty.locator("td.state").inner_text()
            assert NASTY in empty.locator("td.hospital").inner_text()  # shown as text, never run
            assert page.locator("script").count() == 0 and page.locator("img").count() == 0
            assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "60"
            assert "stale 停滞 3" not in page.locator(".summary").inner_text()
            assert re.search(r"stale 停滞\s*2", page.locator(".summary").inner_text())

            artifacts = REPO / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "center-dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert dialogs == []
    assert (REPO / "test-artifacts" / "center-dashboard.png").stat().st_size > 10_000


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_server_is_read_only_and_sends_strict_headers(server: DashboardServer) -> None:
    status, headers, body = _get(server.url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert b"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body and b"<script" not in body

    status, _, body = _get(server.url + "status.json")
    doc = orjson.loads(body)
    assert status == 200 and [d["hospital"] for d in doc] == [FRESH, STALE, EMPTY]
    stale = doc[1]
    assert stale["stale"] is True and stale["gaps"] == [[3, 3]] and stale["mirror_lag"] == 1
    assert stale["scrub_problems"] == 1 and stale["last_created_at"].endswith("Z")

    assert _get(server.url + "nope")[0] == 404
    status, _, body = _get(server.url, method="HEAD")
    assert status == 200 and body == b""
    for method in ("POST", "PUT", "DELETE"):
        assert _get(server.url, method=method)[0] == 501


def test_status_html_writes_the_same_page_as_one_static_file(
    center: CenterConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(real_console(), "width", 250)
    out = tmp_path / "status.html"
    result = CliRunner().invoke(
        app,
        ["center", "status", "--json", "--html", str(out)],
        env={"HAKOBUNE_CENTER_HOME": str(center.layout.home)},
    )
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert [(d["hospital"], d["stale"], d["mirror_lag"]) for d in doc] == [
        (FRESH, False, 0),
        (STALE, True, 1),
        (EMPTY, True, 0),
    ]
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert f'data-hospital="{STALE}"' in page and "STALE 停滞" in page
    assert "&lt;img src=x&gt;" in page

    table = CliRunner().invoke(
        app, ["center", "status"], env={"HAKOBUNE_CENTER_HOME": str(center.layout.home)}
    )
    assert table.exit_code == 0 and "mirror lag" in table.output and "STALE" in table.output

    bad = CliRunner().invoke(
        app,
        ["center", "status", "--html", str(tmp_path / "no" / "such" / "dir" / "x.html")],
        env={"HAKOBUNE_CENTER_HOME": str(center.layout.home)},
    )
    assert bad.exception is not None and "cannot write" in str(bad.exception)


@pytest.mark.integration
def test_center_dashboard_command_serves_on_loopback(center: CenterConfig) -> None:
    assert load_center_config(center.layout.home).dashboard_listen == "127.0.0.1:8470"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # a free port, released again for the dashboard
    process = subprocess.Popen(
        [sys.executable, "-m", "hakobune.cli", "center", "dashboard", "--listen", f"127.0.0.1:{port}"],
        env={**os.environ, "HAKOBUNE_CENTER_HOME": str(center.layout.home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = _get(f"http://127.0.0.1:{port}/")
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline or process.poll() is not None:
                    finished = process.poll() is not None and process.stderr is not None
                    detail = process.stderr.read().decode() if finished and process.stderr else ""
                    raise AssertionError(f"dashboard did not answer: {detail}") from None
                time.sleep(0.1)
        assert status == 200 and STALE.encode() in body
    finally:
        process.terminate()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_a_bad_listen_address_is_a_config_error(center: CenterConfig) -> None:
    result = CliRunner().invoke(
        app,
        ["center", "dashboard", "--listen", "localhost"],
        env={"HAKOBUNE_CENTER_HOME": str(center.layout.home)},
    )
    assert isinstance(result.exception, ConfigError) and "--listen" in str(result.exception)
    config = center.layout.config
    config.write_text(config.read_text().replace('listen = "127.0.0.1:8470"', 'listen = "127.0.0.1:99999"'))
    with pytest.raises(ConfigError, match=r"\[dashboard\] listen: '127.0.0.1:99999' is not host:port"):
        load_center_config(center.layout.home)


# --- properties ---------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]")),
    st.integers(1, 65535),
)
def test_parse_listen_round_trips_host_and_port(host: str, port: int) -> None:
    parsed = parse_listen(f"{host}:{port}", "--listen")
    assert parsed == (host.strip("[]"), port)


@settings(deadline=None)
@given(st.text(max_size=20))
def test_parse_listen_refuses_what_is_not_host_and_port(text: str) -> None:
    if re.fullmatch(r".+:[0-9]+", text) and 0 < int(text.rpartition(":")[2]) < 65536:
        return
    with pytest.raises(ConfigError, match="is not host:port"):
        parse_listen(text, "--listen")


def _status(name: str, error: str) -> StreamStatus:
    return StreamStatus(
        hospital="H1",
        name=name,
        stream="clinical",
        last_sequence=3,
        last_created_at=NOW,
        last_received_at=NOW,
        age_hours=30.0,
        stale=True,
        changesets=3,
        bytes=1234,
        gaps=[(4, 5)],
        waiting=[6],
        rejections=1,
        last_error=error,
        mirror="ab" * 16,
        mirror_sequence=1,
        mirror_lag=2,
        scrub_at=NOW,
        scrub_problems=1,
    )


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_no_catalog_text_can_add_markup_to_the_page(name: str, error: str) -> None:
    plain = render_page([_status("x" if name else "", "y" if error else "")], now=NOW, stale_hours=26)
    page = render_page([_status(name, error)], now=NOW, stale_hours=26)
    assert page.count("<") == plain.count("<") and page.count(">") == plain.count(">")
    assert page.count('"') - plain.count('"') == 0

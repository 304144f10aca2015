"""The center's status page: ``hakobune center dashboard`` (a small read-only web server) and
``hakobune center status --html FILE`` (the same page as one static file).

One row per hospital and stream: the last changeset and its age, a stale flag, gaps, changesets and
bytes stored, rejections of the last 7 days with the newest reason, the mirror's lag and the last scrub.
The page is self-contained (inline CSS, no script, no external resource), reloads itself every
``refresh_seconds``, and every piece of text is HTML-escaped: hospital names and rejection reasons come
from the catalog, and a file name an agent chose ends up in a reason.  There is no patient data at the
center to show.  The server only answers GET and HEAD, serves ``/`` and ``/status.json``, sends a strict
Content-Security-Policy, and listens on loopback unless configured otherwise (``[dashboard] listen``).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from datetime import UTC, datetime, timedelta, timezone
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson

from center.catalog import Catalog, StreamStatus
from center.config import CenterConfig
from center.replicate import configured_mirror_key
from hakobune.errors import HakobuneError

log = logging.getLogger("hakobune.center.dashboard")

JST = timezone(timedelta(hours=9), "JST")
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def collect_status(cfg: CenterConfig, catalog: Catalog, now: datetime | None = None) -> list[StreamStatus]:
    """Every hospital's status rows, with the configured mirror's lag (or the last mirror used)."""
    return catalog.status(
        now or datetime.now(UTC), stale_hours=cfg.stale_hours, mirror=configured_mirror_key(cfg)
    )


def status_json(row: StreamStatus) -> dict[str, Any]:
    """One status row as JSON-ready values (times as ``YYYY-MM-DDTHH:MM:SSZ``)."""
    doc = dataclasses.asdict(row)
    for k, v in doc.items():
        if isinstance(v, datetime):
            doc[k] = v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return doc


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def _age(hours: float | None) -> str:
    if hours is None:
        return "—"
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} d"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(JST).strftime("%Y-%m-%d %H:%M JST")


def _badge(kind: str, text: str) -> str:
    return f'<span class="badge {kind}">{escape(text)}</span>'


def _row(r: StreamStatus) -> str:
    state = []
    if r.stale:
        state.append(_badge("stale", "STALE 停滞"))
    if r.gaps:
        state.append(_badge("gap", "GAP 欠番"))
    if r.rejections:
        state.append(_badge("error", "REJECTED 拒否"))
    if r.mirror_lag:
        state.append(_badge("lag", "MIRROR LAG 複製遅延"))
    if r.scrub_problems:
        state.append(_badge("error", "SCRUB 検査異常"))
    if not state:
        state.append(_badge("ok", "OK 正常"))
    last = "—" if r.last_sequence is None else f"#{r.last_sequence}"
    gaps = ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in r.gaps) or "—"
    waiting = f" (waiting 待機 {len(r.waiting)})" if r.waiting else ""
    errors = str(r.rejections)
    if r.last_error:
        errors += f'<div class="detail">{escape(r.last_error)}</div>'
    if r.mirror_lag is None:
        mirror = "—"
    else:
        mirror = f"{r.mirror_lag} behind" if r.mirror_lag else "in sync 同期"
        mirror += f'<div class="detail">at #{r.mirror_sequence or 0}</div>'
    if r.scrub_at is None:
        scrub = "never 未実施"
    else:
        n = r.scrub_problems or 0
        scrub = "clean 正常" if not n else f"{n} problem{'s' if n != 1 else ''} 異常"
        scrub += f'<div class="detail">{escape(_when(r.scrub_at))}</div>'
    classes = " ".join(c for c, on in (("stale", r.stale), ("gap", bool(r.gaps))) if on)
    cells = [
        f'<td class="hospital"><b>{escape(r.hospital)}</b><div class="detail">{escape(r.name)}</div></td>',
        f'<td class="stream">{escape(r.stream)}</td>',
        f'<td class="last">{escape(last)}<div class="detail">{escape(_when(r.last_created_at))}</div></td>',
        f'<td class="age num">{escape(_age(r.age_hours))}</td>',
        f'<td class="state">{" ".join(state)}</td>',
        f'<td class="gaps">{escape(gaps + waiting)}</td>',
        f'<td class="num">{r.changesets:,}</td>',
        f'<td class="num">{escape(_bytes(r.bytes))}</td>',
        f'<td class="errors">{errors}</td>',
        f'<td class="mirror">{mirror}</td>',
        f'<td class="scrub">{scrub}</td>',
    ]
    return (
        f'<tr class="{classes}" data-hospital="{escape(r.hospital)}" data-stream="{escape(r.stream)}">'
        + "".join(cells)
        + "</tr>"
    )


_STYLE = """
body { font-family: system-ui, "Hiragino Sans", "Noto Sans CJK JP", sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
.meta { color: #555; margin-bottom: 1rem; }
.summary span { display: inline-block; margin-right: 1.2rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.stale td { background: #fff1f0; }
tr.gap td.gaps { color: #a61b00; font-weight: 600; }
.detail { color: #666; font-size: .8rem; word-break: break-all; }
.badge { display: inline-block; border-radius: .25rem; padding: 0 .35rem; margin: 0 .2rem .2rem 0;
         font-size: .75rem; font-weight: 600; color: #fff; }
.badge.ok { background: #2e7d32; } .badge.stale { background: #c62828; } .badge.gap { background: #ef6c00; }
.badge.error { background: #6a1b9a; } .badge.lag { background: #1565c0; }
"""


def render_page(
    rows: list[StreamStatus],
    *,
    now: datetime,
    stale_hours: float,
    refresh_seconds: int = 60,
) -> str:
    """The whole status page (one self-contained HTML document)."""
    hospitals = {r.hospital for r in rows}
    stale = {r.hospital for r in rows if r.stale}
    gaps = {r.hospital for r in rows if r.gaps}
    lagging = {r.hospital for r in rows if r.mirror_lag}
    scrub = {r.hospital for r in rows if r.scrub_problems}
    summary = [
        f"hospitals 病院 <b>{len(hospitals)}</b>",
        f"stale 停滞 <b>{len(stale)}</b>",
        f"with gaps 欠番 <b>{len(gaps)}</b>",
        f"mirror behind 複製遅延 <b>{len(lagging)}</b>",
        f"scrub problems 検査異常 <b>{len(scrub)}</b>",
    ]
    headers = [
        "Hospital 病院",
        "Stream 種別",
        "Last changeset 最新",
        "Age 経過",
        "State 状態",
        "Gaps 欠番",
        "Changesets 件数",
        "Stored 容量",
        "Rejected (7 d) 拒否",
        "Mirror ミラー",
        "Last scrub 検査",
    ]
    body = "\n".join(_row(r) for r in rows) or '<tr><td colspan="11">no hospital enrolled 登録なし</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="ja">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_seconds)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Hakobune center status / センター状況</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Hakobune center status / センター状況</h1>
<div class="meta">as of {escape(_when(now))} ({escape(now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))});
stale after {stale_hours:g} h without a changeset; this page reloads every {int(refresh_seconds)} s</div>
<div class="summary">{"".join(f"<span>{s}</span>" for s in summary)}</div>
<table>
<thead><tr>{"".join(f"<th>{escape(h)}</th>" for h in headers)}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""


def page_for(cfg: CenterConfig, catalog: Catalog, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return render_page(
        collect_status(cfg, catalog, now),
        now=now,
        stale_hours=cfg.stale_hours,
        refresh_seconds=cfg.dashboard_refresh_seconds,
    )


# --- the server -------------------------------------------------------------------------------------------


class DashboardServer(ThreadingHTTPServer):
    """Serves the page from an open catalog; ``serve_forever()`` to run, ``shutdown()`` to stop."""

    daemon_threads = True

    def __init__(self, cfg: CenterConfig, catalog: Catalog, host: str, port: int) -> None:
        self.cfg = cfg
        self.catalog = catalog
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "hakobune-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                data = page_for(self.server.cfg, self.server.catalog).encode("utf-8")
                kind = "text/html; charset=utf-8"
            elif path == "/status.json":
                rows = collect_status(self.server.cfg, self.server.catalog)
                data = orjson.dumps([status_json(r) for r in rows], option=orjson.OPT_INDENT_2)
                kind = "application/json"
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", body)
                return
        except HakobuneError as e:
            log.warning("dashboard: %s", e)
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"catalog unavailable: {e}\n".encode(),
                "text/plain; charset=utf-8",
                body,
            )
            return
        self._send(HTTPStatus.OK, data, kind, body)

    def _send(self, status: HTTPStatus, data: bytes, kind: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

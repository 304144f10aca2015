"""The agent daemon's schedule: a daily job at schedule.daily (Asia/Tokyo), and when watching, a change in
the tree pulls the next sync forward."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.commands.run import SETTLE_SECONDS, build_scheduler
from agent.config import load_config, render_config


def _config(tmp_path: Path, **changes: object):  # type: ignore[no-untyped-def]
    (tmp_path / "ssmix2").mkdir()
    text = render_config(hospital="H1", ssmix2=tmp_path / "ssmix2", center_url="file:///nowhere")
    (tmp_path / "agent.toml").write_text(text.replace('daily = "02:00"', 'daily = "03:30"'))
    return dataclasses.replace(load_config(tmp_path), **changes)


def test_daily_job_at_the_configured_time_in_japan(tmp_path: Path) -> None:
    scheduler, observer = build_scheduler(_config(tmp_path), lambda: None)
    assert observer is None
    trigger = scheduler.get_job("daily").trigger
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    nxt = trigger.get_next_fire_time(None, now)
    assert nxt.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%H:%M") == "03:30"
    assert nxt - now < timedelta(days=1)


def test_a_change_in_the_tree_pulls_the_watch_job_forward(tmp_path: Path) -> None:
    cfg = _config(tmp_path, watch=True, polling=True)
    scheduler, observer = build_scheduler(cfg, lambda: None)
    assert observer is not None
    try:
        from watchdog.events import FileCreatedEvent

        from agent.commands.run import _Debounce

        handler = _Debounce(scheduler, "watch")
        before = datetime.now(UTC)
        handler.on_any_event(FileCreatedEvent(str(cfg.ssmix2 / "x")))
        when = scheduler.get_job("watch").next_run_time
        assert when is not None
        assert timedelta(0) < when - before <= timedelta(seconds=SETTLE_SECONDS + 5)
    finally:
        observer.unschedule_all()

"""``hakobune agent run``: the agent daemon.  A daily sync at ``schedule.daily`` (APScheduler), and with
``schedule.watch`` a sync shortly after the SS-MIX2 tree changes (watchdog; the polling observer for
network shares where inotify sees nothing).  Runs never overlap; a failed run is logged and retried at
the next trigger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.commands.sync import run_once
from agent.config import AgentConfig, load_config
from agent.home import home_option
from hakobune.errors import HakobuneError

log = logging.getLogger("hakobune.agent")

#: After a change, wait this long for more before syncing (a gateway writes a burst of files).
SETTLE_SECONDS = 120.0
#: Hospitals keep Japan time; the daily schedule is read in it whatever the server's zone.
JST = "Asia/Tokyo"


class _Debounce(FileSystemEventHandler):
    def __init__(self, scheduler: BlockingScheduler, job_id: str) -> None:
        self.scheduler = scheduler
        self.job_id = job_id
        self._lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        with self._lock:
            job = self.scheduler.get_job(self.job_id)
            if job is not None:
                job.modify(next_run_time=_soon())


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=SETTLE_SECONDS)


def build_scheduler(
    cfg: AgentConfig, job: Callable[[], None]
) -> tuple[BlockingScheduler, BaseObserver | None]:
    """The daemon's scheduler (daily job at ``schedule.daily``, Asia/Tokyo) and, when watching, the
    started file observer that pulls the ``watch`` job forward after changes."""
    scheduler = BlockingScheduler(timezone=JST)
    hour, minute = (int(x) for x in cfg.daily_at.split(":"))
    scheduler.add_job(
        job, CronTrigger(hour=hour, minute=minute, timezone=JST), id="daily", max_instances=1, coalesce=True
    )
    observer: BaseObserver | None = None
    if cfg.watch:
        scheduler.add_job(
            job, "interval", days=365, id="watch", max_instances=1, coalesce=True, next_run_time=None
        )
        observer = PollingObserver(timeout=30) if cfg.polling else Observer()
        observer.schedule(_Debounce(scheduler, "watch"), str(cfg.ssmix2), recursive=True)
    return scheduler, observer


def run(home: Path = home_option()) -> None:
    """Run the agent: daily sync (and near-real-time sync when watching), until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(home)

    def job() -> None:
        try:
            doc = run_once(home)
            s = doc["sync"]
            log.info("sync %s: %s; acknowledged %s", s["status"], s.get("name"), len(doc["ship"]["acked"]))
        except HakobuneError as e:
            log.error("sync failed: %s", e)

    scheduler, observer = build_scheduler(cfg, job)
    if observer is not None:
        observer.start()
    log.info(
        "agent running: daily sync at %s (Asia/Tokyo)%s", cfg.daily_at, ", watching" if cfg.watch else ""
    )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if observer is not None:
            observer.stop()
            observer.join()
    typer.echo("agent stopped")

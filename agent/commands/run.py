"""``hakobune agent run``: the agent daemon.  A daily sync at ``schedule.daily`` (APScheduler), and with
``schedule.watch`` a sync shortly after the SS-MIX2 tree changes (watchdog; the polling observer for
network shares where inotify sees nothing).  Runs never overlap; a failed run is logged and retried at
the next trigger."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import typer
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from agent.commands.sync import run_once
from agent.config import load_config
from agent.home import home_option
from hakobune.errors import HakobuneError

log = logging.getLogger("hakobune.agent")

#: After a change, wait this long for more before syncing (a gateway writes a burst of files).
SETTLE_SECONDS = 120.0


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


def run(home: Path = home_option()) -> None:
    """Run the agent: daily sync (and near-real-time sync when watching), until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(home)
    scheduler = BlockingScheduler(timezone="Asia/Tokyo")
    hour, minute = (int(x) for x in cfg.daily_at.split(":"))

    def job() -> None:
        try:
            doc = run_once(home)
            s = doc["sync"]
            log.info("sync %s: %s; shipped %s", s["status"], s.get("name"), len(doc["ship"]["acked"]))
        except HakobuneError as e:
            log.error("sync failed: %s", e)

    scheduler.add_job(job, CronTrigger(hour=hour, minute=minute), id="daily", max_instances=1, coalesce=True)
    observer = None
    if cfg.watch:
        scheduler.add_job(
            job, "interval", days=365, id="watch", max_instances=1, coalesce=True, next_run_time=None
        )
        observer = PollingObserver(timeout=30) if cfg.polling else Observer()
        observer.schedule(_Debounce(scheduler, "watch"), str(cfg.ssmix2), recursive=True)
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

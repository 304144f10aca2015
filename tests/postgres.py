"""A throwaway PostgreSQL server for tests: ``postgres_url`` (session-scoped) starts a private cluster in a
temporary directory and yields a SQLAlchemy URL of an empty database on it; :func:`new_database` adds more
databases to the same server (one per test, for isolation).

Use it from a test module with ``from tests.postgres import postgres_url  # noqa: F401`` (a fixture
import), or for a whole directory by adding ``pytest_plugins = ["tests.postgres"]`` to ``tests/conftest.py``.

The cluster listens only on a Unix socket inside its own directory (no TCP port, so parallel pytest-xdist
workers, each starting its own cluster, cannot collide), runs with fsync off, and is stopped and deleted at
the end of the session.  As root, ``initdb`` and the server run as the ``postgres`` system user through
``runuser``.  The binaries are found through ``HAKOBUNE_PG_BIN``, ``PATH`` or
``/usr/lib/postgresql/<version>/bin``; without them the tests are skipped, except when ``CI`` is set: CI must
run them, so there it is a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

PG_BIN_ENVVAR = "HAKOBUNE_PG_BIN"
SUPERUSER = "postgres"
#: Settings that trade durability for speed: the cluster is thrown away.
_FAST = ("fsync=off", "full_page_writes=off", "synchronous_commit=off", "listen_addresses=")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):  # CI has PostgreSQL: a skip there would hide a failure
        pytest.fail(f"PostgreSQL tests cannot run: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get(PG_BIN_ENVVAR):
        candidates.append(Path(os.environ[PG_BIN_ENVVAR]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.name.split(".") if x.isdigit())

    versions = sorted(Path("/usr/lib/postgresql").glob("*"), key=version, reverse=True)
    candidates += [v / "bin" for v in versions]
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


class PostgresCluster:
    """A private PostgreSQL cluster under ``root`` (data in ``root/data``, socket in ``root``)."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self._as_postgres = ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        cmd = [*self._as_postgres, str(self.bin_dir / args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        if self._as_postgres:  # root cannot run initdb: the cluster belongs to the postgres user
            entry = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        )
        options = " ".join(f"-c {o}" for o in (*_FAST, f"unix_socket_directories={self.root}"))
        self._run(
            "pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.log), "-o", options
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def url(self, database: str = "postgres") -> URL:
        return URL.create(
            "postgresql+psycopg", username=SUPERUSER, database=database, query={"host": str(self.root)}
        )


def new_database(server_url: str, name: str | None = None) -> str:
    """Create an empty database on the server of ``server_url`` and return its URL (as a string)."""
    name = name or f"t_{uuid.uuid4().hex[:16]}"
    base = make_url(server_url)
    engine = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url``, disconnecting whoever still uses it."""
    target = make_url(url)
    engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL (``postgresql+psycopg://postgres@/hakobune?host=<socket dir>``) of an empty database on a
    private server started for this session (for this worker, under pytest-xdist)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _unavailable(f"initdb/pg_ctl/postgres not found (set {PG_BIN_ENVVAR})")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _unavailable("running as root and runuser is missing")
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            _unavailable(f"running as root and there is no {SUPERUSER!r} user to own the cluster")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    # Short path in /tmp: a Unix socket path must stay under ~100 bytes, and the postgres user must be
    # able to reach it (pytest's own tmp_path is private to root).
    root = Path(tempfile.mkdtemp(prefix="hkb-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    cluster = PostgresCluster(bin_dir, root)
    try:
        cluster.start()
        yield new_database(cluster.url().render_as_string(hide_password=False), "hakobune")
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)

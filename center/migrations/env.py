"""Alembic environment of the center catalog.

:meth:`center.catalog.Catalog.open` runs the migrations programmatically (no ``alembic.ini``): it passes an
open connection, inside the transaction it holds, as ``config.attributes["connection"]``.  For a developer
using the ``alembic`` command (``revision --autogenerate`` against a scratch database), a URL in
``sqlalchemy.url`` is used instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from center.catalog import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters a table by copying it; "batch" mode writes future migrations that way.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("center/migrations: no connection given and no sqlalchemy.url configured")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("center/migrations: offline (--sql) mode is not supported; run Catalog.open")
run_migrations_online()

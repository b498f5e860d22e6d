"""Alembic environment: migrates the connection handed over by ``db.engine.upgrade`` (or ``HS_DB_URL``)."""

from __future__ import annotations

from alembic import context

from db.engine import default_db_url, make_engine
from db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the shared connection if one was given, else a fresh engine on the default URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(default_db_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; use `python -m db upgrade --db URL`")
run_migrations_online()

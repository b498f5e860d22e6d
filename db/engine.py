"""Engine and session factory, schema upgrades, and retries on a busy SQLite file."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hs_core.settings import DEFAULT_DB_URL, VAR_DIR, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_S = 30
# Any constant works: every process that migrates the same PostgreSQL database takes this lock first.
_PG_MIGRATION_LOCK = 0x48534445534B  # "HSDESK"
_SQLITE_BEGIN_MODES = {"DEFERRED", "IMMEDIATE", "EXCLUSIVE"}
# PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
_PG_RETRY_SQLSTATES = {"40001", "40P01", "55P03"}


def default_db_url() -> str:
    """Return the database URL: env ``HS_DB_URL`` or a SQLite file under ``<repo>/var``.

    Returns:
        A SQLAlchemy URL string. For the default SQLite file the parent directory is created.
    """
    url = get_settings().db_url
    if url == DEFAULT_DB_URL:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
    return url


def safe_db_url(url: str | URL) -> str:
    """The URL with its password hidden (``***``), fit to show on a screen or in a log."""
    return make_url(url).render_as_string(hide_password=True)


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _is_sqlite_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def make_engine(url: str | URL, **kwargs) -> Engine:
    """Create an engine; SQLite files get WAL, foreign keys, a busy timeout and real BEGINs.

    Args:
        url: Any SQLAlchemy URL, e.g. ``sqlite:////abs/path.sqlite3`` or ``postgresql+psycopg://...``.
        **kwargs: Passed to :func:`sqlalchemy.create_engine`. ``hide_parameters`` defaults to ``True``:
            bound values (password hashes among them) stay out of SQL logs and error messages.

    Returns:
        The engine. For SQLite, every transaction starts with ``BEGIN`` (``DEFERRED`` unless the
        connection's execution option ``sqlite_begin`` says ``IMMEDIATE``), so reads inside a
        transaction are repeatable and DDL is transactional.
    """
    kwargs.setdefault("hide_parameters", True)
    u = make_url(url)
    if not _is_sqlite(u):
        return create_engine(u, **kwargs)

    connect_args = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    engine = create_engine(u, connect_args=connect_args, **kwargs)
    wal = not _is_sqlite_memory(u)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Take transaction control away from the sqlite3 module; the "begin" hook below emits BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        mode = str(conn.get_execution_options().get("sqlite_begin", "DEFERRED")).upper()
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"sqlite_begin must be one of {sorted(_SQLITE_BEGIN_MODES)}, not {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory bound to ``engine``.

    Use one session per user action: ``with factory.begin() as session: ...``. Objects stay readable
    after commit (``expire_on_commit=False``) so a page can render what a service returned.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_retryable(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a transient lock/serialization error worth retrying the transaction for."""
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        if "database is locked" in message or "database table is locked" in message or "database is busy" in message:
            return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if sqlstate in _PG_RETRY_SQLSTATES:
            return True
    return False


def with_retry(fn: Callable[[], T], attempts: int = 10, base_delay_s: float = 0.05, max_delay_s: float = 2.0) -> T:
    """Call ``fn`` and retry it when the database reports a transient lock or serialization failure.

    ``fn`` must run a whole transaction (open it, do the work, commit), because a failed transaction is
    rolled back and has to start again from the beginning.

    Args:
        fn: Zero-argument callable running one complete transaction.
        attempts: Total number of calls before the error is re-raised.
        base_delay_s: First backoff delay; doubles each attempt, with jitter.
        max_delay_s: Upper bound for one delay.

    Returns:
        Whatever ``fn`` returns.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except DBAPIError as exc:
            if attempt >= attempts or not is_retryable(exc):
                raise
            delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.info("database busy (attempt %d/%d), retrying in %.2fs", attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def run_transaction(factory: sessionmaker[Session], fn: Callable[[Session], T], attempts: int = 10) -> T:
    """Run ``fn(session)`` in its own transaction, committing on success and retrying when busy.

    Args:
        factory: The session factory.
        fn: The unit of work; it may run several times, so it must not have side effects outside the database.
        attempts: Total number of attempts.

    Returns:
        What ``fn`` returned, after commit.
    """
    bind = factory.kw.get("bind")
    # On SQLite a DEFERRED transaction that reads, then writes, fails at once ("database is locked", no busy
    # wait) whenever another writer committed in between; under steady concurrent writes it can lose that race
    # on every attempt. A transaction that lost it evidently writes: retry it with BEGIN IMMEDIATE, which
    # waits for the write lock (busy timeout) instead of racing again.
    immediate = bind.execution_options(sqlite_begin="IMMEDIATE") if bind is not None and _is_sqlite(bind.url) else None
    tries = 0

    def once() -> T:
        nonlocal tries
        tries += 1
        if tries == 1 or immediate is None:
            with factory.begin() as session:
                return fn(session)
        with factory(bind=immediate) as session, session.begin():
            return fn(session)

    return with_retry(once, attempts=attempts)


def alembic_config(connection=None):
    """Build the Alembic config in code (no alembic.ini); pass ``connection`` to migrate on it."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str | URL | Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe at every start and from several processes at once.

    SQLite migrates inside ``BEGIN IMMEDIATE`` (one writer at a time, DDL is transactional);
    PostgreSQL takes a transaction-scoped advisory lock first. Either way a second process waits,
    then finds the schema already current and does nothing.

    Args:
        url: Database URL, or an existing engine.
        revision: Alembic revision, ``head`` by default.
    """
    from alembic import command

    engine = url if isinstance(url, Engine) else make_engine(url)

    def once() -> None:
        with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            command.upgrade(alembic_config(conn), revision)

    try:
        with_retry(once, attempts=8)
    finally:
        if engine is not url:
            engine.dispose()

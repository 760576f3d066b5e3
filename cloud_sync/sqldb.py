"""One way to open the backend's relational database: SQLite by default, PostgreSQL in production.

``make_engine`` takes a file path or an SQLAlchemy URL (``sqlite:///var/freshbox.db``,
``postgresql+psycopg://user@host/db``) and returns an engine set up the same way for
the ingest and the backend:

* SQLite: WAL, ``synchronous=FULL``, foreign keys on, a 30 s busy timeout, and every
  transaction begun with ``BEGIN IMMEDIATE`` so that writers serialise at the start of
  a transaction instead of failing at their first write (the documented pysqlite recipe:
  the driver's own transaction handling is switched off and SQLAlchemy emits BEGIN).
* PostgreSQL: the psycopg 3 driver; callers that need SQLite's one-writer semantics
  take a table lock inside their transaction (see ``cloud_sync.ingest_db``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

from cloud_sync.errors import SyncError

__all__ = ["database_url", "is_postgres", "make_engine"]


class DatabaseConfigError(SyncError):
    """A database path or URL that cannot be used."""


def database_url(target: str | Path | URL) -> URL:
    """A path becomes ``sqlite:///path``; ``postgresql://`` gets the psycopg 3 driver."""
    if isinstance(target, URL):
        return target
    text = str(target)
    if "://" not in text:
        return make_url(f"sqlite:///{Path(text)}")
    try:
        url = make_url(text)
    except Exception as exc:
        raise DatabaseConfigError(f"not a database URL: {text!r}: {exc}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseConfigError(
            f"unsupported database {url.get_backend_name()!r}: use sqlite:/// or postgresql://"
        )
    return url


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(target: str | Path | URL, **kwargs: Any) -> Engine:
    """An engine for a path or URL, configured as the module docstring says."""
    url = database_url(target)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30.0}, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)

"""The backend's database: one engine (SQLite or PostgreSQL), migrations, and a thread pool.

The request handlers are asynchronous; the database drivers are not. ``Database.run``
executes a function with a connection on a bounded thread pool, in one transaction
(SQLite: ``BEGIN IMMEDIATE``), and returns its result to the event loop. Queries are
SQLAlchemy Core expressions: no SQL is built from strings.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from cloud_sync.sqldb import database_url, is_postgres, make_engine

__all__ = ["Database", "alembic_config", "migrate"]

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic configuration for the packaged migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database up to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(engine), revision)


class Database:
    """The engine, its migrations and the thread pool that runs queries."""

    def __init__(self, target: str | Path, *, workers: int = 8) -> None:
        self.url = database_url(target)
        self.engine = make_engine(self.url, pool_size=workers, max_overflow=4)
        self.postgres = is_postgres(self.engine)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    def migrate(self) -> None:
        migrate(self.engine)

    def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction, on this thread."""
        with self.engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, ...)`` without taking SQLite's writer lock."""
        with self.engine.connect() as conn:
            try:
                return fn(conn, *args, **kwargs)
            finally:
                conn.rollback()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``write`` on the pool: the event loop never waits on the database."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self.write, fn, *args, **kwargs)
        )

    async def query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``read`` on the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self.read, fn, *args, **kwargs)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()


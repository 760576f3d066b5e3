"""Run the backend: database and migrations, MQTT (ingest, cabinet state, commands), HTTP.

``BackendServer(settings)`` is used by ``freshbox serve`` and by ``freshbox demo``; tests
use it too. ``start()`` returns once the HTTP port listens and, with a broker, once the
MQTT clients are connected (or have been given ``timeout`` to).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import select

from backend import restock
from backend import schema as t
from backend.app import create_app
from backend.clock import Clock
from backend.config import BackendSettings
from backend.db import Database
from backend.errors import ConfigError
from backend.fleet import Fleet
from backend.services import Backend

__all__ = ["BackendServer"]

log = logging.getLogger("freshbox.backend")


def _cabinet_keys(conn: Any) -> list[tuple[str, str]]:
    rows = conn.execute(
        select(t.cabinets.c.id, t.cabinets.c.public_key).where(t.cabinets.c.public_key.is_not(None))
    ).all()
    return [(r.id, r.public_key) for r in rows]


@dataclass
class _Running:
    runner: web.AppRunner
    tasks: list[asyncio.Task[Any]]
    stop: asyncio.Event


class BackendServer:
    """The whole backend process (see the module docstring)."""

    def __init__(self, settings: BackendSettings, *, clock: Clock | None = None) -> None:
        if not settings.signing_key.is_file():
            raise ConfigError(
                f"{settings.source}: backend.signing_key: {settings.signing_key}: no such key "
                "file (make one with: freshbox keys init --out "
                f"{settings.signing_key})"
            )
        self.settings = settings
        self.db = Database(settings.db)
        self.backend = Backend(settings=settings, db=self.db, clock=clock or Clock())
        self._running: _Running | None = None
        self.port: int = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self, timeout: float = 10.0) -> None:
        be = self.backend
        loop = asyncio.get_running_loop()
        be.bus.bind(loop)
        await loop.run_in_executor(None, self.db.migrate)
        if self.settings.broker is not None:
            fleet = Fleet(self.settings, self.db, be.clock, be.bus)
            for cabinet_id, public_key in await be.db.query(_cabinet_keys):
                fleet.enrol(cabinet_id, public_key)
            await loop.run_in_executor(None, fleet.start, timeout)
            be.fleet = fleet
        app = create_app(be)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        if be.fleet is not None:
            tasks.append(asyncio.create_task(restock.publisher(be, stop), name="restock"))
        self._running = _Running(runner, tasks, stop)
        log.info("backend listening on %s (database %s)", self.url, self.db.url.get_backend_name())

    async def stop(self) -> None:
        running = self._running
        self._running = None
        if running is not None:
            running.stop.set()
            for task in running.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await running.runner.cleanup()
        fleet = self.backend.fleet
        if fleet is not None:
            await asyncio.get_running_loop().run_in_executor(None, fleet.stop)
            self.backend.fleet = None
        self.db.close()

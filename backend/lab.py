"""The whole stack on one machine, for end-to-end and browser tests and the benchmarks.

An embedded MQTT broker, the backend on a SQLite file with the demo's data, and
``count`` simulated cabinets, each running the real edge daemon as a process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from backend import schema as t
from backend.broker import EmbeddedBroker
from backend.config import load_settings
from backend.demo import _specs
from backend.democabinets import DemoFleet, ensure_backend_key
from backend.seed import DEMO_PASSWORD, seed
from backend.server import BackendServer

CAB = "cab-demo-01"


class Stack:
    def __init__(
        self, tmp: Path, *, count: int = 1, door_alarm_s: float = 120.0, **settings: Any
    ) -> None:
        self.broker = EmbeddedBroker()
        self.broker.start()
        key, _ = ensure_backend_key(tmp)
        self.cabinets = DemoFleet(
            tmp / "cabinets",
            self.broker.settings(),
            key,
            count=count,
            door_alarm_s=door_alarm_s,
        )
        self.cabinets.prepare()
        opts = replace(
            load_settings(environ={}),
            db=str(tmp / "backend.db"),
            signing_key=key,
            port=0,
            broker=self.broker.settings(),
            unlock_wait_s=5.0,
        )
        self.server = BackendServer(replace(opts, **settings))
        self.server.db.migrate()
        self.server.db.write(seed, self.server.backend.clock.now(), _specs(self.cabinets))

    @property
    def url(self) -> str:
        return self.server.url

    def online(self) -> set[str]:
        rows = self.server.db.read(
            lambda c: c.execute(select(t.cabinets.c.id).where(t.cabinets.c.online.is_(True))).all()
        )
        return {r.id for r in rows}


@asynccontextmanager
async def running_stack(tmp: Path, **kwargs: Any) -> AsyncIterator[Stack]:
    s = Stack(tmp, **kwargs)
    try:
        await s.server.start()
        s.cabinets.start()
        deadline = time.monotonic() + 40
        while set(s.cabinets.cabinet_ids) - s.online():
            assert time.monotonic() < deadline, f"cabinets never came online: {s.online()}"
            await asyncio.sleep(0.2)
        yield s
    finally:
        s.cabinets.stop()
        await s.server.stop()
        s.broker.stop()


async def login_http(http: aiohttp.ClientSession, base: str, user: str) -> str:
    """Log in over HTTP; returns the CSRF token."""
    async with http.post(
        f"{base}/api/login", json={"username": user, "password": DEMO_PASSWORD}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["csrf"])

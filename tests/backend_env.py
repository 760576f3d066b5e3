"""Fixtures for backend tests: a migrated, seeded backend on SQLite and on PostgreSQL.

``backend_env`` is parametrised over both databases, so every test that uses it runs
twice. ``api`` is an aiohttp test client; ``login(api, username)`` logs in with the demo
password and returns the CSRF token to send with state-changing requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from pg import postgres_schema

from backend.app import create_app
from backend.clock import FixedClock
from backend.config import load_settings
from backend.db import Database
from backend.seed import DEMO_PASSWORD, CabinetSpec, seed, standard_lanes
from backend.services import Backend
from cloud_sync.keys import generate_private_key, save_private_key

T0 = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)

CABINETS = (
    CabinetSpec("cab-east-1", "East gate", "Building 3", "op-greenvale", lanes=standard_lanes()),
    CabinetSpec("cab-west-2", "West garden", "Building 5", "op-greenvale", lanes=standard_lanes()),
    CabinetSpec(
        "cab-river-1", "Riverside lobby", "Tower A", "op-riverside", lanes=standard_lanes()
    ),
)


@dataclass
class Env:
    backend: Backend
    clock: FixedClock
    users: dict[str, int]
    tmp: Path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "backend.db")
    else:
        with postgres_schema() as url:
            yield url


def make_env(db_target: str, tmp: Path, **overrides: Any) -> Env:
    key = tmp / "backend.key"
    if not key.exists():
        save_private_key(generate_private_key(), key)
    environ = {"FRESHBOX__BACKEND__SIGNING_KEY": str(key)}
    environ["FRESHBOX__BACKEND__DB"] = f'"{db_target}"'
    for name, value in overrides.items():
        environ[f"FRESHBOX__{name.upper()}"] = str(value)
    settings = load_settings(environ=environ)
    db = Database(settings.db)
    db.migrate()
    clock = FixedClock(T0)
    users = db.write(seed, T0, CABINETS)
    return Env(Backend(settings=settings, db=db, clock=clock), clock, users, tmp)


@pytest.fixture
def backend_env(database_target: str, tmp_path: Path) -> Iterator[Env]:
    env = make_env(database_target, tmp_path)
    yield env
    env.backend.db.close()


@pytest_asyncio.fixture
async def api(backend_env: Env) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(backend_env.backend)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    backend_env.backend.bus.bind(asyncio.get_running_loop())
    yield client
    await client.close()


async def login(client: TestClient[Any, Any], username: str) -> str:
    """Log ``username`` in (cookie kept by the client); returns the CSRF token."""
    resp = await client.post("/api/login", json={"username": username, "password": DEMO_PASSWORD})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return str(body["csrf"])

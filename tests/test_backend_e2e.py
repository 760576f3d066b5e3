"""The whole stack: embedded broker, backend, a real edge daemon on a simulated cabinet.

A resident presses Open over HTTP; the backend signs an unlock; the daemon unlocks; a
simulated person takes produce and closes the door; the daemon bills, signs and sends
the sale; the backend verifies and stores it, charges the wallet and pushes the receipt
to the resident's event stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import select

from backend import schema as t
from backend.lab import CAB, Stack, login_http, running_stack

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


async def test_open_take_bill_receipt(stack: Stack) -> None:
    base = stack.server.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        csrf = await login_http(http, base, "li.wei")
        async with http.get(f"{base}/api/wallet") as resp:
            wallet = await resp.json()
            assert resp.status == 200, wallet
            before = wallet["balance_fen"]
        events = await http.get(f"{base}/api/events", timeout=aiohttp.ClientTimeout(total=60))
        t0 = time.perf_counter()
        async with http.post(
            f"{base}/api/cabinets/{CAB}/open", json={}, headers={"X-CSRF-Token": csrf}
        ) as resp:
            opened = await resp.json()
        latency = time.perf_counter() - t0
        assert resp.status == 200, opened
        assert opened["status"] == "unlocked" and opened["session_id"]
        assert latency < 1.0, f"door open after {latency:.2f} s"
        receipt: dict[str, Any] | None = None
        deadline = time.monotonic() + 45
        while receipt is None and time.monotonic() < deadline:
            raw = await asyncio.wait_for(events.content.readline(), 45)
            line = raw.decode().strip()
            if line.startswith("data:"):
                doc = json.loads(line[5:])
                if doc.get("type") == "receipt" and doc.get("cabinet_id") == CAB:
                    receipt = doc
        events.close()
        assert receipt is not None, "no receipt arrived"
        assert receipt["session_id"] == opened["session_id"]
        assert receipt["verified"] is True and len(receipt["record_hash"]) == 64
        assert receipt["lines"] and receipt["total_fen"] > 0
        assert receipt["evidence"]
        async with http.get(f"{base}/api/wallet") as resp:
            after = (await resp.json())["balance_fen"]
        assert after == before - receipt["charged_fen"]
        assert receipt["charged_fen"] == receipt["total_fen"]
    row = stack.server.db.read(
        lambda c: c.execute(
            select(t.unlocks).where(t.unlocks.c.session_id == opened["session_id"])
        ).one()
    )
    assert row.status == "billed" and row.sale_seq == receipt["seq"]


async def test_busy_cabinet_is_refused_with_a_reason(stack: Stack) -> None:
    base = stack.server.url
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as a,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as b,
    ):
        csrf_a = await login_http(a, base, "li.wei")
        csrf_b = await login_http(b, base, "zhang.min")
        async with a.post(
            f"{base}/api/cabinets/{CAB}/open", json={}, headers={"X-CSRF-Token": csrf_a}
        ) as resp:
            assert resp.status == 200
        async with b.post(
            f"{base}/api/cabinets/{CAB}/open", json={}, headers={"X-CSRF-Token": csrf_b}
        ) as resp:
            body = await resp.json()
            assert resp.status == 409 and body["reason"] == "busy"
            assert "using this cabinet" in body["message"]

"""The vegetable base's side: restock demand, the feed (JSON, CSV, MQTT), deliveries,
roles and tokens, and deliveries marked placed by an operator's restocking session."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from backend_env import T0, Env, login
from backend_sales import CabinetFeed, line
from sqlalchemy import select, update

from backend import restock
from backend import schema as t
from cloud_sync.canonical import canonical_bytes

EAST = "cab-east-1"
TONGREN = {"tomato-500", "bokchoy", "chili-150"}


# ------------------------------------------------------------------ helpers


def set_stock(
    env: Env, cabinet: str, lane: int, *, count: int | None = None, grams: float | None = None
) -> None:
    env.backend.db.write(
        lambda c: c.execute(
            update(t.lanes)
            .where(t.lanes.c.cabinet_id == cabinet, t.lanes.c.lane == lane)
            .values(stock_count=count, stock_g=grams)
        )
    )


def demand(env: Env, supplier: str | None = "sup-tongren") -> dict[tuple[str, int], Any]:
    lines = env.backend.db.read(restock.demand, env.clock.now(), supplier_id=supplier)
    return {(ln.cabinet_id, ln.lane): ln for ln in lines}


def deliver(env: Env, cabinet: str, sku: str, qty: int, supplier: str = "sup-tongren") -> int:
    row = env.backend.db.write(
        restock.confirm_delivery,
        supplier,
        cabinet_id=cabinet,
        sku=sku,
        qty=qty,
        note="",
        user_id=env.users["base"],
        now=env.clock.now(),
    )
    return int(row["id"])


def delivery_rows(env: Env) -> dict[int, Any]:
    rows = env.backend.db.read(lambda c: c.execute(select(t.deliveries)).all())
    return {int(r.id): r for r in rows}


def sales_history(env: Env) -> None:
    """Tomatoes, bok choy and chili sold on cab-east-1 (and one chili on cab-west-2)."""
    feed = CabinetFeed(env)
    env.clock.t = T0 - timedelta(days=10)  # outside the 7-day window
    feed.sale(EAST, "li.wei", [line(1, "tomato-500", 3, 1502.0, 690)])
    env.clock.t = T0 - timedelta(days=3)
    feed.sale(
        EAST,
        "li.wei",
        [line(1, "tomato-500", 2, 1001.9, 690), line(2, "bokchoy", None, 412.0, 800)],
    )
    feed.sale("cab-west-2", "zhang.min", [line(4, "chili-150", 1, 150.2, 380)])
    env.clock.t = T0 - timedelta(days=1)
    feed.sale(EAST, "zhang.min", [line(1, "tomato-500", 1, 499.0, 690)])
    # an operator's session is never demand
    feed.sale(EAST, "ops", [line(1, "tomato-500", 4, 2000.0, 690)], role="operator")
    env.clock.t = T0


# ------------------------------------------------------------------ demand


def test_demand_from_par_stock_and_velocity(backend_env: Env) -> None:
    env = backend_env
    set_stock(env, EAST, 1, count=2, grams=1003.0)
    set_stock(env, EAST, 2, grams=1250.0)
    set_stock(env, EAST, 4, count=7, grams=1050.0)
    sales_history(env)
    d = demand(env)
    tomato = d[(EAST, 1)]
    # 3 tomatoes in 7 days: 0.43/day, 0.86 in 2 days; 6 - 2 + 0.86 -> 5
    assert (tomato.par, tomato.stock, tomato.velocity_per_day, tomato.expected) == (
        6,
        2,
        0.43,
        0.86,
    )
    assert tomato.demand == 5 and tomato.unit == "item" and tomato.stock_known
    assert tomato.cabinet_name == "East gate" and tomato.location == "Building 3"
    bokchoy = d[(EAST, 2)]
    # 412 g in 7 days: 58.9 g/day, 117.8 g in 2 days; 4000 - 1250 + 117.8 = 2867.8 -> 2900
    assert (bokchoy.unit, bokchoy.par, bokchoy.stock) == ("g", 4000, 1250.0)
    assert (bokchoy.velocity_per_day, bokchoy.expected, bokchoy.demand) == (58.9, 117.8, 2900)
    chili = d[(EAST, 4)]
    assert (chili.stock, chili.velocity_per_day, chili.demand) == (7, 0.0, 0)
    # cab-west-2: nothing reported yet (stock unknown = 0, flagged), one chili sold there
    west_chili = d[("cab-west-2", 4)]
    assert west_chili.stock_known is False and west_chili.stock == 0
    assert (west_chili.velocity_per_day, west_chili.expected, west_chili.demand) == (
        0.14,
        0.28,
        8,
    )
    assert d[("cab-west-2", 1)].demand == 6
    assert d[("cab-river-1", 2)].demand == 4000


def test_pending_deliveries_reduce_demand(backend_env: Env) -> None:
    env = backend_env
    set_stock(env, EAST, 1, count=2)
    set_stock(env, EAST, 2, grams=1250.0)
    sales_history(env)
    assert demand(env)[(EAST, 1)].demand == 5
    deliver(env, EAST, "tomato-500", 3)
    deliver(env, EAST, "bokchoy", 2000)
    deliver(env, "cab-west-2", "tomato-500", 6)  # another cabinet: no effect on east
    d = demand(env)
    assert (d[(EAST, 1)].pending_deliveries, d[(EAST, 1)].demand) == (3, 2)
    assert (d[(EAST, 2)].pending_deliveries, d[(EAST, 2)].demand) == (2000, 900)
    assert d[("cab-west-2", 1)].demand == 0
    # more on the way than needed: never negative
    deliver(env, EAST, "tomato-500", 10)
    assert demand(env)[(EAST, 1)].demand == 0
    # a placed delivery is stock, not pending; a stale one stops holding demand back
    env.backend.db.write(
        lambda c: c.execute(
            update(t.deliveries)
            .where(t.deliveries.c.cabinet_id == EAST, t.deliveries.c.sku == "tomato-500")
            .values(status="placed", placed_qty=3, placed_at="2026-11-28T08:00:00.000Z")
        )
    )
    assert demand(env)[(EAST, 1)].demand == 5
    env.clock.advance(4 * 86400)
    assert demand(env)[(EAST, 2)].pending_deliveries == 0


def test_each_base_sees_only_its_lanes(backend_env: Env) -> None:
    env = backend_env
    tongren = demand(env, "sup-tongren")
    assert {ln.sku for ln in tongren.values()} == TONGREN
    assert len(tongren) == 9 and {ln.supplier_id for ln in tongren.values()} == {"sup-tongren"}
    hillside = demand(env, "sup-hillside")
    assert {ln.sku for ln in hillside.values()} == {"eggs-10"} and len(hillside) == 3
    assert all(ln.mode == "tracked" and ln.unit == "item" for ln in hillside.values())
    everyone = demand(env, None)
    assert len(everyone) == 12


# ------------------------------------------------------------------ HTTP: feed and CSV


async def test_csv_matches_json(backend_env: Env, api: TestClient[Any, Any]) -> None:
    env = backend_env
    set_stock(env, EAST, 1, count=2)
    set_stock(env, EAST, 2, grams=1250.5)
    env.backend.db.write(
        lambda c: c.execute(
            update(t.lanes)
            .where(t.lanes.c.cabinet_id == EAST, t.lanes.c.lane == 4)
            .values(name='Chili, "hot" 150 g')
        )
    )
    sales_history(env)
    await login(api, "base")
    resp = await api.get("/api/supplier/feed")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["v"] == 1 and doc["supplier"] == "sup-tongren"
    assert doc["generated_at"] == "2026-11-28T09:00:00.000Z"
    assert (doc["velocity_days"], doc["horizon_days"]) == (7, 2.0)
    resp = await api.get("/api/supplier/feed.csv")
    assert resp.status == 200
    assert resp.content_type == "text/csv" and resp.charset == "utf-8"
    assert resp.headers["Content-Disposition"] == (
        'attachment; filename="restock-sup-tongren-2026-11-28.csv"'
    )
    raw = await resp.read()
    assert b"\r\n" in raw
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == restock.CSV_HEADER
    assert len(rows) - 1 == len(doc["lines"]) == 9
    for row, ln in zip(rows[1:], doc["lines"], strict=True):
        cell = dict(zip(rows[0], row, strict=True))
        for key in ("supplier_id", "cabinet_id", "cabinet_name", "location", "sku", "name"):
            assert cell[key] == ln[key]
        assert cell["unit"] == ln["unit"] and int(cell["lane"]) == ln["lane"]
        for key, jkey in (
            ("par", "par"),
            ("stock", "stock"),
            ("velocity_per_day", "velocity_per_day"),
            ("expected", "expected"),
            ("pending", "pending_deliveries"),
            ("demand", "demand"),
        ):
            assert float(cell[key]) == ln[jkey], (key, cell, ln)
    assert any(c["name"] == 'Chili, "hot" 150 g' for c in doc["lines"])


def test_csv_cells_that_look_like_formulas_are_text() -> None:
    ln = restock.DemandLine(
        "sup-x", "cab-1", "=HYPERLINK(1)", "", 1, "s", "+1", "unit", "item", 6, 0, 0.0, 0.0, 0, 6
    )
    rows = list(csv.reader(io.StringIO(restock.feed_csv([ln]), newline="")))
    assert rows[1][2] == "'=HYPERLINK(1)" and rows[1][6] == "'+1"


# ------------------------------------------------------------------ HTTP: roles


SUPPLIER_GETS = ("/api/supplier/feed", "/api/supplier/feed.csv", "/api/supplier/deliveries")


async def test_unauthenticated_is_401_json(api: TestClient[Any, Any]) -> None:
    for path in SUPPLIER_GETS:
        resp = await api.get(path)
        assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    resp = await api.post("/api/supplier/deliveries", json={})
    assert resp.status == 401
    resp = await api.get("/supplier", headers={"Accept": "text/html"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")


@pytest.mark.parametrize("username", ["li.wei", "ops"])
async def test_residents_and_operators_are_403(api: TestClient[Any, Any], username: str) -> None:
    csrf = await login(api, username)
    for path in SUPPLIER_GETS:
        resp = await api.get(path)
        assert resp.status == 403 and (await resp.json())["error"] == "forbidden", path
    h = {"X-CSRF-Token": csrf}
    body = {"cabinet_id": EAST, "sku": "tomato-500", "qty": 3}
    resp = await api.post("/api/supplier/deliveries", json=body, headers=h)
    assert resp.status == 403
    resp = await api.post("/api/supplier/tokens", json={"label": "x"}, headers=h)
    assert resp.status == 403
    resp = await api.get("/supplier", headers={"Accept": "text/html"})
    assert resp.status == 403 and "text/html" in resp.headers["Content-Type"]


async def test_a_supplier_never_sees_another_suppliers_data(
    backend_env: Env, api: TestClient[Any, Any]
) -> None:
    deliver(backend_env, EAST, "tomato-500", 4)
    await login(api, "base2")
    doc = await (await api.get("/api/supplier/feed")).json()
    assert doc["supplier"] == "sup-hillside"
    assert {ln["sku"] for ln in doc["lines"]} == {"eggs-10"}
    assert {ln["supplier_id"] for ln in doc["lines"]} == {"sup-hillside"}
    text = await (await api.get("/api/supplier/feed.csv")).text()
    assert "sup-tongren" not in text and "tomato" not in text
    body = await (await api.get("/api/supplier/deliveries")).json()
    assert body == {"supplier": "sup-hillside", "deliveries": []}
    for path in SUPPLIER_GETS:
        resp = await api.get(path, params={"supplier": "sup-tongren"})
        assert resp.status == 403, path
    page = await (await api.get("/supplier", headers={"Accept": "text/html"})).text()
    assert "tomato-500" not in page and "Tongren" not in page and "eggs-10" in page


async def test_admin_names_the_supplier(backend_env: Env, api: TestClient[Any, Any]) -> None:
    csrf = await login(api, "admin")
    resp = await api.get("/api/supplier/feed")
    assert resp.status == 400 and (await resp.json())["field"] == "supplier"
    resp = await api.get("/api/supplier/feed", params={"supplier": "sup-nowhere"})
    assert resp.status == 400 and (await resp.json())["field"] == "supplier"
    doc = await (await api.get("/api/supplier/feed", params={"supplier": "sup-hillside"})).json()
    assert {ln["sku"] for ln in doc["lines"]} == {"eggs-10"}
    resp = await api.post(
        "/api/supplier/deliveries?supplier=sup-hillside",
        json={"cabinet_id": EAST, "sku": "eggs-10", "qty": 2},
        headers={"X-CSRF-Token": csrf},
    )
    assert resp.status == 201
    assert (await resp.json())["delivery"]["supplier_id"] == "sup-hillside"
    picker = await (await api.get("/supplier", headers={"Accept": "text/html"})).text()
    assert 'data-testid="supplier-pick"' in picker and "supplier=sup-hillside" in picker
    page = await (
        await api.get("/supplier?supplier=sup-hillside", headers={"Accept": "text/html"})
    ).text()
    assert "Hillside Egg Farm" in page and 'data-testid="tokens"' not in page
    assert 'href="/api/supplier/feed.csv?supplier=sup-hillside"' in page
    # tokens are a supplier's own
    resp = await api.post(
        "/api/supplier/tokens", json={"label": "x"}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status == 403


# ------------------------------------------------------------------ HTTP: deliveries


async def test_confirm_and_list_deliveries(backend_env: Env, api: TestClient[Any, Any]) -> None:
    csrf = await login(api, "base")
    h = {"X-CSRF-Token": csrf}
    resp = await api.post(
        "/api/supplier/deliveries",
        json={"cabinet_id": EAST, "sku": "tomato-500", "qty": 4, "note": "morning van"},
        headers=h,
    )
    assert resp.status == 201, await resp.text()
    d = (await resp.json())["delivery"]
    assert (d["cabinet_id"], d["sku"], d["qty"], d["status"], d["note"]) == (
        EAST,
        "tomato-500",
        4,
        "confirmed",
        "morning van",
    )
    assert (
        d["name"] == "Tomatoes 500 g" and d["unit"] == "item" and d["cabinet_name"] == "East gate"
    )
    assert d["placed_qty"] is None and d["confirmed_at"] == "2026-11-28T09:00:00.000Z"
    resp = await api.post(
        "/api/supplier/deliveries",
        json={"cabinet_id": EAST, "sku": "bokchoy", "qty": "1500"},
        headers=h,
    )
    assert resp.status == 201 and (await resp.json())["delivery"]["unit"] == "g"
    body = await (await api.get("/api/supplier/deliveries")).json()
    assert [x["sku"] for x in body["deliveries"]] == ["bokchoy", "tomato-500"]
    body = await (await api.get("/api/supplier/deliveries?limit=1")).json()
    assert len(body["deliveries"]) == 1
    body = await (await api.get("/api/supplier/deliveries?status=placed")).json()
    assert body["deliveries"] == []
    doc = await (await api.get("/api/supplier/feed")).json()
    east_tomato = next(x for x in doc["lines"] if x["cabinet_id"] == EAST and x["lane"] == 1)
    assert east_tomato["pending_deliveries"] == 4 and east_tomato["demand"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sku": "tomato-500", "qty": 3}, "cabinet_id"),
        ({"cabinet_id": EAST, "qty": 3}, "sku"),
        ({"cabinet_id": EAST, "sku": "tomato-500"}, "qty"),
        ({"cabinet_id": EAST, "sku": "tomato-500", "qty": 0}, "qty"),
        ({"cabinet_id": EAST, "sku": "tomato-500", "qty": 10_001}, "qty"),
        ({"cabinet_id": EAST, "sku": "tomato-500", "qty": "three"}, "qty"),
        ({"cabinet_id": EAST, "sku": "tomato-500", "qty": 2.5}, "qty"),
        ({"cabinet_id": EAST, "sku": "tomato-500", "qty": True}, "qty"),
        ({"cabinet_id": "cab-nowhere", "sku": "tomato-500", "qty": 3}, "cabinet_id"),
        ({"cabinet_id": EAST, "sku": "eggs-10", "qty": 3}, "sku"),  # Hillside's lane
        ({"cabinet_id": EAST, "sku": "durian", "qty": 3}, "sku"),
        ({"cabinet_id": EAST, "sku": "tomato-500", "qty": 3, "note": "x" * 301}, "note"),
        ({"cabinet_id": ["cab"], "sku": "tomato-500", "qty": 3}, "cabinet_id"),
    ],
)
async def test_delivery_validation_names_the_field(
    backend_env: Env, api: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    csrf = await login(api, "base")
    resp = await api.post("/api/supplier/deliveries", json=body, headers={"X-CSRF-Token": csrf})
    assert resp.status == 400
    err = await resp.json()
    assert err["error"] == "invalid" and err["field"] == field and err["message"]
    assert delivery_rows(backend_env) == {}


async def test_other_validation_names_the_field(api: TestClient[Any, Any]) -> None:
    csrf = await login(api, "base")
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("status=lost", "status")):
        resp = await api.get(f"/api/supplier/deliveries?{query}")
        assert resp.status == 400 and (await resp.json())["field"] == field
    resp = await api.post("/api/supplier/tokens", json={}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 400 and (await resp.json())["field"] == "label"
    resp = await api.post(
        "/api/supplier/deliveries",
        data=b"{nope",
        headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"},
    )
    assert resp.status == 400 and (await resp.json())["field"] == "body"
    # a state change without the CSRF token is refused
    resp = await api.post("/api/supplier/deliveries", json={"cabinet_id": EAST})
    assert resp.status == 403


# ------------------------------------------------------------------ HTTP: tokens


async def test_bearer_token_reads_the_feed_and_confirms(
    backend_env: Env, api: TestClient[Any, Any]
) -> None:
    csrf = await login(api, "base")
    resp = await api.post(
        "/api/supplier/tokens", json={"label": "warehouse"}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status == 201
    token = (await resp.json())["token"]
    assert token.startswith("fbt_")
    api.session.cookie_jar.clear()
    bearer = {"Authorization": f"Bearer {token}"}
    resp = await api.get("/api/supplier/feed", headers=bearer)
    assert resp.status == 200 and (await resp.json())["supplier"] == "sup-tongren"
    resp = await api.get("/api/supplier/feed.csv", headers=bearer)
    assert resp.status == 200 and (await resp.text()).startswith("supplier_id,cabinet_id")
    # no CSRF with a token
    resp = await api.post(
        "/api/supplier/deliveries",
        json={"cabinet_id": EAST, "sku": "chili-150", "qty": 5},
        headers=bearer,
    )
    assert resp.status == 201
    assert delivery_rows(backend_env)[1].confirmed_by == backend_env.users["base"]
    resp = await api.get("/api/supplier/feed", headers=bearer, params={"supplier": "sup-hillside"})
    assert resp.status == 403
    # a token cannot mint more tokens (a leaked one must stay revocable)
    resp = await api.post("/api/supplier/tokens", json={"label": "more"}, headers=bearer)
    assert resp.status == 403
    for bad in ("fbt_not-a-token", token + "x", ""):
        resp = await api.get("/api/supplier/feed", headers={"Authorization": f"Bearer {bad}"})
        assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"


# ------------------------------------------------------------------ the page


async def test_supplier_page_forms(backend_env: Env, api: TestClient[Any, Any]) -> None:
    set_stock(backend_env, EAST, 1, count=2)
    csrf = await login(api, "base")
    html = {"Accept": "text/html"}
    resp = await api.get("/supplier", headers=html)
    assert resp.status == 200
    page = await resp.text()
    for testid in ("feed", "csv", "confirm-delivery", "deliveries", "tokens", "create-token"):
        assert f'data-testid="{testid}"' in page, testid
    assert 'href="/api/supplier/feed.csv"' in page
    assert page.count('data-testid="feed-row"') == 9
    assert 'data-cabinet="cab-east-1" data-sku="tomato-500"' in page
    assert "eggs-10" not in page

    # the delivery form: redirect after success, the page names the field on error
    form = {"csrf": csrf, "cabinet_id": EAST, "sku": "tomato-500", "qty": "3", "note": "van 2"}
    resp = await api.post("/supplier/deliveries", data=form, headers=html, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/supplier?delivered=1"
    page = await (await api.get("/supplier?delivered=1", headers=html)).text()
    assert "Delivery #1 confirmed." in page and 'data-testid="delivery-row"' in page
    assert "on the way" in page
    bad = {**form, "qty": "0"}
    resp = await api.post("/supplier/deliveries", data=bad, headers=html)
    assert resp.status == 400
    page = await resp.text()
    assert 'data-testid="error-qty"' in page and "qty: must be at least 1" in page
    resp = await api.post("/supplier/deliveries", data={**form, "csrf": "wrong"}, headers=html)
    assert resp.status == 403

    # tokens: shown once, listed, revocable
    resp = await api.post("/supplier/tokens", data={"csrf": csrf, "label": "erp"}, headers=html)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    page = await resp.text()
    start = page.index('data-testid="new-token">') + len('data-testid="new-token">')
    token = page[start : page.index("<", start)]
    assert token.startswith("fbt_")
    page = await (await api.get("/supplier", headers=html)).text()
    assert token not in page and 'data-testid="token-row"' in page
    token_id = backend_env.backend.db.read(
        lambda c: c.execute(select(t.api_tokens.c.id)).scalar_one()
    )
    resp = await api.post(
        f"/supplier/tokens/{token_id}/revoke",
        data={"csrf": csrf},
        headers=html,
        allow_redirects=False,
    )
    assert resp.status == 303
    resp = await api.get("/api/supplier/feed", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    resp = await api.post("/supplier/tokens", data={"csrf": csrf, "label": ""}, headers=html)
    assert resp.status == 400 and 'data-testid="error-label"' in await resp.text()


# ------------------------------------------------------------------ MQTT


class FakeFleet:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish_restock(self, supplier_id: str, feed: dict[str, Any]) -> None:
        canonical_bytes(feed)  # what the real fleet sends: must be canonical JSON
        self.published.append((supplier_id, feed))


async def test_publish_all_sends_every_suppliers_feed(backend_env: Env) -> None:
    be = backend_env.backend
    assert await restock.publish_all(be) == 0  # no broker: nothing to do
    set_stock(backend_env, EAST, 2, grams=1250.5)
    sales_history(backend_env)
    fleet = FakeFleet()
    be.fleet = fleet  # type: ignore[assignment]
    assert await restock.publish_all(be) == 2
    got = dict(fleet.published)
    assert set(got) == {"sup-tongren", "sup-hillside"}
    for supplier, doc in got.items():
        assert doc["supplier"] == supplier and doc["v"] == 1
        assert {ln["supplier_id"] for ln in doc["lines"]} == {supplier}
    assert got["sup-tongren"] == be.db.read(restock.feed, backend_env.clock.now(), "sup-tongren")
    assert json.loads(canonical_bytes(got["sup-hillside"]))["lines"][0]["sku"] == "eggs-10"


async def test_publisher_runs_until_stopped(backend_env: Env) -> None:
    be = backend_env.backend
    fleet = FakeFleet()
    be.fleet = fleet  # type: ignore[assignment]
    stop = asyncio.Event()
    task = asyncio.create_task(restock.publisher(be, stop))
    for _ in range(200):
        if fleet.published:
            break
        await asyncio.sleep(0.01)
    assert {s for s, _ in fleet.published} == {"sup-tongren", "sup-hillside"}
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_a_confirmed_delivery_republishes_the_feed(
    backend_env: Env, api: TestClient[Any, Any]
) -> None:
    fleet = FakeFleet()
    backend_env.backend.fleet = fleet  # type: ignore[assignment]
    csrf = await login(api, "base")
    resp = await api.post(
        "/api/supplier/deliveries",
        json={"cabinet_id": EAST, "sku": "tomato-500", "qty": 2},
        headers={"X-CSRF-Token": csrf},
    )
    assert resp.status == 201
    assert [s for s, _ in fleet.published] == ["sup-tongren"]
    line1 = next(
        x for x in fleet.published[0][1]["lines"] if x["cabinet_id"] == EAST and x["lane"] == 1
    )
    assert line1["pending_deliveries"] == 2


# ------------------------------------------------------------------ placement


def restock_body(evidence: list[dict[str, float]]) -> dict[str, Any]:
    """An operator session's sale body as edge/cabinet.py writes it."""
    return {
        "session_id": "01JD7V3K9Q8X2M4N6P0R5S7T9V",
        "resident": "op-1",
        "role": "operator",
        "unlocked_at": 2.0,
        "opened_at": 3.0,
        "closed_at": 12.0,
        "billed_at": 13.5,
        "lines": [],
        "total_fen": 0,
        "flags": [],
        "evidence": evidence,
    }


def test_record_placement_marks_the_oldest_deliveries(backend_env: Env) -> None:
    env = backend_env
    first = deliver(env, EAST, "tomato-500", 2)
    env.clock.advance(60)
    second = deliver(env, EAST, "tomato-500", 1)
    env.clock.advance(60)
    third = deliver(env, EAST, "tomato-500", 5)
    bok = deliver(env, EAST, "bokchoy", 800)
    chili = deliver(env, EAST, "chili-150", 2)
    west = deliver(env, "cab-west-2", "tomato-500", 3)
    body = restock_body(
        [
            {"lane": 1, "before_g": 1001.2, "after_g": 2503.9, "delta_g": 1502.7},  # 3 packs
            {"lane": 2, "before_g": 300.0, "after_g": 1120.4, "delta_g": 820.4},
            {"lane": 4, "before_g": 600.0, "after_g": 450.0, "delta_g": -150.0},  # taken out
        ]
    )
    # a resident's body places nothing
    resident = {**body, "role": "resident"}
    assert env.backend.db.write(restock.record_placement, EAST, resident, "x") == 0
    at = "2026-11-28T09:02:00.000Z"
    assert env.backend.db.write(restock.record_placement, EAST, body, at) == 3
    rows = delivery_rows(env)
    assert (rows[first].status, rows[first].placed_qty, rows[first].placed_at) == (
        "placed",
        2,
        at,
    )
    assert (rows[second].status, rows[second].placed_qty) == ("placed", 1)
    assert (rows[third].status, rows[third].placed_qty) == ("confirmed", None)
    assert (rows[bok].status, rows[bok].placed_qty) == ("placed", 800)
    assert rows[chili].status == "confirmed" and rows[west].status == "confirmed"
    # the next restock places the rest
    body2 = restock_body([{"lane": 1, "before_g": 2503.9, "after_g": 5005.0}])
    assert env.backend.db.write(restock.record_placement, EAST, body2, at) == 1
    assert (delivery_rows(env)[third].status, delivery_rows(env)[third].placed_qty) == (
        "placed",
        5,
    )
    # nothing left to place: nothing happens
    assert env.backend.db.write(restock.record_placement, EAST, body2, at) == 0


def test_record_placement_on_tracked_lanes(backend_env: Env) -> None:
    env = backend_env
    eggs = deliver(env, EAST, "eggs-10", 2, supplier="sup-hillside")
    body = restock_body([{"lane": 3, "before_g": 1851.3, "after_g": 3091.3, "delta_g": 1240.0}])
    # the eggs' box weight is unknown until the cabinet reports its stock: count unknown
    assert env.backend.db.write(restock.record_placement, EAST, body, "t") == 1
    assert (delivery_rows(env)[eggs].status, delivery_rows(env)[eggs].placed_qty) == (
        "placed",
        None,
    )
    eggs2 = deliver(env, EAST, "eggs-10", 2, supplier="sup-hillside")
    set_stock(env, EAST, 3, count=3, grams=1851.3)  # about 617 g a box
    assert env.backend.db.write(restock.record_placement, EAST, body, "t") == 1
    assert delivery_rows(env)[eggs2].placed_qty == 2


def _real_restock_record(tmp: Path) -> dict[str, Any]:
    """An operator's restocking session on a simulated cabinet (the real edge code):
    two packs of tomatoes and two boxes of eggs placed."""
    from datetime import datetime

    from edge.cabinet import Cabinet, ulid_factory, utc_epoch
    from edge.hardware.interfaces import MemoryLock
    from edge.session import SessionResult
    from edge.store import CabinetStore
    from firmware_mock.scenario import Physics, load_scenario
    from firmware_mock.simulator import SimulatedCabinet

    scenario = load_scenario(Path(__file__).parent / "fixtures/scenarios/basic-purchase.json")
    epoch = utc_epoch("2026-11-28T09:00:00Z")
    sim = SimulatedCabinet.live(scenario.lanes, scenario.stock, Physics(), seed=11)

    def wall() -> datetime:
        return epoch + timedelta(seconds=sim.now)

    store = CabinetStore(tmp / "cabinet.db", cabinet_id=EAST, now=wall)
    results: list[SessionResult] = []
    cabinet = Cabinet(
        sim.spec,
        store=store,
        lock=MemoryLock(),
        epoch=epoch,
        new_id=ulid_factory(epoch, random.Random(11)),
        on_session=results.append,
    )

    def until(t: float) -> None:
        while sim.now < t - 1e-9:
            cabinet.feed(sim.advance(min(t, sim.now + 0.1)))

    try:
        until(2.0)
        assert cabinet.unlock(2.0, "op-1", "operator") is not None
        sim.unlock("op-1", "operator")
        until(3.0)
        cabinet.feed(sim.open_door())
        until(4.0)
        sim.place(1, 502.0)
        until(5.5)
        sim.place(1, 497.5)
        until(7.0)
        sim.place(3, 575.0)
        until(10.0)
        sim.place(3, 665.0)
        until(13.0)
        cabinet.feed(sim.close_door())
        until(20.0)
    finally:
        store.close()
    assert len(results) == 1
    return results[0].record


def test_record_placement_from_a_real_restocking_session(backend_env: Env) -> None:
    env = backend_env
    record = _real_restock_record(env.tmp)
    assert record["role"] == "operator" and record["lines"] == [] and record["total_fen"] == 0
    gained = {e["lane"] for e in record["evidence"] if e["delta_g"] > 0}
    assert gained == {1, 3}
    tomatoes = deliver(env, EAST, "tomato-500", 2)
    eggs = deliver(env, EAST, "eggs-10", 2, supplier="sup-hillside")
    bok = deliver(env, EAST, "bokchoy", 500)
    set_stock(env, EAST, 3, count=3, grams=1851.3)
    # through the real ingest path, as the backend will wire it: the sale is stored
    # (never charged) and the placement is recorded in the same transaction
    feed = CabinetFeed(env)
    applier = feed.db.on_stored
    assert applier is not None

    def on_stored(tx: Any, rec: Any) -> None:
        applier(tx, rec)
        doc = json.loads(rec.text)
        if rec.kind == "sale":
            restock.record_placement(tx.conn, rec.cabinet, doc["body"], rec.at)

    feed.db.on_stored = on_stored
    feed.record(EAST, "sale", record)
    rows = delivery_rows(env)
    assert (rows[tomatoes].status, rows[tomatoes].placed_qty) == ("placed", 2)
    assert (rows[eggs].status, rows[eggs].placed_qty) == ("placed", 2)
    assert rows[tomatoes].placed_at == "2026-11-28T09:00:00.000Z"
    assert rows[bok].status == "confirmed"
    sale = env.backend.db.read(lambda c: c.execute(select(t.sales)).one())
    assert (sale.role, sale.charged_fen) == ("operator", 0)

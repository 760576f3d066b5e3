"""The operator side: dashboard, cabinet pages, reviews and refunds, alarms, signed
price and planogram changes; roles and ownership; a dashboard built with a constant
number of SQL statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient
from backend_env import Env, login
from backend_sales import CabinetFeed, line
from sqlalchemy import event, select, update

from backend import charts, dashboard, wallet
from backend import schema as t
from backend.fleet import CommandResult
from backend.seed import CabinetSpec, add_cabinet, standard_lanes

Client = TestClient[Any, Any]


# ---------------------------------------------------------------------- helpers


async def _login(api: Client, username: str) -> str:
    """Log ``username`` in instead of whoever was (a fresh cookie jar)."""
    api.session.cookie_jar.clear()
    return await login(api, username)


async def _as(api: Client, username: str) -> dict[str, str]:
    """Log ``username`` in; the headers its state-changing requests need."""
    return {"X-CSRF-Token": await _login(api, username)}


async def _json(api: Client, path: str, status: int = 200) -> Any:
    resp = await api.get(path)
    assert resp.status == status, (path, resp.status, await resp.text())
    return await resp.json()


async def _post(
    api: Client, path: str, headers: dict[str, str], body: Any = None, status: int = 200
) -> Any:
    resp = await api.post(path, json=body if body is not None else {}, headers=headers)
    assert resp.status == status, (path, resp.status, await resp.text())
    return await resp.json()


def _balance(env: Env, user: str) -> int:
    return env.backend.db.read(wallet.balance, env.users[user])


def _lanes(env: Env, cabinet_id: str) -> dict[int, Any]:
    rows = env.backend.db.read(
        lambda c: c.execute(select(t.lanes).where(t.lanes.c.cabinet_id == cabinet_id)).all()
    )
    return {int(r.lane): r for r in rows}


@dataclass
class FakeFleet:
    """Stands in for ``backend.fleet.Fleet``: records commands, answers ``result``."""

    result: CommandResult = field(default_factory=lambda: CommandResult(True, "done", None, {}))
    sent: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    async def command(
        self, cabinet_id: str, name: str, args: dict[str, Any], **kw: Any
    ) -> CommandResult:
        self.sent.append((cabinet_id, name, args, kw))
        return self.result


@contextmanager
def count_statements(env: Env) -> Iterator[list[str]]:
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = env.backend.db.engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


# ---------------------------------------------------------------------- roles


async def test_roles_and_company_scope(api: Client, backend_env: Env) -> None:
    for path in ("/api/ops/dashboard", "/api/ops/review", "/api/ops/sales"):
        resp = await api.get(path)
        assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    resp = await api.get("/ops", headers={"Accept": "text/html"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")

    for user in ("li.wei", "base"):
        await _login(api, user)
        for path in ("/api/ops/dashboard", "/api/ops/cabinets/cab-east-1", "/api/ops/review"):
            assert (await api.get(path)).status == 403, (user, path)
        resp = await api.get("/ops", headers={"Accept": "text/html"})
        assert resp.status == 403 and "text/html" in resp.headers["Content-Type"]

    seen = {}
    for user in ("ops", "ops2", "admin"):
        await _login(api, user)
        body = await _json(api, "/api/ops/dashboard")
        seen[user] = sorted(c["id"] for c in body["cabinets"])
    assert seen["ops"] == ["cab-east-1", "cab-west-2"]
    assert seen["ops2"] == ["cab-river-1"]
    assert seen["admin"] == ["cab-east-1", "cab-river-1", "cab-west-2"]

    await _login(api, "ops")
    html = await (await api.get("/ops")).text()
    assert 'data-testid="cabinet-cab-east-1"' in html
    assert 'data-testid="cabinet-cab-west-2"' in html
    assert "cab-river-1" not in html


async def test_other_companies_cabinets_are_not_found(api: Client, backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    seq = feed.sale(
        "cab-river-1", "zhang.min", [line(4, "chili-150", 1, 149.0, 380)], flags=["needs_review"]
    )
    feed.event("cab-river-1", "door_forced", "critical")
    backend_env.backend.fleet = FakeFleet()  # type: ignore[assignment]
    h = await _as(api, "ops")
    alarm_id = backend_env.backend.db.read(
        lambda c: c.execute(select(t.cabinet_alarms.c.id)).scalars().first()
    )
    for missing in ("cab-river-1", "cab-nowhere"):
        await _json(api, f"/api/ops/cabinets/{missing}", 404)
        await _json(api, f"/api/ops/sales?cabinet={missing}", 404)
        resp = await api.get(f"/ops/cabinets/{missing}", headers={"Accept": "text/html"})
        assert resp.status == 404
        for what, body in (
            ("prices", {"prices": {"1": 700}}),
            ("planogram", {"lanes": [{"lane": 1, "price_fen": 700}]}),
            ("restock", {}),
        ):
            await _post(api, f"/api/ops/cabinets/{missing}/{what}", h, body, 404)
        await _post(api, f"/api/ops/sales/{missing}/{seq}/confirm", h, {}, 404)
        await _post(api, f"/api/ops/sales/{missing}/{seq}/refund", h, {}, 404)
    await _post(api, f"/api/ops/alarms/{alarm_id}/clear", h, {}, 404)
    assert (await _json(api, "/api/ops/review"))["sales"] == []
    assert backend_env.backend.fleet.sent == []  # type: ignore[union-attr]
    # ... while their own operator sees and handles them
    h2 = await _as(api, "ops2")
    assert len((await _json(api, "/api/ops/review"))["sales"]) == 1
    assert len((await _json(api, "/api/ops/sales?cabinet=cab-river-1"))["sales"]) == 1
    await _post(api, f"/api/ops/alarms/{alarm_id}/clear", h2)


# ---------------------------------------------------------------------- dashboard


async def test_dashboard_numbers_alarms_and_charts(api: Client, backend_env: Env) -> None:
    env = backend_env
    feed = CabinetFeed(env)
    feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 2, 1001.9, 690)])
    feed.sale("cab-west-2", "zhang.min", [line(4, "chili-150", 1, 151.0, 380)])
    feed.sale("cab-river-1", "zhang.min", [line(4, "chili-150", 3, 450.0, 380)])
    env.clock.advance(24 * 3600)  # the sales above were yesterday
    feed.sale("cab-east-1", "li.wei", [line(2, "bokchoy", None, 412.0, 800)])
    feed.sale("cab-east-1", "ops", [line(1, "tomato-500", 1, 500.0, 690)], role="operator")
    feed.event("cab-east-1", "door_open_too_long")
    env.backend.db.write(
        lambda c: c.execute(
            update(t.lanes)
            .where(t.lanes.c.cabinet_id == "cab-east-1", t.lanes.c.lane.in_((1, 2)))
            .values(stock_count=3, stock_g=2000.0)
        )
    )
    env.backend.db.write(
        lambda c: c.execute(
            update(t.cabinets)
            .where(t.cabinets.c.id == "cab-east-1")
            .values(online=True, door="closed", lock="locked", temperature_c=4.5)
        )
    )

    await _login(api, "ops")
    d = await _json(api, "/api/ops/dashboard")
    assert d["day"] == "2026-11-29"
    assert d["sales_today_count"] == 1 and d["sales_today_fen"] == 330
    cabs = {c["id"]: c for c in d["cabinets"]}
    east, west = cabs["cab-east-1"], cabs["cab-west-2"]
    assert east["online"] and east["temperature_c"] == 4.5 and east["door"] == "closed"
    assert not west["online"] and west["temperature_c"] is None
    assert (east["sales_today_count"], east["sales_today_fen"]) == (1, 330)
    assert (west["sales_today_count"], west["sales_today_fen"]) == (0, 0)
    assert [a["kind"] for a in east["alarms"]] == ["door_open_too_long"]
    assert east["alarm_count"] == 1 and west["alarm_count"] == 0
    lanes = {ln["lane"]: ln for ln in east["lanes"]}
    assert lanes[1]["stock"] == 3 and lanes[1]["fill_pct"] == 50  # 3 of par 6
    assert lanes[2]["stock"] == 2000 and lanes[2]["stock_unit"] == "g"
    assert lanes[2]["fill_pct"] == 50  # 2 kg of par 4 kg
    assert lanes[3]["stock"] is None and lanes[3]["fill_pct"] is None
    assert lanes[4]["price_fen"] == 380 and lanes[4]["par_level"] == 7
    days = d["by_day"]
    assert len(days) == dashboard.DAYS and days[-1]["key"] == "2026-11-29"
    assert days[-1]["value_fen"] == 330 and days[-2]["value_fen"] == 1380 + 380
    assert sum(p["value_fen"] for p in days) == 1380 + 380 + 330  # not riverside's 1140
    products = [(p["key"], p["label"], p["value_fen"]) for p in d["by_product"]]
    assert products == [
        ("tomato-500", "Tomatoes 500 g", 1380),
        ("chili-150", "Chili 150 g", 380),
        ("bokchoy", "Bok choy", 330),
    ]

    html = await (await api.get("/ops")).text()
    for testid in ("sales-today", "chart-by-day", "chart-by-product", "alarms-cab-east-1"):
        assert f'data-testid="{testid}"' in html
    assert "¥3.30" in html and "door_open_too_long" in html and "<svg" in html
    assert "4.5 °C" in html

    await _login(api, "ops2")
    d2 = await _json(api, "/api/ops/dashboard")
    assert d2["sales_today_fen"] == 0
    assert sum(p["value_fen"] for p in d2["by_day"]) == 1140

    await _login(api, "admin")
    assert (await _json(api, "/api/ops/dashboard"))["by_day"][-2]["value_fen"] == 2900

    await _login(api, "ops")
    detail = await _json(api, "/api/ops/cabinets/cab-east-1")
    assert detail["cabinet"]["id"] == "cab-east-1"
    assert [s["seq"] for s in detail["sales"]] == [3, 2, 1]  # newest first, every role
    assert detail["sales"][-1]["lines"][0]["name"] == "Tomatoes 500 g"
    page = await (await api.get("/ops/cabinets/cab-east-1")).text()
    assert 'data-testid="price-form"' in page and 'data-testid="planogram-form"' in page
    sales = await _json(api, "/api/ops/sales?cabinet=cab-east-1&day=2026-11-28")
    assert [s["total_fen"] for s in sales["sales"]] == [1380]
    assert (await _json(api, "/api/ops/sales?day=2026-11-29"))["sales"][0]["role"] == "operator"
    bad = await _json(api, "/api/ops/sales?day=yesterday", 400)
    assert bad["field"] == "day"


async def test_dashboard_takes_a_constant_number_of_statements(
    api: Client, backend_env: Env
) -> None:
    env = backend_env
    feed = CabinetFeed(env)
    feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 1, 500.0, 690)])
    feed.event("cab-east-1", "door_forced", "critical")
    now = env.clock.now()

    def statements() -> int:
        with count_statements(env) as seen:
            d = env.backend.db.read(dashboard.build, dashboard.Scope(None), now)
        assert d.cabinets
        return len(seen)

    await _login(api, "admin")
    await _json(api, "/api/ops/dashboard")  # warm the pool
    with count_statements(env) as http_before:
        small = await _json(api, "/api/ops/dashboard")
    before = statements()

    def add_many(conn: Any) -> None:
        for i in range(40):
            spec = CabinetSpec(
                f"cab-extra-{i:02d}",
                f"Extra {i}",
                "Block 9",
                "op-greenvale",
                lanes=standard_lanes(),
            )
            add_cabinet(conn, spec, now)

    env.backend.db.write(add_many)
    for i in range(0, 40, 8):
        feed.sale(f"cab-extra-{i:02d}", "zhang.min", [line(4, "chili-150", 1, 150.0, 380)])
        feed.event(f"cab-extra-{i:02d}", "door_open_too_long")
    after = statements()
    with count_statements(env) as http_after:
        big = await _json(api, "/api/ops/dashboard")
    assert len(big["cabinets"]) == len(small["cabinets"]) + 40
    assert big["sales_today_fen"] == 690 + 5 * 380
    assert before == after <= 8
    assert len(http_before) == len(http_after)


# ---------------------------------------------------------------------- reviews


async def test_review_confirm(api: Client, backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    seq = feed.sale(
        "cab-east-1", "zhang.min", [line(4, "chili-150", 1, 149.0, 380)], flags=["needs_review"]
    )
    plain = feed.sale("cab-east-1", "zhang.min", [line(4, "chili-150", 1, 150.0, 380)])
    h = await _as(api, "ops")
    pending = (await _json(api, "/api/ops/review"))["sales"]
    assert [(s["cabinet_id"], s["seq"]) for s in pending] == [("cab-east-1", seq)]
    assert pending[0]["evidence"][0]["delta_g"] == -149.0
    assert pending[0]["lines"][0]["name"] == "Chili 150 g"
    assert pending[0]["resident"] == "zhang.min"
    html = await (await api.get("/ops/review")).text()
    assert f'data-testid="review-cab-east-1-{seq}"' in html
    assert f'data-testid="confirm-cab-east-1-{seq}"' in html
    assert f'data-testid="refund-cab-east-1-{seq}"' in html
    dash = await _json(api, "/api/ops/dashboard")
    east = next(c for c in dash["cabinets"] if c["id"] == "cab-east-1")
    assert east["pending_reviews"] == 1 and east["alarms"][0]["kind"] == "needs_review"

    body = await _post(api, f"/api/ops/sales/cab-east-1/{seq}/confirm", h)
    assert body["sale"]["review"] == "confirmed"
    assert (await _post(api, f"/api/ops/sales/cab-east-1/{seq}/confirm", h))["ok"]
    assert (await _json(api, "/api/ops/review"))["sales"] == []
    dash = await _json(api, "/api/ops/dashboard")
    east = next(c for c in dash["cabinets"] if c["id"] == "cab-east-1")
    assert east["pending_reviews"] == 0 and east["alarm_count"] == 0  # review alarm settled
    row = backend_env.backend.db.read(
        lambda c: c.execute(select(t.sales).where(t.sales.c.seq == seq)).one()
    )
    assert row.reviewed_by == backend_env.users["ops"] and row.reviewed_at
    # a sale nobody asked to review cannot be confirmed
    err = await _post(api, f"/api/ops/sales/cab-east-1/{plain}/confirm", h, {}, 409)
    assert err["error"] == "conflict"
    await _post(api, "/api/ops/sales/cab-east-1/999/confirm", h, {}, 404)


async def test_refund_partial_then_full_then_refused(api: Client, backend_env: Env) -> None:
    env = backend_env
    feed = CabinetFeed(env)
    start = _balance(env, "li.wei")
    seq = feed.sale(
        "cab-east-1", "li.wei", [line(1, "tomato-500", 2, 1001.9, 690)], flags=["needs_review"]
    )
    assert _balance(env, "li.wei") == start - 1380
    h = await _as(api, "li.wei")
    await _post(api, f"/api/ops/sales/cab-east-1/{seq}/refund", h, {}, 403)
    h = await _as(api, "ops")
    url = f"/api/ops/sales/cab-east-1/{seq}/refund"
    for bad in (0, -5, 1381, "lots", 12.5, True):
        err = await _post(api, url, h, {"amount_fen": bad}, 400)
        assert err["field"] == "amount_fen", (bad, err)
    assert _balance(env, "li.wei") == start - 1380

    part = await _post(api, url, h, {"amount_fen": 380, "note": "one soft tomato"})
    assert part["amount_fen"] == 380 and part["balance_fen"] == start - 1000
    assert part["sale"]["refunded_fen"] == 380 and part["sale"]["review"] == "refunded"
    assert part["sale"]["refundable_fen"] == 1000
    assert (await _json(api, "/api/ops/review"))["sales"] == []
    # the rest, by default
    rest = await _post(api, url, h, {"note": "gone off"})
    assert rest["amount_fen"] == 1000 and _balance(env, "li.wei") == start
    # a second full refund is refused, the balance stays
    err = await _post(api, url, h, {}, 409)
    assert err["error"] == "conflict"
    await _post(api, url, h, {"amount_fen": 1}, 409)
    assert _balance(env, "li.wei") == start
    entries = env.backend.db.read(
        lambda c: c.execute(
            select(t.wallet_entries)
            .where(t.wallet_entries.c.kind == "refund")
            .order_by(t.wallet_entries.c.id)
        ).all()
    )
    assert [e.amount_fen for e in entries] == [380, 1000]
    assert {e.created_by for e in entries} == {env.users["ops"]}
    assert entries[0].ref == f"refund:cab-east-1:{seq}:0" and "soft tomato" in entries[0].note
    # an operator's own session charged nobody: nothing to refund
    own = feed.sale("cab-east-1", "ops", [line(1, "tomato-500", 1, 500.0, 690)], role="operator")
    await _post(api, f"/api/ops/sales/cab-east-1/{own}/refund", h, {}, 409)


# ---------------------------------------------------------------------- alarms


async def test_alarm_clear(api: Client, backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    feed.event("cab-east-1", "door_open_too_long")
    h = await _as(api, "ops")
    east = (await _json(api, "/api/ops/cabinets/cab-east-1"))["cabinet"]
    [alarm] = east["alarms"]
    assert alarm["kind"] == "door_open_too_long"
    page = await (await api.get("/ops/cabinets/cab-east-1")).text()
    assert f'data-testid="clear-{alarm["id"]}"' in page
    body = await _post(api, f"/api/ops/alarms/{alarm['id']}/clear", h)
    assert body["alarm"]["cleared_at"] == "2026-11-28T09:00:00.000Z"
    again = await _post(api, f"/api/ops/alarms/{alarm['id']}/clear", h)
    assert again["alarm"]["cleared_at"] == body["alarm"]["cleared_at"]
    east = (await _json(api, "/api/ops/cabinets/cab-east-1"))["cabinet"]
    assert east["alarms"] == [] and east["alarm_count"] == 0
    await _post(api, "/api/ops/alarms/424242/clear", h, {}, 404)


# ---------------------------------------------------------------------- commands


async def test_price_and_planogram_validation_name_the_field(api: Client, backend_env: Env) -> None:
    h = await _as(api, "ops")
    url = "/api/ops/cabinets/cab-east-1/prices"
    for body, name in (
        ({}, "prices"),
        ({"prices": {}}, "prices"),
        ({"prices": [1, 2]}, "prices"),
        ({"prices": {"9": 100}}, "prices.9"),
        ({"prices": {"x": 100}}, "prices.x"),
        ({"prices": {"1": 0}}, "prices.1"),
        ({"prices": {"1": 700, "3": 1_000_001}}, "prices.3"),
        ({"prices": {"2": "cheap"}}, "prices.2"),
        ({"prices": {"2": 7.5}}, "prices.2"),
        ({"prices": {"2": True}}, "prices.2"),
    ):
        err = await _post(api, url, h, body, 400)
        assert err["error"] == "invalid" and err["field"] == name, (body, err)
    url = "/api/ops/cabinets/cab-east-1/planogram"
    for body, name in (
        ({"lanes": []}, "lanes"),
        ({"lanes": "1"}, "lanes"),
        ({"lanes": [{"lane": 1, "price_fen": 0}]}, "lanes[0].price_fen"),
        ({"lanes": [{"lane": 1, "sku": "a"}, {"lane": 1, "sku": "b"}]}, "lanes[1].lane"),
        ({"lanes": [{"lane": 1, "sku": "x"}, {"lane": 7, "sku": "y"}]}, "lanes[1].lane"),
        ({"lanes": [{"sku": "x"}]}, "lanes[0].lane"),
        ({"lanes": [{"lane": 1, "sku": "has space"}]}, "lanes[0].sku"),
        ({"lanes": [{"lane": 1, "sku": "s" * 65}]}, "lanes[0].sku"),
        ({"lanes": [{"lane": 1, "name": ""}]}, "lanes[0].name"),
        ({"lanes": [{"lane": 1, "name": "n" * 201}]}, "lanes[0].name"),
        ({"lanes": [{"lane": 1, "colour": "red"}]}, "lanes[0].colour"),
        ({"lanes": [{"lane": 1}]}, "lanes[0]"),
        ({"lanes": ["one"]}, "lanes[0]"),
    ):
        err = await _post(api, url, h, body, 400)
        assert err["field"] == name, (body, err)


async def test_price_update_without_a_broker_is_503(api: Client, backend_env: Env) -> None:
    assert backend_env.backend.fleet is None
    h = await _as(api, "ops")
    err = await _post(api, "/api/ops/cabinets/cab-east-1/prices", h, {"prices": {"1": 750}}, 503)
    assert err["error"] == "unavailable" and "offline" in err["message"]
    await _post(api, "/api/ops/cabinets/cab-east-1/restock", h, {}, 503)
    assert _lanes(backend_env, "cab-east-1")[1].price_fen == 690


async def test_price_and_planogram_reach_the_cabinet(api: Client, backend_env: Env) -> None:
    env = backend_env
    fleet = FakeFleet()
    env.backend.fleet = fleet  # type: ignore[assignment]
    h = await _as(api, "ops")
    body = await _post(
        api, "/api/ops/cabinets/cab-east-1/prices", h, {"prices": {"1": 750, "2": "880"}}
    )
    assert body["ok"] and {ln["lane"]: ln["price_fen"] for ln in body["lanes"]}[1] == 750
    cab, name, args, kw = fleet.sent[-1]
    assert (cab, name, args) == ("cab-east-1", "set_prices", {"prices": {"1": 750, "2": 880}})
    assert kw["wait_s"] == env.backend.settings.unlock_wait_s * 2
    lanes = _lanes(env, "cab-east-1")
    assert lanes[1].price_fen == 750 and lanes[2].price_fen == 880 and lanes[3].price_fen == 1290
    assert _lanes(env, "cab-west-2")[1].price_fen == 690

    body = await _post(
        api,
        "/api/ops/cabinets/cab-east-1/planogram",
        h,
        {"lanes": [{"lane": 2, "sku": "bokchoy-baby", "name": "Baby bok choy", "price_fen": 900}]},
    )
    _, name, args, _ = fleet.sent[-1]
    assert name == "set_planogram"
    assert args == {
        "lanes": [{"lane": 2, "sku": "bokchoy-baby", "name": "Baby bok choy", "price": 900}]
    }
    lane = _lanes(env, "cab-east-1")[2]
    assert (lane.sku, lane.name, lane.price_fen, lane.mode) == (
        "bokchoy-baby",
        "Baby bok choy",
        900,
        "weighed",
    )

    # the cabinet refuses (a session is running): 409 with its reason, lanes unchanged
    fleet.result = CommandResult(False, "refused", "busy", {"detail": "a door session runs"})
    err = await _post(api, "/api/ops/cabinets/cab-east-1/prices", h, {"prices": {"1": 990}}, 409)
    assert err["reason"] == "busy" and "door session" in err["message"]
    # no answer: 504
    fleet.result = CommandResult(False, "timeout", "timeout", {})
    err = await _post(api, "/api/ops/cabinets/cab-east-1/prices", h, {"prices": {"1": 990}}, 504)
    assert err["error"] == "timeout"
    assert _lanes(env, "cab-east-1")[1].price_fen == 750

    commands = (await _json(api, "/api/ops/cabinets/cab-east-1"))["commands"]
    assert [(c["name"], c["status"], c["reason"]) for c in commands] == [
        ("set_prices", "timeout", "timeout"),
        ("set_prices", "refused", "busy"),
        ("set_planogram", "done", None),
        ("set_prices", "done", None),
    ]
    assert commands[-1]["sent_by"] == "ops" and commands[-1]["args"]["prices"]["1"] == 750
    page = await (await api.get("/ops/cabinets/cab-east-1")).text()
    assert 'data-testid="commands"' in page and "Baby bok choy" in page


async def test_restock_opens_an_operator_session(api: Client, backend_env: Env) -> None:
    env = backend_env
    fleet = FakeFleet(CommandResult(True, "unlocked", None, {"session_id": "S-restock"}))
    env.backend.fleet = fleet  # type: ignore[assignment]
    h = await _as(api, "ops")
    body = await _post(api, "/api/ops/cabinets/cab-west-2/restock", h)
    assert body["ok"] and body["session_id"] == "S-restock"
    _, name, args, kw = fleet.sent[-1]
    assert (name, args) == ("restock", {"operator": "ops"})
    assert "unlocked" in kw["until"]
    row = env.backend.db.read(lambda c: c.execute(select(t.unlocks)).one())
    assert (row.role, row.status, row.session_id) == ("operator", "unlocked", "S-restock")


# ---------------------------------------------------------------------- charts


def test_charts_scale_and_escape() -> None:
    assert [charts.nice_max(v) for v in (0, 1, 7, 13, 24, 380, 1760)] == [
        1,
        1,
        10,
        20,
        25,
        500,
        2000,
    ]
    svg = charts.columns(
        [charts.Bar("11-27", 0), charts.Bar("<b>11-28</b>", 1760, "3 sales")], label="By day"
    )
    assert svg.startswith("<svg") and svg.count("<rect") == 2
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "¥17.60 (3 sales)" in svg
    svg = charts.bars([charts.Bar("Tomatoes & co", 1380), charts.Bar("Chili", 380)], label="P")
    assert "Tomatoes &amp; co" in svg and "¥13.80" in svg
    assert "No sales yet" in charts.columns([], label="By day")
    assert "No sales yet" in charts.bars([charts.Bar("x", 0)], label="P")


def test_a_late_done_applies_the_prices_the_cabinet_took(backend_env: Env) -> None:
    """The operator's request gave up (504) but the cabinet applied the prices later:
    the lanes table must follow the cabinet."""
    import json as _json

    from sqlalchemy import insert as _insert
    from sqlalchemy import select as _select

    from backend import schema as _t
    from backend.fleet import _apply_late

    db = backend_env.backend.db

    def setup(conn: Any) -> None:
        conn.execute(
            _insert(_t.commands).values(
                nonce="n-late-0000000001",
                cabinet_id="cab-east-1",
                name="set_prices",
                args_json=_json.dumps({"prices": {"1": 777}}),
                status="timeout",
                sent_at="2026-11-28T09:00:00.000Z",
            )
        )
        _apply_late(conn, "cab-east-1", "n-late-0000000001")

    db.write(setup)
    price = db.read(
        lambda c: c.execute(
            _select(_t.lanes.c.price_fen).where(
                _t.lanes.c.cabinet_id == "cab-east-1", _t.lanes.c.lane == 1
            )
        ).scalar_one()
    )
    assert price == 777

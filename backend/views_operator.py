"""The operator's pages and API: dashboard, one cabinet, reviews, refunds, alarms, and
price / planogram changes that reach the cabinet as signed commands.

Who may do what: an operator sees and acts on its own company's cabinets only, an
admin on every cabinet, anybody else gets 403 (401 when not logged in). Another
company's cabinet, sale or alarm answers 404, exactly like one that does not exist.

A price or planogram change is validated field by field (errors name the field:
``prices.3``, ``lanes[0].price_fen``), written to ``commands`` (``sent``), sent to the
cabinet, and applied to ``lanes`` only when the cabinet answers ``done``: refused
→ 409, no answer → 504, no broker → 503, each as JSON with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from aiohttp import web
from markupsafe import Markup

from backend import charts
from backend import dashboard as dash
from backend.accounts import Principal
from backend.errors import InputError, NotFound, Unavailable
from backend.fleet import FINAL, CommandResult
from backend.services import BACKEND, Backend
from backend.web import Fields, fields, json_response, require
from cloud_sync.records import new_nonce

__all__ = ["parse_planogram", "parse_prices", "setup"]

ROLES = ("operator", "admin")
MAX_PRICE_FEN = 1_000_000
MAX_LANES = 64
SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PLANOGRAM_FIELDS = ("lane", "sku", "name", "price_fen")
NAME_MAX = 200
NOTE_MAX = 200


# ---------------------------------------------------------------------- helpers


def _be(request: web.Request) -> Backend:
    return request.app[BACKEND]


def _who(request: web.Request) -> tuple[Principal, dash.Scope]:
    who = require(request, *ROLES)
    return who, dash.Scope.of(who)


def _cabinet_param(request: web.Request) -> str:
    cabinet_id = request.match_info["cabinet_id"]
    if not cabinet_id or len(cabinet_id) > 64:
        raise NotFound("no such cabinet")
    return cabinet_id


def _int_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"no such {name}")
    return int(raw)


def _page(request: web.Request, name: str, **ctx: Any) -> web.Response:
    body = _be(request).render(name, request=request, **ctx)
    return web.Response(text=body, content_type="text/html")


def _svg_by_day(points: list[dash.ChartPoint], label: str) -> Markup:
    data = [
        charts.Bar(p.label, p.value_fen, f"{p.count} sale{'' if p.count == 1 else 's'}")
        for p in points
    ]
    return Markup(charts.columns(data, label=label))  # charts escape every label


def _svg_by_product(points: list[dash.ChartPoint], label: str) -> Markup:
    data = [charts.Bar(p.label, p.value_fen, f"{p.key}, {p.count} lines") for p in points]
    return Markup(charts.bars(data, label=label))  # charts escape every label


# ---------------------------------------------------------------------- validation


def _whole(value: Any, name: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, "must be a whole number of fen")
    return value


def _price(value: Any, name: str) -> int:
    fen = _whole(value, name)
    if fen < 1 or fen > MAX_PRICE_FEN:
        raise InputError(name, f"must be between 1 and {MAX_PRICE_FEN} fen")
    return fen


def _lane(value: Any, name: str, lanes: Collection[int]) -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 9:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, "must be a lane number")
    if value not in lanes:
        raise InputError(name, "no such lane in this cabinet")
    return value


def parse_prices(raw: Any, lanes: Collection[int]) -> dict[int, int]:
    """``{lane: fen}`` from a request; errors name ``prices`` or ``prices.<lane>``."""
    if not isinstance(raw, dict) or not raw:
        raise InputError("prices", "must be an object {lane: fen} with at least one lane")
    if len(raw) > MAX_LANES:
        raise InputError("prices", f"at most {MAX_LANES} lanes")
    out: dict[int, int] = {}
    for key, value in raw.items():
        name = f"prices.{str(key)[:16]}"
        out[_lane(key, name, lanes)] = _price(value, name)
    return out


def parse_planogram(raw: Any, lanes: Collection[int]) -> dict[int, dict[str, Any]]:
    """``{lane: {sku?, name?, price_fen?}}`` from ``[{lane, sku, name, price_fen}]``;
    errors name ``lanes`` or ``lanes[i].<field>``."""
    if not isinstance(raw, list) or not raw:
        raise InputError("lanes", "must be a list of lanes with at least one entry")
    if len(raw) > MAX_LANES:
        raise InputError("lanes", f"at most {MAX_LANES} lanes")
    out: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(raw):
        base = f"lanes[{i}]"
        if not isinstance(item, dict):
            raise InputError(base, "must be an object {lane, sku, name, price_fen}")
        for key in item:
            if key not in PLANOGRAM_FIELDS:
                raise InputError(f"{base}.{str(key)[:32]}", "is not a planogram field")
        if item.get("lane") is None:
            raise InputError(f"{base}.lane", "is required")
        lane = _lane(item["lane"], f"{base}.lane", lanes)
        if lane in out:
            raise InputError(f"{base}.lane", f"lane {lane} appears twice")
        change: dict[str, Any] = {}
        if item.get("sku") is not None:
            sku = item["sku"].strip() if isinstance(item["sku"], str) else None
            if sku is None or not SKU.fullmatch(sku):
                raise InputError(
                    f"{base}.sku", "must be 1-64 letters, digits, '.', '_' or '-' (no spaces)"
                )
            change["sku"] = sku
        if item.get("name") is not None:
            text = item["name"].strip() if isinstance(item["name"], str) else None
            if not text or len(text) > NAME_MAX or any(ord(ch) < 32 for ch in text):
                raise InputError(f"{base}.name", f"must be 1-{NAME_MAX} printable characters")
            change["name"] = text
        if item.get("price_fen") is not None:
            change["price_fen"] = _price(item["price_fen"], f"{base}.price_fen")
        if not change:
            raise InputError(base, "changes nothing: give sku, name or price_fen")
        out[lane] = change
    return out


# ---------------------------------------------------------------------- commands


def _failed(result: CommandResult, cabinet_id: str) -> web.Response:
    """The JSON answer for a command the cabinet did not carry out."""
    detail = result.data.get("detail")
    if result.status == "timeout" and result.reason == "backend_offline":
        status, error = 503, "unavailable"
        message = f"cabinet {cabinet_id} is offline (the backend is not connected to the broker)"
    elif result.status == "timeout":
        status, error = 504, "timeout"
        message = f"cabinet {cabinet_id} did not answer in time"
    else:
        status, error = 409, "refused"
        message = f"cabinet {cabinet_id} refused: {result.reason or 'failed'}"
        if isinstance(detail, str) and detail:
            message += f" ({detail})"
    return json_response(
        {"error": error, "reason": result.reason, "status": result.status, "message": message},
        status=status,
    )


async def _send(
    be: Backend,
    who: Principal,
    cabinet_id: str,
    name: str,
    args: dict[str, Any],
    *,
    wait_s: float,
    until: Collection[str] = FINAL,
    unlock: bool = False,
) -> CommandResult:
    """Record, send and wait for one signed command; records what became of it."""
    fleet = be.fleet
    if fleet is None:
        raise Unavailable(f"cabinet {cabinet_id} is offline (no broker is configured)")
    nonce = new_nonce()
    await be.db.run(
        dash.record_command,
        cabinet_id,
        name,
        args,
        nonce,
        who.user_id,
        be.clock.now(),
        unlock=unlock,
    )
    result = await fleet.command(cabinet_id, name, args, wait_s=wait_s, until=until, nonce=nonce)
    if result.ok:
        status = "done"
    elif result.status == "timeout":
        status = "timeout"
    else:
        status = "refused"
    session = result.data.get("session_id")
    await be.db.run(
        dash.answer_command,
        nonce,
        status,
        result.reason,
        be.clock.now(),
        session_id=session if isinstance(session, str) else None,
    )
    return result


async def _change_lanes(
    request: web.Request,
    who: Principal,
    target: dash.CabinetLanes,
    name: str,
    args: dict[str, Any],
    changes: Mapping[int, Mapping[str, Any]],
) -> web.Response:
    be = _be(request)
    cabinet_id = target.cabinet_id
    result = await _send(be, who, cabinet_id, name, args, wait_s=be.settings.unlock_wait_s * 2)
    if not result.ok:
        return _failed(result, cabinet_id)
    await be.db.run(dash.apply_lane_changes, cabinet_id, changes)
    after = await be.db.query(dash.cabinet_lanes, dash.Scope.of(who), cabinet_id)
    be.bus.publish(
        f"operator:{target.operator_id}",
        {"type": "status", "cabinet_id": cabinet_id, "lanes": "updated", "command": name},
    )
    return json_response(
        {
            "ok": True,
            "status": result.status,
            "cabinet_id": cabinet_id,
            "command": name,
            "lanes": [asdict(after.lanes[n]) for n in sorted(after.lanes)],
        }
    )


# ---------------------------------------------------------------------- pages


async def dashboard_page(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    d = await be.db.query(dash.build, scope, be.clock.now())
    return _page(
        request,
        "ops.html",
        me=who,
        d=d,
        chart_by_day=_svg_by_day(d.by_day, "Sales by day"),
        chart_by_product=_svg_by_product(d.by_product, "Sales by product"),
    )


async def cabinet_page(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    detail = await be.db.query(dash.cabinet_detail, scope, _cabinet_param(request), be.clock.now())
    return _page(
        request,
        "ops_cabinet.html",
        me=who,
        detail=detail,
        c=detail.cabinet,
        chart_by_day=_svg_by_day(detail.by_day, f"Sales by day, {detail.cabinet.name}"),
        chart_by_product=_svg_by_product(
            detail.by_product, f"Sales by product, {detail.cabinet.name}"
        ),
    )


async def review_page(request: web.Request) -> web.Response:
    who, scope = _who(request)
    reviews = await _be(request).db.query(dash.pending_reviews, scope)
    return _page(request, "ops_review.html", me=who, reviews=reviews)


# ---------------------------------------------------------------------- API: reading


async def api_dashboard(request: web.Request) -> web.Response:
    _, scope = _who(request)
    be = _be(request)
    d = await be.db.query(dash.build, scope, be.clock.now())
    return json_response(d.to_json())


async def api_cabinet(request: web.Request) -> web.Response:
    _, scope = _who(request)
    be = _be(request)
    detail = await be.db.query(dash.cabinet_detail, scope, _cabinet_param(request), be.clock.now())
    return json_response(detail.to_json())


def _day_param(q: Fields) -> str | None:
    day = q.str_("day", max_len=10, required=False)
    if not day:
        return None
    try:
        datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        raise InputError("day", "must be a date YYYY-MM-DD") from None
    return day


async def api_sales(request: web.Request) -> web.Response:
    _, scope = _who(request)
    q = Fields(dict(request.query))
    cabinet_id = q.str_("cabinet", max_len=64, required=False) or None
    day = _day_param(q)
    limit = q.int_("limit", minimum=1, maximum=500, default=100)
    sales = await _be(request).db.query(
        dash.recent_sales, scope, cabinet_id=cabinet_id, day=day, limit=limit
    )
    return json_response({"sales": sales, "cabinet": cabinet_id, "day": day})


async def api_review(request: web.Request) -> web.Response:
    _, scope = _who(request)
    reviews = await _be(request).db.query(dash.pending_reviews, scope)
    return json_response({"sales": reviews})


# ---------------------------------------------------------------------- API: acting


async def api_confirm(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    cabinet_id, seq = _cabinet_param(request), _int_param(request, "seq")
    doc = await be.db.run(dash.confirm_sale, scope, cabinet_id, seq, who.user_id, be.clock.now())
    be.bus.publish(
        f"operator:{doc['operator_id']}",
        {"type": "sale", "cabinet_id": cabinet_id, "seq": seq, "review": doc["review"]},
    )
    return json_response({"ok": True, "sale": doc})


async def api_refund(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    cabinet_id, seq = _cabinet_param(request), _int_param(request, "seq")
    f = await fields(request)
    amount: int | None = None
    if f.data.get("amount_fen") not in (None, ""):
        amount = f.int_("amount_fen", minimum=1)
    note = f.str_("note", max_len=NOTE_MAX, required=False)
    done = await be.db.run(
        dash.refund_sale, scope, cabinet_id, seq, amount, note, who.user_id, be.clock.now()
    )
    be.bus.publish(
        f"user:{done.user_id}",
        {
            "type": "refund",
            "cabinet_id": cabinet_id,
            "seq": seq,
            "amount_fen": done.amount_fen,
            "refunded_fen": done.sale["refunded_fen"],
            "balance_fen": done.balance_fen,
        },
    )
    be.bus.publish(
        f"operator:{done.operator_id}",
        {"type": "sale", "cabinet_id": cabinet_id, "seq": seq, "review": "refunded"},
    )
    return json_response(
        {
            "ok": True,
            "amount_fen": done.amount_fen,
            "balance_fen": done.balance_fen,
            "sale": done.sale,
        }
    )


async def api_clear_alarm(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    alarm, operator_id = await be.db.run(
        dash.clear_alarm, scope, _int_param(request, "alarm_id"), who.user_id, be.clock.now()
    )
    be.bus.publish(
        f"operator:{operator_id}",
        {"type": "alarm", "cabinet_id": alarm.cabinet_id, "alarm_id": alarm.id, "cleared": True},
    )
    return json_response({"ok": True, "alarm": asdict(alarm)})


async def api_prices(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    target = await be.db.query(dash.cabinet_lanes, scope, _cabinet_param(request))
    f = await fields(request)
    prices = parse_prices(f.data.get("prices"), target.lanes)
    args = {"prices": {str(lane): fen for lane, fen in sorted(prices.items())}}
    changes = {lane: {"price_fen": fen} for lane, fen in prices.items()}
    return await _change_lanes(request, who, target, "set_prices", args, changes)


async def api_planogram(request: web.Request) -> web.Response:
    who, scope = _who(request)
    be = _be(request)
    target = await be.db.query(dash.cabinet_lanes, scope, _cabinet_param(request))
    f = await fields(request)
    changes = parse_planogram(f.data.get("lanes"), target.lanes)
    # the cabinet takes "price" as fen per item, or per kg on weighed lanes (like lanes.price_fen)
    wire = [
        {"lane": lane} | {("price" if k == "price_fen" else k): v for k, v in change.items()}
        for lane, change in sorted(changes.items())
    ]
    return await _change_lanes(request, who, target, "set_planogram", {"lanes": wire}, changes)


async def api_restock(request: web.Request) -> web.Response:
    """Open the cabinet for restocking (an operator session, never billed)."""
    who, scope = _who(request)
    be = _be(request)
    target = await be.db.query(dash.cabinet_lanes, scope, _cabinet_param(request))
    result = await _send(
        be,
        who,
        target.cabinet_id,
        "restock",
        {"operator": who.username},
        wait_s=be.settings.unlock_wait_s,
        until=("unlocked", *FINAL),
        unlock=True,
    )
    if not result.ok:
        return _failed(result, target.cabinet_id)
    return json_response(
        {
            "ok": True,
            "status": result.status,
            "cabinet_id": target.cabinet_id,
            "session_id": result.data.get("session_id"),
        }
    )


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/ops", dashboard_page)
    r.add_get("/ops/cabinets/{cabinet_id}", cabinet_page)
    r.add_get("/ops/review", review_page)
    r.add_get("/api/ops/dashboard", api_dashboard)
    r.add_get("/api/ops/cabinets/{cabinet_id}", api_cabinet)
    r.add_get("/api/ops/sales", api_sales)
    r.add_get("/api/ops/review", api_review)
    r.add_post("/api/ops/sales/{cabinet_id}/{seq}/confirm", api_confirm)
    r.add_post("/api/ops/sales/{cabinet_id}/{seq}/refund", api_refund)
    r.add_post("/api/ops/alarms/{alarm_id}/clear", api_clear_alarm)
    r.add_post("/api/ops/cabinets/{cabinet_id}/prices", api_prices)
    r.add_post("/api/ops/cabinets/{cabinet_id}/planogram", api_planogram)
    r.add_post("/api/ops/cabinets/{cabinet_id}/restock", api_restock)

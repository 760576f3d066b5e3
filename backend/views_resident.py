"""The resident's side: the cabinet page behind the QR code, the Open button, the
wallet, receipts, and the live event stream.

Pages: ``GET /c/{cabinet_id}`` (public; the Open button for residents) and ``GET /me``
(residents). JSON: ``POST /api/cabinets/{id}/open``, ``GET /api/cabinets/{id}``,
``GET /api/wallet``, ``POST /api/wallet/topup``, ``GET /api/receipts`` (own, newest
first, keyset-paginated with ``?before=<cursor>``), ``GET /api/receipts/{cabinet}/{seq}``
(own only: anyone else's is 404, so its existence is not revealed) and
``GET /api/events`` (server-sent events for the logged-in user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Connection

from backend import schema as t
from backend import wallet
from backend.accounts import Principal
from backend.errors import Forbidden, InputError, NotFound
from backend.payments import MAX_TOPUP_FEN, Payment
from backend.sales import receipt
from backend.services import BACKEND, Backend
from backend.unlock import OpenResult, open_cabinet
from backend.web import Fields, fields, json_response, principal, require
from cloud_sync.errors import InvalidIdentifier
from cloud_sync.topics import validate_cabinet_id

__all__ = ["KEEPALIVE_S", "OPEN_STATUS", "ReceiptCursor", "open_status", "setup"]

#: the HTTP status of a refused Open, by reason (``refused:<cabinet reason>`` is 409)
OPEN_STATUS = {
    "balance_too_low": 402,
    "busy": 409,
    "cabinet_offline": 503,
    "no_answer": 504,
}

#: seconds between ``: keepalive`` comments on an idle event stream
KEEPALIVE_S = 15.0
#: how often an idle event stream checks that its browser is still there (seconds)
POLL_S = 1.0
#: what browsers wait before reconnecting a dropped event stream (milliseconds)
RETRY_MS = 3000

#: set when the application shuts down: event streams end
_CLOSING = web.AppKey("resident_events_closing", asyncio.Event)

RECEIPTS_PAGE = 20
HISTORY_PAGE = 30


def open_status(result: OpenResult) -> int:
    """The HTTP status that answers an Open with ``result``."""
    if result.ok:
        return 200
    reason = result.reason or ""
    return OPEN_STATUS.get(reason, 409)


# ------------------------------------------------------------------ queries


def _valid_cabinet(cabinet_id: str) -> str | None:
    try:
        return validate_cabinet_id(cabinet_id)
    except InvalidIdentifier:
        return None


def _cabinet_info(conn: Connection, cabinet_id: str) -> dict[str, Any] | None:
    """What anyone may know about a cabinet: name, place, online, lanes and prices."""
    cab = conn.execute(
        select(
            t.cabinets.c.id,
            t.cabinets.c.name,
            t.cabinets.c.location,
            t.cabinets.c.online,
            t.cabinets.c.status_at,
            t.operators.c.name.label("operator"),
        )
        .join(t.operators, t.operators.c.id == t.cabinets.c.operator_id)
        .where(t.cabinets.c.id == cabinet_id)
    ).first()
    if cab is None:
        return None
    lanes = conn.execute(
        select(t.lanes).where(t.lanes.c.cabinet_id == cabinet_id).order_by(t.lanes.c.lane)
    ).all()
    return {
        "id": cab.id,
        "name": cab.name,
        "location": cab.location,
        "operator": cab.operator,
        "online": bool(cab.online),
        "status_at": cab.status_at,
        "lanes": [
            {
                "lane": int(ln.lane),
                "sku": ln.sku,
                "name": ln.name,
                "mode": ln.mode,
                "price_fen": int(ln.price_fen),
                "per": "kg" if ln.mode == "weighed" else "item",
                "stock_count": None if ln.stock_count is None else int(ln.stock_count),
                "stock_g": None if ln.stock_g is None else float(ln.stock_g),
            }
            for ln in lanes
        ],
    }


def _cabinet_list(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(t.cabinets.c.id, t.cabinets.c.name, t.cabinets.c.location, t.cabinets.c.online)
        .order_by(t.cabinets.c.name, t.cabinets.c.id)
        .limit(limit)
    ).all()
    return [
        {"id": r.id, "name": r.name, "location": r.location, "online": bool(r.online)} for r in rows
    ]


@dataclass(frozen=True, slots=True)
class ReceiptCursor:
    """Where a page of receipts ends: ``{at}/{cabinet_id}/{seq}``, or just a time."""

    at: str
    cabinet_id: str | None = None
    seq: int | None = None

    def text(self) -> str:
        if self.cabinet_id is None or self.seq is None:
            return self.at
        return f"{self.at}/{self.cabinet_id}/{self.seq}"

    @classmethod
    def parse(cls, text: str) -> ReceiptCursor:
        parts = text.split("/")
        at = parts[0]
        if not at or len(at) > 32:
            raise InputError("before", "must be a time or a cursor from next_before")
        if len(parts) == 1:
            return cls(at)
        if len(parts) != 3 or _valid_cabinet(parts[1]) is None:
            raise InputError("before", "must be a time or a cursor from next_before")
        try:
            seq = int(parts[2])
        except ValueError:
            raise InputError("before", "must be a time or a cursor from next_before") from None
        return cls(at, parts[1], seq)


def _names(
    conn: Connection, cabinet_ids: set[str]
) -> tuple[dict[str, dict[int, str]], dict[str, str]]:
    """Lane names and cabinet names for these cabinets."""
    if not cabinet_ids:
        return {}, {}
    lanes: dict[str, dict[int, str]] = {c: {} for c in cabinet_ids}
    for r in conn.execute(
        select(t.lanes.c.cabinet_id, t.lanes.c.lane, t.lanes.c.name).where(
            t.lanes.c.cabinet_id.in_(sorted(cabinet_ids))
        )
    ):
        lanes[r.cabinet_id][int(r.lane)] = r.name
    cabinets = {
        r.id: r.name
        for r in conn.execute(
            select(t.cabinets.c.id, t.cabinets.c.name).where(
                t.cabinets.c.id.in_(sorted(cabinet_ids))
            )
        )
    }
    return lanes, cabinets


def _receipt_docs(conn: Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
    lanes, cabinets = _names(conn, {r.cabinet_id for r in rows})
    out = []
    for r in rows:
        doc = receipt(r, lanes.get(r.cabinet_id, {}))
        doc["cabinet_name"] = cabinets.get(r.cabinet_id, r.cabinet_id)
        out.append(doc)
    return out


def _receipts(
    conn: Connection, user_id: int, before: ReceiptCursor | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The user's receipts, newest first, and the cursor of the next page (or None)."""
    s = t.sales.c
    q = select(t.sales).where(s.user_id == user_id)
    if before is not None:
        if before.cabinet_id is None or before.seq is None:
            q = q.where(s.at < before.at)
        else:
            q = q.where(
                or_(
                    s.at < before.at,
                    and_(
                        s.at == before.at,
                        or_(
                            s.cabinet_id < before.cabinet_id,
                            and_(s.cabinet_id == before.cabinet_id, s.seq < before.seq),
                        ),
                    ),
                )
            )
    rows = conn.execute(
        q.order_by(s.at.desc(), s.cabinet_id.desc(), s.seq.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = None
    if more:
        last = rows[-1]
        nxt = ReceiptCursor(last.at, last.cabinet_id, int(last.seq)).text()
    return _receipt_docs(conn, rows), nxt


def _one_receipt(
    conn: Connection, user_id: int, cabinet_id: str, seq: int
) -> dict[str, Any] | None:
    row = conn.execute(
        select(t.sales).where(
            t.sales.c.cabinet_id == cabinet_id,
            t.sales.c.seq == seq,
            t.sales.c.user_id == user_id,
        )
    ).first()
    return None if row is None else _receipt_docs(conn, [row])[0]


def _wallet(conn: Connection, user_id: int, limit: int) -> dict[str, Any]:
    return {
        "balance_fen": wallet.balance(conn, user_id),
        "history": wallet.history(conn, user_id, limit),
    }


def _entry(conn: Connection, ref: str) -> dict[str, Any] | None:
    r = conn.execute(select(t.wallet_entries).where(t.wallet_entries.c.ref == ref)).first()
    if r is None:
        return None
    return {
        "id": r.id,
        "kind": r.kind,
        "amount_fen": int(r.amount_fen),
        "balance_after_fen": int(r.balance_after_fen),
        "ref": r.ref,
        "note": r.note,
        "at": r.created_at,
    }


def _credit(
    conn: Connection, user_id: int, payment: Payment, now: datetime
) -> tuple[bool, int, dict[str, Any] | None]:
    """Credit a confirmed payment once: ``(new?, balance, entry)``."""
    ref = f"topup:{payment.provider}:{payment.reference}"
    created = wallet.post(
        conn,
        user_id,
        "topup",
        payment.amount_fen,
        ref,
        now,
        note=f"top-up via {payment.provider}",
        created_by=user_id,
    )
    return created, wallet.balance(conn, user_id), _entry(conn, ref)


def _operator_ids(conn: Connection) -> list[str]:
    return [str(r.id) for r in conn.execute(select(t.operators.c.id).order_by(t.operators.c.id))]


# ------------------------------------------------------------------ helpers


def _be(request: web.Request) -> Backend:
    return request.app[BACKEND]


def _query(request: web.Request) -> Fields:
    return Fields({k: v for k, v in request.query.items()})


def _cabinet_param(request: web.Request) -> str:
    """The cabinet id in the path; an impossible one is simply not found."""
    cabinet_id = request.match_info["cabinet_id"]
    if _valid_cabinet(cabinet_id) is None:
        raise NotFound(f"no cabinet {cabinet_id!r}")
    return cabinet_id


def _page(request: web.Request, name: str, http_status: int = 200, **ctx: Any) -> web.Response:
    body = _be(request).render(name, request=request, me=principal(request), **ctx)
    resp = web.Response(text=body, status=http_status, content_type="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return _page(request, "error.html", status, status=status, message=message)


def _login_redirect(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/login?next={request.path}")


# ------------------------------------------------------------------ pages


async def cabinet_page(request: web.Request) -> web.Response:
    """The page the QR code opens: the cabinet, its shelves, and the Open button."""
    be = _be(request)
    cabinet_id = request.match_info["cabinet_id"]
    info = None
    if _valid_cabinet(cabinet_id) is not None:
        info = await be.db.query(_cabinet_info, cabinet_id)
    if info is None:
        return _error_page(request, 404, "There is no cabinet here. Please scan the code again.")
    who = principal(request)
    balance: int | None = None
    if who is not None and who.role == "resident":
        balance = await be.db.query(wallet.balance, who.user_id)
    min_balance = be.settings.min_balance_fen
    return _page(
        request,
        "cabinet.html",
        cabinet=info,
        balance=balance,
        min_balance=min_balance,
        blocked=balance is not None and (balance < 0 or balance < min_balance),
        login_url=f"/login?next=/c/{cabinet_id}",
    )


async def me_page(request: web.Request) -> web.Response:
    """The resident's home: balance, top-up, wallet history, receipts."""
    be = _be(request)
    who = principal(request)
    if who is None:
        raise _login_redirect(request)
    if who.role != "resident":
        return _error_page(request, 403, "This page is for residents.")
    data = await be.db.query(_wallet, who.user_id, HISTORY_PAGE)
    receipts, next_before = await be.db.query(_receipts, who.user_id, None, 10)
    cabinets = await be.db.query(_cabinet_list)
    return _page(
        request,
        "resident.html",
        balance=data["balance_fen"],
        history=data["history"],
        receipts=receipts,
        next_before=next_before,
        cabinets=cabinets,
        min_balance=be.settings.min_balance_fen,
        max_topup=MAX_TOPUP_FEN,
    )


# ------------------------------------------------------------------ JSON API


async def api_open(request: web.Request) -> web.Response:
    """Residents only: check, send the signed unlock, answer with the OpenResult."""
    who = require(request, "resident")
    cabinet_id = _cabinet_param(request)
    result = await open_cabinet(_be(request), who, cabinet_id)
    body = result.to_json()
    if not result.ok:
        body["error"] = result.reason
    return json_response(body, status=open_status(result))


async def api_cabinet(request: web.Request) -> web.Response:
    """Public: what the cabinet page shows."""
    cabinet_id = _cabinet_param(request)
    info = await _be(request).db.query(_cabinet_info, cabinet_id)
    if info is None:
        raise NotFound(f"no cabinet {cabinet_id!r}")
    return json_response(info)


async def api_wallet(request: web.Request) -> web.Response:
    who = require(request, "resident")
    be = _be(request)
    limit = _query(request).int_("limit", minimum=1, maximum=500, default=HISTORY_PAGE)
    data = await be.db.query(_wallet, who.user_id, limit)
    data["min_balance_fen"] = be.settings.min_balance_fen
    return json_response(data)


async def api_topup(request: web.Request) -> web.Response:
    """Take money through the payment provider, then credit the wallet once."""
    who = require(request, "resident")
    be = _be(request)
    f = await fields(request)
    amount = f.int_("amount_fen", minimum=1, maximum=MAX_TOPUP_FEN)
    # a real provider talks to the network: keep it off the event loop
    payment = await asyncio.to_thread(be.payments.charge, who.user_id, amount)
    pay = {
        "provider": payment.provider,
        "reference": payment.reference,
        "amount_fen": payment.amount_fen,
        "confirmed": payment.confirmed,
    }
    if not payment.confirmed:
        # the provider's confirmation (its callback) credits the wallet later
        return json_response({"ok": True, "status": "pending", "payment": pay}, status=202)
    created, balance, entry = await be.db.run(_credit, who.user_id, payment, be.clock.now())
    if created:
        be.bus.publish(
            f"user:{who.user_id}", {"type": "wallet", "balance_fen": balance, "entry": entry}
        )
    return json_response(
        {
            "ok": True,
            "status": "credited" if created else "already_credited",
            "balance_fen": balance,
            "entry": entry,
            "payment": pay,
        }
    )


async def api_receipts(request: web.Request) -> web.Response:
    who = require(request, "resident")
    q = _query(request)
    limit = q.int_("limit", minimum=1, maximum=100, default=RECEIPTS_PAGE)
    raw = q.str_("before", max_len=120, required=False)
    before = ReceiptCursor.parse(raw) if raw else None
    receipts, nxt = await _be(request).db.query(_receipts, who.user_id, before, limit)
    return json_response({"receipts": receipts, "next_before": nxt})


async def api_receipt(request: web.Request) -> web.Response:
    who = require(request, "resident")
    cabinet_id = _cabinet_param(request)
    raw = request.match_info["seq"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("no such receipt")
    doc = await _be(request).db.query(_one_receipt, who.user_id, cabinet_id, int(raw))
    if doc is None:  # someone else's receipt is not found either
        raise NotFound("no such receipt")
    return json_response(doc)


# ------------------------------------------------------------------ live events


async def _channels(be: Backend, who: Principal) -> list[str]:
    """What the user may hear: their own receipts, or their company's cabinets."""
    if who.role == "resident":
        return [f"user:{who.user_id}"]
    if who.role == "operator":
        if who.operator_id is None:
            raise Forbidden("this operator account has no company")
        return [f"operator:{who.operator_id}"]
    if who.role == "admin":
        return [f"operator:{op}" for op in await be.db.query(_operator_ids)]
    if who.role == "supplier" and who.supplier_id is not None:
        return [f"supplier:{who.supplier_id}"]
    raise Forbidden("no live events for this account")


async def _next_events(
    queues: list[asyncio.Queue[dict[str, Any]]], timeout: float
) -> list[dict[str, Any]]:
    """The next event(s) from any queue, or [] after ``timeout`` seconds."""
    ready = [q.get_nowait() for q in queues if not q.empty()]
    if ready or not queues:
        if not ready:
            await asyncio.sleep(timeout)
        return ready
    getters = [asyncio.ensure_future(q.get()) for q in queues]
    try:
        await asyncio.wait(getters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for g in getters:
            if not g.done():
                g.cancel()
    # a cancelled get() leaves its item in the queue: nothing is lost
    return [g.result() for g in getters if g.done() and not g.cancelled()]


def _frame(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, default=str).encode("utf-8") + b"\n\n"


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def api_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events for the logged-in user (``data: <json>`` per event).

    The stream checks every ``POLL_S`` whether the browser has gone or the server is
    shutting down, and unsubscribes as it ends.
    """
    who = require(request)
    be = _be(request)
    channels = await _channels(be, who)
    closing = request.app[_CLOSING]
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            "X-Content-Type-Options": "nosniff",
        },
    )
    subs = [(ch, be.bus.subscribe(ch)) for ch in channels]
    queues = [q for _, q in subs]
    loop = asyncio.get_running_loop()
    try:
        await resp.prepare(request)
        await resp.write(f"retry: {RETRY_MS}\n: connected\n\n".encode())
        last_write = loop.time()
        while not (closing.is_set() or _gone(request)):
            events = await _next_events(queues, min(POLL_S, KEEPALIVE_S))
            if closing.is_set() or _gone(request):
                break
            if events:
                for event in events:
                    await resp.write(_frame(event))
                last_write = loop.time()
            elif loop.time() - last_write >= KEEPALIVE_S:
                await resp.write(b": keepalive\n\n")
                last_write = loop.time()
    except ConnectionError:  # the browser went away mid-write
        pass
    finally:
        for ch, q in subs:
            be.bus.unsubscribe(ch, q)
    if not _gone(request):
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
    return resp


async def _close_streams(app: web.Application) -> None:
    app[_CLOSING].set()


def setup(app: web.Application) -> None:
    app[_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_close_streams)
    r = app.router
    r.add_get("/c/{cabinet_id}", cabinet_page)
    r.add_get("/me", me_page)
    r.add_post("/api/cabinets/{cabinet_id}/open", api_open)
    r.add_get("/api/cabinets/{cabinet_id}", api_cabinet)
    r.add_get("/api/wallet", api_wallet)
    r.add_post("/api/wallet/topup", api_topup)
    r.add_get("/api/receipts", api_receipts)
    r.add_get("/api/receipts/{cabinet_id}/{seq}", api_receipt)
    r.add_get("/api/events", api_events)

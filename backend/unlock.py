"""The Open button: check the resident and the cabinet, send the signed unlock, wait.

Reasons a resident can be told (``OpenResult.reason``):

``not_found`` no such cabinet · ``cabinet_offline`` the cabinet is not connected (or
the backend has no broker) · ``balance_too_low`` the wallet is below the minimum
(a negative balance always blocks) · ``busy`` someone else's door session is running ·
``no_answer`` the cabinet did not answer in time · ``refused:<reason>`` the cabinet
refused (its reason: ``busy``, ``expired`` ...).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from backend import schema as t
from backend import wallet
from backend.accounts import Principal
from backend.clock import iso
from backend.errors import Forbidden, NotFound
from backend.services import Backend
from cloud_sync.records import new_nonce

__all__ = ["MESSAGES", "OpenResult", "open_cabinet"]

MESSAGES = {
    "unlocked": "Door open: take what you like and close the door.",
    "cabinet_offline": "This cabinet is offline right now. Please try again later.",
    "balance_too_low": "Your balance is too low. Please top up first.",
    "busy": "Someone is using this cabinet. Please wait a moment.",
    "no_answer": "The cabinet did not answer. Please try again.",
    "refused": "The cabinet could not open.",
}

#: an unlock counts as running (the cabinet busy) for this long without an outcome
RUNNING_S = 180.0


@dataclass(frozen=True, slots=True)
class OpenResult:
    ok: bool
    status: str  # unlocked | refused
    reason: str | None
    message: str
    cabinet_id: str
    unlock_id: int | None = None
    session_id: str | None = None
    latency_ms: float | None = None
    balance_fen: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _refuse(cabinet_id: str, reason: str, **extra: Any) -> OpenResult:
    key = reason.split(":", 1)[0]
    return OpenResult(False, "refused", reason, MESSAGES.get(key, reason), cabinet_id, **extra)


def _check(conn: Connection, who: Principal, cabinet_id: str, be: Backend) -> dict[str, Any]:
    cab = conn.execute(select(t.cabinets).where(t.cabinets.c.id == cabinet_id)).first()
    if cab is None:
        raise NotFound(f"no cabinet {cabinet_id!r}")
    balance = wallet.balance(conn, who.user_id)
    since = iso(be.clock.now() - timedelta(seconds=RUNNING_S))
    running = conn.execute(
        select(t.unlocks.c.id, t.unlocks.c.user_id).where(
            t.unlocks.c.cabinet_id == cabinet_id,
            t.unlocks.c.status.in_(("sent", "unlocked")),
            t.unlocks.c.requested_at > since,
        )
    ).first()
    return {"online": bool(cab.online), "balance": balance, "running": running is not None}


def _record(conn: Connection, who: Principal, cabinet_id: str, nonce: str, now: str) -> int:
    res = conn.execute(
        insert(t.unlocks).values(
            nonce=nonce,
            cabinet_id=cabinet_id,
            user_id=who.user_id,
            role="resident",
            status="sent",
            requested_at=now,
        )
    )
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _answer(conn: Connection, unlock_id: int, values: dict[str, Any]) -> None:
    conn.execute(update(t.unlocks).where(t.unlocks.c.id == unlock_id).values(**values))


async def open_cabinet(be: Backend, who: Principal, cabinet_id: str) -> OpenResult:
    """Everything the Open button does; see the module docstring for the reasons."""
    if who.role != "resident" or who.resident_code is None:
        raise Forbidden("only residents open cabinets to shop")
    state = await be.db.query(_check, who, cabinet_id, be)
    balance = int(state["balance"])
    if be.fleet is None or not state["online"]:
        return _refuse(cabinet_id, "cabinet_offline", balance_fen=balance)
    if balance < 0 or balance < be.settings.min_balance_fen:
        return _refuse(cabinet_id, "balance_too_low", balance_fen=balance)
    if state["running"]:
        return _refuse(cabinet_id, "busy", balance_fen=balance)
    t0 = time.perf_counter()
    # the row exists before the command leaves, so its results always find it
    nonce = new_nonce()
    unlock_id = await be.db.run(_record, who, cabinet_id, nonce, be.clock.iso())
    result = await be.fleet.command(
        cabinet_id,
        "unlock",
        {"resident": who.resident_code, "role": "resident"},
        wait_s=be.settings.unlock_wait_s,
        until=("unlocked",),
        nonce=nonce,
    )
    latency = (time.perf_counter() - t0) * 1000.0
    if result.ok and result.status == "unlocked":
        session_id = str(result.data.get("session_id") or "") or None
        await be.db.run(
            _answer,
            unlock_id,
            {
                "status": "unlocked",
                "session_id": session_id,
                "answered_at": be.clock.iso(),
                "latency_ms": latency,
            },
        )
        out = OpenResult(
            True,
            "unlocked",
            None,
            MESSAGES["unlocked"],
            cabinet_id,
            unlock_id=unlock_id,
            session_id=session_id,
            latency_ms=round(latency, 1),
            balance_fen=balance,
        )
    elif result.status == "timeout":
        await be.db.run(
            _answer, unlock_id, {"status": "timeout", "reason": result.reason or "timeout"}
        )
        reason = "cabinet_offline" if result.reason == "backend_offline" else "no_answer"
        out = _refuse(cabinet_id, reason, unlock_id=unlock_id, balance_fen=balance)
    else:
        await be.db.run(
            _answer,
            unlock_id,
            {"status": "refused", "reason": result.reason, "answered_at": be.clock.iso()},
        )
        code = result.reason or "failed"
        out = _refuse(
            cabinet_id,
            "busy" if code == "busy" else f"refused:{code}",
            unlock_id=unlock_id,
            balance_fen=balance,
        )
    be.bus.publish(f"user:{who.user_id}", {"type": "unlock", **out.to_json()})
    return out

"""Cabinet records become sales, wallet charges and alarms, exactly once.

``RecordApplier`` is the ingest's storing hook: it runs inside the transaction that
stores a verified, chained record, so the record, its sale, the resident's charge and
the alarms it raises commit together or not at all; a redelivered record is never
stored twice by the ingest and so never charged twice (and the wallet's unique ``ref``
would refuse a second charge anyway). Live events for browsers are buffered and sent
only after the commit.

Billing policy: a resident is charged the cabinet's ``total_fen``; a sale flagged
``needs_review`` is charged (the cabinet already billed the lower plausible count) and
waits for an operator, who confirms it or refunds it; an operator's session is never
charged. A negative balance is allowed (the charge is never lost) and blocks the next
unlock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection

from backend import restock, wallet
from backend import schema as t
from backend.bus import EventBus
from backend.clock import Clock, iso
from cloud_sync.ingest_db import GoodRecord, Tx

__all__ = ["ALARM_FLAGS", "RecordApplier", "alarm", "receipt"]

log = logging.getLogger("freshbox.backend.sales")

#: sale flags that raise an operator alarm
ALARM_FLAGS = ("needs_review", "misplaced_return", "foreign_object", "recovered")


@dataclass(frozen=True, slots=True)
class _Pending:
    channel: str
    event: dict[str, Any]


def alarm(
    conn: Connection,
    cabinet_id: str,
    kind: str,
    severity: str,
    at: str,
    dedupe: str,
    *,
    session_id: str | None = None,
    seq: int | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Raise an alarm once per ``dedupe`` key; True if it is new."""
    seen = conn.execute(
        select(t.cabinet_alarms.c.id).where(t.cabinet_alarms.c.dedupe == dedupe)
    ).first()
    if seen is not None:
        return False
    conn.execute(
        insert(t.cabinet_alarms).values(
            cabinet_id=cabinet_id,
            kind=kind,
            severity=severity,
            at=at,
            session_id=session_id,
            seq=seq,
            detail_json=json.dumps(detail or {}, sort_keys=True),
            dedupe=dedupe[:160],
        )
    )
    return True


def receipt(row: Any, names: dict[int, str] | None = None) -> dict[str, Any]:
    """A sale row as the receipt a resident sees (and the API returns)."""
    names = names or {}
    lines = json.loads(row.lines_json)
    for ln in lines:
        ln.setdefault("name", names.get(int(ln.get("lane", 0)), ln.get("sku")))
    return {
        "cabinet_id": row.cabinet_id,
        "seq": int(row.seq),
        "session_id": row.session_id,
        "at": row.at,
        "lines": lines,
        "total_fen": int(row.total_fen),
        "charged_fen": int(row.charged_fen),
        "refunded_fen": int(row.refunded_fen),
        "flags": json.loads(row.flags_json),
        "evidence": json.loads(row.evidence_json),
        "record_hash": row.record_hash,
        "verified": bool(row.verified),
        "review": row.review,
    }


_SALE_COLUMNS = (
    "cabinet_id",
    "seq",
    "session_id",
    "resident_code",
    "user_id",
    "role",
    "total_fen",
    "charged_fen",
    "refunded_fen",
    "flags_json",
    "lines_json",
    "evidence_json",
    "record_hash",
    "verified",
    "at",
    "review",
    "stored_at",
)
_SQL_SALE = (
    "INSERT INTO sales (cabinet_id, seq, session_id, resident_code, user_id, role, total_fen,"
    " charged_fen, refunded_fen, flags_json, lines_json, evidence_json, record_hash, verified,"
    " at, review, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_LINE = (
    "INSERT INTO sale_lines (cabinet_id, seq, line_no, lane, sku, qty, weight_g, amount_fen, at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_UNLOCK_DONE = (
    "UPDATE unlocks SET status = ?, sale_seq = ? WHERE cabinet_id = ? AND session_id = ?"
)

_USER_OF = select(t.users.c.id).where(t.users.c.resident_code == bindparam("code"))
_OPERATOR_OF = select(t.cabinets.c.operator_id).where(t.cabinets.c.id == bindparam("cabinet"))
_LANE_NAMES = select(t.lanes.c.lane, t.lanes.c.name).where(
    t.lanes.c.cabinet_id == bindparam("cabinet")
)


class RecordApplier:
    """The ingest hook (see the module docstring); ``publish`` gets events after commit."""

    def __init__(self, clock: Clock, bus: EventBus | None = None) -> None:
        self.clock = clock
        self.bus = bus
        self._local = threading.local()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._users: dict[str, int] = {}
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def _pending(self) -> list[_Pending]:
        p: list[_Pending] | None = getattr(self._local, "pending", None)
        if p is None:
            p = []
            self._local.pending = p
        return p

    # ---------------------------------------------------------------- hook

    def __call__(self, tx: Tx, rec: GoodRecord) -> None:
        conn = tx.conn
        try:
            doc = json.loads(rec.text)
        except ValueError:  # the ingest verified it: cannot happen
            log.error("record %s/%d is not JSON", rec.cabinet, rec.seq)
            return
        body = doc.get("body", {})
        if rec.kind == "sale":
            self._sale(tx, rec, body)
        else:
            self._event(conn, rec, body)

    def committed(self, ok: bool) -> None:
        """After the storing transaction: send the buffered events (or drop them)."""
        pending = self._pending()
        events = list(pending)
        pending.clear()
        if not ok:
            return
        for p in events:
            if self.bus is not None:
                self.bus.publish(p.channel, p.event)
            for listener in self.listeners:
                listener(p.channel, p.event)

    # ---------------------------------------------------------------- sales

    def _cached(self, key: str, ttl: float, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        self._cache[key] = (now + ttl, value)
        return value

    def _operator_of(self, conn: Connection, cabinet_id: str) -> str | None:
        def load() -> str | None:
            row = conn.execute(_OPERATOR_OF, {"cabinet": cabinet_id}).first()
            return None if row is None else str(row.operator_id)

        result: str | None = self._cached(f"op:{cabinet_id}", 60.0, load)
        return result

    def _user_of(self, conn: Connection, resident: str) -> int | None:
        cached = self._users.get(resident)  # a resident code never moves to another user
        if cached is not None:
            return cached
        row = conn.execute(_USER_OF, {"code": resident}).first()
        if row is None:
            return None
        self._users[resident] = int(row.id)
        return int(row.id)

    def _lane_names(self, conn: Connection, cabinet_id: str) -> dict[int, str]:
        def load() -> dict[int, str]:
            rows = conn.execute(_LANE_NAMES, {"cabinet": cabinet_id})
            return {int(r.lane): str(r.name) for r in rows}

        names: dict[int, str] = self._cached(f"names:{cabinet_id}", 30.0, load)
        return names

    def _sale(self, tx: Tx, rec: GoodRecord, body: dict[str, Any]) -> None:
        conn = tx.conn
        now = self.clock.now()
        resident = str(body.get("resident", ""))
        role = str(body.get("role", "resident"))
        total = int(body.get("total_fen", 0))
        flags = [str(f) for f in body.get("flags", [])]
        lines = list(body.get("lines", []))
        session_id = str(body.get("session_id", ""))
        user_id = self._user_of(conn, resident) if role == "resident" else None
        charge = total if (user_id is not None and total > 0) else 0
        row = {
            "cabinet_id": rec.cabinet,
            "seq": rec.seq,
            "session_id": session_id,
            "resident_code": resident,
            "user_id": user_id,
            "role": role,
            "total_fen": total,
            "charged_fen": charge,
            "refunded_fen": 0,
            "flags_json": json.dumps(flags),
            "lines_json": json.dumps(lines, sort_keys=True),
            "evidence_json": json.dumps(body.get("evidence", []), sort_keys=True),
            "record_hash": rec.hash,
            "verified": True,
            "at": rec.at,
            "review": "pending" if "needs_review" in flags else "none",
            "stored_at": self.clock.iso(),
        }
        # the hot path of the ingest: the driver's cursor with constant statements (the
        # ingest's own convention, see cloud_sync.ingest_db), a fifth of the cost of
        # building SQLAlchemy statements per record
        tx.execute(_SQL_SALE, [row[c] for c in _SALE_COLUMNS])
        for i, ln in enumerate(lines):
            tx.execute(
                _SQL_LINE,
                [
                    rec.cabinet,
                    rec.seq,
                    i,
                    int(ln.get("lane", 0)),
                    str(ln.get("sku", "")),
                    ln.get("qty"),
                    float(ln.get("weight_g", 0.0)),
                    int(ln.get("amount_fen", 0)),
                    rec.at,
                ],
            )
        balance: int | None = None
        if charge:
            assert user_id is not None
            balance = wallet.charge_on_cursor(
                tx,
                user_id,
                charge,
                f"charge:{rec.cabinet}:{rec.seq}",
                f"cabinet {rec.cabinet} sale {rec.seq}",
                iso(now),
            )
        elif role == "resident" and user_id is None and total > 0:
            alarm(
                conn,
                rec.cabinet,
                "unknown_resident",
                "warning",
                rec.at,
                f"{rec.cabinet}:{rec.seq}:unknown_resident",
                seq=rec.seq,
                detail={"resident": resident, "total_fen": total},
            )
        if role == "operator":  # a restocking session: what was placed
            restock.record_placement(conn, rec.cabinet, body, rec.at)
        status = "door_never_opened" if "unlock_unused" in flags else "billed"
        tx.execute(_SQL_UNLOCK_DONE, [status, rec.seq, rec.cabinet, session_id])
        operator_id = self._operator_of(conn, rec.cabinet)
        for flag in flags:
            if flag in ALARM_FLAGS:
                alarm(
                    conn,
                    rec.cabinet,
                    flag,
                    "warning",
                    rec.at,
                    f"{rec.cabinet}:{rec.seq}:{flag}",
                    session_id=session_id,
                    seq=rec.seq,
                    detail={"total_fen": total},
                )
        doc = receipt(SimpleNamespace(**row), self._lane_names(conn, rec.cabinet))
        if user_id is not None:
            doc["balance_fen"] = balance if balance is not None else wallet.balance(conn, user_id)
            self._pending().append(_Pending(f"user:{user_id}", {"type": "receipt", **doc}))
        if operator_id is not None:
            self._pending().append(
                _Pending(
                    f"operator:{operator_id}",
                    {
                        "type": "sale",
                        "cabinet_id": rec.cabinet,
                        "seq": rec.seq,
                        "total_fen": total,
                        "flags": flags,
                    },
                )
            )

    # ---------------------------------------------------------------- events

    def _event(self, conn: Connection, rec: GoodRecord, body: dict[str, Any]) -> None:
        severity = str(body.get("severity", "info"))
        kind = str(body.get("type", "event"))
        if severity == "info":
            return
        new = alarm(
            conn,
            rec.cabinet,
            kind,
            severity,
            rec.at,
            f"{rec.cabinet}:{rec.seq}:{kind}",
            session_id=body.get("session_id"),
            seq=rec.seq,
            detail=body.get("data") if isinstance(body.get("data"), dict) else {},
        )
        operator_id = self._operator_of(conn, rec.cabinet)
        if new and operator_id is not None:
            self._pending().append(
                _Pending(
                    f"operator:{operator_id}",
                    {"type": "alarm", "cabinet_id": rec.cabinet, "kind": kind, "at": rec.at},
                )
            )

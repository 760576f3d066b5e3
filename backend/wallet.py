"""Residents' wallets: an append-only list of entries, each with an idempotence key.

The balance on ``users.balance_fen`` moves only together with an entry, in one
transaction; ``ref`` is unique, so a charge for a sale, a provider's top-up or a
refund is applied once however often it is retried (``post`` returns False then).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from backend import schema as t
from backend.clock import iso
from backend.errors import InputError, NotFound
from cloud_sync.ingest_db import Tx

__all__ = ["balance", "charge_on_cursor", "history", "post", "post_balance"]

_SEEN = select(t.wallet_entries.c.id).where(t.wallet_entries.c.ref == bindparam("ref"))
_MOVE = (
    update(t.users)
    .where(t.users.c.id == bindparam("uid"))
    .values(balance_fen=t.users.c.balance_fen + bindparam("amount"))
    .returning(t.users.c.balance_fen)
)
_ENTRY = insert(t.wallet_entries)


def balance(conn: Connection, user_id: int) -> int:
    row = conn.execute(select(t.users.c.balance_fen).where(t.users.c.id == user_id)).first()
    if row is None:
        raise NotFound(f"no user {user_id}")
    return int(row.balance_fen)


def post(
    conn: Connection,
    user_id: int,
    kind: str,
    amount_fen: int,
    ref: str,
    now: datetime,
    *,
    note: str = "",
    created_by: int | None = None,
) -> bool:
    """Add an entry and move the balance; False (and nothing changes) if ``ref`` exists."""
    after = post_balance(
        conn, user_id, kind, amount_fen, ref, now, note=note, created_by=created_by
    )
    return after is not None


def post_balance(
    conn: Connection,
    user_id: int,
    kind: str,
    amount_fen: int,
    ref: str,
    now: datetime,
    *,
    note: str = "",
    created_by: int | None = None,
) -> int | None:
    """``post``, returning the new balance (None when ``ref`` was posted before)."""
    if kind not in t.WALLET_KINDS:
        raise InputError("kind", f"must be one of {', '.join(t.WALLET_KINDS)}")
    if kind in ("topup", "refund") and amount_fen <= 0:
        raise InputError("amount_fen", "must be positive")
    if kind == "charge" and amount_fen > 0:
        raise InputError("amount_fen", "a charge is negative")
    if conn.execute(_SEEN, {"ref": ref}).first() is not None:
        return None
    row = conn.execute(_MOVE, {"uid": user_id, "amount": amount_fen}).first()
    if row is None:
        raise NotFound(f"no user {user_id}")
    after = int(row.balance_fen)
    conn.execute(
        _ENTRY,
        [
            {
                "user_id": user_id,
                "kind": kind,
                "amount_fen": amount_fen,
                "balance_after_fen": after,
                "ref": ref,
                "note": note[:300],
                "created_by": created_by,
                "created_at": iso(now),
            }
        ],
    )
    return after


_SQL_REF_SEEN = "SELECT 1 FROM wallet_entries WHERE ref = ?"
_SQL_MOVE = "UPDATE users SET balance_fen = balance_fen - ? WHERE id = ? RETURNING balance_fen"
_SQL_ENTRY = (
    "INSERT INTO wallet_entries (user_id, kind, amount_fen, balance_after_fen, ref, note,"
    " created_at) VALUES (?, 'charge', ?, ?, ?, ?, ?)"
)


def charge_on_cursor(tx: Tx, user_id: int, fen: int, ref: str, note: str, at: str) -> int | None:
    """``post_balance`` of a charge of ``fen`` on the ingest's cursor (the hot path that
    applies sales, see ``backend.sales``): the same three steps with constant statements.
    The new balance, or None when ``ref`` was charged before (nothing changes then)."""
    if tx.one(_SQL_REF_SEEN, [ref]) is not None:
        return None
    row = tx.one(_SQL_MOVE, [fen, user_id])
    if row is None:
        return None
    after = int(row[0])
    tx.execute(_SQL_ENTRY, [user_id, -fen, after, ref, note[:300], at])
    return after


def history(conn: Connection, user_id: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(t.wallet_entries)
        .where(t.wallet_entries.c.user_id == user_id)
        .order_by(t.wallet_entries.c.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "amount_fen": int(r.amount_fen),
            "balance_after_fen": int(r.balance_after_fen),
            "ref": r.ref,
            "note": r.note,
            "at": r.created_at,
        }
        for r in rows
    ]

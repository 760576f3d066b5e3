"""Records from cabinets become sales, charges and alarms, exactly once."""

from __future__ import annotations

from typing import Any

from backend_env import Env
from backend_sales import CabinetFeed, line
from sqlalchemy import func, select

from backend import schema as t
from backend import wallet


def _balance(env: Env, user: str) -> int:
    return env.backend.db.read(wallet.balance, env.users[user])


def test_sale_charges_the_resident_once(backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    before = _balance(backend_env, "li.wei")
    seq = feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 2, 1001.9, 690)])
    assert _balance(backend_env, "li.wei") == before - 1380
    row = backend_env.backend.db.read(
        lambda c: c.execute(select(t.sales).where(t.sales.c.seq == seq)).one()
    )
    assert row.charged_fen == 1380 and row.verified and row.user_id == backend_env.users["li.wei"]
    # the same record again (a redelivery) is a duplicate for the ingest: nothing changes
    chain = feed.chains["cab-east-1"]
    chain.seq -= 1
    chain.head = backend_env.backend.db.read(
        lambda c: c.exec_driver_sql("SELECT prev FROM records WHERE seq = 1").scalar_one()
    )
    entries = backend_env.backend.db.read(
        lambda c: c.execute(select(func.count()).select_from(t.wallet_entries)).scalar_one()
    )
    assert entries >= 1


def test_needs_review_and_events_raise_alarms(backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    feed.sale(
        "cab-east-1", "zhang.min", [line(4, "chili-150", 1, 149.0, 380)], flags=["needs_review"]
    )
    feed.event("cab-east-1", "door_forced", "critical")
    feed.event("cab-east-1", "stocked", "info")
    kinds = backend_env.backend.db.read(
        lambda c: sorted(r.kind for r in c.execute(select(t.cabinet_alarms.c.kind)))
    )
    assert kinds == ["door_forced", "needs_review"]
    review = backend_env.backend.db.read(lambda c: c.execute(select(t.sales.c.review)).scalar_one())
    assert review == "pending"


def test_operator_session_is_never_charged(backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    before = _balance(backend_env, "li.wei")
    feed.sale("cab-east-1", "ops", [line(1, "tomato-500", 1, 500.0, 690)], role="operator")
    assert _balance(backend_env, "li.wei") == before


def test_receipt_event_reaches_the_resident_after_commit(backend_env: Env) -> None:
    feed = CabinetFeed(backend_env)
    got: list[tuple[str, dict[str, Any]]] = []
    feed.applier.listeners.append(lambda ch, ev: got.append((ch, ev)))
    feed.sale("cab-east-1", "li.wei", [line(2, "bokchoy", None, 412.0, 800)])
    user_events = [ev for ch, ev in got if ch == f"user:{backend_env.users['li.wei']}"]
    assert len(user_events) == 1
    receipt = user_events[0]
    assert receipt["type"] == "receipt" and receipt["total_fen"] == 330
    assert receipt["verified"] is True and len(receipt["record_hash"]) == 64
    assert receipt["lines"][0]["name"] == "Bok choy"
    assert any(ch == "operator:op-greenvale" for ch, _ in got)


def test_the_sale_statement_names_every_column_in_order() -> None:
    from backend.sales import _SALE_COLUMNS, _SQL_SALE

    names = _SQL_SALE.split("(", 1)[1].split(")", 1)[0].split(", ")
    assert tuple(names) == _SALE_COLUMNS
    assert _SQL_SALE.count("?") == len(_SALE_COLUMNS)

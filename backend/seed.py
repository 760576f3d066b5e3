"""Demo and test data: two property companies, two vegetable bases, residents, cabinets.

``seed(conn, now, cabinets)`` is idempotent: a second call changes nothing. The demo
logins (``DEMO_LOGINS``) are printed by ``freshbox demo``; never run ``seed`` on a
production database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from backend import schema as t
from backend import wallet
from backend.accounts import create_household, create_user
from backend.clock import iso

__all__ = ["DEMO_LOGINS", "DEMO_PASSWORD", "CabinetSpec", "LaneSpec", "seed"]

DEMO_PASSWORD = "freshbox-demo"

OPERATORS = (("op-greenvale", "Greenvale Property"), ("op-riverside", "Riverside Estates"))
SUPPLIERS = (("sup-tongren", "Tongren Vegetable Base"), ("sup-hillside", "Hillside Egg Farm"))

#: username, role, display name, extra
USERS: tuple[tuple[str, str, str, dict[str, object]], ...] = (
    ("li.wei", "resident", "Li Wei", {"building": "3", "unit": "1201", "topup": 5000}),
    ("zhang.min", "resident", "Zhang Min", {"building": "3", "unit": "802", "topup": 2000}),
    ("wang.fang", "resident", "Wang Fang", {"building": "5", "unit": "301", "topup": 0}),
    ("ops", "operator", "Greenvale operations", {"operator": "op-greenvale"}),
    ("ops2", "operator", "Riverside operations", {"operator": "op-riverside"}),
    ("base", "supplier", "Tongren Vegetable Base", {"supplier": "sup-tongren"}),
    ("base2", "supplier", "Hillside Egg Farm", {"supplier": "sup-hillside"}),
    ("admin", "admin", "Administrator", {}),
)

DEMO_LOGINS = tuple((u, role) for u, role, _, _ in USERS)


@dataclass(frozen=True, slots=True)
class LaneSpec:
    lane: int
    sku: str
    name: str
    mode: str
    price_fen: int
    unit_weight_g: float | None = None
    par_level: int = 6
    supplier_id: str | None = "sup-tongren"


@dataclass(frozen=True, slots=True)
class CabinetSpec:
    id: str
    name: str
    location: str
    operator_id: str = "op-greenvale"
    public_key: str | None = None
    lanes: Sequence[LaneSpec] = field(default_factory=tuple)


def seed(conn: Connection, now: datetime, cabinets: Sequence[CabinetSpec] = ()) -> dict[str, int]:
    """Create what is missing; returns ``{username: user_id}``."""
    at = iso(now)
    for table, rows in ((t.operators, OPERATORS), (t.suppliers, SUPPLIERS)):
        for ident, name in rows:
            if conn.execute(select(table.c.id).where(table.c.id == ident)).first() is None:
                conn.execute(insert(table).values(id=ident, name=name, created_at=at))
    ids: dict[str, int] = {}
    for username, role, display, extra in USERS:
        row = conn.execute(select(t.users.c.id).where(t.users.c.username == username)).first()
        if row is not None:
            ids[username] = int(row.id)
            continue
        household = None
        if role == "resident":
            household = create_household(
                conn, str(extra["building"]), str(extra["unit"]), f"{display}'s home"
            )
        user_id = create_user(
            conn,
            username=username,
            password=DEMO_PASSWORD,
            role=role,
            display_name=display,
            now=now,
            household_id=household,
            operator_id=str(extra["operator"]) if "operator" in extra else None,
            supplier_id=str(extra["supplier"]) if "supplier" in extra else None,
        )
        ids[username] = user_id
        topup = int(str(extra.get("topup", 0)))
        if topup:
            wallet.post(
                conn, user_id, "topup", topup, f"topup:seed:{username}", now, note="welcome"
            )
    wang = ids.get("wang.fang")
    if wang is not None:  # a resident in debt: the Open button must refuse her
        wallet.post(conn, wang, "adjust", -350, "adjust:seed:wang.fang", now, note="unpaid")
    for cab in cabinets:
        add_cabinet(conn, cab, now)
    return ids


def add_cabinet(conn: Connection, cab: CabinetSpec, now: datetime) -> bool:
    """Register a cabinet and its planogram; False if it exists already."""
    at = iso(now)
    if conn.execute(select(t.cabinets.c.id).where(t.cabinets.c.id == cab.id)).first():
        return False
    conn.execute(
        insert(t.cabinets).values(
            id=cab.id,
            operator_id=cab.operator_id,
            name=cab.name,
            location=cab.location,
            public_key=cab.public_key,
            created_at=at,
        )
    )
    for ln in cab.lanes:
        conn.execute(
            insert(t.lanes).values(
                cabinet_id=cab.id,
                lane=ln.lane,
                sku=ln.sku,
                name=ln.name,
                mode=ln.mode,
                price_fen=ln.price_fen,
                unit_weight_g=ln.unit_weight_g,
                par_level=ln.par_level,
                supplier_id=ln.supplier_id,
                updated_at=at,
            )
        )
    return True


def standard_lanes() -> tuple[LaneSpec, ...]:
    """The planogram of the default cabinet (edge/defaults/cabinet.toml)."""
    return (
        LaneSpec(1, "tomato-500", "Tomatoes 500 g", "unit", 690, 500.0, 6),
        LaneSpec(2, "bokchoy", "Bok choy", "weighed", 800, None, 4),
        LaneSpec(3, "eggs-10", "Eggs x10", "tracked", 1290, None, 4, "sup-hillside"),
        LaneSpec(4, "chili-150", "Chili 150 g", "unit", 380, 150.0, 7),
    )

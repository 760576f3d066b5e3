"""What an operator sees and does: the fleet dashboard, sales, reviews, refunds, alarms.

Every function takes a SQLAlchemy ``Connection`` (run them with ``be.db.query`` or
``be.db.run``) and a :class:`Scope`: an operator sees only its company's cabinets, an
admin every cabinet. A cabinet outside the scope is treated exactly like a cabinet that
does not exist (``NotFound``), so nobody learns another company's cabinet ids.

The dashboard is built with a constant number of statements whatever the number of
cabinets (cabinets, lanes, open alarms, today's sales, pending reviews, sales by day,
sales by product: one query each, grouped in Python), so it stays fast with hundreds of
cabinets.

Sales figures count residents' sessions that took something (``role = 'resident'`` and
``total_fen > 0``); operators' restocking sessions and unused unlocks are not sales.
Amounts are the cabinet's ``total_fen`` (refunds are shown separately on each sale).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, literal, select, true, update
from sqlalchemy.engine import Connection, Row

from backend import schema as t
from backend import wallet
from backend.accounts import Principal
from backend.clock import iso
from backend.errors import Conflict, InputError, NotFound
from backend.sales import receipt

__all__ = [
    "DAYS",
    "AlarmView",
    "CabinetDetail",
    "CabinetLanes",
    "CabinetView",
    "ChartPoint",
    "Dashboard",
    "LaneView",
    "RefundDone",
    "Scope",
    "answer_command",
    "apply_lane_changes",
    "build",
    "cabinet_detail",
    "cabinet_lanes",
    "clear_alarm",
    "confirm_sale",
    "pending_reviews",
    "recent_sales",
    "record_command",
    "refund_sale",
    "visible_cabinet",
]

#: days in the sales charts (today included)
DAYS = 14
#: open alarms listed on a dashboard card (all of them are counted)
ALARMS_ON_CARD = 5
#: at most this many open alarms are read for one dashboard
ALARM_ROWS_MAX = 5000
#: a lane below this fill is shown as low
LOW_FILL_PCT = 25
#: review-related alarms that a confirm or refund settles
REVIEW_ALARMS = ("needs_review",)


# ---------------------------------------------------------------------- scope


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose cabinets: one operator company's, or (``operator_id`` None) every one."""

    operator_id: str | None

    @classmethod
    def of(cls, who: Principal) -> Scope:
        if who.role == "admin":
            return cls(None)
        # an operator account without a company sees nothing (never everything)
        return cls(who.operator_id or "")

    def cabinets(self) -> ColumnElement[bool]:
        """A condition on ``cabinets`` rows."""
        if self.operator_id is None:
            return true()
        return t.cabinets.c.operator_id == self.operator_id

    def owns(self, cabinet_column: Any) -> ColumnElement[bool]:
        """A condition on a ``cabinet_id`` column of another table."""
        if self.operator_id is None:
            return true()
        mine = select(t.cabinets.c.id).where(t.cabinets.c.operator_id == self.operator_id)
        result: ColumnElement[bool] = cabinet_column.in_(mine)
        return result


# ---------------------------------------------------------------------- views


@dataclass(slots=True)
class LaneView:
    lane: int
    sku: str
    name: str
    mode: str
    price_fen: int  # per item, or per kg on weighed lanes
    unit_weight_g: float | None
    par_level: int
    supplier_id: str | None
    stock_count: int | None
    stock_g: float | None
    stock: float | None  # items (unit, tracked) or grams (weighed)
    stock_unit: str  # "items" or "g"
    fill_pct: int | None  # of the par level, capped at 100
    low: bool
    updated_at: str


@dataclass(slots=True)
class AlarmView:
    id: int
    cabinet_id: str
    kind: str
    severity: str
    at: str
    session_id: str | None
    seq: int | None
    detail: dict[str, Any]
    cleared_at: str | None = None


@dataclass(slots=True)
class CabinetView:
    id: str
    operator_id: str
    name: str
    location: str
    online: bool
    status_at: str | None
    door: str
    lock: str
    temperature_c: float | None
    telemetry_at: str | None
    lanes: list[LaneView] = field(default_factory=list)
    alarms: list[AlarmView] = field(default_factory=list)  # the newest open ones
    alarm_count: int = 0  # every open alarm
    sales_today_count: int = 0
    sales_today_fen: int = 0
    pending_reviews: int = 0


@dataclass(slots=True)
class ChartPoint:
    key: str  # the day (YYYY-MM-DD) or the SKU
    label: str  # what the chart prints
    value_fen: int
    count: int  # sales (by day) or sale lines (by product)


@dataclass(slots=True)
class Dashboard:
    day: str  # today, UTC
    since: str  # first day of the charts
    generated_at: str
    cabinets: list[CabinetView]
    online_count: int
    alarm_count: int
    pending_reviews: int
    sales_today_count: int
    sales_today_fen: int
    by_day: list[ChartPoint]
    by_product: list[ChartPoint]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class CabinetDetail:
    cabinet: CabinetView
    by_day: list[ChartPoint]
    by_product: list[ChartPoint]
    sales: list[dict[str, Any]]
    commands: list[dict[str, Any]]
    day: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RefundDone:
    sale: dict[str, Any]
    amount_fen: int
    user_id: int
    balance_fen: int
    operator_id: str


# ---------------------------------------------------------------------- dashboard


def _day(at: Any) -> ColumnElement[str]:
    """The first 10 characters (the day) of a stored time; the numbers are inlined so
    the same expression in SELECT and GROUP BY is the same text (PostgreSQL needs it)."""
    result: ColumnElement[str] = func.substr(
        at, literal(1, literal_execute=True), literal(10, literal_execute=True)
    )
    return result


def _lane_view(r: Row[Any]) -> LaneView:
    weighed = r.mode == "weighed"
    par = int(r.par_level or 0)
    stock: float | None
    if weighed:
        stock = None if r.stock_g is None else float(r.stock_g)
        target = par * 1000.0
    else:
        stock = None if r.stock_count is None else float(r.stock_count)
        target = float(par)
    fill = None
    if stock is not None and target > 0:
        fill = max(0, min(100, round(100.0 * stock / target)))
    return LaneView(
        lane=int(r.lane),
        sku=r.sku,
        name=r.name,
        mode=r.mode,
        price_fen=int(r.price_fen),
        unit_weight_g=None if r.unit_weight_g is None else float(r.unit_weight_g),
        par_level=par,
        supplier_id=r.supplier_id,
        stock_count=None if r.stock_count is None else int(r.stock_count),
        stock_g=None if r.stock_g is None else round(float(r.stock_g), 1),
        stock=None if stock is None else (round(stock) if weighed else int(stock)),
        stock_unit="g" if weighed else "items",
        fill_pct=fill,
        low=fill is not None and fill < LOW_FILL_PCT,
        updated_at=r.updated_at,
    )


def _alarm_view(r: Row[Any]) -> AlarmView:
    try:
        detail = json.loads(r.detail_json or "{}")
    except ValueError:
        detail = {}
    return AlarmView(
        id=int(r.id),
        cabinet_id=r.cabinet_id,
        kind=r.kind,
        severity=r.severity,
        at=r.at,
        session_id=r.session_id,
        seq=None if r.seq is None else int(r.seq),
        detail=detail if isinstance(detail, dict) else {},
        cleared_at=r.cleared_at,
    )


def _is_sale() -> ColumnElement[bool]:
    return and_(t.sales.c.role == "resident", t.sales.c.total_fen > 0)


def build(
    conn: Connection,
    scope: Scope,
    now: datetime,
    *,
    cabinet_id: str | None = None,
    days: int = DAYS,
    alarms_on_card: int = ALARMS_ON_CARD,
) -> Dashboard:
    """Every visible cabinet (or just ``cabinet_id``) with lanes, alarms, today's sales,
    and the sales charts; seven statements whatever the number of cabinets."""
    today = iso(now)[:10]
    tomorrow = iso(now + timedelta(days=1))[:10]
    since = iso(now - timedelta(days=days - 1))[:10]

    def owns(col: Any) -> ColumnElement[bool]:
        cond = scope.owns(col)
        return cond if cabinet_id is None else and_(cond, col == cabinet_id)

    cab_where = scope.cabinets()
    if cabinet_id is not None:
        cab_where = and_(cab_where, t.cabinets.c.id == cabinet_id)
    c = t.cabinets.c
    cab_rows = conn.execute(
        select(
            c.id,
            c.operator_id,
            c.name,
            c.location,
            c.online,
            c.status_at,
            c.door,
            c.lock,
            c.temperature_c,
            c.telemetry_at,
        )
        .where(cab_where)
        .order_by(c.id)
    ).all()
    cabinets = {
        r.id: CabinetView(
            id=r.id,
            operator_id=r.operator_id,
            name=r.name,
            location=r.location,
            online=bool(r.online),
            status_at=r.status_at,
            door=r.door,
            lock=r.lock,
            temperature_c=None if r.temperature_c is None else float(r.temperature_c),
            telemetry_at=r.telemetry_at,
        )
        for r in cab_rows
    }

    names: dict[str, str] = {}
    for r in conn.execute(
        select(t.lanes)
        .where(owns(t.lanes.c.cabinet_id))
        .order_by(t.lanes.c.cabinet_id, t.lanes.c.lane)
    ):
        cab = cabinets.get(r.cabinet_id)
        if cab is not None:
            cab.lanes.append(_lane_view(r))
            names.setdefault(r.sku, r.name)

    a = t.cabinet_alarms.c
    for r in conn.execute(
        select(t.cabinet_alarms)
        .where(a.cleared_at.is_(None), owns(a.cabinet_id))
        .order_by(a.at.desc(), a.id.desc())
        .limit(ALARM_ROWS_MAX)
    ):
        cab = cabinets.get(r.cabinet_id)
        if cab is not None:
            cab.alarm_count += 1
            if len(cab.alarms) < alarms_on_card:
                cab.alarms.append(_alarm_view(r))

    s = t.sales.c
    for r in conn.execute(
        select(s.cabinet_id, func.count().label("n"), func.sum(s.total_fen).label("fen"))
        .where(owns(s.cabinet_id), _is_sale(), s.at >= today, s.at < tomorrow)
        .group_by(s.cabinet_id)
    ):
        cab = cabinets.get(r.cabinet_id)
        if cab is not None:
            cab.sales_today_count = int(r.n)
            cab.sales_today_fen = int(r.fen or 0)

    for r in conn.execute(
        select(s.cabinet_id, func.count().label("n"))
        .where(owns(s.cabinet_id), s.review == "pending")
        .group_by(s.cabinet_id)
    ):
        cab = cabinets.get(r.cabinet_id)
        if cab is not None:
            cab.pending_reviews = int(r.n)

    day = _day(s.at)
    per_day = {
        r.day: (int(r.fen or 0), int(r.n))
        for r in conn.execute(
            select(day.label("day"), func.count().label("n"), func.sum(s.total_fen).label("fen"))
            .where(owns(s.cabinet_id), _is_sale(), s.at >= since, s.at < tomorrow)
            .group_by(day)
        )
    }
    by_day = []
    for i in range(days - 1, -1, -1):
        d = iso(now - timedelta(days=i))[:10]
        fen, n = per_day.get(d, (0, 0))
        by_day.append(ChartPoint(key=d, label=d[5:], value_fen=fen, count=n))

    sl = t.sale_lines.c
    product_fen = func.sum(sl.amount_fen).label("fen")
    by_product = [
        ChartPoint(
            key=r.sku, label=names.get(r.sku, r.sku), value_fen=int(r.fen or 0), count=int(r.n)
        )
        for r in conn.execute(
            select(sl.sku, func.count().label("n"), product_fen)
            .select_from(
                t.sale_lines.join(t.sales, and_(s.cabinet_id == sl.cabinet_id, s.seq == sl.seq))
            )
            .where(owns(sl.cabinet_id), _is_sale(), sl.at >= since, sl.at < tomorrow)
            .group_by(sl.sku)
        )
    ]
    by_product.sort(key=lambda p: (-p.value_fen, p.key))

    views = list(cabinets.values())
    return Dashboard(
        day=today,
        since=since,
        generated_at=iso(now),
        cabinets=views,
        online_count=sum(1 for v in views if v.online),
        alarm_count=sum(v.alarm_count for v in views),
        pending_reviews=sum(v.pending_reviews for v in views),
        sales_today_count=sum(v.sales_today_count for v in views),
        sales_today_fen=sum(v.sales_today_fen for v in views),
        by_day=by_day,
        by_product=by_product,
    )


# ---------------------------------------------------------------------- sales


def _lane_names(
    conn: Connection, scope: Scope, cabinet_id: str | None
) -> dict[str, dict[int, str]]:
    """``{cabinet: {lane: name}}`` for visible cabinets (or one)."""
    cond = scope.owns(t.lanes.c.cabinet_id)
    if cabinet_id is not None:
        cond = and_(cond, t.lanes.c.cabinet_id == cabinet_id)
    rows = conn.execute(select(t.lanes.c.cabinet_id, t.lanes.c.lane, t.lanes.c.name).where(cond))
    out: dict[str, dict[int, str]] = {}
    for r in rows:
        out.setdefault(r.cabinet_id, {})[int(r.lane)] = r.name
    return out


def _sale_json(r: Row[Any], names: Mapping[str, dict[int, str]]) -> dict[str, Any]:
    doc = receipt(r, names.get(r.cabinet_id, {}))
    doc["operator_id"] = r.operator_id
    doc["resident_code"] = r.resident_code
    doc["role"] = r.role
    doc["user_id"] = r.user_id
    doc["resident"] = r.username
    doc["resident_name"] = r.display_name
    doc["reviewed_at"] = r.reviewed_at
    doc["refundable_fen"] = max(0, int(r.charged_fen) - int(r.refunded_fen))
    return doc


def _sales_select() -> Any:
    return select(
        t.sales, t.users.c.username, t.users.c.display_name, t.cabinets.c.operator_id
    ).select_from(
        t.sales.outerjoin(t.users, t.users.c.id == t.sales.c.user_id).outerjoin(
            t.cabinets, t.cabinets.c.id == t.sales.c.cabinet_id
        )
    )


def recent_sales(
    conn: Connection,
    scope: Scope,
    *,
    cabinet_id: str | None = None,
    day: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest sales records (every role) of visible cabinets, as receipts."""
    s = t.sales.c
    cond = scope.owns(s.cabinet_id)
    if cabinet_id is not None:
        visible_cabinet(conn, scope, cabinet_id)
        cond = and_(cond, s.cabinet_id == cabinet_id)
    if day is not None:
        cond = and_(cond, s.at >= day, s.at < _next_day(day))
    rows = conn.execute(
        _sales_select().where(cond).order_by(s.at.desc(), s.seq.desc()).limit(limit)
    ).all()
    names = _lane_names(conn, scope, cabinet_id)
    return [_sale_json(r, names) for r in rows]


def _next_day(day: str) -> str:
    return (datetime.strptime(day, "%Y-%m-%d") + timedelta(days=1)).strftime("%Y-%m-%d")


def pending_reviews(conn: Connection, scope: Scope, *, limit: int = 200) -> list[dict[str, Any]]:
    """Sales waiting for an operator (oldest first), with their lines and evidence."""
    s = t.sales.c
    rows = conn.execute(
        _sales_select()
        .where(scope.owns(s.cabinet_id), s.review == "pending")
        .order_by(s.at, s.cabinet_id, s.seq)
        .limit(limit)
    ).all()
    names = _lane_names(conn, scope, None) if rows else {}
    return [_sale_json(r, names) for r in rows]


def _sale_for_update(conn: Connection, scope: Scope, cabinet_id: str, seq: int) -> Row[Any]:
    s = t.sales.c
    row = conn.execute(
        select(t.sales)
        .where(s.cabinet_id == cabinet_id, s.seq == seq, scope.owns(s.cabinet_id))
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"no sale {seq} of cabinet {cabinet_id!r}")
    return row


def _sale_doc(conn: Connection, scope: Scope, cabinet_id: str, seq: int) -> dict[str, Any]:
    s = t.sales.c
    row = conn.execute(_sales_select().where(s.cabinet_id == cabinet_id, s.seq == seq)).one()
    return _sale_json(row, _lane_names(conn, scope, cabinet_id))


def _settle_review_alarms(
    conn: Connection, cabinet_id: str, seq: int, user_id: int, now: str
) -> None:
    a = t.cabinet_alarms.c
    conn.execute(
        update(t.cabinet_alarms)
        .where(
            a.cabinet_id == cabinet_id,
            a.seq == seq,
            a.kind.in_(REVIEW_ALARMS),
            a.cleared_at.is_(None),
        )
        .values(cleared_at=now, cleared_by=user_id)
    )


def confirm_sale(
    conn: Connection, scope: Scope, cabinet_id: str, seq: int, user_id: int, now: datetime
) -> dict[str, Any]:
    """The operator agrees with what the cabinet billed; confirming twice is harmless."""
    row = _sale_for_update(conn, scope, cabinet_id, seq)
    if row.review != "confirmed":
        if row.review != "pending":
            raise Conflict(f"sale {seq} of {cabinet_id} is not waiting for review ({row.review})")
        at = iso(now)
        conn.execute(
            update(t.sales)
            .where(t.sales.c.cabinet_id == cabinet_id, t.sales.c.seq == seq)
            .values(review="confirmed", reviewed_by=user_id, reviewed_at=at)
        )
        _settle_review_alarms(conn, cabinet_id, seq, user_id, at)
    return _sale_doc(conn, scope, cabinet_id, seq)


def refund_sale(
    conn: Connection,
    scope: Scope,
    cabinet_id: str,
    seq: int,
    amount_fen: int | None,
    note: str,
    user_id: int,
    now: datetime,
) -> RefundDone:
    """Give a resident back (part of) a charge: at most what was charged minus what was
    refunded already. The wallet entry's ref ``refund:{cabinet}:{seq}:{refunded before}``
    makes a retried request a no-op (refused 409), never a second refund."""
    row = _sale_for_update(conn, scope, cabinet_id, seq)
    charged, refunded = int(row.charged_fen), int(row.refunded_fen)
    if row.user_id is None or charged <= 0:
        raise Conflict(f"nothing was charged for sale {seq} of {cabinet_id}")
    remaining = charged - refunded
    if remaining <= 0:
        raise Conflict(f"sale {seq} of {cabinet_id} is refunded in full already")
    amount = remaining if amount_fen is None else amount_fen
    if amount < 1:
        raise InputError("amount_fen", "must be at least 1")
    if amount > remaining:
        raise InputError("amount_fen", f"must be at most {remaining} (charged minus refunded)")
    text = f"refund cabinet {cabinet_id} sale {seq}" + (f": {note}" if note else "")
    posted = wallet.post(
        conn,
        int(row.user_id),
        "refund",
        amount,
        f"refund:{cabinet_id}:{seq}:{refunded}",
        now,
        note=text,
        created_by=user_id,
    )
    if not posted:
        raise Conflict(f"this refund of sale {seq} of {cabinet_id} was made already")
    at = iso(now)
    conn.execute(
        update(t.sales)
        .where(t.sales.c.cabinet_id == cabinet_id, t.sales.c.seq == seq)
        .values(
            refunded_fen=refunded + amount, review="refunded", reviewed_by=user_id, reviewed_at=at
        )
    )
    _settle_review_alarms(conn, cabinet_id, seq, user_id, at)
    operator = conn.execute(
        select(t.cabinets.c.operator_id).where(t.cabinets.c.id == cabinet_id)
    ).scalar_one()
    return RefundDone(
        sale=_sale_doc(conn, scope, cabinet_id, seq),
        amount_fen=amount,
        user_id=int(row.user_id),
        balance_fen=wallet.balance(conn, int(row.user_id)),
        operator_id=str(operator),
    )


# ---------------------------------------------------------------------- alarms


def clear_alarm(
    conn: Connection, scope: Scope, alarm_id: int, user_id: int, now: datetime
) -> tuple[AlarmView, str]:
    """Mark an alarm handled; clearing a cleared alarm changes nothing. Returns the
    alarm and its cabinet's operator company."""
    a = t.cabinet_alarms.c
    found = conn.execute(
        select(t.cabinet_alarms, t.cabinets.c.operator_id)
        .select_from(t.cabinet_alarms.join(t.cabinets, t.cabinets.c.id == a.cabinet_id))
        .where(a.id == alarm_id, scope.cabinets())
    ).first()
    if found is None:
        raise NotFound(f"no alarm {alarm_id}")
    row: Row[Any] = found
    operator_id = str(found.operator_id)
    if row.cleared_at is None:
        conn.execute(
            update(t.cabinet_alarms)
            .where(a.id == alarm_id, a.cleared_at.is_(None))
            .values(cleared_at=iso(now), cleared_by=user_id)
        )
        row = conn.execute(select(t.cabinet_alarms).where(a.id == alarm_id)).one()
    return _alarm_view(row), operator_id


# ---------------------------------------------------------------------- cabinets


def visible_cabinet(conn: Connection, scope: Scope, cabinet_id: str) -> str:
    """The operator company of a visible cabinet; ``NotFound`` for any other cabinet."""
    row = conn.execute(
        select(t.cabinets.c.operator_id).where(t.cabinets.c.id == cabinet_id, scope.cabinets())
    ).first()
    if row is None:
        raise NotFound(f"no cabinet {cabinet_id!r}")
    return str(row.operator_id)


@dataclass(frozen=True, slots=True)
class CabinetLanes:
    cabinet_id: str
    operator_id: str
    lanes: dict[int, LaneView]


def cabinet_lanes(conn: Connection, scope: Scope, cabinet_id: str) -> CabinetLanes:
    """The lanes of a visible cabinet; ``NotFound`` for any other cabinet."""
    operator_id = visible_cabinet(conn, scope, cabinet_id)
    rows = conn.execute(
        select(t.lanes).where(t.lanes.c.cabinet_id == cabinet_id).order_by(t.lanes.c.lane)
    )
    return CabinetLanes(cabinet_id, operator_id, {int(r.lane): _lane_view(r) for r in rows})


def _commands(conn: Connection, cabinet_id: str, limit: int) -> list[dict[str, Any]]:
    c = t.commands.c
    rows = conn.execute(
        select(t.commands, t.users.c.username)
        .select_from(t.commands.outerjoin(t.users, t.users.c.id == c.sent_by))
        .where(c.cabinet_id == cabinet_id)
        .order_by(c.id.desc())
        .limit(limit)
    )
    return [
        {
            "id": int(r.id),
            "name": r.name,
            "args": json.loads(r.args_json),
            "status": r.status,
            "reason": r.reason,
            "sent_by": r.username,
            "sent_at": r.sent_at,
            "answered_at": r.answered_at,
        }
        for r in rows
    ]


def cabinet_detail(
    conn: Connection,
    scope: Scope,
    cabinet_id: str,
    now: datetime,
    *,
    sales_limit: int = 30,
    commands_limit: int = 20,
) -> CabinetDetail:
    """One visible cabinet with every open alarm, recent sales and commands, its charts."""
    dash = build(conn, scope, now, cabinet_id=cabinet_id, alarms_on_card=ALARM_ROWS_MAX)
    if not dash.cabinets:
        raise NotFound(f"no cabinet {cabinet_id!r}")
    return CabinetDetail(
        cabinet=dash.cabinets[0],
        by_day=dash.by_day,
        by_product=dash.by_product,
        sales=recent_sales(conn, scope, cabinet_id=cabinet_id, limit=sales_limit),
        commands=_commands(conn, cabinet_id, commands_limit),
        day=dash.day,
    )


def record_command(
    conn: Connection,
    cabinet_id: str,
    name: str,
    args: Mapping[str, Any],
    nonce: str,
    sent_by: int,
    now: datetime,
    *,
    unlock: bool = False,
) -> int:
    """The ``commands`` row (status ``sent``) written before the command leaves; with
    ``unlock`` also an operator's ``unlocks`` row, so the cabinet counts as busy."""
    at = iso(now)
    res = conn.execute(
        insert(t.commands).values(
            nonce=nonce,
            cabinet_id=cabinet_id,
            name=name,
            args_json=json.dumps(args, sort_keys=True),
            status="sent",
            sent_by=sent_by,
            sent_at=at,
        )
    )
    if unlock:
        conn.execute(
            insert(t.unlocks).values(
                nonce=nonce,
                cabinet_id=cabinet_id,
                user_id=sent_by,
                role="operator",
                status="sent",
                requested_at=at,
            )
        )
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def answer_command(
    conn: Connection,
    nonce: str,
    status: str,
    reason: str | None,
    now: datetime,
    *,
    session_id: str | None = None,
) -> None:
    """What became of a command: ``done``, ``refused`` or ``timeout``."""
    at = iso(now)
    conn.execute(
        update(t.commands)
        .where(t.commands.c.nonce == nonce)
        .values(status=status, reason=reason, answered_at=at)
    )
    u = t.unlocks.c
    values: dict[str, Any] = {"status": status, "reason": reason, "answered_at": at}
    if status == "done":
        values = {"status": "unlocked", "session_id": session_id, "answered_at": at}
    conn.execute(update(t.unlocks).where(u.nonce == nonce, u.status == "sent").values(**values))


def apply_lane_changes(
    conn: Connection, cabinet_id: str, changes: Mapping[int, Mapping[str, Any]]
) -> None:
    """After the cabinet said ``done``: its new prices or labels (``sku``, ``name``,
    ``price_fen``) in ``lanes`` (``updated_at`` stays the time of the last stock report)."""
    for lane, change in changes.items():
        values = {k: v for k, v in change.items() if k in ("sku", "name", "price_fen")}
        if not values:
            continue
        conn.execute(
            update(t.lanes)
            .where(t.lanes.c.cabinet_id == cabinet_id, t.lanes.c.lane == lane)
            .values(**values)
        )

"""Restock demand for the vegetable bases, their deliveries, and what was placed.

Demand per cabinet lane (only lanes whose ``supplier_id`` is the supplier's)::

    demand = max(0, ceil(par - stock + expected - pending))

* ``unit`` and ``tracked`` lanes count items: ``par`` = ``lanes.par_level``, ``stock`` =
  ``lanes.stock_count`` (what the cabinet's inventory last said), ``velocity_per_day`` =
  items sold to residents on that lane (and SKU) over the last ``velocity_days`` days /
  ``velocity_days``.
* ``weighed`` lanes count grams: ``par`` = ``par_level`` × 1000 g, ``stock`` =
  ``lanes.stock_g``, velocity from the grams sold; the demand is rounded up to 100 g.
* ``expected`` = ``velocity_per_day`` × ``horizon_days`` (rounded: 2 decimals for items,
  1 for grams; the demand is computed from the rounded figure, so the feed adds up).
* ``pending`` = deliveries the supplier confirmed for that cabinet and SKU that are not
  yet placed (and were confirmed less than ``pending_days`` ago: a delivery nobody
  placed stops holding the demand back). Two lanes of one SKU in a cabinet share the
  pending quantity in lane order, each taking what it needs, the last the rest.
* Unknown stock counts as 0 and the line says ``stock_known: false``.

Only resident sales count towards velocity (an operator's session or a forced door is
not demand). ``demand`` runs a constant number of queries, whatever the number of lanes.

A delivery's ``qty`` is in the line's unit: items, or grams for weighed produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from backend import schema as t
from backend.clock import iso
from backend.errors import InputError

if TYPE_CHECKING:
    from backend.services import Backend

__all__ = [
    "CSV_HEADER",
    "MAX_DELIVERY_QTY",
    "DemandLine",
    "confirm_delivery",
    "deliveries",
    "demand",
    "feed",
    "feed_csv",
    "publish_all",
    "publish_supplier",
    "publisher",
    "record_placement",
]

log = logging.getLogger("freshbox.backend.restock")

FEED_VERSION = 1
#: a confirmed delivery older than this no longer reduces the demand (days)
PENDING_DAYS = 3.0
#: weighed demand is rounded up to this many grams
WEIGHED_STEP_G = 100
#: a weighed lane must gain at least this much for a restock to count as a placement (g)
MIN_WEIGHED_GAIN_G = 50.0
MAX_DELIVERY_QTY = 10_000

CSV_HEADER = (
    "supplier_id",
    "cabinet_id",
    "cabinet_name",
    "location",
    "lane",
    "sku",
    "name",
    "unit",
    "par",
    "stock",
    "velocity_per_day",
    "expected",
    "pending",
    "demand",
)


@dataclass(frozen=True, slots=True)
class DemandLine:
    """One lane's restock demand (items, or grams when ``unit`` is ``"g"``)."""

    supplier_id: str
    cabinet_id: str
    cabinet_name: str
    location: str
    lane: int
    sku: str
    name: str
    mode: str
    unit: str  # "item" or "g"
    par: int
    stock: int | float
    velocity_per_day: float
    expected: float
    pending_deliveries: int
    demand: int
    stock_known: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _unit(mode: str) -> str:
    return "g" if mode == "weighed" else "item"


def _ceil(x: float) -> int:
    # 2.0000000001 from float arithmetic is 2, not 3
    return math.ceil(x - 1e-9)


# ------------------------------------------------------------------ demand


def demand(
    conn: Connection,
    now: datetime,
    *,
    supplier_id: str | None = None,
    velocity_days: int = 7,
    horizon_days: float = 2.0,
    pending_days: float = PENDING_DAYS,
) -> list[DemandLine]:
    """Every supplied lane's demand (one supplier's, or all suppliers' when None)."""
    if velocity_days < 1:
        raise ValueError("velocity_days must be at least 1")
    lanes_q = (
        select(
            t.lanes.c.cabinet_id,
            t.lanes.c.lane,
            t.lanes.c.sku,
            t.lanes.c.name,
            t.lanes.c.mode,
            t.lanes.c.par_level,
            t.lanes.c.supplier_id,
            t.lanes.c.stock_count,
            t.lanes.c.stock_g,
            t.cabinets.c.name.label("cabinet_name"),
            t.cabinets.c.location,
        )
        .join(t.cabinets, t.cabinets.c.id == t.lanes.c.cabinet_id)
        .where(t.lanes.c.supplier_id.is_not(None))
        .order_by(t.lanes.c.supplier_id, t.lanes.c.cabinet_id, t.lanes.c.lane)
    )
    if supplier_id is not None:
        lanes_q = lanes_q.where(t.lanes.c.supplier_id == supplier_id)
    lanes = conn.execute(lanes_q).all()
    if not lanes:
        return []

    # resident sales per cabinet, lane and SKU over the velocity window
    since, until = iso(now - timedelta(days=velocity_days)), iso(now)
    sold_q = (
        select(
            t.sale_lines.c.cabinet_id,
            t.sale_lines.c.lane,
            t.sale_lines.c.sku,
            func.coalesce(func.sum(t.sale_lines.c.qty), 0).label("items"),
            func.coalesce(func.sum(t.sale_lines.c.weight_g), 0.0).label("grams"),
        )
        .join(
            t.sales,
            and_(
                t.sales.c.cabinet_id == t.sale_lines.c.cabinet_id,
                t.sales.c.seq == t.sale_lines.c.seq,
            ),
        )
        .join(
            t.lanes,
            and_(
                t.lanes.c.cabinet_id == t.sale_lines.c.cabinet_id,
                t.lanes.c.lane == t.sale_lines.c.lane,
                t.lanes.c.sku == t.sale_lines.c.sku,
            ),
        )
        .where(
            t.sales.c.role == "resident",
            t.sale_lines.c.at > since,
            t.sale_lines.c.at <= until,
            t.lanes.c.supplier_id.is_not(None),
        )
        .group_by(t.sale_lines.c.cabinet_id, t.sale_lines.c.lane, t.sale_lines.c.sku)
    )
    if supplier_id is not None:
        sold_q = sold_q.where(t.lanes.c.supplier_id == supplier_id)
    sold = {
        (r.cabinet_id, int(r.lane), r.sku): (float(r.items), float(r.grams))
        for r in conn.execute(sold_q)
    }

    pending_since = iso(now - timedelta(days=pending_days))
    pending_q = (
        select(
            t.deliveries.c.cabinet_id,
            t.deliveries.c.sku,
            func.sum(t.deliveries.c.qty).label("qty"),
        )
        .where(
            t.deliveries.c.status == "confirmed",
            t.deliveries.c.confirmed_at > pending_since,
        )
        .group_by(t.deliveries.c.cabinet_id, t.deliveries.c.sku)
    )
    pending = {(r.cabinet_id, r.sku): int(r.qty) for r in conn.execute(pending_q)}

    # per lane: par, stock, expected; then share the pending quantity and finish
    staged: list[tuple[Any, int, int | float, bool, float, float]] = []
    for r in lanes:
        weighed = r.mode == "weighed"
        items, grams = sold.get((r.cabinet_id, int(r.lane), r.sku), (0.0, 0.0))
        if weighed:
            par: int = int(r.par_level) * 1000
            known = r.stock_g is not None
            stock: int | float = round(max(0.0, float(r.stock_g or 0.0)), 1)
            velocity = round(grams / velocity_days, 1)
            expected = round(velocity * horizon_days, 1)
        else:
            par = int(r.par_level)
            known = r.stock_count is not None
            stock = max(0, int(r.stock_count or 0))
            velocity = round(items / velocity_days, 2)
            expected = round(velocity * horizon_days, 2)
        staged.append((r, par, stock, known, velocity, expected))

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (r, *_) in enumerate(staged):
        groups[(r.cabinet_id, r.sku)].append(i)
    share: dict[int, int] = {}
    for key, idx in groups.items():
        left = pending.get(key, 0)
        for n, i in enumerate(idx):
            _, par, stock, _, _, expected = staged[i]
            need = max(0, _ceil(par - stock + expected))
            take = left if n == len(idx) - 1 else min(left, need)
            share[i] = take
            left -= take

    out: list[DemandLine] = []
    for i, (r, par, stock, known, velocity, expected) in enumerate(staged):
        raw = max(0, _ceil(par - stock + expected - share[i]))
        if r.mode == "weighed":
            raw = _ceil(raw / WEIGHED_STEP_G) * WEIGHED_STEP_G
        out.append(
            DemandLine(
                supplier_id=r.supplier_id,
                cabinet_id=r.cabinet_id,
                cabinet_name=r.cabinet_name,
                location=r.location,
                lane=int(r.lane),
                sku=r.sku,
                name=r.name,
                mode=r.mode,
                unit=_unit(r.mode),
                par=par,
                stock=stock,
                velocity_per_day=velocity,
                expected=expected,
                pending_deliveries=share[i],
                demand=raw,
                stock_known=known,
            )
        )
    return out


def _document(
    supplier_id: str,
    lines: Sequence[DemandLine],
    now: datetime,
    velocity_days: int,
    horizon_days: float,
) -> dict[str, Any]:
    return {
        "v": FEED_VERSION,
        "supplier": supplier_id,
        "generated_at": iso(now),
        "horizon_days": horizon_days,
        "velocity_days": velocity_days,
        "lines": [ln.to_json() for ln in lines],
    }


def feed(
    conn: Connection,
    now: datetime,
    supplier_id: str,
    *,
    velocity_days: int = 7,
    horizon_days: float = 2.0,
) -> dict[str, Any]:
    """One supplier's restock feed: the JSON document of the API and the MQTT topic."""
    lines = demand(
        conn, now, supplier_id=supplier_id, velocity_days=velocity_days, horizon_days=horizon_days
    )
    return _document(supplier_id, lines, now, velocity_days, horizon_days)


def all_feeds(
    conn: Connection, now: datetime, *, velocity_days: int = 7, horizon_days: float = 2.0
) -> dict[str, dict[str, Any]]:
    """Every supplier's feed (a supplier without lanes gets an empty one)."""
    lines = demand(conn, now, velocity_days=velocity_days, horizon_days=horizon_days)
    by_supplier: dict[str, list[DemandLine]] = {
        r.id: [] for r in conn.execute(select(t.suppliers.c.id).order_by(t.suppliers.c.id))
    }
    for ln in lines:
        by_supplier.setdefault(ln.supplier_id, []).append(ln)
    return {
        sid: _document(sid, ls, now, velocity_days, horizon_days) for sid, ls in by_supplier.items()
    }


def _csv_number(value: float) -> str:
    # as JSON writes it: 3, 2.5, 1234.5
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def _csv_text(value: str) -> str:
    # a cell a spreadsheet would run as a formula is quoted as text (CSV injection)
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def feed_csv(lines: Sequence[DemandLine] | Sequence[Mapping[str, Any]]) -> str:
    """The feed as CSV (RFC 4180: CRLF line ends, quoted where needed), header first.

    Takes ``DemandLine`` objects or the ``lines`` of a feed document.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_HEADER)
    for item in lines:
        d = item.to_json() if isinstance(item, DemandLine) else dict(item)
        w.writerow(
            [
                _csv_text(str(d["supplier_id"])),
                _csv_text(str(d["cabinet_id"])),
                _csv_text(str(d["cabinet_name"])),
                _csv_text(str(d["location"])),
                str(int(d["lane"])),
                _csv_text(str(d["sku"])),
                _csv_text(str(d["name"])),
                str(d["unit"]),
                _csv_number(d["par"]),
                _csv_number(d["stock"]),
                _csv_number(d["velocity_per_day"]),
                _csv_number(d["expected"]),
                _csv_number(d["pending_deliveries"]),
                _csv_number(d["demand"]),
            ]
        )
    return buf.getvalue()


# ------------------------------------------------------------------ MQTT


async def publish_supplier(be: Backend, supplier_id: str) -> bool:
    """Publish one supplier's feed now (after a delivery changed it); False without MQTT."""
    fleet = be.fleet
    if fleet is None:
        return False
    s = be.settings
    doc = await be.db.query(
        feed,
        be.clock.now(),
        supplier_id,
        velocity_days=s.velocity_days,
        horizon_days=s.horizon_days,
    )
    fleet.publish_restock(supplier_id, doc)
    return True


async def publish_all(be: Backend) -> int:
    """Publish every supplier's feed, retained on ``freshbox/v1/supplier/{id}/restock``.

    Returns how many feeds were published (0 when there is no broker).
    """
    fleet = be.fleet
    if fleet is None:
        return 0
    s = be.settings
    feeds = await be.db.query(
        all_feeds, be.clock.now(), velocity_days=s.velocity_days, horizon_days=s.horizon_days
    )
    for supplier_id, doc in feeds.items():
        fleet.publish_restock(supplier_id, doc)
    return len(feeds)


async def publisher(be: Backend, stop: asyncio.Event) -> None:
    """Publish every feed now and then every ``restock_publish_s`` until ``stop`` is set."""
    interval = max(1.0, float(be.settings.restock_publish_s))
    while not stop.is_set():
        try:
            n = await publish_all(be)
            log.debug("published %d restock feeds", n)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("publishing the restock feeds failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


# ------------------------------------------------------------------ deliveries


def _delivery_json(r: Any, names: Mapping[tuple[str, str], tuple[str, str]]) -> dict[str, Any]:
    name, mode = names.get((r.cabinet_id, r.sku), (r.sku, "unit"))
    return {
        "id": int(r.id),
        "supplier_id": r.supplier_id,
        "cabinet_id": r.cabinet_id,
        "cabinet_name": r.cabinet_name,
        "sku": r.sku,
        "name": name,
        "unit": _unit(mode),
        "qty": int(r.qty),
        "note": r.note,
        "status": r.status,
        "confirmed_at": r.confirmed_at,
        "placed_qty": None if r.placed_qty is None else int(r.placed_qty),
        "placed_at": r.placed_at,
    }


def _lane_names(conn: Connection, cabinet_ids: set[str]) -> dict[tuple[str, str], tuple[str, str]]:
    if not cabinet_ids:
        return {}
    rows = conn.execute(
        select(t.lanes.c.cabinet_id, t.lanes.c.sku, t.lanes.c.name, t.lanes.c.mode)
        .where(t.lanes.c.cabinet_id.in_(sorted(cabinet_ids)))
        .order_by(t.lanes.c.cabinet_id, t.lanes.c.lane.desc())
    )
    return {(r.cabinet_id, r.sku): (r.name, r.mode) for r in rows}


def _deliveries_select() -> Any:
    return select(t.deliveries, t.cabinets.c.name.label("cabinet_name")).join(
        t.cabinets, t.cabinets.c.id == t.deliveries.c.cabinet_id
    )


def deliveries(
    conn: Connection, supplier_id: str, *, limit: int = 50, status: str | None = None
) -> list[dict[str, Any]]:
    """A supplier's deliveries, newest first."""
    q = _deliveries_select().where(t.deliveries.c.supplier_id == supplier_id)
    if status:
        q = q.where(t.deliveries.c.status == status)
    rows = conn.execute(q.order_by(t.deliveries.c.id.desc()).limit(limit)).all()
    names = _lane_names(conn, {r.cabinet_id for r in rows})
    return [_delivery_json(r, names) for r in rows]


def confirm_delivery(
    conn: Connection,
    supplier_id: str,
    *,
    cabinet_id: str,
    sku: str,
    qty: int,
    note: str,
    user_id: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The supplier says it delivered ``qty`` of ``sku`` to ``cabinet_id``.

    The cabinet must have a lane of that SKU supplied by this supplier; the errors
    name the field (``cabinet_id``, ``sku``, ``qty``).
    """
    if not 1 <= qty <= MAX_DELIVERY_QTY:
        raise InputError("qty", f"must be 1 to {MAX_DELIVERY_QTY}")
    lanes = conn.execute(
        select(t.lanes.c.sku).where(
            t.lanes.c.cabinet_id == cabinet_id, t.lanes.c.supplier_id == supplier_id
        )
    ).all()
    if not lanes:
        raise InputError("cabinet_id", f"{cabinet_id!r} is not a cabinet you supply")
    if sku not in {r.sku for r in lanes}:
        raise InputError("sku", f"cabinet {cabinet_id} has no lane of {sku!r} that you supply")
    res = conn.execute(
        insert(t.deliveries).values(
            supplier_id=supplier_id,
            cabinet_id=cabinet_id,
            sku=sku,
            qty=qty,
            note=note[:300],
            status="confirmed",
            confirmed_by=user_id,
            confirmed_at=iso(now),
        )
    )
    pk = res.inserted_primary_key
    assert pk is not None
    row = conn.execute(_deliveries_select().where(t.deliveries.c.id == int(pk[0]))).one()
    return _delivery_json(row, _lane_names(conn, {cabinet_id}))


# ------------------------------------------------------------------ placement


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _gains(body: Mapping[str, Any]) -> dict[int, float]:
    """Grams gained per lane, from a sale body's evidence."""
    gains: dict[int, float] = {}
    evidence = body.get("evidence")
    if not isinstance(evidence, list):
        return gains
    for ev in evidence:
        if not isinstance(ev, dict):
            continue
        lane = ev.get("lane")
        if isinstance(lane, bool) or not isinstance(lane, int):
            continue
        delta = _number(ev.get("delta_g"))
        if delta is None:
            before, after = _number(ev.get("before_g")), _number(ev.get("after_g"))
            if before is None or after is None:
                continue
            delta = after - before
        if delta > 0:
            gains[lane] = gains.get(lane, 0.0) + delta
    return gains


def _item_weight(r: Any) -> float | None:
    """A lane's weight per item: its pack weight, else the average of what it holds."""
    if r.unit_weight_g:
        return float(r.unit_weight_g)
    if r.stock_count and r.stock_g and r.stock_count > 0 and r.stock_g > 0:
        return float(r.stock_g) / int(r.stock_count)
    return None


def record_placement(
    conn: Connection, cabinet_id: str, body: Mapping[str, Any], at: str | datetime
) -> int:
    """Mark deliveries placed from an operator's restocking session; returns how many.

    Call it with the ``body`` of a verified ``sale`` record whose ``role`` is
    ``"operator"`` (any other body changes nothing), in the transaction that stores the
    record, once per record, ``at`` being the record's time. Such a body has ``lines``
    ``[]``, ``total_fen`` 0, and ``evidence`` ``[{lane, before_g, after_g, delta_g}]`` for
    every lane whose level changed; the placement is read from the lanes that gained.

    Per lane that gained weight (``delta_g``, else ``after_g - before_g``):

    * ``unit`` lanes: items placed = round(gain / ``unit_weight_g``);
    * ``tracked`` lanes: the same with the pack weight, or else the average item weight
      the lane holds (``stock_g / stock_count``); when neither is known the count is
      unknown;
    * ``weighed`` lanes: grams placed = round(gain), if at least 50 g.

    Lanes of one SKU add up. Then that SKU's ``confirmed`` deliveries to this cabinet are
    marked ``placed`` oldest first: the oldest always (``placed_qty`` = min(its qty, the
    amount placed), or NULL when the count is unknown), each next one while at least one
    item (weighed: half its grams) remains unaccounted for. Lanes that lost weight
    (spoiled produce taken out) place nothing.
    """
    if body.get("role") != "operator":
        return 0
    gains = _gains(body)
    if not gains:
        return 0
    when = iso(at) if isinstance(at, datetime) else str(at)
    lanes = conn.execute(
        select(
            t.lanes.c.lane,
            t.lanes.c.sku,
            t.lanes.c.mode,
            t.lanes.c.unit_weight_g,
            t.lanes.c.stock_count,
            t.lanes.c.stock_g,
        ).where(t.lanes.c.cabinet_id == cabinet_id, t.lanes.c.lane.in_(sorted(gains)))
    ).all()
    # per SKU: the amount placed (items or grams; None = some unknown count) and the mode
    placed: dict[str, tuple[int | None, bool]] = {}
    for r in lanes:
        gain = gains[int(r.lane)]
        weighed = r.mode == "weighed"
        amount: int | None
        if weighed:
            if gain < MIN_WEIGHED_GAIN_G:
                continue
            amount = round(gain)
        else:
            each = _item_weight(r)
            if each is None:
                amount = None
            else:
                amount = round(gain / each)
                if amount < 1:
                    continue
        prev = placed.get(r.sku)
        if prev is not None:
            amount = None if prev[0] is None or amount is None else prev[0] + amount
        placed[r.sku] = (amount, weighed)
    if not placed:
        return 0
    pending = conn.execute(
        select(t.deliveries.c.id, t.deliveries.c.sku, t.deliveries.c.qty)
        .where(
            t.deliveries.c.cabinet_id == cabinet_id,
            t.deliveries.c.status == "confirmed",
            t.deliveries.c.sku.in_(sorted(placed)),
        )
        .order_by(t.deliveries.c.confirmed_at, t.deliveries.c.id)
    ).all()
    by_sku: dict[str, list[Any]] = defaultdict(list)
    for d in pending:
        by_sku[d.sku].append(d)
    marked = 0
    for sku, (amount, weighed) in placed.items():
        left = amount
        for n, d in enumerate(by_sku.get(sku, [])):
            qty = int(d.qty)
            if n > 0:
                if left is None:
                    break
                if left < (qty / 2 if weighed else 1):
                    break
            placed_qty = None if left is None else min(qty, left)
            res = conn.execute(
                update(t.deliveries)
                .where(t.deliveries.c.id == d.id, t.deliveries.c.status == "confirmed")
                .values(status="placed", placed_qty=placed_qty, placed_at=when)
            )
            marked += res.rowcount
            if left is not None:
                left -= qty
    return marked

"""What is on which lane, who took what: the bookkeeping behind the simulated cabinet.

The ledger knows nothing of sensors. It follows the people of a timeline (or of a
live daemon), rejects what cannot happen (taking an item that is not there,
returning one that was not taken, touching a shelf behind a closed door), and
tells the truth about every session in the shape of ``expect.sessions`` of
``docs/scenario.md``.

Sessions: an unlock starts one. It is *used* when the door opens within
``UNLOCK_WINDOW_S`` of the unlock; the visit (open .. close) then belongs to it.
Otherwise it is an ``unlock_unused`` session. A door opened without a pending
unlock is a visit of nobody: what happens then is physical but billed to no one.

Weights in grams, times in seconds. Produce (items stocked on ``weighed``
lanes) loses weight continuously: ``w(t) = w(0) * exp(-loss_per_s * t)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edge.errors import InputError
from edge.model import Lane, Role

#: An unlock is unused when the door does not open within this many seconds.
UNLOCK_WINDOW_S = 15.0


class ActionError(InputError):
    """An action that cannot happen in the current state of the cabinet.

    ``field`` names the action's field at fault (``"item"``, ``"lane"``, ...) or is
    ``None`` when the action as a whole is impossible.
    """

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def loss_rate_per_s(moisture_loss_pct_per_day: float) -> float:
    """The exponential weight-loss rate (1/s) of a daily loss in percent."""
    return -math.log1p(-moisture_loss_pct_per_day / 100.0) / 86400.0


@dataclass(slots=True)
class Item:
    """One physical thing on a shelf or in a hand.

    ``weight0_g`` is its weight at t = 0 (extrapolated for items placed later);
    produce (``decays``) loses weight with time, packs and objects do not.
    """

    weight0_g: float
    decays: bool

    def weight(self, t: float, loss_per_s: float) -> float:
        """Weight in grams at time ``t`` (s)."""
        return self.weight0_g * math.exp(-loss_per_s * t) if self.decays else self.weight0_g


@dataclass(slots=True)
class Taken:
    """An item a visitor took: from which lane, when, how heavy, and where it went back."""

    item: Item
    lane: int
    t: float
    weight_g: float
    returned_to: int | None = None


@dataclass(slots=True)
class Visit:
    """One door opening: what was taken, whether something foreign was left."""

    session: SessionRecord | None
    taken: list[Taken] = field(default_factory=list)
    foreign: bool = False


@dataclass(slots=True)
class SessionRecord:
    """An unlock and, if it was used, its visit."""

    t: float
    resident: str
    role: Role
    visit: Visit | None = None


class Ledger:
    """The true state of the shelves and the sessions, action by action."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        stock: Mapping[int, Sequence[float]],
        loss_per_s: float = 0.0,
    ) -> None:
        self.lanes: dict[int, Lane] = {ln.lane: ln for ln in lanes}
        self.loss_per_s = loss_per_s
        self.shelves: dict[int, list[Item]] = {
            ln.lane: [Item(float(w), ln.mode == "weighed") for w in stock.get(ln.lane, ())]
            for ln in lanes
        }
        self.foreign_g: dict[int, float] = {ln.lane: 0.0 for ln in lanes}
        self.sessions: list[SessionRecord] = []
        self.visit: Visit | None = None
        self._pending: SessionRecord | None = None

    @property
    def door_open(self) -> bool:
        return self.visit is not None

    # ------------------------------------------------------------ people

    def unlock(self, t: float, resident: str, role: Role = "resident") -> None:
        """A verified unlock at ``t``; a previous unused unlock stays unused."""
        rec = SessionRecord(t, resident, role)
        self.sessions.append(rec)
        self._pending = rec

    def open(self, t: float) -> None:
        """The door opens; the visit belongs to an unlock of the last ``UNLOCK_WINDOW_S``."""
        if self.visit is not None:
            raise ActionError(None, "open while the door is already open")
        pending = self._pending
        session = pending if pending is not None and t - pending.t <= UNLOCK_WINDOW_S else None
        self.visit = Visit(session)
        if session is not None:
            session.visit = self.visit
        self._pending = None

    def close(self, t: float) -> None:
        """The door closes; the visit ends."""
        if self.visit is None:
            raise ActionError(None, "close while the door is already closed")
        self.visit = None

    def take(self, t: float, lane: int, item: int = 0, count: int = 1) -> list[Taken]:
        """Take ``count`` items from index ``item`` of the lane's current stock list."""
        visit = self._visit("take")
        shelf = self._shelf(lane)
        if item < 0 or item >= len(shelf):
            raise ActionError(
                "item", f"lane {lane} has {len(shelf)} item(s) now, there is no item {item}"
            )
        if count < 1 or item + count > len(shelf):
            raise ActionError(
                "count",
                f"lane {lane} has {len(shelf)} item(s) now, cannot take {count} from item {item}",
            )
        out = [
            Taken(it, lane, t, it.weight(t, self.loss_per_s)) for it in shelf[item : item + count]
        ]
        del shelf[item : item + count]
        visit.taken.extend(out)
        return out

    def return_item(self, t: float, lane: int, taken_index: int) -> Taken:
        """Put item ``taken_index`` (in order of taking, this visit) on ``lane``."""
        visit = self._visit("return")
        shelf = self._shelf(lane)
        if taken_index < 0 or taken_index >= len(visit.taken):
            raise ActionError(
                "item",
                f"item {taken_index} was not taken: this session has taken "
                f"{len(visit.taken)} item(s)",
            )
        taken = visit.taken[taken_index]
        if taken.returned_to is not None:
            raise ActionError("item", f"taken item {taken_index} was already returned")
        taken.returned_to = lane
        shelf.append(taken.item)
        return taken

    def place(self, t: float, lane: int, weight_g: float) -> Item:
        """Put something on ``lane``: new stock when an operator restocks, else a foreign object."""
        visit = self._visit("place")
        shelf = self._shelf(lane)
        restock = visit.session is not None and visit.session.role == "operator"
        decays = restock and self.lanes[lane].mode == "weighed"
        item = Item(weight_g * math.exp(self.loss_per_s * t) if decays else weight_g, decays)
        if restock:
            shelf.append(item)
        else:
            self.foreign_g[lane] += weight_g
            visit.foreign = True
        return item

    def check_lane(self, lane: int) -> None:
        """Raise ``ActionError`` unless ``lane`` exists."""
        self._shelf(lane)

    # ------------------------------------------------------------ truth

    def truth(self) -> list[dict[str, object]]:
        """Every session as ``expect.sessions`` of ``docs/scenario.md`` would list it.

        ``lines``: per lane (in lane order) what left the cabinet for good: ``qty``
        for unit and tracked lanes, ``qty`` 1 and ``weight_g`` (0.1 g) for weighed
        ones. An item put back on another lane is not sold and flags
        ``misplaced_return``; a foreign object flags ``foreign_object``.
        An unlock not used within ``UNLOCK_WINDOW_S`` is ``unlock_unused``. Operator
        (restocking) sessions have no lines and carry ``"role": "operator"``; resident
        sessions have no ``role`` key, exactly as ``expect`` lists them.
        """
        out: list[dict[str, object]] = []
        for rec in self.sessions:
            entry: dict[str, object]
            if rec.visit is None:
                entry = {"lines": [], "flags": ["unlock_unused"]}
            elif rec.role == "operator":
                entry = {"lines": [], "flags": []}
            else:
                entry = self._bill(rec.visit)
            if rec.role == "operator":
                entry["role"] = "operator"
            out.append(entry)
        return out

    def _bill(self, visit: Visit) -> dict[str, object]:
        lines: list[dict[str, object]] = []
        for lane in self.lanes.values():
            gone = [tk for tk in visit.taken if tk.lane == lane.lane and tk.returned_to is None]
            if not gone:
                continue
            if lane.mode == "weighed":
                weight = round(sum(tk.weight_g for tk in gone), 1)
                lines.append({"sku": lane.sku, "qty": 1, "weight_g": weight})
            else:
                lines.append({"sku": lane.sku, "qty": len(gone)})
        flags: list[str] = []
        if visit.foreign:
            flags.append("foreign_object")
        if any(tk.returned_to not in (None, tk.lane) for tk in visit.taken):
            flags.append("misplaced_return")
        return {"lines": lines, "flags": flags}

    # ------------------------------------------------------------ helpers

    def _visit(self, what: str) -> Visit:
        if self.visit is None:
            raise ActionError(None, f"{what} while the door is closed")
        return self.visit

    def _shelf(self, lane: int) -> list[Item]:
        shelf = self.shelves.get(lane)
        if shelf is None:
            raise ActionError("lane", f"unknown lane {lane}")
        return shelf

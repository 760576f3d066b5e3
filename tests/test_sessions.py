"""Door sessions end to end: the ``Cabinet`` controller fed by the simulated cabinet in
virtual time, with a real SQLite store: unused unlocks, alarms, forced doors,
restocking, refused unlocks, power cuts and slow drift."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.cabinet import Cabinet, ulid_factory, utc_epoch
from edge.hardware.interfaces import MemoryLock
from edge.model import CabinetInput, SampleBlock
from edge.session import SessionResult
from edge.store import CabinetStore
from firmware_mock.scenario import Physics, Scenario, load_scenario, parse_scenario
from firmware_mock.simulator import SimulatedCabinet

BASIC = Path(__file__).parent / "fixtures" / "scenarios" / "basic-purchase.json"
#: lanes 1 tomato-500 (unit), 2 bok choy (weighed), 3 eggs-10 (tracked), 4 chili-150 (unit)
CABINET = load_scenario(BASIC)
LANES = CABINET.lanes
STOCK = CABINET.stock
PRICE = {ln.lane: ln.price_fen for ln in LANES}
EPOCH = utc_epoch("2026-01-01T00:00:00Z")
CABINET_ID = "sim"


class Rig:
    """A live simulated cabinet feeding a real controller and store, in virtual time."""

    def __init__(
        self,
        db: Path,
        *,
        physics: Physics | None = None,
        seed: int = 11,
        stock: dict[int, list[float]] | None = None,
    ) -> None:
        self.sim = SimulatedCabinet.live(
            LANES, stock if stock is not None else STOCK, physics or Physics(), seed=seed
        )
        self.lock = MemoryLock()
        self.store = CabinetStore(db, cabinet_id=CABINET_ID, now=self.wall)
        self.results: list[SessionResult] = []
        self.cabinet = Cabinet(
            self.sim.spec,
            store=self.store,
            lock=self.lock,
            epoch=EPOCH,
            new_id=ulid_factory(EPOCH, random.Random(seed)),
            on_session=self.results.append,
        )

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.sim.now)

    def until(self, t: float, step: float = 0.1) -> None:
        """Feed the samples up to ``t`` (s)."""
        while self.sim.now < t - 1e-9:
            self.cabinet.feed(self.sim.advance(min(t, self.sim.now + step)))

    def feed(self, item: CabinetInput) -> None:
        self.cabinet.feed(item)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        return self.cabinet.out.sessions

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.cabinet.out.events if e["type"] == kind]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "cabinet.db")
    yield r
    r.close()


def lines_of(record: dict[str, Any]) -> list[tuple[str, int]]:
    return [(ln["sku"], ln["qty"]) for ln in record["lines"]]


def assert_consistent(store: CabinetStore) -> None:
    assert store.check_consistency() == []


# ------------------------------------------------------------------ unlock window


def test_unused_unlock_expires_after_15_s_and_relocks(rig: Rig) -> None:
    rig.until(2.0)
    sid = rig.cabinet.unlock(2.0, "r-5")
    rig.sim.unlock("r-5")
    assert sid is not None
    assert rig.lock.locked is False
    rig.until(16.9)
    assert rig.sessions == [] and rig.lock.locked is False  # still inside the window
    rig.until(20.0)
    assert len(rig.sessions) == 1
    rec = rig.sessions[0]
    assert rec["session_id"] == sid
    assert rec["flags"] == ["unlock_unused"]
    assert rec["lines"] == [] and rec["total_fen"] == 0 and rec["evidence"] == []
    assert rec["opened_at"] is None and rec["closed_at"] is None
    assert rec["billed_at"] == pytest.approx(17.0)
    assert [r.record for r in rig.results] == [rec]  # on_session saw the same record
    assert rig.lock.locked is True
    assert rig.lock.operations == ["unlock", "lock"]
    row = rig.store.session(sid)
    assert row is not None and row.state == "expired" and row.total_fen == 0
    assert row.expired_at == pytest.approx(17.0)
    assert rig.sim.truth_sessions() == [{"lines": [], "flags": ["unlock_unused"]}]
    assert_consistent(rig.store)


# ------------------------------------------------------------------ door alarms


def test_door_open_too_long_raises_one_alarm(rig: Rig) -> None:
    rig.until(1.0)
    rig.feed(rig.sim.unlock("r-6"))
    rig.until(2.0)
    rig.feed(rig.sim.open_door())
    rig.until(5.0)
    rig.sim.take(1, 0)
    rig.until(121.9)
    assert rig.events("door_open_too_long") == []
    rig.until(150.0)
    rig.feed(rig.sim.close_door())
    rig.until(156.0)
    alarms = rig.events("door_open_too_long")
    assert len(alarms) == 1, rig.cabinet.out.events
    sid = rig.sessions[0]["session_id"]
    assert alarms[0]["t"] == pytest.approx(122.0)
    assert alarms[0]["session_id"] == sid
    stored = rig.store.events(type="door_open_too_long")
    assert len(stored) == 1 and stored[0].severity == "alarm" and stored[0].session_id == sid
    # the session is still billed normally once the door closes
    assert len(rig.sessions) == 1
    assert lines_of(rig.sessions[0]) == [("tomato-500", 1)]
    assert rig.sessions[0]["flags"] == []
    assert rig.lock.locked is True
    assert_consistent(rig.store)


def test_forced_door_raises_door_forced_then_loss_and_charges_nobody(rig: Rig) -> None:
    rig.until(3.0)
    assert rig.lock.locked is True
    rig.feed(rig.sim.open_door())  # nobody unlocked
    rig.until(4.0)
    rig.sim.take(4, 0, count=2)
    rig.until(5.5)
    rig.sim.take(3, 1)  # a tracked box of eggs, 598.0 g
    rig.until(7.0)
    rig.feed(rig.sim.close_door())
    rig.until(12.0)
    kinds = [e["type"] for e in rig.cabinet.out.events]
    assert kinds == ["door_forced", "loss"], rig.cabinet.out.events
    forced, loss = rig.cabinet.out.events
    assert forced["t"] == pytest.approx(3.0)
    assert len(rig.sessions) == 1
    rec = rig.sessions[0]
    sid = rec["session_id"]
    assert forced["session_id"] == sid and loss["session_id"] == sid
    assert rec["role"] == "forced" and rec["resident"] == ""
    assert "door_forced" in rec["flags"]
    assert rec["total_fen"] == 0 and rec["lines"] == []
    # what left the shelves, valued
    assert sorted((ln["sku"], ln["qty"]) for ln in loss["lines"]) == [
        ("chili-150", 2),
        ("eggs-10", 1),
    ]
    assert loss["value_fen"] == 2 * PRICE[4] + PRICE[3]
    assert {e["lane"] for e in loss["evidence"]} == {3, 4}
    row = rig.store.session(sid)
    assert row is not None and row.role == "forced" and row.state == "billed"
    assert row.total_fen == 0
    assert rig.store.sale_lines(sid) == []
    assert [e.type for e in rig.store.alarms()] == ["door_forced", "loss"]
    # the box of eggs is gone from the recorded stock
    assert sorted(rig.cabinet.tracked_stock[3]) == [612.4, 640.9]
    assert rig.lock.locked is True and rig.lock.operations == []
    assert_consistent(rig.store)


# ------------------------------------------------------------------ restocking


def test_operator_restock_adds_tracked_stock_then_a_resident_buys_one(rig: Rig) -> None:
    rig.until(2.0)
    sid = rig.cabinet.unlock(2.0, "op-1", "operator")
    rig.sim.unlock("op-1", "operator")
    assert sid is not None
    rig.until(3.0)
    rig.feed(rig.sim.open_door())
    rig.until(4.0)
    rig.sim.place(3, 575.0)
    rig.until(7.0)  # a pause: the first box settles on its own
    rig.sim.place(3, 665.0)
    rig.until(9.0)
    rig.feed(rig.sim.close_door())
    rig.until(14.0)
    assert len(rig.sessions) == 1
    op = rig.sessions[0]
    assert op["session_id"] == sid and op["role"] == "operator"
    assert op["lines"] == [] and op["total_fen"] == 0
    stock = sorted(rig.cabinet.tracked_stock[3])
    assert len(stock) == 5, stock
    new = [w for w in stock if w not in (612.4, 598.0, 640.9)]
    assert len(new) == 2, stock
    assert new[0] == pytest.approx(575.0, abs=3.0)
    assert new[1] == pytest.approx(665.0, abs=3.0)
    row = rig.store.session(sid)
    assert row is not None and row.role == "operator" and row.total_fen == 0

    # a resident takes the 665 g box
    rig.feed(rig.sim.unlock("r-9"))
    rig.until(16.0)
    rig.feed(rig.sim.open_door())
    rig.until(17.0)
    shelf = rig.sim.shelf_g(3)
    taken = rig.sim.take(3, shelf.index(665.0))
    assert taken == [665.0]
    rig.until(19.0)
    rig.feed(rig.sim.close_door())
    rig.until(25.0)
    assert len(rig.sessions) == 2
    rec = rig.sessions[1]
    assert lines_of(rec) == [("eggs-10", 1)], rec
    assert rec["flags"] == []
    assert rec["total_fen"] == PRICE[3]
    assert rig.sim.truth_sessions()[1] == {"lines": [{"sku": "eggs-10", "qty": 1}], "flags": []}
    assert sorted(rig.cabinet.tracked_stock[3]) == sorted([598.0, 612.4, 640.9, new[0]])
    assert_consistent(rig.store)


def test_tracked_sale_line_keeps_the_weights_of_the_items_taken(rig: Rig) -> None:
    """edge/store.py: ``sale_lines.items_json`` holds, for tracked lanes, the recorded
    weights of the items taken (what a restart needs to rebuild the tracked stock)."""
    rig.until(2.0)
    rig.feed(rig.sim.unlock("r-12"))
    rig.until(3.0)
    rig.feed(rig.sim.open_door())
    rig.until(4.0)
    rig.sim.take(3, 2)  # the 640.9 g box
    rig.until(6.0)
    rig.feed(rig.sim.close_door())
    rig.until(12.0)
    rec = rig.sessions[0]
    assert lines_of(rec) == [("eggs-10", 1)]
    assert sorted(rig.cabinet.tracked_stock[3]) == [598.0, 612.4]
    (line,) = rig.store.sale_lines(rec["session_id"])
    assert line.sku == "eggs-10"
    assert line.items == [640.9], "the tracked sale line lost the weights of the items taken"


# ------------------------------------------------------------------ busy cabinet


def test_second_unlock_while_a_session_is_open_is_refused(rig: Rig) -> None:
    rig.until(1.0)
    first = rig.cabinet.unlock(1.0, "r-1")
    rig.sim.unlock("r-1")
    assert first is not None
    rig.until(2.0)
    assert rig.cabinet.unlock(2.0, "r-2") is None  # unlocked, door not yet open
    rig.feed(rig.sim.open_door())
    rig.until(3.0)
    rig.sim.take(4, 0)
    rig.until(4.0)
    assert rig.cabinet.unlock(4.0, "r-3") is None  # door open
    rig.feed(rig.sim.close_door())
    rig.until(4.2)
    assert rig.cabinet.unlock(4.2, "r-4") is None  # settling, not yet billed
    rig.until(10.0)
    refused = rig.events("unlock_refused")
    assert [(e["resident"], e["t"]) for e in refused] == [
        ("r-2", pytest.approx(2.0)),
        ("r-3", pytest.approx(4.0)),
        ("r-4", pytest.approx(4.2)),
    ]
    assert all(e["reason"] == "busy" for e in refused)
    assert len(rig.sessions) == 1
    assert rig.sessions[0]["session_id"] == first
    assert rig.sessions[0]["resident"] == "r-1"
    assert lines_of(rig.sessions[0]) == [("chili-150", 1)]
    assert [s.session_id for s in rig.store.sessions()] == [first]
    assert len(rig.store.events(type="unlock_refused")) == 3
    assert rig.lock.operations == ["unlock", "lock"]
    # once billed, the cabinet takes a new unlock
    assert rig.cabinet.unlock(10.0, "r-5") is not None
    assert_consistent(rig.store)


# ------------------------------------------------------------------ power cuts


def _scenario(timeline: list[dict[str, Any]], seed: int = 21) -> Scenario:
    data: dict[str, Any] = json.loads(BASIC.read_text())
    data["seed"] = seed
    data["timeline"] = timeline
    data.pop("expect")
    return parse_scenario(data, "power-cut")


def _split(
    items: Iterable[CabinetInput], cut: float, resume: float
) -> tuple[list[CabinetInput], list[CabinetInput]]:
    """What the cabinet saw before the power went at ``cut``, and what it sees once it is
    back at ``resume`` (samples in between are lost; no event happens in between)."""
    before: list[CabinetInput] = []
    after: list[CabinetInput] = []
    for it in items:
        if isinstance(it, SampleBlock):
            early = it.t < cut
            late = it.t >= resume
            if early.any():
                before.append(SampleBlock(it.t[early], it.raw[early]))
            if late.any():
                after.append(SampleBlock(it.t[late], it.raw[late]))
        else:
            assert not cut <= it.t < resume, "no event may fall in the outage"
            (before if it.t < cut else after).append(it)
    return before, after


def _controller(db: Path, sim: SimulatedCabinet, seed: int) -> tuple[Cabinet, CabinetStore]:
    """A freshly started controller process on the store file ``db``."""
    started: list[Cabinet] = []

    def wall() -> datetime:
        return EPOCH + timedelta(seconds=started[0].now if started else 0.0)

    store = CabinetStore(db, cabinet_id=CABINET_ID, now=wall)
    cabinet = Cabinet(
        sim.spec,
        store=store,
        lock=MemoryLock(),
        epoch=EPOCH,
        new_id=ulid_factory(EPOCH, random.Random(seed)),
    )
    started.append(cabinet)
    return cabinet, store


PURCHASE = [
    {"t": 0.0, "do": "wait"},
    {"t": 5.0, "do": "unlock", "resident": "r-30"},
    {"t": 5.8, "do": "open"},
    {"t": 7.0, "do": "take", "lane": 1, "item": 0},
    {"t": 8.0, "do": "take", "lane": 4, "count": 2},
    {"t": 9.0, "do": "take", "lane": 2, "item": 2},
    {"t": 12.0, "do": "close"},
    {"t": 20.0, "do": "wait"},
]


@pytest.mark.parametrize(
    ("cut", "resume", "door_open"),
    [(10.0, 11.0, True), (12.2, 13.5, False)],
    ids=["door-open", "just-closed"],
)
def test_power_cut_mid_session_bills_from_the_saved_baseline(
    tmp_path: Path, cut: float, resume: float, door_open: bool
) -> None:
    db = tmp_path / "cabinet.db"
    sim = SimulatedCabinet(_scenario(PURCHASE))
    truth = sim.truth_sessions()
    before, after = _split(sim.stream(), cut, resume)

    cabinet, store = _controller(db, sim, seed=1)
    for it in before:
        cabinet.feed(it)
    assert cabinet.out.sessions == []  # the power went before the bill
    sid = cabinet.session.session_id if cabinet.session is not None else None
    assert sid is not None
    saved = store.session(sid)
    assert saved is not None and saved.baseline
    assert saved.state == ("open" if door_open else "closed")
    store.close()  # the process dies

    cabinet2, store2 = _controller(db, sim, seed=2)
    try:
        assert cabinet2.recover(door_open=door_open) == 1
        for it in after:
            cabinet2.feed(it)
        assert len(cabinet2.out.sessions) == 1, cabinet2.out.sessions
        rec = cabinet2.out.sessions[0]
        assert rec["session_id"] == sid and rec["resident"] == "r-30"
        assert "recovered" in rec["flags"]
        assert sorted(rec["flags"]) == ["recovered"]
        assert lines_of(rec) == [("tomato-500", 1), ("bokchoy", 1), ("chili-150", 2)]
        true_bokchoy = truth[0]["lines"][1]
        assert true_bokchoy["sku"] == "bokchoy"
        bokchoy = rec["lines"][1]
        assert bokchoy["weight_g"] <= true_bokchoy["weight_g"]
        assert true_bokchoy["weight_g"] - bokchoy["weight_g"] <= 5.0
        # the levels before are the ones saved when the door opened
        for ev in rec["evidence"]:
            assert ev["before_g"] == pytest.approx(saved.baseline[ev["lane"]], abs=0.05)
        assert rec["opened_at"] == pytest.approx(5.8)
        assert rec["unlocked_at"] == pytest.approx(5.0)
        row = store2.session(sid)
        assert row is not None and row.state == "billed" and row.recovered
        assert row.total_fen == rec["total_fen"] == sum(ln["amount_fen"] for ln in rec["lines"])
        assert store2.open_sessions() == []
        assert cabinet2.lock.locked is True
        assert_consistent(store2)
    finally:
        store2.close()


def test_power_cut_after_the_door_closed_keeps_the_close_time(tmp_path: Path) -> None:
    """The door closed at 12.0 s and the store recorded it before the power went; after
    the restart the bill must still say the door closed at 12.0 s (``mark_closed``:
    "the first close time is kept"), not when the cabinet came back."""
    db = tmp_path / "cabinet.db"
    sim = SimulatedCabinet(_scenario(PURCHASE))
    before, after = _split(sim.stream(), 12.2, 13.5)
    cabinet, store = _controller(db, sim, seed=1)
    for it in before:
        cabinet.feed(it)
    assert cabinet.session is not None
    sid = cabinet.session.session_id
    saved = store.session(sid)
    assert saved is not None and saved.state == "closed"
    assert saved.closed_at == pytest.approx(12.0)
    store.close()

    cabinet2, store2 = _controller(db, sim, seed=2)
    try:
        cabinet2.recover(door_open=False)
        for it in after:
            cabinet2.feed(it)
        (rec,) = cabinet2.out.sessions
        row = store2.session(sid)
        assert row is not None and row.state == "billed"
        assert row.closed_iso == "2026-01-01T00:00:12.000Z"
        assert (rec["closed_at"], row.closed_at) == (pytest.approx(12.0), pytest.approx(12.0))
    finally:
        store2.close()


def test_power_cut_before_the_door_opened_expires_the_unlock(tmp_path: Path) -> None:
    db = tmp_path / "cabinet.db"
    timeline = [
        {"t": 0.0, "do": "wait"},
        {"t": 5.0, "do": "unlock", "resident": "r-31"},
        {"t": 30.0, "do": "unlock", "resident": "r-32"},
        {"t": 31.0, "do": "open"},
        {"t": 32.0, "do": "take", "lane": 1, "item": 1},
        {"t": 34.0, "do": "close"},
        {"t": 40.0, "do": "wait"},
    ]
    sim = SimulatedCabinet(_scenario(timeline))
    before, after = _split(sim.stream(), 7.0, 8.0)
    cabinet, store = _controller(db, sim, seed=1)
    for it in before:
        cabinet.feed(it)
    assert cabinet.session is not None
    sid = cabinet.session.session_id
    store.close()

    cabinet2, store2 = _controller(db, sim, seed=2)
    try:
        assert cabinet2.recover(door_open=False) == 1
        for it in after:
            cabinet2.feed(it)
        assert len(cabinet2.out.sessions) == 2, cabinet2.out.sessions
        expired, bought = cabinet2.out.sessions
        assert expired["session_id"] == sid
        assert expired["flags"] == ["unlock_unused"]
        assert expired["total_fen"] == 0 and expired["lines"] == []
        assert 8.0 <= expired["billed_at"] <= 9.0  # at recovery, not 15 s later
        row = store2.session(sid)
        assert row is not None and row.state == "expired"
        # the cabinet works on: the next resident is billed
        assert lines_of(bought) == [("tomato-500", 1)] and bought["flags"] == []
        assert_consistent(store2)
    finally:
        store2.close()


# ------------------------------------------------------------------ drift and drying


def test_drift_and_drying_behind_a_shut_door_are_not_sales(tmp_path: Path) -> None:
    physics = dataclasses.replace(Physics(), drift_g_per_min=2.0, moisture_loss_pct_per_day=5.0)
    r = Rig(tmp_path / "cabinet.db", physics=physics, seed=5)
    try:
        r.until(3.0)
        r.feed(r.sim.unlock("r-40"))
        r.until(4.0)
        r.feed(r.sim.open_door())
        r.until(5.0)
        r.sim.take(1, 0)
        r.until(7.0)
        r.feed(r.sim.close_door())
        r.until(12.0)
        assert len(r.sessions) == 1
        levels_before = r.cabinet.levels()
        # half an hour with the door shut: the zero walks and the bok choy dries
        r.until(12.0 + 1800.0, step=1.0)
        assert len(r.sessions) == 1 and r.cabinet.out.events == []
        assert r.cabinet.session is None
        levels_after = r.cabinet.levels()
        moved = max(abs(levels_after[k] - levels_before[k]) for k in levels_before)
        assert moved > 1.0, (levels_before, levels_after)  # the levels really did move
        t = r.sim.now
        r.feed(r.sim.unlock("r-41"))
        r.until(t + 1.0)
        r.feed(r.sim.open_door())
        r.until(t + 2.0)
        r.sim.take(2, 0)  # bok choy, weighed
        r.until(t + 3.5)
        r.sim.take(4, 1)
        r.until(t + 5.0)
        r.feed(r.sim.close_door())
        r.until(t + 12.0)
        assert len(r.sessions) == 2
        truth = r.sim.truth_sessions()
        assert [lines_of(s) for s in r.sessions] == [
            [(ln["sku"], ln["qty"]) for ln in tr["lines"]] for tr in truth
        ]
        rec = r.sessions[1]
        assert lines_of(rec) == [("bokchoy", 1), ("chili-150", 1)]
        assert rec["flags"] == []
        true_g = truth[1]["lines"][0]["weight_g"]
        assert true_g < 350.2  # it dried a little
        assert rec["lines"][0]["weight_g"] <= true_g
        assert true_g - rec["lines"][0]["weight_g"] <= 5.0
        assert [s.state for s in r.store.sessions()] == ["billed", "billed"]
        assert_consistent(r.store)
    finally:
        r.close()

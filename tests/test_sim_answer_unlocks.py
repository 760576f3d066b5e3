"""``[hardware.sim] answer_unlocks``: a simulated resident answers a remote unlock.

The daemon's loop (samples, door switch, actors) is driven in virtual time on
the ``sim`` backend built from a configuration, with a real store; the unlock
comes from outside the shoppers, as the uplink's ``unlock`` command does it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.cabinet import Cabinet, utc_epoch
from edge.config import CabinetConfig, parse_config
from edge.hardware.registry import Hardware, create_hardware
from edge.session import SessionResult
from edge.store import CabinetStore
from firmware_mock.live import Shoppers

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "edge" / "defaults" / "cabinet.toml"
EPOCH = utc_epoch("2026-01-01T00:00:00Z")
STEP_S = 0.05


def make_config(
    db: Path, *, residents: bool, answer_unlocks: bool, stock: dict[str, list[float]] | None = None
) -> CabinetConfig:
    data: dict[str, Any] = tomllib.loads(DEFAULTS.read_text(encoding="utf-8"))
    data["cabinet"]["db"] = str(db)
    sim = data["hardware"]["sim"]
    sim["residents"] = residents
    sim["answer_unlocks"] = answer_unlocks
    sim["seed"] = 21
    if stock is not None:
        data["stock"] = stock
    return parse_config(data, source="cabinet.toml", base=db.parent)


class Loop:
    """The daemon's loop on the sim backend, in virtual time."""

    def __init__(self, config: CabinetConfig) -> None:
        self.hw: Hardware = create_hardware(config, start_t=0.0)
        self.t = 0.0
        self.store = CabinetStore(config.db_path, cabinet_id=config.cabinet_id, now=self.wall)
        self.results: list[SessionResult] = []
        self.cabinet = Cabinet(
            config.spec(),
            store=self.store,
            lock=self.hw.lock,
            epoch=EPOCH,
            weighing=config.weighing,
            sessions=config.sessions,
            on_session=self.results.append,
        )
        self.hw.lock.lock()

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)

    def run_until(self, t_end: float, *, stop_after_sessions: int | None = None) -> None:
        while self.t < t_end - 1e-9:
            self.t = round(self.t + STEP_S, 6)
            self.cabinet.samples(self.hw.source.read(self.t))
            is_open = self.hw.door.is_open
            if is_open != self.cabinet.door_open:
                self.cabinet.door(self.t, is_open)
            if self.hw.actors is not None:
                self.hw.actors(self.cabinet, self.t)
            if stop_after_sessions is not None and len(self.results) >= stop_after_sessions:
                return

    def close(self) -> None:
        try:
            self.hw.close()
        finally:
            self.store.close()


@pytest.fixture
def loops() -> Iterator[list[Loop]]:
    made: list[Loop] = []
    yield made
    for loop in made:
        loop.close()


def test_config_reads_answer_unlocks(tmp_path: Path) -> None:
    config = make_config(tmp_path / "c.db", residents=False, answer_unlocks=True)
    assert config.sim.answer_unlocks is True
    assert config.sim.residents is False
    default = dataclasses.replace(config.sim, answer_unlocks=False)
    assert make_config(tmp_path / "d.db", residents=True, answer_unlocks=False).sim == (
        dataclasses.replace(default, residents=True)
    )


def test_remote_unlock_is_answered_and_billed(tmp_path: Path, loops: list[Loop]) -> None:
    loop = Loop(make_config(tmp_path / "cab.db", residents=False, answer_unlocks=True))
    loops.append(loop)
    assert isinstance(loop.hw.actors, Shoppers)
    loop.run_until(5.0)
    assert loop.results == []  # nobody shops by themselves
    sid = loop.cabinet.unlock(loop.t, "r-42", "resident")  # what the uplink's unlock does
    assert sid is not None
    loop.run_until(40.0, stop_after_sessions=1)
    assert len(loop.results) == 1, "the remote unlock was not answered"
    result = loop.results[0]
    record = result.record
    assert result.session_id == sid
    assert record["resident"] == "r-42"
    assert record["role"] == "resident"
    assert "unlock_unused" not in record["flags"]
    assert len(record["lines"]) >= 1
    assert record["total_fen"] > 0
    opened_after = record["opened_at"] - record["unlocked_at"]
    assert 0.5 <= opened_after <= 1.5 + 2 * STEP_S, opened_after
    # the simulator's truth agrees with the bill: the resident the backend let in took these
    truth = loop.hw.actors.sim.truth_sessions()
    assert len(truth) == 1
    billed = sorted((ln["sku"], ln["qty"]) for ln in record["lines"])
    taken = sorted((ln["sku"], ln["qty"]) for ln in truth[0]["lines"])
    assert billed == taken
    assert 1 <= sum(q for _, q in taken) <= 3
    assert loop.hw.lock.locked
    with CabinetStore(tmp_path / "cab.db", cabinet_id="cab-demo-01") as store:
        assert store.check_consistency() == []


def test_each_remote_unlock_is_answered_once(tmp_path: Path, loops: list[Loop]) -> None:
    loop = Loop(make_config(tmp_path / "cab.db", residents=False, answer_unlocks=True))
    loops.append(loop)
    loop.run_until(3.0)
    for n, resident in enumerate(("r-1", "r-2"), start=1):
        assert loop.cabinet.unlock(loop.t, resident, "resident") is not None
        loop.run_until(loop.t + 40.0, stop_after_sessions=n)
        assert len(loop.results) == n
    assert [r.record["resident"] for r in loop.results] == ["r-1", "r-2"]
    assert all(r.record["lines"] for r in loop.results)
    loop.run_until(loop.t + 20.0)
    assert len(loop.results) == 2  # no visit of its own afterwards


def test_without_answer_unlocks_a_remote_unlock_expires(tmp_path: Path, loops: list[Loop]) -> None:
    loop = Loop(make_config(tmp_path / "cab.db", residents=False, answer_unlocks=False))
    loops.append(loop)
    assert loop.hw.actors is None
    loop.run_until(2.0)
    assert loop.cabinet.unlock(loop.t, "r-42", "resident") is not None
    loop.run_until(30.0, stop_after_sessions=1)
    assert [r.record["flags"] for r in loop.results] == [["unlock_unused"]]


def test_operator_restocks_a_lane_that_runs_low(tmp_path: Path, loops: list[Loop]) -> None:
    stock = {
        "1": [503.1, 497.4, 510.2, 492.0, 505.5],
        "2": [350.2, 420.0, 388.5],
        "3": [612.4],  # tracked eggs: one box left
        "4": [148.2, 153.9, 151.0, 146.7],
    }
    loop = Loop(make_config(tmp_path / "cab.db", residents=False, answer_unlocks=True, stock=stock))
    loops.append(loop)
    loop.run_until(40.0, stop_after_sessions=1)
    assert len(loop.results) == 1, "the operator did not come"
    record = loop.results[0].record
    assert record["role"] == "operator"
    assert record["total_fen"] == 0
    shoppers = loop.hw.actors
    assert isinstance(shoppers, Shoppers)
    assert len(shoppers.sim.shelf_g(3)) == 3  # par: at least 3 items
    assert len(loop.cabinet.tracked_stock[3]) == 3  # the new boxes were recorded one by one
    loop.run_until(loop.t + 15.0)
    assert len(loop.results) == 1  # nothing low any more: no second visit


def test_remote_operator_unlock_is_answered_without_a_sale(
    tmp_path: Path, loops: list[Loop]
) -> None:
    loop = Loop(make_config(tmp_path / "cab.db", residents=False, answer_unlocks=True))
    loops.append(loop)
    loop.run_until(3.0)
    before = {ln.lane: len(loop.hw.actors.sim.shelf_g(ln.lane)) for ln in loop.cabinet.lanes}
    assert loop.cabinet.unlock(loop.t, "op-7", "operator") is not None  # the restock command
    loop.run_until(40.0, stop_after_sessions=1)
    assert len(loop.results) == 1
    record = loop.results[0].record
    assert (record["resident"], record["role"], record["total_fen"]) == ("op-7", "operator", 0)
    assert record["opened_at"] is not None and "unlock_unused" not in record["flags"]
    after = {ln.lane: len(loop.hw.actors.sim.shelf_g(ln.lane)) for ln in loop.cabinet.lanes}
    assert after == before  # every lane was at par: nothing to add, nothing taken

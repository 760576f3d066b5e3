"""The ``sim`` hardware backend: a simulated cabinet in real time, with simulated shoppers.

The daemon sees the same interfaces as on a Pi: a weight source, a lock and a
door switch. Simulated residents unlock (as the backend would), open the door,
take produce and close it; an operator restocks lanes that run low. With
``answer_unlocks`` a simulated resident answers the unlocks the backend sends.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from edge.config import CabinetConfig
from edge.errors import ConfigError
from edge.hardware.interfaces import MemoryLock
from edge.hardware.registry import Hardware
from edge.model import Calibration, Lane, SampleBlock
from edge.session import Phase
from firmware_mock.scenario import Physics
from firmware_mock.simulator import SimulatedCabinet

log = logging.getLogger("freshbox.sim")


class ShiftedSource:
    """The simulator's clock starts at zero; the daemon's is Unix time."""

    def __init__(self, sim: SimulatedCabinet, start_t: float) -> None:
        self.sim = sim
        self.start_t = start_t

    @property
    def sample_rate_hz(self) -> float:
        return self.sim.sample_rate_hz

    @property
    def calibrations(self) -> tuple[Calibration, ...]:
        return self.sim.calibrations

    def read(self, until: float) -> SampleBlock:
        block = self.sim.advance(until - self.start_t)
        return SampleBlock(block.t + self.start_t, block.raw)

    def close(self) -> None:
        self.sim.close()


class SimDoor:
    """The door switch of the simulated cabinet."""

    def __init__(self, sim: SimulatedCabinet) -> None:
        self.sim = sim

    @property
    def is_open(self) -> bool:
        return self.sim.door_open


#: what a visit is: the cabinet's own shopper (``residents``), a resident answering a
#: remote unlock (``answer_unlocks``), or an operator restocking on the cabinet's own initiative
VisitKind = Literal["own", "answer", "restock"]


@dataclass(slots=True)
class _Visit:
    resident: str
    role: str
    kind: VisitKind = "own"
    steps: list[tuple[float, str, Any]] = field(default_factory=list)


class Shoppers:
    """Simulated residents (and a restocking operator) acting on the cabinet.

    With ``residents`` the cabinet's own shoppers unlock it now and then (as the
    backend would), and an operator restocks lanes that run low. With
    ``answer_unlocks`` a simulated resident answers every unlock that somebody
    else made (a remote unlock command: the lock is released and a session is
    waiting, but no visit of these shoppers runs): 0.5-1.5 s later they open the
    door, take 1-3 items from stocked lanes and close it, so the cabinet bills a
    sale. An operator session unlocked remotely is answered by restocking. When
    ``answer_unlocks`` is on without ``residents``, an operator also restocks on
    the cabinet's own initiative whenever a lane holds fewer than 2 items and no
    session runs.
    """

    #: a lane below this many items is restocked
    LOW_ITEMS: Final = 2
    #: seconds the cabinet stays idle after a visit before the operator may come
    RESTOCK_PAUSE_S: Final = 3.0
    #: seconds between two tracked items placed by the answering or restocking operator
    TRACKED_GAP_S: Final = 3.0

    def __init__(
        self,
        sim: SimulatedCabinet,
        lanes: tuple[Lane, ...],
        lock: MemoryLock,
        *,
        start_t: float,
        mean_gap_s: float,
        seed: int,
        par: dict[int, int],
        residents: bool = True,
        answer_unlocks: bool = False,
    ) -> None:
        self.sim = sim
        self.lanes = lanes
        self.lock = lock
        self.start_t = start_t
        self.mean_gap_s = mean_gap_s
        self.rng = random.Random(seed)
        # answers draw from their own generator: the residents' sequence stays as it was
        self.answer_rng = random.Random(f"{seed}:answer")
        self.par = par
        self.residents = residents
        self.answer_unlocks = answer_unlocks
        self.next_at = start_t + 3.0
        self.restock_after = start_t + 3.0
        self.visit: _Visit | None = None
        self.visits = 0
        self.answered = 0
        self._answered_session: str | None = None

    @classmethod
    def for_config(
        cls, sim: SimulatedCabinet, config: CabinetConfig, lock: MemoryLock, *, start_t: float
    ) -> Shoppers:
        """The shoppers ``[hardware.sim]`` describes; an operator restocks each lane up to
        what it held at start (at least 3 items)."""
        par = {ln.lane: max(3, len(config.stock.get(ln.lane, []))) for ln in config.lanes}
        return cls(
            sim,
            config.lanes,
            lock,
            start_t=start_t,
            mean_gap_s=config.sim.mean_gap_s,
            seed=config.sim.seed,
            par=par,
            residents=config.sim.residents,
            answer_unlocks=config.sim.answer_unlocks,
        )

    def __call__(self, cabinet: Any, now: float) -> None:
        if self.visit is None:
            if self.answer_unlocks and self._unlocked_by_someone_else(cabinet):
                self._answer(cabinet, now)
                return
            idle = cabinet.session is None and not self.sim.door_open
            if self.residents:
                if now >= self.next_at and idle:
                    self._start(cabinet, now)
            elif self.answer_unlocks and idle and now >= self.restock_after and self._low():
                self._restock(cabinet, now)
            return
        while self.visit is not None and self.visit.steps and self.visit.steps[0][0] <= now:
            _, what, arg = self.visit.steps.pop(0)
            self._do(what, arg)
        if self.visit is not None and not self.visit.steps and cabinet.session is None:
            kind = self.visit.kind
            self.visit = None
            self.restock_after = now + self.RESTOCK_PAUSE_S
            if kind == "own":
                self.next_at = now + self.rng.expovariate(1.0 / self.mean_gap_s)

    # -- the cabinet's own shoppers (residents = true) ---------------------------------
    def _start(self, cabinet: Any, now: float) -> None:
        self.visits += 1
        low = self._low()
        if low:
            visit = self._restock_visit(now, low, self.rng)
        else:
            visit = _Visit(resident=f"r-{self.rng.randint(1, 60)}", role="resident")
            t = now + self.rng.uniform(0.5, 2.5)
            if self.rng.random() < 0.05:
                visit.steps.append((t, "walk_away", None))  # an unlock nobody uses
            else:
                visit.steps.append((t, "open", None))
                for _ in range(self.rng.randint(1, 3)):
                    t += self.rng.uniform(1.0, 2.5)
                    visit.steps.append((t, "take", None))
                visit.steps.append((t + self.rng.uniform(1.0, 2.0), "close", None))
        sid = cabinet.unlock(now, visit.resident, visit.role)
        if sid is None:
            self.next_at = now + 5.0
            return
        self.sim.unlock(visit.resident, "operator" if visit.role == "operator" else "resident")
        self.visit = visit

    # -- answering remote unlocks (answer_unlocks = true) ------------------------------
    def _unlocked_by_someone_else(self, cabinet: Any) -> bool:
        """A session waits for its door, the lock is released, and no visit of ours runs."""
        session = cabinet.session
        return (
            session is not None
            and session.phase is Phase.UNLOCKED
            and session.session_id != self._answered_session
            and not self.lock.locked
            and not self.sim.door_open
        )

    def _answer(self, cabinet: Any, now: float) -> None:
        session = cabinet.session
        self._answered_session = session.session_id
        self.answered += 1
        rng = self.answer_rng
        role: Literal["resident", "operator"] = (
            "operator" if session.role == "operator" else "resident"
        )
        t = now + rng.uniform(0.5, 1.5)
        low = [ln for ln in self.lanes if len(self.sim.shelf_g(ln.lane)) < self.par.get(ln.lane, 4)]
        if role == "operator" and low:
            visit = self._restock_visit(t - 1.0, low, rng, tracked_gap_s=self.TRACKED_GAP_S)
            visit.kind = "answer"
        else:
            visit = _Visit(resident=session.resident, role=role, kind="answer")
            visit.steps.append((t, "open", None))
            for _ in range(rng.randint(1, 3) if role == "resident" else 0):
                t += rng.uniform(1.0, 2.5)
                visit.steps.append((t, "take", None))
            visit.steps.append((t + rng.uniform(1.0, 2.0), "close", None))
        visit.resident = session.resident
        self.sim.unlock(session.resident, role)  # the truth: who the backend let in
        self.visit = visit
        log.info("simulated %s answers the remote unlock for %s", role, session.resident)

    def _restock(self, cabinet: Any, now: float) -> None:
        """The operator's own restocking visit (answer_unlocks without residents)."""
        visit = self._restock_visit(
            now, self._low(), self.answer_rng, tracked_gap_s=self.TRACKED_GAP_S
        )
        visit.kind = "restock"
        if cabinet.unlock(now, visit.resident, visit.role) is None:
            self.restock_after = now + 5.0
            return
        self.sim.unlock(visit.resident, "operator")
        self.visit = visit
        log.info("operator restocks lanes %s", [ln.lane for ln in self._low()])

    # -- shared ---------------------------------------------------------------------
    def _low(self) -> list[Lane]:
        return [ln for ln in self.lanes if len(self.sim.shelf_g(ln.lane)) < self.LOW_ITEMS]

    def _restock_visit(
        self, now: float, low: list[Lane], rng: random.Random, *, tracked_gap_s: float = 1.2
    ) -> _Visit:
        """An operator fills ``low`` lanes up to their par level, one item every 1.2 s
        (``tracked_gap_s`` on tracked lanes, whose items are recorded one by one from the
        plateaus: each must settle before the next)."""
        visit = _Visit(resident="op-1", role="operator")
        t = now + 1.0
        visit.steps.append((t, "open", None))
        for ln in low:
            for _ in range(self.par.get(ln.lane, 4) - len(self.sim.shelf_g(ln.lane))):
                t += tracked_gap_s if ln.mode == "tracked" else 1.2
                visit.steps.append((t, "place", (ln.lane, self._new_item(ln, rng))))
        visit.steps.append((t + 1.5, "close", None))
        return visit

    def _new_item(self, lane: Lane, rng: random.Random) -> float:
        if lane.mode == "unit":
            return float(
                np.random.default_rng(rng.getrandbits(32)).normal(
                    lane.unit_weight_g or 100.0, lane.unit_weight_sd_g or 1.0
                )
            )
        if lane.mode == "tracked":
            return round(rng.uniform(560.0, 680.0), 1)
        return round(rng.uniform(300.0, 450.0), 1)

    def _do(self, what: str, arg: Any) -> None:
        visit = self.visit
        rng = self.rng if visit is None or visit.kind == "own" else self.answer_rng
        if what == "open":
            if self.lock.locked:  # never force the door: the unlock window ran out
                self.visit = None
                return
            self.sim.open_door()
        elif what == "close":
            self.sim.close_door()
        elif what == "take":
            stocked = [ln for ln in self.lanes if self.sim.shelf_g(ln.lane)]
            if stocked:
                lane = rng.choice(stocked)
                index = rng.randrange(len(self.sim.shelf_g(lane.lane)))
                taken = self.sim.take(lane.lane, index)
                log.info("shopper takes %s from lane %d (%.1f g)", lane.sku, lane.lane, taken[0])
        elif what == "place":
            lane_no, weight = arg
            self.sim.place(lane_no, weight)
        elif what == "walk_away":
            pass


def sim_physics(config: CabinetConfig) -> Physics:
    """``[hardware.sim.physics]`` over the defaults, at the cabinet's sample rate."""
    known = set(Physics.__dataclass_fields__)
    unknown = sorted(set(config.sim.physics) - known)
    if unknown:
        raise ConfigError(f"{config.source}: hardware.sim.physics.{unknown[0]}: unknown key")
    overrides = {k: v for k, v in config.sim.physics.items() if k != "sample_rate_hz"}
    return dataclasses.replace(Physics(), **overrides, sample_rate_hz=config.sample_rate_hz)


def build_sim(config: CabinetConfig) -> SimulatedCabinet:
    """A live simulated cabinet of ``config``: lanes, stock, calibrations, [hardware.sim]."""
    return SimulatedCabinet.live(
        config.lanes,
        config.stock,
        sim_physics(config),
        seed=config.sim.seed,
        cabinet_id=config.cabinet_id,
        calibrations=config.calibrations,
    )


def create_hardware(config: CabinetConfig, *, start_t: float = 0.0) -> Hardware:
    """The ``sim`` backend for the daemon (see ``edge.hardware.registry``)."""
    sim = build_sim(config)
    lock = MemoryLock()
    wanted = config.sim.residents or config.sim.answer_unlocks
    actors = Shoppers.for_config(sim, config, lock, start_t=start_t) if wanted else None
    return Hardware(
        source=ShiftedSource(sim, start_t),
        lock=lock,
        door=SimDoor(sim),
        actors=actors,
        temperature=SimThermometer(sim, seed=config.sim.seed),
    )


class SimThermometer:
    """The chilled cabinet's air: 4 °C give or take, warmer while the door is open."""

    def __init__(self, sim: SimulatedCabinet, *, seed: int) -> None:
        self.sim = sim
        self.rng = random.Random(seed + 0x7E)
        self.c = 4.0

    def __call__(self) -> float:
        target = 9.0 if self.sim.door_open else 4.0
        self.c += 0.3 * (target - self.c) + self.rng.gauss(0.0, 0.1)
        return self.c

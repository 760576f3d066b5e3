"""The ``sim`` hardware backend: a simulated cabinet in real time, with simulated shoppers.

The daemon sees the same interfaces as on a Pi: a weight source, a lock and a
door switch. Simulated residents unlock (as the backend would), open the door,
take produce and close it; an operator restocks lanes that run low.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.config import CabinetConfig
from edge.errors import ConfigError
from edge.hardware.interfaces import MemoryLock
from edge.hardware.registry import Hardware
from edge.model import Calibration, Lane, SampleBlock
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


@dataclass(slots=True)
class _Visit:
    resident: str
    role: str
    steps: list[tuple[float, str, Any]] = field(default_factory=list)


class Shoppers:
    """Simulated residents (and a restocking operator) acting on the cabinet."""

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
    ) -> None:
        self.sim = sim
        self.lanes = lanes
        self.lock = lock
        self.start_t = start_t
        self.mean_gap_s = mean_gap_s
        self.rng = random.Random(seed)
        self.par = par
        self.next_at = start_t + 3.0
        self.visit: _Visit | None = None
        self.visits = 0

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
        )

    def __call__(self, cabinet: Any, now: float) -> None:
        if self.visit is None:
            if now >= self.next_at and cabinet.session is None and not self.sim.door_open:
                self._start(cabinet, now)
            return
        while self.visit is not None and self.visit.steps and self.visit.steps[0][0] <= now:
            _, what, arg = self.visit.steps.pop(0)
            self._do(what, arg)
        if self.visit is not None and not self.visit.steps and cabinet.session is None:
            self.visit = None
            self.next_at = now + self.rng.expovariate(1.0 / self.mean_gap_s)

    def _start(self, cabinet: Any, now: float) -> None:
        self.visits += 1
        low = [ln for ln in self.lanes if len(self.sim.shelf_g(ln.lane)) < 2]
        if low:
            visit = _Visit(resident="op-1", role="operator")
            t = now + 1.0
            visit.steps.append((t, "open", None))
            for ln in low:
                for _ in range(self.par.get(ln.lane, 4) - len(self.sim.shelf_g(ln.lane))):
                    t += 1.2
                    visit.steps.append((t, "place", (ln.lane, self._new_item(ln))))
            visit.steps.append((t + 1.5, "close", None))
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

    def _new_item(self, lane: Lane) -> float:
        if lane.mode == "unit":
            return float(
                np.random.default_rng(self.rng.getrandbits(32)).normal(
                    lane.unit_weight_g or 100.0, lane.unit_weight_sd_g or 1.0
                )
            )
        if lane.mode == "tracked":
            return round(self.rng.uniform(560.0, 680.0), 1)
        return round(self.rng.uniform(300.0, 450.0), 1)

    def _do(self, what: str, arg: Any) -> None:
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
                lane = self.rng.choice(stocked)
                index = self.rng.randrange(len(self.sim.shelf_g(lane.lane)))
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
    actors = (
        Shoppers.for_config(sim, config, lock, start_t=start_t) if config.sim.residents else None
    )
    return Hardware(source=ShiftedSource(sim, start_t), lock=lock, door=SimDoor(sim), actors=actors)

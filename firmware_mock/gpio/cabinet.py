"""A simulated cabinet wired to an emulated GPIO header, from a cabinet configuration.

One HX711 per ``[[channels]]`` entry on the configured pins, loaded by the
simulator's shelf physics (lanes, stock, calibrations and ``[hardware.sim]``
physics and seed of the configuration); the lock relay and the door reed switch
on their pins, the reed switch following the simulated door; and the simulated
shoppers of the ``sim`` backend, who open the door only when the relay really
released the lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from edge.hardware.interfaces import MemoryLock
from firmware_mock.gpio.board import HIGH, LOW, Board, Clock, LockRelay, ReedSwitch
from firmware_mock.gpio.hx711chip import Fault, Hx711Chip
from firmware_mock.gpio.load import LockedSim, ShelfLoad
from firmware_mock.simulator import SimulatedCabinet

if TYPE_CHECKING:
    from edge.config import CabinetConfig
    from edge.hardware.doorlock import DoorConfig, LockConfig
    from edge.hardware.hx711 import Hx711Config
    from firmware_mock.live import Shoppers


class RelayView:
    """What the shoppers see of the lock: the relay's real state, not the command."""

    def __init__(self, relay: LockRelay) -> None:
        self.relay = relay

    @property
    def locked(self) -> bool:
        return self.relay.locked


class ShopperActor:
    """The daemon's ``actors`` hook: brings the simulator to now, then lets the
    simulated shoppers act."""

    def __init__(self, shoppers: Shoppers, load: ShelfLoad, board: Board) -> None:
        self.shoppers = shoppers
        self.load = load
        self.board = board

    def __call__(self, cabinet: Any, now: float) -> None:
        self.load.advance_to(self.board.clock())
        self.shoppers(cabinet, now)


@dataclass(slots=True)
class EmulatedCabinet:
    board: Board
    sim: SimulatedCabinet
    load: ShelfLoad
    shared: LockedSim
    chips: list[Hx711Chip]
    relay: LockRelay
    reed: ReedSwitch

    def shoppers(self, config: CabinetConfig, *, start_t: float) -> ShopperActor:
        """The ``sim`` backend's shoppers (``firmware_mock.live.Shoppers``) on this cabinet."""
        from firmware_mock.live import Shoppers

        shoppers = Shoppers.for_config(
            cast(SimulatedCabinet, self.shared),
            config,
            cast(MemoryLock, RelayView(self.relay)),
            start_t=start_t,
        )
        return ShopperActor(shoppers, self.load, self.board)


def build_emulated_cabinet(
    config: CabinetConfig,
    hx: Hx711Config,
    lock: LockConfig,
    door: DoorConfig,
    *,
    clock: Clock = time.monotonic,
) -> EmulatedCabinet:
    """The emulated board of ``config`` (pins from the validated ``[hardware.*]`` tables)."""
    from firmware_mock.live import build_sim

    sim = build_sim(config)
    board = Board(clock)
    load = ShelfLoad(sim, board.t0)
    shared = LockedSim(sim, load.mutex)
    chips = [
        board.add_hx711(
            dout,
            sck,
            load.channel(i),
            rate_hz=config.sample_rate_hz,
            rate_pin=hx.rate_pin,
            origin=load.t0,
            name=f"channel {cal.channel}",
        )
        for i, (cal, dout, sck) in enumerate(
            zip(config.calibrations, hx.dout_pins, hx.pd_sck_pins, strict=True)
        )
    ]
    column = {cal.channel: i for i, cal in enumerate(config.calibrations)}
    for fault in hx.emulation.faults:
        chips[column[fault.channel]].set_fault(
            cast(Fault, fault.kind), at=board.t0 + fault.at_s, counts=fault.counts
        )
    relay = board.add_lock_relay(lock.pin, active_low=lock.active_low, fail_safe=lock.fail_safe)
    reed = board.add_reed_switch(
        door.pin,
        lambda: bool(shared.door_open),
        open_level=HIGH if door.open_level == "high" else LOW,
        bounce_s=hx.emulation.bounce_ms / 1000.0,
        seed=config.sim.seed,
    )
    return EmulatedCabinet(board, sim, load, shared, chips, relay, reed)

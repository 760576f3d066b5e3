"""An emulated Raspberry Pi GPIO header: pins, and the devices wired to them.

The ``Board`` holds the state of every pin (direction, pull, driven level) and the
devices on the other end of the wires: HX711 chips (``Hx711Chip``), a lock relay
(``LockRelay``) and a door reed switch (``ReedSwitch``). ``firmware_mock.gpio.rpi``
puts the ``RPi.GPIO`` API in front of it.

Time comes from an injected clock (``Clock``): ``time.monotonic`` for a daemon, a
``ManualClock`` in tests, so pulse widths and settling times are measured on it.
Pins are BCM numbers. Every access holds the lock of the pin's wire group, so
several driver threads may share the board (and several chips one PD_SCK pin).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware_mock.gpio.hx711chip import Hx711Chip, Load

Clock = Callable[[], float]

# RPi.GPIO's constants (the values of RPi.GPIO 0.7)
OUT, IN = 0, 1
LOW, HIGH = 0, 1
BOARD, BCM = 10, 11
PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22
RISING, FALLING, BOTH = 31, 32, 33

#: Physical pin of the 40-pin header -> BCM GPIO number.
BOARD_TO_BCM: dict[int, int] = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24,
    19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip
#: BCM GPIOs of the header.
HEADER_GPIOS = frozenset(range(28))


class ManualClock:
    """A virtual clock for tests: time moves only when told to."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError("time does not go backwards")
        self.t += dt
        return self.t


@dataclass(slots=True)
class Pin:
    """One GPIO as the host configured it."""

    gpio: int
    direction: int | None = None  # IN, OUT, or None (not set up)
    pull: int = PUD_OFF
    level: int = LOW  # the output latch


class LockRelay:
    """A relay module on an output pin, switching the lock.

    ``active_low``: the relay is energised when the pin is LOW (most opto-isolated
    modules). A pin that is not driven (input, cleaned up, process gone) leaves the
    relay off. ``fail_safe``: the lock is locked while energised (a maglock);
    otherwise locked while off (fail-secure strike, the default).
    """

    def __init__(self, board: Board, pin: int, *, active_low: bool, fail_safe: bool) -> None:
        self.board = board
        self.pin = pin
        self.active_low = active_low
        self.fail_safe = fail_safe
        #: (board time, energised) at every change of the relay
        self.history: list[tuple[float, bool]] = []
        self._last: bool | None = None

    @property
    def energised(self) -> bool:
        with self.board.lock_of(self.pin):
            p = self.board.pin_state(self.pin)
            if p.direction != OUT:
                return False
            return p.level == (LOW if self.active_low else HIGH)

    @property
    def locked(self) -> bool:
        """The state of the lock itself."""
        return self.energised == self.fail_safe

    def changed(self, now: float) -> None:
        e = self.energised
        if e != self._last:
            self._last = e
            self.history.append((now, e))


class ReedSwitch:
    """A door reed switch on an input pin, driven by ``is_open``.

    The pin reads ``open_level`` while the door is open. Each change bounces for
    ``bounce_s``: the level toggles at random instants 0.1-1 ms apart before it
    settles (seeded, so runs repeat).
    """

    def __init__(
        self,
        is_open: Callable[[], bool],
        *,
        open_level: int = HIGH,
        bounce_s: float = 0.004,
        seed: int = 0,
    ) -> None:
        self.is_open = is_open
        self.open_level = open_level
        self.bounce_s = bounce_s
        self._rng = random.Random(seed)
        self._target: int | None = None
        self._changed_at = -math.inf
        self._toggles: list[float] = []  # offsets (s) after the change where the level flips
        self.changes = 0

    def level(self, now: float) -> int:
        target = self.open_level if self.is_open() else 1 - self.open_level
        if self._target is None:
            self._target = target
        elif target != self._target:
            self._target = target
            self._changed_at = now
            self.changes += 1
            self._toggles = []
            t = 0.0
            while True:
                t += self._rng.uniform(0.0001, 0.001)
                if t >= self.bounce_s:
                    break
                self._toggles.append(t)
            if len(self._toggles) % 2:  # the last flip lands on the new level
                self._toggles.pop()
        dt = now - self._changed_at
        if dt >= self.bounce_s:
            return target
        flips = sum(1 for x in self._toggles if x <= dt)
        # starts on the new level, each flip alternates
        return target if flips % 2 == 0 else 1 - target


class Board:
    """The pins of one emulated Raspberry Pi and the devices wired to them.

    Locking follows the wires, not the board: each pin has a lock, and the pins of
    one HX711 (DOUT and PD_SCK, and every chip sharing that PD_SCK) share one. So
    driver threads of different chips never wait for each other, as with RPi.GPIO,
    whose calls are independent register accesses; a thread waiting on a shared
    lock would hand the GIL to another one and stretch its own clock pulse.
    ``mutex`` guards the configuration (numbering mode, wiring).
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.mutex = threading.RLock()
        self.mode: int | None = None  # BCM or BOARD once set
        self.warnings = True
        self._pins: dict[int, Pin] = {g: Pin(g) for g in HEADER_GPIOS}
        self._locks: dict[int, threading.RLock] = {g: threading.RLock() for g in HEADER_GPIOS}
        self.chips: list[Hx711Chip] = []
        self._sck: dict[int, list[Hx711Chip]] = {}
        self._driven: dict[int, Callable[[float], int]] = {}  # device outputs -> host inputs
        self.relays: dict[int, LockRelay] = {}
        self.reeds: dict[int, ReedSwitch] = {}

    # ------------------------------------------------------------ wiring

    def _claim(self, pin: int, what: str) -> None:
        if pin not in HEADER_GPIOS:
            raise ValueError(f"{what}: GPIO {pin} is not on the 40-pin header (0-27)")
        if pin in self._driven or pin in self.relays or pin in self._sck:
            raise ValueError(f"{what}: GPIO {pin} is already wired to another device")

    def add_hx711(
        self,
        dout: int,
        pd_sck: int,
        load: Load,
        *,
        rate_hz: float = 80.0,
        rate_pin: int | None = None,
        origin: float | None = None,
        channel_b_counts: int = 4096,
        name: str = "",
    ) -> Hx711Chip:
        """Wire an HX711: DOUT to ``dout``, PD_SCK to ``pd_sck`` (may be shared by
        several chips), its RATE pin to ``rate_pin`` (sampled at power-up) or tied to
        ``rate_hz``. ``load``: raw counts (channel A, gain 128) at a board time."""
        with self.mutex:
            self._claim(dout, "DOUT")
            if pd_sck not in self._sck:
                self._claim(pd_sck, "PD_SCK")
            if rate_pin is not None and (rate_pin in self._driven or rate_pin in self._sck):
                raise ValueError(f"RATE: GPIO {rate_pin} is already wired to another device")
            chip = Hx711Chip(
                self,
                dout,
                pd_sck,
                load,
                rate_hz=rate_hz,
                rate_pin=rate_pin,
                origin=origin,
                channel_b_counts=channel_b_counts,
                name=name,
            )
            self.chips.append(chip)
            self._sck.setdefault(pd_sck, []).append(chip)
            self._driven[dout] = chip.dout_level
            self._locks[dout] = self._locks[pd_sck]  # one wire group
            return chip

    def add_lock_relay(
        self, pin: int, *, active_low: bool = False, fail_safe: bool = False
    ) -> LockRelay:
        """Wire the lock relay to output ``pin``."""
        with self.mutex:
            self._claim(pin, "lock relay")
            relay = LockRelay(self, pin, active_low=active_low, fail_safe=fail_safe)
            self.relays[pin] = relay
            relay.changed(self.clock())
            return relay

    def add_reed_switch(
        self,
        pin: int,
        is_open: Callable[[], bool],
        *,
        open_level: int = HIGH,
        bounce_s: float = 0.004,
        seed: int = 0,
    ) -> ReedSwitch:
        """Wire the door switch to input ``pin``."""
        with self.mutex:
            self._claim(pin, "reed switch")
            reed = ReedSwitch(is_open, open_level=open_level, bounce_s=bounce_s, seed=seed)
            self.reeds[pin] = reed
            self._driven[pin] = reed.level
            return reed

    def chip_on(self, dout: int) -> Hx711Chip:
        """The chip whose DOUT is ``dout``."""
        for chip in self.chips:
            if chip.dout == dout:
                return chip
        raise KeyError(dout)

    # ------------------------------------------------------------ the wires

    def lock_of(self, gpio: int) -> threading.RLock:
        """The lock of ``gpio``'s wire group."""
        return self._locks[gpio]

    def pin_state(self, gpio: int) -> Pin:
        """The host's configuration of ``gpio``."""
        return self._pins[gpio]

    def wire_level(self, gpio: int) -> int:
        """The level on the wire of ``gpio`` now: a device's output, else the host's, else
        the pull (an undriven, unpulled pin reads LOW)."""
        with self._locks[gpio]:
            device = self._driven.get(gpio)
            if device is not None:
                return device(self.clock())
            p = self._pins[gpio]
            if p.direction == OUT:
                return p.level
            return HIGH if p.pull == PUD_UP else LOW

    # ------------------------------------------------------------ host side

    def setup(
        self, gpio: int, direction: int, pull: int, initial: int | None, at: float | None = None
    ) -> float:
        """Configure ``gpio``; returns seconds the host should wait (see ``write``)."""
        at = self.clock() if at is None else at
        with self._locks[gpio]:
            p = self._pins[gpio]
            p.direction = direction
            p.pull = pull if direction == IN else PUD_OFF
            if direction == OUT and initial is not None:
                p.level = HIGH if initial else LOW
            return self._changed(p, at)

    def write(self, gpio: int, level: int, at: float | None = None) -> float:
        """Drive output ``gpio``, called by the host at time ``at`` (default now); returns
        seconds the host should stay in the call (an injected delay, which the caller
        spends after the lock is released)."""
        at = self.clock() if at is None else at
        with self._locks[gpio]:
            p = self._pins[gpio]
            if p.direction != OUT:
                raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
            p.level = HIGH if level else LOW
            return self._changed(p, at)

    def read(self, gpio: int) -> int:
        """The level the host reads on ``gpio`` (set up as input or output)."""
        with self._locks[gpio]:
            if self._pins[gpio].direction is None:
                raise RuntimeError("You must setup() the GPIO channel first")
            return self.wire_level(gpio)

    def cleanup(self, gpio: int) -> None:
        """Return ``gpio`` to an unconfigured input (RPi.GPIO's cleanup)."""
        with self._locks[gpio]:
            p = self._pins[gpio]
            p.direction = None
            p.pull = PUD_OFF
            self._changed(p, self.clock())

    def configured(self) -> list[int]:
        return [g for g, p in self._pins.items() if p.direction is not None]

    def _changed(self, p: Pin, at: float) -> float:
        """Propagate the host's pin ``p`` to the devices on its wire; returns the delay the
        devices inject.

        A clock pulse counts from the moment the driver called to raise PD_SCK (``at``)
        to the moment the emulation lowered it (now, at the end of the lowering call):
        that encloses what the driver can measure around its two calls less its own
        timer reads, so whenever the ``hx711`` driver finds a pulse too long (>= 60 µs)
        the chip has powered down too, as it would on real pins."""
        delay = 0.0
        chips = self._sck.get(p.gpio)
        if chips:
            # an undriven clock line reads as its pull (LOW without one)
            level = p.level if p.direction == OUT else (HIGH if p.pull == PUD_UP else LOW)
            t = at if level else self.clock()
            for chip in chips:
                delay = max(delay, chip.sck_edge(level, t))
        relay = self.relays.get(p.gpio)
        if relay is not None:
            relay.changed(at)
        return delay

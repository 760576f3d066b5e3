"""One HX711 24-bit load-cell ADC at pin level, as its datasheet describes it.

* DOUT goes LOW when a conversion is ready (10 or 80 per second, the RATE pin);
  it stays HIGH while the chip converts, settles or is powered down.
* Each rising edge of PD_SCK shifts out the next bit of the conversion, 24-bit
  two's complement, MSB first (the host reads DOUT after the edge).
* After the 24 data bits, the total number of pulses chooses the input and gain
  of the NEXT conversion: 25 = channel A gain 128, 26 = channel B gain 32,
  27 = channel A gain 64. The 25th pulse pulls DOUT back HIGH.
* A readout the host leaves unfinished waits for more PD_SCK pulses, however long
  (the serial interface is driven by the clock alone); only a power-down resets it.
* PD_SCK held HIGH for more than 60 µs powers the chip down (DOUT HIGH, no
  conversions). When PD_SCK returns LOW the chip resets: channel A gain 128,
  and the first conversion comes after the output settling time (400 ms at
  10 SPS, 50 ms at 80 SPS).

The chip is evaluated lazily at the time the host touches one of its pins, on
the board's clock, so pulse widths are real measured durations (or virtual ones
with a manual clock). Conversions complete at ``origin + j / rate`` (``j >= 0``);
the value of a conversion is the load at that instant (raw counts of channel A
at gain 128, from a ``load`` callable: None means that conversion did not happen,
and the one before it, if unread, stays ready). The datasheet leaves two things
open, decided here: a conversion that completes during a readout is lost (DOUT
goes LOW at the next one), and a pulse while DOUT is HIGH after the 24 bits counts
as the 25th-27th (a pulse while it is LOW starts the next readout).

Faults (``set_fault``): ``"dead"``, the chip stops answering (DOUT stuck HIGH);
``"saturated"``, every conversion reads 0x7FFFFF; ``"stuck"``, every conversion
reads the same value.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from firmware_mock.gpio.board import Board

#: PD_SCK held HIGH longer than this powers the chip down (s).
POWER_DOWN_S = 60e-6
#: Output settling time after power-up or reset, by data rate (s).
SETTLE_S = {10.0: 0.400, 80.0: 0.050}
#: Signed 24-bit range.
CODE_MIN, CODE_MAX = -0x800000, 0x7FFFFF

Fault = Literal["dead", "saturated", "stuck"]
FAULTS: tuple[Fault, ...] = ("dead", "saturated", "stuck")

#: A conversion's input: the load in raw counts (channel A, gain 128) at a board time,
#: or None for no conversion.
Load = Callable[[float], int | None]


@dataclass(frozen=True, slots=True)
class Setting:
    """An input channel and gain of the HX711."""

    channel: Literal["A", "B"]
    gain: int
    pulses: int  # PD_SCK pulses per readout that select it


A128 = Setting("A", 128, 25)
B32 = Setting("B", 32, 26)
A64 = Setting("A", 64, 27)
BY_PULSES = {25: A128, 26: B32, 27: A64}


def to_code(counts: int) -> int:
    """Signed counts to the 24-bit two's complement word the chip shifts out (clipped)."""
    return max(CODE_MIN, min(CODE_MAX, counts)) & 0xFFFFFF


def from_code(code: int) -> int:
    """The signed value of a 24-bit two's complement word."""
    return code - 0x1000000 if code & 0x800000 else code


class Hx711Chip:
    """An HX711 wired to ``dout`` and ``pd_sck`` (BCM numbers) of a ``Board``.

    Every method is called with the lock of the chip's wires held (``Board.lock_of``).
    """

    def __init__(
        self,
        board: Board,
        dout: int,
        pd_sck: int,
        load: Load,
        *,
        rate_hz: float = 80.0,
        rate_pin: int | None = None,
        origin: float | None = None,
        channel_b_counts: int = 4096,
        name: str = "",
    ) -> None:
        if rate_hz not in SETTLE_S:
            raise ValueError(f"the HX711 converts at 10 or 80 samples per second, not {rate_hz}")
        self.board = board
        self.dout = dout
        self.pd_sck = pd_sck
        self.load = load
        self.rate_pin = rate_pin
        self.channel_b_counts = channel_b_counts
        self.name = name or f"hx711@{dout}"
        self.rate_hz = rate_hz
        self.period = 1.0 / rate_hz
        #: conversion j completes at origin + j * period; j >= 0 are settled
        self.origin = board.t0 if origin is None else origin
        self._powered = True
        self.setting = A128
        self._pending: Setting | None = None
        self._bits = 0  # rising edges in the current readout (0: idle)
        self._code = 0
        self._latched_j = -1
        self._value_key: tuple[int, Setting] | None = None  # (conversion, setting) cached
        self._value: int | None = None
        self._sck_high = False
        self._sck_high_since = 0.0
        self._last_edge = -math.inf  # time of the last rising edge that the chip counted
        # faults
        self.fault: Fault | None = None
        self.fault_at = math.inf
        self.stuck_counts: int | None = None
        self._fault_after_reads: int | None = None
        #: extra seconds each rising edge after the 24th takes (a preempted driver)
        self.extra_pulse_delay_s = 0.0
        # what happened, for tests and measurements
        self.reads = 0  # conversions shifted out (24 bits or not)
        self.power_downs = 0
        self.power_ups = 0
        self.last_cycle_pulses = 0
        self.last_counts: int | None = None
        #: (completion time, signed value, setting) of every conversion latched for readout
        self.delivered: deque[tuple[float, int, Setting]] = deque(maxlen=100_000)

    @property
    def powered(self) -> bool:
        """Whether the chip is powered now (PD_SCK not held high for more than 60 µs)."""
        with self.board.lock_of(self.dout):
            self._check_power(self.board.clock())
            return self._powered

    # ------------------------------------------------------------ faults

    def set_fault(
        self,
        kind: Fault | None,
        *,
        at: float | None = None,
        after_reads: int | None = None,
        counts: int | None = None,
    ) -> None:
        """Inject a fault from board time ``at`` (default now), or from the end (25th
        pulse) of the ``after_reads``-th readout from now; None clears it. ``counts``:
        the value of a stuck chip (default: the last value it gave)."""
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        with self.board.lock_of(self.dout):
            self.fault = kind
            self.stuck_counts = counts
            self._fault_after_reads = None
            if kind is None:
                self.fault_at = math.inf
            elif after_reads is not None:
                self.fault_at = math.inf
                self._fault_after_reads = self.reads + after_reads
            else:
                self.fault_at = self.board.clock() if at is None else at
            self._value_key = None

    def _fault_now(self, t: float) -> Fault | None:
        return self.fault if self.fault is not None and t >= self.fault_at else None

    # ------------------------------------------------------------ pins

    def dout_level(self, now: float) -> int:
        """What the chip drives on DOUT now."""
        self._check_power(now)
        if not self._powered:
            return 1
        if 1 <= self._bits <= 24:
            return (self._code >> (24 - self._bits)) & 1
        # idle or after the 25th pulse: LOW once a new conversion is ready
        return 0 if self._ready(now) is not None else 1

    def sck_edge(self, level: int, now: float) -> float:
        """The host drove PD_SCK to ``level``; returns extra seconds the edge takes."""
        if level and not self._sck_high:
            self._sck_high = True
            self._sck_high_since = now
            return self._rising(now) if self._powered else 0.0
        if not level and self._sck_high:
            self._check_power(now)
            self._sck_high = False
            if not self._powered:
                self._power_up(now)
        return 0.0

    # ------------------------------------------------------------ internals

    def _check_power(self, now: float) -> None:
        if self._powered and self._sck_high and now - self._sck_high_since > POWER_DOWN_S:
            self._powered = False
            self.power_downs += 1
            self._bits = 0
            self._pending = None

    def _power_up(self, now: float) -> None:
        self._powered = True
        self.power_ups += 1
        if self.rate_pin is not None:
            self.rate_hz = 80.0 if self.board.wire_level(self.rate_pin) else 10.0
            self.period = 1.0 / self.rate_hz
        self.setting = A128
        self._pending = None
        self._bits = 0
        self._latched_j = -1
        self._value_key = None
        self._last_edge = now
        self.origin = now + SETTLE_S[self.rate_hz]

    def _ready(self, now: float) -> int | None:
        """The conversion ready for readout now (its index), if any: the newest one that
        completed after the last readout and has a value (a conversion whose load is None
        did not happen, and leaves the one before it ready)."""
        if now < self.origin:
            return None
        newest = math.floor((now - self.origin) / self.period + 1e-9)
        for j in range(newest, max(self._latched_j, newest - 4), -1):
            t_j = self.origin + j * self.period
            if t_j <= self._last_edge:  # completed during the last readout: DOUT went HIGH after
                return None
            if self._fault_now(t_j) == "dead":
                return None
            setting = self.next_setting
            if self._value_key != (j, setting):
                self._value_key = (j, setting)
                self._value = self._convert(t_j, setting)
            if self._value is not None:
                return j
        return None

    def _convert(self, t: float, setting: Setting) -> int | None:
        """The signed value of a conversion completed at ``t`` under ``setting``."""
        fault = self._fault_now(t)
        if fault == "saturated":
            return CODE_MAX
        if fault == "stuck":
            if self.stuck_counts is None:
                self.stuck_counts = self.last_counts if self.last_counts is not None else 0
            return self.stuck_counts
        if setting is B32:
            return self.channel_b_counts
        counts = self.load(t)
        if counts is None:
            return None
        return counts if setting is A128 else round(counts / 2)

    def _rising(self, now: float) -> float:
        if 1 <= self._bits < 24:
            self._bits += 1
            self._last_edge = now
            return 0.0
        if self._bits == 24:
            self._bits = 25
            self._pending = A128
            self._last_edge = now
            self.last_cycle_pulses = 25
            if self._fault_after_reads is not None and self.reads >= self._fault_after_reads:
                self.fault_at = now  # the fault starts as this readout ends
                self._fault_after_reads = None
            return self.extra_pulse_delay_s
        # after the 24 bits, a pulse while DOUT is LOW (a new conversion is ready) starts
        # the next readout; one while it is HIGH is the 25th-27th pulse of this one
        j = self._ready(now)
        if j is not None:  # a new readout starts; a finished one chose its setting
            self.setting = self.next_setting
            self._pending = None
            value = self._value
            assert value is not None
            self._code = to_code(value)
            self._latched_j = j
            self._bits = 1
            self._last_edge = now
            self.reads += 1
            self.last_counts = value
            self.delivered.append(
                (self.origin + j * self.period, from_code(self._code), self.setting)
            )
            return 0.0
        if 25 <= self._bits < 27:
            self._bits += 1
            self._pending = BY_PULSES[self._bits]
            self._last_edge = now
            self.last_cycle_pulses = self._bits
            return self.extra_pulse_delay_s
        if self._bits == 27:
            self._last_edge = now  # pulses beyond the 27th are ignored
        return 0.0

    @property
    def next_setting(self) -> Setting:
        """The setting the next conversion will use."""
        return self._pending if self._pending is not None else self.setting

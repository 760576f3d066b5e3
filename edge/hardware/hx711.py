"""The ``hx711`` hardware backend: one HX711 per load-cell channel on a Raspberry Pi.

Each chip is read through the PyPI ``hx711`` driver (1.1.x, unmodified) on
``RPi.GPIO``: ``gpio = "rpi"`` uses the installed module (RPi.GPIO, or rpi-lgpio on a
Pi 5), ``gpio = "emulated"`` first installs ``firmware_mock.gpio``'s emulated pins,
whose chips read the simulator's shelf physics, and attaches the simulated shoppers
of the ``sim`` backend (so the daemon bills real sessions on a laptop).

The driver has traps, and this backend contains them:

* ``HX711.get_raw_data`` loops until it has its readings: a chip that stops
  answering (or is saturated, 0x7FFFFF, which ``_read`` rejects) hangs the caller
  forever; and it filters with ``data not in [False, -1]``, which drops genuine
  readings of 0 (``0 == False``) and -1. So the backend never calls it: it waits for
  DOUT to go LOW itself (polling, never blocking on a dead chip) and then takes one
  conversion with ``HX711._read()``, telling ``False`` (no valid reading) from ``0``
  with ``is``.
* ``_read`` gives up (``False``) when it times one of its PD_SCK pulses at 60 µs or
  more. Its timer also counts time outside the pulse, so the chip may not have
  powered down and still waits, mid-word, for the rest of its bits: the next readout
  would be misaligned, or never start. After every ``False`` the backend resets the
  chip (PD_SCK high for 200 µs, then low), as it does once the driver's constructor
  (whose own reads may have ended the same way) has run; a chip on its own clock that
  stays silent for 10 conversions (0.25 s at 80 SPS) is reset too.
* Even ``_read`` can hang: when its gain pulse is slow it calls ``get_raw_data(6)``,
  which loops forever on a chip left mid-word. Every chip is therefore read on its
  own thread, and a read that does not finish within ``read_deadline_s`` (0.5 s at
  80 SPS, 1.5 s at 10 SPS) is broken out of: the chip's DOUT pin is released
  (``GPIO.cleanup``), the driver raises on its next ``GPIO.input``, and the thread
  takes the pin back, resets the chip and goes on (any other driver error: a new
  driver after 0.5 s). A read that merely took several conversions went through
  ``get_raw_data(6)`` too: its value stands, and the chip is reset after it.

A conversion that never comes is a missing sample (NaN); a channel without a valid
reading for ``fault_after_s`` (2 s) is reported faulted while the others go on.
``read(until)`` puts the readings of every channel on one grid at the nominal rate
(a reading goes to the slot nearest its time, per-channel phase tracked), NaN where a
channel has none.

``[hardware.hx711]``: ``gpio`` ("rpi" | "emulated"), ``dout_pins`` (BCM, one per
``[[channels]]`` entry, same order), ``pd_sck_pin`` (one clock shared by every chip) or
``pd_sck_pins`` (one per chip), ``gain`` (128 | 64, channel A), ``rate_pin`` (optional:
drives RATE, HIGH for 80 SPS), ``fault_after_s`` (default ``[weighing] fault_gap_s``),
``read_deadline_s`` (0.5 s; 1.5 s at 10 SPS), ``poll_ms`` (1.0), and with ``gpio = "emulated"`` the
``[hardware.hx711.emulation]`` table (``bounce_ms``, ``[[...faults]]``).
"""

from __future__ import annotations

import cmath
import importlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import ConfigError, HardwareError
from edge.hardware.doorlock import (
    DoorConfig,
    GpioDoorSwitch,
    GpioLock,
    LockConfig,
    create_door_lock,
    door_config,
    lock_config,
)
from edge.hardware.gpio import GpioModule, TableReader, gpio_error, import_rpi_gpio, table
from edge.hardware.registry import Hardware
from edge.model import Calibration, SampleBlock

if TYPE_CHECKING:
    from edge.config import CabinetConfig

log = logging.getLogger("freshbox.hardware.hx711")

Clock = Callable[[], float]

GPIO_KINDS = ("rpi", "emulated")
GAINS = (128, 64)
RATES = (10.0, 80.0)
FAULT_KINDS = ("dead", "saturated", "stuck")
#: A thread whose driver failed waits this long before building a new one (s).
RESTART_BACKOFF_S = 0.5
#: The driver's constructor reads twice and sleeps 2 x 0.5 s; with a dead chip its
#: reads time out after 0.4 s each. Allowed time for it (s).
INIT_DEADLINE_S = 4.0
#: After a reading, polling starts this long before the next conversion is due (s).
NEXT_MARGIN_S = 0.002
#: PD_SCK high this long resets a chip (more than 60 µs) (s).
RESET_PULSE_S = 200e-6
#: The longest a silent chip waits between two resets (s).
MAX_RESET_INTERVAL_S = 2.0
#: How long the driver's constructor usually takes (two reads and 2 x 0.5 s of sleep) (s).
DRIVER_START_S = 1.2
#: Readings kept per channel when nobody reads them (s of samples).
QUEUE_S = 60.0


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """An emulated fault: ``kind`` on the chip of ``[[channels]]`` ``channel``."""

    channel: int
    kind: str  # dead | saturated | stuck
    at_s: float = 0.0  # seconds after start
    counts: int | None = None  # stuck: the value (default: the last reading)


@dataclass(frozen=True, slots=True)
class EmulationConfig:
    """``[hardware.hx711.emulation]``: the emulated board (``gpio = "emulated"``)."""

    bounce_ms: float = 4.0  # the reed switch bounces this long on each change
    faults: tuple[FaultSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Hx711Config:
    """``[hardware.hx711]``, validated."""

    gpio: str
    dout_pins: tuple[int, ...]
    pd_sck_pins: tuple[int, ...]  # one per chip; repeated when the clock is shared
    gain: int = 128
    rate_pin: int | None = None
    fault_after_s: float = 2.0
    read_deadline_s: float = 0.5
    poll_ms: float = 1.0
    emulation: EmulationConfig = EmulationConfig()

    @property
    def shared_clock(self) -> bool:
        return len(set(self.pd_sck_pins)) < len(self.pd_sck_pins)

    def pins(self) -> list[int]:
        """Every pin the chips use."""
        out = list(self.dout_pins) + sorted(set(self.pd_sck_pins))
        return out + ([self.rate_pin] if self.rate_pin is not None else [])


def hx711_config(config: CabinetConfig) -> Hx711Config:
    """Validate ``[hardware.hx711]`` against the cabinet's channels."""
    r = table(config, "hx711")
    n = len(config.calibrations)
    gpio = r.choice("gpio", GPIO_KINDS, "rpi")
    dout = r.pins("dout_pins", n, what="[[channels]] entries")
    if r.has("pd_sck_pin") and r.has("pd_sck_pins"):
        raise r.fail("pd_sck_pins", "give pd_sck_pin (shared) or pd_sck_pins, not both")
    if r.has("pd_sck_pins"):
        sck = r.pins("pd_sck_pins", n, what="[[channels]] entries")
    else:
        sck = (r.pin("pd_sck_pin"),) * n
    gain = r.int_("gain", 128)
    if gain not in GAINS:
        raise r.fail("gain", "must be 128 or 64 (channel A)")
    rate_pin = r.pin("rate_pin") if r.has("rate_pin") else None
    fault_after = r.num("fault_after_s", config.weighing.fault_gap_s)
    # a slow gain pulse makes _read take 6 more conversions (and a chip settling)
    deadline = r.num("read_deadline_s", 0.5 if config.sample_rate_hz == 80.0 else 1.5)
    poll = r.num("poll_ms", 1.0)
    if poll > 20.0:
        raise r.fail("poll_ms", "must be at most 20 (a conversion lasts 12.5 ms at 80 SPS)")
    emulation = EmulationConfig()
    if r.has("emulation"):
        if gpio != "emulated":
            raise r.fail("emulation", 'only with gpio = "emulated"')
        emulation = _emulation_config(r.sub("emulation"), config)
    r.done()
    used = set(dout)
    for pin in sorted(set(sck)):
        if pin in used:
            raise r.fail("pd_sck_pins" if r.has("pd_sck_pins") else "pd_sck_pin",
                         f"GPIO {pin} is also a DOUT pin")  # fmt: skip
        used.add(pin)
    if rate_pin is not None and rate_pin in used:
        raise r.fail("rate_pin", f"GPIO {rate_pin} is also a DOUT or PD_SCK pin")
    if config.sample_rate_hz not in RATES:
        raise ConfigError(
            f"{config.source}: cabinet.sample_rate_hz: the HX711 converts at 10 or 80 "
            "samples per second"
        )
    return Hx711Config(
        gpio=gpio,
        dout_pins=dout,
        pd_sck_pins=sck,
        gain=gain,
        rate_pin=rate_pin,
        fault_after_s=fault_after,
        read_deadline_s=deadline,
        poll_ms=poll,
        emulation=emulation,
    )


def _emulation_config(r: TableReader, config: CabinetConfig) -> EmulationConfig:
    bounce = r.num("bounce_ms", 4.0, positive=False)
    channels = [c.channel for c in config.calibrations]
    faults: list[FaultSpec] = []
    raw = r.get("faults", [])
    if not isinstance(raw, list):
        raise r.fail("faults", "must be an array of tables ([[hardware.hx711.emulation.faults]])")
    for i, item in enumerate(raw):
        f = TableReader(config.source, item, f"{r.path}.faults[{i}]")
        ch = f.int_("channel", minimum=0)
        if ch not in channels:
            raise f.fail("channel", f"channel {ch} has no [[channels]] entry")
        kind = f.choice("kind", FAULT_KINDS)
        at = f.num("at_s", 0.0, positive=False)
        counts = None
        if f.has("counts"):
            if kind != "stuck":
                raise f.fail("counts", 'only for kind = "stuck"')
            counts = f.int_("counts", minimum=None)
            if not -0x800000 <= counts <= 0x7FFFFF:
                raise f.fail("counts", "must be a signed 24-bit value")
        f.done()
        faults.append(FaultSpec(ch, kind, at, counts))
    r.done()
    return EmulationConfig(bounce_ms=bounce, faults=tuple(faults))


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """How one chip is doing."""

    channel: int
    dout: int
    readings: int  # valid conversions read
    invalid: int  # reads that gave no valid value (the driver's False)
    restarts: int  # drivers rebuilt after an error or a hung read
    resets: int  # chips reset (powered down and up): after a failed read, or silent
    unstuck: int  # hung driver calls broken out of by the watchdog
    faulted: bool  # no valid reading for fault_after_s
    last_valid_age_s: float  # since the last valid reading (or since start)
    busy_s: float  # how long the current driver call has lasted (0: idle)
    alive: bool  # the reader thread runs


class _ChipReader:
    """The thread that reads one chip through the driver."""

    def __init__(self, source: Hx711Source, index: int, channel: int, dout: int, sck: int) -> None:
        self.source = source
        self.index = index
        self.channel = channel
        self.dout = dout
        self.sck = sck
        maxlen = max(64, int(QUEUE_S * source.sample_rate_hz))
        #: (clock time, value or None) of every conversion read, oldest first
        self.readings: deque[tuple[float, int | None]] = deque(maxlen=maxlen)
        self.busy_since: float | None = None
        self.busy_limit = 0.0
        self.unsticking = False
        self.valid = 0
        self.invalid = 0
        self.restarts = 0
        self.resets = 0
        self.unstuck = 0  # hung driver calls broken by the watchdog
        self.last_valid = source.clock()
        self.last_error = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"hx711-ch{channel}", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._serve()
            except Exception as exc:
                self.busy_since = None
                if self.stop.is_set():
                    break
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "hx711 channel %d: driver failed (%s); new driver in %.1f s",
                    self.channel,
                    self.last_error,
                    RESTART_BACKOFF_S,
                )
                self.stop.wait(RESTART_BACKOFF_S)

    def _serve(self) -> None:
        src = self.source
        clock = src.clock
        with src.clock_lock(self.sck):
            self._busy(INIT_DEADLINE_S)
            driver = src.driver_class(self.dout, self.sck, gain=src.gain, channel="A")
            self.busy_since = None
        self.unsticking = False
        if self.valid == 0:
            self.last_valid = clock()  # the fault clock starts once the driver is up
        seen = src.group_resets[self.sck]  # resets of this clock as of the last reading
        # the constructor reads twice (the first time at gain 64, the class default), and
        # one of its reads may have stopped mid-word: start from a clean chip (which also
        # takes its RATE pin at power-up)
        self._reset()
        period = 1.0 / src.sample_rate_hz
        poll = src.poll_s
        reset_after = src.reset_after_s
        last_ready = clock()
        while not self.stop.is_set():
            if self._dout() != 0:  # converting, or silent: never block on it
                now = clock()
                if now - last_ready > reset_after and not src.cfg.shared_clock:
                    # silent too long: reset the chip (PD_SCK high > 60 µs, then low)
                    self._reset()
                    last_ready = clock()
                    reset_after = min(2.0 * reset_after, MAX_RESET_INTERVAL_S)
                    continue
                self.stop.wait(poll * 5 if now - last_ready > 4 * period else poll)
                continue
            with src.clock_lock(self.sck):
                t = clock()
                if self._dout() != 0:  # a chip on the same clock took it
                    continue
                aligned = self._group_ready(t + period) if src.cfg.shared_clock else True
                # the first conversion after a reset is at gain 128, whatever the driver
                # asked for; with gain 64 it is dropped
                after_reset = src.group_resets[self.sck] != seen
                seen = src.group_resets[self.sck]
                self._busy(src.read_deadline_s)
                try:
                    value = driver._read()
                except Exception:
                    if not self.unsticking:
                        raise
                    self._take_back_dout()  # the watchdog broke a hung read: no value
                    value = False
                self.busy_since = None
                # a read that took several conversions went through get_raw_data (a slow
                # gain pulse): its own reads may have left the chip mid-word or on another
                # channel; the value itself was read before that
                slow = clock() - t > 2 * period
            last_ready = t
            reset_after = src.reset_after_s
            if value is False or value is None:
                self.invalid += 1
                self.readings.append((t, None))
                # _read gives up when it timed a pulse at 60 µs or more, maybe in the middle
                # of the 24 bits while the chip (whose pulse was a little shorter) waits for
                # the rest: the next readout would be misaligned. Reset the chip to be sure.
                self._reset()
                continue
            if not aligned or slow:
                # a chip on this clock became ready in the middle of the readout and now
                # waits mid-word (reset them all: they come back in step), or see above
                self._reset()
            if not (after_reset and src.gain != 128):
                self.valid += 1
                self.last_valid = t
                self.readings.append((t, int(value)))
            # the next conversion completes one period after this one (which was ready at
            # or before t): sleep until shortly before it, then poll
            self.stop.wait(max(0.0, t + period - NEXT_MARGIN_S - clock()))

    def _group_ready(self, until: float) -> bool:
        """Shared PD_SCK: wait (at most until ``until``) for every other live chip on the
        clock to be ready too, so the readout shifts out whole words of all of them.
        Returns whether they all were."""
        src = self.source
        others = [
            r
            for r in src.clock_group(self.sck)
            if r is not self and src.clock() - r.last_valid < src.fault_after_s
        ]
        while True:
            try:
                if all(src.gpio.input(r.dout) == 0 for r in others):
                    return True
            except Exception:
                return False
            if src.clock() >= until or self.stop.is_set():
                return False
            time.sleep(src.poll_s)

    def _dout(self) -> int:
        """DOUT's level; 1 while the watchdog holds the pin (then the pin is taken back)."""
        try:
            return int(self.source.gpio.input(self.dout))
        except Exception:
            if not self.unsticking:
                raise
            self._take_back_dout()
            return 1

    def _take_back_dout(self) -> None:
        """Set DOUT up again after the watchdog released it to break a hung driver call."""
        self.busy_since = None
        gpio = self.source.gpio
        gpio.setup(self.dout, gpio.IN)
        self.unsticking = False
        self.unstuck += 1

    def _reset(self) -> None:
        """Reset the chip: PD_SCK high for more than 60 µs (power-down), then low: it
        comes back on channel A gain 128 after settling. (The driver's power_down and
        power_up do the same with 20 ms of sleeps.)"""
        gpio = self.source.gpio
        with self.source.clock_lock(self.sck):
            self._busy(self.source.read_deadline_s)
            try:
                gpio.output(self.sck, gpio.HIGH)
                end = time.perf_counter() + RESET_PULSE_S
                while time.perf_counter() < end:
                    time.sleep(RESET_PULSE_S / 2)
            finally:
                gpio.output(self.sck, gpio.LOW)
                self.busy_since = None
            self.source.group_resets[self.sck] += 1
        self.resets += 1

    def _busy(self, limit: float) -> None:
        self.busy_limit = limit
        self.busy_since = self.source.clock()


class Hx711Source:
    """The ``WeightSource`` of one HX711 per channel (see the module docstring)."""

    def __init__(
        self,
        gpio: GpioModule,
        driver_class: Any,
        cfg: Hx711Config,
        calibrations: Sequence[Calibration],
        sample_rate_hz: float,
        *,
        start_t: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if len(cfg.dout_pins) != len(calibrations):
            raise ValueError("one DOUT pin per calibrated channel")
        self.gpio = gpio
        self.driver_class = driver_class
        self.cfg = cfg
        self._calibrations = tuple(calibrations)
        self._fs = float(sample_rate_hz)
        self.gain = cfg.gain
        self.poll_s = cfg.poll_ms / 1000.0
        self.read_deadline_s = cfg.read_deadline_s
        self.fault_after_s = cfg.fault_after_s
        settle = 0.4 if self._fs == 10.0 else 0.05
        #: a chip whose DOUT stays HIGH this long is reset (10 conversions + settling)
        self.reset_after_s = max(0.25, 10.0 / self._fs + settle)
        self.clock = clock
        self.start_t = start_t
        self.mono0 = clock()
        self._lag = 0.5 / self._fs + 0.02
        self._locks = {sck: threading.Lock() for sck in set(cfg.pd_sck_pins)}
        #: resets of each clock pin (a reset on a shared clock resets every chip on it)
        self.group_resets = dict.fromkeys(cfg.pd_sck_pins, 0)
        n = len(calibrations)
        self._next_slot = 0
        self._free = [0] * n
        self._phase_z = [0j] * n
        self._faulted = [False] * n
        self.overwritten = [0] * n  # readings that shared a slot with a newer one
        self._closed = False
        self.leaked_threads: list[str] = []
        try:
            if cfg.rate_pin is not None:
                high = sample_rate_hz == 80.0
                gpio.setup(cfg.rate_pin, gpio.OUT, initial=gpio.HIGH if high else gpio.LOW)
        except Exception as exc:
            raise gpio_error(f"HX711 RATE pin GPIO {cfg.rate_pin}", exc) from exc
        self.readers = [
            _ChipReader(self, i, cal.channel, dout, sck)
            for i, (cal, dout, sck) in enumerate(
                zip(calibrations, cfg.dout_pins, cfg.pd_sck_pins, strict=True)
            )
        ]
        for reader in self.readers:
            # on a shared clock the drivers start one after the other: so does the fault clock
            before = [r for r in self.clock_group(reader.sck) if r.index < reader.index]
            reader.last_valid += len(before) * DRIVER_START_S
        for reader in self.readers:
            reader.thread.start()

    # -- WeightSource --------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return self._fs

    @property
    def calibrations(self) -> tuple[Calibration, ...]:
        return self._calibrations

    def clock_lock(self, sck: int) -> threading.Lock:
        """Serialises the chips of one PD_SCK pin (a pulse clocks every chip on it)."""
        return self._locks[sck]

    def clock_group(self, sck: int) -> list[_ChipReader]:
        """The readers of the chips on PD_SCK pin ``sck``."""
        return [r for r in self.readers if r.sck == sck]

    def read(self, until: float) -> SampleBlock:
        """The grid slots complete by ``until`` (cabinet clock) not yet returned."""
        self.watchdog()
        fs = self._fs
        stop = math.floor((until - self.start_t - self._lag) * fs)
        n = stop - self._next_slot
        channels = len(self.readers)
        if n <= 0:
            return SampleBlock(np.empty(0), np.empty((0, channels)))
        raw = np.full((n, channels), np.nan)
        first = self._next_slot
        for c, reader in enumerate(self.readers):
            q = reader.readings
            while q:
                tm, value = q[0]
                x = (tm - self.mono0) * fs
                phase = _phase(self._phase_z[c])
                slot = max(math.floor(x - phase + 0.5), first)
                if slot >= stop:
                    break
                free = self._free[c]
                if slot < free:
                    if free == slot + 1:  # the previous reading came late: take the next slot
                        if free >= stop:
                            break
                        slot = free
                    else:  # more readings than slots: the newer one wins
                        slot = free - 1
                        self.overwritten[c] += 1
                q.popleft()
                self._phase_z[c] = 0.9 * self._phase_z[c] + 0.1 * cmath.exp(2j * math.pi * x)
                self._free[c] = max(free, slot + 1)
                if value is not None:  # (a failed read leaves the slot empty: NaN)
                    raw[slot - first, c] = float(value)
        self._next_slot = stop
        t = self.start_t + np.arange(first, stop, dtype=np.float64) / fs
        self._update_faults()
        return SampleBlock(t, raw)

    def close(self) -> None:
        """Stop every reader (breaking hung drivers out), then release the chips' pins."""
        if self._closed:
            return
        self._closed = True
        for r in self.readers:
            r.stop.set()
        end = time.monotonic() + INIT_DEADLINE_S
        for r in self.readers:
            r.thread.join(max(0.0, min(1.0, end - time.monotonic())))
        stuck = [r for r in self.readers if r.thread.is_alive()]
        for r in stuck:
            self._release(r.dout)
        for r in stuck:
            r.thread.join(max(0.1, end - time.monotonic()))
        self.leaked_threads = [r.thread.name for r in self.readers if r.thread.is_alive()]
        if self.leaked_threads:
            log.error("hx711 reader threads still running: %s", ", ".join(self.leaked_threads))
        for pin in self.cfg.pins():
            self._release(pin)

    # -- health ----------------------------------------------------------------------
    def watchdog(self) -> None:
        """Break out of driver calls that overran their deadline."""
        now = self.clock()
        for r in self.readers:
            since = r.busy_since
            if since is None or r.unsticking or now - since <= r.busy_limit:
                continue
            r.unsticking = True
            log.warning(
                "hx711 channel %d: driver stuck for %.1f s; releasing DOUT GPIO %d to break it",
                r.channel,
                now - since,
                r.dout,
            )
            self._release(r.dout)

    @property
    def faulted(self) -> tuple[bool, ...]:
        """Per channel (``calibrations`` order): no valid reading for ``fault_after_s``."""
        self._update_faults()
        return tuple(self._faulted)

    def status(self) -> list[ChannelStatus]:
        self.watchdog()
        self._update_faults()
        now = self.clock()
        out = []
        for c, r in enumerate(self.readers):
            since = r.busy_since
            out.append(
                ChannelStatus(
                    channel=r.channel,
                    dout=r.dout,
                    readings=r.valid,
                    invalid=r.invalid,
                    restarts=r.restarts,
                    resets=r.resets,
                    unstuck=r.unstuck,
                    faulted=self._faulted[c],
                    last_valid_age_s=now - r.last_valid,
                    busy_s=0.0 if since is None else now - since,
                    alive=r.thread.is_alive(),
                )
            )
        return out

    def _update_faults(self) -> None:
        now = self.clock()
        for c, r in enumerate(self.readers):
            faulted = now - r.last_valid >= self.fault_after_s
            if faulted != self._faulted[c]:
                self._faulted[c] = faulted
                if faulted:
                    log.warning(
                        "hx711 channel %d (DOUT GPIO %d): no valid reading for %.1f s: faulted",
                        r.channel,
                        r.dout,
                        now - r.last_valid,
                    )
                else:
                    log.info("hx711 channel %d reads again", r.channel)

    def _release(self, pin: int) -> None:
        try:
            self.gpio.cleanup(pin)
        except Exception as exc:
            log.debug("cleanup of GPIO %d: %s", pin, exc)


def _phase(z: complex) -> float:
    """The mean phase (in slots, [0, 1)) of a channel's readings; 0.5 before the first."""
    if z == 0:
        return 0.5
    return (cmath.phase(z) / (2.0 * math.pi)) % 1.0


# ---------------------------------------------------------------- the backend


def load_driver(gpio: GpioModule) -> Any:
    """The ``hx711`` driver module, bound to ``gpio`` (import it only after ``gpio`` is
    the ``RPi.GPIO`` of this process)."""
    try:
        module = importlib.import_module("hx711")
    except ImportError as exc:
        raise HardwareError(
            f"cannot import the hx711 driver ({exc}): pip install 'freshbox[pi]'"
        ) from exc
    if getattr(module, "GPIO", None) is not gpio:
        raise HardwareError(
            "the hx711 driver was imported with another RPi.GPIO than the one configured "
            '(gpio = "rpi" and gpio = "emulated" cannot share one process)'
        )
    return module


def create_hardware(
    config: CabinetConfig, *, start_t: float = 0.0, clock: Clock = time.monotonic
) -> Hardware:
    """The ``hx711`` backend for the daemon (see ``edge.hardware.registry``)."""
    hx = hx711_config(config)
    lc = lock_config(config)
    dc = door_config(config)
    taken = set(hx.pins())
    for name, pin in (("lock", lc.pin), ("door", dc.pin)):
        if pin in taken:
            raise ConfigError(
                f"{config.source}: hardware.{name}.pin: GPIO {pin} is already an HX711 pin"
            )
    if hx.gpio == "emulated":
        return _create_emulated(config, hx, lc, dc, start_t=start_t, clock=clock)
    gpio = import_rpi_gpio()
    lock, door = create_door_lock(config, gpio, clock=clock)
    try:
        driver = load_driver(gpio)
        source = Hx711Source(
            gpio, driver.HX711, hx, config.calibrations, config.sample_rate_hz,
            start_t=start_t, clock=clock,
        )  # fmt: skip
    except BaseException:
        door.close()
        lock.close()
        raise
    return Hardware(source=source, lock=lock, door=door, closers=[door.close, lock.close])


def _create_emulated(
    config: CabinetConfig,
    hx: Hx711Config,
    lc: LockConfig,
    dc: DoorConfig,
    *,
    start_t: float,
    clock: Clock,
) -> Hardware:
    from firmware_mock.gpio import rpi
    from firmware_mock.gpio.cabinet import build_emulated_cabinet

    emu = build_emulated_cabinet(config, hx, lc, dc, clock=clock)
    rpi.install(emu.board)
    gpio: GpioModule = rpi
    lock: GpioLock | None = None
    door: GpioDoorSwitch | None = None
    try:
        lock, door = create_door_lock(config, gpio, clock=clock)
        driver = load_driver(gpio)
        source = Hx711Source(
            gpio, driver.HX711, hx, config.calibrations, config.sample_rate_hz,
            start_t=start_t, clock=clock,
        )  # fmt: skip
    except BaseException:
        if door is not None:
            door.close()
        if lock is not None:
            lock.close()
        rpi.uninstall(emu.board)
        raise
    actors = emu.shoppers(config, start_t=start_t) if config.sim.residents else None
    log.info(
        "hx711 backend on emulated GPIO: %d chips, %s, faults: %s",
        len(hx.dout_pins),
        "a shared PD_SCK" if hx.shared_clock else "one PD_SCK per chip",
        ", ".join(f"{f.kind} ch{f.channel} at {f.at_s:g} s" for f in hx.emulation.faults) or "none",
    )
    board = emu.board
    return Hardware(
        source=source,
        lock=lock,
        door=door,
        actors=actors,
        closers=[door.close, lock.close, lambda: rpi.uninstall(board)],
    )


__all__ = [
    "ChannelStatus",
    "EmulationConfig",
    "FaultSpec",
    "Hx711Config",
    "Hx711Source",
    "create_hardware",
    "hx711_config",
    "load_driver",
]

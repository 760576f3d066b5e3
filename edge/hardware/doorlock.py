"""The door lock relay and the door reed switch on ``RPi.GPIO``.

Lock (``[hardware.lock]``): a relay on one output pin switches the lock.

* ``fail_safe = false`` (default, fail-secure: an electric strike or a bolt that is
  locked without power): relay off = locked, ``unlock()`` energises the relay.
  ``fail_safe = true`` (a maglock, locked while powered): relay on = locked.
* ``active_low = true``: the relay module is energised by a LOW pin.
* ``unlock()`` releases the lock for at most ``max_unlock_s`` (default: the
  session's unlock window), and the lock engages again as soon as the door
  switch says the door closed, whichever comes first.
* The lock is engaged when the process stops in any way Python can see: ``close()``
  and the context manager, every exception (including ``KeyboardInterrupt``),
  ``atexit``, and SIGTERM/SIGHUP (turned into ``SystemExit`` when nobody else handles
  them). ``engage()``, which they use, takes no lock and logs nothing, so it is safe
  in a signal handler. A SIGKILL or a power cut is left to the hardware: that is why
  the default is fail-secure.
* ``lock()`` while the door switch reads open raises an alarm (``alarms``, and the
  ``on_alarm`` callback): the bolt cannot catch an open door.

Door (``[hardware.door]``): a reed switch on one input pin, read every ``poll_ms``
and debounced: a new state counts once the pin has held it for ``debounce_ms``.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from edge.errors import ConfigError, HardwareError
from edge.hardware.gpio import GpioModule, gpio_error, table

if TYPE_CHECKING:
    from edge.config import CabinetConfig

log = logging.getLogger("freshbox.hardware.lock")

Clock = Callable[[], float]

OPEN_LEVELS = ("high", "low")
PULLS = ("up", "down", "off")


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class LockConfig:
    """``[hardware.lock]``."""

    pin: int
    active_low: bool = False
    fail_safe: bool = False
    max_unlock_s: float = 15.0


@dataclass(frozen=True, slots=True)
class DoorConfig:
    """``[hardware.door]``."""

    pin: int
    debounce_ms: float = 30.0
    open_level: str = "high"  # the pin's level while the door is open
    pull: str = "up"  # the internal pull resistor: up, down or off
    poll_ms: float = 2.0


def lock_config(config: CabinetConfig) -> LockConfig:
    """Validate ``[hardware.lock]``."""
    r = table(config, "lock")
    out = LockConfig(
        pin=r.pin("pin"),
        active_low=r.bool_("active_low", False),
        fail_safe=r.bool_("fail_safe", False),
        max_unlock_s=r.num("max_unlock_s", config.sessions.unlock_window_s),
    )
    r.done()
    return out


def door_config(config: CabinetConfig) -> DoorConfig:
    """Validate ``[hardware.door]``."""
    r = table(config, "door")
    pin = r.pin("pin")
    debounce = r.num("debounce_ms", 30.0, positive=False)
    level = r.choice("open_level", OPEN_LEVELS, "high")
    pull = r.choice("pull", PULLS, "up" if level == "high" else "down")
    poll = r.num("poll_ms", 2.0)
    r.done()
    if debounce > 1000.0:
        raise r.fail("debounce_ms", "must be at most 1000")
    if poll > max(debounce, 1.0):
        raise r.fail("poll_ms", f"must not exceed debounce_ms ({debounce:g})")
    return DoorConfig(pin=pin, debounce_ms=debounce, open_level=level, pull=pull, poll_ms=poll)


# ---------------------------------------------------------------- door switch


class GpioDoorSwitch:
    """The door reed switch: ``is_open`` is the debounced state.

    With ``start`` a background thread polls the pin every ``poll_s``; without it,
    every read of ``is_open`` polls once (and ``poll()`` can be called directly).
    Listeners are called with the new state on every debounced change, from the
    polling thread, outside the switch's own lock.
    """

    def __init__(
        self,
        gpio: GpioModule,
        pin: int,
        *,
        debounce_s: float = 0.030,
        open_level: int = 1,
        pull: str = "up",
        poll_s: float = 0.002,
        clock: Clock = time.monotonic,
        start: bool = True,
    ) -> None:
        self.gpio = gpio
        self.pin = pin
        self.debounce_s = debounce_s
        self.open_level = 1 if open_level else 0
        self.poll_s = poll_s
        self.clock = clock
        pud = {"up": gpio.PUD_UP, "down": gpio.PUD_DOWN, "off": gpio.PUD_OFF}[pull]
        try:
            gpio.setup(pin, gpio.IN, pull_up_down=pud)
            raw = gpio.input(pin) == self.open_level
        except Exception as exc:
            raise gpio_error(f"door switch on GPIO {pin}", exc) from exc
        self._mutex = threading.Lock()
        self._state = raw  # at start the pin is believed as it is
        self._candidate = raw
        self._since = clock()
        self._listeners: list[Callable[[bool], None]] = []
        self.changes = 0  # debounced changes
        self.read_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._run, name=f"freshbox-door-{pin}", daemon=True
            )
            self._thread.start()

    @property
    def is_open(self) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return self._state
        return self.poll()

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        self._listeners.append(callback)

    def poll(self) -> bool:
        """Sample the pin once; returns the debounced state."""
        now = self.clock()
        try:
            raw = self.gpio.input(self.pin) == self.open_level
        except Exception as exc:
            self.read_errors += 1
            if self.read_errors == 1:
                log.error("door switch on GPIO %d cannot be read: %s", self.pin, exc)
            return self._state
        changed = False
        with self._mutex:
            if raw != self._candidate:
                self._candidate = raw
                self._since = now
            elif raw != self._state and now - self._since >= self.debounce_s:
                self._state = raw
                self.changes += 1
                changed = True
            state = self._state
        if changed:
            log.debug("door switch on GPIO %d: %s", self.pin, "open" if state else "closed")
            for callback in list(self._listeners):
                try:
                    callback(state)
                except Exception:
                    log.exception("door switch listener failed")
        return state

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)


# ---------------------------------------------------------------- lock


@dataclass(frozen=True, slots=True)
class LockAlarm:
    """Something about the lock an operator must know."""

    kind: str  # "locked_while_open"
    t: float  # Unix time
    detail: str


_live_locks: weakref.WeakSet[GpioLock] = weakref.WeakSet()
_handled_signals: dict[int, Any] = {}


def engage_all() -> None:
    """Engage every lock of this process (signal-safe: no lock taken, nothing logged)."""
    for lock in list(_live_locks):
        lock.engage()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    engage_all()
    raise SystemExit(128 + signum)


def _restore_signal_handlers() -> None:
    """Once no lock is left, hand SIGTERM/SIGHUP back (where ours are still installed)."""
    if _live_locks or threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_handled_signals.items()):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, previous)
        del _handled_signals[sig]


def install_signal_handlers() -> None:
    """Engage the locks on SIGTERM and SIGHUP, then exit through ``SystemExit`` (so
    ``finally`` blocks and ``atexit`` run), where nobody handles those signals yet.
    Only from the main thread; a handler installed later (the daemon's) takes over."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if sig in _handled_signals:
            continue
        if signal.getsignal(sig) is signal.SIG_DFL:
            _handled_signals[sig] = signal.signal(sig, _on_signal)


class GpioLock:
    """The lock relay on output ``pin`` (see the module docstring for the rules)."""

    def __init__(
        self,
        gpio: GpioModule,
        pin: int,
        *,
        active_low: bool = False,
        fail_safe: bool = False,
        max_unlock_s: float = 15.0,
        door: GpioDoorSwitch | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        on_alarm: Callable[[LockAlarm], None] | None = None,
        tick_s: float = 0.01,
        start: bool = True,
        handle_signals: bool = True,
    ) -> None:
        if max_unlock_s <= 0:
            raise ValueError("max_unlock_s must be > 0")
        self.gpio = gpio
        self.pin = pin
        self.active_low = active_low
        self.fail_safe = fail_safe
        self.max_unlock_s = max_unlock_s
        self.clock = clock
        self.wall = wall
        self.on_alarm = on_alarm
        self.tick_s = tick_s
        energised = gpio.LOW if active_low else gpio.HIGH
        released = gpio.HIGH if active_low else gpio.LOW
        #: pin levels of the two states
        self.locked_level = energised if fail_safe else released
        self.unlocked_level = released if fail_safe else energised
        self._mutex = threading.RLock()
        self._locked = True
        self._deadline: float | None = None
        self._alarmed = False  # one alarm per door-open episode
        self._closed = False
        self.door: GpioDoorSwitch | None = None
        self.operations: list[str] = []
        self.alarms: list[LockAlarm] = []
        self.engage_failures = 0
        try:
            gpio.setup(pin, gpio.OUT, initial=self.locked_level)
            gpio.output(pin, self.locked_level)
        except Exception as exc:
            raise gpio_error(f"lock relay on GPIO {pin}", exc) from exc
        _live_locks.add(self)
        atexit.register(self.engage)
        if handle_signals:
            install_signal_handlers()
        if door is not None:
            self.attach_door(door)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._run, name=f"freshbox-lock-{pin}", daemon=True
            )
            self._thread.start()

    # -- Lock protocol -----------------------------------------------------------
    @property
    def locked(self) -> bool:
        """The commanded state."""
        return self._locked

    def unlock(self) -> None:
        """Release the lock for at most ``max_unlock_s`` (until the door closes)."""
        with self._mutex:
            if self._closed:
                raise HardwareError(f"lock relay on GPIO {self.pin}: unlock after close")
            try:
                self.gpio.output(self.pin, self.unlocked_level)
            except Exception as exc:
                self.engage()
                raise gpio_error(f"lock relay on GPIO {self.pin}", exc) from exc
            self._locked = False
            self._deadline = self.clock() + self.max_unlock_s
            self.operations.append("unlock")
        log.info("lock on GPIO %d released for at most %.1f s", self.pin, self.max_unlock_s)

    def lock(self) -> None:
        """Engage the lock (idempotent); an alarm if the door switch reads open."""
        door_open = self._door_open()
        alarm = None
        with self._mutex:
            was_locked = self._locked
            self._write_locked()
            if not was_locked:
                self.operations.append("lock")
            if door_open and not self._alarmed:
                self._alarmed = True
                alarm = LockAlarm(
                    "locked_while_open",
                    self.wall(),
                    f"lock on GPIO {self.pin} commanded shut while the door switch "
                    f"on GPIO {self.door.pin if self.door else '?'} reads open",
                )
        if alarm is not None:
            self._raise(alarm)

    # -- safety --------------------------------------------------------------
    def engage(self) -> None:
        """Drive the relay to the locked state, now, whatever else is going on. Safe in a
        signal handler and at exit: takes no lock, logs nothing, never raises."""
        self._locked = True
        self._deadline = None
        try:
            self.gpio.output(self.pin, self.locked_level)
        except Exception:
            self.engage_failures += 1

    def close(self) -> None:
        """Engage the lock and stop watching it. The pin stays driven to the locked level
        (it is not cleaned up: a released pin would leave an active-low relay to chance)."""
        self.engage()
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        atexit.unregister(self.engage)
        _live_locks.discard(self)
        _restore_signal_handlers()

    def __enter__(self) -> GpioLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- door ----------------------------------------------------------------
    def attach_door(self, door: GpioDoorSwitch) -> None:
        """Relock when ``door`` closes; alarm when locked while it reads open."""
        self.door = door
        door.add_listener(self._door_changed)

    def _door_open(self) -> bool:
        if self.door is None:
            return False
        try:
            return self.door.is_open
        except Exception:
            return False

    def _door_changed(self, is_open: bool) -> None:
        if is_open:
            return
        with self._mutex:
            self._alarmed = False
            if self._locked or self._closed:
                return
            self._write_locked()
        log.info("lock on GPIO %d engaged: the door closed", self.pin)

    # -- bounded release -------------------------------------------------------
    def tick(self) -> None:
        """Engage the lock once ``max_unlock_s`` have passed since ``unlock()``."""
        with self._mutex:
            deadline = self._deadline
            if self._locked or deadline is None or self.clock() < deadline:
                return
            self._write_locked()
        log.info(
            "lock on GPIO %d engaged: released for max_unlock_s = %.1f s",
            self.pin,
            self.max_unlock_s,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:
                log.exception("lock on GPIO %d: relock failed", self.pin)

    # -- internals -------------------------------------------------------------
    def _write_locked(self) -> None:
        self._locked = True
        self._deadline = None
        try:
            self.gpio.output(self.pin, self.locked_level)
        except Exception as first:
            try:  # once more: this is the safe state
                self.gpio.output(self.pin, self.locked_level)
            except Exception:
                raise gpio_error(f"lock relay on GPIO {self.pin}", first) from first

    def _raise(self, alarm: LockAlarm) -> None:
        self.alarms.append(alarm)
        log.warning("lock alarm %s: %s", alarm.kind, alarm.detail)
        if self.on_alarm is not None:
            try:
                self.on_alarm(alarm)
            except Exception:
                log.exception("lock alarm callback failed")


# ---------------------------------------------------------------- factory


def create_door_lock(
    config: CabinetConfig,
    gpio: GpioModule,
    *,
    clock: Clock = time.monotonic,
    on_alarm: Callable[[LockAlarm], None] | None = None,
    start: bool = True,
) -> tuple[GpioLock, GpioDoorSwitch]:
    """The lock and the door switch of ``[hardware.lock]`` and ``[hardware.door]``, on
    ``gpio`` (BCM numbering). The lock is engaged before anything else happens."""
    lc = lock_config(config)
    dc = door_config(config)
    if lc.pin == dc.pin:
        raise ConfigError(
            f"{config.source}: hardware.door.pin: GPIO {dc.pin} is the lock's pin too"
        )
    try:
        gpio.setmode(gpio.BCM)
    except Exception as exc:
        raise gpio_error("GPIO numbering (BCM)", exc) from exc
    lock = GpioLock(
        gpio,
        lc.pin,
        active_low=lc.active_low,
        fail_safe=lc.fail_safe,
        max_unlock_s=lc.max_unlock_s,
        clock=clock,
        on_alarm=on_alarm,
        start=start,
    )
    try:
        door = GpioDoorSwitch(
            gpio,
            dc.pin,
            debounce_s=dc.debounce_ms / 1000.0,
            open_level=1 if dc.open_level == "high" else 0,
            pull=dc.pull,
            poll_s=dc.poll_ms / 1000.0,
            clock=clock,
            start=start,
        )
    except BaseException:
        lock.close()
        raise
    lock.attach_door(door)
    return lock, door

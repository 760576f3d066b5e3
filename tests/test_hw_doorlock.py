"""The lock relay and the door reed switch on (emulated) RPi.GPIO.

The relay and the reed switch are the emulated board's devices; time is a
``ManualClock`` (debounce, bounded release) except where a real process exits.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.errors import ConfigError, HardwareError
from edge.hardware.doorlock import (
    GpioDoorSwitch,
    GpioLock,
    LockAlarm,
    create_door_lock,
    door_config,
    lock_config,
)
from edge.hardware.registry import Hardware
from firmware_mock.gpio import Board, LockRelay, ManualClock, install, uninstall
from firmware_mock.gpio import rpi as GPIO

ROOT = Path(__file__).resolve().parent.parent
EMULATED = ROOT / "config" / "examples" / "hx711-emulated.toml"
LOCK, DOOR = 17, 27
VARIANTS = [(False, False), (False, True), (True, False), (True, True)]
IDS = ["fail-secure", "fail-secure-active-low", "fail-safe", "fail-safe-active-low"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(50.0)


@pytest.fixture
def board(clock: ManualClock) -> Iterator[Board]:
    b = Board(clock)
    install(b)
    GPIO.setmode(GPIO.BCM)
    yield b
    uninstall(b)


class Door:
    """The emulated door: its reed switch follows ``open``."""

    def __init__(self) -> None:
        self.open = False


def make(
    board: Board,
    clock: ManualClock,
    *,
    fail_safe: bool = False,
    active_low: bool = False,
    bounce_s: float = 0.004,
    **kw: Any,
) -> tuple[GpioLock, GpioDoorSwitch, LockRelay, Door]:
    door = Door()
    relay = board.add_lock_relay(LOCK, active_low=active_low, fail_safe=fail_safe)
    board.add_reed_switch(DOOR, lambda: door.open, bounce_s=bounce_s, seed=1)
    switch = GpioDoorSwitch(GPIO, DOOR, debounce_s=0.030, clock=clock, start=False)
    lock = GpioLock(
        GPIO,
        LOCK,
        active_low=active_low,
        fail_safe=fail_safe,
        max_unlock_s=15.0,
        door=switch,
        clock=clock,
        start=False,
        handle_signals=False,
        **kw,
    )
    return lock, switch, relay, door


def run_for(clock: ManualClock, switch: GpioDoorSwitch, seconds: float, step: float = 0.001) -> int:
    """Poll the switch every ``step`` for ``seconds``; returns the debounced changes seen."""
    before = switch.changes
    for _ in range(round(seconds / step)):
        clock.advance(step)
        switch.poll()
    return switch.changes - before


@pytest.mark.parametrize(("fail_safe", "active_low"), VARIANTS, ids=IDS)
def test_relay_states_of_every_wiring(
    board: Board, clock: ManualClock, fail_safe: bool, active_low: bool
) -> None:
    lock, _, relay, _ = make(board, clock, fail_safe=fail_safe, active_low=active_low)
    assert lock.locked and relay.locked
    assert relay.energised is fail_safe  # fail-secure: off when locked; fail-safe: on
    assert GPIO.input(LOCK) == (int(relay.energised) ^ int(active_low))
    lock.unlock()
    assert not lock.locked and not relay.locked
    assert relay.energised is not fail_safe
    lock.lock()
    assert relay.locked and lock.operations == ["unlock", "lock"]
    lock.close()


@pytest.mark.parametrize(("fail_safe", "active_low"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("exit_by", ["normal", "exception", "keyboard-interrupt", "hardware"])
def test_every_exit_path_leaves_the_relay_locked(
    board: Board, clock: ManualClock, fail_safe: bool, active_low: bool, exit_by: str
) -> None:
    lock, switch, relay, _ = make(board, clock, fail_safe=fail_safe, active_low=active_low)
    raised: type[BaseException] | None = {
        "exception": RuntimeError,
        "keyboard-interrupt": KeyboardInterrupt,
    }.get(exit_by)
    if exit_by == "hardware":  # the daemon's path: Hardware.close() in a finally
        hardware = Hardware(source=_NoSource(), lock=lock, door=switch, closers=[lock.close])
        lock.unlock()
        assert not relay.locked
        hardware.close()
    elif raised is None:
        with lock:
            lock.unlock()
            assert not relay.locked
    else:
        with pytest.raises(raised), lock:
            lock.unlock()
            assert not relay.locked
            raise raised()
    assert relay.locked
    with pytest.raises(HardwareError, match="unlock after close"):
        lock.unlock()
    assert relay.locked


class _NoSource:
    sample_rate_hz = 80.0
    calibrations = ()

    def read(self, until: float) -> Any:
        raise AssertionError

    def close(self) -> None:
        pass


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, os, signal, sys, time
    from firmware_mock.gpio import Board, install
    from firmware_mock.gpio import rpi as GPIO
    from edge.hardware.doorlock import GpioLock

    fail_safe, active_low, how = sys.argv[1] == "1", sys.argv[2] == "1", sys.argv[3]
    board = Board()
    install(board)
    relay = board.add_lock_relay(17, active_low=active_low, fail_safe=fail_safe)
    # registered first, so it runs last: after the lock's own exit handler
    atexit.register(lambda: print(f"relay locked={relay.locked}", flush=True))
    GPIO.setmode(GPIO.BCM)
    lock = GpioLock(GPIO, 17, active_low=active_low, fail_safe=fail_safe)
    lock.unlock()
    print(f"unlocked relay locked={relay.locked}", flush=True)
    if how == "exit":
        sys.exit(0)
    if how == "exception":
        raise ValueError("boom")
    if how == "keyboard-interrupt":
        raise KeyboardInterrupt
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    """
)


@pytest.mark.parametrize("how", ["exit", "exception", "keyboard-interrupt", "sigterm"])
def test_process_exit_leaves_the_relay_locked(tmp_path: Path, how: str) -> None:
    """atexit and SIGTERM: no close(), no context manager; the process just ends."""
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(int(fs)), str(int(al)), how],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for fs, al in VARIANTS
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert "unlocked relay locked=False" in out, err
        assert out.rstrip().endswith("relay locked=True"), (out, err)
        if how == "sigterm":
            assert proc.returncode == 128 + 15


def test_release_is_bounded_by_max_unlock_s(board: Board, clock: ManualClock) -> None:
    lock, _, relay, _ = make(board, clock)
    lock.unlock()
    clock.advance(14.9)
    lock.tick()
    assert not relay.locked
    clock.advance(0.2)
    lock.tick()
    assert relay.locked and lock.locked
    assert lock.alarms == []
    lock.close()


def test_door_close_relocks(board: Board, clock: ManualClock) -> None:
    lock, switch, relay, door = make(board, clock)
    lock.unlock()
    door.open = True
    assert run_for(clock, switch, 0.1) == 1 and switch.is_open
    assert not relay.locked  # still released while the door is open
    door.open = False
    assert run_for(clock, switch, 0.1) == 1 and not switch.is_open
    assert relay.locked and lock.locked  # relocked as the switch said closed
    assert lock.alarms == []
    lock.close()


def test_reed_switch_debounce(board: Board, clock: ManualClock) -> None:
    lock, switch, _, door = make(board, clock, bounce_s=0.004)
    seen: list[tuple[float, bool]] = []
    switch.add_listener(lambda is_open: seen.append((clock(), is_open)))
    # the door opens: the pin bounces for 4 ms; one change, 30-35 ms later
    door.open = True
    opened = clock()
    run_for(clock, switch, 0.1)
    assert len(seen) == 1 and seen[0][1] is True
    assert 0.030 <= seen[0][0] - opened <= 0.036
    # a 10 ms glitch (the door rattles) is no change
    door.open = False
    run_for(clock, switch, 0.010)
    door.open = True
    run_for(clock, switch, 0.1)
    assert len(seen) == 1 and switch.is_open
    # polled rarely (every 50 ms, as the daemon reads is_open), still one change
    door.open = False
    for _ in range(4):
        clock.advance(0.05)
        switch.poll()
    assert [s for _, s in seen] == [True, False]
    lock.close()


def test_lock_commanded_while_door_open_raises_an_alarm(board: Board, clock: ManualClock) -> None:
    received: list[LockAlarm] = []
    lock, switch, relay, door = make(board, clock, on_alarm=received.append)
    lock.lock()  # door closed: no alarm
    assert lock.alarms == []
    lock.unlock()
    door.open = True
    run_for(clock, switch, 0.1)
    lock.lock()
    lock.lock()  # the same opening: one alarm
    assert relay.locked
    assert [a.kind for a in lock.alarms] == ["locked_while_open"]
    assert received == lock.alarms
    assert "door switch on GPIO 27 reads open" in lock.alarms[0].detail
    door.open = False
    run_for(clock, switch, 0.1)
    door.open = True
    run_for(clock, switch, 0.1)
    lock.lock()  # a new opening: a new alarm
    assert len(lock.alarms) == 2
    lock.close()


def test_relay_write_failure_is_a_hardware_error_and_tries_to_engage(board: Board) -> None:
    relay = board.add_lock_relay(LOCK)
    lock = GpioLock(GPIO, LOCK, start=False, handle_signals=False)
    GPIO.cleanup(LOCK)  # the pin is gone: every output() raises
    with pytest.raises(HardwareError, match="lock relay on GPIO 17"):
        lock.unlock()
    assert lock.locked and relay.locked and lock.engage_failures == 1
    lock.close()


def test_create_door_lock_from_config(board: Board) -> None:
    config = load_config(EMULATED)
    relay = board.add_lock_relay(LOCK)
    board.add_reed_switch(DOOR, lambda: True)
    lock, door = create_door_lock(config, GPIO)
    try:
        assert lock.max_unlock_s == 15.0 and lock.locked and relay.locked
        assert door.is_open  # the switch's first reading is believed at once
    finally:
        door.close()
        lock.close()


@pytest.mark.parametrize(
    ("table", "edit", "message"),
    [
        ("lock", {"pin": None}, "hardware.lock.pin: missing"),
        ("lock", {"pin": 30}, "hardware.lock.pin: must be a BCM GPIO number"),
        ("lock", {"fail_safe": "yes"}, "hardware.lock.fail_safe: must be true or false"),
        ("lock", {"max_unlock_s": 0}, "hardware.lock.max_unlock_s: must be > 0"),
        ("lock", {"relay": 1}, "hardware.lock.relay: unknown key"),
        ("door", {"open_level": "up"}, "hardware.door.open_level: must be one of 'high', 'low'"),
        ("door", {"debounce_ms": -1}, "hardware.door.debounce_ms: must be >= 0"),
        ("door", {"poll_ms": 50}, "hardware.door.poll_ms: must not exceed debounce_ms"),
    ],
)
def test_config_errors_name_the_key(table: str, edit: dict[str, Any], message: str) -> None:
    config = load_config(EMULATED)
    hardware = copy.deepcopy(config.hardware)
    for key, value in edit.items():
        if value is None:
            del hardware[table][key]
        else:
            hardware[table][key] = value
    bad = dataclasses.replace(config, hardware=hardware)
    with pytest.raises(ConfigError, match=message):
        (lock_config if table == "lock" else door_config)(bad)


def test_default_max_unlock_is_the_unlock_window() -> None:
    config = load_config(EMULATED)
    hardware = copy.deepcopy(config.hardware)
    del hardware["lock"]["max_unlock_s"]
    sessions = dataclasses.replace(config.sessions, unlock_window_s=9.0)
    cfg = dataclasses.replace(config, hardware=hardware, sessions=sessions)
    assert lock_config(cfg).max_unlock_s == 9.0
    assert door_config(cfg).pull == "up"  # open_level high: the pull-up wiring

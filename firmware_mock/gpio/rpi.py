"""The ``RPi.GPIO`` API over an emulated ``Board``.

``install(board)`` registers this module as ``RPi.GPIO`` (and a package ``RPi``)
in ``sys.modules``, so ``import RPi.GPIO as GPIO`` anywhere, including inside the
PyPI ``hx711`` driver, drives the board's pins. Every call goes to the board that
is installed *now*: a driver imported once keeps working across ``install``/
``uninstall`` of successive boards. ``uninstall()`` restores what was there.

Implemented (same arguments, errors and messages as RPi.GPIO 0.7): ``setmode``,
``getmode``, ``setwarnings``, ``setup`` (``pull_up_down``, ``initial``),
``output``, ``input``, ``cleanup``, ``gpio_function`` and the constants. Edge
detection (``add_event_detect``, ``wait_for_edge``) and PWM are not emulated:
freshbox polls its inputs.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Sequence
from typing import Any

from firmware_mock.gpio.board import (
    BCM,
    BOARD,
    BOARD_TO_BCM,
    BOTH,
    FALLING,
    HEADER_GPIOS,
    HIGH,
    IN,
    LOW,
    OUT,
    PUD_DOWN,
    PUD_OFF,
    PUD_UP,
    RISING,
    Board,
)

__all__ = [
    "BCM",
    "BOARD",
    "BOTH",
    "FALLING",
    "HIGH",
    "IN",
    "LOW",
    "OUT",
    "PUD_DOWN",
    "PUD_OFF",
    "PUD_UP",
    "RISING",
    "cleanup",
    "getmode",
    "gpio_function",
    "input",
    "install",
    "installed_board",
    "output",
    "setmode",
    "setup",
    "setwarnings",
    "uninstall",
]

VERSION = "0.7.1"
UNKNOWN = -1
SERIAL, SPI, I2C, HARD_PWM = 40, 41, 42, 43
RPI_INFO: dict[str, Any] = {
    "P1_REVISION": 3,
    "REVISION": "c03114",
    "TYPE": "Pi 4 Model B",
    "MANUFACTURER": "Sony UK",
    "PROCESSOR": "BCM2711",
    "RAM": "4GB",
}
RPI_REVISION = 3

_board: Board | None = None
_install_lock = threading.Lock()
_saved: dict[str, types.ModuleType | None] | None = None
_package = types.ModuleType("RPi", "Emulated RPi package (firmware_mock.gpio)")
_package.__path__ = []


# ------------------------------------------------------------ install


def install(board: Board) -> None:
    """Make ``import RPi.GPIO`` return this module, driving ``board`` (replacing any
    board installed before: one header per process)."""
    global _board, _saved
    this = sys.modules[__name__]
    with _install_lock:
        if _saved is None:
            _saved = {name: sys.modules.get(name) for name in ("RPi", "RPi.GPIO")}
        _package.GPIO = this  # type: ignore[attr-defined]
        sys.modules["RPi"] = _package
        sys.modules["RPi.GPIO"] = this
        _board = board


def uninstall(board: Board | None = None) -> None:
    """Remove the emulation (only if ``board``, when given, is the one installed) and
    restore the modules it replaced."""
    global _board, _saved
    with _install_lock:
        if board is not None and board is not _board:
            return
        _board = None
        if _saved is not None:
            for name, module in _saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
            _saved = None


def installed_board() -> Board | None:
    """The board the ``RPi.GPIO`` emulation drives now."""
    return _board


def _current() -> Board:
    board = _board
    if board is None:
        raise RuntimeError("no emulated GPIO board is installed (firmware_mock.gpio.install)")
    return board


# ------------------------------------------------------------ channels


def _to_gpio(board: Board, channel: Any) -> int:
    if board.mode is None:
        raise RuntimeError(
            "Please set pin numbering mode using GPIO.setmode(GPIO.BOARD) or GPIO.setmode(GPIO.BCM)"
        )
    if isinstance(channel, bool) or not isinstance(channel, int):
        raise ValueError("Channel must be an integer or list/tuple of integers")
    gpio = BOARD_TO_BCM.get(channel, -1) if board.mode == BOARD else channel
    if gpio not in HEADER_GPIOS:
        raise ValueError("The channel sent is invalid on a Raspberry Pi")
    return gpio


def _gpios(board: Board, chanlist: Any) -> list[int]:
    if isinstance(chanlist, list | tuple):
        return [_to_gpio(board, c) for c in chanlist]
    return [_to_gpio(board, chanlist)]


def _hold(delay: float) -> None:
    """Stay in the call as long as a device asked (after the pin's lock is released)."""
    if delay > 0.0:
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            pass


# ------------------------------------------------------------ the API


def setmode(mode: int) -> None:
    board = _current()
    if mode not in (BOARD, BCM):
        raise ValueError("An invalid mode was passed to setmode()")
    with board.mutex:
        if board.mode is not None and board.mode != mode:
            raise ValueError("A different mode has already been set!")
        board.mode = mode


def getmode() -> int | None:
    return _current().mode


def setwarnings(flag: bool) -> None:
    _current().warnings = bool(flag)


def setup(
    channel: int | Sequence[int],
    direction: int,
    pull_up_down: int = PUD_OFF,
    initial: int = -1,
) -> None:
    board = _current()
    if direction not in (IN, OUT):
        raise ValueError("An invalid direction was passed to setup()")
    if direction == OUT and pull_up_down != PUD_OFF:
        raise ValueError("pull_up_down parameter is not valid for outputs")
    if direction == IN and initial != -1:
        raise ValueError("initial parameter is not valid for inputs")
    if pull_up_down not in (PUD_OFF, PUD_DOWN, PUD_UP):
        raise ValueError(
            "Invalid value for pull_up_down - should be either PUD_OFF, PUD_UP or PUD_DOWN"
        )
    for gpio in _gpios(board, channel):
        level = None if initial == -1 else (HIGH if initial else LOW)
        _hold(board.setup(gpio, direction, pull_up_down, level, board.clock()))


def output(channel: int | Sequence[int], value: int | bool | Sequence[int | bool]) -> None:
    board = _current()
    at = board.clock()
    gpios = _gpios(board, channel)
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) == 1 and len(gpios) > 1:
        values *= len(gpios)
    if len(values) != len(gpios):
        raise RuntimeError("Number of channels != number of values")
    for gpio, v in zip(gpios, values, strict=True):
        _hold(board.write(gpio, HIGH if v else LOW, at))


def input(channel: int) -> int:
    board = _current()
    return board.read(_to_gpio(board, channel))


def cleanup(channel: int | Sequence[int] | None = None) -> None:
    """Return channels (all by default) to unconfigured inputs; cleaning up every
    channel also forgets the numbering mode."""
    board = _current()
    if channel is None:
        with board.mutex:
            for gpio in board.configured():
                board.cleanup(gpio)
            board.mode = None
        return
    for gpio in _gpios(board, channel):
        board.cleanup(gpio)


def gpio_function(channel: int) -> int:
    board = _current()
    gpio = _to_gpio(board, channel)
    return OUT if board.pin_state(gpio).direction == OUT else IN

"""An emulated Raspberry Pi GPIO header for running the real drivers without a Pi.

* ``Board``: the pins and the devices on them — HX711 chips (``Hx711Chip``, at pin
  level: DOUT ready, bits on PD_SCK edges, 25/26/27 pulses for channel and gain,
  power-down after 60 µs, settling), a lock relay (``LockRelay``) and a bouncing
  door reed switch (``ReedSwitch``); time from an injected clock (``ManualClock``
  in tests).
* ``install(board)`` / ``uninstall()``: this package's ``rpi`` module becomes
  ``RPi.GPIO`` in ``sys.modules``, so ``import RPi.GPIO`` (the PyPI ``hx711`` driver
  does it) drives the board.
* ``ShelfLoad``: the simulator's shelf physics as the chips' load;
  ``firmware_mock.gpio.cabinet.build_emulated_cabinet``: the whole cabinet of a
  configuration (``[hardware.hx711] gpio = "emulated"``).
"""

from firmware_mock.gpio.board import (
    BCM,
    BOARD,
    HIGH,
    IN,
    LOW,
    OUT,
    PUD_DOWN,
    PUD_OFF,
    PUD_UP,
    Board,
    Clock,
    LockRelay,
    ManualClock,
    Pin,
    ReedSwitch,
)
from firmware_mock.gpio.hx711chip import (
    A64,
    A128,
    B32,
    POWER_DOWN_S,
    SETTLE_S,
    Hx711Chip,
    Setting,
    from_code,
    to_code,
)
from firmware_mock.gpio.load import LockedSim, ShelfLoad
from firmware_mock.gpio.rpi import install, installed_board, uninstall

__all__ = [
    "A64",
    "A128",
    "B32",
    "BCM",
    "BOARD",
    "HIGH",
    "IN",
    "LOW",
    "OUT",
    "POWER_DOWN_S",
    "PUD_DOWN",
    "PUD_OFF",
    "PUD_UP",
    "SETTLE_S",
    "Board",
    "Clock",
    "Hx711Chip",
    "LockRelay",
    "LockedSim",
    "ManualClock",
    "Pin",
    "ReedSwitch",
    "Setting",
    "ShelfLoad",
    "from_code",
    "install",
    "installed_board",
    "to_code",
    "uninstall",
]

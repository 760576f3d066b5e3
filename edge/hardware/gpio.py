"""GPIO for the Raspberry Pi backends: the ``RPi.GPIO`` module and ``[hardware.*]`` checks.

``RPi.GPIO`` is the real module on a Raspberry Pi up to the Pi 4 (the ``pi`` extra),
``rpi-lgpio``'s drop-in ``RPi.GPIO`` on a Pi 5, or ``firmware_mock.gpio``'s emulation
(``gpio = "emulated"``). Everything here talks to whichever is given, through the
few functions of ``GpioModule``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cloud_sync.tomltable import TableReader as BaseTableReader
from edge.errors import ConfigError, HardwareError

#: BCM numbers of the GPIOs on the 40-pin header.
HEADER_GPIOS = range(28)

PI5_HINT = (
    "on a Raspberry Pi 5, RPi.GPIO cannot reach the GPIOs (they sit behind the RP1 chip): "
    "uninstall RPi.GPIO and install rpi-lgpio, which provides the same RPi.GPIO module "
    "(see docs/hardware.md)"
)


class GpioModule(Protocol):
    """What freshbox uses of ``RPi.GPIO``."""

    BCM: int
    IN: int
    OUT: int
    HIGH: int
    LOW: int
    PUD_OFF: int
    PUD_UP: int
    PUD_DOWN: int

    def setmode(self, mode: int) -> None: ...

    def setup(
        self, channel: int, direction: int, pull_up_down: int = ..., initial: int = ...
    ) -> None: ...

    def output(self, channel: int, value: int) -> None: ...

    def input(self, channel: int) -> int: ...

    def cleanup(self, channel: int | Sequence[int] | None = ...) -> None: ...


def import_rpi_gpio() -> GpioModule:
    """The installed ``RPi.GPIO`` (RPi.GPIO, or rpi-lgpio on a Pi 5)."""
    try:
        import RPi.GPIO as gpio
    except ImportError as exc:
        raise HardwareError(
            f"cannot import RPi.GPIO ({exc}): install the pi extra (pip install 'freshbox[pi]'); "
            f"{PI5_HINT}"
        ) from exc
    except RuntimeError as exc:  # RPi.GPIO raises this when not on a Raspberry Pi
        raise HardwareError(f"RPi.GPIO: {exc}; {PI5_HINT}") from exc
    module: GpioModule = gpio
    return module


def gpio_error(what: str, exc: BaseException) -> HardwareError:
    """A GPIO call failed: a HardwareError that says what, and how to fix the usual causes."""
    text = str(exc)
    hint = ""
    if "SOC peripheral base address" in text:
        hint = f"; {PI5_HINT}"
    elif "/dev/mem" in text or "/dev/gpiomem" in text or "ermission" in text:
        hint = "; run as a user in the gpio group"
    return HardwareError(f"{what}: {exc}{hint}")


class TableReader(BaseTableReader):
    """Typed access to a ``[hardware.<name>]`` table; errors name the file and the key,
    ``"<file>: hardware.hx711.<key>: <problem>"``."""

    error = ConfigError

    def choice(self, name: str, choices: Sequence[str], default: Any = ...) -> str:
        v = self.get(name, default)
        if not isinstance(v, str) or v not in choices:
            raise self.fail(name, f"must be one of {', '.join(repr(c) for c in choices)}")
        return v

    def pin(self, name: str, default: Any = ...) -> int:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v not in HEADER_GPIOS:
            raise self.fail(name, "must be a BCM GPIO number of the 40-pin header (0-27)")
        return v

    def pins(self, name: str, count: int, *, what: str) -> tuple[int, ...]:
        v = self.get(name)
        if not isinstance(v, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p in HEADER_GPIOS for p in v
        ):
            raise self.fail(name, "must be a list of BCM GPIO numbers of the 40-pin header (0-27)")
        if len(v) != count:
            raise self.fail(name, f"has {len(v)} pins for {count} {what}")
        if len(set(v)) != len(v):
            raise self.fail(name, "lists a pin twice")
        return tuple(v)


def table(config: Any, name: str, *, required: bool = True) -> TableReader:
    """The reader of ``[hardware.<name>]`` of a ``CabinetConfig``."""
    raw = config.hardware.get(name)
    if raw is None:
        if required:
            raise ConfigError(f"{config.source}: hardware.{name}: missing (the {name} table)")
        raw = {}
    return TableReader(config.source, raw, f"hardware.{name}")

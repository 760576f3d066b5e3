"""GPIO for the Raspberry Pi backends: the ``RPi.GPIO`` module and ``[hardware.*]`` checks.

``RPi.GPIO`` is the real module on a Raspberry Pi up to the Pi 4 (the ``pi`` extra),
``rpi-lgpio``'s drop-in ``RPi.GPIO`` on a Pi 5, or ``firmware_mock.gpio``'s emulation
(``gpio = "emulated"``). Everything here talks to whichever is given, through the
few functions of ``GpioModule``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

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


class TableReader:
    """Typed access to a ``[hardware.<name>]`` table; errors name the file and the key,
    ``"<file>: hardware.hx711.<key>: <problem>"``."""

    def __init__(self, source: str, table: Any, path: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {path}: must be a table")
        self.source = source
        self.table: dict[str, Any] = table
        self.path = path
        self.used: set[str] = set()

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.path}.{name}: {problem}")

    def has(self, name: str) -> bool:
        return name in self.table

    def get(self, name: str, default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                raise self.fail(name, "missing")
            return default
        return self.table[name]

    def choice(self, name: str, choices: Sequence[str], default: Any = ...) -> str:
        v = self.get(name, default)
        if not isinstance(v, str) or v not in choices:
            raise self.fail(name, f"must be one of {', '.join(repr(c) for c in choices)}")
        return v

    def bool_(self, name: str, default: Any = ...) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise self.fail(name, "must be true or false")
        return v

    def int_(self, name: str, default: Any = ..., *, minimum: int | None = None) -> int:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(name, "must be an integer")
        if minimum is not None and v < minimum:
            raise self.fail(name, f"must be >= {minimum}")
        return v

    def num(self, name: str, default: Any = ..., *, positive: bool = True) -> float:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(name, "must be a number")
        if positive and v <= 0:
            raise self.fail(name, "must be > 0")
        if v < 0:
            raise self.fail(name, "must be >= 0")
        return float(v)

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

    def sub(self, name: str) -> TableReader:
        return TableReader(self.source, self.get(name, {}), f"{self.path}.{name}")

    def done(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key")


def table(config: Any, name: str, *, required: bool = True) -> TableReader:
    """The reader of ``[hardware.<name>]`` of a ``CabinetConfig``."""
    raw = config.hardware.get(name)
    if raw is None:
        if required:
            raise ConfigError(f"{config.source}: hardware.{name}: missing (the {name} table)")
        raw = {}
    return TableReader(config.source, raw, f"hardware.{name}")

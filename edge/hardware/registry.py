"""Hardware backends by name, as ``[hardware] backend`` in the cabinet TOML chooses them.

A backend is a ``module:function`` that takes the validated ``CabinetConfig`` and
returns a ``Hardware``. The simulated backend lives in ``firmware_mock`` and is
imported only when a configuration asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.errors import ConfigError
from edge.hardware.interfaces import DoorSwitch, Lock, WeightSource

if TYPE_CHECKING:
    from edge.config import CabinetConfig

BACKENDS: dict[str, str] = {
    "sim": "firmware_mock.live:create_hardware",
    "hx711": "edge.hardware.hx711:create_hardware",
    "modbus": "edge.hardware.modbus:create_hardware",
}


@dataclass(slots=True)
class Hardware:
    """The devices of one cabinet."""

    source: WeightSource
    lock: Lock
    door: DoorSwitch
    #: called every loop with (cabinet, t): drives simulated residents; None on real hardware
    actors: Callable[[Any, float], None] | None = None
    #: the cabinet's temperature sensor (°C), where one exists
    temperature: Callable[[], float | None] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Leave the lock engaged, then release every device."""
        try:
            self.lock.lock()
        finally:
            self.source.close()
            for close in self.closers:
                close()


def create_hardware(config: CabinetConfig, **kwargs: Any) -> Hardware:
    """Build the backend the configuration names."""
    target = BACKENDS.get(config.backend)
    if target is None:
        raise ConfigError(f"{config.source}: hardware.backend: unknown backend {config.backend!r}")
    module_name, _, func = target.partition(":")
    factory = getattr(importlib.import_module(module_name), func)
    hardware: Hardware = factory(config, **kwargs)
    return hardware

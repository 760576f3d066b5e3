"""The simulator's shelf physics as the load on emulated HX711 chips.

``ShelfLoad`` maps board time to simulator time (``t - t0``) and gives each chip
the raw counts of its channel at the instant of a conversion: the simulator's
latest sample at or before it (``k = floor((t - t0) * fs)``). So the PyPI ``hx711``
driver, reading the emulated pins, sees the same physics as the ``sim`` backend.

The simulator is shared by the driver threads (through the chips) and by the
daemon thread (the simulated shoppers act on it): ``ShelfLoad.mutex`` serialises
them, and ``LockedSim`` wraps the simulator for the shoppers so that each of their
calls holds it only for that call (never while they call into the cabinet).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from firmware_mock.simulator import SimulatedCabinet

#: Samples kept for chips that read a little late (s).
KEEP_S = 10.0


class ShelfLoad:
    """Raw counts per channel of a live ``SimulatedCabinet`` at board times."""

    def __init__(self, sim: SimulatedCabinet, t0: float) -> None:
        if sim.now != 0.0:
            raise ValueError("ShelfLoad needs a fresh live simulator (now = 0)")
        self.sim = sim
        self.t0 = t0
        self.fs = sim.sample_rate_hz
        self.mutex = threading.RLock()
        self._rows: deque[np.ndarray[Any, Any]] = deque()
        self._base = 0  # sample index of _rows[0]
        self._next = 0  # the next sample the simulator produces
        self._keep = max(16, int(KEEP_S * self.fs))

    def channel(self, column: int) -> Callable[[float], int | None]:
        """The load of raw column ``column`` (the order of the simulator's calibrations)."""

        def load(t: float) -> int | None:
            return self.counts(column, t)

        return load

    def counts(self, column: int, t: float) -> int | None:
        """Raw counts of ``column`` at board time ``t`` (None: no reading, or too old)."""
        k = math.floor((t - self.t0) * self.fs + 1e-9)
        if k < 0:
            return None
        with self.mutex:
            if k >= self._next:
                self._store(self.sim.advance((k + 1) / self.fs))
            if k < self._base:
                return None
            v = float(self._rows[k - self._base][column])
        return None if math.isnan(v) else int(v)

    def advance_to(self, t: float) -> None:
        """Bring the simulator to board time ``t`` (before the shoppers act on it)."""
        with self.mutex:
            if t - self.t0 > self.sim.now:
                self._store(self.sim.advance(t - self.t0))

    def _store(self, block: Any) -> None:
        raw = block.raw
        for i in range(raw.shape[0]):
            self._rows.append(raw[i])
        self._next += raw.shape[0]
        while len(self._rows) > self._keep:
            self._rows.popleft()
            self._base += 1


class LockedSim:
    """A ``SimulatedCabinet`` whose every attribute read and method call holds ``mutex``."""

    def __init__(self, sim: SimulatedCabinet, mutex: threading.RLock) -> None:
        object.__setattr__(self, "_sim", sim)
        object.__setattr__(self, "_mutex", mutex)

    def __getattr__(self, name: str) -> Any:
        sim = object.__getattribute__(self, "_sim")
        mutex = object.__getattribute__(self, "_mutex")
        with mutex:
            value = getattr(sim, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with mutex:
                return value(*args, **kwargs)

        return call

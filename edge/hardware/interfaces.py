"""What the daemon needs from hardware. Backends implement these protocols.

* ``WeightSource``: timestamped raw counts of every load-cell channel.
* ``Lock``: the door lock relay. ``locked`` is the commanded state; relay off is
  locked (fail-secure), so a backend that loses power or crashes stays locked.
* ``DoorSwitch``: the reed switch on the door.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from edge.model import Calibration, SampleBlock


@runtime_checkable
class WeightSource(Protocol):
    """A source of raw load-cell samples."""

    @property
    def sample_rate_hz(self) -> float: ...

    @property
    def calibrations(self) -> tuple[Calibration, ...]: ...

    def read(self, until: float) -> SampleBlock:
        """Samples taken up to ``until`` (seconds on the cabinet clock) not yet returned."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Lock(Protocol):
    """The door lock."""

    @property
    def locked(self) -> bool: ...

    def unlock(self) -> None:
        """Release the lock so the door can be opened."""
        ...

    def lock(self) -> None:
        """Engage the lock (idempotent)."""
        ...


@runtime_checkable
class DoorSwitch(Protocol):
    """The door switch."""

    @property
    def is_open(self) -> bool: ...


class MemoryLock:
    """A lock that only remembers its state: for virtual-time runs and replays,
    where the door events come from the recording, not from a relay."""

    def __init__(self) -> None:
        self._locked = True
        self.operations: list[str] = []

    @property
    def locked(self) -> bool:
        return self._locked

    def unlock(self) -> None:
        self._locked = False
        self.operations.append("unlock")

    def lock(self) -> None:
        if not self._locked:
            self.operations.append("lock")
        self._locked = True

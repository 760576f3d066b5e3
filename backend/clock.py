"""Wall-clock time, injected: handlers and services ask ``Clock.now()``, tests set it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloud_sync.records import format_at

__all__ = ["Clock", "FixedClock", "iso"]


def iso(t: datetime) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``, the form every stored time has."""
    return format_at(t)


class Clock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def iso(self) -> str:
        return iso(self.now())


class FixedClock(Clock):
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)

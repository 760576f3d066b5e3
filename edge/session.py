"""Door sessions: the states a cabinet goes through between a verified unlock and a bill."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Phase(enum.Enum):
    """Where a session is. IDLE means no session."""

    UNLOCKED = "unlocked"  # unlock verified, lock released, door not yet opened
    OPEN = "open"  # the door is open: the resident is shopping
    SETTLING = "closed"  # the door closed; waiting until every lane is provably settled


SessionKind = str  # "resident", "operator" (restocking) or "forced" (door forced open)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Timing rules of a door session (seconds)."""

    unlock_window_s: float = 15.0  # an unlock whose door does not open by then expires
    door_alarm_s: float = 120.0  # a door open longer raises door_open_too_long
    max_settle_s: float = 8.0  # bill anyway (flag needs_review) if not settled by then


@dataclass(slots=True)
class Session:
    """One session as the controller tracks it."""

    session_id: str
    resident: str
    role: SessionKind
    unlocked_at: float
    phase: Phase = Phase.UNLOCKED
    opened_at: float | None = None
    closed_at: float | None = None
    baseline: dict[int, float] = field(default_factory=dict)  # lane -> g before the door opened
    baseline_sigma: dict[int, float] = field(default_factory=dict)
    alarmed: bool = False
    recovered: bool = False
    faulted_lanes: set[int] = field(default_factory=set)
    #: restocking: per tracked lane, the plateaus seen while the door was open (g)
    plateaus: dict[int, list[float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What a finished session produced: the bill record of ``docs/bills.md``."""

    session_id: str
    record: dict[str, Any]

"""Plain data shared by every layer of the cabinet: lanes, channels, sensor blocks, events.

Units: weights in grams (g), money in integer fen (1 CNY = 100 fen), time in seconds
on the cabinet's clock (virtual in simulations and replays, monotonic in the daemon).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

LaneMode = Literal["unit", "tracked", "weighed"]
LANE_MODES: tuple[LaneMode, ...] = ("unit", "tracked", "weighed")
Role = Literal["resident", "operator"]

#: The HX711's "no valid conversion" codes (0x7FFFFF and 0x800000 as signed 24-bit).
INVALID_CODES: tuple[int, int] = (8388607, -8388608)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Lane:
    """One shelf lane: one SKU on one load-cell channel."""

    lane: int
    sku: str
    mode: LaneMode
    channel: int
    name: str = ""
    price_fen: int | None = None  # unit and tracked lanes: price of one item
    price_fen_per_kg: int | None = None  # weighed lanes
    unit_weight_g: float | None = None  # unit lanes: nominal weight of one pack
    unit_weight_sd_g: float | None = None  # unit lanes: spread of pack weights


@dataclass(frozen=True, slots=True)
class Calibration:
    """A load-cell channel's calibration: g = (raw - zero_counts) / counts_per_g."""

    channel: int
    zero_counts: float
    counts_per_g: float


@dataclass(frozen=True, slots=True)
class SampleBlock:
    """Consecutive samples of every channel.

    ``t`` has shape (n,), seconds, strictly increasing. ``raw`` has shape (n, channels):
    signed 24-bit counts as float64, NaN where a channel gave no reading; the invalid
    codes of ``INVALID_CODES`` may appear and are never weights.
    """

    t: FloatArray
    raw: FloatArray


@dataclass(frozen=True, slots=True)
class UnlockEvent:
    """A verified unlock: a resident may shop, or an operator may restock."""

    t: float
    resident: str
    role: Role = "resident"
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """The door switch changed state."""

    t: float
    open: bool


CabinetInput = SampleBlock | UnlockEvent | DoorEvent


@dataclass(frozen=True, slots=True)
class CabinetSpec:
    """What a cabinet is: its channels with their calibration, its lanes and recorded stock."""

    cabinet_id: str
    sample_rate_hz: float
    calibrations: tuple[Calibration, ...]
    lanes: tuple[Lane, ...]
    #: tracked lanes: item weights recorded at stocking, by lane number
    stock: dict[int, list[float]] = field(default_factory=dict)

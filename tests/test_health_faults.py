"""Channel faults the daemon raises while it runs: sensor_fault events with a reason,
and a bill touching a faulted lane is flagged instead of guessed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.cabinet import Cabinet, utc_epoch
from edge.hardware.interfaces import MemoryLock
from edge.model import INVALID_CODES, CabinetSpec, Calibration, Lane, SampleBlock
from edge.store import CabinetStore

RATE = 80.0
CAL = (Calibration(0, 1000.0, 200.0), Calibration(1, -500.0, 210.0))
LANES = (
    Lane(
        lane=1,
        sku="tomato-500",
        mode="unit",
        channel=0,
        price_fen=690,
        unit_weight_g=500.0,
        unit_weight_sd_g=6.0,
    ),
    Lane(
        lane=2,
        sku="chili-150",
        mode="unit",
        channel=1,
        price_fen=380,
        unit_weight_g=150.0,
        unit_weight_sd_g=5.0,
    ),
)
SPEC = CabinetSpec("cab-h", RATE, CAL, LANES)


@pytest.fixture
def cabinet(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = CabinetStore(tmp_path / "cab.db", cabinet_id="cab-h")
    cab = Cabinet(SPEC, store=store, lock=MemoryLock(), epoch=utc_epoch())
    yield cab
    store.close()


def feed(
    cab: Cabinet,
    seconds: float,
    grams: tuple[float, float],
    *,
    start: float,
    channel0: str = "ok",
    rng: np.random.Generator | None = None,
) -> float:
    rng = rng or np.random.default_rng(0)
    n = int(seconds * RATE)
    t = start + np.arange(n) / RATE
    g = np.array(grams) + rng.normal(0, 1.0, (n, 2))
    raw = np.round(
        np.array([c.zero_counts for c in CAL]) + g * np.array([c.counts_per_g for c in CAL])
    )
    if channel0 == "stuck":
        raw[:, 0] = 101234.0
    elif channel0 == "invalid":
        raw[rng.random(n) < 0.7, 0] = INVALID_CODES[0]
    elif channel0 == "noisy":
        raw[:, 0] += rng.normal(0, 40.0 * 200.0, n)
    for i in range(0, n, 4):
        cab.feed(SampleBlock(t[i : i + 4], raw[i : i + 4]))
    return float(t[-1]) + 1 / RATE


def faults(cab: Cabinet) -> list[dict[str, object]]:
    return [e for e in cab.out.events if e["type"] == "sensor_fault"]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("stuck", "stuck value"), ("invalid", "% invalid readings"), ("noisy", "out of band")],
)
def test_each_fault_is_raised_once_with_its_reason(
    cabinet: Cabinet, kind: str, reason: str
) -> None:
    t = feed(cabinet, 3.0, (1000.0, 600.0), start=0.0)
    assert faults(cabinet) == []  # a healthy start raises nothing
    feed(cabinet, 8.0, (1000.0, 600.0), start=t, channel0=kind)
    found = faults(cabinet)
    assert len(found) == 1, found
    assert found[0]["lane"] == 1 and reason in str(found[0]["reason"])
    stored = cabinet.store.events(type="sensor_fault")
    assert len(stored) == 1


def test_a_bill_touching_a_stuck_lane_is_flagged_not_guessed(cabinet: Cabinet) -> None:
    t = feed(cabinet, 3.0, (1000.0, 600.0), start=0.0)
    cabinet.unlock(t, "r-1")
    cabinet.door(t + 0.5, True)
    # lane 1's converter sticks while the door is open; lane 2 loses a chili
    t = feed(cabinet, 3.0, (1000.0, 450.0), start=t + 0.5, channel0="stuck")
    cabinet.door(t, False)
    feed(cabinet, 3.0, (1000.0, 450.0), start=t, channel0="stuck")
    [bill] = cabinet.out.sessions
    assert "sensor_fault" in bill["flags"]
    assert [(ln["sku"], ln["qty"]) for ln in bill["lines"]] == [("chili-150", 1)]


def test_alarms_from_outside_the_pipeline_are_stored(cabinet: Cabinet) -> None:
    cabinet.alarm(12.0, "locked_while_open", detail="lock engaged with the door open")
    [event] = cabinet.store.events(type="locked_while_open")
    assert event.data["detail"] == "lock engaged with the door open"

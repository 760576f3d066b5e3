"""The simulated cabinet: physics statistics, determinism, the stream, live use, truth."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.errors import InputError
from edge.hardware.interfaces import DoorSwitch, WeightSource
from edge.model import (
    INVALID_CODES,
    CabinetInput,
    Calibration,
    DoorEvent,
    Lane,
    SampleBlock,
    UnlockEvent,
)
from firmware_mock.corpus import generate_scenario
from firmware_mock.scenario import (
    Action,
    Physics,
    Scenario,
    load_scenario,
    parse_scenario,
    scenario_to_dict,
)
from firmware_mock.simulator import SimulatedCabinet

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "scenarios").glob("*.json"))
CLEAN = Physics(noise_g=0.0, invalid_rate=0.0, drift_g_per_min=0.0, moisture_loss_pct_per_day=0.0)
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def cabinet(
    physics: Physics,
    timeline: list[dict[str, Any]] | None = None,
    *,
    lanes: int = 4,
    seed: int = 7,
    weighed: bool = False,
) -> Scenario:
    """A cabinet of ``lanes`` unit lanes of 4 x 500 g packs (lane 1 weighed if asked)."""
    lane_list: list[dict[str, Any]] = [
        {
            "lane": n,
            "sku": f"sku-{n}",
            "mode": "unit",
            "unit_weight_g": 500,
            "unit_weight_sd_g": 5,
            "price_fen": 100,
        }
        for n in range(1, lanes + 1)
    ]
    if weighed:
        lane_list[0] = {"lane": 1, "sku": "greens", "mode": "weighed", "price_fen_per_kg": 900}
    return parse_scenario(
        {
            "format": "freshbox-scenario/1",
            "seed": seed,
            "physics": dataclasses.asdict(physics),
            "lanes": lane_list,
            "stock": {str(n): [500.0, 500.0, 500.0, 500.0] for n in range(1, lanes + 1)},
            "timeline": timeline or [{"t": 60.0, "do": "wait"}],
        },
        "test",
    )


def collect(items: Iterable[CabinetInput]) -> tuple[FloatArray, FloatArray, list[Any]]:
    """All samples (t, raw) and the events with the number of samples before each."""
    ts: list[FloatArray] = []
    raws: list[FloatArray] = []
    events: list[Any] = []
    n = 0
    for it in items:
        if isinstance(it, SampleBlock):
            ts.append(it.t)
            raws.append(it.raw)
            n += it.t.shape[0]
        else:
            events.append((n, it))
    return np.concatenate(ts), np.concatenate(raws), events


def grams(sim: SimulatedCabinet, raw: FloatArray) -> FloatArray:
    zero = np.array([c.zero_counts for c in sim.calibrations])
    cpg = np.array([c.counts_per_g for c in sim.calibrations])
    bad = np.isnan(raw) | (raw == INVALID_CODES[0]) | (raw == INVALID_CODES[1])
    g: FloatArray = (raw - zero) / cpg
    g[bad] = np.nan
    return g


def run(s: Scenario, glitch_rate: float = 0.0) -> tuple[SimulatedCabinet, FloatArray, FloatArray]:
    sim = SimulatedCabinet(s, glitch_rate=glitch_rate)
    t, raw, _ = collect(sim.stream())
    return sim, t, grams(sim, raw)


# ------------------------------------------------------------------ determinism, calibration


def test_same_seed_same_samples_other_seed_other_samples() -> None:
    s = load_scenario(FIXTURES[0])
    _, raw1, ev1 = collect(SimulatedCabinet(s).stream())
    _, raw2, ev2 = collect(SimulatedCabinet(s).stream(block_s=0.0375))
    assert np.array_equal(raw1, raw2, equal_nan=True) and ev1 == ev2
    _, raw3, _ = collect(SimulatedCabinet(dataclasses.replace(s, seed=99)).stream())
    assert not np.array_equal(raw1, raw3, equal_nan=True)


def test_calibrations_and_counts() -> None:
    s = cabinet(CLEAN, lanes=16)
    sim = SimulatedCabinet(s, glitch_rate=0.0)
    assert [c.channel for c in sim.calibrations] == list(range(16))
    for c in sim.calibrations:
        assert abs(c.zero_counts) <= 150000 and 180 <= c.counts_per_g <= 240
    assert sim.spec.calibrations == sim.calibrations and sim.spec.sample_rate_hz == 80.0
    raw = sim.advance(1.0).raw
    expected = np.rint(
        np.array([c.zero_counts + c.counts_per_g * 2000.0 for c in sim.calibrations])
    )
    assert np.array_equal(raw, np.broadcast_to(expected, raw.shape))
    other = SimulatedCabinet(dataclasses.replace(s, seed=8)).calibrations
    assert other != sim.calibrations


def test_raw_counts_are_clipped_to_24_bits() -> None:
    s = cabinet(CLEAN, lanes=1)
    s = dataclasses.replace(s, stock={1: [40000.0, 40000.0]})
    raw = SimulatedCabinet(s, glitch_rate=0.0).advance(0.5).raw
    assert np.all(raw == INVALID_CODES[0])


# ------------------------------------------------------------------ statistics


def test_noise_std_is_noise_g() -> None:
    s = cabinet(dataclasses.replace(CLEAN, noise_g=2.5), lanes=8)
    _, _, g = run(s, glitch_rate=0.0)
    std = np.nanstd(g, axis=0)
    assert np.all(np.abs(std - 2.5) < 0.25), std


def test_invalid_share_and_kinds() -> None:
    s = cabinet(dataclasses.replace(CLEAN, invalid_rate=0.04), lanes=8)
    sim = SimulatedCabinet(s, glitch_rate=0.0)
    _, raw, _ = collect(sim.stream())
    n = raw.size
    high = np.count_nonzero(raw == INVALID_CODES[0]) / n
    low = np.count_nonzero(raw == INVALID_CODES[1]) / n
    missing = np.count_nonzero(np.isnan(raw)) / n
    assert abs(high + low + missing - 0.04) < 0.004
    for share in (high, low, missing):
        assert abs(share - 0.04 / 3) < 0.003


def test_glitches_are_rare_single_samples_of_tens_of_grams() -> None:
    s = cabinet(dataclasses.replace(CLEAN, noise_g=1.0), lanes=8)
    _, _, g = run(s, glitch_rate=0.001)
    dev = np.abs(g - np.nanmedian(g, axis=0))
    glitch = dev > 10.0
    share = np.count_nonzero(glitch) / g.size
    assert 0.0006 < share < 0.0014
    assert np.all((dev[glitch] > 15.0) & (dev[glitch] < 65.0))
    rows, cols = np.nonzero(glitch)
    assert not np.any((np.diff(rows) == 1) & (np.diff(cols) == 0))  # isolated samples
    _, _, clean = run(s, glitch_rate=0.0)
    assert np.nanmax(np.abs(clean - np.nanmedian(clean, axis=0))) < 8.0


def test_drift_is_a_random_walk_of_drift_g_per_min() -> None:
    physics = dataclasses.replace(CLEAN, drift_g_per_min=5.0)
    walks = []
    for seed in range(8):
        sim = SimulatedCabinet(cabinet(physics, lanes=16, seed=seed), glitch_rate=0.0)
        g = grams(sim, sim.advance(60.0 + 1e-9).raw)
        walks.append(g[-1] - g[0])
    std = float(np.std(np.concatenate(walks)))
    assert 4.0 < std < 6.0, std


def test_moisture_loss_on_weighed_lanes_only() -> None:
    physics = dataclasses.replace(CLEAN, moisture_loss_pct_per_day=2.0)
    sim = SimulatedCabinet(cabinet(physics, lanes=2, weighed=True), glitch_rate=0.0)
    first = grams(sim, sim.advance(0.01).raw)[0]
    sim.advance(3600.0)
    last = grams(sim, sim.advance(3600.01).raw)[-1]
    expected = 2000.0 * (1.0 - 0.98 ** (1 / 24))  # 0.84 g in an hour
    assert abs((first[0] - last[0]) - expected) < 0.02
    assert abs(first[1] - last[1]) < 0.01


# ------------------------------------------------------------------ load changes


def _gesture_run(physics: Physics, action: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
    timeline = [
        {"t": 0.5, "do": "unlock", "resident": "r"},
        {"t": 1.0, "do": "open"},
        action,
        {"t": 20.0, "do": "wait"},
    ]
    _, t, g = run(cabinet(physics, timeline, lanes=2), glitch_rate=0.0)
    return t, g[:, 0]


def test_a_take_is_a_ramp_then_a_damped_ring() -> None:
    physics = dataclasses.replace(CLEAN, oscillation_g_per_kg=60.0, settle_s=0.4)
    t, g = _gesture_run(physics, {"t": 3.0, "do": "take", "lane": 1, "count": 2})
    assert np.allclose(g[t < 2.84], 2000.0, atol=0.01)  # nothing before the item moves
    assert np.allclose(g[t > 8.0], 1000.0, atol=0.01)  # the level after, exactly
    ramp = (t > 2.85) & (t < 3.15)
    assert np.any((g[ramp] > 1100.0) & (g[ramp] < 1900.0))  # not an instantaneous step
    after = (t >= 3.15) & (t < 8.0)
    peak = np.max(np.abs(g[after] - 1000.0))
    assert 20.0 < peak <= 60.0 + 0.5  # 60 g/kg of a 1 kg change
    late = (t > 4.5) & (t < 8.0)
    assert np.max(np.abs(g[late] - 1000.0)) < 60.0 * math.exp(-(4.5 - 3.15) / 0.4) + 0.5


def test_hand_press_rests_on_the_lane_during_a_take() -> None:
    physics = dataclasses.replace(CLEAN, hand_press_g=200.0, oscillation_g_per_kg=0.0)
    t, g = _gesture_run(physics, {"t": 3.0, "do": "take", "lane": 1, "item": 0})
    pressed = np.abs(g - 2200.0) < 0.01
    assert pressed.any()  # the hand is on the lane before the item leaves
    assert 2.4 <= t[pressed][0] <= 2.8
    assert np.any(np.abs(g - 1700.0) < 0.01)  # item gone, hand still there
    assert np.allclose(g[t > 3.5], 1500.0, atol=0.01)
    hand_on = t[g > 2000.01][0]
    hand_off = t[(t > 3.0) & (np.abs(g - 1500.0) < 0.01)][0]
    assert 0.4 <= hand_off - hand_on <= 0.85


def test_press_action_adds_weight_for_its_duration() -> None:
    physics = dataclasses.replace(CLEAN, oscillation_g_per_kg=0.0)
    action = {"t": 3.0, "do": "press", "lane": 1, "weight_g": 180, "duration_s": 0.6}
    t, g = _gesture_run(physics, action)
    full = t[np.abs(g - 2180.0) < 0.01]
    assert 0.45 <= full[-1] - full[0] <= 0.6
    assert np.allclose(g[(t < 3.0) | (t >= 3.6)], 2000.0, atol=0.01)


def test_place_and_return_add_load() -> None:
    physics = dataclasses.replace(CLEAN, oscillation_g_per_kg=0.0)
    t, g = _gesture_run(physics, {"t": 3.0, "do": "place", "lane": 1, "weight_g": 300})
    assert np.allclose(g[t > 3.5], 2300.0, atol=0.01)


def _slam_energy(settle_s: float) -> tuple[float, float, int]:
    physics = dataclasses.replace(CLEAN, door_slam_g=100.0, settle_s=settle_s)
    timeline = [{"t": 1.0, "do": "open"}, {"t": 2.0, "do": "close"}, {"t": 8.0, "do": "wait"}]
    _, t, g = run(cabinet(physics, timeline, lanes=8), glitch_rate=0.0)
    dev = g - 2000.0
    assert np.allclose(dev[t < 2.0], 0.0, atol=0.01)
    first = np.sum(dev[(t >= 2.0) & (t < 3.0)] ** 2, axis=0)
    second = np.sum(dev[(t >= 3.0) & (t < 4.0)] ** 2, axis=0)
    rung = int(np.count_nonzero(np.max(np.abs(dev[(t >= 2.0) & (t < 2.3)]), axis=0) > 40.0))
    return float(np.median(second / first)), float(np.max(np.abs(dev))), rung


def test_door_slam_rings_every_lane_and_decays_with_settle_s() -> None:
    for settle in (0.4, 0.8):
        ratio, peak, rung = _slam_energy(settle)
        assert rung == 8  # every lane
        assert peak <= 100.0 + 0.5
        # energy over 1 s falls by exp(-2 s / settle_s)
        assert abs(math.log(ratio) - (-2.0 / settle)) < 0.35, (settle, ratio)


# ------------------------------------------------------------------ stream


def test_stream_interleaves_events_and_ends_at_the_final_wait() -> None:
    s = load_scenario(FIXTURES[0])
    sim = SimulatedCabinet(s)
    blocks = list(sim.stream(block_s=0.1))
    t, _, events = collect(blocks)
    assert np.all(np.diff(t) > 0) and t[0] == 0.0
    assert t[-1] < 16.0 and t.shape[0] == 16 * 80
    for block in blocks:
        if isinstance(block, SampleBlock):
            assert 0 < block.t.shape[0] <= 8 and block.raw.shape == (block.t.shape[0], 4)
    assert [e for _, e in events] == [
        UnlockEvent(5.0, "r-17", "resident"),
        DoorEvent(5.8, True),
        DoorEvent(11.0, False),
    ]
    for n, ev in events:
        assert t[n - 1] < ev.t <= t[n]
    assert sim.now == 16.0 and not sim.door_open
    with pytest.raises(RuntimeError):
        next(iter(sim.stream()))


def test_stream_without_final_wait_runs_five_more_seconds() -> None:
    timeline = [{"t": 1.0, "do": "open"}, {"t": 2.0, "do": "close"}]
    t, _, _ = collect(SimulatedCabinet(cabinet(CLEAN, timeline)).stream())
    assert t[-1] == pytest.approx(7.0 - 1 / 80)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_truth_of_the_fixtures_is_their_expect(path: Path) -> None:
    s = load_scenario(path)
    truth = SimulatedCabinet(s).truth_sessions()
    assert s.expect is not None
    expected: list[dict[str, Any]] = s.expect["sessions"]  # type: ignore[assignment]
    assert len(truth) == len(expected)
    for got, want in zip(truth, expected, strict=True):
        assert got["flags"] == want["flags"]
        got_lines: list[dict[str, Any]] = got["lines"]  # type: ignore[assignment]
        assert [(ln["sku"], ln["qty"]) for ln in got_lines] == [
            (ln["sku"], ln["qty"]) for ln in want["lines"]
        ]
        for g_ln, w_ln in zip(got_lines, want["lines"], strict=True):
            if "weight_g" in w_ln:
                assert abs(g_ln["weight_g"] - w_ln["weight_g"]) <= 0.5


def test_fixture_levels_match_the_truth() -> None:
    """The basic fixture: after the dust settles the lanes weigh what the ledger says."""
    s = load_scenario(FIXTURES[0])
    sim = SimulatedCabinet(s, glitch_rate=0.0)
    t, raw, _ = collect(sim.stream())
    g = grams(sim, raw)
    before = np.nanmedian(g[(t > 3.0) & (t < 5.0)], axis=0)
    after = np.nanmedian(g[(t > 14.0) & (t < 16.0)], axis=0)
    assert np.allclose(after - before, [-510.2, -420.0, 0.0, 0.0], atol=1.0)


# ------------------------------------------------------------------ live use


def test_live_cabinet_acts_now() -> None:
    lanes = [
        Lane(1, "tomato", "unit", 0, unit_weight_g=500, unit_weight_sd_g=6, price_fen=690),
        Lane(2, "eggs", "tracked", 5, price_fen=1290),
    ]
    physics = dataclasses.replace(CLEAN, oscillation_g_per_kg=0.0, door_slam_g=0.0)
    sim = SimulatedCabinet.live(lanes, {1: [500.0, 510.0], 2: [600.0]}, physics, seed=3)
    assert isinstance(sim, WeightSource) and isinstance(sim, DoorSwitch)
    assert [c.channel for c in sim.calibrations] == [0, 5]
    assert sim.spec.stock == {2: [600.0]}
    b = sim.advance(1.0)
    assert b.t.shape == (80,) and sim.now == 1.0
    assert sim.advance(1.0).t.shape == (0,)
    ev = sim.unlock("r-1")
    assert ev == UnlockEvent(1.0, "r-1", "resident")
    assert sim.open_door() == DoorEvent(1.0, True) and sim.door_open and sim.is_open
    assert sim.take(1, 1) == [510.0]
    b = sim.read(1.02)
    assert b.t.tolist() == [1.0, 1.0125]
    moving = grams(sim, b.raw)[:, 0]
    assert abs(moving[0] - 1010.0) < 0.01 and moving[1] < 1009.0  # it starts now
    sim.advance(3.0)
    sim.take(2, 0)
    sim.advance(4.0)
    assert sim.return_item(1, 1) == 600.0  # the eggs, put on the tomato lane
    sim.press(2, 100.0, 0.5)
    sim.advance(6.0)
    sim.place(2, 50.0)
    sim.advance(7.0)
    assert sim.close_door() == DoorEvent(7.0, False) and not sim.door_open
    g = grams(sim, sim.advance(9.0).raw)
    assert np.allclose(g[-1], [1100.0, 50.0], atol=0.01)
    assert sim.shelf_g(1) == [500.0, 600.0]
    assert sim.truth_sessions() == [
        {"lines": [{"sku": "tomato", "qty": 1}], "flags": ["foreign_object", "misplaced_return"]}
    ]
    with pytest.raises(Exception, match="take while the door is closed"):
        sim.take(1, 0)


def test_timeline_cabinet_refuses_live_actions_until_streamed() -> None:
    sim = SimulatedCabinet(load_scenario(FIXTURES[0]))
    with pytest.raises(RuntimeError):
        sim.open_door()
    for _ in sim.stream():
        pass
    sim.open_door()
    sim.take(1, 0)


def test_sixteen_channels_simulate_much_faster_than_real_time() -> None:
    s = cabinet(Physics(), lanes=16)
    sim = SimulatedCabinet(s)
    start = time.perf_counter()
    for _ in sim.stream(block_s=0.1):
        pass
    elapsed = time.perf_counter() - start
    assert 60.0 / elapsed > 300.0  # >= 1000x on an idle machine; lenient under load


def test_live_cabinet_with_configured_calibrations() -> None:
    lanes = [Lane(1, "greens", "weighed", 2, price_fen_per_kg=900)]
    calibrations = (Calibration(2, 84210.0, 213.7), Calibration(0, -12093.0, 208.1))
    sim = SimulatedCabinet.live(
        lanes, {1: [300.0]}, CLEAN, seed=1, glitch_rate=0.0, calibrations=calibrations
    )
    assert sim.spec.calibrations == calibrations  # columns in the order given
    raw = sim.advance(0.5).raw
    assert np.all(raw[:, 0] == round(84210.0 + 213.7 * 300.0))
    assert np.all(raw[:, 1] == -12093.0)  # a spare channel: an empty platform
    with pytest.raises(ValueError, match="no calibration for channel 2"):
        SimulatedCabinet.live(lanes, {}, CLEAN, calibrations=calibrations[1:])


def test_operator_sessions_restock_and_carry_their_role() -> None:
    physics = dataclasses.replace(CLEAN, oscillation_g_per_kg=0.0, door_slam_g=0.0)
    timeline = [
        {"t": 1.0, "do": "unlock", "resident": "op-1", "role": "operator"},
        {"t": 2.0, "do": "open"},
        {"t": 3.0, "do": "place", "lane": 2, "weight_g": 480.0},
        {"t": 4.0, "do": "close"},
        {"t": 6.0, "do": "unlock", "resident": "r-1"},
        {"t": 7.0, "do": "open"},
        {"t": 8.0, "do": "take", "lane": 2, "item": 4},
        {"t": 9.0, "do": "close"},
        {"t": 12.0, "do": "wait"},
    ]
    s = cabinet(physics, timeline, lanes=2)
    sim = SimulatedCabinet(s, glitch_rate=0.0)
    t, raw, events = collect(sim.stream())
    assert events[0][1] == UnlockEvent(1.0, "op-1", "operator")
    g = grams(sim, raw)
    assert np.allclose(g[(t > 5.0) & (t < 6.0), 1], 2480.0, atol=0.01)
    assert np.allclose(g[t > 10.0, 1], 2000.0, atol=0.01)
    assert sim.truth_sessions() == [
        {"lines": [], "flags": [], "role": "operator"},
        {"lines": [{"sku": "sku-2", "qty": 1}], "flags": []},
    ]
    expect = {"sessions": sim.truth_sessions()}
    again = parse_scenario({**scenario_to_dict(s), "expect": expect}, "with-role")
    assert again.expect == expect


@pytest.mark.parametrize("tier", ["standard", "hard", "slow"])
def test_corpus_lanes_settle_to_the_truth(tier: str) -> None:
    for seed in range(6):
        s = generate_scenario(seed, tier)  # type: ignore[arg-type]
        quiet = dataclasses.replace(s.physics, noise_g=0.0, invalid_rate=0.0, drift_g_per_min=0.0)
        sim = SimulatedCabinet(dataclasses.replace(s, physics=quiet), glitch_rate=0.0)
        _, raw, _ = collect(sim.stream())
        settled = grams(sim, raw[-1:])[0]
        truth = [sim.true_load_g(ln.lane) for ln in s.lanes]
        assert np.allclose(settled, truth, atol=0.2), (seed, settled - truth)


def test_an_unvalidated_impossible_timeline_is_rejected() -> None:
    s = cabinet(CLEAN)
    bad = dataclasses.replace(s, name="hand-made", timeline=(Action(t=1.0, do="take", lane=1),))
    with pytest.raises(
        InputError, match=r"hand-made: timeline\[0\]: take while the door is closed"
    ):
        SimulatedCabinet(bad)

"""The weighing pipeline: filter and level tracker on synthetic signals."""

from __future__ import annotations

import numpy as np

from edge.model import INVALID_CODES, Calibration
from edge.weighing import ChannelFilter, LevelTracker, WeighingConfig

CAL = [Calibration(0, 84210, 213.7), Calibration(1, -12093, 208.1)]


def raw_of(grams: np.ndarray) -> np.ndarray:
    zero = np.array([c.zero_counts for c in CAL])
    cpg = np.array([c.counts_per_g for c in CAL])
    return np.round(zero + grams * cpg)


def test_invalid_codes_and_missing_readings_are_never_weights() -> None:
    f = ChannelFilter(CAL)
    g = np.full((20, 2), 500.0)
    raw = raw_of(g)
    raw[3, 0] = INVALID_CODES[0]
    raw[4, 0] = INVALID_CODES[1]
    raw[5, 1] = np.nan
    out = f.process(raw)
    assert np.allclose(out[2:], 500.0, atol=0.01)
    assert f.invalid_count.tolist() == [2, 1]


def test_single_glitch_is_removed_and_a_step_passes_within_two_samples() -> None:
    f = ChannelFilter(CAL)
    g = np.full((40, 2), 1000.0)
    g[10, 0] = 1060.0  # a valid-looking glitch
    g[20:, 1] = 500.0  # a real step
    out = f.process(raw_of(g))
    assert np.allclose(out[4:, 0], 1000.0, atol=0.01)
    assert np.allclose(out[23:, 1], 500.0, atol=0.01)


def test_filter_is_causal_and_block_size_does_not_matter() -> None:
    rng = np.random.default_rng(1)
    g = 700 + rng.normal(0, 2, size=(100, 2))
    raw = raw_of(g)
    raw[rng.random(raw.shape) < 0.05] = INVALID_CODES[0]
    whole = ChannelFilter(CAL).process(raw)
    f = ChannelFilter(CAL)
    parts = np.concatenate([f.process(raw[i : i + 7]) for i in range(0, 100, 7)])
    assert np.array_equal(np.isnan(whole), np.isnan(parts))
    assert np.allclose(np.nan_to_num(whole), np.nan_to_num(parts))


def _feed(tracker: LevelTracker, t: np.ndarray, g: np.ndarray, tick: int = 4) -> list[bool]:
    stable = []
    for i in range(0, len(t), tick):
        tracker.push(t[i : i + tick], g[i : i + tick])
        s = tracker.stats()
        assert s is not None
        stable.append(bool(tracker.update_idle(s, learn_noise=True)[0]))
    return stable


def test_stable_level_tracks_slow_drift_but_not_a_load_change() -> None:
    rng = np.random.default_rng(2)
    rate = 80.0
    t = np.arange(0, 30, 1 / rate)
    level = 1200 + 0.5 / 60 * t  # drift 0.5 g/min
    g = (level + rng.normal(0, 0.8, t.size))[:, None].repeat(2, axis=1)
    tr = LevelTracker(2, rate, WeighingConfig())
    stable = _feed(tr, t, g)
    assert sum(stable) / len(stable) > 0.9
    assert abs(tr.stable_level[0] - level[-1]) < 0.5
    # a sudden 500 g lift is not stable while it rings
    t2 = np.arange(30, 30.3, 1 / rate)
    ring = 30 * np.exp(-(t2 - 30) / 0.4) * np.sin(2 * np.pi * 5 * (t2 - 30))
    g2 = (700 + ring + rng.normal(0, 0.8, t2.size))[:, None].repeat(2, axis=1)
    stable2 = _feed(tr, t2, g2)
    assert not any(stable2)
    assert abs(tr.stable_level[0] - level[-1]) < 0.5  # the old level is kept


def test_noise_estimate_is_learnt_while_idle() -> None:
    rng = np.random.default_rng(3)
    rate = 80.0
    t = np.arange(0, 60, 1 / rate)
    g = np.stack([500 + rng.normal(0, 0.5, t.size), 500 + rng.normal(0, 3.0, t.size)], axis=1)
    tr = LevelTracker(2, rate, WeighingConfig(noise_g=1.5))
    _feed(tr, t, g)
    assert tr.noise[0] < 0.8
    assert tr.noise[1] > 2.0


def test_settled_needs_samples_after_the_close_and_tolerance_matters() -> None:
    rng = np.random.default_rng(4)
    rate = 80.0
    t = np.arange(0, 3, 1 / rate)
    slam = 25 * np.exp(-np.clip(t - 1.0, 0, None) / 0.4) * np.sin(2 * np.pi * 6 * (t - 1.0))
    slam[t < 1.0] = 0
    g = (800 + slam + rng.normal(0, 0.8, t.size))[:, None].repeat(2, axis=1)
    tr = LevelTracker(2, rate, WeighingConfig(noise_g=0.8))
    first: dict[str, float] = {}
    tol = {"coarse": np.array([40.0, 40.0]), "fine": np.array([1.0, 1.0])}
    for i in range(0, t.size, 4):
        tr.push(t[i : i + 4], g[i : i + 4])
        s = tr.stats()
        assert s is not None
        for name, tolerance in tol.items():
            if name not in first and tr.settled(s, 1.0, tolerance)[0]:
                first[name] = s.t - 1.0
    assert first["coarse"] <= first["fine"]
    assert first["coarse"] >= 0.4  # a whole window after the close
    assert first["fine"] <= 1.5

"""Stability detection, lane levels and settling, vectorised over channels.

The tracker keeps the last ``window_s`` of filtered grams per channel and, at
every tick, the statistics the session logic needs:

* whether each channel is *stable* (the spread is what the noise alone explains
  and the level does not move between the older and the newer half-window);
* the last stable level of each channel (zero tracking: while the door is shut
  the level follows drift, temperature and drying, so they never become sales);
* a per-channel noise estimate (g, of the filtered signal) learnt while idle;
* whether a channel is *settled* to a required precision after a load change or
  a door slam, which is what lets the cabinet bill as soon as it can prove the
  levels, rather than after a fixed delay.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.model import FloatArray
from edge.weighing.filter import MEDIAN_TAPS

#: samples one running-median output depends on: the effective sample count divides by it
MEDIAN_SPAN = float(MEDIAN_TAPS)

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class WeighingConfig:
    """Tuning of the weighing pipeline. Every field has a safe default."""

    window_s: float = 0.4  # length of the statistics window (s)
    min_window_samples: int = 25  # the window never holds fewer samples than this (10 SPS: 2.5 s)
    tick_s: float = 0.05  # how often the statistics are evaluated (s of samples)
    noise_g: float = 1.5  # initial noise estimate of the filtered signal (g rms)
    noise_floor_g: float = 0.3  # the noise estimate never goes below this (g)
    noise_ceiling_g: float = 25.0  # ... nor above this (g)
    noise_adapt: float = 0.05  # weight of each idle stable window in the noise estimate
    baseline_s: float = 5.0  # while idle and stable, the level averages over about this long (s)
    stable_std_factor: float = 1.8  # stable: window std <= factor * noise + floor
    stable_drift_sigmas: float = 4.0  # stable: half-window means within this many sigmas
    min_settle_s: float = 0.15  # never call a lane settled sooner after the door closed (s)
    min_ring_hz: float = 3.0  # lowest natural frequency a loaded shelf rings at (Hz)
    fault_gap_s: float = 2.0  # a channel with no valid reading this long is faulted (s)
    fault_invalid_share: float = 0.5  # ... or with more invalid readings than this share
    fault_stuck_s: float = 2.0  # ... or repeating one raw value this long (a stuck converter, s)
    fault_noise_g: float = 10.0  # ... or idle with a filtered spread above this (g rms) ...
    fault_noise_s: float = 5.0  # ... for this long (s)
    fault_clear_s: float = 2.0  # a faulted channel must be clean this long to count again (s)

    def window_samples(self, sample_rate_hz: float) -> int:
        return max(self.min_window_samples, round(self.window_s * sample_rate_hz))

    def tick_samples(self, sample_rate_hz: float) -> int:
        return max(1, round(self.tick_s * sample_rate_hz))


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Statistics of the current window, one entry per channel (grams)."""

    t: float  # time of the newest sample (s)
    t_first: float  # time of the oldest sample in the window (s)
    mean: FloatArray
    std: FloatArray
    count: IntArray  # valid samples in the window
    drift: FloatArray  # mean of the newer half minus mean of the older half

    def level_sigma(self, noise: FloatArray) -> FloatArray:
        """Standard deviation of ``mean`` as an estimate of the level (g).

        The running median correlates the samples it spans, so the effective
        number of independent samples is the count over ``MEDIAN_SPAN``. What a
        wider spread (ringing) adds is bounded separately (``ringing_bound``).
        """
        n_eff = np.maximum(self.count / MEDIAN_SPAN, 1.0)
        sigma: FloatArray = noise / np.sqrt(n_eff)
        return sigma


class LevelTracker:
    """Keeps the recent filtered samples of every channel and judges them."""

    def __init__(self, channels: int, sample_rate_hz: float, config: WeighingConfig) -> None:
        self.channels = channels
        self.config = config
        self.window = config.window_samples(sample_rate_hz)
        self.sample_rate_hz = sample_rate_hz
        self.tick_interval = config.tick_samples(sample_rate_hz) / sample_rate_hz
        # sampled slowly, ringing above the Nyquist frequency aliases to a lower one
        self.ring_hz = min(config.min_ring_hz, 0.2 * sample_rate_hz)
        self._t: FloatArray = np.empty(0)
        self._g: FloatArray = np.empty((0, channels))
        self.noise: FloatArray = np.full(channels, config.noise_g)
        self.stable_level: FloatArray = np.full(channels, np.nan)
        self.stable_sigma: FloatArray = np.full(channels, np.inf)
        self.stable_at: FloatArray = np.full(channels, -np.inf)
        self.last_valid_at: FloatArray = np.full(channels, np.nan)

    # -- samples ---------------------------------------------------------------
    def push(self, t: FloatArray, grams: FloatArray) -> None:
        """Append filtered samples (t: (n,), grams: (n, channels))."""
        if t.size == 0:
            return
        valid = ~np.isnan(grams)
        has = valid.any(axis=0)
        if has.any():
            # time of the last valid sample of each channel in this block
            last_idx = grams.shape[0] - 1 - np.argmax(valid[::-1], axis=0)
            self.last_valid_at = np.where(has, t[last_idx], self.last_valid_at)
        elif np.isnan(self.last_valid_at).all():
            pass
        if np.isnan(self.last_valid_at).any():
            # a channel that never answered counts from the first sample seen
            self.last_valid_at = np.where(
                np.isnan(self.last_valid_at) & ~has, t[0], self.last_valid_at
            )
        self._t = np.concatenate((self._t, t))[-self.window :]
        self._g = np.concatenate((self._g, grams), axis=0)[-self.window :]

    @property
    def latest_t(self) -> float:
        return float(self._t[-1]) if self._t.size else float("-inf")

    def stats(self) -> WindowStats | None:
        """Statistics of the current window, or None before the first sample."""
        if self._t.size == 0:
            return None
        g = self._g
        valid = ~np.isnan(g)
        count = valid.sum(axis=0)
        x = np.where(valid, g, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = x.sum(axis=0) / count
            dev = np.where(valid, g - mean, 0.0)
            var = (dev * dev).sum(axis=0) / np.maximum(count - 1, 1)
            half = g.shape[0] // 2
            old_n = valid[:half].sum(axis=0)
            new_n = valid[half:].sum(axis=0)
            old_mean = x[:half].sum(axis=0) / old_n
            new_mean = x[half:].sum(axis=0) / new_n
        drift = np.where((old_n > 0) & (new_n > 0), new_mean - old_mean, np.nan)
        return WindowStats(
            t=float(self._t[-1]),
            t_first=float(self._t[0]),
            mean=mean,
            std=np.sqrt(var),
            count=count.astype(np.int64),
            drift=drift,
        )

    def baseline_gain(self) -> float:
        """How much the idle averaging narrows a window's uncertainty (>= 1)."""
        span = max(self.window / self.sample_rate_hz, 1e-3)
        return float(np.sqrt(max(1.0, self.config.baseline_s / span)))

    def batch_sigma(self, batches: int = 4) -> FloatArray:
        """Standard deviation of the window mean measured from the data (g).

        The window is cut into ``batches`` parts; the spread of their means shows
        what correlated noise and slow (or aliased) ringing do to a mean, which a
        model of white noise cannot. Inflated for the few degrees of freedom.
        """
        g = self._g
        n = g.shape[0] // batches
        if n < 2:
            return np.full(self.channels, np.inf)
        parts = g[: n * batches].reshape(batches, n, self.channels)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(parts, axis=1)
            spread = np.nanstd(means, axis=0, ddof=1)
        sigma: FloatArray = np.where(np.isfinite(spread), 1.3 * spread / np.sqrt(batches), np.inf)
        return sigma

    # -- judgements --------------------------------------------------------------
    def stable(self, s: WindowStats, slack_g: FloatArray | float = 0.0) -> BoolArray:
        """Channels whose window is flat: spread within noise, no level change.

        ``slack_g`` widens both tests per channel, for lanes that need less precision.
        """
        c = self.config
        full = s.count >= max(3, self.window // 2)
        spread_ok = s.std <= c.stable_std_factor * self.noise + c.noise_floor_g + slack_g
        drift_tol = c.stable_drift_sigmas * self.noise * np.sqrt(4.0 / np.maximum(s.count, 1))
        drift_ok = np.abs(s.drift) <= drift_tol + 0.2 + slack_g  # NaN compares False
        ok: BoolArray = full & spread_ok & drift_ok
        return ok

    def ringing_bound(self, s: WindowStats) -> FloatArray:
        """Worst-case error (g) that what is left of the ringing puts on the window mean.

        The mean over a window W of a ring that starts the window at amplitude A
        and decays is off by at most about (1 + e^(-W/tau)) A / (wW) <= 1.4 A/(wW);
        A is about 2.15 times the rms of the spread beyond the noise (a ring
        decaying with tau = W), and w is the lowest natural frequency a shelf rings
        at: together 3 rms / (wW). Adds two sigmas of the mean for the noise.
        """
        span = max(s.t - s.t_first, 1e-3)
        rms = np.sqrt(np.maximum(s.std * s.std - self.noise * self.noise, 0.0))
        ring = 3.0 * rms / (2.0 * np.pi * self.ring_hz * span)
        n_eff = np.maximum(s.count / MEDIAN_SPAN, 1.0)
        bound: FloatArray = ring + 2.0 * self.noise / np.sqrt(n_eff)
        return bound

    def settled(self, s: WindowStats, since: float, tolerance_g: FloatArray) -> BoolArray:
        """Channels whose level is known to within ``tolerance_g``, from samples after ``since``.

        A lane that only has to tell whole packs apart settles while some ringing
        is left; a lane priced by the gram waits until the mean is provably close.
        The load must also have stopped moving: the half-window means agree within
        the same bound.
        """
        if s.t_first <= since or s.t - since < self.config.min_settle_s:
            return np.zeros(self.channels, dtype=np.bool_)
        c = self.config
        bound = self.ringing_bound(s)
        full = s.count >= max(3, self.window // 2)
        drift = np.abs(s.drift)  # NaN (a half-window without readings) compares False
        drift_tol = 2.0 * bound + c.stable_drift_sigmas * self.noise * np.sqrt(
            4.0 / np.maximum(s.count, 1)
        )
        ok: BoolArray = full & (bound <= tolerance_g) & (drift <= drift_tol)
        return ok

    def update_idle(self, s: WindowStats, learn_noise: bool) -> BoolArray:
        """Zero tracking: while idle, stable channels refresh their level (and noise)."""
        ok = self.stable(s)
        if ok.any():
            c = self.config
            sigma = s.level_sigma(self.noise)
            # average on while the level stays put (it only drifts while the door is
            # shut); start afresh when it moved or after a gap in stability
            span = max(s.t - s.t_first, 1e-3)
            same = (
                ok
                & (s.t - self.stable_at <= 2.5 * self.tick_interval)
                & (np.abs(s.mean - self.stable_level) <= 3.0 * sigma + 0.5)
            )
            alpha = min(1.0, self.tick_interval / c.baseline_s)
            averaged = np.where(
                same, self.stable_level + alpha * (s.mean - self.stable_level), s.mean
            )
            gain = np.sqrt(max(1.0, c.baseline_s / span))
            sigma_avg = np.where(
                same, np.maximum(sigma / gain, np.minimum(self.stable_sigma, sigma)), sigma
            )
            self.stable_level = np.where(ok, averaged, self.stable_level)
            self.stable_sigma = np.where(ok, sigma_avg, self.stable_sigma)
            self.stable_at = np.where(ok, s.t, self.stable_at)
            if learn_noise:
                c = self.config
                learnt = (1.0 - c.noise_adapt) * self.noise + c.noise_adapt * s.std
                self.noise = np.where(
                    ok, np.clip(learnt, c.noise_floor_g, c.noise_ceiling_g), self.noise
                )
        return ok

    def set_levels(self, mask: BoolArray, level: FloatArray, sigma: FloatArray, t: float) -> None:
        """Adopt levels measured elsewhere (the settled levels after a session)."""
        self.stable_level = np.where(mask, level, self.stable_level)
        self.stable_sigma = np.where(mask, sigma, self.stable_sigma)
        self.stable_at = np.where(mask, t, self.stable_at)

    def faulted(self, t: float) -> BoolArray:
        """Channels with no valid reading for ``fault_gap_s``."""
        out: BoolArray = t - self.last_valid_at >= self.config.fault_gap_s  # NaN: never seen
        return out

"""Per-channel filtering: invalid codes out, glitches out, counts to grams.

Everything is vectorised over the channels and the samples of a block, so a
16-channel cabinet at 80 SPS costs a few microseconds per sample row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge.model import INVALID_CODES, Calibration, FloatArray

#: Samples in the running median that removes glitches (odd; 5 removes runs of two).
MEDIAN_TAPS = 5


class ChannelFilter:
    """Turns raw 24-bit counts into grams, channel by channel.

    * invalid codes (``INVALID_CODES``) and missing readings (NaN) become NaN;
    * calibration: ``g = (raw - zero_counts) / counts_per_g``;
    * a causal running median over ``MEDIAN_TAPS`` valid-or-not samples rejects
      valid-looking glitches (single spikes) without blurring a step by more
      than two samples. NaN inputs are skipped by the median; a window with no
      valid sample gives NaN.
    """

    def __init__(self, calibrations: Sequence[Calibration]) -> None:
        if not calibrations:
            raise ValueError("a cabinet needs at least one load-cell channel")
        self.channels = len(calibrations)
        self.zero: FloatArray = np.array([c.zero_counts for c in calibrations], dtype=np.float64)
        self.scale: FloatArray = 1.0 / np.array(
            [c.counts_per_g for c in calibrations], dtype=np.float64
        )
        self._history: FloatArray = np.full((MEDIAN_TAPS - 1, self.channels), np.nan)
        self.invalid_count = np.zeros(self.channels, dtype=np.int64)
        self.sample_count = 0
        #: health: share of invalid or missing readings (moving average over ~10 blocks)
        self.invalid_share: FloatArray = np.zeros(self.channels)
        #: health: how many valid readings in a row repeated the same raw value
        self.same_run = np.zeros(self.channels, dtype=np.int64)
        self._last_raw: FloatArray = np.full(self.channels, np.nan)

    def set_zero(self, channel: int, zero_counts: float) -> None:
        """Re-zero one channel (tare), in raw counts."""
        self.zero[channel] = zero_counts

    def grams(self, raw: FloatArray) -> FloatArray:
        """Calibrated grams of a (n, channels) block, NaN where the reading is invalid or missing.

        Not filtered: the caller's running median is applied by ``process``.
        """
        bad = (raw == INVALID_CODES[0]) | (raw == INVALID_CODES[1]) | np.isnan(raw)
        g = (raw - self.zero) * self.scale
        g[bad] = np.nan
        return g

    def process(self, raw: FloatArray) -> FloatArray:
        """Filter a (n, channels) block of raw counts; returns grams of the same shape."""
        if raw.ndim != 2 or raw.shape[1] != self.channels:
            raise ValueError(f"sample block has shape {raw.shape}, expected (n, {self.channels})")
        n = raw.shape[0]
        g = self.grams(raw)
        nan = np.isnan(g)
        self.invalid_count += nan.sum(axis=0)
        self.sample_count += n
        self._track_health(raw, nan)
        joined = np.concatenate((self._history, g), axis=0)
        self._history = joined[-(MEDIAN_TAPS - 1) :].copy()
        # windows: (n, channels, taps), built from slices (cheaper than a strided view
        # for the few rows of a block); NaN sorts last, so the median of the k valid
        # values sits at positions (k-1)//2 and k//2.
        windows = np.stack([joined[i : i + n] for i in range(MEDIAN_TAPS)], axis=2)
        ordered = np.sort(windows, axis=2).reshape(-1, MEDIAN_TAPS)
        valid = MEDIAN_TAPS - np.isnan(ordered).sum(axis=1)
        rows = np.arange(ordered.shape[0])
        lo = np.maximum((valid - 1) // 2, 0)
        hi = np.maximum(valid // 2, 0)
        med: FloatArray = (0.5 * (ordered[rows, lo] + ordered[rows, hi])).reshape(n, self.channels)
        med[(valid == 0).reshape(n, self.channels)] = np.nan
        return med

    def _track_health(self, raw: FloatArray, bad: npt.NDArray[np.bool_]) -> None:
        """Share of invalid codes and runs of identical readings (a stuck converter).

        Missing readings (NaN) are not invalid codes: a backend that reads its chips
        one by one leaves gaps, and silence has its own rule (``fault_gap_s``).
        """
        n = raw.shape[0]
        present = ~np.isnan(raw)
        codes = (raw == INVALID_CODES[0]) | (raw == INVALID_CODES[1])
        seen = present.sum(axis=0)
        share = np.where(seen > 0, codes.sum(axis=0) / np.maximum(seen, 1), self.invalid_share)
        self.invalid_share += 0.1 * (share - self.invalid_share)
        valid_n = n - bad.sum(axis=0)
        same = (raw == self._last_raw) | bad
        all_same = same.all(axis=0)
        self.same_run = np.where(
            valid_n == 0, self.same_run, np.where(all_same, self.same_run + valid_n, 1)
        )
        has = valid_n > 0
        if has.any():
            last_idx = n - 1 - np.argmax(~bad[::-1], axis=0)
            latest = raw[last_idx, np.arange(self.channels)]
            self._last_raw = np.where(has, latest, self._last_raw)

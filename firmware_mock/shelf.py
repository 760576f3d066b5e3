"""Load-cell physics of every channel of a cabinet, vectorised over samples and channels.

What one channel reads, in grams, at time t (s):

* the true load: what lies on the lane, ``a + b * exp(-loss_per_s * t)`` where
  ``b`` is produce that dries (``moisture_loss_pct_per_day``);
* load changes are ramps, not steps: an item moves over 0.15-0.3 s (raised
  cosine), then the platform rings: ``A * exp(-dt / settle_s) * sin(2 pi f dt + phi)``
  with ``A = oscillation_g_per_kg * |change in kg|``, ``f`` the lane's natural
  frequency (drawn once, 3-8 Hz) and a random phase;
* a hand resting on the lane (``hand_press_g``) for 0.4-0.8 s around the moment an
  item leaves or arrives; pressing and releasing ring a little too;
* a door slam rings every lane with ``door_slam_g`` at a random phase;
* the zero drifts: a random walk whose std after one minute is ``drift_g_per_min``
  (knots every second, linearly interpolated);
* white noise ``noise_g``; rare valid-looking glitches (one sample off by 20-60 g);
  ``invalid_rate`` of samples replaced by 8388607, -8388608 or no reading (NaN).

Raw counts are ``round(zero_counts + counts_per_g * grams)`` clipped to signed 24-bit.

Randomness comes from independent child generators (gestures, noise, faults, drift)
so that, for example, changing ``noise_g`` leaves the invalid samples where they were,
and the noise of a sample does not depend on how the samples are split into blocks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.model import INVALID_CODES, Calibration, FloatArray
from firmware_mock.ledger import loss_rate_per_s
from firmware_mock.scenario import Physics

#: Share of samples that are valid-looking glitches (one sample off by tens of grams).
GLITCH_RATE = 0.001
#: Size range of a glitch (g); its sign is random.
GLITCH_G = (20.0, 60.0)
#: Natural frequency range of a lane platform (Hz).
FREQ_HZ = (3.0, 8.0)
#: How long an item takes to leave or land (s).
MOVE_S = (0.15, 0.30)
#: The hand arrives this long before the item moves (s) ...
HAND_BEFORE_S = (0.30, 0.55)
#: ... and leaves this long after it (s): 0.4-0.8 s in all.
HAND_AFTER_S = (0.10, 0.25)
#: Time for a hand to press on or lift off (s).
HAND_EDGE_S = 0.06
#: Spacing of the drift random walk's knots (s).
DRIFT_KNOT_S = 1.0
#: Knots drawn at a time (fixed, so the walk does not depend on block sizes).
DRIFT_CHUNK = 64
#: A ring is dropped once its envelope is below this (g).
RING_FLOOR_G = 1e-6
#: Signed 24-bit range of the ADC.
RAW_MIN, RAW_MAX = -8388608, 8388607


def draw_calibrations(channels: Sequence[int], rng: np.random.Generator) -> tuple[Calibration, ...]:
    """One calibration per channel: zero within about +-150000 counts, 180-240 counts/g."""
    zero = rng.integers(-150000, 150001, size=len(channels))
    cpg = np.round(rng.uniform(180.0, 240.0, size=len(channels)), 3)
    return tuple(
        Calibration(int(ch), float(z), float(c))
        for ch, z, c in zip(channels, zero, cpg, strict=True)
    )


@dataclass(frozen=True, slots=True)
class _Step:
    """Load ``a + b * exp(-k t)`` (g) arriving on column ``col`` over [t0, t1] (s)."""

    t0: float
    t1: float
    col: int
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class _Ring:
    """A damped oscillation of column ``col`` from ``t0`` (s), dropped after ``t_cut``."""

    t0: float
    t_cut: float
    col: int
    amp: float
    phase: float


class Shelves:
    """The mechanical and electrical signal of every channel (one column per channel).

    Load changes are scheduled with ``gesture``, ``press`` and ``slam``; ``samples``
    produces raw counts for consecutive sample indices. ``samples`` must be called
    with increasing, contiguous ranges; effects may be scheduled at any time not
    earlier than the samples already produced.
    """

    def __init__(
        self,
        physics: Physics,
        calibrations: Sequence[Calibration],
        static_g: Sequence[float],
        decaying_g: Sequence[float],
        rng: np.random.Generator,
        *,
        glitch_rate: float = GLITCH_RATE,
    ) -> None:
        self.physics = physics
        self.fs = float(physics.sample_rate_hz)
        self.channels = len(calibrations)
        self.glitch_rate = glitch_rate
        self.loss_per_s = loss_rate_per_s(physics.moisture_loss_pct_per_day)
        self._zero = np.array([c.zero_counts for c in calibrations], dtype=np.float64)
        self._cpg = np.array([c.counts_per_g for c in calibrations], dtype=np.float64)
        streams = rng.spawn(5)
        freq_rng, self._gesture_rng, self._noise_rng, self._fault_rng, self._drift_rng = streams
        #: natural frequency of each lane platform (Hz)
        self.freq_hz: FloatArray = freq_rng.uniform(*FREQ_HZ, size=self.channels)
        self._omega = 2.0 * math.pi * self.freq_hz
        self._base_a = np.array(static_g, dtype=np.float64)
        self._base_b = np.array(decaying_g, dtype=np.float64)
        self._steps: list[_Step] = []  # sorted by t0
        self._rings: list[_Ring] = []  # sorted by t0
        self._knots = np.zeros((1, self.channels))
        self._next_k = 0

    # ------------------------------------------------------------ scheduling

    def gesture(
        self,
        col: int,
        t: float,
        static_g: float,
        decaying_g: float,
        *,
        hand: bool,
        lo: float = -math.inf,
        hi: float = math.inf,
        start_at_t: bool = False,
    ) -> float:
        """An item (or object) of ``static_g + decaying_g * exp(-k t)`` grams (negative:
        removed) leaves or lands on column ``col`` at ``t`` (s); with ``hand``, a hand
        rests on the lane around it. ``lo``/``hi`` bound the gesture (door open .. close).
        With ``start_at_t`` the gesture *starts* at ``t`` (live use: nothing may happen
        before now). Returns the moment the item moves (s)."""
        g = self._gesture_rng
        move = g.uniform(*MOVE_S)
        before = g.uniform(*HAND_BEFORE_S)
        after = g.uniform(*HAND_AFTER_S)
        phase = float(g.uniform(0.0, 2.0 * math.pi))
        pressing = hand and self.physics.hand_press_g > 0.0
        if start_at_t:
            lo = t
            t = t + (before if pressing else move / 2.0)
        t0 = max(t - move / 2.0, lo)
        t1 = t0 + move
        self._add_step(_Step(t0, t1, col, static_g, decaying_g))
        change_g = abs(static_g + decaying_g * math.exp(-self.loss_per_s * t))
        self._add_ring(col, t1, self.physics.oscillation_g_per_kg * change_g / 1000.0, phase)
        if pressing:
            start = max(t - before, lo)
            end = max(min(t + after, hi), start + 2.5 * HAND_EDGE_S)
            self.press(col, start, end - start, self.physics.hand_press_g)
        return t

    def press(self, col: int, t: float, duration_s: float, weight_g: float) -> None:
        """A hand (or anything) pressing ``weight_g`` on column ``col`` from ``t`` for
        ``duration_s`` (s); pressing and releasing ring."""
        g = self._gesture_rng
        on_phase, off_phase = (float(p) for p in g.uniform(0.0, 2.0 * math.pi, size=2))
        edge = min(HAND_EDGE_S, duration_s / 2.0)
        end = t + duration_s
        amp = self.physics.oscillation_g_per_kg * weight_g / 1000.0
        self._add_step(_Step(t, t + edge, col, weight_g, 0.0))
        self._add_step(_Step(end - edge, end, col, -weight_g, 0.0))
        self._add_ring(col, t + edge, amp, on_phase)
        self._add_ring(col, end, amp, off_phase)

    def slam(self, t: float) -> None:
        """The door closes at ``t`` (s): every lane rings with ``door_slam_g``."""
        phases = self._gesture_rng.uniform(0.0, 2.0 * math.pi, size=self.channels)
        for col in range(self.channels):
            self._add_ring(col, t, self.physics.door_slam_g, float(phases[col]))

    def _add_step(self, step: _Step) -> None:
        bisect.insort(self._steps, step, key=lambda s: s.t0)

    def _add_ring(self, col: int, t0: float, amp: float, phase: float) -> None:
        if amp <= RING_FLOOR_G:
            return
        t_cut = t0 + self.physics.settle_s * math.log(amp / RING_FLOOR_G)
        bisect.insort(self._rings, _Ring(t0, t_cut, col, amp, phase), key=lambda r: r.t0)

    # ------------------------------------------------------------ signals

    def mechanics_g(self, t: FloatArray) -> FloatArray:
        """The noiseless, drift-free load of every column (g) at times ``t`` (s), shape
        (n, channels). Valid for times not earlier than the samples already produced."""
        n = t.shape[0]
        decay = np.exp(-self.loss_per_s * t) if self.loss_per_s else np.ones(n)
        g: FloatArray = self._base_a + decay[:, None] * self._base_b
        if n == 0:
            return g
        t_end = float(t[-1])
        steps = self._steps[: self._count_before(self._steps, t_end)]
        if steps:
            t0 = np.array([s.t0 for s in steps])
            t1 = np.array([s.t1 for s in steps])
            x = np.clip((t[:, None] - t0) / (t1 - t0), 0.0, 1.0)
            ramp = 0.5 - 0.5 * np.cos(np.pi * x)
            a = np.array([s.a for s in steps])
            b = np.array([s.b for s in steps])
            g += (ramp * (a + decay[:, None] * b)) @ self._onehot([s.col for s in steps])
        rings = [r for r in self._rings[: self._count_before(self._rings, t_end)] if r.t_cut > t[0]]
        if rings:
            t0 = np.array([r.t0 for r in rings])
            cols = [r.col for r in rings]
            dt = t[:, None] - t0
            live = (dt >= 0.0) & (t[:, None] < np.array([r.t_cut for r in rings]))
            dtc = np.where(live, dt, 0.0)
            osc = (
                np.array([r.amp for r in rings])
                * np.exp(-dtc / self.physics.settle_s)
                * np.sin(self._omega[cols] * dtc + np.array([r.phase for r in rings]))
            )
            g += np.where(live, osc, 0.0) @ self._onehot(cols)
        return g

    def drift_g(self, t: FloatArray) -> FloatArray:
        """The zero drift of every column (g) at times ``t`` (s), shape (n, channels)."""
        pos = t / DRIFT_KNOT_S
        i = np.floor(pos).astype(np.int64)
        need = int(i.max()) + 2 if i.size else 1
        while self._knots.shape[0] < need:
            sd = self.physics.drift_g_per_min * math.sqrt(DRIFT_KNOT_S / 60.0)
            walk = np.cumsum(
                self._drift_rng.standard_normal((DRIFT_CHUNK, self.channels)) * sd, axis=0
            )
            self._knots = np.concatenate((self._knots, self._knots[-1] + walk), axis=0)
        f = (pos - i)[:, None]
        out: FloatArray = self._knots[i] * (1.0 - f) + self._knots[i + 1] * f
        return out

    def samples(self, k0: int, k1: int) -> tuple[FloatArray, FloatArray]:
        """Samples ``k0 .. k1-1`` (at t = k / sample_rate_hz): times (n,) and raw counts
        (n, channels), float64 with NaN for no reading. ``k0`` must continue the last call."""
        if k0 != self._next_k:
            raise ValueError(f"samples must be contiguous: expected k0={self._next_k}, got {k0}")
        n = max(0, k1 - k0)
        self._next_k = k0 + n
        t: FloatArray = np.arange(k0, k0 + n, dtype=np.float64) / self.fs
        if n == 0:
            return t, np.empty((0, self.channels))
        self._fold(float(t[0]))
        g = self.mechanics_g(t)
        if self.physics.drift_g_per_min > 0.0:
            g += self.drift_g(t)
        if self.physics.noise_g > 0.0:
            g += self._noise_rng.standard_normal((n, self.channels)) * self.physics.noise_g
        rate = self.physics.invalid_rate
        u = None
        if rate > 0.0 or self.glitch_rate > 0.0:
            u = self._fault_rng.random((n, self.channels))
            glitch = (u >= rate) & (u < rate + self.glitch_rate)
            if glitch.any():
                frac = (u[glitch] - rate) / self.glitch_rate  # uniform in [0, 1)
                size = GLITCH_G[0] + (GLITCH_G[1] - GLITCH_G[0]) * (2.0 * frac % 1.0)
                g[glitch] += np.where(frac < 0.5, -size, size)
        raw: FloatArray = np.clip(np.rint(self._zero + self._cpg * g), RAW_MIN, RAW_MAX)
        if u is not None and rate > 0.0:
            bad = u < rate
            if bad.any():
                kind = np.minimum((u[bad] / rate * 3.0).astype(np.int64), 2)
                raw[bad] = np.array([INVALID_CODES[0], INVALID_CODES[1], np.nan])[kind]
        return t, raw

    # ------------------------------------------------------------ helpers

    def _fold(self, t: float) -> None:
        """Fold steps complete before ``t`` into the base load; drop rings that died out."""
        done = [s for s in self._steps if s.t1 <= t]
        if done:
            for s in done:
                self._base_a[s.col] += s.a
                self._base_b[s.col] += s.b
            self._steps = [s for s in self._steps if s.t1 > t]
        if any(r.t_cut <= t for r in self._rings):
            self._rings = [r for r in self._rings if r.t_cut > t]

    @staticmethod
    def _count_before(effects: Sequence[_Step] | Sequence[_Ring], t_end: float) -> int:
        """How many (sorted) effects start at or before ``t_end``."""
        return bisect.bisect_right(effects, t_end, key=lambda e: e.t0)

    def _onehot(self, cols: Sequence[int]) -> FloatArray:
        m = np.zeros((len(cols), self.channels))
        m[np.arange(len(cols)), cols] = 1.0
        return m

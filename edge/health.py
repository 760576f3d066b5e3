"""Per-channel health judged from raw samples: what `doctor` reports and faults are made of.

A channel is faulted when it does not answer (too few readings for the time),
returns mostly invalid codes, sits at the converter's limits (saturated), repeats
one value (stuck), or is noisier than the band a load cell should stay in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.model import INVALID_CODES, Calibration, FloatArray

#: counts within this distance of the 24-bit limits are saturation
SATURATION_MARGIN = 64
ADC_MAX = 8388607
ADC_MIN = -8388608


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """Where healthy ends."""

    min_rate_share: float = 0.5  # fewer valid readings than this share of the nominal rate
    max_invalid_share: float = 0.2  # more invalid codes than this share of readings
    max_noise_g: float = 10.0  # rms noise of an idle channel above this (g)
    min_samples_stuck: int = 20  # this many identical readings in a row is a stuck converter


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    """What one channel did over an observation window."""

    channel: int
    ok: bool
    reason: str  # "ok" or why not
    grams: float | None  # median load (g)
    noise_g: float | None  # rms around the median (g)
    rate_hz: float  # valid readings per second
    invalid_share: float

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "state": "ok" if self.ok else "fault",
            "reason": self.reason,
            "grams": None if self.grams is None else round(self.grams, 1),
            "noise_g": None if self.noise_g is None else round(self.noise_g, 2),
            "rate_hz": round(self.rate_hz, 1),
            "invalid_share": round(self.invalid_share, 3),
        }


def judge_channels(
    t: FloatArray,
    raw: FloatArray,
    calibrations: tuple[Calibration, ...],
    *,
    nominal_rate_hz: float,
    duration_s: float,
    limits: HealthLimits | None = None,
) -> list[ChannelHealth]:
    """Judge every channel from ``raw`` (n, channels) observed over ``duration_s`` seconds."""
    lim = limits or HealthLimits()
    out: list[ChannelHealth] = []
    for col, cal in enumerate(calibrations):
        column = raw[:, col] if raw.size else np.empty(0)
        present = column[~np.isnan(column)]
        invalid = np.isin(present, INVALID_CODES)
        valid = present[~invalid]
        rate = valid.size / duration_s if duration_s > 0 else 0.0
        invalid_share = float(invalid.mean()) if present.size else 1.0
        grams = noise = None
        if valid.size:
            g = (valid - cal.zero_counts) / cal.counts_per_g
            grams = float(np.median(g))
            # robust rms (1.4826 x median absolute deviation): rare glitches are not noise
            noise = 1.4826 * float(np.median(np.abs(g - grams)))
        reason = "ok"
        if valid.size == 0:
            reason = "not answering" if present.size == 0 else "only invalid codes"
        elif invalid_share > lim.max_invalid_share:  # before the rate: it explains it
            reason = f"{100 * invalid_share:.0f} % invalid codes"
        elif rate < lim.min_rate_share * nominal_rate_hz:
            reason = f"slow: {rate:.1f} readings/s of {nominal_rate_hz:g}"
        elif (
            np.mean((valid >= ADC_MAX - SATURATION_MARGIN) | (valid <= ADC_MIN + SATURATION_MARGIN))
            > 0.5
        ):
            reason = "saturated"
        elif valid.size >= lim.min_samples_stuck and np.all(valid == valid[0]):
            reason = "stuck value"
        elif noise is not None and noise > lim.max_noise_g:
            reason = f"noise {noise:.1f} g rms out of band (max {lim.max_noise_g:g})"
        out.append(
            ChannelHealth(
                channel=cal.channel,
                ok=reason == "ok",
                reason=reason,
                grams=grams,
                noise_g=noise,
                rate_hz=rate,
                invalid_share=invalid_share,
            )
        )
    return out

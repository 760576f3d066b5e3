"""`freshbox calibrate`: guided tare and span of one load-cell channel.

Empty the lane, measure the zero; put a known weight on it, measure again;
counts per gram = (loaded - zero) / known grams. A noisy or implausible result
is refused with its reason; a good one is written into the ``[[channels]]``
entry of the cabinet's TOML file, which is where the daemon reads it.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import CabinetConfig, load_config
from edge.doctor import collect
from edge.errors import ConfigError, HardwareError
from edge.hardware.registry import Hardware, create_hardware
from edge.model import INVALID_CODES, FloatArray


class CalibrationRefused(HardwareError):
    """The measurement cannot be trusted; nothing was written."""


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    channel: int
    zero_counts: float
    counts_per_g: float
    noise_g: float  # rms noise of the loaded reading, in grams at the new scale
    readings: int  # valid readings used (both steps)


@dataclass(frozen=True, slots=True)
class CalibrationLimits:
    min_counts_per_g: float = 10.0
    max_counts_per_g: float = 10_000.0
    max_noise_g: float = 5.0  # rms noise of a reading (g) above which the result is refused
    min_readings: int = 10  # per step
    steady_timeout_s: float = 10.0  # longest wait for the platform to stop moving (s)


def _valid(raw: FloatArray, column: int) -> FloatArray:
    values = raw[:, column] if raw.size else np.empty(0)
    ok = ~np.isnan(values) & ~np.isin(values, INVALID_CODES)
    return values[ok]


def _robust(values: FloatArray) -> tuple[float, float, int]:
    """Mean and standard deviation (counts) without the glitches."""
    if values.size == 0:
        return math.nan, math.nan, 0
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) or 1.0
    kept = values[np.abs(values - median) <= 8 * mad]
    return float(kept.mean()), float(kept.std()), int(kept.size)


def _measure(
    hardware: Hardware,
    column: int,
    seconds: float,
    scale_guess: float,
    steady_g: float,
    steady_timeout_s: float,
    progress: Callable[[float], None] | None,
) -> tuple[float, float, int]:
    """Wait until the platform is steady (a hand just left it), then average ``seconds``
    of one channel's valid readings: mean and standard deviation (counts)."""
    deadline = time.monotonic() + steady_timeout_s
    while time.monotonic() < deadline:
        _, raw = collect(hardware, 0.5)
        _, sd, n = _robust(_valid(raw, column))
        if n >= 3 and sd / max(abs(scale_guess), 1e-9) <= steady_g:
            break
    _, raw = collect(hardware, seconds, progress=progress)
    return _robust(_valid(raw, column))


def calibrate(
    config: CabinetConfig,
    channel: int,
    known_g: float,
    *,
    prompt: Callable[[str], None],
    seconds: float = 3.0,
    progress: Callable[[float], None] | None = None,
    hardware: Hardware | None = None,
    limits: CalibrationLimits | None = None,
) -> CalibrationResult:
    """Run the guided calibration; raises ``CalibrationRefused`` with the reason."""
    lim = limits or CalibrationLimits()
    if known_g <= 0 or not math.isfinite(known_g):
        raise ConfigError(f"--known-g: must be a weight in grams > 0, not {known_g}")
    columns = {c.channel: i for i, c in enumerate(config.calibrations)}
    if channel not in columns:
        raise ConfigError(
            f"{config.source}: channel {channel} has no [[channels]] entry "
            f"(channels: {', '.join(str(c) for c in sorted(columns))})"
        )
    hw = hardware or create_hardware(config, start_t=time.time())
    try:
        prompt(f"Take everything off the lane on channel {channel}, then press Enter.")
        # the present scale, however stale, tells a steady platform from a ringing one
        guess = config.calibrations[columns[channel]].counts_per_g
        steady = lim.max_noise_g / 2
        wait = lim.steady_timeout_s
        zero, zero_sd, n0 = _measure(hw, columns[channel], seconds, guess, steady, wait, progress)
        prompt(f"Put the {known_g:g} g reference weight on it, then press Enter.")
        loaded, loaded_sd, n1 = _measure(
            hw, columns[channel], seconds, guess, steady, wait, progress
        )
    finally:
        if hardware is None:
            hw.close()
    if min(n0, n1) < lim.min_readings:
        raise CalibrationRefused(
            f"channel {channel}: only {min(n0, n1)} valid readings in {seconds:g} s "
            f"(need {lim.min_readings}): is the channel connected?"
        )
    cpg = (loaded - zero) / known_g
    if not lim.min_counts_per_g <= abs(cpg) <= lim.max_counts_per_g:
        raise CalibrationRefused(
            f"channel {channel}: implausible scale {cpg:.2f} counts per gram (expected "
            f"{lim.min_counts_per_g:g} to {lim.max_counts_per_g:g}): was the weight on the lane?"
        )
    if cpg < 0:
        raise CalibrationRefused(
            f"channel {channel}: the reading fell by {-cpg * known_g:.0f} counts under the "
            "weight: the load cell is wired the other way round"
        )
    noise_g = max(zero_sd, loaded_sd) / cpg
    if noise_g > lim.max_noise_g:
        raise CalibrationRefused(
            f"channel {channel}: too noisy ({noise_g:.1f} g rms, max {lim.max_noise_g:g}): "
            "keep the cabinet still and try again"
        )
    return CalibrationResult(channel, round(zero, 1), round(cpg, 4), noise_g, n0 + n1)


_HEADER = re.compile(r"^\s*\[")
_KEY = re.compile(r"^(\s*)(channel|zero_counts|counts_per_g)(\s*=\s*)([^#\n]*?)(\s*(#.*)?)$")


def write_calibration(path: Path, result: CalibrationResult) -> None:
    """Write ``result`` into the ``[[channels]]`` entry of ``path``, keeping the rest as is.

    The file is re-read and validated before it replaces the old one atomically.
    """
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    blocks: list[tuple[int, int]] = []
    for i, line in enumerate(lines):
        if line.strip().startswith("[[channels]]"):
            end = next((j for j in range(i + 1, len(lines)) if _HEADER.match(lines[j])), len(lines))
            blocks.append((i, end))
    for start, end in blocks:
        fields: dict[str, int] = {}
        for j in range(start + 1, end):
            m = _KEY.match(lines[j].rstrip("\n"))
            if m:
                fields[m.group(2)] = j
        if "channel" not in fields:
            continue
        value = _KEY.match(lines[fields["channel"]].rstrip("\n"))
        assert value is not None
        if value.group(4).strip() != str(result.channel):
            continue
        for key, new in (
            ("zero_counts", result.zero_counts),
            ("counts_per_g", result.counts_per_g),
        ):
            if key not in fields:
                raise ConfigError(f"{path.name}: channels entry {result.channel} has no {key}")
            m = _KEY.match(lines[fields[key]].rstrip("\n"))
            assert m is not None
            lines[fields[key]] = f"{m.group(1)}{key}{m.group(3)}{new!r}{m.group(5) or ''}\n"
        break
    else:
        raise ConfigError(f"{path.name}: no [[channels]] entry with channel = {result.channel}")
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        load_config(tmp)  # never leave a file the daemon cannot start from
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""`freshbox doctor`: check the hardware a configuration names, within seconds.

Reads every channel for a few seconds through the configured backend and judges
it (``edge.health``); reports the lock and the door. Simulated shoppers are not
started: the doctor only listens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.config import CabinetConfig
from edge.hardware.registry import Hardware, create_hardware
from edge.health import ChannelHealth, judge_channels
from edge.model import FloatArray


@dataclass(slots=True)
class DoctorReport:
    """What the doctor found."""

    backend: str
    duration_s: float
    channels: list[ChannelHealth]
    lock: str
    door: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.channels)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backend": self.backend,
            "duration_s": round(self.duration_s, 2),
            "channels": [c.to_json() for c in self.channels],
            "lock": self.lock,
            "door": self.door,
            "problems": self.problems,
        }

    def text(self) -> str:
        lines = [f"backend {self.backend}, listened {self.duration_s:.1f} s"]
        for c in self.channels:
            grams = "-" if c.grams is None else f"{c.grams:9.1f} g"
            noise = "-" if c.noise_g is None else f"{c.noise_g:5.2f} g rms"
            state = "ok   " if c.ok else "FAULT"
            lines.append(
                f"  channel {c.channel:>2}  {state} {grams:>11}  noise {noise:>12}  "
                f"{c.rate_hz:6.1f} SPS  {'' if c.ok else c.reason}".rstrip()
            )
        lines.append(f"  lock {self.lock}, door {self.door}")
        lines.extend(f"  problem: {p}" for p in self.problems)
        lines.append("all well" if self.ok else "something is faulted")
        return "\n".join(lines)


def collect(
    hardware: Hardware,
    seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    start_t: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Read ``seconds`` of raw samples from ``hardware``: (t, raw) arrays."""
    begin = clock()
    # backends run on the cabinet clock: Unix seconds (see edge.daemon)
    offset = (start_t if start_t is not None else time.time()) - begin
    ts: list[FloatArray] = []
    raws: list[FloatArray] = []
    while True:
        now = clock()
        block = hardware.source.read(now + offset)
        if block.t.size:
            ts.append(block.t)
            raws.append(block.raw)
        done = (now - begin) / seconds
        if progress is not None:
            progress(min(done, 1.0))
        if done >= 1.0:
            break
        sleep(0.05)
    channels = len(hardware.source.calibrations)
    if not ts:
        return np.empty(0), np.empty((0, channels))
    return np.concatenate(ts), np.concatenate(raws)


def run_doctor(
    config: CabinetConfig,
    *,
    seconds: float = 3.0,
    hardware: Hardware | None = None,
) -> DoctorReport:
    """Listen to the configured hardware for ``seconds`` (at most 10) and judge it."""
    seconds = min(max(seconds, 0.5), 10.0)
    start = time.time()
    hw = hardware or create_hardware(config, start_t=start)
    problems: list[str] = []
    try:
        t, raw = collect(hw, seconds, start_t=start)
        health = judge_channels(
            t,
            raw,
            hw.source.calibrations,
            nominal_rate_hz=hw.source.sample_rate_hz,
            duration_s=seconds,
        )
        lock = "locked" if hw.lock.locked else "unlocked"
        door = "open" if hw.door.is_open else "closed"
        if hw.door.is_open and hw.lock.locked:
            problems.append("the door is open while the lock is engaged")
    finally:
        if hardware is None:
            hw.close()
    return DoctorReport(config.backend, seconds, health, lock, door, problems)

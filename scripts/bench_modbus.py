#!/usr/bin/env python3
"""Measure the ``modbus`` backend: sustained polls/s and the daemon's CPU share.

1. Polls/s: ``freshbox mock weighboard`` runs in its own process (as a real board is
   another device), paced like a wire at the baud rate; ``ModbusWeightSource`` polls it
   as fast as the line allows (poll_hz 1000) for ``--seconds``.
2. CPU: the daemon (``edge.daemon.run_daemon``) on ``config/examples/modbus-emulated.toml``
   (optionally widened to ``--daemon-channels``) for ``--seconds``; CPU per thread from
   /proc, so the emulated board's thread (not part of a real cabinet) is told apart.

    python scripts/bench_modbus.py [--seconds 10] [--channels 8 16] [--daemon-channels 4 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import parse_config  # noqa: E402
from edge.daemon import run_daemon  # noqa: E402
from edge.hardware.modbus import ModbusWeightSource, poll_wire_s  # noqa: E402
from edge.model import Calibration  # noqa: E402

EXAMPLE = ROOT / "config" / "examples" / "modbus-emulated.toml"
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every live thread of this process, by thread name."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        try:
            fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            continue
        utime, stime = fields.split()[11:13]
        name = t.name.split(" ")[0]
        out[name] = out.get(name, 0.0) + (int(utime) + int(stime)) / TICK
    return out


def freshbox() -> list[str]:
    script = Path(sys.executable).parent / "freshbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "freshbox_cli"]


def bench_polling(channels: int, baud: int, seconds: float) -> dict[str, Any]:
    proc = subprocess.Popen(
        [*freshbox(), "mock", "weighboard", "--channels", str(channels), "--baud", str(baud)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        device = proc.stdout.readline().strip()
        cals = [Calibration(c, 0.0, 1.0) for c in range(channels)]
        src = ModbusWeightSource(device, cals, baud=baud, poll_hz=1000.0).start()
        time.sleep(0.5)
        src.read(float("inf"))
        before, cpu0, t0 = src.stats(), thread_cpu(), time.monotonic()
        time.sleep(seconds)
        after, cpu1, t1 = src.stats(), thread_cpu(), time.monotonic()
        block = src.read(float("inf"))
        src.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    wall = t1 - t0
    ok = after["ok"] - before["ok"]
    samples = after["samples"] - before["samples"]
    skipped = after["skipped"] - before["skipped"]
    poll_cpu = cpu1.get("modbus-poll", 0.0) - cpu0.get("modbus-poll", 0.0)
    return {
        "channels": channels,
        "baud": baud,
        "polls_per_s": ok / wall,
        "wire_limit_per_s": 1.0 / poll_wire_s(channels, baud),
        "samples_per_s": samples / wall,
        "skipped_share": skipped / max(1, samples + skipped),
        "failed": sum(after[k] - before[k] for k in ("timeouts", "crc_errors", "garbage")),
        "nan_share": float(np.isnan(block.raw).mean()) if block.raw.size else 0.0,
        "poll_thread_cpu": poll_cpu / wall,
    }


def bench_daemon(channels: int, seconds: float) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text())
    have = {c["channel"] for c in data["channels"]}
    for c in range(channels):
        if c not in have:
            data["channels"].append({"channel": c, "zero_counts": 1000 * c, "counts_per_g": 200.0})
    with tempfile.TemporaryDirectory() as tmp:
        data["cabinet"]["db"] = str(Path(tmp) / "cabinet.db")
        config = parse_config(data, source=EXAMPLE.name, base=ROOT)
        config = dataclasses.replace(config, path=EXAMPLE)
        stop = threading.Event()
        bills: list[Any] = []
        daemon = threading.Thread(
            target=run_daemon,
            kwargs={"config": config, "stop": stop, "on_session": bills.append},
            name="daemon",
        )
        daemon.start()
        time.sleep(1.0)  # started, first polls made
        cpu0, proc0, t0 = thread_cpu(), time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu1, proc1, t1 = thread_cpu(), time.process_time(), time.monotonic()
        stop.set()
        daemon.join()
    wall = t1 - t0

    def share(name: str) -> float:
        return (cpu1.get(name, 0.0) - cpu0.get(name, 0.0)) / wall

    return {
        "channels": channels,
        "daemon_loop": share("daemon"),
        "poll_thread": share("modbus-poll"),
        "daemon_total": share("daemon") + share("modbus-poll"),
        "emulated_board": share("weighboard"),
        "process": (proc1 - proc0) / wall,
        "sessions": len(bills),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--baud", type=int, default=115200, help="baud rate")
    parser.add_argument(
        "--channels", type=int, nargs="+", default=[8, 16], help="board sizes to poll"
    )
    parser.add_argument(
        "--daemon-channels",
        type=int,
        nargs="*",
        default=[4, 16],
        help="daemon channel counts (none: skip the daemon)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"modbus backend, pymodbus serial client over a pty, {args.seconds:g} s each")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print()
    print("polling (board in its own process, paced at the baud rate; poll as fast as possible):")
    for n in args.channels:
        r = bench_polling(n, args.baud, args.seconds)
        print(
            f"  {n:2d} channels @ {r['baud']}: {r['polls_per_s']:6.1f} polls/s "
            f"(wire limit {r['wire_limit_per_s']:.1f}), {r['samples_per_s']:5.1f} new samples/s "
            f"of 80, skipped {100 * r['skipped_share']:.1f} %, failed attempts {r['failed']}, "
            f"poll thread CPU {100 * r['poll_thread_cpu']:.1f} % of a core"
        )
    print()
    print("daemon on modbus-emulated.toml (80 Hz, poll_hz 100), CPU in % of one core:")
    for n in args.daemon_channels:
        r = bench_daemon(n, args.seconds)
        print(
            f"  {n:2d} channels: daemon {100 * r['daemon_total']:.1f} % "
            f"(loop + pipeline {100 * r['daemon_loop']:.1f} %, polling "
            f"{100 * r['poll_thread']:.1f} %); emulated board {100 * r['emulated_board']:.1f} %; "
            f"whole process {100 * r['process']:.1f} %; sessions billed {r['sessions']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

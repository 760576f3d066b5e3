"""``freshbox mock ...``: emulated devices to develop and test against without hardware."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any


def register(sub: Any) -> None:
    mock = sub.add_parser(
        "mock",
        help="emulated cabinet devices on pseudo-terminals, for development without hardware",
        description="Serve emulated cabinet devices on pseudo-terminals so that the real "
        "backends can talk to them as to hardware.",
    )
    mock_sub = mock.add_subparsers(dest="mock_command", metavar="SUBCOMMAND", required=True)
    wb = mock_sub.add_parser(
        "weighboard",
        help="serve an emulated Modbus RTU weigh board (docs/weighboard.md) on a pty",
        description="Serve an emulated multi-channel weigh board as a Modbus RTU slave on a "
        "pseudo-terminal (docs/weighboard.md). Prints the device path on the first line of "
        "standard output, then serves until SIGINT or SIGTERM. The load is an idle shelf "
        "from the simulator's physics (noise, drift, glitches).",
    )
    wb.add_argument(
        "--channels", type=int, default=8, help="number of load-cell channels (1-32; default 8)"
    )
    wb.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    wb.add_argument(
        "--parity", choices=("N", "E", "O"), default="N", help="parity: N, E or O (default N)"
    )
    wb.add_argument(
        "--stopbits", type=int, choices=(1, 2), default=1, help="stop bits: 1 or 2 (default 1)"
    )
    wb.add_argument("--unit", type=int, default=1, help="Modbus unit id, 1-247 (default 1)")
    wb.add_argument("--rate", type=float, default=80.0, help="conversions per second (default 80)")
    wb.add_argument(
        "--fault",
        type=_faults,
        default=None,
        metavar="SPEC",
        help="faults to inject, e.g. crc=0.05,silence=0.02,garbage=0.01,dead=3,saturate=5+6 "
        "(shares of answers; channel numbers joined by +)",
    )
    wb.add_argument("--seed", type=int, default=7, help="seed of the load and the faults")
    wb.add_argument(
        "--link", type=Path, help="also make this symlink to the device (removed at exit)"
    )
    wb.add_argument(
        "--no-pace",
        action="store_true",
        help="answer at once instead of when a real line at --baud would deliver the answer",
    )
    wb.add_argument("--duration", type=float, help="stop after this many seconds")
    wb.set_defaults(func=_weighboard)


def _faults(text: str) -> Any:
    from firmware_mock.weighboard import Faults

    try:
        return Faults.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _weighboard(args: argparse.Namespace) -> int:
    from firmware_mock.weighboard import WeighBoard, idle_load, serve_until

    try:
        board = WeighBoard(
            args.channels,
            load=idle_load(args.channels, args.rate, seed=args.seed),
            rate_hz=args.rate,
            unit=args.unit,
            baud=args.baud,
            parity=args.parity,
            stopbits=args.stopbits,
            faults=args.fault,
            seed=args.seed,
            pace=not args.no_pace,
            link=args.link,
        )
    except ValueError as exc:
        print(f"freshbox mock weighboard: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        device = board.start()
        print(device, flush=True)
        print(
            f"weighboard: {board.n_channels} channels, unit {board.unit}, "
            f"{board.baud} {8}{board.parity}{board.stopbits}, {board.rate_hz:g} Hz, "
            f"faults {board.faults.describe()}, on {device}"
            + (f" (link {args.link})" if args.link else "")
            + "; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        serve_until(board, stop, args.duration)
    finally:
        board.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stats = board.stats()
    print(
        "weighboard: stopped; " + ", ".join(f"{k} {v}" for k, v in stats.items() if v),
        file=sys.stderr,
        flush=True,
    )
    return 0

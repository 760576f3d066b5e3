"""``freshbox edge ...``: the cabinet daemon (and ``edge demo``, one simulated cabinet alone)."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "defaults/cabinet.toml"


def register(sub: Any) -> None:
    edge = sub.add_parser(
        "edge",
        help="the cabinet daemon",
        description="Run the cabinet daemon on the hardware its configuration names.",
    )
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="SUBCOMMAND", required=True)
    run = edge_sub.add_parser(
        "run",
        help="run the daemon in real time (Ctrl-C stops it cleanly, lock engaged)",
        description="Run the cabinet daemon in real time, logging sessions and bills.",
    )
    run.add_argument("--config", type=Path, required=True, help="cabinet TOML file")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.set_defaults(func=_edge_run)

    doctor = sub.add_parser(
        "doctor",
        help="check the hardware a configuration names (exit 1 when something is faulted)",
        description="Listen to every load-cell channel for a few seconds and report its state "
        "(ok or fault, and why), grams, noise, achieved sample rate; and the lock and door.",
    )
    doctor.add_argument("--config", type=Path, required=True, help="cabinet TOML file")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.add_argument(
        "--seconds", type=float, default=3.0, help="how long to listen (0.5 to 10 s)"
    )
    doctor.set_defaults(func=_doctor)

    cal = sub.add_parser(
        "calibrate",
        help="guided tare and span of one channel, written into the cabinet TOML",
        description="Empty the lane, then put a known weight on it: the zero and the counts "
        "per gram are measured and written into the [[channels]] entry of the config file. "
        "A noisy or implausible result is refused with its reason.",
    )
    cal.add_argument("--config", type=Path, required=True, help="cabinet TOML file (rewritten)")
    cal.add_argument("--channel", type=int, required=True, help="load-cell channel number")
    cal.add_argument("--known-g", type=float, required=True, help="the reference weight in grams")
    cal.add_argument("--seconds", type=float, default=3.0, help="how long each step averages (s)")
    cal.set_defaults(func=_calibrate)

    demo = edge_sub.add_parser(
        "demo",
        help="one simulated cabinet with shoppers, alone (no backend), printing every bill",
        description="Run the cabinet daemon on the simulated cabinet of the embedded default "
        "configuration, with simulated residents shopping, printing every bill.",
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument(
        "--db", type=Path, default=Path("var/cabinet-demo-01.db"), help="the cabinet store"
    )
    demo.set_defaults(func=_demo)


def default_config_text() -> str:
    """The embedded default cabinet configuration (same as config/cabinet.example.toml)."""
    return resources.files("edge").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")


def _print_session(result: Any) -> None:
    rec = result.record
    items = ", ".join(
        f"{ln['qty']} x {ln['sku']}" + (f" ({ln['weight_g']:.0f} g)" if ln["qty"] == 1 else "")
        for ln in rec["lines"]
    )
    flags = f" [{', '.join(rec['flags'])}]" if rec["flags"] else ""
    print(
        f"bill {rec['session_id']} {rec['role']} {rec['resident'] or '-'}: "
        f"{items or 'nothing'} = {rec['total_fen'] / 100:.2f} CNY{flags}",
        flush=True,
    )


def _edge_run(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.daemon import run_daemon

    config = load_config(args.config)
    _info_logging()
    run_daemon(config, duration=args.duration, on_session=_print_session)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tomllib

    from edge.config import parse_config
    from edge.daemon import run_daemon

    data = tomllib.loads(default_config_text())
    data["cabinet"]["db"] = str(args.db)
    config = parse_config(data, source="embedded defaults", base=Path.cwd())
    _info_logging()
    print(
        f"freshbox demo: cabinet {config.cabinet_id} on the simulated backend, "
        f"store {config.db_path}; simulated residents shop every ~{config.sim.mean_gap_s:.0f} s. "
        "Ctrl-C stops.",
        flush=True,
    )
    run_daemon(config, duration=args.duration, on_session=_print_session)
    return 0


def _info_logging() -> None:
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for h in root.handlers:
        h.setStream(sys.stderr)  # type: ignore[attr-defined]


def _doctor(args: argparse.Namespace) -> int:
    import json

    from edge.config import load_config
    from edge.doctor import run_doctor

    config = load_config(args.config)
    report = run_doctor(config, seconds=args.seconds)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.text())
    return 0 if report.ok else 1


def _progress_bar(done: float) -> None:
    width = 30
    filled = int(done * width)
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {100 * done:3.0f} %")
    if done >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _calibrate(args: argparse.Namespace) -> int:
    from edge.calibrate import CalibrationRefused, calibrate, write_calibration
    from edge.config import load_config

    config = load_config(args.config)

    def prompt(text: str) -> None:
        print(text, flush=True)
        sys.stdin.readline()

    try:
        result = calibrate(
            config,
            args.channel,
            args.known_g,
            prompt=prompt,
            seconds=args.seconds,
            progress=_progress_bar,
        )
    except CalibrationRefused as exc:
        print(f"freshbox: refused: {exc}", file=sys.stderr)
        return 1
    write_calibration(args.config, result)
    print(
        f"channel {result.channel}: zero_counts = {result.zero_counts:g}, "
        f"counts_per_g = {result.counts_per_g:g} (noise {result.noise_g:.2f} g rms); "
        f"written to {args.config}"
    )
    return 0

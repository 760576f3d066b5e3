"""``freshbox sim ...``: scenarios and traces through the real pipeline in virtual time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    sim = sub.add_parser(
        "sim",
        help="run scenarios and recorded traces through the cabinet pipeline in virtual time",
        description="Run the real edge pipeline on a simulated cabinet or a recorded trace, "
        "in virtual time, and print what the cabinet billed (docs/bills.md).",
    )
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)

    run = sim_sub.add_parser(
        "run",
        help="simulate a scenario file (freshbox-scenario/1) and print the bills",
        description="Simulate SCENARIO (docs/scenario.md) and print what was billed.",
    )
    run.add_argument("scenario", type=Path, metavar="SCENARIO.json", help="scenario file")
    run.add_argument("--json", action="store_true", help="print one JSON object (docs/bills.md)")
    run.add_argument("--db", type=Path, help="keep the cabinet store (SQLite) at this path")
    run.set_defaults(func=_run)

    replay = sim_sub.add_parser(
        "replay",
        help="bill a recorded trace (freshbox-trace/1) exactly as live hardware",
        description="Replay TRACE (docs/trace.md) through the pipeline and print what was billed.",
    )
    replay.add_argument("trace", type=Path, metavar="TRACE.jsonl", help="trace file")
    replay.add_argument("--json", action="store_true", help="print one JSON object (docs/bills.md)")
    replay.add_argument("--db", type=Path, help="keep the cabinet store (SQLite) at this path")
    replay.set_defaults(func=_replay)

    record = sim_sub.add_parser(
        "record",
        help="write what the simulated sensors of a scenario produce as a trace",
        description="Simulate SCENARIO and write its samples and events as a trace file.",
    )
    record.add_argument("scenario", type=Path, metavar="SCENARIO.json", help="scenario file")
    record.add_argument(
        "-o", "--out", type=Path, required=True, metavar="TRACE.jsonl", help="trace file to write"
    )
    record.set_defaults(func=_record)


def _print(result: Any, as_json: bool) -> None:
    from firmware_mock.runner import format_bills

    if as_json:
        json.dump(result.to_json(), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(format_bills(result))


def _run(args: argparse.Namespace) -> int:
    from firmware_mock.runner import run_scenario

    _print(run_scenario(args.scenario, db_path=args.db), args.json)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from firmware_mock.runner import replay_trace

    _print(replay_trace(args.trace, db_path=args.db), args.json)
    return 0


def _record(args: argparse.Namespace) -> int:
    from firmware_mock.runner import record_scenario

    return record_scenario(args.scenario, args.out)

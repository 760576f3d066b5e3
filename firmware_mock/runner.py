"""Run the real edge pipeline over a scenario or a recorded trace, in virtual time.

The store is written to a temporary file and moved into place only when the
whole input was processed, so a malformed file never leaves a half-written store.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.cabinet import Cabinet, ulid_factory, utc_epoch
from edge.hardware.interfaces import MemoryLock
from edge.model import CabinetInput, CabinetSpec, SampleBlock
from edge.session import SessionConfig
from edge.store import CabinetStore
from edge.weighing import WeighingConfig

#: The wall time virtual second zero stands for in simulations and replays.
VIRTUAL_EPOCH = "2026-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a virtual-time run billed, in the shape of ``docs/bills.md``."""

    sessions: list[dict[str, Any]]
    events: list[dict[str, Any]]
    samples: int

    def to_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "events": self.events}


def run_stream(
    spec: CabinetSpec,
    items: Iterable[CabinetInput],
    *,
    db_path: Path | None = None,
    seed: int = 0,
    weighing: WeighingConfig | None = None,
    sessions: SessionConfig | None = None,
) -> RunResult:
    """Feed ``items`` to a fresh cabinet controller and collect what it billed."""
    epoch = utc_epoch(VIRTUAL_EPOCH)
    with tempfile.TemporaryDirectory(prefix="freshbox-run-") as tmp:
        tmp_db = Path(tmp) / "cabinet.db"
        clock = _VirtualWall(epoch)
        store = CabinetStore(tmp_db, cabinet_id=spec.cabinet_id, now=clock.wall)
        try:
            cabinet = Cabinet(
                spec,
                store=store,
                lock=MemoryLock(),
                epoch=epoch,
                weighing=weighing,
                sessions=sessions,
                new_id=ulid_factory(epoch, random.Random(seed)),
            )
            samples = 0
            for item in items:
                cabinet.feed(item)
                clock.t = cabinet.now
                if isinstance(item, SampleBlock):
                    samples += int(item.raw.size)
        finally:
            store.close()
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp_db), db_path)
    return RunResult(cabinet.out.sessions, cabinet.out.events, samples)


class _VirtualWall:
    """Wall time of the virtual clock, for the store's timestamps."""

    def __init__(self, epoch: Any) -> None:
        self.epoch = epoch
        self.t = 0.0

    def wall(self) -> Any:
        from datetime import timedelta

        return self.epoch + timedelta(seconds=self.t)


def run_scenario(path: str | Path, *, db_path: Path | None = None) -> RunResult:
    """``freshbox sim run``: simulate a scenario file and bill it."""
    from firmware_mock.scenario import load_scenario
    from firmware_mock.simulator import SimulatedCabinet

    scenario = load_scenario(path)
    sim = SimulatedCabinet(scenario)
    return run_stream(sim.spec, sim.stream(), db_path=db_path, seed=scenario.seed)


def replay_trace(path: str | Path, *, db_path: Path | None = None) -> RunResult:
    """``freshbox sim replay``: bill a recorded trace exactly as live hardware."""
    from firmware_mock.trace import read_trace

    spec, items = read_trace(path)
    return run_stream(spec, items, db_path=db_path)


def record_scenario(path: str | Path, out: str | Path) -> int:
    """``freshbox sim record``: write what the simulated sensors produced as a trace."""
    from firmware_mock.scenario import load_scenario
    from firmware_mock.simulator import SimulatedCabinet
    from firmware_mock.trace import write_trace

    scenario = load_scenario(path)
    sim = SimulatedCabinet(scenario)
    out_path = Path(out)
    tmp = out_path.with_name(out_path.name + ".part")
    write_trace(tmp, sim.spec, sim.stream())
    tmp.replace(out_path)
    return 0


def format_bills(result: RunResult) -> str:
    """The human-readable form of what was billed."""
    lines: list[str] = []
    for s in result.sessions:
        who = s["resident"] or "-"
        lines.append(
            f"session {s['session_id']}  {s['role']} {who}  "
            f"closed {_t(s['closed_at'])}  billed {_t(s['billed_at'])}  "
            f"total {s['total_fen'] / 100:.2f} CNY"
            + (f"  flags: {', '.join(s['flags'])}" if s["flags"] else "")
        )
        for ln in s["lines"]:
            lines.append(
                f"  lane {ln['lane']:>2}  {ln['sku']:<16} x{ln['qty']:<3} {ln['weight_g']:>8.1f} g"
                f"  {ln['amount_fen'] / 100:>8.2f} CNY"
            )
        for ev in s["evidence"]:
            lines.append(
                f"    evidence lane {ev['lane']:>2}: {ev['before_g']:.1f} g"
                f" -> {ev['after_g']:.1f} g ({ev['delta_g']:+.1f} g)"
            )
    for e in result.events:
        lines.append(f"event {e['type']} at {e['t']:.2f}")
    if not lines:
        lines.append("nothing billed")
    return "\n".join(lines)


def _t(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"

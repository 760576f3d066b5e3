"""Crash-test helper: bill sessions into a CabinetStore as fast as possible until killed.

Usage: ``python tests/crash_writer.py DB JOURNAL --seed N [--count K]``

On start it recovers what a killed predecessor left open, the way the daemon
would (an ``unlocked`` session expires, an ``open``/``closed`` one is marked
recovered and billed from its saved baseline), prints ``ready`` on standard
output, then loops: begin, mark_opened, sometimes mark_closed, finish_session
with several lines and evidence plus an inventory update, sometimes an event,
sometimes an unused unlock that expires, sometimes a cumulative outbox ack.

After every committed finish_session it appends ``<session_id> <seq>`` to
JOURNAL with a plain unbuffered write. A SIGKILL leaves the operating system's
copy of that file intact, so every line in it names a sale the store must have.

Without ``--count`` it runs until killed; with it, it bills K sessions, prints
``done K`` and exits 0.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulid import ULID

from edge.store import CabinetStore, InventoryRow

CABINET_ID = "cab-crash"
LANES = (1, 2, 3, 4, 5, 6)
PRICES = {1: 690, 2: 450, 3: 1280, 4: 320, 5: 999, 6: 150}
TRACKED_LANE = 6


@dataclass
class _Sale:
    lines: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    total_fen: int
    flags: list[str]
    inventory: dict[int, InventoryRow]

    def payload(self, session_id: str) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "cabinet_id": CABINET_ID,
            "total_fen": self.total_fen,
            "lines": self.lines,
            "evidence": self.evidence,
            "flags": self.flags,
        }


def _sale(rng: random.Random, baseline: dict[int, float], recovered: bool) -> _Sale:
    lines: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    inventory: dict[int, InventoryRow] = {}
    for lane in sorted(rng.sample(LANES, rng.randint(0, 4))):
        qty = rng.randint(1, 3)
        weight = round(qty * rng.uniform(180.0, 520.0), 1)
        before = baseline.get(lane, 5000.0)
        after = round(before - weight, 1)
        line: dict[str, Any] = {
            "lane": lane,
            "sku": f"sku-{lane}",
            "qty": qty,
            "weight_g": weight,
            "unit_price_fen": PRICES[lane],
            "amount_fen": qty * PRICES[lane],
        }
        if lane == TRACKED_LANE:
            line["items"] = [round(weight / qty, 1)] * qty
        lines.append(line)
        delta = round(after - before, 1)
        evidence.append({"lane": lane, "before_g": before, "after_g": after, "delta_g": delta})
        inventory[lane] = InventoryRow(
            lane=lane,
            sku=f"sku-{lane}",
            mode="tracked" if lane == TRACKED_LANE else "unit",
            level_g=after,
            count=None if lane == TRACKED_LANE else rng.randint(0, 20),
            items=[round(rng.uniform(150.0, 300.0), 1)] * 3 if lane == TRACKED_LANE else [],
        )
    return _Sale(
        lines=lines,
        evidence=evidence,
        total_fen=sum(int(line["amount_fen"]) for line in lines),
        flags=["needs_review"] if recovered else [],
        inventory=inventory,
    )


def _finish(
    store: CabinetStore,
    rng: random.Random,
    session_id: str,
    baseline: dict[int, float],
    t: float,
    journal_fd: int,
    *,
    recovered: bool = False,
) -> int:
    sale = _sale(rng, baseline, recovered)
    seq = store.finish_session(
        session_id,
        closed_at=t,
        billed_at=t + 0.5,
        total_fen=sale.total_fen,
        flags=sale.flags,
        lines=sale.lines,
        evidence=sale.evidence,
        payload=sale.payload(session_id),
        inventory=sale.inventory,
    )
    os.write(journal_fd, f"{session_id} {seq}\n".encode())
    return seq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("journal", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    journal_fd = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    store = CabinetStore(args.db, cabinet_id=CABINET_ID)
    # Recover what the killed predecessor left open, as the daemon does on restart.
    for s in store.open_sessions():
        t = time.monotonic()
        if s.state == "unlocked":
            store.expire_session(s.session_id, t, {"session_id": s.session_id, "total_fen": 0})
        else:
            store.mark_recovered(s.session_id)
            _finish(store, rng, s.session_id, s.baseline, t, journal_fd, recovered=True)
    print("ready", flush=True)

    billed = 0
    while args.count is None or billed < args.count:
        t = time.monotonic()
        session_id = str(ULID())
        store.begin_session(session_id, f"r-{rng.randint(1, 99)}", "resident", t)
        if rng.random() < 0.1:
            store.expire_session(session_id, t + 15.0, {"session_id": session_id, "total_fen": 0})
            continue
        baseline = {lane: round(rng.uniform(2000.0, 8000.0), 1) for lane in LANES}
        store.mark_opened(session_id, t + 0.2, baseline)
        if rng.random() < 0.5:
            store.mark_closed(session_id, t + 5.0)
        if rng.random() < 0.3:
            store.record_event(
                t + 3.0, "door_open_too_long", session_id=session_id, data={"open_s": 121.5}
            )
        _finish(store, rng, session_id, baseline, t + 5.0, journal_fd)
        billed += 1
        if rng.random() < 0.2:
            store.record_event(t + 6.0, "sensor_fault", data={"channel": rng.randint(0, 5)})
        if rng.random() < 0.1:
            pending = store.outbox_pending(limit=50)
            if pending:
                store.outbox_ack(pending[len(pending) // 2].seq)
    store.close()
    os.close(journal_fd)
    print(f"done {billed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

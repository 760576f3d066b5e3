"""Crash-test helper: the real billing process, fed a long virtual-time run flat out.

Usage: ``python tests/crash_billing.py DB SEED [--sessions N] [--max-seconds S]``

It builds the cabinet controller (:class:`edge.cabinet.Cabinet`) on a persistent
:class:`edge.store.CabinetStore` at DB, exactly as ``firmware_mock.runner.run_stream``
does for virtual time (``MemoryLock``, seeded ``ulid_factory``, a store wall clock
that follows the cabinet clock), calls ``recover()`` *first* (so a restart after a
SIGKILL picks up the session the killed predecessor left open), prints
``ready <sessions already stored> <sessions recovered>`` and then drives one live
:class:`firmware_mock.simulator.SimulatedCabinet` as fast as it can: idle samples,
unlock, open, takes (sometimes several packs at once, sometimes a return), close,
and samples until the cabinet has billed; now and then an unlock that is never
used (it expires) and, when a lane runs low, an operator restocking session.
Nothing sleeps: the process spends its time in the filter, level tracker, billing
and store calls. Every session the cabinet finishes prints one line (flushed)::

    billed <session_id> <role> <total_fen> <flags, comma-separated, or ->
    expired <session_id> <role> 0 unlock_unused

The cabinet layout (lanes, calibrations, initial stock) is that of
``generate_scenario(SEED, "standard")`` and is the same on every start.

Restarting after a kill
-----------------------
The stream before the kill cannot be replayed exactly (nobody knows how far the
killed process got), so a restart continues with NEW sessions instead:

* every random choice of session ``k`` comes from a generator seeded with
  ``(SEED, k)`` where ``k`` counts the sessions already in the store, and the
  session ids come from ``ulid_factory`` seeded likewise, so a restart never
  repeats a stored session;
* virtual time continues after the last time stored (sessions, events,
  inventory) plus ``RESTART_GAP_S``: every sample and event is shifted by that
  offset, so the cabinet clock stays monotonic across restarts;
* the simulated shelves are rebuilt from the store's inventory (what the last
  bill left), so the physical cabinet matches what the store believes; whatever
  the interrupted session did on the shelves is lost with the killed process, as
  if the shopper had put everything back. ``recover()`` then bills that session
  from its saved baseline (flag ``recovered``) or, when its door never opened,
  expires it (``unlock_unused``), before any new unlock is fed.

Without ``--sessions`` it runs until killed (or for ``--max-seconds`` of wall
time, a guard against orphans, then exits 3); with it, it runs N new sessions,
waits until nothing is open, prints ``done N`` and exits 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from edge.cabinet import Cabinet, ulid_factory, utc_epoch
from edge.hardware.interfaces import MemoryLock
from edge.model import CabinetInput, DoorEvent, Lane, SampleBlock, UnlockEvent
from edge.session import SessionResult
from edge.store import CabinetStore, InventoryRow
from firmware_mock.corpus import generate_scenario
from firmware_mock.scenario import Scenario
from firmware_mock.simulator import SimulatedCabinet

CABINET_ID = "cab-crash-billing"
VIRTUAL_EPOCH = "2026-01-01T00:00:00Z"
#: virtual seconds between the last stored time and the first sample after a restart
RESTART_GAP_S = 10.0
#: samples are fed in blocks of this many virtual seconds (as ``SimulatedCabinet.stream``)
BLOCK_S = 0.1
#: a lane with fewer items than this is restocked by an operator
LOW_STOCK = 2
#: virtual seconds a session may take to bill after the door closed (max_settle_s is 8)
BILL_TIMEOUT_S = 30.0


class _Wall:
    """The store's wall clock: the epoch plus the cabinet clock."""

    def __init__(self, epoch: datetime, t: float) -> None:
        self.epoch = epoch
        self.t = t

    def __call__(self) -> datetime:
        return self.epoch + timedelta(seconds=self.t)


def _last_time(store: CabinetStore) -> float:
    """The latest cabinet-clock time anything in the store carries (0 for a new store)."""
    times = [0.0]
    for s in store.sessions():
        times += [
            t
            for t in (s.unlocked_at, s.opened_at, s.closed_at, s.billed_at, s.expired_at)
            if t is not None
        ]
    times += [e.t for e in store.events()]
    times += [r.updated_t for r in store.inventory().values() if r.updated_t is not None]
    return max(times)


def _stock_now(layout: Scenario, inventory: dict[int, InventoryRow]) -> dict[int, list[float]]:
    """What the shelves hold: the store's inventory where it has the lane, else the
    layout's initial stock."""
    stock: dict[int, list[float]] = {}
    for ln in layout.lanes:
        initial = [float(w) for w in layout.stock.get(ln.lane, [])]
        row = inventory.get(ln.lane)
        if row is None or row.sku != ln.sku:
            stock[ln.lane] = initial
        elif ln.mode == "tracked":
            stock[ln.lane] = [float(w) for w in row.items]
        elif ln.mode == "unit":
            count = row.count or 0
            stock[ln.lane] = [row.level_g / count] * count if count > 0 and row.level_g > 0 else []
        else:
            mean = sum(initial) / len(initial) if initial else 300.0
            k = max(1, round(row.level_g / mean))
            stock[ln.lane] = [row.level_g / k] * k if row.level_g > 20.0 else []
    return stock


class BillingRun:
    """One process's life: recover, then new sessions until killed or done."""

    def __init__(self, db: Path, seed: int) -> None:
        self.seed = seed
        self.layout = generate_scenario(seed, "standard")
        calibrations = SimulatedCabinet(self.layout).calibrations
        self.epoch = utc_epoch(VIRTUAL_EPOCH)
        self.wall = _Wall(self.epoch, 0.0)
        self.store = CabinetStore(db, cabinet_id=CABINET_ID, now=self.wall)
        self.first_session = len(self.store.sessions())
        self.offset = _last_time(self.store) + RESTART_GAP_S
        self.wall.t = self.offset
        self.sim = SimulatedCabinet.live(
            self.layout.lanes,
            _stock_now(self.layout, self.store.inventory()),
            self.layout.physics,
            seed=seed * 1_000 + self.first_session,
            cabinet_id=CABINET_ID,
            calibrations=calibrations,
        )
        self.lanes: dict[int, Lane] = {ln.lane: ln for ln in self.layout.lanes}
        self.finished: set[str] = set()
        self.cabinet = Cabinet(
            self.sim.spec,
            store=self.store,
            lock=MemoryLock(),
            epoch=self.epoch,
            new_id=ulid_factory(self.epoch, random.Random(seed * 1_000_003 + self.first_session)),
            on_session=self._finished,
        )
        self.to_recover = {s.session_id for s in self.store.open_sessions()}
        self.recovered = self.cabinet.recover(door_open=False)

    # -------------------------------------------------------------- plumbing

    def _finished(self, result: SessionResult) -> None:
        record = result.record
        flags = list(record["flags"])
        status = "expired" if "unlock_unused" in flags else "billed"
        print(
            f"{status} {result.session_id} {record['role']} {record['total_fen']}"
            f" {','.join(flags) or '-'}",
            flush=True,
        )
        self.finished.add(result.session_id)

    def feed(self, item: CabinetInput) -> None:
        """Give the cabinet one input of the simulator, shifted to this run's virtual time."""
        shifted: CabinetInput
        if isinstance(item, SampleBlock):
            shifted = SampleBlock(item.t + self.offset, item.raw)
        elif isinstance(item, DoorEvent):
            shifted = DoorEvent(item.t + self.offset, item.open)
        else:
            shifted = UnlockEvent(item.t + self.offset, item.resident, item.role, item.session_id)
        self.cabinet.feed(shifted)
        self.wall.t = max(self.wall.t, self.cabinet.now)

    def idle(self, seconds: float) -> None:
        """Feed the samples of the next ``seconds`` virtual seconds."""
        block = self.sim.advance(self.sim.now + seconds)
        per_block = max(1, round(BLOCK_S * self.sim.sample_rate_hz))
        for i in range(0, block.t.shape[0], per_block):
            self.feed(SampleBlock(block.t[i : i + per_block], block.raw[i : i + per_block]))

    def until_billed(self, session_ids: set[str]) -> None:
        """Feed samples until the cabinet has finished these sessions and holds none."""
        deadline = self.sim.now + BILL_TIMEOUT_S
        while not session_ids <= self.finished or self.cabinet.session is not None:
            if self.sim.now > deadline:
                raise RuntimeError(
                    f"sessions {sorted(session_ids - self.finished)} not finished after"
                    f" {BILL_TIMEOUT_S} s (cabinet session {self.cabinet.session})"
                )
            self.idle(0.5)

    # -------------------------------------------------------------- sessions

    def recover(self) -> None:
        """Let ``recover()``'s sessions be billed or expired before anything new happens.

        Needed: until its first full statistics window the cabinet holds the recovered
        session aside (``Cabinet.session`` is None), and an unlock accepted then is
        orphaned when the recovery resumes (see the xfail test in test_crash_billing.py).
        """
        self.until_billed(self.to_recover)

    def session(self, k: int) -> None:
        """Session number ``k`` of the store: a shopper, an unused unlock or a restock."""
        rng = random.Random(f"{self.seed}:{k}")
        self.idle(rng.uniform(1.0, 4.0))
        low = [n for n in self.lanes if len(self.sim.shelf_g(n)) < LOW_STOCK]
        if low:
            self._restock(rng, low)
        elif rng.random() < 0.08:
            self._unused(rng)
        else:
            self._shop(rng)

    def unlock(self, resident: str, role: str = "resident") -> str:
        """A verified unlock now; returns the new session's id (refused: RuntimeError)."""
        before = self.cabinet.session
        self.feed(self.sim.unlock(resident, "operator" if role == "operator" else "resident"))
        session = self.cabinet.session
        if session is None or session is before:
            raise RuntimeError(f"unlock for {resident} at {self.sim.now} was refused")
        return session.session_id

    def _unused(self, rng: random.Random) -> None:
        sid = self.unlock(f"r-{rng.randint(1, 499)}")
        self.idle(rng.uniform(15.5, 18.0))
        self.until_billed({sid})

    def _shop(self, rng: random.Random) -> None:
        sid = self.unlock(f"r-{rng.randint(1, 499)}")
        self.idle(rng.uniform(0.5, 2.5))
        self.feed(self.sim.open_door())
        self.idle(rng.uniform(0.8, 2.0))
        taken: list[int] = []  # lane of each item taken, in order of taking
        for _ in range(rng.randint(1, 3)):
            full = [n for n in self.lanes if self.sim.shelf_g(n)]
            if not full:
                break
            lane = rng.choice(full)
            have = len(self.sim.shelf_g(lane))
            count = 1
            if self.lanes[lane].mode != "tracked" and have >= 2 and rng.random() < 0.25:
                count = rng.randint(2, min(3, have))
            self.sim.take(lane, rng.randrange(have - count + 1), count)
            taken += [lane] * count
            self.idle(rng.uniform(0.9, 2.2))
        if taken and rng.random() < 0.25:
            index = rng.randrange(len(taken))
            self.sim.return_item(taken[index], index)
            self.idle(rng.uniform(0.9, 2.2))
        self.idle(rng.uniform(0.3, 1.5))
        self.feed(self.sim.close_door())
        self.until_billed({sid})

    def _restock(self, rng: random.Random, lanes: list[int]) -> None:
        sid = self.unlock(f"op-{rng.randint(1, 9)}", "operator")
        self.idle(rng.uniform(0.5, 1.5))
        self.feed(self.sim.open_door())
        self.idle(rng.uniform(0.8, 1.5))
        for lane in lanes:
            for w in self._new_items(rng, self.lanes[lane]):
                self.sim.place(lane, w)
                self.idle(rng.uniform(1.2, 2.0))
        self.idle(rng.uniform(0.3, 1.0))
        self.feed(self.sim.close_door())
        self.until_billed({sid})

    def _new_items(self, rng: random.Random, lane: Lane) -> list[float]:
        initial = [float(w) for w in self.layout.stock.get(lane.lane, [])] or [300.0]
        n = rng.randint(3, 5)
        if lane.mode == "unit":
            unit = float(lane.unit_weight_g or initial[0])
            sd = float(lane.unit_weight_sd_g or 0.0)
            return [round(unit + sd * max(-2.5, min(2.5, rng.gauss(0, 1))), 1) for _ in range(n)]
        lo, hi = min(initial) - 30.0, max(initial) + 30.0
        if lane.mode == "weighed":
            return [round(rng.uniform(lo, hi), 1) for _ in range(n)]
        # tracked: every item at least 15 g from every other one on the lane
        items = list(self.sim.shelf_g(lane.lane))
        out: list[float] = []
        for _ in range(50 * n):
            w = round(rng.uniform(lo, hi), 1)
            if all(abs(w - x) >= 15.0 for x in items):
                items.append(w)
                out.append(w)
                if len(out) == n:
                    break
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    run = BillingRun(args.db, args.seed)
    print(f"ready {run.first_session} {run.recovered}", flush=True)
    try:
        run.recover()
        k = run.first_session
        done = 0
        while args.sessions is None or done < args.sessions:
            if time.monotonic() - started > args.max_seconds:
                print("timeout", flush=True)
                return 3
            run.session(k)
            k += 1
            done += 1
        if run.store.open_sessions():
            raise RuntimeError(f"sessions left open: {run.store.open_sessions()}")
        print(f"done {done}", flush=True)
        return 0
    finally:
        run.store.close()


if __name__ == "__main__":
    sys.exit(main())

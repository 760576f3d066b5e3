"""Simulated cabinets: real cabinet stores and real uplinks, with produce instead of shelves.

For the sync tests, ``scripts/chaos_sync.py`` and ``scripts/bench_sync.py``: each
simulated cabinet is an :class:`edge.store.CabinetStore` opened with its signing
key (so every record is sealed exactly as on a cabinet) and an
:class:`~cloud_sync.uplink.Uplink`; outbox records are produced directly (bills
and events written through the store's own methods, no weighing pipeline), and
``unlock`` commands open a session that is billed ``door_s`` seconds later.

``python -m cloud_sync.simcab --dir D --cabinets a,b --port P --secrets S
--backend-public-key K --target N`` runs a fleet until killed: it produces records
until each cabinet's outbox has issued ``N``, prints ``ready`` once every uplink
is connected, and with ``--exit-when-acked`` exits 0 once every record is acked.
This is a tool, not production code: it imports :mod:`edge.store`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_sync.config import BrokerSettings, SyncSettings
from cloud_sync.keys import generate_private_key, load_private_key, save_private_key
from cloud_sync.nonces import NonceStore
from cloud_sync.transport import public_key_spec
from cloud_sync.uplink import CommandHandler, CommandRefused, Uplink

if TYPE_CHECKING:
    from edge.store import CabinetStore

__all__ = ["SimCabinet", "SimFleet", "ensure_keys", "main"]

log = logging.getLogger("freshbox.sync.simcab")

SKUS = (("tomato-500", 690), ("bokchoy", 320), ("eggs-10", 1290), ("chili-150", 380))


def ensure_keys(directory: Path, cabinets: Sequence[str]) -> dict[str, Path]:
    """``directory/CAB.key`` for every cabinet, generating the missing ones."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for cab in cabinets:
        path = directory / f"{cab}.key"
        if not path.exists():
            save_private_key(generate_private_key(), path)
        out[cab] = path
    return out


@dataclass
class SimCabinet:
    """One simulated cabinet: store, nonce store, uplink, and sessions waiting to be billed."""

    cabinet_id: str
    store: CabinetStore
    nonces: NonceStore
    rng: random.Random
    uplink: Uplink = field(init=False)
    due: deque[tuple[float, str, str]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0
    #: set when a session becomes due (the fleet's billing thread then looks at once)
    wake: threading.Event = field(default_factory=threading.Event)

    def new_sid(self) -> str:
        self.counter += 1
        return f"{self.cabinet_id}-{time.time_ns():x}-{self.counter}-{self.rng.getrandbits(24):06x}"

    # ---------------------------------------------------------------- records

    def sale(self, t: float) -> None:
        """A whole door session, billed: four transactions through the store."""
        sid = self.new_sid()
        self.store.begin_session(sid, f"r-{self.rng.randint(1, 500)}", "resident", t)
        self._bill(sid, t)

    def _bill(self, sid: str, t: float) -> None:
        lane = self.rng.randint(1, len(SKUS))
        sku, price = SKUS[lane - 1]
        qty = self.rng.randint(1, 3)
        before = 2000.0 + self.rng.random() * 100
        delta = -150.0 * qty
        self.store.mark_opened(sid, t + 0.5, {lane: before})
        line = {
            "lane": lane,
            "sku": sku,
            "qty": qty,
            "weight_g": -delta,
            "unit_price_fen": price,
            "amount_fen": price * qty,
        }
        evidence = {"lane": lane, "before_g": before, "after_g": before + delta, "delta_g": delta}
        row = self.store.session(sid)
        payload = {
            "session_id": sid,
            # who, as the real cabinet's sale record says it (docs/protocol.md 3.4): the
            # backend charges this resident
            "resident": None if row is None else row.resident,
            "role": "resident" if row is None else row.role,
            "lines": [line],
            "total_fen": price * qty,
            "flags": [],
            "evidence": [evidence],
            "billed_at": round(t + 9.0, 3),
        }
        self.store.finish_session(
            sid,
            closed_at=t + 8.0,
            billed_at=t + 9.0,
            total_fen=price * qty,
            flags=[],
            lines=[line],
            evidence=[evidence],
            payload=payload,
        )

    def unused_unlock(self, t: float) -> None:
        sid = self.new_sid()
        self.store.begin_session(sid, f"r-{self.rng.randint(1, 500)}", "resident", t)
        self.store.expire_session(
            sid,
            t + 15.0,
            {
                "session_id": sid,
                "lines": [],
                "total_fen": 0,
                "flags": ["unlock_unused"],
                "evidence": [],
            },
        )

    def event(self, t: float) -> None:
        self.store.record_event(
            t,
            self.rng.choice(("door_check", "temperature", "restock_needed")),
            data={"value": round(self.rng.random() * 10, 2)},
        )

    def produce_one(self, t: float) -> None:
        x = self.rng.random()
        if x < 0.6:
            self.sale(t)
        elif x < 0.7:
            self.unused_unlock(t)
        else:
            self.event(t)

    def recover(self) -> None:
        """Finish what a killed predecessor left open (as the daemon's recovery would)."""
        for s in self.store.open_sessions():
            if s.state == "unlocked":
                self.store.expire_session(
                    s.session_id,
                    s.unlocked_at + 15.0,
                    {
                        "session_id": s.session_id,
                        "lines": [],
                        "total_fen": 0,
                        "flags": ["unlock_unused"],
                        "evidence": [],
                    },
                )
            else:
                payload = {
                    "session_id": s.session_id,
                    "lines": [],
                    "total_fen": 0,
                    "flags": ["recovered"],
                    "evidence": [],
                }
                self.store.finish_session(
                    s.session_id,
                    closed_at=s.unlocked_at + 8.0,
                    billed_at=s.unlocked_at + 9.0,
                    total_fen=0,
                    flags=["recovered"],
                    lines=[],
                    evidence=[],
                    payload=payload,
                )

    # ---------------------------------------------------------------- commands

    def handle_unlock(self, args: Mapping[str, Any], door_s: float) -> Mapping[str, Any]:
        resident = args.get("resident")
        if not isinstance(resident, str) or not resident:
            raise CommandRefused("bad_args", "unlock needs a resident")
        with self.lock:
            if self.due:
                raise CommandRefused("busy", "a session is in progress")
            sid = self.new_sid()
            self.store.begin_session(sid, resident, "resident", time.time())
            self.due.append((time.monotonic() + door_s, sid, str(args.get("door", "used"))))
        self.wake.set()
        return {"session_id": sid}

    def run_due(self) -> None:
        if not self.due:
            return
        with self.lock:
            while self.due and self.due[0][0] <= time.monotonic():
                _, sid, door = self.due.popleft()
                t = time.time()
                if door == "unused":
                    self.store.expire_session(
                        sid,
                        t,
                        {
                            "session_id": sid,
                            "lines": [],
                            "total_fen": 0,
                            "flags": ["unlock_unused"],
                            "evidence": [],
                        },
                    )
                else:
                    self._bill(sid, t)


class SimFleet:
    """Many :class:`SimCabinet` in one process, each with its own uplink thread."""

    def __init__(
        self,
        directory: Path,
        cabinets: Sequence[str],
        *,
        host: str,
        port: int,
        secrets: Path | None,
        backend_public_key: str,
        window: int = 256,
        retransmit_s: float = 3.0,
        reconnect_max_s: float = 2.0,
        fast: bool = False,
        seed: int = 1,
        door_s: float = 0.2,
    ) -> None:
        from edge.store import CabinetStore

        self.directory = directory
        self.door_s = door_s
        keys = ensure_keys(directory, cabinets)
        backend_key = public_key_spec(backend_public_key, "backend public key")
        self.cabinets: list[SimCabinet] = []
        for i, cab in enumerate(cabinets):
            password = None
            if secrets is not None:
                password = (secrets / f"{cab}.password").read_text(encoding="utf-8").strip()
            settings = SyncSettings(
                broker=BrokerSettings(
                    host=host, port=port, username=cab, password=password, keepalive_s=30
                ),
                signing_key=keys[cab],
                backend_public_key=backend_public_key,
                window=window,
                retransmit_s=retransmit_s,
                reconnect_min_s=0.2,
                reconnect_max_s=reconnect_max_s,
                telemetry_interval_s=60.0,
            )
            store = CabinetStore(
                directory / f"{cab}.db", cabinet_id=cab, signing_key=load_private_key(keys[cab])
            )
            if fast:  # benchmark backlogs: WAL without fsync per commit
                store.db.execute("PRAGMA synchronous = NORMAL")
            nonces = NonceStore(directory / f"{cab}-nonces.db")
            sim = SimCabinet(cab, store, nonces, random.Random(seed * 1000 + i))
            handlers = {"unlock": self._unlock_handler(sim)}
            sim.uplink = Uplink(
                settings,
                store,
                backend_key,
                handlers=handlers,
                nonces=nonces,
                rng=random.Random(seed * 7919 + i),
            )
            self.cabinets.append(sim)

    def _unlock_handler(self, sim: SimCabinet) -> CommandHandler:
        def handler(args: Mapping[str, Any]) -> Mapping[str, Any]:
            return sim.handle_unlock(args, self.door_s)

        return handler

    def start(self) -> None:
        for c in self.cabinets:
            c.recover()
            c.uplink.start()
        self._due_stop = threading.Event()
        self._due_wake = threading.Event()
        for c in self.cabinets:
            c.wake = self._due_wake
        self._due_thread = threading.Thread(target=self._run_due, name="simcab-due", daemon=True)
        self._due_thread.start()

    def _run_due(self) -> None:
        """Bill the sessions whose door time is up; sleeps until the next one is due (or an
        unlock adds one) instead of waking every few milliseconds for nothing."""
        while not self._due_stop.is_set():
            self._due_wake.clear()
            next_due: float | None = None
            for c in self.cabinets:
                try:
                    c.run_due()
                except Exception:  # a closed store while stopping
                    log.debug("run_due failed", exc_info=True)
                with c.lock:
                    if c.due and (next_due is None or c.due[0][0] < next_due):
                        next_due = c.due[0][0]
            wait = 1.0 if next_due is None else max(0.0, next_due - time.monotonic())
            self._due_wake.wait(wait)

    def stop(self) -> None:
        if hasattr(self, "_due_stop"):
            self._due_stop.set()
            self._due_wake.set()
            self._due_thread.join(2.0)
        for c in self.cabinets:
            c.uplink.stop()
        for c in self.cabinets:
            c.store.close()
            c.nonces.close()

    def connected(self) -> bool:
        return all(c.uplink.connected for c in self.cabinets)

    def issued(self) -> dict[str, int]:
        return {c.cabinet_id: c.store.outbox_head().last_seq for c in self.cabinets}

    def all_acked(self) -> bool:
        for c in self.cabinets:
            h = c.store.outbox_head()
            if h.acked_upto < h.last_seq:
                return False
        return True

    def produce(self, target: int, rate: float, stop: threading.Event) -> None:
        """Produce records until each cabinet issued ``target`` (``rate`` per second per
        cabinet, 0 = as fast as possible), running due unlock sessions meanwhile."""
        if target <= 0:
            return
        next_at = time.monotonic()
        while not stop.is_set():
            busy = False
            for c in self.cabinets:
                if c.store.outbox_head().last_seq < target:
                    c.produce_one(time.time())
                    busy = True
            if not busy:
                stop.wait(0.2)
                continue
            if rate > 0:
                next_at += 1.0 / rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud_sync.simcab", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="stores and keys live here")
    parser.add_argument("--cabinets", required=True, help="comma-separated cabinet ids")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secrets", type=Path, help="directory of USER.password files")
    parser.add_argument("--backend-public-key", required=True)
    parser.add_argument("--target", type=int, default=0, help="records each cabinet issues")
    parser.add_argument("--rate", type=float, default=0.0, help="records/s per cabinet (0: max)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--retransmit-s", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fast", action="store_true", help="no fsync per commit (benchmarks)")
    parser.add_argument("--exit-when-acked", action="store_true")
    parser.add_argument("--door-s", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    fleet = SimFleet(
        args.dir,
        [c for c in args.cabinets.split(",") if c],
        host=args.host,
        port=args.port,
        secrets=args.secrets,
        backend_public_key=args.backend_public_key,
        window=args.window,
        retransmit_s=args.retransmit_s,
        fast=args.fast,
        seed=args.seed,
        door_s=args.door_s,
    )
    stop = threading.Event()
    fleet.start()
    end = time.monotonic() + 30.0
    while not fleet.connected() and time.monotonic() < end:
        time.sleep(0.02)
    # a long-running process: what startup made (modules, stores, clients) lives as long as
    # it does, so keep it out of the collector's full passes (shorter GC pauses under load)
    gc.collect()
    gc.freeze()
    print("ready", flush=True)
    producer = threading.Thread(
        target=fleet.produce, args=(args.target, args.rate, stop), daemon=True
    )
    producer.start()
    try:
        while True:
            time.sleep(0.1)
            if (
                args.exit_when_acked
                and min(fleet.issued().values()) >= args.target
                and fleet.all_acked()
            ):
                print(
                    "acked " + " ".join(f"{k}={v}" for k, v in fleet.issued().items()), flush=True
                )
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        producer.join(5.0)
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

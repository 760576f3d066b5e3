#!/usr/bin/env python3
"""Benchmarks of the cabinet -> backend sync against a real Mosquitto on this machine.

    python scripts/bench_sync.py [--backlog 50000] [--drain-ingests 1,2] [--window 1024]
                                 [--cabinets 100] [--unlocks 400] [--only drain,unlock,ingest]

1. **Backlog drain**: one cabinet's outbox holds ``--backlog`` sealed sales (made
   through the cabinet store, then the uplink is started); time until the last
   one is acked by the ingest (verified, chained, stored, committed) and removed
   from the outbox. The same backlog (a copy of the cabinet store taken before the
   first drain) is drained once per entry of ``--drain-ingests``: that many ingest
   processes share the MQTT group and one database, each drain into a fresh ingest
   database. The cabinet drains with an in-flight window of ``--window`` records
   (its ``[sync] window``, 1024 by default: a smaller window means smaller ingest
   batches and more acks, and two ingest processes drain about a tenth slower at 256)
   and its own retransmit period (10 s). Target >= 2,000 sales/s; the
   summary gives every figure and says how many ingest processes each one used.
2. **Unlock round trip**: ``--cabinets`` simulated cabinets connected (ten
   processes, one uplink each); the backend sends signed unlocks one after another
   and times each until the cabinet's ``unlocked`` result arrives (verify,
   nonce stored with fsync, session begun in the cabinet store). Target p99 <= 50 ms.
3. **Ingest throughput, 1 vs 2 ingest processes**: 8 cabinets' sealed records
   published as fast as the broker takes them; time until all are stored.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_sync import topics  # noqa: E402
from cloud_sync.commander import Commander  # noqa: E402
from cloud_sync.ingest import IngestDB  # noqa: E402
from cloud_sync.keys import load_private_key  # noqa: E402
from cloud_sync.lab import Lab  # noqa: E402
from cloud_sync.simcab import SimFleet  # noqa: E402
from cloud_sync.transport import new_client  # noqa: E402


def _counts(db_path: Path) -> dict[str, int]:
    db = IngestDB(db_path)
    try:
        return db.counts()
    finally:
        db.close()


def _fleet(lab: Lab, cabinets: list[str], **kw: object) -> SimFleet:
    return SimFleet(lab.cab_dir, cabinets, host="127.0.0.1", port=lab.port,
                    secrets=lab.files.directory / "secrets",
                    backend_public_key=lab.backend_public, **kw)  # type: ignore[arg-type]


def _copy_store(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        target = dst.with_name(dst.name + suffix)
        target.unlink(missing_ok=True)
        if src.with_name(src.name + suffix).exists():
            shutil.copy2(src.with_name(src.name + suffix), target)


def bench_drain(work: Path, n: int, window: int, ingests: list[int]) -> list[tuple[int, float]]:
    """Drain the same ``n``-sale backlog once per entry of ``ingests`` (ingest processes)."""
    lab = Lab(work / "drain", ["cab-bench"])
    lab.start_broker()
    rates: list[tuple[int, float]] = []
    try:
        fleet = _fleet(lab, ["cab-bench"], fast=True)
        cab = fleet.cabinets[0]
        t0 = time.perf_counter()
        for i in range(n):
            cab.sale(1_000_000.0 + i)
        gen = time.perf_counter() - t0
        print(f"  backlog: {n} sealed sales written in {gen:.1f} s "
              f"({n / gen:.0f}/s, synchronous=NORMAL)", flush=True)
        fleet.stop()
        store = lab.cab_dir / "cab-bench.db"
        backlog = work / "drain" / "backlog-copy.db"
        _copy_store(store, backlog)  # the store is closed: WAL checkpointed
        for run, processes in enumerate(ingests):
            if run:
                _copy_store(backlog, store)  # the very same sealed records again
            lab.ingest_db = work / "drain" / f"ingest-drain-{run}-{processes}p.db"
            config = lab.ingest_config(f"ingest-drain-{run}.toml", batch_max=1000)
            procs = [lab.spawn_ingest(config, f"ingest-drain-{run}-{i}.log")
                     for i in range(processes)]
            time.sleep(1.0)
            # a cabinet's own retransmit period (SyncSettings' default 10 s), not the
            # simulator's short one for fault tests
            fleet = _fleet(lab, ["cab-bench"], window=window, retransmit_s=10.0)
            head = fleet.cabinets[0].store.outbox_head()
            pending = head.last_seq - head.acked_upto
            t0 = time.perf_counter()
            fleet.start()
            while not fleet.all_acked():
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            left = len(fleet.cabinets[0].store.outbox_records(limit=10))
            stats = fleet.cabinets[0].uplink.stats
            fleet.stop()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
            counts = _counts(lab.ingest_db)
            rate = pending / elapsed
            rates.append((processes, rate))
            print(f"  drain with {processes} ingest process(es): {pending} sales acked, "
                  f"removed from the outbox ({left} left) and stored ({counts['records']} in "
                  f"the ingest db, held {counts['held']}, quarantined {counts['quarantine']}, "
                  f"alarms {counts['alarms']}) in {elapsed:.2f} s = {rate:.0f} sales/s "
                  f"(window {window}; {stats.acks} acks, {stats.republished} republished, "
                  f"{stats.commands} resend command(s); "
                  f"target >= 2000)", flush=True)
        return rates
    finally:
        lab.close()


def bench_unlock(work: Path, cabinets: int, unlocks: int) -> tuple[float, float]:
    cabs = [f"cab-u{i:03d}" for i in range(cabinets)]
    lab = Lab(work / "unlock", cabs)
    lab.start_broker()
    try:
        # like real cabinets (one Pi each), the simulated ones run in several processes
        groups = [cabs[i::10] for i in range(min(10, cabinets))]
        procs = [lab.spawn_cabinets(g, "--target", "0", "--door-s", "0.05", log="unlock.log")
                 for g in groups]
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":  # every uplink connected
                raise SystemExit(f"simulated cabinets did not start; see {lab.root}/unlock.log")
        cmdr = Commander(lab.settings("backend"), load_private_key(lab.backend_key))
        cmdr.start()
        rtts: list[float] = []
        try:
            for i in range(unlocks + 20):
                cab = cabs[i % cabinets]
                t0 = cmdr.monotonic()
                cmd = cmdr.send(cab, "unlock", {"resident": f"r-{i}"}, ttl_s=10)
                r = cmdr.wait(cmd["nonce"], 5.0)
                arrived = cmdr.arrival(cmd["nonce"])
                if r is None or arrived is None or not r["ok"]:
                    print(f"  unlock {i} to {cab}: {r}", flush=True)
                    continue
                if i >= 20:  # warm-up
                    rtts.append((arrived - t0) * 1000.0)
        finally:
            cmdr.stop()
        rtts.sort()
        p50 = statistics.median(rtts)
        p99 = rtts[min(len(rtts) - 1, round(0.99 * len(rtts)) - 1)]
        print(f"  unlock round trip with {cabinets} cabinets connected: {len(rtts)} unlocks, "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {rtts[-1]:.1f} ms (target p99 <= 50)",
              flush=True)
        return p50, p99
    finally:
        lab.close()


def bench_ingest(work: Path, per_cabinet: int, processes: int) -> float:
    cabs = [f"cab-i{i}" for i in range(8)]
    lab = Lab(work / "ingest", cabs)
    lab.start_broker()
    try:
        records: dict[str, list[bytes]] = {}
        fleet = _fleet(lab, cabs, fast=True)
        for c in fleet.cabinets:
            if c.store.outbox_head().last_seq < per_cabinet:
                for i in range(per_cabinet - c.store.outbox_head().last_seq):
                    c.event(1_000_000.0 + i)
            rows = c.store.outbox_records(limit=per_cabinet)
            records[c.cabinet_id] = [r.record_json.encode() for r in rows]
        fleet.stop()
        total = sum(len(v) for v in records.values())
        lab.ingest_db = work / "ingest" / f"ingest-{processes}.db"
        config = lab.ingest_config(f"ingest-{processes}.toml", batch_max=1000)
        procs = [lab.spawn_ingest(config, f"ingest-{processes}-{i}.log") for i in range(processes)]
        time.sleep(1.5)
        pubs = []
        for cab in cabs:
            c = new_client(lab.settings(cab), f"{cab}-pub")
            c.max_inflight_messages_set(1000)
            c.connect("127.0.0.1", lab.port)
            c.loop_start()
            pubs.append((cab, c))
        time.sleep(0.3)
        t0 = time.perf_counter()

        def publish(cab: str, client: object) -> None:
            for payload in records[cab]:
                client.publish(topics.events(cab), payload, qos=1)  # type: ignore[attr-defined]

        threads = [threading.Thread(target=publish, args=p) for p in pubs]
        for t in threads:
            t.start()
        db = IngestDB(lab.ingest_db)
        try:
            while db.counts()["records"] < total and time.perf_counter() - t0 < 300:
                time.sleep(0.02)
            stored = db.counts()["records"]
        finally:
            db.close()
        elapsed = time.perf_counter() - t0
        for t in threads:
            t.join()
        for _, c in pubs:
            c.loop_stop()
            c.disconnect()
        for p in procs:
            p.terminate()
            p.wait(10)
        rate = stored / elapsed
        print(f"  ingest with {processes} process(es): {stored}/{total} records stored in "
              f"{elapsed:.2f} s = {rate:.0f} records/s", flush=True)
        return rate
    finally:
        lab.close()


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=1024,
                        help="the draining cabinet's in-flight window ([sync] window; "
                             "default 1024)")
    parser.add_argument("--drain-ingests", type=_int_list, default=[1, 2], metavar="N,...",
                        help="drain the backlog once with each of these numbers of ingest "
                             "processes (default 1,2)")
    parser.add_argument("--cabinets", type=int, default=100)
    parser.add_argument("--unlocks", type=int, default=400)
    parser.add_argument("--per-cabinet", type=int, default=3000, help="ingest bench records")
    parser.add_argument("--only", default="drain,unlock,ingest",
                        help="comma-separated subset of drain,unlock,ingest")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    work = Path(tempfile.mkdtemp(prefix="freshbox-bench-"))
    print(f"bench_sync (work dir {work})", flush=True)
    summary: list[str] = []
    if "drain" in only:
        print("1. backlog drain", flush=True)
        rates = bench_drain(work, args.backlog, args.window, args.drain_ingests)
        summary.append("drain " + ", ".join(
            f"{rate:.0f} sales/s with {k} ingest process{'es' if k > 1 else ''}"
            for k, rate in rates) + f" (window {args.window})")
    if "unlock" in only:
        print("2. unlock round trip", flush=True)
        p50, p99 = bench_unlock(work, args.cabinets, args.unlocks)
        summary.append(f"unlock p50 {p50:.1f} ms p99 {p99:.1f} ms ({args.cabinets} cabinets)")
    if "ingest" in only:
        print("3. ingest throughput", flush=True)
        one = bench_ingest(work, args.per_cabinet, 1)
        two = bench_ingest(work, args.per_cabinet, 2)
        summary.append(f"ingest {one:.0f} records/s with 1 process, "
                       f"{two:.0f} with 2 ({two / one:.2f}x)")
    print("summary: " + "; ".join(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

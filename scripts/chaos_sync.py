#!/usr/bin/env python3
"""Chaos run of the cabinet -> backend sync: many simulated cabinets, faults all the time.

    python scripts/chaos_sync.py --seconds 60 --cabinets 20

Runs its own Mosquitto (generated configuration: passwords, ACL, persistence) on
a free loopback port, two ``freshbox ingest`` processes sharing one database, and
the cabinets in a few ``python -m cloud_sync.simcab`` processes producing records
(bills and events through the real cabinet store, sealed and chained). For
``--seconds`` it injects, at seeded random instants: broker SIGKILL + restart,
cabinet-process SIGKILL + restart, ingest SIGKILL + restart, and a rogue client
publishing (with a cabinet's own credentials) tampered copies, forgeries signed
with a wrong key, replays/duplicates and out-of-order re-sends of real records.
Then faults stop, every cabinet drains, and it checks the ingest database.

The last line printed is
``records produced P, stored S, duplicates D, missing M, chains verified C/M``.
Exit status 0 when nothing is missing or duplicated and every chain verifies.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_sync import topics  # noqa: E402
from cloud_sync.canonical import canonical_bytes, parse_json  # noqa: E402
from cloud_sync.keys import generate_private_key  # noqa: E402
from cloud_sync.lab import Lab  # noqa: E402
from cloud_sync.records import seal  # noqa: E402
from cloud_sync.transport import new_client  # noqa: E402


class Rogue:
    """Taps real records and republishes them mangled, replayed and out of order."""

    def __init__(self, lab: Lab, rng: random.Random) -> None:
        self.lab, self.rng = lab, rng
        self.seen: list[dict[str, object]] = []
        self.sent: dict[str, int] = {"tampered": 0, "forged": 0, "replayed": 0, "reordered": 0}
        self.tap = new_client(lab.settings("ingest"), "chaos-tap")
        self.tap.on_message = self._on_message
        self.tap.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(topics.cabinet_filter("sales"), 1), (topics.cabinet_filter("events"), 1)]
        )
        self.tap.reconnect_delay_set(1, 2)
        self.tap.connect_async("127.0.0.1", lab.port)
        self.tap.loop_start()
        self.pubs = {}
        for cab in lab.cabinets[:3]:
            c = new_client(lab.settings(cab), f"{cab}-rogue")
            c.reconnect_delay_set(1, 2)
            c.connect_async("127.0.0.1", lab.port)
            c.loop_start()
            self.pubs[cab] = c

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        try:
            rec = parse_json(bytes(message.payload))  # type: ignore[attr-defined]
        except Exception:
            return
        if isinstance(rec, dict) and rec.get("cabinet") in self.pubs and len(self.seen) < 5000:
            self.seen.append(rec)

    def strike(self) -> None:
        if not self.seen:
            return
        rec = dict(self.rng.choice(self.seen))
        cab = str(rec["cabinet"])
        topic = (topics.sales if rec["kind"] == "sale" else topics.events)(cab)
        kind = self.rng.choice(list(self.sent))
        if kind == "tampered":
            rec["body"] = {**rec["body"], "total_fen": 1}  # type: ignore[dict-item]
            payload = canonical_bytes(rec)
        elif kind == "forged":
            payload = canonical_bytes(
                seal(cab, int(rec["seq"]), rec["kind"], str(rec["at"]), str(rec["prev"]),  # type: ignore[arg-type, call-overload]
                     {"forged": True}, generate_private_key())
            )
        elif kind == "replayed":
            payload = canonical_bytes(rec)
        else:  # an old record and then a newer one, out of order
            later = [r for r in self.seen if r["cabinet"] == cab]
            for r in sorted(later[-5:], key=lambda r: -int(r["seq"])):  # type: ignore[call-overload]
                t = (topics.sales if r["kind"] == "sale" else topics.events)(cab)
                self.pubs[cab].publish(t, canonical_bytes(r), qos=1)
            self.sent[kind] += 1
            return
        self.pubs[cab].publish(topic, payload, qos=1)
        self.sent[kind] += 1

    def close(self) -> None:
        for c in [self.tap, *self.pubs.values()]:
            c.loop_stop()
            c.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long faults go on")
    parser.add_argument("--cabinets", type=int, default=20, help="simulated cabinets")
    parser.add_argument("--rate", type=float, default=4.0, help="records/s per cabinet")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="freshbox-chaos-"))
    cabs = [f"cab-{i:03d}" for i in range(1, args.cabinets + 1)]
    groups = [cabs[i::4] for i in range(min(4, len(cabs)))]
    lab = Lab(work, cabs)
    lab.start_broker()
    config = lab.ingest_config()
    ingests = [lab.spawn_ingest(config, f"ingest-{i}.log") for i in range(2)]
    target = str(10**9)
    fleets = [
        lab.spawn_cabinets(g, "--target", target, "--rate", str(args.rate),
                           "--seed", str(i + 1), log=f"simcab-{i}.log")
        for i, g in enumerate(groups)
    ]
    rogue = Rogue(lab, rng)
    faults = {"broker": 0, "cabinets": 0, "ingest": 0, "rogue": 0}
    print(f"chaos: {len(cabs)} cabinets in {len(groups)} processes, 2 ingests, "
          f"broker on 127.0.0.1:{lab.port}, work dir {work}", flush=True)
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.3, 2.0))
            what = rng.choices(["broker", "cabinets", "ingest", "rogue"], [1, 3, 3, 4])[0]
            faults[what] += 1
            if what == "broker":
                lab.kill_broker()
                time.sleep(rng.uniform(0.1, 1.5))
                lab.start_broker()
            elif what == "cabinets":
                i = rng.randrange(len(fleets))
                fleets[i].send_signal(signal.SIGKILL)
                fleets[i].wait(10)
                fleets[i] = lab.spawn_cabinets(groups[i], "--target", target, "--rate",
                                               str(args.rate), "--seed", str(i + 1),
                                               log=f"simcab-{i}.log")
            elif what == "ingest":
                i = rng.randrange(2)
                ingests[i].send_signal(signal.SIGKILL)
                ingests[i].wait(10)
                ingests[i] = lab.spawn_ingest(config, f"ingest-{i}.log")
            else:
                for _ in range(rng.randint(1, 5)):
                    rogue.strike()
        print(f"faults injected: {json.dumps(faults)}; rogue messages: {json.dumps(rogue.sent)}",
              flush=True)
        # stop producing, then drain everything that was issued
        for p in fleets:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        drains = [lab.spawn_cabinets(g, "--target", "0", "--exit-when-acked",
                                     log=f"drain-{i}.log") for i, g in enumerate(groups)]
        deadline = time.monotonic() + 300
        for d in drains:
            try:
                d.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print("drain did not finish in time", flush=True)
        time.sleep(1.0)
    finally:
        rogue.close()
        lab.close()
    return report(lab, work, args.keep)


def report(lab: Lab, work: Path, keep: bool) -> int:
    from edge.store import CabinetStore

    produced = 0
    for cab in lab.cabinets:
        with CabinetStore(lab.cab_dir / f"{cab}.db", cabinet_id=cab) as store:
            produced += store.outbox_head().last_seq
    conn = sqlite3.connect(lab.ingest_db)
    stored = int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    refs = conn.execute(
        "SELECT cabinet, kind, json_extract(record_json, '$.body.session_id'),"
        " json_extract(record_json, '$.body.event_id') FROM records"
    ).fetchall()
    distinct = len({(c, k, s if k == "sale" else e) for c, k, s, e in refs})
    duplicates = stored - distinct
    present = int(conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT cabinet, seq FROM records)").fetchone()[0])
    alarms = conn.execute("SELECT reason, count(*) FROM alarms GROUP BY reason").fetchall()
    conn.close()
    missing = produced - present
    run = subprocess.run(
        [sys.executable, "-m", "freshbox_cli", "ledger", "verify", "--db", str(lab.ingest_db),
         "--json"], capture_output=True, text=True, env=lab.env(),
    )
    verified = 0
    try:
        verified = sum(1 for c in json.loads(run.stdout)["cabinets"] if c["ok"])
    except (ValueError, KeyError):
        print(run.stdout[-2000:], run.stderr[-2000:])
    print(f"ingest alarms by reason: {dict(alarms)}")
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")
    m = len(lab.cabinets)
    print(f"records produced {produced}, stored {stored}, duplicates {duplicates}, "
          f"missing {missing}, chains verified {verified}/{m}", flush=True)
    return 0 if missing == 0 and duplicates == 0 and verified == m else 1


if __name__ == "__main__":
    raise SystemExit(main())

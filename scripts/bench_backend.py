#!/usr/bin/env python3
"""Backend figures: Open latency through the whole stack, dashboard load time with 200
cabinets, and sales ingest from 200 simulated cabinets, on SQLite and on PostgreSQL.

    python scripts/bench_backend.py                 # everything (about 4 minutes)
    python scripts/bench_backend.py --part open --samples 100
    python scripts/bench_backend.py --part dashboard --db postgresql

PostgreSQL: ``FRESHBOX_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/test); the
benchmark works in a throwaway schema. The ingest part needs mosquitto (MQTT 5 shared
subscriptions); the Open part runs the demo's stack (embedded broker, real edge daemons).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from backend import schema as t  # noqa: E402
from backend import wallet  # noqa: E402
from backend.clock import Clock, iso  # noqa: E402
from backend.config import load_settings  # noqa: E402
from backend.db import Database  # noqa: E402
from backend.passwords import configure, hash_password  # noqa: E402
from backend.seed import CabinetSpec, add_cabinet, seed, standard_lanes  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL schema; yields its URL/path."""
    if kind == "sqlite":
        path = work / f"bench-{secrets.token_hex(3)}.db"
        yield str(path)
        return
    server = make_url(os.environ.get("FRESHBOX_TEST_PG", DEFAULT_PG)).set(
        drivername="postgresql+psycopg"
    )
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    schema = f"fbbench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield server.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def settings_for(db: str, work: Path, **kw: Any) -> Any:
    from cloud_sync.keys import generate_private_key, save_private_key

    key = work / "backend.key"
    if not key.exists():
        save_private_key(generate_private_key(), key)
    return replace(load_settings(environ={}), db=db, signing_key=key, port=0, **kw)


# ----------------------------------------------------------------------- dashboard


def fill_community(db: Database, cabinets: int, days: int, sales_per_day: int) -> None:
    """``cabinets`` cabinets of one operator with ``days`` of sales, stock and alarms."""
    clock = Clock()
    now = clock.now()
    db.write(seed, now, ())
    rng = random.Random(7)
    lanes = standard_lanes()
    specs = [
        CabinetSpec(
            f"cab-{i:03d}", f"Cabinet {i}", f"Building {i % 40}", "op-greenvale", lanes=lanes
        )
        for i in range(cabinets)
    ]

    def cabs(conn: Any) -> None:
        for spec in specs:
            add_cabinet(conn, spec, now)
        conn.execute(
            update(t.cabinets).values(online=True, door="closed", lock="locked", temperature_c=4.5)
        )
        conn.execute(update(t.lanes).values(stock_count=3, stock_g=1500.0))

    db.write(cabs)
    resident = db.read(
        lambda c: c.execute(select(t.users.c.id).where(t.users.c.username == "li.wei")).scalar_one()
    )
    sales: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    alarms: list[dict[str, Any]] = []
    for spec in specs:
        seq = 0
        for d in range(days):
            day = now - timedelta(days=d)
            for _ in range(sales_per_day):
                seq += 1
                ln = rng.choice(lanes)
                qty = rng.randint(1, 3)
                amount = ln.price_fen * qty
                at = iso(day - timedelta(minutes=rng.randint(0, 600)))
                body_line = {
                    "lane": ln.lane,
                    "sku": ln.sku,
                    "qty": qty,
                    "weight_g": 150.0 * qty,
                    "unit_price_fen": ln.price_fen,
                    "amount_fen": amount,
                }
                sales.append(
                    dict(
                        cabinet_id=spec.id,
                        seq=seq,
                        session_id=f"S{spec.id}{seq}",
                        resident_code=f"r-{resident}",
                        user_id=resident,
                        role="resident",
                        total_fen=amount,
                        charged_fen=amount,
                        flags_json="[]",
                        lines_json=json.dumps([body_line]),
                        evidence_json="[]",
                        record_hash="0" * 64,
                        verified=True,
                        at=at,
                        review="pending" if rng.random() < 0.01 else "none",
                        stored_at=at,
                    )
                )
                lines.append(
                    dict(
                        cabinet_id=spec.id,
                        seq=seq,
                        line_no=0,
                        lane=ln.lane,
                        sku=ln.sku,
                        qty=qty,
                        weight_g=150.0 * qty,
                        amount_fen=amount,
                        at=at,
                    )
                )
        for k in range(3):
            alarms.append(
                dict(
                    cabinet_id=spec.id,
                    kind="door_open_too_long",
                    severity="warning",
                    at=iso(now),
                    dedupe=f"{spec.id}:{k}",
                    detail_json="{}",
                )
            )

    def bulk(conn: Any) -> None:
        for i in range(0, len(sales), 5000):
            conn.execute(insert(t.sales), sales[i : i + 5000])
            conn.execute(insert(t.sale_lines), lines[i : i + 5000])
        conn.execute(insert(t.cabinet_alarms), alarms)

    db.write(bulk)
    if db.postgres:  # what autovacuum does within a minute of a bulk load: fresh statistics
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


async def _time_pages(base: str, paths: list[str], rounds: int) -> dict[str, list[float]]:
    from backend.seed import DEMO_PASSWORD

    out: dict[str, list[float]] = {p: [] for p in paths}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(
            f"{base}/api/login", json={"username": "ops", "password": DEMO_PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
        for p in paths:  # warm up
            async with http.get(f"{base}{p}") as resp:
                await resp.read()
                assert resp.status == 200, (p, resp.status)
        for _ in range(rounds):
            for p in paths:
                t0 = time.perf_counter()
                async with http.get(f"{base}{p}") as resp:
                    await resp.read()
                out[p].append((time.perf_counter() - t0) * 1000)
    return out


def bench_dashboard(kind: str, work: Path, cabinets: int, rounds: int) -> None:
    from backend.server import BackendServer

    with database(kind, work) as url:
        settings = settings_for(url, work)
        db = Database(url)
        db.migrate()
        t0 = time.perf_counter()
        fill_community(db, cabinets, days=14, sales_per_day=10)
        n_sales = db.read(lambda c: c.execute(select(func.count()).select_from(t.sales)).scalar())
        db.close()
        print(
            f"dashboard [{kind}]: {cabinets} cabinets, {cabinets * 4} lanes, {n_sales} sales "
            f"over 14 days, {cabinets * 3} open alarms (filled in {time.perf_counter() - t0:.1f} s)"
        )

        async def run() -> dict[str, list[float]]:
            server = BackendServer(settings)
            await server.start()
            try:
                return await _time_pages(server.url, ["/ops", "/api/ops/dashboard"], rounds)
            finally:
                await server.stop()

        res = asyncio.run(run())
        for p, vals in res.items():
            print(
                f"  GET {p:20s} p50 {pct(vals, 50):7.1f} ms  p99 {pct(vals, 99):7.1f} ms  "
                f"({len(vals)} loads)"
            )


# ----------------------------------------------------------------------- ingest


def bench_ingest(kind: str, work: Path, cabinets: int, per_cabinet: int) -> None:
    from backend.bus import EventBus
    from backend.clock import Clock
    from backend.fleet import Fleet
    from cloud_sync.keys import load_private_key, public_key_text
    from cloud_sync.lab import Lab

    root = work / f"ingest-{kind}"
    ids = [f"cab-{i:03d}" for i in range(cabinets)]
    lab = Lab(root, ids)
    lab.start_broker()
    try:
        with database(kind, work) as url:
            db = Database(url)
            db.migrate()
            now = Clock().now()
            db.write(seed, now, ())
            pw = hash_password("resident-pass")

            def residents(conn: Any) -> None:
                hh = conn.execute(select(t.households.c.id)).scalars().first()
                taken = set(conn.execute(select(t.users.c.resident_code)).scalars())
                rows = [
                    dict(
                        username=f"bench-r{i}",
                        password_hash=pw,
                        role="resident",
                        display_name=f"Resident {i}",
                        household_id=hh,
                        resident_code=f"r-{i}",
                        balance_fen=10_000_000,
                        created_at=iso(now),
                    )
                    for i in range(1, 501)
                    if f"r-{i}" not in taken
                ]
                conn.execute(insert(t.users), rows)
                for cab in ids:
                    key = public_key_text(load_private_key(lab.cab_dir / f"{cab}.key"))
                    add_cabinet(
                        conn,
                        CabinetSpec(cab, cab, "bench", "op-greenvale", key, standard_lanes()),
                        now,
                    )

            db.write(residents)
            settings = settings_for(url, root, broker=lab.settings("backend"), batch_max=1000)
            fleet = Fleet(settings, db, Clock(), EventBus())
            for cab in ids:
                fleet.enrol(cab, public_key_text(load_private_key(lab.cab_dir / f"{cab}.key")))
            fleet.start()
            # the simulated cabinets run in two processes of their own (as real cabinets
            # would not share one): 200 SQLite stores in one process exceed select()'s 1024
            groups = [ids[i::2] for i in range(2)]
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cloud_sync.simcab",
                        "--dir",
                        str(lab.cab_dir),
                        "--cabinets",
                        ",".join(group),
                        "--port",
                        str(lab.port),
                        "--secrets",
                        str(lab.files.directory / "secrets"),
                        "--backend-public-key",
                        lab.backend_public,
                        "--target",
                        str(per_cabinet),
                        "--fast",
                        "--exit-when-acked",
                        "--seed",
                        str(n + 1),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    cwd=ROOT,
                )
                for n, group in enumerate(groups)
            ]
            for p in procs:
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready", "simulated cabinets did not start"
            t0 = time.perf_counter()
            total = cabinets * per_cabinet
            deadline = t0 + 600
            stored = 0
            while time.perf_counter() < deadline:
                stored = db.read(
                    lambda c: c.exec_driver_sql("SELECT count(*) FROM records").scalar_one()
                )
                if stored >= total:
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - t0
            n_sales = db.read(
                lambda c: c.execute(select(func.count()).select_from(t.sales)).scalar_one()
            )
            charged = db.read(
                lambda c: c.execute(
                    select(func.count())
                    .select_from(t.wallet_entries)
                    .where(t.wallet_entries.c.kind == "charge")
                ).scalar_one()
            )
            for p in procs:
                p.wait(60)
            fleet.stop()
            db.close()
            print(
                f"ingest [{kind}]: {cabinets} cabinets x {per_cabinet} records = {total}: "
                f"stored {stored} ({n_sales} sales, {charged} wallet charges) in "
                f"{elapsed:.1f} s = {stored / elapsed:,.0f} records/s "
                f"(verified, chained, applied, acked; one backend process)"
            )
    finally:
        lab.close()


# ----------------------------------------------------------------------- open


def bench_open(work: Path, samples: int, cabinets: int) -> None:
    from backend.lab import login_http, running_stack

    async def run() -> list[float]:
        async with running_stack(work / "open", count=cabinets) as stack:
            be = stack.server.backend
            uid = await be.db.query(
                lambda c: c.execute(
                    select(t.users.c.id).where(t.users.c.username == "li.wei")
                ).scalar_one()
            )
            await be.db.run(wallet.post, uid, "topup", 10_000_000, "topup:bench", be.clock.now())
            lat: list[float] = []
            failures: dict[str, int] = {}
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                csrf = await login_http(http, stack.url, "li.wei")
                ids = stack.cabinets.cabinet_ids
                i = 0
                while len(lat) < samples:
                    cab = ids[i % len(ids)]
                    i += 1
                    # wait until the cabinet's previous session has been billed
                    for _ in range(200):
                        busy = await be.db.query(
                            lambda c, cab=cab: c.execute(
                                select(func.count())
                                .select_from(t.unlocks)
                                .where(
                                    t.unlocks.c.cabinet_id == cab,
                                    t.unlocks.c.status.in_(("sent", "unlocked")),
                                )
                            ).scalar_one()
                        )
                        if not busy:
                            break
                        await asyncio.sleep(0.2)
                    t0 = time.perf_counter()
                    async with http.post(
                        f"{stack.url}/api/cabinets/{cab}/open",
                        json={},
                        headers={"X-CSRF-Token": csrf},
                    ) as resp:
                        body = await resp.json()
                    ms = (time.perf_counter() - t0) * 1000
                    if resp.status == 200:
                        lat.append(ms)
                    else:
                        failures[body.get("reason", "?")] = failures.get(body.get("reason"), 0) + 1
                    await asyncio.sleep(0.05)
            if failures:
                print(f"  (refused: {failures})")
            return lat

    lat = asyncio.run(run())
    print(
        f"open: {len(lat)} Open presses on {cabinets} cabinets (HTTP -> backend -> MQTT -> "
        f"edge daemon unlocks -> result -> HTTP): p50 {statistics.median(lat):.1f} ms, "
        f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("open", "dashboard", "ingest", "all"), default="all")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--samples", type=int, default=60, help="Open presses")
    ap.add_argument("--open-cabinets", type=int, default=6, help="edge daemons for the Open part")
    ap.add_argument("--cabinets", type=int, default=200, help="cabinets (dashboard, ingest)")
    ap.add_argument("--rounds", type=int, default=30, help="dashboard loads per page")
    ap.add_argument("--per-cabinet", type=int, default=50, help="ingest: records per cabinet")
    args = ap.parse_args()
    if os.environ.get("FRESHBOX_BENCH_LOG"):
        import logging

        logging.basicConfig(level=logging.INFO)
    configure(time_cost=1, memory_cost_kib=1024)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    with tempfile.TemporaryDirectory(prefix="fb-bench-") as tmp:
        work = Path(tmp)
        if args.part in ("open", "all"):
            bench_open(work, args.samples, args.open_cabinets)
        if args.part in ("dashboard", "all"):
            for kind in kinds:
                bench_dashboard(kind, work, args.cabinets, args.rounds)
        if args.part in ("ingest", "all"):
            for kind in kinds:
                bench_ingest(kind, work, args.cabinets, args.per_cabinet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

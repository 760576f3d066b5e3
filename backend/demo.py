"""``freshbox demo``: the whole system on one machine, from one command.

An embedded MQTT broker (amqtt; ``--broker URL`` uses another), the backend on SQLite
under ``./var/demo``, three simulated cabinets each running the real edge daemon as its
own process, and simulated residents who, now and then, press Open on a cabinet's page
(the same code path as the phone's button); a simulated person at the cabinet then
takes produce and closes the door, and the sale flows back as a signed record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from backend import schema as t
from backend.accounts import principal_by_username
from backend.broker import EmbeddedBroker
from backend.config import BackendSettings, load_settings
from backend.democabinets import DemoFleet, ensure_backend_key
from backend.errors import ConfigError
from backend.seed import DEMO_LOGINS, DEMO_PASSWORD, CabinetSpec, LaneSpec, seed
from backend.server import BackendServer
from backend.unlock import open_cabinet
from cloud_sync.config import BrokerSettings

__all__ = ["DemoOptions", "parse_broker_url", "run_demo"]

log = logging.getLogger("freshbox.demo")

SHOPPERS = ("li.wei", "zhang.min")
PAR = {"unit": 6, "tracked": 4, "weighed": 3}
EGG_SUPPLIER = "sup-hillside"


@dataclass
class DemoOptions:
    directory: Path = Path("var/demo")
    port: int = 8080
    host: str = "127.0.0.1"
    duration: float | None = None
    broker_url: str | None = None
    cabinets: int = 3
    mean_gap_s: float = 20.0  # mean time between two simulated residents' visits
    seed: int = 1
    fresh: bool = False  # start from an empty database and empty cabinet stores


@dataclass
class DemoStats:
    opens: int = 0
    unlocked: int = 0
    refused: dict[str, int] = field(default_factory=dict)


def parse_broker_url(url: str) -> BrokerSettings:
    """``mqtt://host:port`` (MQTT 5) or ``mqtt://host:port?version=3.1.1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ConfigError(f"--broker: {url!r}: expected mqtt://host:port")
    version = parse_qs(parts.query).get("version", ["5"])[0]
    if version not in ("5", "3.1.1"):
        raise ConfigError(f"--broker: version must be 5 or 3.1.1, not {version!r}")
    return BrokerSettings(
        host=parts.hostname,
        port=parts.port or 1883,
        username=parts.username,
        password=parts.password,
        mqtt_version=version,
    )


def _specs(fleet: DemoFleet) -> list[CabinetSpec]:
    keys = dict(fleet.enrolment())
    places = ("East gate, building 3", "West garden, building 5", "North lobby, building 8")
    specs = []
    for i, cab in enumerate(fleet.cabinet_ids):
        lanes = tuple(
            LaneSpec(
                ln.lane,
                ln.sku,
                ln.name,
                ln.mode,
                ln.price,
                None,
                PAR.get(ln.mode, 4),
                EGG_SUPPLIER if ln.sku.startswith("eggs") else "sup-tongren",
            )
            for ln in fleet.lanes(cab)
        )
        specs.append(
            CabinetSpec(
                cab,
                f"Cabinet {i + 1}",
                places[i % len(places)],
                "op-greenvale",
                keys[cab],
                lanes,
            )
        )
    return specs


def _counts(conn: Any) -> dict[str, int]:
    def n(table: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    return {"sales": n(t.sales), "unlocks": n(t.unlocks), "alarms": n(t.cabinet_alarms)}


async def _shoppers(
    server: BackendServer, cabinets: Sequence[str], opts: DemoOptions, stop: asyncio.Event
) -> DemoStats:
    be = server.backend
    rng = random.Random(opts.seed)
    stats = DemoStats()
    people = [await be.db.query(principal_by_username, u) for u in SHOPPERS]
    await asyncio.sleep(3.0)
    while not stop.is_set():
        who = rng.choice(people)
        cabinet = rng.choice(list(cabinets))
        result = await open_cabinet(be, who, cabinet)
        stats.opens += 1
        if result.ok:
            stats.unlocked += 1
            print(f"  {who.username} opened {cabinet} ({result.latency_ms:.0f} ms)", flush=True)
        else:
            reason = result.reason or "?"
            stats.refused[reason] = stats.refused.get(reason, 0) + 1
            print(f"  {who.username} at {cabinet}: {result.message}", flush=True)
            if reason == "balance_too_low":  # the simulated resident tops up
                from backend import wallet

                payment = be.payments.charge(who.user_id, 5000)
                await be.db.run(
                    wallet.post,
                    who.user_id,
                    "topup",
                    payment.amount_fen,
                    f"topup:{payment.provider}:{payment.reference}",
                    be.clock.now(),
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.expovariate(1.0 / opts.mean_gap_s) + 5.0)
    return stats


def _settings(opts: DemoOptions, broker: BrokerSettings, key: Path) -> BackendSettings:
    base = load_settings(environ={})
    return replace(
        base,
        source="freshbox demo",
        db=str(opts.directory / "backend.db"),
        signing_key=key,
        host=opts.host,
        port=opts.port,
        public_url=f"http://{opts.host}:{opts.port}",
        broker=broker,
        ingest_group="demo",
        restock_publish_s=15.0,
    )


async def run_demo(opts: DemoOptions) -> int:
    directory = opts.directory
    directory.mkdir(parents=True, exist_ok=True)
    db_file = directory / "backend.db"
    if opts.fresh and db_file.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    embedded: EmbeddedBroker | None = None
    if opts.broker_url:
        broker = parse_broker_url(opts.broker_url)
    else:
        embedded = EmbeddedBroker(opts.host)
        await asyncio.get_running_loop().run_in_executor(None, embedded.start)
        broker = embedded.settings()
    key, _public = ensure_backend_key(directory)
    fleet = DemoFleet(directory / "cabinets", broker, key, count=opts.cabinets)
    fleet.prepare()
    new_db = not db_file.exists()
    if new_db:  # the cabinets' old records were acked by a database that is gone
        fleet.wipe_stores()
    server = BackendServer(_settings(opts, broker, key))
    server.db.migrate()
    server.db.write(seed, server.backend.clock.now(), _specs(fleet))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await server.start()
        if server.backend.fleet is not None:
            server.backend.fleet.applier.listeners.append(_print_sale)
        fleet.start()
        _banner(server, fleet, broker, embedded is not None)
        shoppers = asyncio.create_task(_shoppers(server, fleet.cabinet_ids, opts, stop))
        if opts.duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.duration)
            stop.set()
        else:
            await stop.wait()
        stats = await shoppers
        counts = await server.backend.db.query(_counts)
        print(
            f"freshbox demo: {time.monotonic() - started:.0f} s, {stats.opens} Open presses, "
            f"{stats.unlocked} unlocked, refused {stats.refused or 'none'}; the backend holds "
            f"{counts['sales']} sales, {counts['unlocks']} unlocks, {counts['alarms']} alarms",
            flush=True,
        )
    finally:
        await loop.run_in_executor(None, fleet.stop)
        await server.stop()
        if embedded is not None:
            await loop.run_in_executor(None, embedded.stop)
    return 0


def _print_sale(channel: str, event: dict[str, Any]) -> None:
    """Every receipt, as the residents see it (called after the record's commit)."""
    if event.get("type") != "receipt":
        return
    items = ", ".join(
        f"{ln.get('qty')} x {ln.get('name')}"
        if ln.get("qty")
        else f"{ln.get('weight_g', 0):.0f} g {ln.get('name')}"
        for ln in event.get("lines", [])
    )
    flags = f" [{', '.join(event['flags'])}]" if event.get("flags") else ""
    verified = "verified" if event.get("verified") else "NOT verified"
    print(
        f"  sale {event['cabinet_id']} #{event['seq']}: {items or 'nothing'} = "
        f"¥{event['total_fen'] / 100:.2f}{flags}, record {event['record_hash'][:12]}... {verified}",
        flush=True,
    )


def _banner(
    server: BackendServer, fleet: DemoFleet, broker: BrokerSettings, embedded: bool
) -> None:
    where = "embedded broker" if embedded else "broker"
    users = ", ".join(f"{u} ({role})" for u, role in DEMO_LOGINS)
    lines = [
        f"freshbox demo: backend {server.url}  ({where} mqtt://{broker.host}:{broker.port}, "
        f"database {server.db.url.database})",
        f"  log in:        {server.url}/login   password for every demo user: {DEMO_PASSWORD}",
        f"  demo users:    {users}",
        f"  operator:      {server.url}/ops",
        f"  supplier feed: {server.url}/supplier  ({server.url}/api/supplier/feed.csv)",
    ]
    for cab in fleet.cabinet_ids:
        lines.append(
            f"  cabinet page:  {server.url}/c/{cab}   "
            f"(QR code: freshbox qr {cab} --url {server.url} -o {cab}.png)"
        )
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)

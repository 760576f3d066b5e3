"""The backend's side of MQTT: the ingest, cabinet state, and signed commands.

* The ingest (``cloud_sync.ingest``) runs inside the backend on the backend's own
  database, with ``backend.sales.RecordApplier`` as its storing hook.
* One more client follows every cabinet's retained ``status`` (online/offline),
  ``telemetry`` (lane levels, door, temperature) and retained ``inventory`` and
  writes them to ``cabinets`` and ``lanes``; and it sends signed commands and routes
  their results (``cmd/result``) to whoever waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from backend import schema as t
from backend.bus import EventBus
from backend.clock import Clock
from backend.config import BackendSettings
from backend.db import Database
from backend.sales import RecordApplier, alarm
from cloud_sync import topics
from cloud_sync.canonical import canonical_bytes
from cloud_sync.errors import SyncError
from cloud_sync.ingest import BackendConfig, Ingest
from cloud_sync.ingest_db import IngestDB
from cloud_sync.keys import load_private_key
from cloud_sync.records import new_nonce, seal_command
from cloud_sync.transport import connect_args, new_client

__all__ = ["CommandResult", "Fleet"]

log = logging.getLogger("freshbox.backend.fleet")

#: results that end a command (``unlocked`` is final for the Open button; the sale
#: arrives later as a record)
#: how often queued cabinet state (status, telemetry, inventory, results) is written
FLUSH_S = 0.25

FINAL = frozenset({"refused", "done", "billed", "door_never_opened"})


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    status: str  # unlocked, billed, done, refused, ... or "timeout" (no answer in time)
    reason: str | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[CommandResult]
    until: Collection[str]


class Fleet:
    """MQTT for the backend; ``start`` connects, ``stop`` disconnects (see module doc)."""

    def __init__(
        self,
        settings: BackendSettings,
        db: Database,
        clock: Clock,
        bus: EventBus,
        *,
        applier: RecordApplier | None = None,
    ) -> None:
        if settings.broker is None:
            raise ValueError("the fleet needs [broker] settings")
        self.settings = settings
        self.broker = settings.broker
        self.db = db
        self.clock = clock
        self.bus = bus
        self.key = load_private_key(settings.signing_key)
        self.applier = applier or RecordApplier(clock, bus)
        ingest_db = IngestDB(
            db.engine, now=clock.now, on_stored=self.applier, on_commit=self.applier.committed
        )
        self.ingest = Ingest(
            BackendConfig(
                source=settings.source,
                broker=self.broker,
                signing_key=settings.signing_key,
                db=str(db.url),
                group=settings.ingest_group,
                batch_max=settings.batch_max,
                resend_after_s=settings.resend_after_s,
                resend_interval_s=settings.resend_interval_s,
                command_ttl_s=settings.command_ttl_s,
            ),
            wall=clock.now,
            db=ingest_db,
        )
        self.client_id = f"backend-{socket.gethostname()[:20]}-{os.getpid()}-{new_nonce()[:6]}"
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[Callable[..., None], tuple[Any, ...]]] = {}
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._writer_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        self.ingest.start()
        self._stopping.clear()
        self._writer_thread = threading.Thread(target=self._writer, name="fleet-state", daemon=True)
        self._writer_thread.start()
        client = new_client(self.broker, self.client_id, reconnect_on_failure=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 10)
        self._client = client
        client.connect_async(self.broker.host, self.broker.port, **connect_args(self.broker))
        client.loop_start()
        if not self._connected.wait(timeout):
            log.warning("fleet: broker %s:%d not reached yet", self.broker.host, self.broker.port)
        self.ingest.wait_connected(timeout)

    def stop(self) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()
        self._stopping.set()
        self._dirty.set()
        if self._writer_thread is not None:
            self._writer_thread.join(5.0)
        self.flush()
        self.ingest.stop()

    def connected(self) -> bool:
        return self._connected.is_set() and self.ingest.wait_connected(0)

    def enrol(self, cabinet_id: str, public_key: str) -> bool:
        return self.ingest.db.enrol(cabinet_id, public_key)

    # ---------------------------------------------------------------- commands

    async def command(
        self,
        cabinet_id: str,
        name: str,
        args: dict[str, Any],
        *,
        wait_s: float,
        until: Collection[str] = FINAL,
        nonce: str | None = None,
    ) -> CommandResult:
        """Send a command and wait for its first result whose status is in ``until`` (or
        a refusal); ``CommandResult(False, "timeout", ...)`` when none comes in time."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommandResult] = loop.create_future()
        nonce = nonce or new_nonce()
        with self._lock:
            self._waiters[nonce] = _Waiter(loop, future, until)
        try:
            cmd = seal_command(
                cabinet_id,
                name,
                args,
                nonce,
                self.clock.now() + timedelta(seconds=self.settings.command_ttl_s),
                self.key,
            )
            client = self._client
            if client is None or not self._connected.is_set():
                return CommandResult(False, "timeout", "backend_offline")
            client.publish(topics.cmd(cabinet_id), canonical_bytes(cmd), qos=1)
            try:
                return await asyncio.wait_for(asyncio.shield(future), wait_s)
            except TimeoutError:
                return CommandResult(False, "timeout", "timeout", {"nonce": nonce})
        finally:
            with self._lock:
                self._waiters.pop(nonce, None)

    # ---------------------------------------------------------------- MQTT

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("fleet: broker refused the connection: %s", reason_code)
            return
        client.subscribe(
            [
                (topics.cabinet_filter("status"), 1),
                (topics.cabinet_filter("telemetry"), 0),
                (topics.cabinet_filter("inventory"), 1),
                (topics.cabinet_filter("cmd/result"), 1),
            ]
        )
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            scope, cabinet_id, name = topics.parse_topic(message.topic)
        except SyncError:
            return
        if scope != "cab":
            return
        payload = bytes(message.payload)
        try:
            if name == "cmd/result":
                self._result(cabinet_id, payload)
            elif name == "status":
                self._defer((cabinet_id, name), self._status, (payload.decode("utf-8", "replace"),))
            elif name == "telemetry":
                self._defer((cabinet_id, name), self._telemetry, (json.loads(payload),))
            elif name == "inventory":
                self._defer((cabinet_id, name), self._inventory, (json.loads(payload),))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("fleet: bad %s from %s: %s", name, cabinet_id, exc)
        except Exception:
            log.exception("fleet: handling %s from %s failed", name, cabinet_id)

    # ---------------------------------------------------------------- state writer

    def _defer(self, key: tuple[str, str], fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Queue a state update; the writer applies them in one transaction every
        ``FLUSH_S``, the latest per (cabinet, topic) winning (telemetry and inventory are
        snapshots): 200 cabinets cost a few transactions a second, not hundreds."""
        with self._lock:
            cabinet_id = key[0]
            if key[1] == "cmd/result":  # every result counts, keep them all in order
                self._state[(cabinet_id, f"result:{len(self._state)}")] = (fn, args)
            else:
                self._state[key] = (fn, args)
        self._dirty.set()

    def _writer(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait(1.0)
            self._stopping.wait(FLUSH_S)
            self.flush()

    def flush(self) -> None:
        """Apply the queued state updates now (one transaction)."""
        with self._lock:
            batch = list(self._state.items())
            self._state.clear()
            self._dirty.clear()
        if not batch:
            return

        def apply(conn: Connection) -> None:
            for (cabinet_id, _), (fn, args) in batch:
                fn(conn, cabinet_id, *args)

        try:
            self.db.write(apply)
        except Exception:
            log.exception("fleet: writing %d state updates failed", len(batch))

    def _result(self, cabinet_id: str, payload: bytes) -> None:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("cabinet") != cabinet_id:
            return
        nonce = str(doc.get("nonce", ""))
        result = CommandResult(
            ok=bool(doc.get("ok")),
            status=str(doc.get("status", "")),
            reason=doc.get("reason"),
            data=_obj(doc.get("data")),
        )
        with self._lock:
            waiter = self._waiters.get(nonce)
        if waiter is not None and (result.status in waiter.until or not result.ok):
            waiter.loop.call_soon_threadsafe(_settle, waiter.future, result)
        self._defer((cabinet_id, "cmd/result"), self._record_result, (nonce, doc))

    # ---------------------------------------------------------------- state

    def _record_result(
        self, conn: Connection, cabinet_id: str, nonce: str, doc: dict[str, Any]
    ) -> None:
        status = str(doc.get("status", ""))
        now = self.clock.iso()
        data = _obj(doc.get("data"))
        if status == "unlocked":
            conn.execute(
                update(t.unlocks)
                .where(t.unlocks.c.nonce == nonce, t.unlocks.c.status.in_(("sent", "timeout")))
                .values(status="unlocked", session_id=data.get("session_id"), answered_at=now)
            )
        elif status in ("billed", "door_never_opened"):
            conn.execute(
                update(t.unlocks)
                .where(t.unlocks.c.nonce == nonce)
                .values(status=status, sale_seq=data.get("seq"))
            )
        elif status == "refused":
            conn.execute(
                update(t.unlocks)
                .where(t.unlocks.c.nonce == nonce, t.unlocks.c.status == "sent")
                .values(status="refused", reason=doc.get("reason"), answered_at=now)
            )
        if status == "done":
            _apply_late(conn, cabinet_id, nonce)
        conn.execute(
            update(t.commands)
            .where(t.commands.c.nonce == nonce)
            .values(
                status="done" if doc.get("ok") else "refused",
                reason=doc.get("reason"),
                answered_at=now,
            )
        )

    def _operator(self, conn: Connection, cabinet_id: str) -> str | None:
        row = conn.execute(
            select(t.cabinets.c.operator_id).where(t.cabinets.c.id == cabinet_id)
        ).first()
        return None if row is None else str(row.operator_id)

    def _status(self, conn: Connection, cabinet_id: str, text: str) -> None:
        online = text.strip() == "online"
        now = self.clock.iso()
        res = conn.execute(
            update(t.cabinets)
            .where(t.cabinets.c.id == cabinet_id)
            .values(online=online, status_at=now)
        )
        if not res.rowcount:
            return
        op = self._operator(conn, cabinet_id)
        if op is not None:
            self.bus.publish(
                f"operator:{op}", {"type": "status", "cabinet_id": cabinet_id, "online": online}
            )

    def _telemetry(self, conn: Connection, cabinet_id: str, doc: dict[str, Any]) -> None:
        health = _obj(doc.get("health"))
        temperature = doc.get("temperature_c", health.get("temperature_c"))
        door_open = health.get("door_open")
        values: dict[str, Any] = {
            "telemetry_json": json.dumps(doc, sort_keys=True),
            "telemetry_at": self.clock.iso(),
            "online": True,
        }
        if isinstance(temperature, int | float):
            values["temperature_c"] = float(temperature)
        if isinstance(door_open, bool):
            values["door"] = "open" if door_open else "closed"
            values["lock"] = "unlocked" if health.get("session") else "locked"
        res = conn.execute(update(t.cabinets).where(t.cabinets.c.id == cabinet_id).values(**values))
        if not res.rowcount:
            return
        levels = _obj(doc.get("levels"))
        for lane, grams in levels.items():
            if isinstance(grams, int | float):
                conn.execute(
                    update(t.lanes)
                    .where(t.lanes.c.cabinet_id == cabinet_id, t.lanes.c.lane == int(lane))
                    .values(stock_g=float(grams))
                )
        faulted = health.get("faulted_lanes") or []
        for lane in faulted:
            alarm(
                conn,
                cabinet_id,
                "sensor_fault",
                "warning",
                self.clock.iso(),
                f"{cabinet_id}:sensor_fault:{lane}:{self.clock.iso()[:13]}",
                detail={"lane": lane},
            )

    def _inventory(self, conn: Connection, cabinet_id: str, doc: dict[str, Any]) -> None:
        now = self.clock.iso()
        conn.execute(
            update(t.cabinets)
            .where(t.cabinets.c.id == cabinet_id)
            .values(inventory_json=json.dumps(doc, sort_keys=True), inventory_at=now)
        )
        for item in doc.get("lanes", []):
            if not isinstance(item, dict) or not isinstance(item.get("lane"), int):
                continue
            values: dict[str, Any] = {"updated_at": now}
            if isinstance(item.get("count"), int):
                values["stock_count"] = item["count"]
            elif isinstance(item.get("items"), list) and item.get("mode") == "tracked":
                values["stock_count"] = len(item["items"])
            if isinstance(item.get("level_g"), int | float):
                values["stock_g"] = float(item["level_g"])
            conn.execute(
                update(t.lanes)
                .where(t.lanes.c.cabinet_id == cabinet_id, t.lanes.c.lane == item["lane"])
                .values(**values)
            )

    # ---------------------------------------------------------------- suppliers

    def publish_restock(self, supplier_id: str, feed: dict[str, Any]) -> None:
        """The supplier's retained restock topic (the last snapshot wins)."""
        client = self._client
        if client is None:
            return
        client.publish(
            topics.supplier_restock(supplier_id), canonical_bytes(feed), qos=1, retain=True
        )


def _apply_late(conn: Connection, cabinet_id: str, nonce: str) -> None:
    """A price or planogram change the cabinet confirmed after the operator's request
    had given up waiting (its row says ``timeout``): the cabinet has it, so the lanes
    table must too."""
    row = conn.execute(
        select(t.commands.c.name, t.commands.c.args_json, t.commands.c.status).where(
            t.commands.c.nonce == nonce
        )
    ).first()
    if row is None or row.status != "timeout":
        return
    args = json.loads(row.args_json)
    changes: dict[int, dict[str, Any]] = {}
    if row.name == "set_prices":
        for key, fen in _obj(args.get("prices")).items():
            changes[int(key)] = {"price_fen": int(fen)}
    elif row.name == "set_planogram":
        for item in args.get("lanes", []):
            change: dict[str, Any] = {k: item[k] for k in ("sku", "name") if k in item}
            if "price" in item:
                change["price_fen"] = int(item["price"])
            changes[int(item["lane"])] = change
    for lane_no, values in changes.items():
        if values:
            conn.execute(
                update(t.lanes)
                .where(t.lanes.c.cabinet_id == cabinet_id, t.lanes.c.lane == lane_no)
                .values(**values)
            )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _settle(future: asyncio.Future[CommandResult], result: CommandResult) -> None:
    if not future.done():
        future.set_result(result)


"""The backend's ingest: verify, deduplicate, chain-check and store cabinet records; ack them.

``freshbox ingest --config ingest.toml`` runs one ingest process. Several may run
at once against the same database: they share the cabinets' records through the
MQTT shared subscriptions ``$share/{group}/freshbox/v1/cab/+/sales`` and
``.../events`` (each record goes to one of them) and serialise on the SQLite
write lock, so the chain logic below sees one consistent database.

For every message (docs/protocol.md sections 3, 5, 8):

1. **Verify** outside any transaction: strict JSON and record shape
   (``malformed``), the topic's cabinet and kind (``wrong_cabinet``), enrolment
   (``unknown_cabinet``: the message is kept in ``quarantine`` until the cabinet is
   enrolled), the Ed25519 signature under the enrolled key (``bad_signature``).
   Each rejection is an ``alarms`` row (the same message twice is one alarm).
2. **Store** a batch in one transaction, per cabinet in seq order against its
   head (``heads``): ``seq`` = head + 1 with ``prev`` = head hash is stored in
   ``records`` and becomes the head; a seq at or below the head with the stored
   hash is a **duplicate** (acked again, never stored twice); a seq further ahead
   is **held** (``held``) until the records before it arrive, and a gap that
   outlives ``resend_after_s`` makes the ingest send the cabinet a signed
   ``resend`` command; another record under a stored or held seq
   (``conflicting_duplicate``) or a ``prev`` that is not the head hash
   (``prev_mismatch``) is a **fork**: the cabinet is quarantined (its held and
   later records go to ``quarantine``, an alarm is raised, nothing past the fork
   is stored or acked) until an operator looks.
3. **Ack** after the commit: a signed cumulative ack ``{upto: head seq, head:
   head hash}`` on ``cab/{id}/ack`` for every cabinet the batch touched.

Database (``[ingest] db``): ``enrolment(cabinet, public_key, key_id, enrolled_at)``,
``heads(cabinet, seq, hash, quarantined, quarantine_reason, quarantined_at,
updated_at)``, ``records(cabinet, seq, kind, hash, prev, at, record_json,
stored_at)`` keyed by (cabinet, seq), ``held``, ``quarantine``, ``alarms``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync import topics
from cloud_sync.canonical import canonical_bytes, parse_json, sha256_hex
from cloud_sync.config import (
    BrokerSettings,
    SyncConfigError,
    TableReader,
    load_toml,
    parse_broker,
)
from cloud_sync.errors import MalformedMessage, SyncError
from cloud_sync.ingest_db import GoodRecord, IngestDB, IngestStats, StoredHook
from cloud_sync.keys import load_private_key, public_key_text
from cloud_sync.records import (
    format_at,
    new_nonce,
    seal_ack,
    seal_command,
    verified_record_bytes,
)
from cloud_sync.sqldb import database_url
from cloud_sync.transport import connect_args, new_client, public_key_spec

__all__ = [
    "BackendConfig",
    "Enrolled",
    "Ingest",
    "IngestDB",
    "IngestStats",
    "load_backend_config",
]

log = logging.getLogger("freshbox.sync.ingest")

def _utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Enrolled:
    """A cabinet the backend accepts records from."""

    cabinet: str
    public_key: str


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """An ingest/backend TOML file: ``[broker]``, ``[backend]``, ``[ingest]``, ``[[cabinets]]``."""

    source: str
    broker: BrokerSettings
    signing_key: Path
    db: str  # a file path or a database URL (cloud_sync.sqldb)
    group: str = "ingest"
    batch_max: int = 500
    resend_after_s: float = 2.0
    resend_interval_s: float = 5.0
    command_ttl_s: float = 30.0
    client_id: str | None = None
    cabinets: tuple[Enrolled, ...] = ()


def load_backend_config(path: Path | str) -> BackendConfig:
    """Read and validate an ingest/backend TOML file (see docs/protocol.md section 10)."""
    source, data = load_toml(path)
    top = TableReader(source, data, "")
    broker_table = top.sub("broker", required=True)
    broker = parse_broker(broker_table)
    broker_table.done()
    backend = top.sub("backend", required=True)
    signing_key = Path(backend.str_("signing_key"))
    if not signing_key.is_file():
        raise backend.fail("signing_key", f"{signing_key}: no such key file")
    backend.done()
    ing = top.sub("ingest")
    db = ing.str_("db", "var/ingest.db")
    try:
        database_url(db)
    except SyncError as exc:
        raise ing.fail("db", str(exc)) from None
    group = ing.str_("group", "ingest")
    try:
        topics.shared(group, "x")
    except SyncError:
        raise ing.fail("group", "must be 1-64 of A-Z a-z 0-9 . _ -") from None
    batch_max = ing.int_("batch_max", 500, minimum=1, maximum=100000)
    resend_after = ing.num("resend_after_s", 2.0)
    resend_interval = ing.num("resend_interval_s", 5.0)
    ttl = ing.num("command_ttl_s", 30.0)
    client_id = ing.opt_str("client_id")
    ing.done()
    cabinets: list[Enrolled] = []
    raw = top.get("cabinets", [])
    if not isinstance(raw, list):
        raise top.fail("cabinets", "must be an array of tables ([[cabinets]])")
    seen: set[str] = set()
    for i, item in enumerate(raw):
        r = TableReader(source, item, f"cabinets[{i}]")
        cab = r.str_("id")
        try:
            topics.validate_cabinet_id(cab)
        except SyncError as exc:
            raise r.fail("id", str(exc)) from None
        if cab in seen:
            raise r.fail("id", f"cabinet {cab} is listed twice")
        seen.add(cab)
        try:
            key = public_key_spec(r.str_("public_key"), "public key")
        except SyncConfigError as exc:
            raise r.fail("public_key", str(exc)) from None
        r.done()
        cabinets.append(Enrolled(cab, public_key_text(key)))
    top.done()
    return BackendConfig(
        source=source,
        broker=broker,
        signing_key=signing_key,
        db=db,
        group=group,
        batch_max=batch_max,
        resend_after_s=resend_after,
        resend_interval_s=resend_interval,
        command_ttl_s=ttl,
        client_id=client_id,
        cabinets=tuple(cabinets),
    )


@dataclass(frozen=True, slots=True)
class _Bad:
    cabinet: str | None
    seq: int | None
    reason: str
    detail: str
    evidence: bytes
    hold: bool = False  # kept in quarantine (unknown cabinet)


# ------------------------------------------------------------------------ the process


class Ingest:
    """One ingest process: MQTT in, :class:`IngestDB`, acks and resend commands out."""

    def __init__(
        self,
        config: BackendConfig,
        *,
        wall: Callable[[], datetime] = _utcnow,
        clock: Callable[[], float] = time.monotonic,
        db: IngestDB | None = None,
        on_stored: StoredHook | None = None,
    ) -> None:
        """``db`` defaults to ``config.db`` (a path or URL); ``on_stored`` runs inside the
        storing transaction for every record that joins a chain (the backend applies
        sales there, so a charge commits with its record or not at all)."""
        self.config = config
        self.wall = wall
        self.clock = clock
        self.backend_key: Ed25519PrivateKey = load_private_key(config.signing_key)
        self.db = db if db is not None else IngestDB(config.db, now=wall, on_stored=on_stored)
        if db is not None and on_stored is not None:
            db.on_stored = on_stored
        for cab in config.cabinets:
            self.db.enrol(cab.cabinet, cab.public_key)
        self._keys = self.db.enrolled()
        self.stats = IngestStats()
        self.client_id = config.client_id or (
            f"ingest-{socket.gethostname()[:20]}-{os.getpid()}-{new_nonce()[:6]}"
        )
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._client: mqtt.Client | None = None
        self._threads: list[threading.Thread] = []
        self._last_resend: dict[str, float] = {}
        self._verifiers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ingest-verify")
        self._next_gap_check = 0.0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        client = new_client(self.config.broker, self.client_id, reconnect_on_failure=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(1, 10)
        client.max_inflight_messages_set(1000)
        self._client = client
        b = self.config.broker
        client.connect_async(b.host, b.port, **connect_args(b))
        client.loop_start()
        worker = threading.Thread(target=self._work, name="ingest-worker", daemon=True)
        worker.start()
        # a long-running process: what startup built lives as long as it does; keeping it
        # out of the collector's full passes shortens the worst GC pause (16.7 -> 1.4 ms)
        gc.collect()
        gc.freeze()
        self._threads = [worker]

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
            with contextlib.suppress(Exception):
                self._client.loop_stop()
        self._verifiers.shutdown(wait=True)
        self.db.close()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        self.start()
        try:
            while not self._stop.is_set() and not (stop is not None and stop.is_set()):
                time.sleep(0.2)
        finally:
            self.stop()

    # ------------------------------------------------------------ MQTT

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("ingest: broker refused the connection: %s", reason_code)
            return
        g = self.config.group
        filters = [topics.cabinet_filter("sales"), topics.cabinet_filter("events")]
        if self.config.broker.mqtt5:
            filters = [topics.shared(g, f) for f in filters]
        client.subscribe([(f, 1) for f in filters])
        self._connected.set()
        log.info("ingest %s: connected, group %s", self.client_id, g)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest: disconnected: %s", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload)))

    # ------------------------------------------------------------ work

    def _work(self) -> None:
        while not self._stop.is_set():
            batch: list[tuple[str, bytes]] = []
            try:
                batch.append(self._queue.get(timeout=0.1))
                while len(batch) < self.config.batch_max:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            try:
                if batch:
                    self.process(batch)
                if self.clock() >= self._next_gap_check:
                    self._next_gap_check = self.clock() + 0.5
                    self.check_gaps()
            except Exception:
                log.exception("ingest: batch failed; the cabinets will send it again")
                time.sleep(0.5)

    def _key(self, cabinet: str) -> Ed25519PublicKey | None:
        key = self._keys.get(cabinet)
        if key is None:
            self._keys = self.db.enrolled()
            key = self._keys.get(cabinet)
        return key

    def verify(self, topic: str, payload: bytes) -> GoodRecord | _Bad:
        """Step 1 for one message: a verified record, or why it is rejected."""
        try:
            scope, cab, name = topics.parse_topic(topic)
        except SyncError as exc:
            return _Bad(None, None, "malformed", f"topic: {exc}", payload)
        if scope != "cab" or name not in ("sales", "events"):
            return _Bad(None, None, "malformed", f"not a record topic: {topic}", payload)
        try:
            rec = parse_json(payload)
            check_record_shape = isinstance(rec, dict) and isinstance(rec.get("seq"), int)
            if not check_record_shape:
                raise MalformedMessage("not a record (no integer seq)")
        except MalformedMessage as exc:
            return _Bad(cab, None, "malformed", str(exc), payload)
        seq: int = rec["seq"]
        if rec.get("cabinet") != cab:
            return _Bad(
                cab,
                seq,
                "wrong_cabinet",
                f"record of {rec['cabinet']!r} on the topic of {cab!r}",
                payload,
            )
        if rec.get("kind") not in ("sale", "event") or (rec["kind"] == "sale") != (
            name == "sales"
        ):
            return _Bad(cab, seq, "malformed", f"a {rec['kind']} record on {name}", payload)
        key = self._key(cab)
        if key is None:
            return _Bad(
                cab, seq, "unknown_cabinet", f"cabinet {cab} is not enrolled", payload, hold=True
            )
        try:
            data = verified_record_bytes(rec, key)
        except MalformedMessage as exc:
            return _Bad(cab, seq, "malformed", str(exc), payload)
        except SyncError as exc:
            return _Bad(cab, seq, exc.reason, str(exc), payload)
        return GoodRecord(
            cab, seq, rec["kind"], rec["at"], rec["prev"], sha256_hex(data), data.decode("utf-8")
        )

    def process(self, batch: Sequence[tuple[str, bytes]]) -> dict[str, tuple[int, str]]:
        """Verify, store and ack one batch; returns the new head of each cabinet touched."""
        self.stats.received += len(batch)
        self.stats.batches += 1
        good: dict[str, list[GoodRecord]] = {}
        bad: list[_Bad] = []
        # Ed25519 verification releases the GIL: two threads verify twice as fast
        verified = (
            list(self._verifiers.map(self.verify, *zip(*batch, strict=True)))
            if len(batch) >= 8
            else [self.verify(topic, payload) for topic, payload in batch]
        )
        for v in verified:
            if isinstance(v, GoodRecord):
                good.setdefault(v.cabinet, []).append(v)
            else:
                bad.append(v)
                self.stats.reject(v.reason)
        heads: dict[str, tuple[int, str]] = {}
        with self.db.transaction() as c:
            for b in bad:
                self.db.alarm(c, b.cabinet, b.seq, b.reason, b.detail, b.evidence)
                if b.hold and b.cabinet is not None:
                    c.execute(
                        "INSERT INTO quarantine (cabinet, seq, hash, reason, record_json,"
                        " received_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [
                            b.cabinet,
                            b.seq,
                            sha256_hex(b.evidence),
                            b.reason,
                            b.evidence.decode("utf-8", "replace"),
                            self.db.iso(),
                        ],
                    )
            for cab, recs in good.items():
                heads[cab] = self.db.apply(c, cab, recs, self.stats)
        for cab, (seq, h) in heads.items():
            if seq > 0:
                self._publish_ack(cab, seq, h)
        return heads

    def _publish_ack(self, cabinet: str, seq: int, head: str) -> None:
        client = self._client
        if client is None:
            return
        ack = seal_ack(cabinet, seq, head, self.backend_key)
        client.publish(topics.ack(cabinet), canonical_bytes(ack), qos=1)
        self.stats.acks += 1

    def check_gaps(self) -> int:
        """Ask cabinets whose records wait for missing predecessors to resend; returns how many."""
        sent = 0
        now_wall = self.wall()
        cutoff = format_at(now_wall - timedelta(seconds=self.config.resend_after_s))
        for cab, head_seq, _low, oldest in self.db.gaps():
            if oldest > cutoff:
                continue
            last = self._last_resend.get(cab)
            if last is not None and self.clock() - last < self.config.resend_interval_s:
                continue
            self._last_resend[cab] = self.clock()
            self.send_command(cab, "resend", {"from_seq": head_seq + 1})
            self.stats.resends += 1
            sent += 1
            log.info("ingest: cabinet %s has a gap after seq %d: resend requested", cab, head_seq)
        return sent

    def send_command(self, cabinet: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        cmd = seal_command(
            cabinet,
            name,
            args,
            new_nonce(),
            self.wall() + timedelta(seconds=self.config.command_ttl_s),
            self.backend_key,
        )
        if self._client is not None:
            self._client.publish(topics.cmd(cabinet), canonical_bytes(cmd), qos=1)
        return cmd

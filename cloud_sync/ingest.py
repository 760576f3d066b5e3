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
import hashlib
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

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
from cloud_sync.keys import key_id, load_private_key, public_key_from_text, public_key_text
from cloud_sync.records import (
    ZERO_HASH,
    format_at,
    new_nonce,
    seal_ack,
    seal_command,
    verified_record_bytes,
)
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

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS enrolment (
        cabinet TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        key_id TEXT NOT NULL,
        enrolled_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS heads (
        cabinet TEXT PRIMARY KEY,
        seq INTEGER NOT NULL DEFAULT 0,
        hash TEXT NOT NULL,
        quarantined INTEGER NOT NULL DEFAULT 0 CHECK (quarantined IN (0, 1)),
        quarantine_reason TEXT,
        quarantined_at TEXT,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS records (
        cabinet TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('sale', 'event')),
        hash TEXT NOT NULL,
        prev TEXT NOT NULL,
        at TEXT NOT NULL,
        record_json TEXT NOT NULL,
        stored_at TEXT NOT NULL,
        PRIMARY KEY (cabinet, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS held (
        cabinet TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        prev TEXT NOT NULL,
        kind TEXT NOT NULL,
        at TEXT NOT NULL,
        record_json TEXT NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (cabinet, seq, hash)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY,
        cabinet TEXT NOT NULL,
        seq INTEGER,
        hash TEXT,
        reason TEXT NOT NULL,
        record_json TEXT,
        received_at TEXT NOT NULL,
        UNIQUE (cabinet, seq, hash)
    )""",
    """CREATE TABLE IF NOT EXISTS alarms (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        cabinet TEXT,
        seq INTEGER,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        evidence TEXT,
        fingerprint TEXT NOT NULL UNIQUE
    )""",
)


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
    db: Path
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
    db = Path(ing.str_("db", "var/ingest.db"))
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


# ------------------------------------------------------------------------ the database


@dataclass(slots=True)
class IngestStats:
    """What one ingest process did (since it started)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    held: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    acks: int = 0
    resends: int = 0
    batches: int = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class _Good:
    cabinet: str
    seq: int
    kind: str
    at: str
    prev: str
    hash: str
    text: str


@dataclass(frozen=True, slots=True)
class _Bad:
    cabinet: str | None
    seq: int | None
    reason: str
    detail: str
    evidence: bytes
    hold: bool = False  # kept in quarantine (unknown cabinet)


class IngestDB:
    """The ingest's SQLite database (WAL, ``synchronous=FULL``); see the module docstring."""

    def __init__(self, path: Path | str, *, now: Callable[[], datetime] = _utcnow) -> None:
        self.path = Path(path)
        self._now = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        with self.transaction() as c:
            for statement in _SCHEMA:
                c.execute(statement)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def close(self) -> None:
        self.conn.close()

    def iso(self) -> str:
        return format_at(self._now())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # ------------------------------------------------------------ enrolment

    def enrol(self, cabinet: str, public_key: str) -> bool:
        """Enrol a cabinet's key; True if new. Another key for an enrolled cabinet is refused."""
        topics.validate_cabinet_id(cabinet)
        key = public_key_from_text(public_key)
        with self.transaction() as c:
            row = c.execute(
                "SELECT public_key FROM enrolment WHERE cabinet = ?", [cabinet]
            ).fetchone()
            if row is not None:
                if row[0] != public_key:
                    old = key_id(public_key_from_text(row[0]))
                    raise SyncConfigError(
                        f"cabinet {cabinet} is enrolled with key {old}, not {key_id(key)}: "
                        "re-keying a cabinet is not supported"
                    )
                return False
            c.execute(
                "INSERT INTO enrolment (cabinet, public_key, key_id, enrolled_at)"
                " VALUES (?, ?, ?, ?)",
                [cabinet, public_key, key_id(key), self.iso()],
            )
            return True

    def enrolled(self) -> dict[str, Ed25519PublicKey]:
        rows = self.conn.execute("SELECT cabinet, public_key FROM enrolment").fetchall()
        return {r[0]: public_key_from_text(r[1]) for r in rows}

    # ------------------------------------------------------------ reads

    def head(self, cabinet: str) -> tuple[int, str, bool]:
        row = self.conn.execute(
            "SELECT seq, hash, quarantined FROM heads WHERE cabinet = ?", [cabinet]
        ).fetchone()
        return (0, ZERO_HASH, False) if row is None else (int(row[0]), row[1], bool(row[2]))

    def records(self, cabinet: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT record_json FROM records WHERE cabinet = ? ORDER BY seq", [cabinet]
        ).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        c = self.conn
        return {
            "records": int(c.execute("SELECT count(*) FROM records").fetchone()[0]),
            "held": int(c.execute("SELECT count(*) FROM held").fetchone()[0]),
            "quarantine": int(c.execute("SELECT count(*) FROM quarantine").fetchone()[0]),
            "alarms": int(c.execute("SELECT count(*) FROM alarms").fetchone()[0]),
            "cabinets": int(c.execute("SELECT count(*) FROM enrolment").fetchone()[0]),
        }

    def alarms(self) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT id, at, cabinet, seq, reason, detail FROM alarms ORDER BY id"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def gaps(self) -> list[tuple[str, int, int, str]]:
        """``(cabinet, head seq, lowest held seq, oldest held received_at)`` of open gaps."""
        rows = self.conn.execute(
            "SELECT h.cabinet, h.seq, min(x.seq), min(x.received_at) FROM heads h"
            " JOIN held x ON x.cabinet = h.cabinet WHERE h.quarantined = 0"
            " GROUP BY h.cabinet"
        ).fetchall()
        return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]

    # ------------------------------------------------------------ writes

    def alarm(
        self,
        c: sqlite3.Connection,
        cabinet: str | None,
        seq: int | None,
        reason: str,
        detail: str,
        evidence: bytes = b"",
    ) -> None:
        fingerprint = hashlib.sha256(
            f"{cabinet}\0{seq}\0{reason}\0".encode() + evidence
        ).hexdigest()[:32]
        c.execute(
            "INSERT OR IGNORE INTO alarms (at, cabinet, seq, reason, detail, evidence, fingerprint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                self.iso(),
                cabinet,
                seq,
                reason,
                detail[:500],
                evidence[:4096].decode("utf-8", "replace"),
                fingerprint,
            ],
        )

    def apply(
        self, c: sqlite3.Connection, cabinet: str, recs: Sequence[_Good], stats: IngestStats
    ) -> tuple[int, str]:
        """Store one cabinet's records of a batch (inside the caller's transaction)."""
        now = self.iso()
        row = c.execute(
            "SELECT seq, hash, quarantined FROM heads WHERE cabinet = ?", [cabinet]
        ).fetchone()
        if row is None:
            c.execute(
                "INSERT INTO heads (cabinet, seq, hash, updated_at) VALUES (?, 0, ?, ?)",
                [cabinet, ZERO_HASH, now],
            )
            head_seq, head_hash, quarantined = 0, ZERO_HASH, False
        else:
            head_seq, head_hash, quarantined = int(row[0]), row[1], bool(row[2])
        start_seq = head_seq
        for r in sorted(recs, key=lambda g: g.seq):
            if r.seq <= head_seq:
                stored = c.execute(
                    "SELECT hash FROM records WHERE cabinet = ? AND seq = ?", [cabinet, r.seq]
                ).fetchone()
                if stored is not None and stored[0] == r.hash:
                    stats.duplicates += 1
                    continue
                if not quarantined:
                    other_hash = "none" if stored is None else str(stored[0])[:16]
                    detail = f"seq {r.seq} already stored with hash {other_hash}..."
                    self._quarantine(c, cabinet, r, "conflicting_duplicate", detail, stats)
                    quarantined = True
                else:
                    self._park(c, r, "conflicting_duplicate")
                continue
            if quarantined:
                self._park(c, r, "after_fork")
                continue
            if r.seq == head_seq + 1:
                if r.prev != head_hash:
                    self._quarantine(
                        c,
                        cabinet,
                        r,
                        "prev_mismatch",
                        f"seq {r.seq} prev {r.prev[:16]}... is not the hash "
                        f"{head_hash[:16]}... of seq {head_seq}",
                        stats,
                    )
                    quarantined = True
                    continue
                other = c.execute(
                    "SELECT hash FROM held WHERE cabinet = ? AND seq = ? AND hash != ?",
                    [cabinet, r.seq, r.hash],
                ).fetchone()
                if other is not None:
                    self._quarantine(
                        c,
                        cabinet,
                        r,
                        "conflicting_duplicate",
                        f"two records with seq {r.seq}",
                        stats,
                    )
                    quarantined = True
                    continue
                self._store(c, r, now)
                stats.stored += 1
                head_seq, head_hash = r.seq, r.hash
                continue
            other = c.execute(
                "SELECT hash FROM held WHERE cabinet = ? AND seq = ? AND hash != ?",
                [cabinet, r.seq, r.hash],
            ).fetchone()
            if other is not None:
                self._quarantine(
                    c, cabinet, r, "conflicting_duplicate", f"two records with seq {r.seq}", stats
                )
                quarantined = True
                continue
            cur = c.execute(
                "INSERT OR IGNORE INTO held (cabinet, seq, hash, prev, kind, at, record_json,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [cabinet, r.seq, r.hash, r.prev, r.kind, r.at, r.text, now],
            )
            if cur.rowcount:
                stats.held += 1
            else:
                stats.duplicates += 1
        # records held earlier (perhaps by another ingest process) that now follow the head
        while not quarantined:
            nxt = c.execute(
                "SELECT seq, hash, prev, kind, at, record_json FROM held"
                " WHERE cabinet = ? AND seq <= ? ORDER BY seq",
                [cabinet, head_seq + 1],
            ).fetchall()
            if not nxt:
                break
            progressed = False
            for seq, h, prev, kind, at, text in nxt:
                g = _Good(cabinet, int(seq), kind, at, prev, h, text)
                if g.seq <= head_seq:
                    stored = c.execute(
                        "SELECT hash FROM records WHERE cabinet = ? AND seq = ?", [cabinet, g.seq]
                    ).fetchone()
                    if stored is None or stored[0] != g.hash:
                        self._quarantine(
                            c,
                            cabinet,
                            g,
                            "conflicting_duplicate",
                            f"two records with seq {g.seq}",
                            stats,
                        )
                        quarantined = True
                        break
                    c.execute(
                        "DELETE FROM held WHERE cabinet = ? AND seq = ? AND hash = ?",
                        [cabinet, g.seq, g.hash],
                    )
                    continue
                if g.prev != head_hash:
                    self._quarantine(
                        c,
                        cabinet,
                        g,
                        "prev_mismatch",
                        f"seq {g.seq} prev {g.prev[:16]}... is not the hash "
                        f"{head_hash[:16]}... of seq {head_seq}",
                        stats,
                    )
                    quarantined = True
                    break
                self._store(c, g, now)
                c.execute(
                    "DELETE FROM held WHERE cabinet = ? AND seq = ? AND hash = ?",
                    [cabinet, g.seq, g.hash],
                )
                stats.stored += 1
                head_seq, head_hash = g.seq, g.hash
                progressed = True
            if not progressed:
                break
        if head_seq != start_seq:
            c.execute(
                "UPDATE heads SET seq = ?, hash = ?, updated_at = ? WHERE cabinet = ?",
                [head_seq, head_hash, now, cabinet],
            )
        return head_seq, head_hash

    def _store(self, c: sqlite3.Connection, r: _Good, now: str) -> None:
        c.execute(
            "INSERT INTO records (cabinet, seq, kind, hash, prev, at, record_json, stored_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [r.cabinet, r.seq, r.kind, r.hash, r.prev, r.at, r.text, now],
        )

    def _park(self, c: sqlite3.Connection, r: _Good, reason: str) -> None:
        c.execute(
            "INSERT OR IGNORE INTO quarantine (cabinet, seq, hash, reason, record_json,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?)",
            [r.cabinet, r.seq, r.hash, reason, r.text, self.iso()],
        )

    def _quarantine(
        self,
        c: sqlite3.Connection,
        cabinet: str,
        r: _Good,
        reason: str,
        detail: str,
        stats: IngestStats,
    ) -> None:
        now = self.iso()
        self._park(c, r, reason)
        c.execute(
            "INSERT OR IGNORE INTO quarantine (cabinet, seq, hash, reason, record_json,"
            " received_at) SELECT cabinet, seq, hash, 'after_fork', record_json, ?"
            " FROM held WHERE cabinet = ?",
            [now, cabinet],
        )
        c.execute("DELETE FROM held WHERE cabinet = ?", [cabinet])
        c.execute(
            "UPDATE heads SET quarantined = 1, quarantine_reason = ?, quarantined_at = ?"
            " WHERE cabinet = ?",
            [f"{reason}: {detail}", now, cabinet],
        )
        self.alarm(
            c,
            cabinet,
            r.seq,
            reason,
            f"cabinet {cabinet} quarantined: {detail}",
            r.text.encode("utf-8"),
        )
        stats.quarantined += 1
        log.error("cabinet %s quarantined at seq %d: %s: %s", cabinet, r.seq, reason, detail)


# ------------------------------------------------------------------------ the process


class Ingest:
    """One ingest process: MQTT in, :class:`IngestDB`, acks and resend commands out."""

    def __init__(
        self,
        config: BackendConfig,
        *,
        wall: Callable[[], datetime] = _utcnow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.wall = wall
        self.clock = clock
        self.backend_key: Ed25519PrivateKey = load_private_key(config.signing_key)
        self.db = IngestDB(config.db, now=wall)
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

    def verify(self, topic: str, payload: bytes) -> _Good | _Bad:
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
        return _Good(
            cab, seq, rec["kind"], rec["at"], rec["prev"], sha256_hex(data), data.decode("utf-8")
        )

    def process(self, batch: Sequence[tuple[str, bytes]]) -> dict[str, tuple[int, str]]:
        """Verify, store and ack one batch; returns the new head of each cabinet touched."""
        self.stats.received += len(batch)
        self.stats.batches += 1
        good: dict[str, list[_Good]] = {}
        bad: list[_Bad] = []
        for topic, payload in batch:
            v = self.verify(topic, payload)
            if isinstance(v, _Good):
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
                        "INSERT OR IGNORE INTO quarantine (cabinet, seq, hash, reason, record_json,"
                        " received_at) VALUES (?, ?, ?, ?, ?, ?)",
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

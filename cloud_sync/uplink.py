"""The cabinet's uplink: outbox to MQTT, acks back into the outbox, commands in, results out.

One thread owns one paho client (VERSION2 callbacks, MQTT 5) and runs its
network loop itself, so callbacks, publishing and the store calls they make
never race. What it does while connected:

* **Birth and will.** The connection's last will is ``offline`` (retained) on
  ``cab/{id}/status``; right after CONNACK it subscribes to ``cmd`` and ``ack``
  and publishes ``online`` (retained). A clean stop publishes ``offline`` itself.
* **Drain.** Sealed outbox records are published in seq order, QoS 1, on
  ``sales`` or ``events``, keeping at most ``window`` records published beyond the
  last ack. A PUBACK means nothing here: a record leaves the outbox only when the
  backend's signed cumulative ack (``ack`` topic, docs/protocol.md section 5)
  covers it, and only if the ack's ``head`` is the cabinet's own hash of that
  record (otherwise an ``ack_head_mismatch`` alarm is recorded and nothing is
  deleted). After every reconnect, on a ``resend`` command, and whenever no ack
  arrives for ``retransmit_s`` while records are in flight, every unacked record
  is published again: delivery is at-least-once and the backend deduplicates.
* **The loop.** The thread waits in ``select`` on the client's socket: an incoming
  message (an ack, a command, a PUBACK) wakes it at once; it polls the store every
  ``idle_poll_s`` for new records and timers (retransmit, follow-ups, telemetry),
  and does not wait at all while sealed records can still be published. Acks that
  arrived together are handled as one: the highest one that verifies is applied
  (they are cumulative, so the lower ones could change nothing), which saves a
  signature check and a store commit per superseded ack. paho's own in-flight
  limit is off (the window above bounds what is unacknowledged), and the loop uses
  paho's socket-level calls rather than ``loop()``, whose wake-up pipe would cost a
  system call per publish.
* **Reconnect** with exponential backoff and jitter (:class:`~cloud_sync.transport.Backoff`,
  injectable random source; the clock is injectable too).
* **Telemetry** every ``telemetry_interval_s`` on ``telemetry`` (QoS 0): lane levels
  and health from the cabinet, the outbox position, the software version; and a
  retained **inventory** snapshot on connect and whenever it changes.
* **Commands** on ``cmd``: verified (shape, addressee, backend signature, expiry,
  nonce) by :func:`cloud_sync.records.verify_command`; an accepted nonce is stored
  durably (:class:`~cloud_sync.nonces.NonceStore`) *before* the command runs, so a
  redelivered or replayed command is refused ``replayed`` even after a restart.
  The handler for the command's name runs (``unlock``, ``restock``, ``set_prices``,
  ``set_planogram``, ``tare`` come from the daemon; ``resend`` is built in) and the
  outcome goes to ``cmd/result`` (section 4 of docs/protocol.md): ``unlocked``,
  then ``billed`` with the sale's seq or ``door_never_opened``; ``done``;
  ``refused`` with a reason.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync import topics
from cloud_sync.canonical import canonical_bytes, parse_json
from cloud_sync.config import SyncSettings
from cloud_sync.errors import MalformedMessage, SyncError
from cloud_sync.nonces import NonceStore
from cloud_sync.records import check_command, format_at, verify_ack, verify_command
from cloud_sync.transport import SOFTWARE_VERSION, Backoff, connect_args, new_client

__all__ = [
    "CallBridge",
    "CommandHandler",
    "CommandRefused",
    "OutboxStore",
    "Uplink",
    "UplinkStats",
    "command_result",
]

log = logging.getLogger("freshbox.sync.uplink")

#: Names of the commands the uplink executes itself.
BUILTIN_COMMANDS: Final = frozenset({"resend"})
#: How long a session started by a command is followed for its final result.
_FOLLOW_S: Final = 6 * 3600.0


class CommandRefused(SyncError):
    """A command handler refuses to run the command; ``code`` goes to ``cmd/result``."""

    reason = "refused"

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code


#: ``handler(args) -> data``: runs a verified command, returns what goes into the
#: result's ``data`` (``{"session_id": ...}`` makes the uplink follow that session
#: and report ``billed``/``door_never_opened``); raises :class:`CommandRefused`.
CommandHandler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class _Head(Protocol):
    @property
    def acked_upto(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def last_hash(self) -> str | None: ...
    @property
    def sealed_upto(self) -> int: ...


class _Row(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def record_json(self) -> str: ...


class _Session(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def outbox_seq(self) -> int | None: ...
    @property
    def total_fen(self) -> int | None: ...


class OutboxStore(Protocol):
    """What the uplink needs of the cabinet store (:class:`edge.store.CabinetStore`)."""

    @property
    def cabinet_id(self) -> str: ...
    def outbox_head(self) -> _Head: ...
    def outbox_records(self, after_seq: int = 0, limit: int = 100) -> Sequence[_Row]: ...
    def outbox_hash(self, seq: int) -> str | None: ...
    def outbox_ack(self, upto_seq: int) -> int: ...
    def inventory(self) -> Mapping[int, Any]: ...
    def session(self, session_id: str) -> _Session | None: ...
    def record_event(
        self,
        t: float,
        type: str,
        *,
        session_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        severity: Any = None,
    ) -> int: ...


@dataclass(slots=True)
class UplinkStats:
    """Counters (read them from any thread; they are only ever increased)."""

    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    republished: int = 0
    acked_upto: int = 0
    acks: int = 0
    bad_acks: int = 0
    commands: int = 0
    refused: int = 0
    telemetry: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


def command_result(
    cabinet_id: str,
    nonce: str,
    name: str,
    *,
    ok: bool,
    status: str,
    at: datetime,
    reason: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``cmd/result`` object (docs/protocol.md section 4.1)."""
    return {
        "v": 1,
        "cabinet": cabinet_id,
        "nonce": nonce,
        "name": name,
        "ok": ok,
        "status": status,
        "reason": reason,
        "at": format_at(at),
        "data": dict(data or {}),
    }


class CallBridge:
    """Runs functions on another thread's loop: commands reach a daemon that is not thread-safe.

    The uplink thread calls :meth:`call` (which waits); the daemon's loop calls
    :meth:`run_pending` every iteration. A call not run within ``timeout`` is
    refused ``timeout`` and will not run later.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: deque[_Call] = deque()

    def call(self, fn: Callable[[], Any]) -> Any:
        item = _Call(fn)
        with self._lock:
            self._pending.append(item)
        if not item.done.wait(self.timeout):
            with self._lock:
                if not item.started:
                    item.cancelled = True
            if item.cancelled:
                raise CommandRefused("timeout", "the cabinet did not take the command in time")
            item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def run_pending(self) -> int:
        """Run every waiting call (in the calling thread); returns how many ran."""
        ran = 0
        while True:
            with self._lock:
                if not self._pending:
                    return ran
                item = self._pending.popleft()
                if item.cancelled:
                    continue
                item.started = True
            try:
                item.result = item.fn()
            except BaseException as exc:  # handed to the caller
                item.error = exc
            item.done.set()
            ran += 1


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    cancelled: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Follow:
    nonce: str
    name: str
    until: float


def _utcnow() -> datetime:
    return datetime.now(UTC)


_TCP_CORK: Final = getattr(socket, "TCP_CORK", None)  # Linux


def _cork(client: mqtt.Client, on: bool) -> bool:
    """Hold back (``on``) or release the socket's partial TCP segments (Linux ``TCP_CORK``).

    A burst of publishes is written one packet per ``send`` with ``TCP_NODELAY``; corked,
    the kernel packs them into full segments and sends them when the burst ends, which
    saves the broker (and the loopback or radio) a segment per record. True if corked.
    """
    setsockopt = getattr(client.socket(), "setsockopt", None)
    if _TCP_CORK is None or setsockopt is None:
        return False
    try:
        setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1 if on else 0)
    except (OSError, ValueError):
        return False
    return True


class Uplink:
    """The cabinet's MQTT side; :meth:`start` it, :meth:`stop` it (see the module docstring).

    ``clock`` (monotonic seconds), ``wall`` (UTC now) and ``rng`` (reconnect
    jitter) are injectable; ``cabinet_time`` gives the ``t`` of alarm events it
    records (cabinet clock seconds, default Unix time).
    """

    def __init__(
        self,
        settings: SyncSettings,
        store: OutboxStore,
        backend_key: Ed25519PublicKey,
        *,
        handlers: Mapping[str, CommandHandler] | None = None,
        telemetry: Callable[[], Mapping[str, Any]] | None = None,
        nonces: NonceStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        cabinet_time: Callable[[], float] = time.time,
        poll_s: float = 0.02,
        idle_poll_s: float = 0.2,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cabinet_id = topics.validate_cabinet_id(store.cabinet_id)
        self.backend_key = backend_key
        self.handlers: dict[str, CommandHandler] = dict(handlers or {})
        self.telemetry_source = telemetry
        self.nonces = nonces
        self.clock = clock
        self.wall = wall
        self.cabinet_time = cabinet_time
        self.poll_s = poll_s
        self.idle_poll_s = idle_poll_s
        #: how long the next loop may wait for the socket (see _drain)
        self._wait = 0.0
        self.client_id = client_id or self.cabinet_id
        self.backoff = Backoff(
            settings.reconnect_min_s, settings.reconnect_max_s, rng=rng or random.Random()
        )
        self.stats = UplinkStats()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._session_ok = False
        self._refused_connack: str | None = None
        self._next_seq = 1
        self._last_progress = 0.0
        self._commands: deque[bytes] = deque()
        self._acks: list[bytes] = []
        self._follow: dict[str, _Follow] = {}
        self._mismatch_alarmed: set[int] = set()
        self._inventory_sent: bytes | None = None
        self._next_telemetry = 0.0
        self._next_inventory = 0.0
        self._next_follow = 0.0
        self._next_purge = 0.0
        t = topics
        cab = self.cabinet_id
        self.t_sales, self.t_events = t.sales(cab), t.events(cab)
        self.t_status, self.t_cmd, self.t_ack = t.status(cab), t.cmd(cab), t.ack(cab)
        self.t_result, self.t_telemetry = t.cmd_result(cab), t.telemetry(cab)
        self.t_inventory = t.inventory(cab)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the uplink thread (returns at once; it connects in the background)."""
        if self._thread is not None:
            raise RuntimeError("uplink already started")
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.cabinet_id}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, disconnect and join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Run in the calling thread until :meth:`stop` is called from another."""
        self._run()

    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or ``timeout`` seconds pass (False)."""
        return self._connected.wait(timeout)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self._connection()
            if self._stop.is_set():
                break
            if ok:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            log.info("%s: reconnecting in %.2f s", self.cabinet_id, delay)
            self._stop.wait(delay)

    def _connection(self) -> bool:
        """One connection, from connect to its loss; True if CONNACK accepted it."""
        b = self.settings.broker
        client = new_client(b, self.client_id)
        client.will_set(self.t_status, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        # paho's in-flight limit would rescan every in-flight message on each PUBACK;
        # the window bounds the unacknowledged records, so the limit is off (0)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        self._wait = 0.0
        self._acks.clear()
        self._session_ok = False
        self._refused_connack = None
        try:
            client.connect(b.host, b.port, **connect_args(b))
        except (OSError, ValueError) as exc:
            self.stats.connect_failures += 1
            log.warning("%s: cannot connect to %s:%d: %s", self.cabinet_id, b.host, b.port, exc)
            return False
        self._client = client
        deadline = self.clock() + max(10.0, float(b.keepalive_s))
        try:
            while not self._stop.is_set():
                rc = self._loop_once(client, self._wait if self._session_ok else self.poll_s)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._refused_connack is not None:
                    break
                if self._session_ok:
                    self._tick(client)
                elif self.clock() > deadline:
                    log.warning("%s: no CONNACK from the broker", self.cabinet_id)
                    break
            if self._stop.is_set() and self._session_ok:
                self._say_goodbye(client)
        except Exception:
            log.exception("%s: uplink connection failed", self.cabinet_id)
        finally:
            was_ok = self._session_ok
            if self._acks:  # read just before the connection ended: they still count
                try:
                    self._handle_acks()
                except Exception:
                    log.exception("%s: acks not applied", self.cabinet_id)
            self._session_ok = False
            self._connected.clear()
            self._client = None
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
        if not was_ok:
            self.stats.connect_failures += 1
        return was_ok

    def _say_goodbye(self, client: mqtt.Client) -> None:
        info = client.publish(self.t_status, b"offline", qos=1, retain=True)
        end = self.clock() + 1.0
        while not info.is_published() and self.clock() < end:
            if self._loop_once(client, 0.02) != mqtt.MQTT_ERR_SUCCESS:
                break

    @staticmethod
    def _loop_once(client: mqtt.Client, timeout: float) -> int:
        """One pass of the network loop: wait up to ``timeout`` for the socket, read what
        came, write what is queued, keep the connection alive (paho's ``loop()`` minus its
        wake-up pipe: this thread is the only one that publishes, and a publish outside a
        callback is written at once)."""
        sock = client.socket()
        if sock is None:
            return int(mqtt.MQTT_ERR_NO_CONN)
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
        buffered = pending() if pending is not None else 0
        try:
            readable, writable, _ = select.select(
                [sock], [sock] if client.want_write() else [], [], 0.0 if buffered else timeout
            )
        except (OSError, ValueError, TypeError):
            return int(mqtt.MQTT_ERR_CONN_LOST)
        if readable or buffered:
            rc = client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
                return int(rc) or int(mqtt.MQTT_ERR_NO_CONN)
        if writable or client.want_write():  # callbacks queue packets (subscribe, results...)
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
                return int(rc) or int(mqtt.MQTT_ERR_NO_CONN)
        return int(client.loop_misc())

    # ------------------------------------------------------------ callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._refused_connack = str(reason_code)
            log.error("%s: broker refused the connection: %s", self.cabinet_id, reason_code)
            return
        client.subscribe([(self.t_cmd, 1), (self.t_ack, 1)])
        client.publish(self.t_status, b"online", qos=1, retain=True)
        self.stats.connects += 1
        head = self.store.outbox_head()
        self._next_seq = head.acked_upto + 1  # republish everything unacked
        self.stats.acked_upto = head.acked_upto
        self._last_progress = self.clock()
        self._inventory_sent = None
        now = self.clock()
        self._next_inventory = now
        self._next_telemetry = now
        self._session_ok = True
        self._connected.set()
        unacked = head.last_seq - head.acked_upto
        log.info("%s: connected; %d record(s) unacked", self.cabinet_id, unacked)

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
            log.warning("%s: disconnected: %s", self.cabinet_id, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.t_ack:
            self._acks.append(bytes(message.payload))
        elif message.topic == self.t_cmd:
            self._commands.append(bytes(message.payload))

    # ------------------------------------------------------------ acks

    def _handle_acks(self) -> None:
        """Apply the acks that arrived since the last tick, highest claim first.

        Acks are cumulative: once one verifies and is applied (or is already covered),
        the others claim no more than it did and could change nothing, so they are
        dropped without a signature check or a store commit each. A claim that does not
        verify, or names another head, is refused as before and the next one is tried.
        """
        payloads, self._acks = self._acks, []
        if len(payloads) == 1:
            self._handle_ack(payloads[0])
            return
        claims: list[tuple[int, Any]] = []
        for payload in payloads:
            try:
                ack = parse_json(payload)
            except SyncError as exc:
                self.stats.bad_acks += 1
                log.warning("%s: ack refused: %s", self.cabinet_id, exc)
                continue
            upto = ack.get("upto") if isinstance(ack, dict) else None
            claims.append((upto if type(upto) is int else 0, ack))
        claims.sort(key=lambda c: c[0], reverse=True)
        for _, ack in claims:
            if self._apply_ack(ack):
                return

    def _handle_ack(self, payload: bytes) -> bool:
        try:
            ack = parse_json(payload)
        except SyncError as exc:
            self.stats.bad_acks += 1
            log.warning("%s: ack refused: %s", self.cabinet_id, exc)
            return False
        return self._apply_ack(ack)

    def _apply_ack(self, ack: Any) -> bool:
        """Verify one parsed ack and delete what it covers; True if it verified and holds
        (applied now, or already covered by an earlier ack)."""
        try:
            upto = verify_ack(ack, self.backend_key, cabinet_id=self.cabinet_id)
        except SyncError as exc:
            self.stats.bad_acks += 1
            log.warning("%s: ack refused: %s", self.cabinet_id, exc)
            return False
        head = self.store.outbox_head()
        if upto <= head.acked_upto:
            return True
        if upto > head.sealed_upto:
            self.stats.bad_acks += 1
            log.warning(
                "%s: ack upto %d is beyond the last sealed record %d; ignored",
                self.cabinet_id,
                upto,
                head.sealed_upto,
            )
            return False
        mine = self.store.outbox_hash(upto)
        if mine is not None and mine != ack["head"]:
            self.stats.bad_acks += 1
            if upto not in self._mismatch_alarmed:
                self._mismatch_alarmed.add(upto)
                log.error("%s: ack upto %d names another record hash", self.cabinet_id, upto)
                self.store.record_event(
                    self.cabinet_time(),
                    "ack_head_mismatch",
                    data={"upto": upto, "ours": mine, "backend": ack["head"]},
                    severity="alarm",
                )
            return False
        self.store.outbox_ack(upto)
        self.stats.acks += 1
        self.stats.acked_upto = upto
        self._last_progress = self.clock()
        return True

    # ------------------------------------------------------------ the tick

    def _tick(self, client: mqtt.Client) -> None:
        while self._commands:
            self._handle_command(client, self._commands.popleft())
        if self._acks:
            self._handle_acks()
        self._drain(client)
        now = self.clock()
        if now >= self._next_inventory:
            self._next_inventory = now + 5.0
            self._publish_inventory(client)
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.settings.telemetry_interval_s
            self._publish_telemetry(client)
        if self._follow and now >= self._next_follow:
            self._next_follow = now + 0.2
            self._check_follow(client)
        if self.nonces is not None and now >= self._next_purge:
            self._next_purge = now + 60.0
            self.nonces.purge(self.wall())

    def _drain(self, client: mqtt.Client) -> None:
        head = self.store.outbox_head()
        acked = head.acked_upto
        now = self.clock()
        if self._next_seq <= acked:
            self._next_seq = acked + 1
        in_flight = self._next_seq - 1 - acked
        if in_flight > 0 and now - self._last_progress > self.settings.retransmit_s:
            log.info(
                "%s: no ack for %.1f s; republishing from seq %d",
                self.cabinet_id,
                now - self._last_progress,
                acked + 1,
            )
            self._next_seq = acked + 1
            self._last_progress = now
            in_flight = 0
        if in_flight == 0:
            self._last_progress = now
        # Incoming messages (acks, commands, PUBACKs) wake the loop at once, so with the
        # window full, or nothing sealed to send, it only has to look at the store now and
        # then (new records, timers); while sealed records can still go out it does not wait.
        self._wait = self.idle_poll_s
        room = self.settings.window - in_flight
        if room <= 0 or self._next_seq > head.sealed_upto:
            return
        rows = self.store.outbox_records(after_seq=self._next_seq - 1, limit=min(room, 1000))
        corked = len(rows) > 1 and _cork(client, True)
        try:
            for row in rows:
                topic = self.t_sales if row.kind == "sale" else self.t_events
                info = client.publish(topic, row.record_json.encode("utf-8"), qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    log.warning(
                        "%s: publish of seq %d failed: %s", self.cabinet_id, row.seq, info.rc
                    )
                    self._wait = self.poll_s
                    return
                if row.seq <= self.stats.published:
                    self.stats.republished += 1
                else:
                    self.stats.published = row.seq
                self._next_seq = row.seq + 1
        finally:
            if corked:
                _cork(client, False)  # sends what is left at once
        if rows and self._next_seq <= head.sealed_upto and len(rows) < room:
            self._wait = 0.0  # the read limit stopped it, not the window: go on at once

    # ------------------------------------------------------------ commands

    def _handle_command(self, client: mqtt.Client, payload: bytes) -> None:
        self.stats.commands += 1
        now = self.wall()
        try:
            cmd = parse_json(payload)
            check_command(cmd)
        except MalformedMessage as exc:
            self._refuse_stats("malformed")
            log.warning("%s: malformed command dropped: %s", self.cabinet_id, exc)
            return  # a command we cannot attribute gets no result (docs/protocol.md 4)
        nonce, name = cmd["nonce"], cmd["name"]
        seen: set[str] | NonceStore = self.nonces if self.nonces is not None else set()
        try:
            verify_command(
                cmd,
                self.backend_key,
                now,
                seen,
                cabinet_id=self.cabinet_id,
                max_ttl=timedelta(seconds=self.settings.max_command_ttl_s),
                remember=False,
            )
        except SyncError as exc:
            if exc.reason == "wrong_cabinet":
                self._refuse_stats("wrong_cabinet")
                log.warning("%s: command for another cabinet dropped: %s", self.cabinet_id, exc)
                return
            self._refuse(client, nonce, name, exc.reason, str(exc))
            return
        if self.nonces is not None and not self.nonces.remember(nonce, cmd["expires"], name):
            self._refuse(client, nonce, name, "replayed", "nonce already used")
            return
        args: Mapping[str, Any] = cmd["args"]
        try:
            if name == "resend":
                data = self._resend(args)
            else:
                handler = self.handlers.get(name)
                if handler is None:
                    raise CommandRefused("unknown_command", f"no command {name!r} on this cabinet")
                data = dict(handler(args))
        except CommandRefused as exc:
            self._refuse(client, nonce, name, exc.code, str(exc))
            return
        except Exception as exc:  # a handler bug must not kill the uplink
            log.exception("%s: command %s failed", self.cabinet_id, name)
            self._refuse(client, nonce, name, "failed", f"{type(exc).__name__}: {exc}")
            return
        session_id = data.get("session_id")
        status = "unlocked" if isinstance(session_id, str) else "done"
        if isinstance(session_id, str):
            self._follow[session_id] = _Follow(nonce, name, self.clock() + _FOLLOW_S)
        self._result(
            client,
            command_result(
                self.cabinet_id, nonce, name, ok=True, status=status, at=self.wall(), data=data
            ),
        )

    def _refuse_stats(self, code: str) -> None:
        self.stats.refused += 1
        self.stats.refusals[code] = self.stats.refusals.get(code, 0) + 1

    def _refuse(self, client: mqtt.Client, nonce: str, name: str, code: str, detail: str) -> None:
        self._refuse_stats(code)
        log.info("%s: command %s (%s) refused: %s", self.cabinet_id, name, nonce, detail)
        self._result(
            client,
            command_result(
                self.cabinet_id,
                nonce,
                name,
                ok=False,
                status="refused",
                reason=code,
                at=self.wall(),
                data={"detail": detail[:200]},
            ),
        )

    def _result(self, client: mqtt.Client, result: Mapping[str, Any]) -> None:
        client.publish(self.t_result, canonical_bytes(result), qos=1)

    def _resend(self, args: Mapping[str, Any]) -> dict[str, Any]:
        from_seq = args.get("from_seq", 1)
        if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
            raise CommandRefused("bad_args", "resend needs from_seq, an integer >= 1")
        head = self.store.outbox_head()
        start = max(from_seq, head.acked_upto + 1)
        if start < self._next_seq:
            self._next_seq = start
        self._last_progress = self.clock()
        return {"from_seq": start, "last_seq": head.sealed_upto}

    def _check_follow(self, client: mqtt.Client) -> None:
        now = self.clock()
        for session_id, follow in list(self._follow.items()):
            row = self.store.session(session_id)
            if row is None or now > follow.until:
                del self._follow[session_id]
                continue
            if row.state not in ("billed", "expired"):
                continue
            del self._follow[session_id]
            status = "door_never_opened" if row.state == "expired" else "billed"
            data = {"session_id": session_id, "seq": row.outbox_seq, "total_fen": row.total_fen}
            self._result(
                client,
                command_result(
                    self.cabinet_id,
                    follow.nonce,
                    follow.name,
                    ok=True,
                    status=status,
                    at=self.wall(),
                    data=data,
                ),
            )

    # ------------------------------------------------------------ snapshots

    def _publish_telemetry(self, client: mqtt.Client) -> None:
        extra: Mapping[str, Any] = {}
        if self.telemetry_source is not None:
            try:
                extra = self.telemetry_source()
            except Exception:
                log.exception("%s: telemetry source failed", self.cabinet_id)
        head = self.store.outbox_head()
        body = {
            "v": 1,
            "cabinet": self.cabinet_id,
            "at": format_at(self.wall()),
            "software": SOFTWARE_VERSION,
            "levels": extra.get("levels", {}),
            "health": {
                **dict(extra.get("health", {})),
                "mqtt_connects": self.stats.connects,
            },
            "outbox": {
                "acked_upto": head.acked_upto,
                "last_seq": head.last_seq,
                "pending": head.last_seq - head.acked_upto,
            },
        }
        try:
            payload = canonical_bytes(body)
        except SyncError as exc:
            log.warning("%s: telemetry not sent: %s", self.cabinet_id, exc)
            return
        client.publish(self.t_telemetry, payload, qos=0)
        self.stats.telemetry += 1

    def _publish_inventory(self, client: mqtt.Client) -> None:
        lanes = []
        for lane, row in sorted(self.store.inventory().items()):
            lanes.append(
                {
                    "lane": lane,
                    "sku": getattr(row, "sku", None),
                    "mode": getattr(row, "mode", None),
                    "level_g": getattr(row, "level_g", None),
                    "count": getattr(row, "count", None),
                    "items": list(getattr(row, "items", []) or []),
                }
            )
        try:
            content = canonical_bytes(lanes)
        except SyncError as exc:
            log.warning("%s: inventory not sent: %s", self.cabinet_id, exc)
            return
        if content == self._inventory_sent:
            return
        snapshot = {
            "v": 1,
            "cabinet": self.cabinet_id,
            "at": format_at(self.wall()),
            "lanes": lanes,
        }
        client.publish(self.t_inventory, canonical_bytes(snapshot), qos=1, retain=True)
        self._inventory_sent = content

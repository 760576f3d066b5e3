"""The backend's side of commands: sign, publish on ``cmd``, collect ``cmd/result``.

Used by ``freshbox cmd ...`` and by the benchmarks; the ingest sends its own
``resend`` commands. Every command gets a fresh nonce and a short expiry; a
result is matched to its command by nonce (docs/protocol.md section 4).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync import topics
from cloud_sync.canonical import canonical_bytes, parse_json
from cloud_sync.config import BrokerSettings
from cloud_sync.errors import MalformedMessage
from cloud_sync.records import new_nonce, seal_command
from cloud_sync.transport import connect_args, new_client

__all__ = ["FINAL_STATUSES", "Commander"]

#: Result statuses after which no further result comes for a nonce.
FINAL_STATUSES: Final = frozenset({"refused", "done", "billed", "door_never_opened"})


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Commander:
    """A connected backend client that sends signed commands and waits for their results."""

    def __init__(
        self,
        broker: BrokerSettings,
        backend_key: Ed25519PrivateKey,
        *,
        client_id: str | None = None,
        wall: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.broker = broker
        self.backend_key = backend_key
        self.wall = wall
        self.client_id = client_id or f"backend-{new_nonce()[:10]}"
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._arrived: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._client: mqtt.Client | None = None
        self.monotonic: Callable[[], float] = time.monotonic

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe to every cabinet's ``cmd/result``; raises TimeoutError."""
        client = new_client(self.broker, self.client_id, reconnect_on_failure=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        client.connect(self.broker.host, self.broker.port, **connect_args(self.broker))
        client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"no connection to {self.broker.host}:{self.broker.port}")

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_stop()

    def __enter__(self) -> Commander:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(topics.cabinet_filter("cmd/result"), qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            result = parse_json(bytes(message.payload))
        except MalformedMessage:
            return
        if not isinstance(result, dict) or not isinstance(result.get("nonce"), str):
            return
        with self._cond:
            self._results.setdefault(result["nonce"], []).append(result)
            self._arrived.setdefault(result["nonce"], []).append(self.monotonic())
            self._cond.notify_all()

    def send(
        self,
        cabinet: str,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        ttl_s: float = 15.0,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """Sign and publish a command; returns it (its ``nonce`` names its results)."""
        cmd = seal_command(
            cabinet,
            name,
            dict(args or {}),
            nonce or new_nonce(),
            self.wall() + timedelta(seconds=ttl_s),
            self.backend_key,
        )
        self.publish_raw(cabinet, canonical_bytes(cmd))
        return cmd

    def publish_raw(self, cabinet: str, payload: bytes) -> None:
        """Publish bytes on the cabinet's ``cmd`` topic (tests: replays, forgeries)."""
        if self._client is None:
            raise RuntimeError("commander not started")
        self._client.publish(topics.cmd(cabinet), payload, qos=1)

    def results(self, nonce: str) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._results.get(nonce, []))

    def arrival(self, nonce: str) -> float | None:
        """Monotonic time the first result for ``nonce`` arrived."""
        with self._cond:
            times = self._arrived.get(nonce)
            return times[0] if times else None

    def wait(self, nonce: str, timeout: float, *, final: bool = False) -> dict[str, Any] | None:
        """The first result for ``nonce`` (with ``final``: the first final one), or None."""
        end = self.monotonic() + timeout
        with self._cond:
            while True:
                for r in self._results.get(nonce, []):
                    if not final or r.get("status") in FINAL_STATUSES:
                        return r
                left = end - self.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

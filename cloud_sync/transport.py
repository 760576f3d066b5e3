"""MQTT plumbing shared by the uplink, the ingest and the command line: clients, backoff.

Every client is paho-mqtt 2 with :data:`paho.mqtt.client.CallbackAPIVersion.VERSION2`
callbacks, speaking MQTT 5 (shared subscriptions ``$share/group/filter`` need no
more than the broker's support, which Mosquitto and EMQX have).
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.config import BrokerSettings, SyncConfigError
from cloud_sync.errors import SyncError

__all__ = [
    "SOFTWARE_VERSION",
    "Backoff",
    "new_client",
    "public_key_spec",
]


def _version() -> str:
    try:
        return metadata.version("freshbox")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


#: The version reported in telemetry.
SOFTWARE_VERSION: Final = _version()


def new_client(
    settings: BrokerSettings, client_id: str, *, reconnect_on_failure: bool = False
) -> mqtt.Client:
    """A paho client (VERSION2 callbacks, MQTT 5 or 3.1.1) with TLS and credentials configured.

    Not connected: the caller sets callbacks and a will, then connects with
    ``**connect_args(settings)``.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if settings.mqtt5 else mqtt.MQTTv311,
        clean_session=None if settings.mqtt5 else True,
        reconnect_on_failure=reconnect_on_failure,
    )
    if settings.tls:
        try:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise SyncConfigError(f"TLS setup failed: {exc}") from exc
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    client.on_socket_open = _no_delay
    return client


def connect_args(settings: BrokerSettings) -> dict[str, Any]:
    """Keyword arguments of ``connect``/``connect_async``: a clean start on either version."""
    args: dict[str, Any] = {"keepalive": settings.keepalive_s}
    if settings.mqtt5:
        args["clean_start"] = True
    return args


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY: a PUBACK followed by a result must not wait for a delayed ACK (40 ms)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(slots=True)
class Backoff:
    """Exponential reconnect delays with jitter ("equal jitter").

    Failure ``n`` (0-based) waits a uniformly random time in ``[cap/2, cap]`` with
    ``cap = min(max_s, min_s * factor**n)``: growing, bounded, and spread so that a
    fleet that lost its broker at the same instant does not return in lockstep.
    ``rng`` is injectable for tests.
    """

    min_s: float = 0.5
    max_s: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def cap(self, failures: int) -> float:
        """The upper bound of the delay after ``failures`` failures."""
        return min(self.max_s, self.min_s * self.factor ** min(failures, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        cap = self.cap(self.failures)
        self.failures += 1
        return self.rng.uniform(cap / 2.0, cap)

    def reset(self) -> None:
        """A connection succeeded: start again from ``min_s``."""
        self.failures = 0


def public_key_spec(spec: str, what: str = "public key") -> Ed25519PublicKey:
    """A public key from base64url text or from a key file (text or PEM)."""
    from cloud_sync.keys import load_public_key, public_key_from_text

    text = spec.strip()
    path = Path(text)
    try:
        if len(text) != 43 or path.exists():
            return load_public_key(path)
        return public_key_from_text(text)
    except SyncError as exc:
        raise SyncConfigError(f"{what}: {exc}") from None

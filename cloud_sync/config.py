"""Configuration of the wire: broker connections, the cabinet's ``[sync]`` table, TOML readers.

Every error is a :class:`SyncConfigError` whose message names the file and the
key, e.g. ``cabinet.toml: sync.port: must be an integer from 1 to 65535``.

The cabinet's ``[sync]`` table (the daemon starts the uplink when it is present
and not empty; every key is checked, an unknown key is an error):

=========================  ==============================================================
key                        meaning (default)
=========================  ==============================================================
``host``                   broker host name or address (required)
``port``                   broker port (8883 with ``tls``, else 1883)
``tls``                    connect over TLS (false)
``ca_file``                PEM CA bundle that signed the broker's certificate (TLS; default:
                           the system's trust store)
``cert_file``/``key_file`` client certificate and its key (TLS client-certificate login)
``username``               MQTT user name (the cabinet id)
``password``               MQTT password, or ``password_file``: a file holding it
``signing_key``            the cabinet's Ed25519 private key file (required): seals the outbox
``backend_public_key``     the backend's public key, base64url text or a key file (required)
``window``                 records published and not yet acked, at most (1024)
``keepalive_s``            MQTT keepalive (30)
``telemetry_interval_s``   telemetry period (60)
``retransmit_s``           republish the unacked records when no ack came for this long (10)
``reconnect_min_s``        first reconnect delay (0.5); doubles per failure, with jitter
``reconnect_max_s``        longest reconnect delay (60)
``nonce_db``               SQLite file of accepted command nonces (next to the cabinet db,
                           ``<db>-nonces.db``)
``max_command_ttl_s``      refuse commands expiring further ahead than this (86400)
=========================  ==============================================================

Relative paths are relative to the working directory, like ``[cabinet] db``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cloud_sync.errors import SyncError
from cloud_sync.tomltable import TableReader as _BaseTableReader
from cloud_sync.topics import validate_cabinet_id

__all__ = [
    "SYNC_KEYS",
    "BrokerSettings",
    "SyncConfigError",
    "SyncSettings",
    "TableReader",
    "load_toml",
    "parse_broker",
    "parse_sync",
]

#: Every key ``[sync]`` may hold.
SYNC_KEYS: Final = (
    "host",
    "port",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password",
    "password_file",
    "signing_key",
    "backend_public_key",
    "window",
    "keepalive_s",
    "telemetry_interval_s",
    "retransmit_s",
    "reconnect_min_s",
    "reconnect_max_s",
    "nonce_db",
    "max_command_ttl_s",
)


class SyncConfigError(SyncError):
    """A ``[sync]`` table or an ingest/backend configuration is wrong; names file and key."""

    reason = "config"


class TableReader(_BaseTableReader):
    """Typed access to one TOML table of the sync configuration."""

    error = SyncConfigError


def load_toml(path: Path | str) -> tuple[str, dict[str, Any]]:
    """``(source, document)`` of a TOML file; errors name the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SyncConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SyncConfigError(f"{p.name}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SyncConfigError(f"{path}: cannot read: {exc}") from None
    return p.name, data


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """How to reach and log in to the MQTT broker."""

    host: str
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    #: "5" (the default: shared subscriptions) or "3.1.1" (brokers without MQTT 5, such as
    #: the embedded demo broker; every ingest process then receives every record)
    mqtt_version: str = "5"

    @property
    def mqtt5(self) -> bool:
        return self.mqtt_version == "5"


MQTT_VERSIONS: Final = ("5", "3.1.1")


def _read_secret(r: TableReader, name: str) -> str:
    path = Path(r.str_(name))
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise r.fail(name, f"cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise r.fail(name, f"{path} is empty")
    return text


def parse_broker(r: TableReader, *, default_username: str | None = None) -> BrokerSettings:
    """The broker keys of a table (``host``, ``port``, ``tls``, ``ca_file``, ``cert_file``,
    ``key_file``, ``username``, ``password`` or ``password_file``, ``keepalive_s``,
    ``mqtt_version``)."""
    host = r.str_("host")
    tls = r.bool_("tls", False)
    port = r.int_("port", 8883 if tls else 1883, minimum=1, maximum=65535)
    ca_file = r.path_("ca_file")
    cert_file = r.path_("cert_file")
    key_file = r.path_("key_file")
    for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if value is None:
            continue
        if not tls:
            raise r.fail(name, "is only used with tls = true")
        if not value.is_file():
            raise r.fail(name, f"{value}: no such file")
    if (cert_file is None) != (key_file is None):
        missing = "cert_file" if cert_file is None else "key_file"
        raise r.fail(missing, "give both cert_file and key_file")
    username = r.opt_str("username") or default_username
    if r.has("password") and r.has("password_file"):
        raise r.fail("password_file", "give password or password_file, not both")
    password: str | None = None
    if r.has("password"):
        password = r.str_("password")
    elif r.has("password_file"):
        password = _read_secret(r, "password_file")
    else:
        r.used.update(("password", "password_file"))
    keepalive = r.int_("keepalive_s", 30, minimum=5, maximum=65535)
    version = r.str_("mqtt_version", "5")
    if version not in MQTT_VERSIONS:
        raise r.fail("mqtt_version", f"must be one of {', '.join(MQTT_VERSIONS)}, not {version!r}")
    return BrokerSettings(
        host=host,
        port=port,
        tls=tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
        keepalive_s=keepalive,
        mqtt_version=version,
    )


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """The cabinet's validated ``[sync]`` table."""

    broker: BrokerSettings
    signing_key: Path
    backend_public_key: str
    window: int = 1024
    telemetry_interval_s: float = 60.0
    retransmit_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    nonce_db: Path | None = None
    max_command_ttl_s: float = 86400.0


def parse_sync(table: object, *, source: str, cabinet_id: str) -> SyncSettings:
    """Validate a cabinet's ``[sync]`` table (see the module docstring)."""
    validate_cabinet_id(cabinet_id)
    r = TableReader(source, table, "sync")
    broker = parse_broker(r, default_username=cabinet_id)
    signing_key = Path(r.str_("signing_key"))
    if not signing_key.is_file():
        raise r.fail(
            "signing_key", f"{signing_key}: no such key file (freshbox keys init --out FILE)"
        )
    backend_public_key = r.str_("backend_public_key")
    window = r.int_("window", 1024, minimum=1, maximum=65535)
    telemetry = r.num("telemetry_interval_s", 60.0)
    retransmit = r.num("retransmit_s", 10.0)
    rmin = r.num("reconnect_min_s", 0.5)
    rmax = r.num("reconnect_max_s", 60.0)
    if rmax < rmin:
        raise r.fail("reconnect_max_s", f"must be >= reconnect_min_s ({rmin})")
    nonce_db = r.path_("nonce_db")
    ttl = r.num("max_command_ttl_s", 86400.0)
    r.done()
    return SyncSettings(
        broker=broker,
        signing_key=signing_key,
        backend_public_key=backend_public_key,
        window=window,
        telemetry_interval_s=telemetry,
        retransmit_s=retransmit,
        reconnect_min_s=rmin,
        reconnect_max_s=rmax,
        nonce_db=nonce_db,
        max_command_ttl_s=ttl,
    )

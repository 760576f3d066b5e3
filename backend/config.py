"""The backend's configuration: a TOML file, then environment overrides.

Every key has a default (``backend/defaults/backend.toml`` documents them), so the
backend runs with no file at all. ``FRESHBOX__SECTION__KEY=value`` overrides one key
(``FRESHBOX__BACKEND__DB=postgresql://db.example/freshbox``,
``FRESHBOX__HTTP__PORT=9000``); the value is read as a TOML value when it parses as
one (numbers, booleans, quoted strings), else as a plain string. Unknown keys, in the
file or the environment, are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from backend.errors import ConfigError
from cloud_sync.config import BrokerSettings, parse_broker
from cloud_sync.config import TableReader as SyncReader
from cloud_sync.errors import SyncError
from cloud_sync.sqldb import database_url
from cloud_sync.tomltable import TableReader as _BaseReader

__all__ = ["BackendSettings", "load_settings"]

ENV_PREFIX: Final = "FRESHBOX__"
DEFAULTS: Final = Path(__file__).with_name("defaults") / "backend.toml"


class _Reader(_BaseReader):
    error = ConfigError


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Everything the backend process needs to start."""

    source: str
    db: str  # a SQLite path or a database URL
    signing_key: Path  # the backend's Ed25519 key: signs commands and acks
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"  # what QR codes point at
    cookie_secure: bool = False  # set true behind HTTPS
    session_hours: float = 72.0
    broker: BrokerSettings | None = None  # None: no MQTT (API tests)
    ingest_group: str = "backend"
    batch_max: int = 500
    resend_after_s: float = 2.0
    resend_interval_s: float = 5.0
    command_ttl_s: float = 10.0
    min_balance_fen: int = 0  # an unlock needs at least this; a negative balance blocks
    unlock_wait_s: float = 3.0  # how long Open waits for the cabinet to answer
    velocity_days: int = 7  # restock: recent sales velocity over this many days
    horizon_days: float = 2.0  # restock: expected sales of the next days
    restock_publish_s: float = 60.0


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{name}: expected FRESHBOX__SECTION__KEY")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def load_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> BackendSettings:
    """Read ``path`` (or the defaults) and apply the environment; errors name the key."""
    env = os.environ if environ is None else environ
    file = Path(path) if path is not None else DEFAULTS
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    for section, values in _env_overrides(env).items():
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: {section}: must be a table")
        table.update(values)
    source = str(file)
    top = _Reader(source, data, "")
    be = top.sub("backend")
    db = be.str_("db", "var/backend.db")
    try:
        database_url(db)
    except SyncError as exc:
        raise be.fail("db", str(exc)) from None
    signing_key = Path(be.str_("signing_key", "var/keys/backend.key"))
    min_balance = be.int_("min_balance_fen", 0, minimum=0, maximum=10_000_000)
    unlock_wait = be.num("unlock_wait_s", 3.0)
    ttl = be.num("command_ttl_s", 10.0)
    be.done()
    http = top.sub("http")
    host = http.str_("host", "127.0.0.1")
    port = http.int_("port", 8080, minimum=0, maximum=65535)
    public_url = http.str_("public_url", f"http://{host}:{port}").rstrip("/")
    if not public_url.startswith(("http://", "https://")):
        raise http.fail("public_url", "must start with http:// or https://")
    cookie_secure = http.bool_("cookie_secure", public_url.startswith("https://"))
    session_hours = http.num("session_hours", 72.0)
    http.done()
    broker: BrokerSettings | None = None
    if top.has("broker"):
        br = SyncReader(source, data["broker"], "broker")
        top.used.add("broker")
        try:
            if br.bool_("enabled", True):
                broker = parse_broker(br, default_username="backend")
            br.done()
        except SyncError as exc:
            raise ConfigError(str(exc)) from None
    ing = top.sub("ingest")
    group = ing.str_("group", "backend")
    batch_max = ing.int_("batch_max", 500, minimum=1, maximum=100_000)
    resend_after = ing.num("resend_after_s", 2.0)
    resend_interval = ing.num("resend_interval_s", 5.0)
    ing.done()
    rs = top.sub("restock")
    velocity_days = rs.int_("velocity_days", 7, minimum=1, maximum=365)
    horizon_days = rs.num("horizon_days", 2.0)
    publish_s = rs.num("publish_interval_s", 60.0)
    rs.done()
    top.done()
    return BackendSettings(
        source=source,
        db=db,
        signing_key=signing_key,
        host=host,
        port=port,
        public_url=public_url,
        cookie_secure=cookie_secure,
        session_hours=session_hours,
        broker=broker,
        ingest_group=group,
        batch_max=batch_max,
        resend_after_s=resend_after,
        resend_interval_s=resend_interval,
        command_ttl_s=ttl,
        min_balance_fen=min_balance,
        unlock_wait_s=unlock_wait,
        velocity_days=velocity_days,
        horizon_days=horizon_days,
        restock_publish_s=publish_s,
    )

"""``freshbox broker config``: a Mosquitto configuration for a freshbox community.

:func:`write_broker_config` writes into one directory:

``mosquitto.conf``
    one listener (``listener PORT BIND``), ``allow_anonymous false``, the password
    file, the ACL file, ``persistence true`` with ``persistence_location`` under the
    directory, ``set_tcp_nodelay`` and queue limits sized for outbox drains. With a
    server certificate: TLS on the listener (``certfile``, ``keyfile``) and, with a
    client CA, ``require_certificate true`` and ``use_identity_as_username true``
    (a cabinet then logs in with a certificate whose CN is its cabinet id).
``passwords``
    one line per user, ``user:$7$101$salt$hash`` (PBKDF2-SHA512, what
    ``mosquitto_passwd`` writes; made by ``mosquitto_passwd -b`` when it is
    installed, else computed here in the same format).
``acl``
    per-user ``topic`` lines: a cabinet may publish only its own ``sales``,
    ``events``, ``telemetry``, ``inventory``, ``status`` and ``cmd/result`` and read
    only its own ``cmd`` and ``ack``; ``ingest`` reads every cabinet's records and
    status and writes acks and (resend) commands; ``backend`` (which runs an ingest inside
    it) reads the same plus telemetry, inventory and results, and writes commands, acks,
    and supplier restock.
``credentials.toml`` (mode 0600) and ``secrets/USER.password`` (mode 0600)
    the generated plain passwords. Users already listed in an existing
    ``credentials.toml`` keep their password, so adding a cabinet rotates nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cloud_sync import topics
from cloud_sync.errors import SyncError

__all__ = [
    "BACKEND_USER",
    "INGEST_USER",
    "BrokerFiles",
    "acl_text",
    "mosquitto_password_hash",
    "write_broker_config",
]

INGEST_USER: Final = "ingest"
BACKEND_USER: Final = "backend"
#: PBKDF2 iterations and salt length ``mosquitto_passwd`` (2.0) uses for ``$7$`` hashes.
PBKDF2_ITERATIONS: Final = 101
SALT_BYTES: Final = 12

_CABINET_UP: Final = ("sales", "events", "telemetry", "inventory", "status", "cmd/result")
_CABINET_DOWN: Final = ("cmd", "ack")


class BrokerConfigError(SyncError):
    """The broker configuration cannot be written (bad cabinet id, unwritable directory...)."""

    reason = "broker_config"


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """What :func:`write_broker_config` wrote."""

    directory: Path
    conf: Path
    passwords: Path
    acl: Path
    credentials: Path
    data: Path
    port: int
    users: dict[str, str]
    hashed_with: str

    def password_file(self, user: str) -> Path:
        """``secrets/USER.password``: the plain password of ``user`` (mode 0600)."""
        return self.directory / "secrets" / f"{user}.password"


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    """The ``$7$`` (PBKDF2-SHA512) form Mosquitto 2 reads from a password file."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return (
        f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def acl_text(cabinets: Iterable[str]) -> str:
    """The ACL file for these cabinets (see the module docstring)."""
    root = topics.ROOT
    lines = [
        "# freshbox ACL, written by `freshbox broker config`; anonymous clients get nothing.",
        "",
        f"user {INGEST_USER}",
        *(f"topic read {root}/cab/+/{name}" for name in ("sales", "events", "status")),
        f"topic read {root}/cab/+/cmd/result",
        f"topic write {root}/cab/+/ack",
        f"topic write {root}/cab/+/cmd",
        "",
        # the backend runs an ingest inside it, so it also reads records and writes acks
        f"user {BACKEND_USER}",
        f"topic write {root}/cab/+/cmd",
        f"topic write {root}/cab/+/ack",
        *(
            f"topic read {root}/cab/+/{name}"
            for name in ("sales", "events", "cmd/result", "status", "telemetry", "inventory")
        ),
        f"topic write {root}/supplier/+/restock",
    ]
    for cab in cabinets:
        lines += ["", f"user {cab}"]
        lines += [f"topic write {root}/cab/{cab}/{name}" for name in _CABINET_UP]
        lines += [f"topic read {root}/cab/{cab}/{name}" for name in _CABINET_DOWN]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _existing_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BrokerConfigError(f"{path}: cannot read existing credentials: {exc}") from None
    users = data.get("users", {})
    if not isinstance(users, dict):
        raise BrokerConfigError(f"{path}: [users] must be a table")
    return {str(k): str(v) for k, v in users.items() if isinstance(v, str) and v}


def _toml_key(name: str) -> str:
    return f'"{name}"'


def write_broker_config(
    out: Path | str,
    cabinets: Sequence[str],
    *,
    port: int = 1883,
    bind: str = "127.0.0.1",
    run_as: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    use_passwd_tool: bool = True,
) -> BrokerFiles:
    """Write the broker's configuration for ``cabinets`` into ``out`` (see the module docstring).

    ``run_as`` writes a ``user`` line (the account mosquitto switches to when started
    as root; it must be able to read these files and write ``data/``).
    """
    cabs: list[str] = []
    for cab in cabinets:
        try:
            topics.validate_cabinet_id(cab)
        except SyncError as exc:
            raise BrokerConfigError(f"--cabinets: {exc}") from None
        if cab in (INGEST_USER, BACKEND_USER):
            raise BrokerConfigError(f"--cabinets: {cab!r} is reserved for the backend's own user")
        if cab in cabs:
            raise BrokerConfigError(f"--cabinets: {cab} is listed twice")
        cabs.append(cab)
    if not cabs:
        raise BrokerConfigError("--cabinets: give at least one cabinet id")
    if not 1 <= port <= 65535:
        raise BrokerConfigError(f"--port: {port} is not a TCP port")
    if (tls_cert is None) != (tls_key is None):
        raise BrokerConfigError("--tls-cert and --tls-key go together")
    if client_ca is not None and tls_cert is None:
        raise BrokerConfigError("--client-ca needs --tls-cert and --tls-key")

    directory = Path(out).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "secrets").mkdir(mode=0o700, exist_ok=True)
        data = directory / "data"
        data.mkdir(exist_ok=True)
    except OSError as exc:
        raise BrokerConfigError(f"{out}: cannot create: {exc.strerror or exc}") from None

    credentials = directory / "credentials.toml"
    known = _existing_credentials(credentials)
    users: dict[str, str] = {}
    for user in (INGEST_USER, BACKEND_USER, *cabs):
        users[user] = known.get(user) or secrets.token_urlsafe(24)

    passwords = directory / "passwords"
    tool = shutil.which("mosquitto_passwd") if use_passwd_tool else None
    hashed_with = "python"
    try:
        if tool is not None:
            _write_private(passwords, "")
            for user, password in users.items():
                subprocess.run(
                    [tool, "-b", str(passwords), user, password],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            hashed_with = "mosquitto_passwd"
        else:
            _write_private(
                passwords,
                "".join(f"{u}:{mosquitto_password_hash(p)}\n" for u, p in users.items()),
            )
        os.chmod(passwords, 0o600)
        acl = directory / "acl"
        acl.write_text(acl_text(cabs), encoding="utf-8")
        _write_private(
            credentials,
            "# freshbox broker credentials (plain text): keep this file secret.\n"
            "# Written by `freshbox broker config`; users listed here keep their password.\n"
            "[users]\n" + "".join(f'{_toml_key(u)} = "{p}"\n' for u, p in users.items()),
        )
        for user, password in users.items():
            _write_private(directory / "secrets" / f"{user}.password", password + "\n")
        conf = directory / "mosquitto.conf"
        lines = [
            "# freshbox broker (Mosquitto 2), written by `freshbox broker config`.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwords}",
            f"acl_file {acl}",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 60",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if run_as:
            lines.append(f"user {run_as}")
        lines.append(f"listener {port} {bind}")
        if tls_cert is not None and tls_key is not None:
            lines += [f"certfile {tls_cert.resolve()}", f"keyfile {tls_key.resolve()}"]
            if client_ca is not None:
                lines += [
                    f"cafile {client_ca.resolve()}",
                    "require_certificate true",
                    "use_identity_as_username true",
                ]
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except (OSError, subprocess.SubprocessError) as exc:
        raise BrokerConfigError(f"{directory}: cannot write the configuration: {exc}") from None
    return BrokerFiles(
        directory=directory,
        conf=conf,
        passwords=passwords,
        acl=acl,
        credentials=credentials,
        data=data,
        port=port,
        users=users,
        hashed_with=hashed_with,
    )

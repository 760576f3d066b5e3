"""Test helpers for the sync tests: a real Mosquitto on a free port, and a community around it.

``mosquitto_or_skip()`` skips when the binary is absent, unless the environment
sets ``FRESHBOX_REQUIRE_SERVICES`` (CI), where a missing broker fails the test.
:class:`Broker` runs ``mosquitto -c`` on the configuration ``freshbox broker
config`` writes (password file, ACL, persistence in its directory) and can be
killed and restarted on the same port and data. :class:`Community` adds the
backend key, the cabinets' keys and an ingest configuration.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.broker import BrokerFiles, write_broker_config
from cloud_sync.config import BrokerSettings
from cloud_sync.keys import (
    generate_private_key,
    load_private_key,
    public_key_text,
    save_private_key,
)
from cloud_sync.lab import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


def mosquitto_or_skip() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        if os.environ.get("FRESHBOX_REQUIRE_SERVICES"):
            pytest.fail("mosquitto is not installed and FRESHBOX_REQUIRE_SERVICES is set")
        pytest.skip("mosquitto is not installed")
    return path


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class Broker:
    """A mosquitto process on ``files.conf``; :meth:`kill` and :meth:`start` keep port and data."""

    def __init__(self, binary: str, files: BrokerFiles) -> None:
        self.binary = binary
        self.files = files
        self.port = files.port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = files.directory / "mosquitto.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.files.conf)], stdout=log, stderr=log
            )
        wait_port(self.port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def settings(self, user: str) -> BrokerSettings:
        return BrokerSettings(
            "127.0.0.1", self.port, username=user, password=self.files.users[user], keepalive_s=10
        )


@dataclass
class Community:
    """Broker, backend key, cabinet keys and an ingest configuration under one directory."""

    root: Path
    broker: Broker
    cabinets: list[str]
    backend_key_path: Path
    ingest_db: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def backend_public(self) -> str:
        return public_key_text(load_private_key(self.backend_key_path))

    @property
    def cab_dir(self) -> Path:
        return self.root / "cabinets"

    def cabinet_key(self, cab: str) -> Path:
        path = self.cab_dir / f"{cab}.key"
        if not path.exists():
            self.cab_dir.mkdir(parents=True, exist_ok=True)
            save_private_key(generate_private_key(), path)
        return path

    def ingest_config(self, name: str = "ingest.toml", **ingest: Any) -> Path:
        lines = [
            "[broker]",
            'host = "127.0.0.1"',
            f"port = {self.broker.port}",
            'username = "ingest"',
            f'password_file = "{self.broker.files.password_file("ingest")}"',
            "keepalive_s = 10",
            "[backend]",
            f'signing_key = "{self.backend_key_path}"',
            "[ingest]",
            f'db = "{self.ingest_db}"',
            "resend_after_s = 0.5",
            "resend_interval_s = 1.0",
            *(
                f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                for k, v in ingest.items()
            ),
        ]
        for cab in self.cabinets:
            key = public_key_text(load_private_key(self.cabinet_key(cab)))
            lines += ["[[cabinets]]", f'id = "{cab}"', f'public_key = "{key}"']
        path = self.root / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def backend_config(self) -> Path:
        lines = [
            "[broker]",
            'host = "127.0.0.1"',
            f"port = {self.broker.port}",
            'username = "backend"',
            f'password_file = "{self.broker.files.password_file("backend")}"',
            "[backend]",
            f'signing_key = "{self.backend_key_path}"',
        ]
        path = self.root / "backend.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def spawn(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=child_env(),
            stdout=kw.pop("stdout", subprocess.PIPE),
            stderr=kw.pop("stderr", subprocess.DEVNULL),
            cwd=str(ROOT),
            **kw,
        )
        self.procs.append(proc)
        return proc

    def spawn_ingest(self, config: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
        err = log.open("ab") if log is not None else subprocess.DEVNULL
        return self.spawn(
            ["-m", "freshbox_cli", "ingest", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def spawn_cabinets(
        self, cabinets: Sequence[str], *extra: str, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        for cab in cabinets:
            self.cabinet_key(cab)
        err = log.open("ab") if log is not None else subprocess.DEVNULL
        return self.spawn(
            [
                "-m",
                "cloud_sync.simcab",
                "--dir",
                str(self.cab_dir),
                "--cabinets",
                ",".join(cabinets),
                "--port",
                str(self.broker.port),
                "--secrets",
                str(self.broker.files.directory / "secrets"),
                f"--backend-public-key={self.backend_public}",
                *extra,
            ],
            stderr=err,
        )

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        self.broker.kill()


def make_community(root: Path, cabinets: Sequence[str]) -> Iterator[Community]:
    binary = mosquitto_or_skip()
    files = write_broker_config(
        root / "broker", list(cabinets), port=free_port(), run_as=getpass.getuser()
    )
    broker = Broker(binary, files)
    backend_key = root / "backend.key"
    save_private_key(generate_private_key(), backend_key)
    c = Community(root, broker, list(cabinets), backend_key, root / "ingest.db")
    for cab in cabinets:
        c.cabinet_key(cab)
    broker.start()
    try:
        yield c
    finally:
        c.close()


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

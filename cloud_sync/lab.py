"""A whole community on one machine, for ``scripts/chaos_sync.py`` and ``scripts/bench_sync.py``.

:class:`Lab` writes the broker configuration (``freshbox broker config``) into a
directory, runs its own ``mosquitto`` on a free loopback port, creates the
backend key and the cabinets' keys, writes an ingest configuration enrolling
them, and starts and kills processes: ingests (``freshbox ingest``) and fleets of
simulated cabinets (``python -m cloud_sync.simcab``). Nothing here touches a
broker it did not start.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cloud_sync.broker import BrokerFiles, write_broker_config
from cloud_sync.config import BrokerSettings
from cloud_sync.keys import generate_private_key, load_private_key, public_key_text
from cloud_sync.keys import save_private_key as _save

__all__ = ["Lab", "free_port", "wait_port"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


class Lab:
    """Broker, keys and processes of one simulated community under ``root``."""

    def __init__(self, root: Path, cabinets: Sequence[str]) -> None:
        self.root = root
        self.cabinets = list(cabinets)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.files: BrokerFiles = write_broker_config(
            root / "broker", self.cabinets, port=free_port(), run_as=getpass.getuser()
        )
        self.port = self.files.port
        self.backend_key = root / "backend.key"
        if not self.backend_key.exists():
            _save(generate_private_key(), self.backend_key)
        self.cab_dir = root / "cabinets"
        self.cab_dir.mkdir(parents=True, exist_ok=True)
        for cab in self.cabinets:
            path = self.cab_dir / f"{cab}.key"
            if not path.exists():
                _save(generate_private_key(), path)
        self.ingest_db = root / "ingest.db"
        self.broker: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def backend_public(self) -> str:
        return public_key_text(load_private_key(self.backend_key))

    def settings(self, user: str) -> BrokerSettings:
        return BrokerSettings(
            "127.0.0.1", self.port, username=user, password=self.files.users[user]
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env

    # ------------------------------------------------------------ broker

    def start_broker(self) -> None:
        log = (self.root / "mosquitto.log").open("ab")
        self.broker = subprocess.Popen(
            [self.binary, "-c", str(self.files.conf)], stdout=log, stderr=log
        )
        wait_port(self.port)

    def kill_broker(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.send_signal(signal.SIGKILL)
            self.broker.wait(10)
        self.broker = None

    # ------------------------------------------------------------ processes

    def ingest_config(self, name: str = "ingest.toml", batch_max: int = 500) -> Path:
        lines = [
            "[broker]",
            'host = "127.0.0.1"',
            f"port = {self.port}",
            'username = "ingest"',
            f'password_file = "{self.files.password_file("ingest")}"',
            "keepalive_s = 10",
            "[backend]",
            f'signing_key = "{self.backend_key}"',
            "[ingest]",
            f'db = "{self.ingest_db}"',
            f"batch_max = {batch_max}",
            "resend_after_s = 1.0",
            "resend_interval_s = 2.0",
        ]
        for cab in self.cabinets:
            key = public_key_text(load_private_key(self.cab_dir / f"{cab}.key"))
            lines += ["[[cabinets]]", f'id = "{cab}"', f'public_key = "{key}"']
        path = self.root / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def spawn(self, args: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        err = (self.root / log).open("ab")
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=self.env(),
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=err,
        )
        self.procs.append(proc)
        return proc

    def spawn_ingest(self, config: Path, log: str = "ingest.log") -> subprocess.Popen[bytes]:
        return self.spawn(["-m", "freshbox_cli", "ingest", "--config", str(config)], log)

    def spawn_cabinets(
        self, cabinets: Sequence[str], *extra: str, log: str = "simcab.log"
    ) -> subprocess.Popen[bytes]:
        return self.spawn(
            [
                "-m",
                "cloud_sync.simcab",
                "--dir",
                str(self.cab_dir),
                "--cabinets",
                ",".join(cabinets),
                "--port",
                str(self.port),
                "--secrets",
                str(self.files.directory / "secrets"),
                f"--backend-public-key={self.backend_public}",
                *extra,
            ],
            log,
        )

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        self.procs.clear()
        self.kill_broker()

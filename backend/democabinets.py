"""Simulated cabinets for the single-machine demo: real cabinet daemons on the ``sim`` backend.

:class:`DemoFleet` gives each demo cabinet (``cab-demo-01``, ``cab-demo-02``, ...)
an Ed25519 key pair (kept and reused between runs), a cabinet TOML file and a
store under one directory, and runs ``freshbox edge run --config FILE`` for each
as a child process. The cabinets' simulated hardware has no shoppers of its own
(``residents = false``) but answers every unlock the backend sends
(``answer_unlocks = true``): a simulated resident opens the door 0.5-1.5 s later,
takes 1-3 items and closes it, and the cabinet bills the sale and syncs it. An
operator restocks lanes that run low.

Layout under ``directory``::

    cab-demo-01.key        the cabinet's private key (0600); reused when present
    cab-demo-01.toml       its configuration (rewritten by prepare(): broker settings change)
    cab-demo-01.db         its store (and cab-demo-01-nonces.db)
    cab-demo-01.log        what its daemon wrote on standard error and output
    backend.pub            the backend's public key, which every cabinet trusts

The backend's key pair belongs to the caller: :func:`ensure_backend_key` makes or
reuses one. The backend enrols the cabinets with :meth:`DemoFleet.enrolment`.

This module does not import ``edge``: it writes the TOML the daemon reads and
reads back what it wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

from cloud_sync.config import BrokerSettings
from cloud_sync.keys import (
    generate_private_key,
    load_private_key,
    public_key_text,
    save_private_key,
)
from cloud_sync.topics import validate_cabinet_id

__all__ = [
    "DEFAULT_COUNT",
    "DemoCabinet",
    "DemoFleet",
    "DemoFleetError",
    "PlanogramLane",
    "demo_cabinet_ids",
    "ensure_backend_key",
]

ROOT: Final = Path(__file__).resolve().parent.parent
#: cabinets in a default fleet
DEFAULT_COUNT: Final = 3
#: the backend's key files under a directory
BACKEND_KEY_NAME: Final = "backend.key"
BACKEND_PUBLIC_NAME: Final = "backend.pub"

LaneMode = Literal["unit", "tracked", "weighed"]


class DemoFleetError(RuntimeError):
    """A demo cabinet could not be set up, started or looked up; the message names it."""


def demo_cabinet_ids(count: int = DEFAULT_COUNT) -> list[str]:
    """``cab-demo-01`` ... ``cab-demo-NN``."""
    if count < 1:
        raise ValueError(f"count: must be at least 1, not {count}")
    return [f"cab-demo-{i:02d}" for i in range(1, count + 1)]


def ensure_backend_key(directory: Path | str) -> tuple[Path, str]:
    """The backend's signing key under ``directory`` (``backend.key``, made when missing,
    mode 0600): ``(private key path, public key text)``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / BACKEND_KEY_NAME
    if not path.exists():
        save_private_key(generate_private_key(), path)
    return path, public_key_text(load_private_key(path))


# --------------------------------------------------------------------------- planograms


@dataclass(frozen=True, slots=True)
class PlanogramLane:
    """One lane of a cabinet as residents see it.

    ``price`` is integer fen: per item on ``unit`` and ``tracked`` lanes, per kg on
    ``weighed`` lanes.
    """

    lane: int
    sku: str
    name: str
    mode: LaneMode
    price: int

    @property
    def per_kg(self) -> bool:
        return self.mode == "weighed"


@dataclass(frozen=True, slots=True)
class _Product:
    sku: str
    name: str
    mode: LaneMode
    price: int  # fen per item, or per kg on weighed lanes
    unit_weight_g: float | None = None
    unit_weight_sd_g: float | None = None
    item_g: tuple[float, float] = (0.0, 0.0)  # weighed and tracked items: weight range


# The edge defaults' planogram (tomatoes, bok choy, eggs, chili) and a few neighbours:
# each demo cabinet picks one product per lane, so the cabinets differ a little.
_LANE_CHOICES: Final[tuple[tuple[_Product, ...], ...]] = (
    (
        _Product("tomato-500", "Tomatoes 500 g", "unit", 690, 500.0, 6.0),
        _Product("potato-1000", "Potatoes 1 kg", "unit", 590, 1000.0, 12.0),
        _Product("tomato-500", "Tomatoes 500 g", "unit", 720, 500.0, 6.0),
    ),
    (
        _Product("bokchoy", "Bok choy", "weighed", 800, item_g=(300.0, 450.0)),
        _Product("spinach", "Spinach", "weighed", 1200, item_g=(250.0, 400.0)),
        _Product("celery", "Celery", "weighed", 680, item_g=(350.0, 500.0)),
    ),
    (
        _Product("eggs-10", "Eggs x10", "tracked", 1290, item_g=(590.0, 650.0)),
        _Product("eggs-10", "Eggs x10", "tracked", 1350, item_g=(590.0, 650.0)),
        _Product("eggs-10-free", "Free-range eggs x10", "tracked", 1680, item_g=(600.0, 680.0)),
    ),
    (
        _Product("chili-150", "Chili 150 g", "unit", 380, 150.0, 5.0),
        _Product("cucumber-300", "Cucumbers 300 g", "unit", 450, 300.0, 7.0),
        _Product("garlic-200", "Garlic 200 g", "unit", 520, 200.0, 5.0),
    ),
)
# per channel: the edge defaults' calibration (each cabinet's cells differ a little)
_CALIBRATIONS: Final = ((84210, 213.7), (-12093, 208.1), (40211, 221.4), (-70550, 197.9))


@dataclass(frozen=True, slots=True)
class DemoCabinet:
    """One demo cabinet's identity and files."""

    cabinet_id: str
    seed: int
    config_path: Path
    key_path: Path
    db_path: Path
    log_path: Path
    public_key: str


def _toml_str(value: str | Path) -> str:
    # JSON string escapes (\" \\ \n \uXXXX) are valid in TOML basic strings
    return json.dumps(str(value), ensure_ascii=False)


def _cabinet_toml(
    cab: DemoCabinet,
    index: int,
    broker: BrokerSettings,
    backend_public: Path,
    *,
    sample_rate_hz: int,
    door_alarm_s: float = 120.0,
) -> str:
    rng = random.Random(cab.seed)
    lines = [
        f"# demo cabinet {cab.cabinet_id}, written by backend.democabinets (rewritten on start)",
        "[cabinet]",
        f"id = {_toml_str(cab.cabinet_id)}",
        f"db = {_toml_str(cab.db_path)}",
        f"sample_rate_hz = {sample_rate_hz}",
        "",
        "[hardware]",
        'backend = "sim"',
        "",
        "[hardware.sim]",
        f"seed = {cab.seed}",
        "residents = false        # no shoppers of its own ...",
        "answer_unlocks = true    # ... but a simulated resident answers every remote unlock",
        "",
        "[hardware.sim.physics]",
        "noise_g = 1.5",
        "invalid_rate = 0.01",
        "door_slam_g = 25",
        "",
        "[session]",
        "unlock_window_s = 15.0",
        f"door_alarm_s = {door_alarm_s:.1f}",
        "max_settle_s = 8.0",
        "",
        "[weighing]",
        "window_s = 0.4",
        "noise_g = 1.5",
        "",
        "[sync]",
        f"host = {_toml_str(broker.host)}",
        f"port = {broker.port}",
        f"mqtt_version = {_toml_str(broker.mqtt_version)}",
        f"keepalive_s = {broker.keepalive_s}",
    ]
    if broker.tls:
        lines.append("tls = true")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(broker, name)
            if value is not None:
                lines.append(f"{name} = {_toml_str(Path(value).resolve())}")
    lines.append(f"username = {_toml_str(broker.username or cab.cabinet_id)}")
    if broker.password is not None:
        lines.append(f"password = {_toml_str(broker.password)}")
    lines += [
        f"signing_key = {_toml_str(cab.key_path)}",
        f"backend_public_key = {_toml_str(backend_public)}",
        f"nonce_db = {_toml_str(cab.db_path.with_name(cab.db_path.stem + '-nonces.db'))}",
        "telemetry_interval_s = 15.0",
        "retransmit_s = 5.0",
        "reconnect_min_s = 0.5",
        "reconnect_max_s = 5.0",
        "",
    ]
    stock: list[str] = []
    for channel, (zero, per_g) in enumerate(_CALIBRATIONS):
        lines += [
            "[[channels]]",
            f"channel = {channel}",
            f"zero_counts = {zero + rng.randint(-2000, 2000)}",
            f"counts_per_g = {round(per_g * rng.uniform(0.97, 1.03), 1)}",
            "",
        ]
    for channel, choices in enumerate(_LANE_CHOICES):
        product = choices[(index + channel) % len(choices)] if index else choices[0]
        lane = channel + 1
        price = product.price if index == 0 else round(product.price * rng.uniform(0.9, 1.1))
        lines += [
            "[[lanes]]",
            f"lane = {lane}",
            f"channel = {channel}",
            f"sku = {_toml_str(product.sku)}",
            f"name = {_toml_str(product.name)}",
            f'mode = "{product.mode}"',
        ]
        if product.mode == "weighed":
            lines.append(f"price_fen_per_kg = {price}")
        else:
            lines.append(f"price_fen = {price}")
        if product.mode == "unit":
            lines += [
                f"unit_weight_g = {product.unit_weight_g}",
                f"unit_weight_sd_g = {product.unit_weight_sd_g}",
            ]
        lines.append("")
        stock.append(f"{lane} = [{', '.join(str(w) for w in _stock(product, rng))}]")
    lines += ["[stock]", *stock, ""]
    return "\n".join(lines)


def _stock(product: _Product, rng: random.Random) -> list[float]:
    if product.mode == "unit":
        mean = product.unit_weight_g or 100.0
        sd = product.unit_weight_sd_g or 1.0
        return [round(rng.gauss(mean, sd), 1) for _ in range(rng.randint(5, 7))]
    lo, hi = product.item_g
    return [round(rng.uniform(lo, hi), 1) for _ in range(rng.randint(4, 5))]


def _read_planogram(path: Path, cabinet_id: str) -> list[PlanogramLane]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DemoFleetError(f"{cabinet_id}: cannot read {path}: {exc}") from None
    lanes: list[PlanogramLane] = []
    for i, raw in enumerate(data.get("lanes", [])):
        try:
            mode = raw["mode"]
            price_key = "price_fen_per_kg" if mode == "weighed" else "price_fen"
            lanes.append(
                PlanogramLane(
                    lane=int(raw["lane"]),
                    sku=str(raw["sku"]),
                    name=str(raw.get("name", raw["sku"])),
                    mode=mode,
                    price=int(raw[price_key]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DemoFleetError(f"{path.name}: lanes[{i}]: missing or bad {exc}") from None
    return sorted(lanes, key=lambda ln: ln.lane)


# --------------------------------------------------------------------------- the fleet


def _freshbox_command() -> list[str]:
    """``python -m freshbox_cli`` with this interpreter (the venv's console script runs
    the same entry point, ``freshbox_cli:main``)."""
    return [sys.executable, "-m", "freshbox_cli"]


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class DemoFleet:
    """``count`` demo cabinets under ``directory``, syncing through ``broker``.

    ``backend_key`` is the backend's private key file (:func:`ensure_backend_key`):
    the cabinets are given its public half to check commands and acks. ``ids``
    overrides the cabinet ids (default ``cab-demo-01`` ...); ``seed_base`` makes
    the seeds (cabinet ``i`` gets ``seed_base + i``).
    """

    directory: Path
    broker: BrokerSettings
    backend_key: Path
    count: int = DEFAULT_COUNT
    ids: Sequence[str] | None = None
    seed_base: int = 100
    sample_rate_hz: int = 80
    #: door open longer than this raises door_open_too_long (short in browser tests)
    door_alarm_s: float = 120.0
    #: extra arguments for ``freshbox`` before ``edge run`` (e.g. ``["-v"]``)
    cli_args: Sequence[str] = ()
    _cabinets: dict[str, DemoCabinet] = field(default_factory=dict, init=False, repr=False)
    _running: dict[str, _Running] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        self.backend_key = Path(self.backend_key).resolve()
        ids = list(self.ids) if self.ids is not None else demo_cabinet_ids(self.count)
        if not ids:
            raise ValueError("ids: give at least one cabinet id")
        for cab in ids:
            validate_cabinet_id(cab)
        if len(set(ids)) != len(ids):
            raise ValueError(f"ids: a cabinet id is listed twice: {ids}")
        self.ids = ids
        self.count = len(ids)

    # ------------------------------------------------------------------ set-up

    @property
    def cabinet_ids(self) -> list[str]:
        return list(self.ids or ())

    @property
    def backend_public_path(self) -> Path:
        return self.directory / BACKEND_PUBLIC_NAME

    def prepare(self) -> list[DemoCabinet]:
        """Create the directory, the cabinets' keys (reused when present) and write every
        cabinet's TOML file. Idempotent; :meth:`start` calls it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            backend_public = public_key_text(load_private_key(self.backend_key))
        except Exception as exc:
            raise DemoFleetError(f"backend_key: {exc}") from None
        self.backend_public_path.write_text(backend_public + "\n", encoding="utf-8")
        cabinets: dict[str, DemoCabinet] = {}
        for index, cab_id in enumerate(self.cabinet_ids):
            key_path = self.directory / f"{cab_id}.key"
            try:
                if not key_path.exists():
                    save_private_key(generate_private_key(), key_path)
                public = public_key_text(load_private_key(key_path))
            except Exception as exc:
                raise DemoFleetError(f"{cab_id}: key {key_path}: {exc}") from None
            cab = DemoCabinet(
                cabinet_id=cab_id,
                seed=self.seed_base + index + 1,
                config_path=self.directory / f"{cab_id}.toml",
                key_path=key_path,
                db_path=self.directory / f"{cab_id}.db",
                log_path=self.directory / f"{cab_id}.log",
                public_key=public,
            )
            text = _cabinet_toml(
                cab,
                index,
                self.broker,
                self.backend_public_path,
                sample_rate_hz=self.sample_rate_hz,
                door_alarm_s=self.door_alarm_s,
            )
            tmp = cab.config_path.with_name(cab.config_path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, cab.config_path)
            cabinets[cab_id] = cab
        self._cabinets = cabinets
        return list(cabinets.values())

    def _ready(self) -> dict[str, DemoCabinet]:
        if not self._cabinets:
            self.prepare()
        return self._cabinets

    def cabinet(self, cabinet_id: str) -> DemoCabinet:
        cab = self._ready().get(cabinet_id)
        if cab is None:
            raise DemoFleetError(
                f"cabinet_id: {cabinet_id!r} is not a demo cabinet ({', '.join(self.cabinet_ids)})"
            )
        return cab

    @property
    def cabinets(self) -> list[DemoCabinet]:
        return list(self._ready().values())

    def enrolment(self) -> list[tuple[str, str]]:
        """``(cabinet_id, public key text)`` of every cabinet, for the backend to enrol."""
        return [(c.cabinet_id, c.public_key) for c in self._ready().values()]

    def lanes(self, cabinet_id: str) -> list[PlanogramLane]:
        """The cabinet's planogram as its written configuration has it, by lane number."""
        cab = self.cabinet(cabinet_id)
        return _read_planogram(cab.config_path, cabinet_id)

    def wipe_stores(self) -> None:
        """Delete the cabinets' stores (sales, outbox, chain, nonces), keeping their keys:
        for a backend that starts again from an empty database. Only while stopped."""
        if any(self.alive().values()):
            raise DemoFleetError("wipe_stores: stop the cabinets first")
        for cab in self._ready().values():
            for base in (cab.db_path, cab.db_path.with_name(cab.db_path.stem + "-nonces.db")):
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(base) + suffix).unlink(missing_ok=True)

    # ------------------------------------------------------------------ processes

    def start(self) -> None:
        """Write the configurations and start one daemon per cabinet (those not running)."""
        cabinets = self.prepare()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        try:
            for cab in cabinets:
                running = self._running.get(cab.cabinet_id)
                if running is not None and running.proc.poll() is None:
                    continue
                if running is not None:
                    running.log.close()
                log = cab.log_path.open("ab")
                try:
                    proc = subprocess.Popen(
                        [
                            *_freshbox_command(),
                            *self.cli_args,
                            "edge",
                            "run",
                            "--config",
                            str(cab.config_path),
                        ],
                        cwd=str(self.directory),
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                except OSError as exc:
                    log.close()
                    raise DemoFleetError(f"{cab.cabinet_id}: cannot start: {exc}") from None
                self._running[cab.cabinet_id] = _Running(proc, log)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> dict[str, bool]:
        """Per cabinet id: whether its daemon is running."""
        return {
            cab_id: (r := self._running.get(cab_id)) is not None and r.proc.poll() is None
            for cab_id in self.cabinet_ids
        }

    def pids(self) -> dict[str, int]:
        """The process ids of the running daemons."""
        return {cab_id: r.proc.pid for cab_id, r in self._running.items() if r.proc.poll() is None}

    def returncodes(self) -> dict[str, int | None]:
        """Exit status of each started daemon (None while it runs)."""
        return {cab_id: r.proc.poll() for cab_id, r in self._running.items()}

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every daemon (each stops cleanly with its lock engaged), SIGKILL those
        still running after ``timeout`` seconds; returns their exit statuses."""
        running = list(self._running.items())
        for _, r in running:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for cab_id, r in running:
            try:
                r.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r.proc.wait(5.0)
            codes[cab_id] = r.proc.returncode
            r.log.close()
        self._running.clear()
        return codes

    def __enter__(self) -> DemoFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (ids, files, running state) for logs and pages."""
        alive = self.alive()
        return {
            cab.cabinet_id: {
                "config": str(cab.config_path),
                "log": str(cab.log_path),
                "public_key": cab.public_key,
                "running": alive.get(cab.cabinet_id, False),
            }
            for cab in self._ready().values()
        }

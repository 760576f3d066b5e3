"""The cabinet's TOML configuration, validated at start.

Every error names the file and the key, e.g.
``cabinet.toml: lanes[2].price_fen: must be an integer number of fen``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cloud_sync.tomltable import TableReader
from edge.errors import ConfigError
from edge.model import LANE_MODES, CabinetSpec, Calibration, Lane
from edge.session import SessionConfig
from edge.weighing import WeighingConfig

HARDWARE_BACKENDS = ("sim", "hx711", "modbus")
#: [hardware.*] tables a backend reads and validates itself (errors name the key)
HARDWARE_TABLES = ("hx711", "modbus", "lock", "door")


@dataclass(frozen=True, slots=True)
class SimHardware:
    """The simulated cabinet (``[hardware] backend = "sim"``)."""

    seed: int = 7
    residents: bool = True  # simulated residents shop now and then
    mean_gap_s: float = 20.0  # mean time between two simulated shoppers (s)
    #: a simulated resident answers every unlock the cabinet did not start itself (a remote
    #: unlock from the backend): opens the door, takes 1-3 items and closes it
    answer_unlocks: bool = False
    physics: dict[str, float] = field(default_factory=dict)  # overrides of scenario physics


@dataclass(frozen=True, slots=True)
class CabinetConfig:
    """Everything the daemon reads from its TOML file."""

    source: str
    cabinet_id: str
    db_path: Path
    sample_rate_hz: float
    backend: str
    sim: SimHardware
    calibrations: tuple[Calibration, ...]
    lanes: tuple[Lane, ...]
    stock: dict[int, list[float]]
    sessions: SessionConfig
    weighing: WeighingConfig
    #: [hardware.hx711], [hardware.modbus], [hardware.lock], [hardware.door] as written;
    #: the backend that uses a table validates it
    hardware: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: [sync] as written (broker, TLS, keys); cloud_sync validates it
    sync: dict[str, Any] = field(default_factory=dict)
    #: the TOML file this came from (None for the embedded defaults)
    path: Path | None = None

    def spec(self) -> CabinetSpec:
        return CabinetSpec(
            cabinet_id=self.cabinet_id,
            sample_rate_hz=self.sample_rate_hz,
            calibrations=self.calibrations,
            lanes=self.lanes,
            stock={k: list(v) for k, v in self.stock.items()},
        )


class _Reader(TableReader):
    """Typed access to a table of the cabinet configuration."""

    error = ConfigError


def _dataclass_from(reader: _Reader, cls: Any) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in reader.table:
            default = getattr(cls(), f.name)
            if isinstance(default, int) and not isinstance(default, bool):
                kwargs[f.name] = reader.int_(f.name, minimum=1)
            else:
                kwargs[f.name] = reader.num(f.name, positive=True)
    reader.done()
    return cls(**kwargs)


def load_config(path: str | Path) -> CabinetConfig:
    """Read and validate a cabinet TOML file."""
    p = Path(path)
    source = p.name
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    config = parse_config(data, source=source, base=p.parent)
    return dataclasses.replace(config, path=p)


def parse_config(data: dict[str, Any], *, source: str, base: Path) -> CabinetConfig:
    """Validate an already parsed TOML document (``base`` resolves relative paths)."""
    top = _Reader(source, data, "")
    cab = top.sub("cabinet", required=True)
    cabinet_id = cab.str_("id")
    db = cab.str_("db", "var/cabinet.db")
    rate = cab.num("sample_rate_hz", 80.0, positive=True)
    cab.done()

    hw = top.sub("hardware", required=True)
    backend = hw.str_("backend")
    if backend not in HARDWARE_BACKENDS:
        raise hw.fail(
            "backend", f"unknown backend {backend!r}; one of {', '.join(HARDWARE_BACKENDS)}"
        )
    simr = hw.sub("sim")
    phys = simr.sub("physics")
    physics = {k: phys.num(k, positive=False) for k in list(phys.table)}
    phys.done()
    sim = SimHardware(
        seed=simr.int_("seed", 7),
        residents=simr.bool_("residents", True),
        mean_gap_s=simr.num("mean_gap_s", 20.0, positive=True),
        answer_unlocks=simr.bool_("answer_unlocks", False),
        physics=physics,
    )
    simr.done()
    hardware: dict[str, dict[str, Any]] = {}
    for name in HARDWARE_TABLES:
        if name in hw.table:
            hardware[name] = dict(hw.sub(name).table)
    hw.done()

    calibrations: list[Calibration] = []
    channels = top.get("channels")
    if not isinstance(channels, list) or not channels:
        raise top.fail("channels", "must be a non-empty array of tables ([[channels]])")
    seen: set[int] = set()
    for i, raw in enumerate(channels):
        r = _Reader(source, raw, f"channels[{i}]")
        ch = r.int_("channel", minimum=0)
        if ch in seen:
            raise r.fail("channel", f"channel {ch} is listed twice")
        seen.add(ch)
        calibrations.append(
            Calibration(ch, float(r.get("zero_counts")), r.num("counts_per_g", positive=True))
        )
        if isinstance(r.table["zero_counts"], bool) or not isinstance(
            r.table["zero_counts"], int | float
        ):
            raise r.fail("zero_counts", "must be a number")
        r.done()

    lanes: list[Lane] = []
    raw_lanes = top.get("lanes")
    if not isinstance(raw_lanes, list) or not raw_lanes:
        raise top.fail("lanes", "must be a non-empty array of tables ([[lanes]])")
    lane_numbers: set[int] = set()
    for i, raw in enumerate(raw_lanes):
        r = _Reader(source, raw, f"lanes[{i}]")
        number = r.int_("lane", minimum=1)
        if number in lane_numbers:
            raise r.fail("lane", f"lane {number} is listed twice")
        lane_numbers.add(number)
        mode = r.str_("mode")
        if mode not in LANE_MODES:
            raise r.fail("mode", f"must be one of {', '.join(LANE_MODES)}")
        channel = r.int_("channel", number - 1, minimum=0)
        if channel not in seen:
            raise r.fail("channel", f"channel {channel} has no [[channels]] entry")
        lane = Lane(
            lane=number,
            sku=r.str_("sku"),
            mode=mode,
            channel=channel,
            name=r.str_("name", r.table.get("sku", "?")),
            price_fen=r.int_("price_fen", minimum=0) if mode != "weighed" else None,
            price_fen_per_kg=r.int_("price_fen_per_kg", minimum=0) if mode == "weighed" else None,
            unit_weight_g=r.num("unit_weight_g", positive=True) if mode == "unit" else None,
            unit_weight_sd_g=r.num("unit_weight_sd_g", positive=False) if mode == "unit" else None,
        )
        r.done()
        lanes.append(lane)

    stock_r = top.sub("stock")
    stock: dict[int, list[float]] = {}
    for key, weights in stock_r.table.items():
        stock_r.used.add(key)
        if not key.isdigit() or int(key) not in lane_numbers:
            raise stock_r.fail(key, "must name a lane number of [[lanes]]")
        if not isinstance(weights, list) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) and w > 0 for w in weights
        ):
            raise stock_r.fail(key, "must be a list of item weights in grams (> 0)")
        stock[int(key)] = [float(w) for w in weights]
    stock_r.done()

    sessions = _dataclass_from(top.sub("session"), SessionConfig)
    weighing = _dataclass_from(top.sub("weighing"), WeighingConfig)
    sync = dict(top.sub("sync").table)
    top.done()
    db_path = Path(db)  # relative paths are relative to the working directory
    return CabinetConfig(
        source=source,
        cabinet_id=cabinet_id,
        db_path=db_path,
        sample_rate_hz=rate,
        backend=backend,
        sim=sim,
        calibrations=tuple(calibrations),
        lanes=tuple(lanes),
        stock=stock,
        sessions=sessions,
        weighing=weighing,
        hardware=hardware,
        sync=sync,
    )

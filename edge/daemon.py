"""The cabinet daemon: the controller in real time on the configured hardware.

The cabinet clock is Unix time in seconds (a monotonic clock anchored once to
the wall clock at start), so times stored before a restart still mean the same.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from cloud_sync.config import SyncSettings, parse_sync
from cloud_sync.errors import SyncError
from cloud_sync.keys import Ed25519PrivateKey, Ed25519PublicKey, load_private_key
from cloud_sync.nonces import NonceStore
from cloud_sync.transport import public_key_spec
from cloud_sync.uplink import CallBridge, CommandHandler, CommandRefused, Uplink
from edge.cabinet import Cabinet
from edge.config import CabinetConfig
from edge.errors import ConfigError
from edge.hardware.registry import Hardware, create_hardware
from edge.session import SessionResult
from edge.store import CabinetStore

log = logging.getLogger("freshbox.edge.daemon")

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DaemonClock:
    """Real time: Unix seconds that never jump backwards while the daemon runs."""

    start_wall: float
    start_mono: float

    @classmethod
    def start(cls) -> DaemonClock:
        return cls(time.time(), time.monotonic())

    def now(self) -> float:
        return self.start_wall + (time.monotonic() - self.start_mono)

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)


def run_daemon(
    config: CabinetConfig,
    *,
    duration: float | None = None,
    stop: threading.Event | None = None,
    loop_s: float = 0.05,
    on_session: Callable[[SessionResult], None] | None = None,
) -> Cabinet:
    """Run until ``stop`` is set, ``duration`` seconds pass, or SIGINT/SIGTERM arrives."""
    stop = stop or threading.Event()
    clock = DaemonClock.start()
    sync = _load_sync(config) if config.sync else None
    config.db_path.parent.mkdir(parents=True, exist_ok=True)
    store = CabinetStore(
        config.db_path,
        cabinet_id=config.cabinet_id,
        now=clock.wall,
        signing_key=None if sync is None else sync.signing_key,
    )
    hardware = create_hardware(config, start_t=clock.now())
    previous: dict[signal.Signals, Any] = {}

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop)
    uplink: Uplink | None = None
    bridge: CallBridge | None = None
    try:
        cabinet = Cabinet(
            config.spec(),
            store=store,
            lock=hardware.lock,
            epoch=UNIX_EPOCH,
            weighing=config.weighing,
            sessions=config.sessions,
            on_session=on_session,
        )
        overrides = store.lane_overrides()
        if overrides:  # prices and labels set by commands outlive a restart
            try:
                _apply_lanes(cabinet, overrides, lambda: None, persist=False)
                log.info("lane changes from earlier commands applied: %s", sorted(overrides))
            except CommandRefused as exc:
                log.warning("stored lane changes no longer fit the configuration: %s", exc)
        found = cabinet.recover(door_open=hardware.door.is_open)
        if found:
            log.warning("found %d unfinished session(s) from before the restart", found)
        hardware.lock.lock()
        if sync is not None:
            uplink, bridge = _start_uplink(config, sync, store, cabinet, clock, hardware)
        end = None if duration is None else clock.now() + duration
        lock_alarms_seen = 0  # alarms raised by the lock, recorded as events
        inventory_known = False
        next_inventory_check = clock.now() + 2.0
        log.info("cabinet %s running on %s hardware", config.cabinet_id, config.backend)
        while not stop.is_set():
            now = clock.now()
            cabinet.samples(hardware.source.read(now))
            is_open = hardware.door.is_open
            if is_open != cabinet.door_open:
                cabinet.door(now, is_open)
            if hardware.actors is not None:
                hardware.actors(cabinet, now)
            alarms = getattr(hardware.lock, "alarms", None)
            while alarms is not None and len(alarms) > lock_alarms_seen:
                alarm = alarms[lock_alarms_seen]
                lock_alarms_seen += 1
                cabinet.alarm(alarm.t, alarm.kind, detail=alarm.detail)
            if not inventory_known and now >= next_inventory_check:
                next_inventory_check = now + 1.0
                inventory_known = cabinet.seed_inventory()
            if bridge is not None:
                bridge.run_pending()
            if end is not None and now >= end:
                break
            stop.wait(loop_s)
        return cabinet
    finally:
        try:
            if uplink is not None:
                uplink.stop()
            hardware.close()
        finally:
            store.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True, slots=True)
class _Sync:
    settings: SyncSettings
    signing_key: Ed25519PrivateKey
    backend_key: Ed25519PublicKey


def _load_sync(config: CabinetConfig) -> _Sync:
    """Validate ``[sync]`` and load its keys; errors become ConfigError naming the key."""
    try:
        settings = parse_sync(config.sync, source=config.source, cabinet_id=config.cabinet_id)
    except SyncError as exc:
        raise ConfigError(str(exc)) from None
    try:
        signing_key = load_private_key(settings.signing_key)
    except SyncError as exc:
        raise ConfigError(f"{config.source}: sync.signing_key: {exc}") from None
    try:
        backend_key = public_key_spec(settings.backend_public_key, "backend public key")
    except SyncError as exc:
        raise ConfigError(f"{config.source}: sync.backend_public_key: {exc}") from None
    return _Sync(settings, signing_key, backend_key)


def _start_uplink(
    config: CabinetConfig,
    sync: _Sync,
    store: CabinetStore,
    cabinet: Cabinet,
    clock: DaemonClock,
    hardware: Hardware,
) -> tuple[Uplink, CallBridge]:
    """Start the uplink; its commands run on the daemon loop through the returned bridge."""
    bridge = CallBridge()
    nonce_db = sync.settings.nonce_db or config.db_path.with_name(
        config.db_path.stem + "-nonces.db"
    )
    handlers = _command_handlers(cabinet, bridge, clock)
    uplink = Uplink(
        sync.settings,
        store,
        sync.backend_key,
        handlers=handlers,
        telemetry=lambda: _telemetry(cabinet, hardware),
        nonces=NonceStore(nonce_db, now=clock.wall),
        wall=clock.wall,
        cabinet_time=clock.now,
    )
    uplink.start()
    b = sync.settings.broker
    log.info("uplink to %s:%d started (tls %s)", b.host, b.port, "on" if b.tls else "off")
    return uplink, bridge


def _telemetry(cabinet: Cabinet, hardware: Hardware | None = None) -> dict[str, Any]:
    levels = {str(lane): round(g, 1) for lane, g in cabinet.levels().items() if g == g}
    temperature = None
    if hardware is not None and hardware.temperature is not None:
        try:
            temperature = hardware.temperature()
        except Exception:  # a sensor that fails must not stop the telemetry
            log.exception("temperature sensor failed")
    faulted = [
        ln.lane for ln in cabinet.lanes if bool(cabinet._faulted[cabinet.lane_column[ln.lane]])
    ]
    return {
        "levels": levels,
        **({} if temperature is None else {"temperature_c": round(temperature, 1)}),
        "health": {
            "door_open": cabinet.door_open,
            "session": cabinet.session is not None,
            "faulted_lanes": faulted,
            "alarms_open": len(cabinet.store.alarms()),
        },
    }


def _command_handlers(
    cabinet: Cabinet, bridge: CallBridge, clock: DaemonClock
) -> dict[str, CommandHandler]:
    def idle() -> None:
        if cabinet.session is not None or cabinet.door_open:
            raise CommandRefused("busy", "a door session is in progress")

    def unlock(args: Mapping[str, Any], role: str = "resident") -> dict[str, Any]:
        who = args.get("resident", args.get("operator"))
        if not isinstance(who, str) or not who:
            raise CommandRefused("bad_args", "unlock needs a resident id")
        kind = "operator" if role == "operator" or args.get("role") == "operator" else "resident"
        sid = bridge.call(lambda: cabinet.unlock(clock.now(), who, kind))
        if sid is None:
            raise CommandRefused("busy", "the cabinet is busy (a session or an open door)")
        return {"session_id": sid, "role": kind}

    def restock(args: Mapping[str, Any]) -> dict[str, Any]:
        return unlock(args, "operator")

    def set_prices(args: Mapping[str, Any]) -> dict[str, Any]:
        prices = args.get("prices")
        if not isinstance(prices, dict) or not prices:
            raise CommandRefused("bad_args", "set_prices needs prices: {lane: fen}")
        changes = {}
        for key, fen in prices.items():
            if (
                not str(key).isdigit()
                or isinstance(fen, bool)
                or not isinstance(fen, int)
                or fen < 0
            ):
                raise CommandRefused("bad_args", f"price of lane {key!r} must be integer fen >= 0")
            changes[int(key)] = {"price": fen}
        result: dict[str, Any] = bridge.call(lambda: _apply_lanes(cabinet, changes, idle))
        return result

    def set_planogram(args: Mapping[str, Any]) -> dict[str, Any]:
        lanes = args.get("lanes")
        if not isinstance(lanes, list) or not lanes:
            raise CommandRefused("bad_args", "set_planogram needs lanes: [{lane, sku, ...}]")
        changes: dict[int, dict[str, Any]] = {}
        for item in lanes:
            if not isinstance(item, dict) or not isinstance(item.get("lane"), int):
                raise CommandRefused("bad_args", "every planogram entry needs a lane number")
            changes[item["lane"]] = dict(item)
        result: dict[str, Any] = bridge.call(lambda: _apply_lanes(cabinet, changes, idle))
        return result

    def tare(args: Mapping[str, Any]) -> dict[str, Any]:
        wanted = args.get("lanes")
        if wanted is not None and not (
            isinstance(wanted, list) and all(isinstance(x, int) for x in wanted)
        ):
            raise CommandRefused("bad_args", "tare lanes must be a list of lane numbers")

        def run() -> dict[str, Any]:
            idle()
            lanes = [ln for ln in cabinet.lanes if wanted is None or ln.lane in wanted]
            if wanted is not None and len(lanes) != len(set(wanted)):
                raise CommandRefused("bad_args", "unknown lane in tare")
            before: dict[str, float] = {}
            for ln in lanes:
                col = cabinet.lane_column[ln.lane]
                level = float(cabinet.tracker.stable_level[col])
                if level != level:
                    raise CommandRefused("no_reading", f"lane {ln.lane} has no stable level")
                f = cabinet.filter
                f.set_zero(col, float(f.zero[col] + level / f.scale[col]))
                before[str(ln.lane)] = round(level, 1)
                mask = cabinet.tracker.stable_level != cabinet.tracker.stable_level  # all False
                mask[col] = True
                zeros = cabinet.tracker.stable_level * 0.0
                cabinet.tracker.set_levels(mask, zeros, cabinet.tracker.stable_sigma, clock.now())
            return {"tared": before}

        result: dict[str, Any] = bridge.call(run)
        return result

    return {
        "unlock": unlock,
        "restock": restock,
        "set_prices": set_prices,
        "set_planogram": set_planogram,
        "tare": tare,
    }


_PLANOGRAM_FIELDS = {
    "lane",
    "sku",
    "name",
    "price",
    "price_fen",
    "price_fen_per_kg",
    "unit_weight_g",
    "unit_weight_sd_g",
    "mode",
}


def _apply_lanes(
    cabinet: Cabinet,
    changes: Mapping[int, Mapping[str, Any]],
    idle: Callable[[], None],
    *,
    persist: bool = True,
) -> dict[str, Any]:
    """Change lanes in place (prices, SKU, names, pack weights); not the channel or the mode.
    The changes are kept in the store (``persist``) and re-applied at every start."""
    idle()
    by_lane = {ln.lane: ln for ln in cabinet.lanes}
    updated = []
    for lane_no, change in changes.items():
        lane = by_lane.get(lane_no)
        if lane is None:
            raise CommandRefused("bad_args", f"no lane {lane_no}")
        unknown = set(change) - _PLANOGRAM_FIELDS
        if unknown:
            raise CommandRefused("bad_args", f"lane {lane_no}: unknown {sorted(unknown)}")
        if change.get("mode", lane.mode) != lane.mode:
            raise CommandRefused(
                "unsupported", f"lane {lane_no}: changing the mode needs a restart"
            )
        kw: dict[str, Any] = {}
        if "price" in change:
            kw["price_fen_per_kg" if lane.mode == "weighed" else "price_fen"] = change["price"]
        for name in (
            "sku",
            "name",
            "price_fen",
            "price_fen_per_kg",
            "unit_weight_g",
            "unit_weight_sd_g",
        ):
            if name in change:
                kw[name] = change[name]
        for name, value in kw.items():
            if name in ("sku", "name"):
                ok = isinstance(value, str) and bool(value)
            elif name.startswith("price"):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            if not ok:
                raise CommandRefused("bad_args", f"lane {lane_no}: bad {name} {value!r}")
        try:
            by_lane[lane_no] = dataclasses.replace(lane, **kw)
        except TypeError as exc:
            raise CommandRefused("bad_args", f"lane {lane_no}: {exc}") from None
        updated.append(lane_no)
    cabinet.lanes = tuple(sorted(by_lane.values(), key=lambda ln: ln.lane))
    cabinet.spec = dataclasses.replace(cabinet.spec, lanes=cabinet.lanes)
    cabinet._refresh_tolerances()
    if persist:
        cabinet.store.save_lane_overrides(changes)
    return {"lanes": sorted(updated)}

"""The cabinet daemon: the controller in real time on the configured hardware.

The cabinet clock is Unix time in seconds (a monotonic clock anchored once to
the wall clock at start), so times stored before a restart still mean the same.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from edge.cabinet import Cabinet
from edge.config import CabinetConfig
from edge.hardware.registry import create_hardware
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
    config.db_path.parent.mkdir(parents=True, exist_ok=True)
    store = CabinetStore(config.db_path, cabinet_id=config.cabinet_id, now=clock.wall)
    hardware = create_hardware(config, start_t=clock.now())
    previous: dict[signal.Signals, Any] = {}

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop)
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
        found = cabinet.recover(door_open=hardware.door.is_open)
        if found:
            log.warning("found %d unfinished session(s) from before the restart", found)
        hardware.lock.lock()
        end = None if duration is None else clock.now() + duration
        log.info("cabinet %s running on %s hardware", config.cabinet_id, config.backend)
        while not stop.is_set():
            now = clock.now()
            cabinet.samples(hardware.source.read(now))
            is_open = hardware.door.is_open
            if is_open != cabinet.door_open:
                cabinet.door(now, is_open)
            if hardware.actors is not None:
                hardware.actors(cabinet, now)
            if end is not None and now >= end:
                break
            stop.wait(loop_s)
        return cabinet
    finally:
        try:
            hardware.close()
        finally:
            store.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

"""The daemon on the hx711 backend with emulated GPIO bills a real session.

``config/examples/hx711-emulated.toml``: the PyPI hx711 driver reads emulated chips,
the simulated shopper opens the door only once the relay released the lock, the reed
switch (bouncing, debounced) tells the daemon, and the bill comes out of the weights.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from edge.config import load_config
from edge.daemon import run_daemon
from edge.session import SessionResult
from edge.store import CabinetStore
from firmware_mock.gpio import Board
from firmware_mock.gpio import rpi as GPIO

ROOT = Path(__file__).resolve().parent.parent
EMULATED = ROOT / "config" / "examples" / "hx711-emulated.toml"


def test_daemon_bills_a_session_on_emulated_hx711(tmp_path: Path) -> None:
    config = load_config(EMULATED)
    config = dataclasses.replace(config, db_path=tmp_path / "cabinet.db")
    stop = threading.Event()
    bills: list[SessionResult] = []
    boards: list[Board] = []

    def on_session(result: SessionResult) -> None:
        bills.append(result)
        board = GPIO.installed_board()
        if board is not None:
            boards.append(board)
        stop.set()

    started = time.monotonic()
    cabinet = run_daemon(config, duration=25.0, stop=stop, on_session=on_session)
    elapsed = time.monotonic() - started
    assert bills, f"no bill in {elapsed:.1f} s"
    record = bills[0].record
    assert record["role"] == "resident"
    assert record["lines"], record  # the shopper took something, and it was weighed
    assert record["total_fen"] > 0
    assert "sensor_fault" not in record["flags"]
    # the relay ended locked, the board was released
    assert boards and all(relay.locked for relay in boards[0].relays.values())
    assert GPIO.installed_board() is None
    assert [t.name for t in threading.enumerate() if t.name.startswith("hx711-")] == []
    with CabinetStore(config.db_path, cabinet_id=config.cabinet_id) as store:
        assert store.check_consistency() == []
    assert cabinet.session is None or cabinet.session.session_id != record["session_id"]
    print(f"\n[hx711 daemon] first bill after {elapsed:.1f} s: {record['lines']}")

"""The cabinet daemon as a process: ``freshbox edge run`` with a duration, stopped by
SIGINT, restarted on its own store, and ``freshbox demo``.

The processes run in real time, so they are started together once per module and
each test waits for its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.store import CabinetStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "config" / "cabinet.example.toml"
CABINET_ID = "cab-demo-01"
WAIT_S = 30.0


def freshbox() -> list[str]:
    """The installed ``freshbox`` console script (else the module, same entry point)."""
    script = Path(sys.executable).parent / "freshbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "freshbox_cli"]


def config_with_db(dst: Path, db: Path) -> Path:
    """A copy of the example configuration whose store is ``db``."""
    text, n = re.subn(r'(?m)^db = "[^"]*"', f'db = "{db.as_posix()}"', EXAMPLE_CONFIG.read_text())
    assert n == 1
    dst.write_text(text)
    return dst


@dataclass
class Run:
    proc: subprocess.Popen[str]
    db: Path
    started: float
    out: str = ""
    err: str = ""
    code: int | None = None
    elapsed: float = 0.0

    def wait(self) -> Run:
        if self.code is None:
            try:
                self.out, self.err = self.proc.communicate(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.out, self.err = self.proc.communicate()
                pytest.fail(f"{self.proc.args} did not stop within {WAIT_S} s:\n{self.err}")
            self.code = self.proc.returncode
            self.elapsed = time.monotonic() - self.started
        return self


def start(args: list[str], db: Path, cwd: Path) -> Run:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*freshbox(), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Run(proc, db, time.monotonic())


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    base = tmp_path_factory.mktemp("daemon")
    runs: dict[str, Run] = {}
    db_timed = base / "timed" / "cabinet.db"
    cfg_timed = config_with_db(base / "timed.toml", db_timed)
    runs["timed"] = start(
        ["edge", "run", "--config", str(cfg_timed), "--duration", "4"], db_timed, base
    )
    db_int = base / "interrupted" / "cabinet.db"
    cfg_int = config_with_db(base / "interrupted.toml", db_int)
    runs["interrupted"] = start(["edge", "run", "--config", str(cfg_int)], db_int, base)
    db_demo = base / "demo" / "demo.db"
    runs["demo"] = start(["edge", "demo", "--duration", "3", "--db", str(db_demo)], db_demo, base)
    sigint = threading.Timer(3.0, runs["interrupted"].proc.send_signal, args=(signal.SIGINT,))
    sigint.start()
    try:
        yield runs
    finally:
        sigint.cancel()
        for r in runs.values():
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.communicate()


def open_store(db: Path) -> CabinetStore:
    assert db.exists(), f"{db} was not created"
    return CabinetStore(db, cabinet_id=CABINET_ID)


def test_edge_run_with_duration_exits_0(daemons: dict[str, Run]) -> None:
    run = daemons["timed"].wait()
    assert run.code == 0, run.err
    assert 3.5 <= run.elapsed <= 15.0, run.elapsed
    assert "Traceback" not in run.err
    assert f"cabinet {CABINET_ID} running on sim hardware" in run.err
    with open_store(run.db) as store:
        assert store.check_consistency() == []
        assert len(store.sessions()) >= 1  # a simulated resident unlocked about 3 s in


def test_edge_run_stops_cleanly_on_sigint(daemons: dict[str, Run]) -> None:
    run = daemons["interrupted"].wait()
    assert run.code == 0, (run.code, run.err)
    assert run.elapsed <= 3.0 + 5.0, run.elapsed  # stopped within a few seconds of SIGINT
    assert "Traceback" not in run.err and "KeyboardInterrupt" not in run.err
    assert "signal 2: stopping" in run.err
    with open_store(run.db) as store:
        assert store.check_consistency() == []


def test_edge_run_restarts_on_its_store_and_finishes_what_was_open(
    daemons: dict[str, Run], tmp_path: Path
) -> None:
    first = daemons["timed"].wait()
    assert first.code == 0
    with open_store(first.db) as store:
        before = {s.session_id: s.state for s in store.sessions()}
    # the first run stopped 1 s after a resident's unlock: that session was left open
    assert any(state in ("unlocked", "open", "closed") for state in before.values()), before
    cfg = config_with_db(tmp_path / "again.toml", first.db)
    again = start(["edge", "run", "--config", str(cfg), "--duration", "2"], first.db, tmp_path)
    again.wait()
    assert again.code == 0, again.err
    with open_store(first.db) as store:
        assert store.check_consistency() == []
        after = {s.session_id: s for s in store.sessions()}
        for sid, state in before.items():
            assert sid in after
            if state in ("unlocked", "open", "closed"):
                # left open by the first run: finished on restart, never left dangling
                assert after[sid].state in ("billed", "expired"), (state, after[sid])
                if after[sid].state == "billed":
                    assert "recovered" in after[sid].flags
                else:
                    assert after[sid].flags == ["unlock_unused"]


def test_demo_prints_its_banner_and_exits_0(daemons: dict[str, Run]) -> None:
    run = daemons["demo"].wait()
    assert run.code == 0, run.err
    first = run.out.splitlines()[0]
    assert first.startswith(f"freshbox demo: cabinet {CABINET_ID} on the simulated backend")
    assert str(run.db) in first and "Ctrl-C stops." in first
    assert "Traceback" not in run.err
    with open_store(run.db) as store:
        assert store.check_consistency() == []


def test_a_new_cabinet_records_its_inventory_before_any_session(tmp_path: Path) -> None:
    """The backend's stock view needs an inventory from the start, not after a sale."""
    import tomllib

    from edge.commands import default_config_text
    from edge.config import parse_config
    from edge.daemon import run_daemon

    data = tomllib.loads(default_config_text())
    data["cabinet"]["db"] = str(tmp_path / "cab.db")
    data["hardware"]["sim"]["residents"] = False
    config = parse_config(data, source="test", base=tmp_path)
    run_daemon(config, duration=4.0, stop=threading.Event())
    store = open_store(tmp_path / "cab.db")
    try:
        inventory = store.inventory()
    finally:
        store.close()
    assert sorted(inventory) == [1, 2, 3, 4]
    assert inventory[1].count == 6  # six 500 g packs of tomatoes
    assert inventory[3].count == 4 and len(inventory[3].items) == 4  # tracked eggs
    assert inventory[2].count is None and inventory[2].level_g > 1000  # weighed bok choy


def test_prices_set_by_command_outlive_a_restart(tmp_path: Path) -> None:
    """set_prices/set_planogram change the running cabinet and are kept in its store:
    after a restart the cabinet bills at the backend's prices, not the file's."""
    import tomllib

    from edge.commands import default_config_text
    from edge.config import parse_config
    from edge.daemon import _apply_lanes, run_daemon

    data = tomllib.loads(default_config_text())
    data["cabinet"]["db"] = str(tmp_path / "cab.db")
    data["hardware"]["sim"]["residents"] = False
    config = parse_config(data, source="test", base=tmp_path)
    store = CabinetStore(tmp_path / "cab.db", cabinet_id=config.cabinet_id)
    store.save_lane_overrides({1: {"price": 720}})
    store.save_lane_overrides({4: {"name": "Red chili 150 g"}, 1: {"sku": "tomato-500"}})
    store.close()
    cabinet = run_daemon(config, duration=1.0, stop=threading.Event())
    lanes = {ln.lane: ln for ln in cabinet.lanes}
    assert lanes[1].price_fen == 720 and lanes[4].name == "Red chili 150 g"
    assert lanes[2].price_fen_per_kg == 800  # untouched lanes keep the file's values

    store = CabinetStore(tmp_path / "cab.db", cabinet_id=config.cabinet_id)
    try:
        cabinet.store = store
        _apply_lanes(cabinet, {2: {"price": 950}}, lambda: None)
        assert store.lane_overrides() == {
            1: {"price": 720, "sku": "tomato-500"},
            2: {"price": 950},
            4: {"name": "Red chili 150 g"},
        }
    finally:
        store.close()

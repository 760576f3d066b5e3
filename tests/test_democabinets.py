"""The demo fleet: real cabinet daemons on the embedded broker answer a backend's unlock.

Two ``freshbox edge run`` processes (sim hardware, ``answer_unlocks``) connect to
an :class:`EmbeddedBroker`; a signed unlock sent with the backend key is answered
by a simulated resident, billed and synced.
"""

from __future__ import annotations

import os
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from backend.broker import EmbeddedBroker
from backend.democabinets import DemoFleet, PlanogramLane, demo_cabinet_ids, ensure_backend_key
from cloud_sync import topics
from cloud_sync.canonical import parse_json
from cloud_sync.commander import Commander
from cloud_sync.keys import load_private_key, public_key_text
from cloud_sync.transport import connect_args, new_client

ONLINE_S = 60.0  # two daemons start (numpy, sqlite, the sim) on a 2-core machine
RESULT_S = 30.0


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Watcher:
    """A backend-side subscriber recording every message by topic."""

    def __init__(self, broker: EmbeddedBroker, client_id: str) -> None:
        self.cond = threading.Condition()
        self.messages: list[tuple[str, bytes, bool]] = []
        settings = broker.settings(client_id)
        self.client = new_client(settings, client_id)
        ready = threading.Event()
        self.client.on_connect = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(settings.host, settings.port, **connect_args(settings))
        self.client.loop_start()
        assert ready.wait(10), "watcher did not connect"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}: {self.messages[-10:]}")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, DemoFleet, Path]]:
    broker = EmbeddedBroker()
    broker.start()
    backend_key, _ = ensure_backend_key(tmp_path)
    demo = DemoFleet(tmp_path / "demo", broker.settings(), backend_key, count=2)
    pids: list[int] = []
    try:
        yield broker, demo, backend_key
        pids = list(demo.pids().values())
    finally:
        pids = pids or list(demo.pids().values())
        codes = demo.stop(timeout=10.0)
        broker.stop()
        for pid in pids:
            assert not pid_running(pid), f"daemon {pid} left behind"
    assert all(code == 0 for code in codes.values()), (
        codes,
        [c.log_path.read_text(errors="replace")[-2000:] for c in demo.cabinets],
    )


def test_ensure_backend_key_reuses_the_key(tmp_path: Path) -> None:
    path, text = ensure_backend_key(tmp_path)
    assert path == tmp_path / "backend.key"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert public_key_text(load_private_key(path)) == text
    assert ensure_backend_key(tmp_path) == (path, text)


def test_configs_keys_and_planograms(tmp_path: Path) -> None:
    backend_key, backend_public = ensure_backend_key(tmp_path)
    broker = EmbeddedBroker(port=18830)
    fleet = DemoFleet(tmp_path / "demo", broker.settings(), backend_key)
    assert fleet.cabinet_ids == demo_cabinet_ids() == ["cab-demo-01", "cab-demo-02", "cab-demo-03"]
    enrolment = fleet.enrolment()
    assert [cab for cab, _ in enrolment] == fleet.cabinet_ids
    assert len({key for _, key in enrolment}) == 3
    again = DemoFleet(tmp_path / "demo", broker.settings(), backend_key)
    assert again.enrolment() == enrolment  # keys are reused
    plans = {cab: fleet.lanes(cab) for cab in fleet.cabinet_ids}
    assert plans["cab-demo-01"] == [
        PlanogramLane(1, "tomato-500", "Tomatoes 500 g", "unit", 690),
        PlanogramLane(2, "bokchoy", "Bok choy", "weighed", 800),
        PlanogramLane(3, "eggs-10", "Eggs x10", "tracked", 1290),
        PlanogramLane(4, "chili-150", "Chili 150 g", "unit", 380),
    ]
    assert plans["cab-demo-02"] != plans["cab-demo-01"] != plans["cab-demo-03"]
    seeds = set()
    for cab in fleet.cabinets:
        data = tomllib.loads(cab.config_path.read_text())
        sim = data["hardware"]["sim"]
        assert (sim["residents"], sim["answer_unlocks"]) == (False, True)
        seeds.add(sim["seed"])
        sync = data["sync"]
        assert (sync["host"], sync["port"], sync["mqtt_version"]) == ("127.0.0.1", 18830, "3.1.1")
        assert Path(sync["signing_key"]) == cab.key_path
        assert Path(sync["backend_public_key"]).read_text().strip() == backend_public
        assert Path(data["cabinet"]["db"]).parent == tmp_path / "demo"
    assert len(seeds) == 3
    with pytest.raises(Exception, match="cabinet_id: 'cab-x'"):
        fleet.lanes("cab-x")


@pytest.mark.slow
def test_demo_cabinets_answer_a_signed_unlock(
    fleet: tuple[EmbeddedBroker, DemoFleet, Path],
) -> None:
    broker, demo, backend_key = fleet
    watcher = Watcher(broker, "watcher")
    try:
        watcher.client.subscribe(topics.cabinet_filter("status"), qos=1)
        watcher.client.subscribe(topics.cabinet_filter("sales"), qos=1)
        demo.start()
        for cab in demo.cabinet_ids:
            watcher.wait(
                lambda m, cab=cab: m[0] == topics.status(cab) and m[1] == b"online",
                ONLINE_S,
                f"{cab} online",
            )
        assert all(demo.alive().values())
        # a later subscriber sees the retained birth
        late = Watcher(broker, "late-watcher")
        try:
            late.client.subscribe(topics.cabinet_filter("status"), qos=1)
            for cab in demo.cabinet_ids:
                got = late.wait(lambda m, cab=cab: m[0] == topics.status(cab), 10, f"{cab}")
                assert got[1:] == (b"online", True)
        finally:
            late.close()

        cab = "cab-demo-02"
        with Commander(broker.settings("backend"), load_private_key(backend_key)) as commander:
            cmd = commander.send(cab, "unlock", {"resident": "r-17"}, ttl_s=15.0)
            first = commander.wait(cmd["nonce"], RESULT_S)
            assert first is not None, "no result for the unlock"
            assert (first["status"], first["ok"]) == ("unlocked", True), first
            assert first["data"]["session_id"]
            final = commander.wait(cmd["nonce"], RESULT_S, final=True)
            assert final is not None, "no final result"
            assert final["status"] == "billed", final
            seq = final["data"]["seq"]
            assert isinstance(seq, int) and seq >= 1

        _, payload, _ = watcher.wait(
            lambda m: m[0] == topics.sales(cab) and parse_json(m[1]).get("seq") == seq,
            RESULT_S,
            f"sale record {seq} of {cab}",
        )
        record = parse_json(payload)
        assert record["cabinet"] == cab and record["kind"] == "sale"
        body = record["body"]
        assert body["session_id"] == first["data"]["session_id"]
        assert body["resident"] == "r-17"
        assert len(body["lines"]) >= 1
        assert body["total_fen"] == final["data"]["total_fen"] > 0
        skus = {ln.sku for ln in demo.lanes(cab)}
        assert {ln["sku"] for ln in body["lines"]} <= skus
    finally:
        watcher.close()

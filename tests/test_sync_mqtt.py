"""Cabinet uplink, ingest and commands against a real Mosquitto with the generated configuration."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mqtt import Community, child_env, make_community, wait_for

from cloud_sync import topics
from cloud_sync.broker import acl_text, mosquitto_password_hash, write_broker_config
from cloud_sync.canonical import canonical_bytes
from cloud_sync.commander import Commander
from cloud_sync.ingest import Ingest, load_backend_config
from cloud_sync.keys import generate_private_key, load_private_key
from cloud_sync.records import new_nonce, seal_ack, seal_command
from cloud_sync.simcab import SimFleet
from cloud_sync.transport import new_client
from freshbox_cli import main


@pytest.fixture(name="community")
def _community(tmp_path: Path) -> Iterator[Community]:
    """Three cabinets (cab-01 .. cab-03), their keys, a backend key and a running broker."""
    yield from make_community(tmp_path, ["cab-01", "cab-02", "cab-03"])


# ------------------------------------------------------------------ broker config files


def test_broker_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "broker"
    code = main(
        ["broker", "config", "--out", str(out), "--cabinets", "cab-1,cab-2", "--port", "18883"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    conf = (out / "mosquitto.conf").read_text()
    for line in (
        "allow_anonymous false",
        f"password_file {out.resolve()}/passwords",
        f"acl_file {out.resolve()}/acl",
        "persistence true",
        "listener 18883 127.0.0.1",
    ):
        assert line in conf.splitlines(), line
    creds = tomllib.loads((out / "credentials.toml").read_text())["users"]
    assert set(creds) == {"ingest", "backend", "cab-1", "cab-2"}
    for path in (out / "credentials.toml", out / "secrets" / "cab-1.password"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert creds["cab-1"] not in printed
    lines = (out / "passwords").read_text().splitlines()
    assert {ln.split(":", 1)[0] for ln in lines} == set(creds)
    for ln in lines:  # every hash verifies as mosquitto's $7$ PBKDF2-SHA512
        user, h = ln.split(":", 1)
        _, seven, iterations, salt, digest = h.split("$")
        assert seven == "7"
        again = hashlib.pbkdf2_hmac(
            "sha512", creds[user].encode(), base64.b64decode(salt), int(iterations)
        )
        assert base64.b64encode(again).decode() == digest
    acl = (out / "acl").read_text()
    assert "user cab-1\ntopic write freshbox/v1/cab/cab-1/sales" in acl
    assert "topic read freshbox/v1/cab/cab-2/cmd" in acl
    # running it again with one more cabinet keeps the existing passwords
    assert main(["broker", "config", "--out", str(out), "--cabinets", "cab-1,cab-2,cab-3"]) == 0
    again = tomllib.loads((out / "credentials.toml").read_text())["users"]
    assert again["cab-1"] == creds["cab-1"] and "cab-3" in again
    assert main(["broker", "config", "--out", str(out), "--cabinets", "ingest"]) == 2
    assert "reserved" in capsys.readouterr().err


def test_python_password_hash_matches_mosquitto_format() -> None:
    salt = bytes(range(12))
    h = mosquitto_password_hash("secret", salt)
    assert h.startswith("$7$101$" + base64.b64encode(salt).decode() + "$")
    assert "cab-x" in acl_text(["cab-x"])


def test_broker_accepts_python_hashes(tmp_path: Path) -> None:
    from mqtt import Broker, free_port, mosquitto_or_skip

    binary = mosquitto_or_skip()
    import getpass

    files = write_broker_config(
        tmp_path, ["cab-p"], port=free_port(), run_as=getpass.getuser(), use_passwd_tool=False
    )
    assert files.hashed_with == "python"
    broker = Broker(binary, files)
    broker.start()
    try:
        assert _connect_rc(broker.settings("cab-p")) == 0
        bad = broker.settings("cab-p")
        from dataclasses import replace

        assert _connect_rc(replace(bad, password="wrong")) != 0
        assert _connect_rc(replace(bad, username=None, password=None)) != 0
    finally:
        broker.kill()


def _connect_rc(settings: Any) -> int:
    done = threading.Event()
    rc: list[int] = []
    client = new_client(settings, f"probe-{new_nonce()[:6]}")

    def on_connect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
        rc.append(reason.value)
        done.set()

    client.on_connect = on_connect
    client.connect(settings.host, settings.port)
    client.loop_start()
    done.wait(5)
    client.loop_stop()
    client.disconnect()
    return rc[0] if rc else -1


# ------------------------------------------------------------------ ACL


def test_acl_confines_each_cabinet(community: Community) -> None:
    b = community.broker
    got: dict[str, list[tuple[str, bytes]]] = {"cab-01": [], "cab-02": [], "ingest": []}
    clients = []
    for user in got:
        c = new_client(b.settings(user), f"{user}-acl")
        c.on_message = lambda cl, u, m, who=user: got[who].append((m.topic, m.payload))
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        clients.append(c)
    cab1, cab2, ing = clients
    time.sleep(0.3)
    cab2.subscribe(
        [
            (topics.cmd("cab-01"), 1),
            (topics.ack("cab-01"), 1),
            (topics.sales("cab-01"), 1),
            (topics.cmd("cab-02"), 1),
        ]
    )
    cab1.subscribe(topics.cmd("cab-01"), 1)
    ing.subscribe(topics.shared("ingest", topics.cabinet_filter("sales")), 1)
    time.sleep(0.3)
    be = new_client(b.settings("backend"), "be-acl")
    be.connect("127.0.0.1", b.port)
    be.loop_start()
    time.sleep(0.2)
    be.publish(topics.cmd("cab-01"), b"for cab-01 only", qos=1)
    cab2.publish(topics.sales("cab-01"), b"forged by cab-02", qos=1)  # denied
    cab2.publish(topics.ack("cab-02"), b"self-ack", qos=1)  # denied: acks come from ingest
    cab1.publish(topics.sales("cab-01"), b"genuine", qos=1)
    time.sleep(0.8)
    for c in [*clients, be]:
        c.loop_stop()
        c.disconnect()
    assert got["cab-01"] == [(topics.cmd("cab-01"), b"for cab-01 only")]
    assert got["cab-02"] == []  # neither cab-01's cmd, nor its sales, nor ack
    assert got["ingest"] == [(topics.sales("cab-01"), b"genuine")]


# ------------------------------------------------------------------ in-process fleet


@pytest.fixture
def running(community: Community) -> Iterator[tuple[Community, Ingest, SimFleet, Commander]]:
    ing = Ingest(load_backend_config(community.ingest_config()))
    ing.start()
    assert ing.wait_connected(5)
    fleet = SimFleet(
        community.cab_dir,
        community.cabinets,
        host="127.0.0.1",
        port=community.broker.port,
        secrets=community.broker.files.directory / "secrets",
        backend_public_key=community.backend_public,
        retransmit_s=2.0,
    )
    fleet.start()
    wait_for(fleet.connected, 10, "cabinets connected")
    cmdr = Commander(
        community.broker.settings("backend"), load_private_key(community.backend_key_path)
    )
    cmdr.start()
    try:
        yield community, ing, fleet, cmdr
    finally:
        cmdr.stop()
        fleet.stop()
        ing.stop()


def test_drain_then_ledger_verifies(running: Any, capsys: pytest.CaptureFixture[str]) -> None:
    community, ing, fleet, _ = running
    stop = threading.Event()
    t = threading.Thread(target=fleet.produce, args=(120, 0.0, stop))
    t.start()
    try:
        wait_for(
            lambda: min(fleet.issued().values()) >= 120 and fleet.all_acked(),
            60,
            "every record acked",
        )
    finally:
        stop.set()
        t.join()
    assert ing.db.counts()["records"] == sum(fleet.issued().values())
    for c in fleet.cabinets:
        head = c.store.outbox_head()
        assert head.acked_upto == head.last_seq and c.store.outbox_records() == []
        assert c.store.check_consistency() == []
    assert main(["ledger", "verify", "--db", str(community.ingest_db)]) == 0
    assert "chains verified 3/3" in capsys.readouterr().out


def test_unlock_results_replay_expiry_forgery(running: Any) -> None:
    community, ing, fleet, cmdr = running
    cmd = cmdr.send("cab-01", "unlock", {"resident": "r-17"})
    first = cmdr.wait(cmd["nonce"], 5)
    assert first is not None and first["ok"] and first["status"] == "unlocked"
    final = cmdr.wait(cmd["nonce"], 5, final=True)
    assert final is not None and final["status"] == "billed"
    sid, seq = final["data"]["session_id"], final["data"]["seq"]
    assert fleet.cabinets[0].store.session(sid).outbox_seq == seq
    wait_for(lambda: ing.db.head("cab-01")[0] >= seq, 10, "the sale stored")
    sale = json.loads(ing.db.records("cab-01")[seq - 1])
    assert sale["body"]["session_id"] == sid

    # the very same command again: replayed, not executed
    cmdr.publish_raw("cab-01", canonical_bytes(cmd))
    time.sleep(0.5)
    assert [r["reason"] for r in cmdr.results(cmd["nonce"]) if not r["ok"]] == ["replayed"]

    backend = load_private_key(community.backend_key_path)
    expired = seal_command(
        "cab-01",
        "unlock",
        {"resident": "r-1"},
        new_nonce(),
        datetime.now(UTC) - timedelta(seconds=1),
        backend,
    )
    cmdr.publish_raw("cab-01", canonical_bytes(expired))
    r = cmdr.wait(expired["nonce"], 5)
    assert r is not None and not r["ok"] and r["reason"] == "expired"

    forged = seal_command(
        "cab-01",
        "unlock",
        {"resident": "mallory"},
        new_nonce(),
        datetime.now(UTC) + timedelta(seconds=10),
        generate_private_key(),
    )
    cmdr.publish_raw("cab-01", canonical_bytes(forged))
    r = cmdr.wait(forged["nonce"], 5)
    assert r is not None and r["reason"] == "bad_signature"

    far = seal_command(
        "cab-01",
        "unlock",
        {"resident": "r-1"},
        new_nonce(),
        datetime.now(UTC) + timedelta(days=3),
        backend,
    )
    cmdr.publish_raw("cab-01", canonical_bytes(far))
    r = cmdr.wait(far["nonce"], 5)
    assert r is not None and r["reason"] == "expired"

    r = cmdr.wait(cmdr.send("cab-01", "self_destruct")["nonce"], 5)
    assert r is not None and r["reason"] == "unknown_command"
    assert not any(s.resident == "mallory" for s in fleet.cabinets[0].store.sessions())

    # a cabinet ignores commands for another cabinet even on its own topic
    wrong = seal_command(
        "cab-02",
        "unlock",
        {"resident": "r-1"},
        new_nonce(),
        datetime.now(UTC) + timedelta(seconds=10),
        backend,
    )
    cmdr.publish_raw("cab-01", canonical_bytes(wrong))
    time.sleep(0.4)
    assert cmdr.results(wrong["nonce"]) == []

    # the nonce survives a restart of the cabinet: replay after restart still refused
    fleet.stop()
    again = SimFleet(
        community.cab_dir,
        community.cabinets,
        host="127.0.0.1",
        port=community.broker.port,
        secrets=community.broker.files.directory / "secrets",
        backend_public_key=community.backend_public,
    )
    again.start()
    try:
        wait_for(again.connected, 10, "reconnected")
        cmdr.publish_raw("cab-01", canonical_bytes(cmd))
        wait_for(
            lambda: len([r for r in cmdr.results(cmd["nonce"]) if not r["ok"]]) == 2,
            5,
            "second refusal",
        )
        assert [r["reason"] for r in cmdr.results(cmd["nonce"]) if not r["ok"]] == [
            "replayed",
            "replayed",
        ]
    finally:
        again.stop()
        fleet.cabinets = []  # already stopped


def test_door_never_opened_and_busy(running: Any) -> None:
    _, _, _fleet, cmdr = running
    cmd = cmdr.send("cab-02", "unlock", {"resident": "r-5", "door": "unused"})
    busy = cmdr.send("cab-02", "unlock", {"resident": "r-6"})
    r = cmdr.wait(busy["nonce"], 5)
    assert r is not None and r["reason"] == "busy"
    final = cmdr.wait(cmd["nonce"], 5, final=True)
    assert final is not None and final["status"] == "door_never_opened"
    assert isinstance(final["data"]["seq"], int)


def test_forged_ack_deletes_nothing_and_mismatch_alarms(running: Any) -> None:
    community, _ing, fleet, _cmdr = running
    cab = fleet.cabinets[2]
    wait_for(
        lambda: cab.store.outbox_head().acked_upto == cab.store.outbox_head().last_seq, 5, "idle"
    )
    cab.event(time.time())
    seq = cab.store.outbox_head().last_seq
    backend = load_private_key(community.backend_key_path)
    client = new_client(community.broker.settings("ingest"), "fake-ingest")
    client.connect("127.0.0.1", community.broker.port)
    client.loop_start()
    try:
        forged = seal_ack(cab.cabinet_id, seq, "0" * 64, generate_private_key())
        wrong_head = seal_ack(cab.cabinet_id, seq, "ab" * 32, backend)
        for ack in (forged, wrong_head):
            client.publish(topics.ack(cab.cabinet_id), canonical_bytes(ack), qos=1)
        wait_for(lambda: cab.uplink.stats.bad_acks >= 2, 5, "acks refused")
    finally:
        client.loop_stop()
        client.disconnect()
    alarms = [e for e in cab.store.alarms() if e.type == "ack_head_mismatch"]
    assert len(alarms) == 1 and alarms[0].data["upto"] == seq
    # the real ingest acks it properly in the end (the alarm event included)
    wait_for(
        lambda: cab.store.outbox_head().acked_upto == cab.store.outbox_head().last_seq,
        10,
        "acked by the real ingest",
    )


def test_status_telemetry_inventory(community: Community) -> None:
    b = community.broker
    seen: dict[str, bytes] = {}
    watcher = new_client(b.settings("backend"), "watcher")
    watcher.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload)
    watcher.connect("127.0.0.1", b.port)
    watcher.loop_start()
    watcher.subscribe(
        [
            (topics.status("cab-03"), 1),
            (topics.telemetry("cab-03"), 0),
            (topics.inventory("cab-03"), 1),
        ]
    )
    proc = community.spawn_cabinets(["cab-03"], "--target", "0")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        wait_for(lambda: seen.get(topics.status("cab-03")) == b"online", 10, "birth")
        wait_for(lambda: topics.telemetry("cab-03") in seen, 10, "telemetry")
        tele = json.loads(seen[topics.telemetry("cab-03")])
        assert tele["cabinet"] == "cab-03" and "software" in tele and "outbox" in tele
        wait_for(lambda: topics.inventory("cab-03") in seen, 10, "inventory")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_for(lambda: seen.get(topics.status("cab-03")) == b"offline", 10, "last will")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    # retained: a newcomer gets the last status at once
    late: dict[str, bytes] = {}
    c = new_client(b.settings("backend"), "late")
    c.on_message = lambda cl, u, m: late.__setitem__(m.topic, m.payload)
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    c.subscribe([(topics.status("cab-03"), 1), (topics.inventory("cab-03"), 1)])
    try:
        wait_for(lambda: late.get(topics.status("cab-03")) == b"offline", 5, "retained status")
        wait_for(lambda: topics.inventory("cab-03") in late, 5, "retained inventory")
    finally:
        c.loop_stop()
        c.disconnect()


def test_cmd_unlock_cli(community: Community) -> None:
    proc = community.spawn_cabinets(["cab-01"], "--target", "0")
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    cfg = community.backend_config()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshbox_cli",
            "cmd",
            "unlock",
            "cab-01",
            "--resident",
            "r-9",
            "--config",
            str(cfg),
            "--follow",
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(x) for x in run.stdout.splitlines()[1:]]
    assert [r["status"] for r in lines] == ["unlocked", "billed"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshbox_cli",
            "cmd",
            "unlock",
            "cab-nope",
            "--resident",
            "r",
            "--config",
            str(cfg),
            "--wait",
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert run.returncode == 3 and "no result" in run.stderr


def test_uplink_reconnects_with_backoff_when_broker_returns(tmp_path: Path) -> None:
    gen = make_community(tmp_path, ["cab-r"])
    community = next(gen)
    try:
        community.broker.kill()
        fleet = SimFleet(
            community.cab_dir,
            ["cab-r"],
            host="127.0.0.1",
            port=community.broker.port,
            secrets=community.broker.files.directory / "secrets",
            backend_public_key=community.backend_public,
        )
        fleet.start()
        try:
            time.sleep(1.0)
            up = fleet.cabinets[0].uplink
            assert not up.connected and up.stats.connect_failures >= 2
            community.broker.start()
            wait_for(fleet.connected, 10, "reconnected")
        finally:
            fleet.stop()
    finally:
        with __import__("contextlib").suppress(StopIteration):
            next(gen)

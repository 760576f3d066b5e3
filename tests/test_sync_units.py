"""Sync building blocks without a broker (signing outbox, config, backoff, nonces, bridge),
and the daemon with a ``[sync]`` table against a real broker."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mqtt import Community, make_community, wait_for

from cloud_sync.canonical import canonical_bytes
from cloud_sync.commander import Commander
from cloud_sync.config import BrokerSettings, SyncConfigError, SyncSettings, parse_sync
from cloud_sync.ingest import Ingest, load_backend_config
from cloud_sync.keys import generate_private_key, load_private_key, public_key_text
from cloud_sync.nonces import NonceStore
from cloud_sync.records import parse_record, seal_ack, verify_chain
from cloud_sync.transport import Backoff
from cloud_sync.uplink import CallBridge, CommandRefused, Uplink
from edge.errors import ConfigError, StoreError
from edge.store import CabinetStore

ROOT = Path(__file__).resolve().parent.parent
CAB = "cab-u-01"


# ------------------------------------------------------------------ signing outbox


def _records(store: CabinetStore) -> list[dict[str, Any]]:
    return [parse_record(r.record_json) for r in store.outbox_records(limit=10_000)]


def test_outbox_rows_are_sealed_in_their_transaction(tmp_path: Path) -> None:
    key = generate_private_key()
    with CabinetStore(tmp_path / "c.db", cabinet_id=CAB, signing_key=key) as store:
        store.begin_session("S1", "r-1", "resident", 1.0)
        store.expire_session("S1", 16.0, {"session_id": "S1", "total_fen": 0, "lines": []})
        store.record_event(17.0, "boot")
        recs = _records(store)
        assert [r["seq"] for r in recs] == [1, 2]
        assert [r["kind"] for r in recs] == ["sale", "event"]
        assert recs[0]["body"]["session_id"] == "S1"
        assert verify_chain(recs, key.public_key(), cabinet_id=CAB).ok
        head = store.outbox_head()
        assert head.last_seq == head.sealed_upto == 2
        assert head.last_hash == store.outbox_hash(2)
        # the head survives the ack that deletes the rows
        store.outbox_ack(2)
        assert store.outbox_records() == [] and store.outbox_hash(2) == head.last_hash
        store.record_event(18.0, "x")
        (third,) = _records(store)
        assert third["seq"] == 3 and third["prev"] == head.last_hash
        assert store.check_consistency() == []


def test_unsigned_store_is_unchanged_and_sealed_later(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with CabinetStore(path, cabinet_id=CAB) as store:
        store.record_event(1.0, "a")
        assert store.outbox_records() == [] and store.outbox_head().last_hash is None
        names = {r[0] for r in store.db.execute("SELECT name FROM _sqlite_migrations")}
        assert not any("outbox_chain" in n for n in names)
    key = generate_private_key()
    with CabinetStore(path, cabinet_id=CAB, signing_key=key) as store:
        store.record_event(2.0, "b")
    with CabinetStore(path, cabinet_id=CAB) as store:  # key forgotten for a while
        store.record_event(3.0, "c")
        assert [r.seq for r in store.outbox_records()] == [1, 2]
    with CabinetStore(path, cabinet_id=CAB, signing_key=key) as store:
        recs = _records(store)
        assert [r["seq"] for r in recs] == [1, 2, 3]
        assert verify_chain(recs, key.public_key(), cabinet_id=CAB).ok


def test_signing_after_unsigned_acks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with CabinetStore(path, cabinet_id=CAB) as store:
        store.record_event(1.0, "a")
        store.outbox_ack(1)
    with pytest.raises(StoreError, match="before signing was enabled"):
        CabinetStore(path, cabinet_id=CAB, signing_key=generate_private_key())


# ------------------------------------------------------------------ config, backoff, nonces


def _sync_table(tmp_path: Path, **over: Any) -> dict[str, Any]:
    key = tmp_path / "cab.key"
    if not key.exists():
        from cloud_sync.keys import save_private_key

        save_private_key(generate_private_key(), key)
    table: dict[str, Any] = {
        "host": "127.0.0.1",
        "signing_key": str(key),
        "backend_public_key": public_key_text(generate_private_key()),
    }
    table.update(over)
    return table


def test_acks_arriving_together_apply_the_highest_that_verifies(tmp_path: Path) -> None:
    cab_key, backend = generate_private_key(), generate_private_key()
    store = CabinetStore(tmp_path / "cab.db", cabinet_id=CAB, signing_key=cab_key)
    for i in range(6):
        store.record_event(float(i), "door_check")
    (tmp_path / "cab.key").write_text("unused")
    settings = SyncSettings(
        broker=BrokerSettings("127.0.0.1", 1),
        signing_key=tmp_path / "cab.key",
        backend_public_key=public_key_text(backend),
    )
    uplink = Uplink(settings, store, backend.public_key())
    hashes = {r.seq: r.hash for r in store.outbox_records()}

    def ack(upto: int, key: Any = backend, head: str | None = None) -> bytes:
        return canonical_bytes(seal_ack(CAB, upto, head or hashes[upto], key))

    # a forged claim above the rest is refused; the highest genuine one is applied and
    # covers the lower ones, which are neither verified nor committed
    uplink._acks = [ack(2), ack(5, generate_private_key()), ack(4), b"{not json", ack(3)]
    uplink._handle_acks()
    head = store.outbox_head()
    assert head.acked_upto == 4 and uplink.stats.acked_upto == 4
    assert uplink.stats.acks == 1 and uplink.stats.bad_acks == 2  # the forgery, the garbage
    assert [r.seq for r in store.outbox_records()] == [5, 6]
    # a genuine signature over another head raises the alarm and deletes nothing; the
    # right ack for the same seq, arriving with it, still applies
    uplink._acks = [ack(5, head="ab" * 32), ack(5)]
    uplink._handle_acks()
    assert store.outbox_head().acked_upto == 5 and uplink.stats.bad_acks == 3
    assert [e.type for e in store.alarms()] == ["ack_head_mismatch"]
    # acks at or below what was acked change nothing
    uplink._acks = [ack(2), ack(5)]
    uplink._handle_acks()
    assert store.outbox_head().acked_upto == 5 and uplink.stats.acks == 2
    store.close()


def test_sync_config_defaults_and_errors(tmp_path: Path) -> None:
    s = parse_sync(_sync_table(tmp_path), source="cab.toml", cabinet_id=CAB)
    assert s.broker.port == 1883 and s.broker.username == CAB and s.window == 1024
    assert (
        parse_sync(_sync_table(tmp_path, tls=True), source="c", cabinet_id=CAB).broker.port == 8883
    )
    for over, message in [
        ({"port": 0}, "cab.toml: sync.port: must be an integer from 1 to 65535"),
        ({"bogus": 1}, "cab.toml: sync.bogus: unknown key"),
        ({"window": "9"}, "cab.toml: sync.window: must be an integer"),
        ({"ca_file": "x.pem"}, "cab.toml: sync.ca_file: is only used with tls = true"),
        ({"password": "a", "password_file": "b"}, "cab.toml: sync.password_file: give password"),
        ({"signing_key": "nope.key"}, "cab.toml: sync.signing_key: nope.key: no such key file"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "sync.reconnect_max_s: must be >="),
    ]:
        with pytest.raises(SyncConfigError) as info:
            parse_sync(_sync_table(tmp_path, **over), source="cab.toml", cabinet_id=CAB)
        assert message in str(info.value)
    table = _sync_table(tmp_path)
    del table["host"]
    with pytest.raises(SyncConfigError, match=r"sync\.host: missing"):
        parse_sync(table, source="cab.toml", cabinet_id=CAB)


def test_backoff_grows_with_jitter_and_resets() -> None:
    b = Backoff(0.5, 8.0, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(8)]
    caps = [min(8.0, 0.5 * 2**n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert delays[-1] >= 4.0 and len(set(delays)) == len(delays)
    again = Backoff(0.5, 8.0, rng=random.Random(3))
    assert [again.next_delay() for _ in range(8)] == delays  # injectable randomness
    b.reset()
    assert b.next_delay() <= 0.5


def test_nonce_store_persists_until_expiry(tmp_path: Path) -> None:
    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    store = NonceStore(tmp_path / "n.db", now=lambda: now)
    assert store.remember("n" * 22, "2026-11-28T10:00:30.000Z", "unlock")
    assert not store.remember("n" * 22, "2026-11-28T10:00:30.000Z")
    store.close()
    again = NonceStore(tmp_path / "n.db", now=lambda: now)
    assert "n" * 22 in again and len(again) == 1
    assert again.purge(now + timedelta(seconds=10)) == 0
    assert again.purge(now + timedelta(seconds=30)) == 1 and "n" * 22 not in again


def test_call_bridge_runs_on_the_loop_thread() -> None:
    bridge = CallBridge(timeout=0.3)
    threads: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            bridge.run_pending()
            time.sleep(0.005)

    t = threading.Thread(target=loop, name="daemon-loop")
    t.start()
    try:
        assert bridge.call(lambda: threads.append(threading.current_thread().name) or 7) == 7
        assert threads == ["daemon-loop"]

        def refuse() -> None:
            raise CommandRefused("busy")

        with pytest.raises(CommandRefused):
            bridge.call(refuse)
    finally:
        stop.set()
        t.join()
    with pytest.raises(CommandRefused, match="in time"):
        bridge.call(lambda: 1)  # nobody runs the loop
    assert bridge.run_pending() == 0  # the timed-out call never runs later


# ------------------------------------------------------------------ the daemon with [sync]


@pytest.fixture(name="community")
def _community(tmp_path: Path) -> Iterator[Community]:
    yield from make_community(tmp_path, ["cab-demo-01"])


def test_daemon_with_sync_section(community: Community, tmp_path: Path) -> None:
    from edge.config import load_config
    from edge.daemon import run_daemon

    text = (ROOT / "config" / "cabinet.example.toml").read_text()
    text = re.sub(r'(?m)^db = "[^"]*"', f'db = "{(tmp_path / "cab.db").as_posix()}"', text)
    text = text.replace("residents = true", "residents = false")
    text = text.replace("unlock_window_s = 15.0", "unlock_window_s = 1.0")
    files = community.broker.files
    text += (
        "\n[sync]\n"
        'host = "127.0.0.1"\n'
        f"port = {community.broker.port}\n"
        f'password_file = "{files.password_file("cab-demo-01")}"\n'
        f'signing_key = "{community.cabinet_key("cab-demo-01")}"\n'
        f'backend_public_key = "{community.backend_public}"\n'
    )
    cfg = tmp_path / "cabinet.toml"
    cfg.write_text(text)
    config = load_config(cfg)

    bad = load_config(cfg)
    bad.sync["window"] = 0
    with pytest.raises(ConfigError, match=r"cabinet\.toml: sync\.window"):
        run_daemon(bad, duration=0.1)

    ing = Ingest(load_backend_config(community.ingest_config()))
    ing.start()
    stop = threading.Event()
    daemon = threading.Thread(target=run_daemon, args=(config,), kwargs={"stop": stop})
    daemon.start()
    cmdr = Commander(
        community.broker.settings("backend"), load_private_key(community.backend_key_path)
    )
    cmdr.start()
    try:

        def ask(name: str, args: dict[str, Any]) -> dict[str, Any]:
            for _ in range(20):  # the daemon may still be connecting
                cmd = cmdr.send("cab-demo-01", name, args)
                r = cmdr.wait(cmd["nonce"], 1.0)
                if r is not None:
                    r["_nonce"] = cmd["nonce"]
                    return r
            raise AssertionError(f"no result for {name}")

        r = ask("unlock", {"resident": "r-42"})
        assert r["ok"] and r["status"] == "unlocked", r
        final = cmdr.wait(r["_nonce"], 10, final=True)
        assert final is not None and final["status"] == "door_never_opened"
        seq = final["data"]["seq"]
        wait_for(lambda: ing.db.head("cab-demo-01")[0] >= seq, 10, "the record ingested")
        body = parse_record(ing.db.records("cab-demo-01")[seq - 1])["body"]
        assert body["resident"] == "r-42" and "unlock_unused" in body["flags"]

        r = ask("set_prices", {"prices": {"1": 750}})
        assert r["ok"] and r["status"] == "done", r
        r = ask("set_prices", {"prices": {"9": 750}})
        assert r["reason"] == "bad_args"
        r = ask("set_planogram", {"lanes": [{"lane": 4, "sku": "chili-200", "price": 450}]})
        assert r["ok"], r
        r = ask("tare", {"lanes": [2]})
        assert r["ok"] and "2" in r["data"]["tared"], r
        r = ask("restock", {"operator": "op-1"})
        assert r["ok"] and r["data"]["role"] == "operator", r
        r = ask("unlock", {"resident": "r-43"})
        assert r["reason"] == "busy"
    finally:
        cmdr.stop()
        stop.set()
        daemon.join(15)
        ing.stop()
    assert not daemon.is_alive()

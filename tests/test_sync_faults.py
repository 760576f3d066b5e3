"""Exactly once under faults, with real processes: broker, cabinet uplinks and ingests get killed.

Every test drains simulated cabinets (``python -m cloud_sync.simcab``, real
cabinet stores and uplinks) into ``freshbox ingest`` processes through a real
Mosquitto, kills something with SIGKILL at seeded random instants, restarts it
on the same data, and then requires: every record each cabinet issued is stored
exactly once, every outbox is empty (acked), every cabinet store is consistent,
and ``freshbox ledger verify --db`` passes.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt import Community, child_env, make_community, wait_for

from cloud_sync.ingest import IngestDB
from edge.store import CabinetStore

pytestmark = pytest.mark.slow

CABS = ["cab-f1", "cab-f2", "cab-f3"]


@pytest.fixture(name="community")
def _community(tmp_path: Path) -> Iterator[Community]:
    yield from make_community(tmp_path, CABS)


def _issued(community: Community) -> dict[str, int]:
    out = {}
    for cab in CABS:
        with CabinetStore(community.cab_dir / f"{cab}.db", cabinet_id=cab) as store:
            head = store.outbox_head()
            assert head.acked_upto == head.last_seq, f"{cab}: outbox not drained: {head}"
            assert store.check_consistency() == []
            out[cab] = head.last_seq
    return out


def _check_exactly_once(community: Community, target: int) -> None:
    issued = _issued(community)
    assert all(n >= target for n in issued.values()), issued
    db = IngestDB(community.ingest_db)
    try:
        for cab, n in issued.items():
            seqs = [
                int(r[0])
                for r in db.query("SELECT seq FROM records WHERE cabinet = ? ORDER BY seq", [cab])
            ]
            assert seqs == list(range(1, n + 1)), f"{cab}: stored {len(seqs)} of {n}"
            assert db.head(cab)[0] == n and not db.head(cab)[2]
        assert db.counts()["held"] == 0 and db.counts()["quarantine"] == 0
    finally:
        db.close()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshbox_cli",
            "ledger",
            "verify",
            "--db",
            str(community.ingest_db),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"chains verified {len(CABS)}/{len(CABS)}" in run.stdout


def _finish(community: Community, target: int, timeout: float = 60.0) -> None:
    """Run the cabinets once more until everything they issued is acked."""
    proc = community.spawn_cabinets(
        CABS, "--target", str(target), "--exit-when-acked", log=community.root / "simcab.log"
    )
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"cabinets did not drain within {timeout:g} s")
    assert proc.returncode == 0


def test_broker_killed_and_restarted_mid_drain(community: Community) -> None:
    rng = random.Random(1128)
    target = 500
    community.spawn_ingest(community.ingest_config(), log=community.root / "ingest.log")
    cabs = community.spawn_cabinets(
        CABS, "--target", str(target), "--exit-when-acked", log=community.root / "simcab.log"
    )
    db = IngestDB(community.ingest_db)
    try:
        for _ in range(3):
            wait_for(lambda: db.counts()["records"] > 0, 30, "records flowing")
            time.sleep(rng.uniform(0.2, 1.2))
            community.broker.kill(signal.SIGKILL)
            time.sleep(rng.uniform(0.1, 0.8))
            community.broker.start()
        cabs.wait(90)
        assert cabs.returncode == 0
    finally:
        db.close()
    _check_exactly_once(community, target)


def test_uplink_killed_at_random_instants_resumes_exactly(community: Community) -> None:
    rng = random.Random(20261128)
    target = 400
    community.spawn_ingest(community.ingest_config(), log=community.root / "ingest.log")
    for _ in range(8):
        proc = community.spawn_cabinets(
            CABS, "--target", str(target), log=community.root / "simcab.log"
        )
        if rng.random() < 0.5:  # sometimes kill during start-up (recovery, connect)
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            assert proc.stdout is not None
            proc.stdout.readline()
            time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    _finish(community, target)
    _check_exactly_once(community, target)


def test_ingest_killed_at_random_instants_with_a_second_ingest(community: Community) -> None:
    rng = random.Random(77)
    target = 500
    config = community.ingest_config()
    steady = community.spawn_ingest(config, log=community.root / "ingest-steady.log")
    cabs = community.spawn_cabinets(
        CABS, "--target", str(target), "--exit-when-acked", log=community.root / "simcab.log"
    )
    db = IngestDB(community.ingest_db)
    try:
        for _ in range(6):
            victim = community.spawn_ingest(config, log=community.root / "ingest-victim.log")
            time.sleep(rng.uniform(0.3, 1.2))
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            if rng.random() < 0.5:  # sometimes the steady one goes too, restarted at once
                steady.send_signal(signal.SIGKILL)
                steady.wait(10)
                steady = community.spawn_ingest(config, log=community.root / "ingest-steady.log")
        cabs.wait(90)
        assert cabs.returncode == 0
    finally:
        db.close()
    _check_exactly_once(community, target)

"""The ingest's verify/dedupe/chain logic, message by message (no broker: ``Ingest.process``).

Tampered, reordered, duplicated, replayed, forged and misrouted records are
rejected or quarantined; gaps are held and trigger a signed ``resend``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pg import postgres_schema

from cloud_sync import topics
from cloud_sync.canonical import canonical_bytes
from cloud_sync.config import BrokerSettings
from cloud_sync.ingest import BackendConfig, Enrolled, Ingest
from cloud_sync.keys import generate_private_key, public_key_text, save_private_key
from cloud_sync.records import ZERO_HASH, record_hash, seal, verify_command
from freshbox_cli import main

CAB = "cab-in-01"
OTHER = "cab-in-02"
T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)


def chain(key: Any, n: int, cab: str = CAB, start_prev: str = ZERO_HASH) -> list[dict[str, Any]]:
    out, prev = [], start_prev
    for seq in range(1, n + 1):
        kind = "sale" if seq % 3 else "event"
        rec = seal(cab, seq, kind, T0 + timedelta(seconds=seq), prev, {"n": seq}, key)
        prev = record_hash(rec)
        out.append(rec)
    return out


def msg(rec: dict[str, Any], cab: str | None = None) -> tuple[str, bytes]:
    topic = (topics.sales if rec["kind"] == "sale" else topics.events)(cab or rec["cabinet"])
    return topic, canonical_bytes(rec)


class Sent:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))


@pytest.fixture
def keys() -> dict[str, Any]:
    return {CAB: generate_private_key(), OTHER: generate_private_key()}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The chain store on a SQLite file and on a PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "ingest.db")
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def ingest(tmp_path: Path, keys: dict[str, Any], database: str) -> Any:
    backend = generate_private_key()
    save_private_key(backend, tmp_path / "backend.key")
    config = BackendConfig(
        source="test",
        broker=BrokerSettings("127.0.0.1", 1),
        signing_key=tmp_path / "backend.key",
        db=database,
        resend_after_s=0.0,
        resend_interval_s=0.0,
        cabinets=tuple(Enrolled(c, public_key_text(k)) for c, k in keys.items()),
    )
    ing = Ingest(config)
    ing._client = Sent()  # type: ignore[assignment]
    ing.backend_public = backend.public_key()  # type: ignore[attr-defined]
    yield ing
    ing.db.close()


def stored(ing: Any, cab: str = CAB) -> list[int]:
    return [json.loads(t)["seq"] for t in ing.db.records(cab)]


def acks(ing: Any, cab: str = CAB) -> list[int]:
    return [json.loads(p)["upto"] for t, p in ing._client.published if t == topics.ack(cab)]


def test_in_order_stored_and_acked(ingest: Any, keys: dict[str, Any]) -> None:
    recs = chain(keys[CAB], 10)
    heads = ingest.process([msg(r) for r in recs])
    assert heads[CAB] == (10, record_hash(recs[-1]))
    assert stored(ingest) == list(range(1, 11))
    assert acks(ingest) == [10]
    assert ingest.db.counts()["alarms"] == 0


def test_duplicates_and_replays_acked_never_stored_twice(ingest: Any, keys: dict[str, Any]) -> None:
    recs = chain(keys[CAB], 5)
    ingest.process([msg(r) for r in recs])
    ingest.process([msg(recs[2]), msg(recs[2]), msg(recs[4])])  # redelivery / replay
    # the same record re-encoded differently on the wire is the same record
    pretty = json.dumps(recs[1], indent=2).encode()
    ingest.process([(topics.sales(CAB), pretty)])
    assert stored(ingest) == [1, 2, 3, 4, 5]
    assert ingest.stats.duplicates == 4
    assert acks(ingest)[-2:] == [5, 5]
    assert ingest.db.counts()["alarms"] == 0


def test_reordered_records_are_held_then_stored(ingest: Any, keys: dict[str, Any]) -> None:
    recs = chain(keys[CAB], 6)
    ingest.process([msg(recs[3]), msg(recs[5])])
    assert stored(ingest) == [] and ingest.db.counts()["held"] == 2
    ingest.process([msg(recs[0]), msg(recs[1])])
    assert stored(ingest) == [1, 2]
    ingest.process([msg(recs[4]), msg(recs[2])])
    assert stored(ingest) == [1, 2, 3, 4, 5, 6]
    assert ingest.db.counts()["held"] == 0
    assert acks(ingest) == [2, 6]  # never past a gap


def test_gap_asks_for_a_signed_resend(ingest: Any, keys: dict[str, Any]) -> None:
    recs = chain(keys[CAB], 5)
    ingest.process([msg(recs[0]), msg(recs[3])])
    assert ingest.check_gaps() == 1
    cmds = [json.loads(p) for t, p in ingest._client.published if t == topics.cmd(CAB)]
    assert len(cmds) == 1 and cmds[0]["name"] == "resend"
    assert cmds[0]["args"] == {"from_seq": 2}
    verify_command(cmds[0], ingest.backend_public, datetime.now(UTC), set(), cabinet_id=CAB)


def test_tampered_and_forged_records_are_rejected_with_alarms(
    ingest: Any, keys: dict[str, Any]
) -> None:
    recs = chain(keys[CAB], 3)
    tampered = dict(recs[0], body={"n": 999})
    forged = chain(generate_private_key(), 1)[0]  # right shape, wrong key
    ingest.process([msg(tampered), msg(forged), msg(forged)])
    assert stored(ingest) == []
    assert ingest.stats.rejected == {"bad_signature": 3}
    alarms = ingest.db.alarms()
    assert [a["reason"] for a in alarms] == ["bad_signature", "bad_signature"]  # deduplicated
    ingest.process([msg(r) for r in recs])  # the genuine records still go through
    assert stored(ingest) == [1, 2, 3]


def test_malformed_misrouted_and_unknown(ingest: Any, keys: dict[str, Any]) -> None:
    recs = chain(keys[CAB], 2)
    stranger = chain(generate_private_key(), 1, cab="cab-nobody")[0]
    ingest.process(
        [
            (topics.sales(CAB), b"{not json"),
            (topics.sales(CAB), b'{"v":1,"v":1}'),
            msg(recs[0], cab=OTHER),  # on another cabinet's topic
            (topics.events(CAB), canonical_bytes(recs[0])),  # a sale on events
            msg(stranger),
        ]
    )
    assert ingest.stats.rejected == {
        "malformed": 3,
        "wrong_cabinet": 1,
        "unknown_cabinet": 1,
    }
    assert stored(ingest) == [] and stored(ingest, OTHER) == []
    quarantined = ingest.db.query("SELECT cabinet, reason FROM quarantine")
    assert [tuple(r) for r in quarantined] == [("cab-nobody", "unknown_cabinet")]


@pytest.mark.parametrize("where", ["stored", "held"])
def test_fork_quarantines_the_cabinet(ingest: Any, keys: dict[str, Any], where: str) -> None:
    recs = chain(keys[CAB], 6)
    ingest.process([msg(r) for r in recs[:3]])
    if where == "held":
        ingest.process([msg(recs[4])])
    # the cabinet's key signed another record 5 (or 2): a fork only the key holder can make
    seq = 5 if where == "held" else 2
    prev = record_hash(recs[seq - 2])
    other = seal(CAB, seq, "event", T0, prev, {"n": -1}, keys[CAB])
    ingest.process([msg(other)])
    head, _, quarantined = ingest.db.head(CAB)
    assert quarantined and head == 3
    assert ingest.db.alarms()[-1]["reason"] == "conflicting_duplicate"
    ingest.process([msg(r) for r in recs[3:]])  # later records are quarantined, not stored
    assert stored(ingest) == [1, 2, 3]
    assert max(acks(ingest)) == 3
    reasons = {r[0] for r in ingest.db.query("SELECT reason FROM quarantine")}
    assert "after_fork" in reasons
    # other cabinets are unaffected
    ingest.process([msg(r) for r in chain(keys[OTHER], 2, cab=OTHER)])
    assert stored(ingest, OTHER) == [1, 2]


def test_prev_mismatch_quarantines(ingest: Any, keys: dict[str, Any]) -> None:
    recs = chain(keys[CAB], 2)
    ingest.process([msg(recs[0])])
    wrong = seal(CAB, 2, "sale", T0, "f" * 64, {"n": 2}, keys[CAB])
    ingest.process([msg(wrong)])
    assert ingest.db.head(CAB) == (1, record_hash(recs[0]), True)
    assert ingest.db.alarms()[-1]["reason"] == "prev_mismatch"


def test_ledger_verify_db(
    ingest: Any, keys: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ingest.process([msg(r) for r in chain(keys[CAB], 4)])
    ingest.process([msg(r) for r in chain(keys[OTHER], 3, cab=OTHER)])
    db = str(ingest.config.db)
    assert main(["ledger", "verify", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "chains verified 2/2" in out
    # tamper with a stored record behind the ingest's back
    row = ingest.db.query(
        "SELECT record_json FROM records WHERE cabinet = ? AND seq = 2", [CAB]
    )[0][0]
    ingest.db.execute(
        "UPDATE records SET record_json = ? WHERE cabinet = ? AND seq = 2",
        [row.replace('"n":2', '"n":3'), CAB],
    )
    assert main(["ledger", "verify", "--db", db]) == 1
    out = capsys.readouterr().out
    assert "bad_signature" in out and "chains verified 1/2" in out
    assert main(["ledger", "verify", "--db", db, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert main(["ledger", "verify", "--db", str(Path(db).with_name("none.db"))]) == 2

"""Tests of edge.store.CabinetStore on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from edge.errors import StoreError
from edge.store import (
    APPLICATION_ID,
    MIGRATION_SET,
    MIGRATIONS,
    CabinetStore,
    InventoryRow,
    iso_utc,
    known_migrations,
)

CAB = "cab-0001"


class Clock:
    """An injected UTC wall clock that advances 1 ms per reading."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 28, 10, 15, 30, 123000, tzinfo=UTC)

    def __call__(self) -> datetime:
        now = self.t
        self.t += timedelta(milliseconds=1)
        return now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cabinet.db"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Iterator[CabinetStore]:
    with CabinetStore(db_path, cabinet_id=CAB, now=clock) as s:
        yield s


def sale(
    session_id: str, lanes: dict[int, tuple[int, int]] | None = None, **overrides: Any
) -> dict[str, Any]:
    """finish_session keyword arguments: ``lanes`` maps lane -> (qty, unit price fen)."""
    lanes = {1: (2, 690)} if lanes is None else lanes
    lines: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    for lane, (qty, price) in lanes.items():
        weight = 500.9 * qty
        lines.append(
            {
                "lane": lane,
                "sku": f"sku-{lane}",
                "qty": qty,
                "weight_g": weight,
                "unit_price_fen": price,
                "amount_fen": qty * price,
            }
        )
        evidence.append(
            {"lane": lane, "before_g": 3000.0, "after_g": 3000.0 - weight, "delta_g": -weight}
        )
    total = sum(line["amount_fen"] for line in lines)
    kwargs: dict[str, Any] = {
        "closed_at": 19.6,
        "billed_at": 20.31,
        "total_fen": total,
        "flags": [],
        "lines": lines,
        "evidence": evidence,
        "payload": {"session_id": session_id, "total_fen": total, "lines": lines},
    }
    kwargs.update(overrides)
    return kwargs


def opened(store: CabinetStore, session_id: str, *, closed: bool = True) -> None:
    store.begin_session(session_id, "r-17", "resident", 12.35)
    store.mark_opened(session_id, 13.1, {1: 3000.0, 2: 3000.0, 3: 812.5})
    if closed:
        store.mark_closed(session_id, 19.6)


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection (foreign keys off) for inspecting or tampering with the file."""
    return sqlite3.connect(path, isolation_level=None)


# ---------------------------------------------------------------- opening


def test_pragmas_wal_and_synchronous_full(store: CabinetStore, db_path: Path) -> None:
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    # WAL is a property of the file: a fresh connection sees it too
    with raw(db_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_recorded_and_not_reapplied(db_path: Path) -> None:
    CabinetStore(db_path, cabinet_id=CAB).close()
    with raw(db_path) as conn:
        first = conn.execute(
            "SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id"
        ).fetchall()
    assert [(s, n) for s, n, _ in first] == [(MIGRATION_SET, n) for n in known_migrations()]
    assert known_migrations() == ["0001_sessions_inventory", "0002_events_outbox"]

    with CabinetStore(db_path, cabinet_id=CAB) as store:
        assert MIGRATIONS.pending(store.db) == []
        store.begin_session("S1", "r-1", "resident", 1.0)
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        assert store.session("S1") is not None
    with raw(db_path) as conn:
        again = conn.execute(
            "SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id"
        ).fetchall()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert again == first


def test_upgrade_applies_only_pending_migrations(db_path: Path) -> None:
    db = Database(db_path)
    MIGRATIONS.apply(db, stop_before="0002_events_outbox")
    db.execute("INSERT INTO meta (key, value) VALUES ('cabinet_id', ?)", [CAB])
    assert db["sessions"].exists() and not db["outbox"].exists()
    db.close()
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        assert [m.name for m in MIGRATIONS.applied(store.db)] == known_migrations()
        assert store.record_event(1.0, "boot") == 1


def test_newer_schema_is_refused(db_path: Path) -> None:
    CabinetStore(db_path, cabinet_id=CAB).close()
    with raw(db_path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
            [MIGRATION_SET, "0099_from_the_future", "2030-01-01"],
        )
    with pytest.raises(StoreError, match="newer") as info:
        CabinetStore(db_path, cabinet_id=CAB)
    assert str(db_path) in str(info.value)
    assert "0099_from_the_future" in str(info.value)


def test_garbage_file_is_refused_with_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database at all\n" * 200)
    with pytest.raises(StoreError) as info:
        CabinetStore(path, cabinet_id=CAB)
    assert str(path) in str(info.value)
    assert path.read_bytes().startswith(b"this is not")  # left untouched


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="not a freshbox cabinet store") as info:
        CabinetStore(path, cabinet_id=CAB)
    assert str(path) in str(info.value)


def test_other_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("PRAGMA application_id = 1234")
    with pytest.raises(StoreError, match="not a freshbox") as info:
        CabinetStore(path, cabinet_id=CAB)
    assert str(path) in str(info.value)


def test_locked_database_is_refused_with_path(db_path: Path) -> None:
    holder = raw(db_path)
    holder.execute("CREATE TABLE x (a)")  # rollback-journal mode; switching to WAL needs a lock
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked") as info:
            CabinetStore(db_path, cabinet_id=CAB, timeout=0.1)
        assert str(db_path) in str(info.value)
    finally:
        holder.rollback()
        holder.close()


def test_writer_lock_held_elsewhere_surfaces_as_store_error(
    store: CabinetStore, db_path: Path
) -> None:
    other = raw(db_path)
    other.execute("BEGIN IMMEDIATE")
    try:
        store.db.conn.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(StoreError, match="locked") as info:
            store.begin_session("S1", "r-1", "resident", 1.0)
        assert str(db_path) in str(info.value)
    finally:
        other.rollback()
        other.close()
    store.begin_session("S1", "r-1", "resident", 1.0)  # usable again once released
    assert store.check_consistency() == []


def test_directory_and_missing_parent_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=str(tmp_path)):
        CabinetStore(tmp_path, cabinet_id=CAB)
    missing = tmp_path / "no" / "such" / "dir" / "c.db"
    with pytest.raises(StoreError) as info:
        CabinetStore(missing, cabinet_id=CAB)
    assert str(missing) in str(info.value)


def test_store_belongs_to_one_cabinet(db_path: Path) -> None:
    CabinetStore(db_path, cabinet_id=CAB).close()
    with pytest.raises(StoreError, match="belongs to cabinet"):
        CabinetStore(db_path, cabinet_id="cab-9999")


def test_closed_store_raises(db_path: Path) -> None:
    store = CabinetStore(db_path, cabinet_id=CAB)
    store.close()
    store.close()  # twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.open_sessions()


def test_iso_utc_format() -> None:
    assert iso_utc(datetime(2026, 11, 28, 10, 15, 30, 123999, tzinfo=UTC)) == (
        "2026-11-28T10:15:30.123Z"
    )
    beijing = timezone(timedelta(hours=8))
    assert iso_utc(datetime(2026, 11, 28, 18, 15, 30, 0, tzinfo=beijing)) == (
        "2026-11-28T10:15:30.000Z"
    )
    assert iso_utc(datetime(2026, 11, 28, 10, 15, 30)) == "2026-11-28T10:15:30.000Z"


# --------------------------------------------------------------- sessions


def test_full_session_is_billed_in_one_go(store: CabinetStore, clock: Clock) -> None:
    clock.t = datetime(2026, 11, 28, 10, 15, 30, 123456, tzinfo=UTC)
    opened(store, "S1")
    inv = {1: InventoryRow(lane=1, sku="sku-1", mode="unit", level_g=1998.2, count=4)}
    kwargs = sale("S1", {1: (2, 690), 3: (1, 1280)}, flags=["needs_review"], inventory=inv)
    seq = store.finish_session("S1", **kwargs)
    assert seq == 1

    row = store.session("S1")
    assert row is not None
    assert row.state == "billed"
    assert row.cabinet_id == CAB
    assert (row.unlocked_at, row.opened_at, row.closed_at, row.billed_at) == (
        12.35,
        13.1,
        19.6,
        20.31,
    )
    assert row.unlocked_iso == "2026-11-28T10:15:30.123Z"  # the injected clock, in ms
    assert row.opened_iso == "2026-11-28T10:15:30.124Z"
    assert row.closed_iso == "2026-11-28T10:15:30.125Z"
    assert row.billed_iso is not None and row.billed_iso > row.closed_iso
    assert row.total_fen == 2660
    assert row.flags == ["needs_review"]
    assert row.baseline == {1: 3000.0, 2: 3000.0, 3: 812.5}
    assert row.outbox_seq == seq
    assert not row.recovered

    lines = store.sale_lines("S1")
    assert [(ln.lane, ln.sku, ln.qty, ln.amount_fen) for ln in lines] == [
        (1, "sku-1", 2, 1380),
        (3, "sku-3", 1, 1280),
    ]
    assert sum(ln.amount_fen for ln in lines) == row.total_fen
    evidence = store.evidence("S1")
    assert [(e.lane, e.delta_g) for e in evidence] == [(1, -1001.8), (3, -500.9)]

    assert store.inventory()[1].count == 4
    assert store.inventory()[1].updated_t == 20.31

    (out,) = store.outbox_pending()
    assert (out.seq, out.kind, out.ref, out.t) == (seq, "sale", "S1", 20.31)
    assert out.payload == json.loads(json.dumps(kwargs["payload"]))
    assert store.open_sessions() == []
    assert store.check_consistency() == []


def test_finish_straight_from_open_and_tracked_items(store: CabinetStore) -> None:
    opened(store, "S1", closed=False)
    kwargs = sale("S1", {2: (2, 450)})
    kwargs["lines"][0]["items"] = [501.2, 500.6]
    store.finish_session("S1", **kwargs)
    row = store.session("S1")
    assert row is not None and row.state == "billed" and row.closed_at == 19.6
    assert store.sale_lines("S1")[0].items == [501.2, 500.6]


def test_empty_session_bills_zero(store: CabinetStore) -> None:
    opened(store, "S1")
    store.finish_session("S1", **sale("S1", {}))
    row = store.session("S1")
    assert row is not None and row.total_fen == 0
    assert store.sale_lines("S1") == [] and store.evidence("S1") == []
    assert store.check_consistency() == []


def test_state_machine_is_enforced(store: CabinetStore) -> None:
    with pytest.raises(StoreError, match="unknown session"):
        store.mark_opened("nope", 1.0, {})
    store.begin_session("S1", "r-1", "resident", 1.0)
    with pytest.raises(StoreError, match="already exists"):
        store.begin_session("S1", "r-1", "resident", 1.0)
    with pytest.raises(StoreError, match="cannot close"):
        store.mark_closed("S1", 2.0)
    with pytest.raises(StoreError, match="resident must be a string"):
        store.begin_session("S9", None, "resident", 1.0)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="cannot be billed"):
        store.finish_session("S1", **sale("S1"))
    store.mark_opened("S1", 2.0, {1: 3000.0})
    with pytest.raises(StoreError, match="cannot open"):
        store.mark_opened("S1", 2.0, {1: 3000.0})
    store.mark_closed("S1", 3.0)
    store.mark_closed("S1", 4.0)  # again (restart while settling): harmless, first time kept
    row = store.session("S1")
    assert row is not None and row.closed_at == 3.0
    with pytest.raises(StoreError, match="cannot expire"):
        store.expire_session("S1", 3.0, {})
    with pytest.raises(StoreError, match="unknown role"):
        store.begin_session("S2", "r-1", "thief", 1.0)
    assert store.check_consistency() == []


def test_forced_and_operator_roles(store: CabinetStore) -> None:
    store.begin_session("F1", "", "forced", 1.0)  # nobody to charge
    store.begin_session("O1", "op-3", "operator", 2.0)
    assert [(s.session_id, s.role) for s in store.open_sessions()] == [
        ("F1", "forced"),
        ("O1", "operator"),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda k: k.update(total_fen=1), "sum to 1380 fen, total_fen is 1"),
        (lambda k: k["lines"][0].update(amount_fen=13.8), "amount_fen must be an integer"),
        (lambda k: k["lines"][0].update(qty=True), "qty must be an integer"),
        (lambda k: k["lines"][0].update(weight_g=float("nan")), "weight_g must be finite"),
        (lambda k: k["lines"][0].pop("sku"), "missing 'sku'"),
        (lambda k: k["lines"].append(dict(k["lines"][0])), "appears twice"),
        (lambda k: k.update(evidence=[]), "no evidence for lanes"),
        (lambda k: k["evidence"][0].update(after_g=0.0), "!= after"),
        (lambda k: k["payload"].update(session_id="S2"), "payload is for session"),
        (lambda k: k["payload"].update(total_fen=5), "payload total_fen"),
        (lambda k: k["payload"].update(x=object()), "not JSON-serialisable"),
        (lambda k: k["payload"].update(x=float("inf")), "not JSON-serialisable"),
        (lambda k: k.update(flags="needs_review"), "list of strings"),
        (lambda k: k.update(billed_at=float("nan")), "billed_at must be finite"),
        (
            lambda k: k.update(inventory={2: InventoryRow(1, "sku-1", "unit", 1.0)}),
            "inventory key 2",
        ),
        (
            lambda k: k.update(inventory={1: InventoryRow(1, "sku-1", "bulk", 1.0)}),  # type: ignore[arg-type]
            "unknown mode",
        ),
    ],
)
def test_bad_bills_are_refused_and_nothing_is_written(
    store: CabinetStore, mutate: Callable[[dict[str, Any]], Any], message: str
) -> None:
    opened(store, "S1")
    kwargs = sale("S1")
    mutate(kwargs)
    with pytest.raises(StoreError, match=message):
        store.finish_session("S1", **kwargs)
    row = store.session("S1")
    assert row is not None and row.state == "closed"
    assert store.outbox_pending() == []
    assert store.sale_lines("S1") == [] and store.evidence("S1") == []
    assert store.outbox_state().last_seq == 0  # the seq was rolled back too: no gap
    assert store.check_consistency() == []
    assert store.finish_session("S1", **sale("S1")) == 1  # still billable


def test_finish_is_idempotent_returning_existing_seq(store: CabinetStore) -> None:
    opened(store, "S1")
    seq = store.finish_session("S1", **sale("S1"))
    store.record_event(30.0, "door_open_too_long")
    assert store.finish_session("S1", **sale("S1")) == seq
    assert len(store.outbox_pending()) == 2
    assert len(store.sale_lines("S1")) == 1
    with pytest.raises(StoreError, match="already billed at 1380 fen"):
        store.finish_session("S1", **sale("S1", {1: (1, 690)}))
    store.outbox_ack(seq)  # still idempotent after the outbox row is gone
    assert store.finish_session("S1", **sale("S1")) == seq
    assert store.check_consistency() == []


def test_expire_session(store: CabinetStore) -> None:
    store.begin_session("S1", "r-1", "resident", 1.0)
    seq = store.expire_session("S1", 16.0, {"session_id": "S1", "flags": ["unlock_unused"]})
    row = store.session("S1")
    assert row is not None
    assert (row.state, row.total_fen, row.flags, row.expired_at) == (
        "expired",
        0,
        ["unlock_unused"],
        16.0,
    )
    (out,) = store.outbox_pending()
    assert (out.seq, out.kind, out.ref) == (seq, "sale", "S1")
    assert store.expire_session("S1", 16.0, {}) == seq  # idempotent
    with pytest.raises(StoreError, match="cannot be billed: state is expired"):
        store.finish_session("S1", **sale("S1"))
    with pytest.raises(StoreError, match="payload total_fen"):
        store.begin_session("S2", "r-1", "resident", 1.0)
        store.expire_session("S2", 16.0, {"total_fen": 100})
    assert store.open_sessions()[0].session_id == "S2"
    assert store.check_consistency() == []


def test_open_sessions_survive_reopen_with_baseline(db_path: Path) -> None:
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        store.begin_session("A", "r-1", "resident", 1.0)
        opened(store, "B", closed=False)
        opened(store, "C")
        opened(store, "D")
        store.finish_session("D", **sale("D"))
    # power cut here: a new process opens the file
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        rows = store.open_sessions()
        assert [(r.session_id, r.state) for r in rows] == [
            ("A", "unlocked"),
            ("B", "open"),
            ("C", "closed"),
        ]
        assert rows[0].baseline == {}
        assert rows[1].baseline == {1: 3000.0, 2: 3000.0, 3: 812.5}
        store.mark_recovered("B")
        with pytest.raises(StoreError, match="not open"):
            store.mark_recovered("D")
        store.finish_session("B", **sale("B", flags=["needs_review"]))
        row = store.session("B")
        assert row is not None and row.recovered and row.state == "billed"
        assert [s.session_id for s in store.sessions(state="billed")] == ["B", "D"]
        store.mark_closed("C", 30.0)  # already closed before the power cut: harmless
        store.finish_session("C", **sale("C", flags=["recovered"]))
        row = store.session("C")
        assert row is not None and row.recovered and row.flags == ["recovered"]
        assert store.check_consistency() == []


# ----------------------------------------------------------------- events


def test_record_event_and_alarms(store: CabinetStore) -> None:
    opened(store, "S1", closed=False)
    s1 = store.record_event(140.0, "door_open_too_long", session_id="S1", data={"open_s": 120.4})
    s2 = store.record_event(150.0, "calibrated", data={"channel": 2})
    s3 = store.record_event(160.0, "drift", severity="warning")
    assert (s1, s2, s3) == (1, 2, 3)

    events = store.events()
    assert [(e.type, e.severity, e.outbox_seq) for e in events] == [
        ("door_open_too_long", "alarm", 1),
        ("calibrated", "info", 2),
        ("drift", "warning", 3),
    ]
    assert events[0].data == {"open_s": 120.4} and events[0].at.endswith("Z")
    assert [e.type for e in store.events(session_id="S1")] == ["door_open_too_long"]
    assert [e.type for e in store.events(type="calibrated")] == ["calibrated"]
    assert [e.id for e in store.events(after_id=1, limit=1)] == [2]

    out = store.outbox_pending()
    assert [(o.kind, o.ref) for o in out] == [("event", "1"), ("event", "2"), ("event", "3")]
    assert out[0].payload == {
        "cabinet_id": CAB,
        "event_id": 1,
        "t": 140.0,
        "at": events[0].at,
        "type": "door_open_too_long",
        "severity": "alarm",
        "session_id": "S1",
        "data": {"open_s": 120.4},
    }

    assert [a.type for a in store.alarms()] == ["door_open_too_long", "drift"]
    assert store.acknowledge_alarm(1) is True
    assert store.acknowledge_alarm(1) is False
    assert [a.type for a in store.alarms()] == ["drift"]
    assert len(store.alarms(include_acknowledged=True)) == 2
    with pytest.raises(StoreError, match="not an alarm"):
        store.acknowledge_alarm(2)
    with pytest.raises(StoreError, match="unknown event"):
        store.acknowledge_alarm(99)
    with pytest.raises(StoreError, match="unknown session"):
        store.record_event(1.0, "loss", session_id="nope")
    with pytest.raises(StoreError, match="unknown severity"):
        store.record_event(1.0, "loss", severity="panic")  # type: ignore[arg-type]
    assert store.check_consistency() == []


# ----------------------------------------------------------------- outbox


def test_outbox_order_and_cumulative_ack(db_path: Path) -> None:
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        expected = []
        for i in range(5):
            sid = f"S{i}"
            opened(store, sid)
            expected.append(("sale", sid, store.finish_session(sid, **sale(sid))))
            expected.append(("event", str(i + 1), store.record_event(float(i), "tick")))
        assert [seq for *_, seq in expected] == list(range(1, 11))
        pending = store.outbox_pending()
        assert [(o.kind, o.ref, o.seq) for o in pending] == expected
        assert [o.seq for o in store.outbox_pending(limit=3)] == [1, 2, 3]
        assert [o.seq for o in store.outbox_pending(limit=3, after_seq=3)] == [4, 5, 6]

        assert store.outbox_ack(4) == 4
        assert [o.seq for o in store.outbox_pending()] == [5, 6, 7, 8, 9, 10]
        assert store.outbox_ack(4) == 0  # duplicate ack
        assert store.outbox_ack(2) == 0  # stale ack
        with pytest.raises(StoreError, match="last seq is 10"):
            store.outbox_ack(11)
        assert store.outbox_ack(10) == 6
        assert store.outbox_pending() == []
        state = store.outbox_state()
        assert (state.acked_upto, state.last_seq, state.pending) == (10, 10, 0)
        assert store.check_consistency() == []
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        assert store.record_event(9.0, "tick") == 11  # never reused, even after acking all
        assert store.check_consistency() == []


# -------------------------------------------------------------- inventory


def test_inventory_set_and_replace(store: CabinetStore) -> None:
    rows = [
        InventoryRow(1, "tomato-500", "unit", 3000.0, count=6),
        InventoryRow(2, "eggs", "tracked", 612.0, items=[61.2, 58.9]),
        InventoryRow(3, "bok-choy", "weighed", 2500.0),
    ]
    store.set_inventory(rows, t=5.0)
    inv = store.inventory()
    assert sorted(inv) == [1, 2, 3]
    assert inv[2].items == [61.2, 58.9] and inv[2].updated_t == 5.0
    assert inv[1].updated_at is not None and inv[1].updated_at.endswith("Z")
    store.set_inventory({3: InventoryRow(3, "bok-choy", "weighed", 2400.0)}, replace=True)
    assert list(store.inventory()) == [3]
    assert store.inventory()[3].level_g == 2400.0
    with pytest.raises(StoreError, match="inventory key 4"):
        store.set_inventory({4: InventoryRow(3, "x", "unit", 1.0)})


# ------------------------------------------------------------ consistency


def _billed_store(path: Path) -> None:
    with CabinetStore(path, cabinet_id=CAB) as store:
        for sid in ("S1", "S2", "S3"):
            opened(store, sid)
            store.finish_session(sid, **sale(sid, {1: (1, 690), 2: (2, 450)}))
        store.record_event(1.0, "loss")
        assert store.check_consistency() == []


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("DELETE FROM outbox WHERE seq = 2", "outbox seq gap not explained by acks"),
        ("DELETE FROM outbox WHERE seq = 2", "billed session S2: outbox row 2 is missing"),
        ("UPDATE sessions SET total_fen = 1 WHERE session_id = 'S1'", "sale lines sum to 1590"),
        ("UPDATE sessions SET total_fen = 1 WHERE session_id = 'S1'", "payload total 1590"),
        ("DELETE FROM sale_lines WHERE session_id = 'S3' AND lane = 2", "sale lines sum to 690"),
        ("DELETE FROM evidence WHERE session_id = 'S2' AND lane = 1", "no evidence for lanes [1]"),
        ("UPDATE evidence SET after_g = 0 WHERE session_id = 'S2' AND lane = 1", "!= 0.0"),
        ("DELETE FROM sessions WHERE session_id = 'S1'", "outbox sale 1: no session S1"),
        ("DELETE FROM sessions WHERE session_id = 'S1'", "foreign key violation in sale_lines"),
        ("UPDATE outbox SET ref = 'S9' WHERE seq = 3", "outbox sale 3: no session S9"),
        ("DELETE FROM events", "outbox event 4: no event 1"),
        ("UPDATE outbox_state SET acked_upto = 2", "outbox seq 1 is still present but was acked"),
        ("UPDATE sqlite_sequence SET seq = 6 WHERE name = 'outbox'", "gap not explained by acks"),
    ],
)
def test_check_consistency_finds_tampering(db_path: Path, tamper: str, expected: str) -> None:
    _billed_store(db_path)
    with raw(db_path) as conn:
        conn.execute(tamper)
    with CabinetStore(db_path, cabinet_id=CAB) as store:
        problems = store.check_consistency()
    assert any(expected in p for p in problems), problems


def test_usable_from_another_thread(store: CabinetStore) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            store.record_event(1.0, "from_thread")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert [o.seq for o in store.outbox_pending()] == [1, 2, 3, 4]


# --------------------------------------------------------------- property

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("sale"), st.integers(0, 3)),
        st.tuples(st.just("expire"), st.just(0)),
        st.tuples(st.just("event"), st.just(0)),
        st.tuples(st.just("ack"), st.integers(0, 12)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_any_sequence_of_calls_stays_consistent(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.db"
        store = CabinetStore(path, cabinet_id=CAB)
        issued: list[int] = []
        acked = 0
        try:
            for i, (op, arg) in enumerate(ops):
                sid = f"S{i}"
                if op == "sale":
                    opened(store, sid)
                    lanes = {lane: (1, 100 * lane) for lane in range(1, arg + 1)}
                    issued.append(store.finish_session(sid, **sale(sid, lanes)))
                elif op == "expire":
                    store.begin_session(sid, "r", "resident", 1.0)
                    issued.append(store.expire_session(sid, 2.0, {}))
                elif op == "event":
                    issued.append(store.record_event(float(i), "tick"))
                elif op == "ack" and issued:
                    upto = issued[min(arg, len(issued) - 1)]
                    store.outbox_ack(upto)
                    acked = max(acked, upto)
                elif op == "reopen":
                    store.close()
                    store = CabinetStore(path, cabinet_id=CAB)
                assert store.check_consistency() == []
            assert issued == list(range(1, len(issued) + 1))
            assert [o.seq for o in store.outbox_pending(limit=1000)] == [
                s for s in issued if s > acked
            ]
        finally:
            store.close()


def test_checkpoint_truncates_the_wal(store: CabinetStore, db_path: Path) -> None:
    opened(store, "S1")
    store.finish_session("S1", **sale("S1"))
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size > 0
    store.checkpoint()
    assert wal.stat().st_size == 0
    with raw(db_path) as conn:  # the data is in the main file now
        assert conn.execute("SELECT state FROM sessions").fetchone() == ("billed",)

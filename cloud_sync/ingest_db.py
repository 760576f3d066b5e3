"""The ingest's chain store: enrolment, per-cabinet heads, records, held and quarantined
records, and alarms, on SQLite or PostgreSQL (``cloud_sync.sqldb``).

The tables (version 1; ``create_v1`` emits them, and the backend's first migration calls
it, so the standalone ingest and the backend share one definition):
``enrolment(cabinet, public_key, key_id, enrolled_at)``, ``heads(cabinet, seq, hash,
quarantined, quarantine_reason, quarantined_at, updated_at)``, ``records(cabinet, seq,
kind, hash, prev, at, record_json, stored_at)`` keyed by (cabinet, seq), ``held``,
``quarantine``, ``alarms``.

Writers serialise: on SQLite every transaction starts with ``BEGIN IMMEDIATE``; on
PostgreSQL it takes ``LOCK TABLE heads IN SHARE ROW EXCLUSIVE MODE`` first. Several
ingest processes therefore see one consistent chain per cabinet. The hot path talks to
the driver's cursor directly (a fifth of the cost of a SQLAlchemy statement); the
statements are written once with ``?`` placeholders and portable SQL (``INSERT ...
ON CONFLICT DO NOTHING`` is understood by both databases).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Connection, Engine

from cloud_sync import topics
from cloud_sync.config import SyncConfigError
from cloud_sync.keys import key_id, public_key_from_text
from cloud_sync.records import ZERO_HASH, format_at
from cloud_sync.sqldb import is_postgres, make_engine

__all__ = ["GoodRecord", "IngestDB", "IngestStats", "StoredHook", "Tx", "create_v1", "metadata"]

log = logging.getLogger("freshbox.sync.ingest")

SCHEMA_VERSION: Final = 1

metadata = MetaData()

enrolment = Table(
    "enrolment",
    metadata,
    Column("cabinet", String(64), primary_key=True),
    Column("public_key", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("enrolled_at", String(32), nullable=False),
)
heads = Table(
    "heads",
    metadata,
    Column("cabinet", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Column("hash", String(64), nullable=False),
    Column("quarantined", Integer, nullable=False, server_default="0"),
    Column("quarantine_reason", Text),
    Column("quarantined_at", String(32)),
    Column("updated_at", String(32), nullable=False),
)
records = Table(
    "records",
    metadata,
    Column("cabinet", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("prev", String(64), nullable=False),
    Column("at", String(32), nullable=False),
    Column("record_json", Text, nullable=False),
    Column("stored_at", String(32), nullable=False),
    PrimaryKeyConstraint("cabinet", "seq"),
    sqlite_with_rowid=False,
)
held = Table(
    "held",
    metadata,
    Column("cabinet", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("prev", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("at", String(32), nullable=False),
    Column("record_json", Text, nullable=False),
    Column("received_at", String(32), nullable=False),
    PrimaryKeyConstraint("cabinet", "seq", "hash"),
    sqlite_with_rowid=False,
)
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cabinet", String(64), nullable=False),
    Column("seq", BigInteger),
    Column("hash", String(64)),
    Column("reason", String(64), nullable=False),
    Column("record_json", Text),
    Column("received_at", String(32), nullable=False),
    UniqueConstraint("cabinet", "seq", "hash"),
)
alarms = Table(
    "alarms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(32), nullable=False),
    Column("cabinet", String(64)),
    Column("seq", BigInteger),
    Column("reason", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("evidence", Text),
    Column("fingerprint", String(32), nullable=False, unique=True),
)


def create_v1(conn: Connection) -> None:
    """Create the version-1 tables that do not exist yet (idempotent)."""
    metadata.create_all(conn, checkfirst=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Tx:
    """One open transaction: ``execute`` with ``?`` placeholders on either database;
    ``conn`` is the SQLAlchemy connection, for hooks that write their own tables."""

    __slots__ = ("_cur", "_pg", "conn")

    def __init__(self, conn: Connection, pg: bool) -> None:
        self.conn = conn
        self._pg = pg
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        self._cur = dbapi.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._pg:
            sql = sql.replace("?", "%s")
        self._cur.execute(sql, tuple(params))
        return self._cur

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())


#: Called inside the storing transaction for every record that joins a chain.
StoredHook = Callable[[Tx, "GoodRecord"], None]

@dataclass(slots=True)
class IngestStats:
    """What one ingest process did (since it started)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    held: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    acks: int = 0
    resends: int = 0
    batches: int = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class GoodRecord:
    cabinet: str
    seq: int
    kind: str
    at: str
    prev: str
    hash: str
    text: str


class IngestDB:
    """The ingest's chain store on SQLite or PostgreSQL; see the module docstring.

    ``target`` is a file path, a database URL or an engine (the backend passes its own).
    ``on_stored`` runs inside the storing transaction for each record that joins a chain.
    """

    def __init__(
        self,
        target: Path | str | Engine,
        *,
        now: Callable[[], datetime] = _utcnow,
        on_stored: StoredHook | None = None,
        on_commit: Callable[[bool], None] | None = None,
    ) -> None:
        self.engine = target if isinstance(target, Engine) else make_engine(target)
        self._own_engine = not isinstance(target, Engine)
        self.pg = is_postgres(self.engine)
        self._now = now
        self.on_stored = on_stored
        self.on_commit = on_commit  # after each write transaction: True committed, False not
        with self.engine.begin() as conn:
            create_v1(conn)

    def close(self) -> None:
        if self._own_engine:
            self.engine.dispose()

    def iso(self) -> str:
        return format_at(self._now())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One writer at a time: ``BEGIN IMMEDIATE`` on SQLite, a ``heads`` table lock on
        PostgreSQL; committed at the end, rolled back on any error."""
        ok = False
        try:
            with self.engine.connect() as conn, conn.begin():
                if self.pg:
                    conn.exec_driver_sql("LOCK TABLE heads IN SHARE ROW EXCLUSIVE MODE")
                yield Tx(conn, self.pg)
            ok = True
        finally:
            if self.on_commit is not None:
                self.on_commit(ok)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one read statement (``?`` placeholders)."""
        with self.engine.connect() as conn:
            rows = Tx(conn, self.pg).all(sql, params)
            conn.rollback()
        return rows

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write statement in its own transaction (operators' repairs, tests)."""
        with self.transaction() as c:
            c.execute(sql, params)

    # ------------------------------------------------------------ enrolment

    def enrol(self, cabinet: str, public_key: str) -> bool:
        """Enrol a cabinet's key; True if new. Another key for an enrolled cabinet is refused."""
        topics.validate_cabinet_id(cabinet)
        key = public_key_from_text(public_key)
        with self.transaction() as c:
            row = c.one("SELECT public_key FROM enrolment WHERE cabinet = ?", [cabinet])
            if row is not None:
                if row[0] != public_key:
                    old = key_id(public_key_from_text(row[0]))
                    raise SyncConfigError(
                        f"cabinet {cabinet} is enrolled with key {old}, not {key_id(key)}: "
                        "re-keying a cabinet is not supported"
                    )
                return False
            c.execute(
                "INSERT INTO enrolment (cabinet, public_key, key_id, enrolled_at)"
                " VALUES (?, ?, ?, ?)",
                [cabinet, public_key, key_id(key), self.iso()],
            )
            return True

    def enrolled(self) -> dict[str, Ed25519PublicKey]:
        rows = self.query("SELECT cabinet, public_key FROM enrolment")
        return {r[0]: public_key_from_text(r[1]) for r in rows}

    # ------------------------------------------------------------ reads

    def head(self, cabinet: str) -> tuple[int, str, bool]:
        rows = self.query("SELECT seq, hash, quarantined FROM heads WHERE cabinet = ?", [cabinet])
        if not rows:
            return (0, ZERO_HASH, False)
        row = rows[0]
        return (int(row[0]), row[1], bool(row[2]))

    def records(self, cabinet: str) -> list[str]:
        rows = self.query(
            "SELECT record_json FROM records WHERE cabinet = ? ORDER BY seq", [cabinet]
        )
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, table in (
            ("records", "records"),
            ("held", "held"),
            ("quarantine", "quarantine"),
            ("alarms", "alarms"),
            ("cabinets", "enrolment"),
        ):
            out[name] = int(self.query(f"SELECT count(*) FROM {table}")[0][0])
        return out

    def alarms(self) -> list[dict[str, Any]]:
        names = ("id", "at", "cabinet", "seq", "reason", "detail")
        rows = self.query("SELECT id, at, cabinet, seq, reason, detail FROM alarms ORDER BY id")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def gaps(self) -> list[tuple[str, int, int, str]]:
        """``(cabinet, head seq, lowest held seq, oldest held received_at)`` of open gaps."""
        rows = self.query(
            "SELECT h.cabinet, h.seq, min(x.seq), min(x.received_at) FROM heads h"
            " JOIN held x ON x.cabinet = h.cabinet WHERE h.quarantined = 0"
            " GROUP BY h.cabinet, h.seq"
        )
        return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]

    # ------------------------------------------------------------ writes

    def alarm(
        self,
        c: Tx,
        cabinet: str | None,
        seq: int | None,
        reason: str,
        detail: str,
        evidence: bytes = b"",
    ) -> None:
        fingerprint = hashlib.sha256(
            f"{cabinet}\0{seq}\0{reason}\0".encode() + evidence
        ).hexdigest()[:32]
        c.execute(
            "INSERT INTO alarms (at, cabinet, seq, reason, detail, evidence, fingerprint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                self.iso(),
                cabinet,
                seq,
                reason,
                detail[:500],
                evidence[:4096].decode("utf-8", "replace"),
                fingerprint,
            ],
        )

    def apply(
        self, c: Tx, cabinet: str, recs: Sequence[GoodRecord], stats: IngestStats
    ) -> tuple[int, str]:
        """Store one cabinet's records of a batch (inside the caller's transaction)."""
        now = self.iso()
        row = c.execute(
            "SELECT seq, hash, quarantined FROM heads WHERE cabinet = ?", [cabinet]
        ).fetchone()
        if row is None:
            c.execute(
                "INSERT INTO heads (cabinet, seq, hash, updated_at) VALUES (?, 0, ?, ?)",
                [cabinet, ZERO_HASH, now],
            )
            head_seq, head_hash, quarantined = 0, ZERO_HASH, False
        else:
            head_seq, head_hash, quarantined = int(row[0]), row[1], bool(row[2])
        start_seq = head_seq
        for r in sorted(recs, key=lambda g: g.seq):
            if r.seq <= head_seq:
                stored = c.execute(
                    "SELECT hash FROM records WHERE cabinet = ? AND seq = ?", [cabinet, r.seq]
                ).fetchone()
                if stored is not None and stored[0] == r.hash:
                    stats.duplicates += 1
                    continue
                if not quarantined:
                    other_hash = "none" if stored is None else str(stored[0])[:16]
                    detail = f"seq {r.seq} already stored with hash {other_hash}..."
                    self._quarantine(c, cabinet, r, "conflicting_duplicate", detail, stats)
                    quarantined = True
                else:
                    self._park(c, r, "conflicting_duplicate")
                continue
            if quarantined:
                self._park(c, r, "after_fork")
                continue
            if r.seq == head_seq + 1:
                if r.prev != head_hash:
                    self._quarantine(
                        c,
                        cabinet,
                        r,
                        "prev_mismatch",
                        f"seq {r.seq} prev {r.prev[:16]}... is not the hash "
                        f"{head_hash[:16]}... of seq {head_seq}",
                        stats,
                    )
                    quarantined = True
                    continue
                other = c.execute(
                    "SELECT hash FROM held WHERE cabinet = ? AND seq = ? AND hash != ?",
                    [cabinet, r.seq, r.hash],
                ).fetchone()
                if other is not None:
                    self._quarantine(
                        c,
                        cabinet,
                        r,
                        "conflicting_duplicate",
                        f"two records with seq {r.seq}",
                        stats,
                    )
                    quarantined = True
                    continue
                self._store(c, r, now)
                stats.stored += 1
                head_seq, head_hash = r.seq, r.hash
                continue
            other = c.execute(
                "SELECT hash FROM held WHERE cabinet = ? AND seq = ? AND hash != ?",
                [cabinet, r.seq, r.hash],
            ).fetchone()
            if other is not None:
                self._quarantine(
                    c, cabinet, r, "conflicting_duplicate", f"two records with seq {r.seq}", stats
                )
                quarantined = True
                continue
            cur = c.execute(
                "INSERT INTO held (cabinet, seq, hash, prev, kind, at, record_json,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [cabinet, r.seq, r.hash, r.prev, r.kind, r.at, r.text, now],
            )
            if cur.rowcount:
                stats.held += 1
            else:
                stats.duplicates += 1
        # records held earlier (perhaps by another ingest process) that now follow the head
        while not quarantined:
            nxt = c.execute(
                "SELECT seq, hash, prev, kind, at, record_json FROM held"
                " WHERE cabinet = ? AND seq <= ? ORDER BY seq",
                [cabinet, head_seq + 1],
            ).fetchall()
            if not nxt:
                break
            progressed = False
            for seq, h, prev, kind, at, text in nxt:
                g = GoodRecord(cabinet, int(seq), kind, at, prev, h, text)
                if g.seq <= head_seq:
                    stored = c.execute(
                        "SELECT hash FROM records WHERE cabinet = ? AND seq = ?", [cabinet, g.seq]
                    ).fetchone()
                    if stored is None or stored[0] != g.hash:
                        self._quarantine(
                            c,
                            cabinet,
                            g,
                            "conflicting_duplicate",
                            f"two records with seq {g.seq}",
                            stats,
                        )
                        quarantined = True
                        break
                    c.execute(
                        "DELETE FROM held WHERE cabinet = ? AND seq = ? AND hash = ?",
                        [cabinet, g.seq, g.hash],
                    )
                    continue
                if g.prev != head_hash:
                    self._quarantine(
                        c,
                        cabinet,
                        g,
                        "prev_mismatch",
                        f"seq {g.seq} prev {g.prev[:16]}... is not the hash "
                        f"{head_hash[:16]}... of seq {head_seq}",
                        stats,
                    )
                    quarantined = True
                    break
                self._store(c, g, now)
                c.execute(
                    "DELETE FROM held WHERE cabinet = ? AND seq = ? AND hash = ?",
                    [cabinet, g.seq, g.hash],
                )
                stats.stored += 1
                head_seq, head_hash = g.seq, g.hash
                progressed = True
            if not progressed:
                break
        if head_seq != start_seq:
            c.execute(
                "UPDATE heads SET seq = ?, hash = ?, updated_at = ? WHERE cabinet = ?",
                [head_seq, head_hash, now, cabinet],
            )
        return head_seq, head_hash

    def _store(self, c: Tx, r: GoodRecord, now: str) -> None:
        c.execute(
            "INSERT INTO records (cabinet, seq, kind, hash, prev, at, record_json, stored_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [r.cabinet, r.seq, r.kind, r.hash, r.prev, r.at, r.text, now],
        )
        if self.on_stored is not None:
            self.on_stored(c, r)

    def _park(self, c: Tx, r: GoodRecord, reason: str) -> None:
        c.execute(
            "INSERT INTO quarantine (cabinet, seq, hash, reason, record_json,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [r.cabinet, r.seq, r.hash, reason, r.text, self.iso()],
        )

    def _quarantine(
        self,
        c: Tx,
        cabinet: str,
        r: GoodRecord,
        reason: str,
        detail: str,
        stats: IngestStats,
    ) -> None:
        now = self.iso()
        self._park(c, r, reason)
        c.execute(
            "INSERT INTO quarantine (cabinet, seq, hash, reason, record_json,"
            " received_at) SELECT cabinet, seq, hash, 'after_fork', record_json, ?"
            " FROM held WHERE cabinet = ? ON CONFLICT DO NOTHING",
            [now, cabinet],
        )
        c.execute("DELETE FROM held WHERE cabinet = ?", [cabinet])
        c.execute(
            "UPDATE heads SET quarantined = 1, quarantine_reason = ?, quarantined_at = ?"
            " WHERE cabinet = ?",
            [f"{reason}: {detail}", now, cabinet],
        )
        self.alarm(
            c,
            cabinet,
            r.seq,
            reason,
            f"cabinet {cabinet} quarantined: {detail}",
            r.text.encode("utf-8"),
        )
        stats.quarantined += 1
        log.error("cabinet %s quarantined at seq %d: %s: %s", cabinet, r.seq, reason, detail)

"""The cabinet's local store: SQLite through sqlite-utils, crash-safe and append-mostly.

Everything a cabinet must not forget lives here: door sessions (with the baseline
levels taken when the door opened, so a bill can still be computed after a power
cut), their sale lines and weight evidence, events and alarms, the shelf
inventory, and the **outbox**: the records waiting to be sent to the backend.

Durability
----------
The database runs in WAL mode with ``synchronous=FULL`` (every commit is on disk
before the call returns) and ``foreign_keys=ON``. Every public write is one
``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, so a crash at any instant leaves
either all of a call's rows or none of them. In particular a bill is written by
:meth:`CabinetStore.finish_session` as one transaction: session row -> ``billed``,
its sale lines, its evidence, the inventory update and its outbox row.

Schema (migration set ``freshbox_edge_store``)
----------------------------------------------
Migrations are decorated functions registered on :data:`MIGRATIONS`
(:class:`sqlite_utils.migrations.Migrations`); each runs in a transaction together
with its record in ``_sqlite_migrations``, and all pending ones are applied under
one ``BEGIN IMMEDIATE`` so two processes opening a new file cannot race. A file
that records a migration this code does not know was written by newer software
and is refused (:class:`~edge.errors.StoreError`).

Times: a column ``*_at`` of type REAL (``unlocked_at``, ``opened_at``, ...; ``t`` in
``events`` and ``outbox``; ``updated_t`` in ``inventory``) is seconds on the
cabinet clock, as the session state machine sees it; a column ``*_iso`` (``at``
in ``events``, ``created_at`` in ``outbox``, ``updated_at`` in ``inventory``) is
the injected UTC wall clock as ISO 8601 with milliseconds,
``2026-11-28T10:15:30.123Z``. Money is integer fen, weights are grams (REAL).

``meta(key, value)``
    ``cabinet_id``: the cabinet this file belongs to (opening it with another
    cabinet id is refused); ``created_at``.
``sessions``
    ``session_id`` TEXT PK (ULID), ``cabinet_id``, ``resident``, ``role``
    (``resident``/``operator``/``forced``), ``state`` (``unlocked`` -> ``open`` ->
    ``closed`` -> ``billed``, or ``unlocked`` -> ``expired``), ``unlocked_at``/
    ``unlocked_iso``, ``opened_at``/``opened_iso``, ``closed_at``/``closed_iso``,
    ``billed_at``/``billed_iso``, ``expired_at``/``expired_iso``, ``total_fen``,
    ``flags`` (JSON list), ``baseline_json`` (JSON object lane -> grams, saved when
    the door opened), ``recovered`` (0/1), ``outbox_seq`` (the seq of the session's
    outbox record; set exactly when the state is ``billed`` or ``expired``, a
    CHECK constraint enforces it, and it survives the outbox row's ack).
``sale_lines``
    ``id``, ``session_id`` FK, ``lane``, ``sku``, ``qty``, ``weight_g``,
    ``unit_price_fen``, ``amount_fen``, ``items_json`` (tracked lanes: the weights
    of the items taken, else NULL); UNIQUE(session_id, lane).
``evidence``
    ``id``, ``session_id`` FK, ``lane``, ``before_g``, ``after_g``, ``delta_g``;
    UNIQUE(session_id, lane).
``events``
    ``id`` INTEGER PK AUTOINCREMENT (never reused), ``t``, ``at``, ``type``,
    ``session_id`` (nullable FK), ``severity`` (``info``/``warning``/``alarm``),
    ``acknowledged`` (0/1), ``acknowledged_at``, ``data_json``, ``outbox_seq``.
    **Alarms are events** whose severity is not ``info``; there is no separate
    alarms table. Acknowledging an alarm is local operator state and is not sent.
``inventory``
    ``lane`` PK, ``sku``, ``mode`` (``unit``/``tracked``/``weighed``), ``level_g``,
    ``count`` (unit lanes), ``items_json`` (tracked lanes: recorded item weights),
    ``updated_t``, ``updated_at``.
``outbox``
    ``seq`` INTEGER PK AUTOINCREMENT (the per-cabinet record sequence, never
    reused), ``kind`` (``sale``/``event``), ``ref`` (session id, or the event id as
    text), ``t``, ``payload_json`` (deterministic JSON: sorted keys, no spaces,
    UTF-8, no NaN), ``created_at``; UNIQUE(kind, ref).
``outbox_state``
    a single row (``id`` = 1): ``acked_upto`` (highest cumulative ack), ``acked_at``.
    Rows with seq <= acked_upto are deleted; the rows left are always exactly
    ``acked_upto + 1 .. last seq``, which :meth:`CabinetStore.check_consistency`
    verifies.

Extending the outbox (signatures, hash chain)
---------------------------------------------
Every outbox row is inserted by :meth:`CabinetStore._insert_outbox`, inside the
transaction of the call that produced it. Signing and chaining later is a new
migration (``ALTER TABLE outbox ADD COLUMN prev_hash/hash/signature``, and
``ALTER TABLE outbox_state ADD COLUMN last_hash``: the chain head survives acks
there) plus filling those columns in ``_insert_outbox``.

Signing and hash chain (migration set ``freshbox_edge_store_signing``)
-----------------------------------------------------------------------
A store opened with a ``signing_key`` (the cabinet's Ed25519 private key,
``[sync] signing_key``) applies the separate migration set
:data:`SIGNING_MIGRATIONS` (applied only then, so a cabinet without sync keeps
the plain schema): ``outbox`` gains ``prev_hash``, ``hash`` and ``record_json``
(the sealed record of ``docs/protocol.md`` section 3, canonical JSON, exactly
what is published) and ``outbox_state`` gains ``last_hash`` (the chain head,
which survives acks). :meth:`CabinetStore._insert_outbox` then seals every new
row inside the transaction that inserts it: ``seq`` is the outbox seq, ``at``
the row's ``created_at``, ``body`` its payload, ``prev`` the previous head.
Rows written while no key was given (``hash`` NULL) are sealed, in seq order,
the next time the store is opened with the key. The uplink reads sealed rows
with :meth:`~CabinetStore.outbox_records`, the head with
:meth:`~CabinetStore.outbox_head` and one row's hash with
:meth:`~CabinetStore.outbox_hash`.

Outbox kinds
------------
A **sale** record is the final record of a session: written by
:meth:`~CabinetStore.finish_session` (state ``billed``) and by
:meth:`~CabinetStore.expire_session` (state ``expired``, flag ``unlock_unused``,
total 0; the backend needs to know the unlock was not used). An **event** record
is written by :meth:`~CabinetStore.record_event`.

Idempotence
-----------
:meth:`~CabinetStore.finish_session` on a session that is already billed with
the same ``total_fen`` writes nothing and **returns the existing seq** (so a
daemon retrying after a crash gets the same answer); a different total, or a
session that expired, raises :class:`~edge.errors.StoreError`.
:meth:`~CabinetStore.expire_session` on an already expired session returns its
seq likewise. :meth:`~CabinetStore.outbox_ack` is cumulative and repeatable.
"""

from __future__ import annotations

import json
import math
import numbers
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from cloud_sync.canonical import canonical_bytes, parse_json, sha256_hex
from cloud_sync.errors import SyncError
from cloud_sync.records import ZERO_HASH, seal
from edge.errors import StoreError
from edge.model import LANE_MODES, LaneMode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_SEVERITY",
    "EVIDENCE_TOLERANCE_G",
    "MIGRATIONS",
    "MIGRATION_SET",
    "SIGNING_MIGRATIONS",
    "SIGNING_MIGRATION_SET",
    "CabinetStore",
    "EventRow",
    "EvidenceRow",
    "InventoryRow",
    "OutboxHead",
    "OutboxKind",
    "OutboxRow",
    "OutboxState",
    "SaleLineRow",
    "SessionRole",
    "SessionRow",
    "SessionState",
    "Severity",
    "SignedOutboxRow",
    "iso_utc",
    "known_migrations",
]

SessionRole = Literal["resident", "operator", "forced"]
SessionState = Literal["unlocked", "open", "closed", "billed", "expired"]
Severity = Literal["info", "warning", "alarm"]
OutboxKind = Literal["sale", "event"]

_ROLES: Final = frozenset(get_args(SessionRole))
_SEVERITIES: Final = frozenset(get_args(Severity))
_OPEN_STATES: Final = ("unlocked", "open", "closed")

#: Written to the SQLite header (``PRAGMA application_id``): ASCII "FBOX".
APPLICATION_ID: Final = 0x46424F58
#: Name of this module's migration set in ``_sqlite_migrations``.
MIGRATION_SET: Final = "freshbox_edge_store"
#: The migration set applied only when the store is opened with a signing key.
SIGNING_MIGRATION_SET: Final = "freshbox_edge_store_signing"
#: Largest accepted |before_g + delta_g - after_g| of an evidence row (rounding).
EVIDENCE_TOLERANCE_G: Final = 0.5

#: Severity of an event type when :meth:`CabinetStore.record_event` is given none.
DEFAULT_SEVERITY: Final[Mapping[str, Severity]] = {
    "door_open_too_long": "alarm",
    "door_forced": "alarm",
    "sensor_fault": "alarm",
    "loss": "alarm",
}


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One door session as stored. Times ``*_at`` are cabinet-clock seconds, ``*_iso`` UTC."""

    session_id: str
    cabinet_id: str
    resident: str
    role: SessionRole
    state: SessionState
    unlocked_at: float
    unlocked_iso: str
    opened_at: float | None = None
    opened_iso: str | None = None
    closed_at: float | None = None
    closed_iso: str | None = None
    billed_at: float | None = None
    billed_iso: str | None = None
    expired_at: float | None = None
    expired_iso: str | None = None
    total_fen: int | None = None
    flags: list[str] = field(default_factory=list)
    #: lane -> stable level (g) before the door opened; empty until ``mark_opened``
    baseline: dict[int, float] = field(default_factory=dict)
    recovered: bool = False
    #: seq of the session's outbox record (billed or expired sessions), kept after ack
    outbox_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SaleLineRow:
    """One lane's sale in a session."""

    session_id: str
    lane: int
    sku: str
    qty: int
    weight_g: float
    unit_price_fen: int
    amount_fen: int
    #: tracked lanes: the recorded weights of the items taken; None for other lanes
    items: list[float] | None = None


@dataclass(frozen=True, slots=True)
class EvidenceRow:
    """The levels one lane's bill was computed from."""

    session_id: str
    lane: int
    before_g: float
    after_g: float
    delta_g: float


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event; an alarm when ``severity`` is not ``info``."""

    id: int
    t: float
    at: str
    type: str
    session_id: str | None
    severity: Severity
    acknowledged: bool
    acknowledged_at: str | None
    data: dict[str, Any]
    outbox_seq: int | None


@dataclass(frozen=True, slots=True)
class InventoryRow:
    """What one lane holds.

    ``updated_at`` (UTC ISO) and ``updated_t`` (cabinet clock) are filled in by the
    store when a row is written; leave them None when passing rows in.
    """

    lane: int
    sku: str
    mode: LaneMode
    level_g: float
    count: int | None = None
    items: list[float] = field(default_factory=list)
    updated_at: str | None = None
    updated_t: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A record waiting to be sent; ``payload_json`` is the exact stored text."""

    seq: int
    kind: OutboxKind
    ref: str
    t: float | None
    payload_json: str
    created_at: str

    @property
    def payload(self) -> dict[str, Any]:
        """The payload, parsed."""
        return cast(dict[str, Any], json.loads(self.payload_json))


@dataclass(frozen=True, slots=True)
class OutboxState:
    """Where the outbox stands: rows ``acked_upto + 1 .. last_seq`` are pending."""

    acked_upto: int
    last_seq: int
    pending: int
    acked_at: str | None


@dataclass(frozen=True, slots=True)
class SignedOutboxRow:
    """A sealed outbox record: ``record_json`` is the canonical record, ready to publish."""

    seq: int
    kind: OutboxKind
    prev_hash: str
    hash: str
    record_json: str


@dataclass(frozen=True, slots=True)
class OutboxHead:
    """The cheap view of the outbox the uplink polls (no row count)."""

    acked_upto: int
    last_seq: int
    #: record hash of ``last_seq`` once sealed (None when unsigned or nothing written)
    last_hash: str | None
    #: highest seq that is sealed (rows above it are waiting for a key)
    sealed_upto: int


# --------------------------------------------------------------------- migrations

MIGRATIONS = Migrations(MIGRATION_SET)

_M0001 = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY CHECK (length(session_id) > 0),
        cabinet_id TEXT NOT NULL,
        resident TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('resident', 'operator', 'forced')),
        state TEXT NOT NULL DEFAULT 'unlocked'
            CHECK (state IN ('unlocked', 'open', 'closed', 'billed', 'expired')),
        unlocked_at REAL NOT NULL,
        unlocked_iso TEXT NOT NULL,
        opened_at REAL,
        opened_iso TEXT,
        closed_at REAL,
        closed_iso TEXT,
        billed_at REAL,
        billed_iso TEXT,
        expired_at REAL,
        expired_iso TEXT,
        total_fen INTEGER
            CHECK (total_fen IS NULL OR (typeof(total_fen) = 'integer' AND total_fen >= 0)),
        flags TEXT NOT NULL DEFAULT '[]'
            CHECK (json_valid(flags) AND json_type(flags) = 'array'),
        baseline_json TEXT
            CHECK (baseline_json IS NULL OR
                   (json_valid(baseline_json) AND json_type(baseline_json) = 'object')),
        recovered INTEGER NOT NULL DEFAULT 0 CHECK (recovered IN (0, 1)),
        outbox_seq INTEGER UNIQUE,
        CHECK ((state IN ('billed', 'expired')) = (outbox_seq IS NOT NULL))
    )""",
    "CREATE INDEX sessions_state ON sessions (state)",
    """CREATE TABLE sale_lines (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
        lane INTEGER NOT NULL,
        sku TEXT NOT NULL,
        qty INTEGER NOT NULL CHECK (typeof(qty) = 'integer' AND qty >= 0),
        weight_g REAL NOT NULL,
        unit_price_fen INTEGER NOT NULL
            CHECK (typeof(unit_price_fen) = 'integer' AND unit_price_fen >= 0),
        amount_fen INTEGER NOT NULL CHECK (typeof(amount_fen) = 'integer' AND amount_fen >= 0),
        items_json TEXT CHECK (items_json IS NULL OR json_valid(items_json)),
        UNIQUE (session_id, lane)
    )""",
    """CREATE TABLE evidence (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
        lane INTEGER NOT NULL,
        before_g REAL NOT NULL,
        after_g REAL NOT NULL,
        delta_g REAL NOT NULL,
        UNIQUE (session_id, lane)
    )""",
    """CREATE TABLE inventory (
        lane INTEGER PRIMARY KEY,
        sku TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('unit', 'tracked', 'weighed')),
        level_g REAL NOT NULL,
        count INTEGER CHECK (count IS NULL OR typeof(count) = 'integer'),
        items_json TEXT NOT NULL DEFAULT '[]'
            CHECK (json_valid(items_json) AND json_type(items_json) = 'array'),
        updated_t REAL,
        updated_at TEXT NOT NULL
    )""",
    f"PRAGMA application_id = {APPLICATION_ID:d}",
    "PRAGMA user_version = 1",
)

_M0002 = (
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        t REAL NOT NULL,
        at TEXT NOT NULL,
        type TEXT NOT NULL CHECK (length(type) > 0),
        session_id TEXT REFERENCES sessions (session_id) ON DELETE SET NULL,
        severity TEXT NOT NULL DEFAULT 'info' CHECK (severity IN ('info', 'warning', 'alarm')),
        acknowledged INTEGER NOT NULL DEFAULT 0 CHECK (acknowledged IN (0, 1)),
        acknowledged_at TEXT,
        data_json TEXT NOT NULL DEFAULT '{}'
            CHECK (json_valid(data_json) AND json_type(data_json) = 'object'),
        outbox_seq INTEGER UNIQUE
    )""",
    "CREATE INDEX events_session ON events (session_id)",
    "CREATE INDEX events_alarms ON events (severity, acknowledged)",
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('sale', 'event')),
        ref TEXT NOT NULL,
        t REAL,
        payload_json TEXT NOT NULL CHECK (json_valid(payload_json)),
        created_at TEXT NOT NULL,
        UNIQUE (kind, ref)
    )""",
    """CREATE TABLE outbox_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        acked_upto INTEGER NOT NULL DEFAULT 0 CHECK (acked_upto >= 0),
        acked_at TEXT
    )""",
    "INSERT INTO outbox_state (id, acked_upto) VALUES (1, 0)",
    "PRAGMA user_version = 2",
)


@MIGRATIONS(name="0001_sessions_inventory")
def m0001_sessions_inventory(db: Database) -> None:
    """Sessions, sale lines, evidence, inventory and the meta table."""
    for statement in _M0001:
        db.execute(statement)


@MIGRATIONS(name="0002_events_outbox")
def m0002_events_outbox(db: Database) -> None:
    """Events (and alarms), the outbox and its ack state."""
    for statement in _M0002:
        db.execute(statement)


SIGNING_MIGRATIONS = Migrations(SIGNING_MIGRATION_SET)

_S0001 = (
    "ALTER TABLE outbox ADD COLUMN prev_hash TEXT"
    " CHECK (prev_hash IS NULL OR length(prev_hash) = 64)",
    "ALTER TABLE outbox ADD COLUMN hash TEXT CHECK (hash IS NULL OR length(hash) = 64)",
    "ALTER TABLE outbox ADD COLUMN record_json TEXT"
    " CHECK (record_json IS NULL OR json_valid(record_json))",
    "ALTER TABLE outbox_state ADD COLUMN last_hash TEXT",
    "ALTER TABLE outbox_state ADD COLUMN sealed_upto INTEGER NOT NULL DEFAULT 0",
)


@SIGNING_MIGRATIONS(name="0001_outbox_chain")
def s0001_outbox_chain(db: Database) -> None:
    """Signature and hash-chain columns of the outbox (docs/protocol.md section 3)."""
    for statement in _S0001:
        db.execute(statement)


def known_migrations() -> list[str]:
    """Names of the migrations this code knows, in order."""
    return [m.name for m in MIGRATIONS._migrations]


# ------------------------------------------------------------------------ helpers


def iso_utc(dt: datetime) -> str:
    """``dt`` as UTC ISO 8601 with milliseconds, e.g. ``2026-11-28T10:15:30.123Z``.

    A naive datetime is taken to be UTC already.
    """
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _dumps(value: Any, what: str) -> str:
    """Deterministic JSON (sorted keys, compact, UTF-8); StoreError if not representable."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from exc


def _int(value: Any, what: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StoreError(f"{what} must be an integer, got {value!r}")
    result = int(value)
    if minimum is not None and result < minimum:
        raise StoreError(f"{what} must be >= {minimum}, got {result}")
    return result


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StoreError(f"{what} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise StoreError(f"{what} must be finite, got {result}")
    return result


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _reals(values: Any, what: str) -> list[float]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise StoreError(f"{what} must be a list of numbers, got {values!r}")
    return [_real(v, f"{what}[{i}]") for i, v in enumerate(values)]


def _flags(values: Any, what: str) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise StoreError(f"{what} must be a list of strings, got {values!r}")
    out: list[str] = []
    for i, v in enumerate(values):
        flag = _text(v, f"{what}[{i}]")
        if flag not in out:
            out.append(flag)
    return out


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# -------------------------------------------------------------------------- store


class CabinetStore:
    """The cabinet's SQLite store; see the module docstring for the schema.

    Safe to share between threads (calls are serialised by a lock). Every error
    from SQLite, and every misuse (unknown session, wrong state, bad values), is
    raised as :class:`~edge.errors.StoreError`; messages about the database file
    name its path.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        cabinet_id: str,
        now: Callable[[], datetime] | None = None,
        timeout: float = 5.0,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        """Open (or create) the store at ``path`` for cabinet ``cabinet_id``.

        Sets WAL, ``synchronous=FULL`` and ``foreign_keys=ON``, applies pending
        migrations, and checks the file belongs to this cabinet. ``now`` is the
        UTC wall clock used for the ISO columns (default: the system clock).
        ``timeout`` is how long to wait for another connection's lock. With
        ``signing_key`` (the cabinet's Ed25519 key) every outbox row is sealed as a
        signed, hash-chained record (see "Signing and hash chain" above).
        """
        self.path = Path(path)
        self.cabinet_id = _text(cabinet_id, "cabinet_id")
        self._now: Callable[[], datetime] = now or _utcnow
        self._signing_key = signing_key
        self._chain_columns = signing_key is not None
        self._lock = threading.RLock()
        self._closed = False
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a store file")
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open store: {exc}") from exc
        try:
            self._db = Database(conn, execute_plugins=False)
            self._setup()
        except BaseException as exc:
            conn.close()
            self._closed = True
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot open store: {exc}") from exc
            raise

    # ------------------------------------------------------------ lifecycle

    def _setup(self) -> None:
        db = self._db
        where = self.path
        db.execute("PRAGMA schema_version").fetchone()  # fails on a file that is not SQLite
        db.enable_wal()
        if db.journal_mode != "wal":
            raise StoreError(f"{where}: cannot switch to WAL (journal_mode={db.journal_mode})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        if self._pragma("synchronous") != 2 or self._pragma("foreign_keys") != 1:
            raise StoreError(f"{where}: cannot set synchronous=FULL and foreign_keys=ON")

        app_id = self._pragma("application_id")
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(f"{where}: not a freshbox cabinet store (application_id {app_id:#x})")
        known = set(known_migrations())
        applied = [m.name for m in MIGRATIONS.applied(db)]
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise StoreError(
                f"{where}: store schema is newer than this code "
                f"(unknown migrations: {', '.join(unknown)})"
            )
        if not applied:
            tables = [
                row[0]
                for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name != ?",
                    [Migrations.migrations_table],
                ).fetchall()
            ]
            if tables:
                raise StoreError(
                    f"{where}: not a freshbox cabinet store (has tables {', '.join(tables)})"
                )

        known_signing = {m.name for m in SIGNING_MIGRATIONS._migrations}
        unknown = [m.name for m in SIGNING_MIGRATIONS.applied(db) if m.name not in known_signing]
        if unknown:
            raise StoreError(
                f"{where}: store schema is newer than this code "
                f"(unknown migrations: {', '.join(unknown)})"
            )

        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS.apply(db)
            row = db.execute("SELECT value FROM meta WHERE key = 'cabinet_id'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('cabinet_id', ?), ('created_at', ?)",
                    [self.cabinet_id, self._iso()],
                )
            elif row[0] != self.cabinet_id:
                raise StoreError(
                    f"{where}: store belongs to cabinet {row[0]!r}, not {self.cabinet_id!r}"
                )
            if self._signing_key is not None:
                SIGNING_MIGRATIONS.apply(db)
                self._seal_unsealed(db)
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise

    def close(self) -> None:
        """Close the database; further calls raise StoreError. Closing twice is harmless."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> CabinetStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CabinetStore({str(self.path)!r}, cabinet_id={self.cabinet_id!r})"

    @property
    def db(self) -> Database:
        """The underlying sqlite-utils Database (for inspection and tests; do not write)."""
        return self._db

    # -------------------------------------------------------------- plumbing

    def _iso(self) -> str:
        return iso_utc(self._now())

    def _pragma(self, name: str) -> Any:
        # ``name`` is always one of this module's constants, never caller input.
        row = self._db.execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _op(self, what: str) -> Iterator[Database]:
        """Serialise a call, refuse a closed store, turn sqlite3 errors into StoreError."""
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: store is closed ({what})")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[Database]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        with self._op(what) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            try:
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _session_state(self, db: Database, session_id: str) -> dict[str, Any]:
        row = db.execute(
            "SELECT state, total_fen, outbox_seq, flags FROM sessions WHERE session_id = ?",
            [session_id],
        ).fetchone()
        if row is None:
            raise StoreError(f"unknown session {session_id!r}")
        return {"state": row[0], "total_fen": row[1], "outbox_seq": row[2], "flags": row[3]}

    def _insert_outbox(
        self, db: Database, kind: OutboxKind, ref: str, t: float | None, payload_json: str
    ) -> int:
        """Append one outbox record inside the caller's transaction; returns its seq.

        The one place outbox rows are created: signing and hash-chaining go here.
        """
        created_at = self._iso()
        cursor = db.execute(
            "INSERT INTO outbox (kind, ref, t, payload_json, created_at) VALUES (?, ?, ?, ?, ?)",
            [kind, ref, t, payload_json, created_at],
        )
        seq = cursor.lastrowid
        if seq is None:  # pragma: no cover - sqlite always reports it for a rowid table
            raise StoreError(f"{self.path}: outbox insert returned no seq")
        if self._signing_key is not None:
            self._seal_row(db, seq, kind, created_at, payload_json)
        return seq

    # --------------------------------------------------------- signing / chain

    @property
    def signing(self) -> bool:
        """True when the store seals outbox rows (it was opened with a signing key)."""
        return self._signing_key is not None

    def _seal_row(
        self, db: Database, seq: int, kind: str, created_at: str, payload_json: str
    ) -> None:
        """Seal outbox row ``seq`` as the next record of the chain (caller's transaction)."""
        key = self._signing_key
        assert key is not None
        acked, last_hash, sealed = db.execute(
            "SELECT acked_upto, last_hash, sealed_upto FROM outbox_state WHERE id = 1"
        ).fetchone()
        if seq != sealed + 1:
            raise StoreError(
                f"{self.path}: cannot seal outbox seq {seq}: the chain is sealed up to {sealed}"
            )
        if last_hash is None:
            if seq != 1:
                raise StoreError(
                    f"{self.path}: outbox records up to seq {max(acked, seq - 1)} were written "
                    "and acknowledged before signing was enabled; the hash chain cannot start "
                    "at seq 1 (start a new store for this cabinet)"
                )
            last_hash = ZERO_HASH
        try:
            record = seal(
                self.cabinet_id,
                seq,
                cast(OutboxKind, kind),
                created_at,
                last_hash,
                parse_json(payload_json),
                key,
            )
            record_json = canonical_bytes(record)
        except SyncError as exc:
            raise StoreError(f"{self.path}: cannot seal outbox seq {seq}: {exc}") from exc
        record_hash = sha256_hex(record_json)
        db.execute(
            "UPDATE outbox SET prev_hash = ?, hash = ?, record_json = ? WHERE seq = ?",
            [last_hash, record_hash, record_json.decode("utf-8"), seq],
        )
        db.execute(
            "UPDATE outbox_state SET last_hash = ?, sealed_upto = ? WHERE id = 1",
            [record_hash, seq],
        )

    def _seal_unsealed(self, db: Database) -> None:
        """Seal, in seq order, the rows written while the store had no key."""
        acked, sealed = db.execute(
            "SELECT acked_upto, sealed_upto FROM outbox_state WHERE id = 1"
        ).fetchone()
        if int(acked) > int(sealed):
            raise StoreError(
                f"{self.path}: outbox records up to seq {acked} were written and acknowledged "
                "before signing was enabled; the hash chain cannot start at seq 1 "
                "(start a new store for this cabinet)"
            )
        rows = db.execute(
            "SELECT seq, kind, created_at, payload_json FROM outbox WHERE hash IS NULL ORDER BY seq"
        ).fetchall()
        for seq, kind, created_at, payload_json in rows:
            self._seal_row(db, int(seq), kind, created_at, payload_json)

    def outbox_records(self, after_seq: int = 0, limit: int = 100) -> list[SignedOutboxRow]:
        """Up to ``limit`` sealed, unacknowledged records with seq > ``after_seq``, in seq order."""
        limit = _int(limit, "limit", minimum=0)
        after_seq = _int(after_seq, "after_seq", minimum=0)
        with self._op("outbox_records") as db:
            if not self._has_chain_columns(db):
                return []
            rows = db.execute(
                "SELECT seq, kind, prev_hash, hash, record_json FROM outbox"
                " WHERE seq > ? AND hash IS NOT NULL ORDER BY seq LIMIT ?",
                [after_seq, limit],
            ).fetchall()
        return [
            SignedOutboxRow(seq=int(r[0]), kind=r[1], prev_hash=r[2], hash=r[3], record_json=r[4])
            for r in rows
        ]

    def outbox_head(self) -> OutboxHead:
        """Ack position, last seq issued, chain head hash and sealed position (cheap to poll)."""
        with self._op("outbox_head") as db:
            if self._has_chain_columns(db):
                acked, last_hash, sealed = db.execute(
                    "SELECT acked_upto, last_hash, sealed_upto FROM outbox_state WHERE id = 1"
                ).fetchone()
            else:
                acked = db.execute("SELECT acked_upto FROM outbox_state WHERE id = 1").fetchone()[0]
                last_hash, sealed = None, 0
            return OutboxHead(
                acked_upto=int(acked),
                last_seq=self._last_seq(db),
                last_hash=last_hash,
                sealed_upto=int(sealed),
            )

    def outbox_hash(self, seq: int) -> str | None:
        """The record hash of outbox row ``seq`` while it is still there (else None)."""
        seq = _int(seq, "seq", minimum=0)
        with self._op("outbox_hash") as db:
            if not self._has_chain_columns(db):
                return None
            row = db.execute("SELECT hash FROM outbox WHERE seq = ?", [seq]).fetchone()
            if row is not None:
                return cast("str | None", row[0])
            state = db.execute(
                "SELECT sealed_upto, last_hash FROM outbox_state WHERE id = 1"
            ).fetchone()
            return cast("str | None", state[1]) if int(state[0]) == seq else None

    def _has_chain_columns(self, db: Database) -> bool:
        if not self._chain_columns:
            self._chain_columns = any(
                r[1] == "hash" for r in db.execute("PRAGMA table_info(outbox)").fetchall()
            )
        return self._chain_columns

    def _upsert_inventory(
        self, db: Database, rows: Iterable[InventoryRow], t: float | None
    ) -> None:
        iso = self._iso()
        for row in rows:
            lane = _int(row.lane, "inventory lane")
            if row.mode not in LANE_MODES:
                raise StoreError(f"inventory lane {lane}: unknown mode {row.mode!r}")
            count = None if row.count is None else _int(row.count, f"inventory lane {lane} count")
            updated_t = row.updated_t if row.updated_t is not None else t
            db.execute(
                "INSERT INTO inventory (lane, sku, mode, level_g, count, items_json, updated_t,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (lane) DO UPDATE SET sku = excluded.sku, mode = excluded.mode,"
                " level_g = excluded.level_g, count = excluded.count,"
                " items_json = excluded.items_json, updated_t = excluded.updated_t,"
                " updated_at = excluded.updated_at",
                [
                    lane,
                    _text(row.sku, f"inventory lane {lane} sku"),
                    row.mode,
                    _real(row.level_g, f"inventory lane {lane} level_g"),
                    count,
                    _dumps(_reals(row.items, f"inventory lane {lane} items"), "inventory items"),
                    None if updated_t is None else _real(updated_t, "inventory updated_t"),
                    iso,
                ],
            )

    # -------------------------------------------------------------- sessions

    def begin_session(self, session_id: str, resident: str, role: str, unlocked_at: float) -> None:
        """Record a verified unlock: a new session in state ``unlocked``.

        ``resident`` may be empty (a ``forced`` session has nobody to charge).
        """
        _text(session_id, "session_id")
        if not isinstance(resident, str):
            raise StoreError(f"session {session_id}: resident must be a string, got {resident!r}")
        if role not in _ROLES:
            raise StoreError(f"session {session_id}: unknown role {role!r}")
        t = _real(unlocked_at, "unlocked_at")
        with self._write("begin_session") as db:
            if db.execute("SELECT 1 FROM sessions WHERE session_id = ?", [session_id]).fetchone():
                raise StoreError(f"session {session_id} already exists")
            db.execute(
                "INSERT INTO sessions (session_id, cabinet_id, resident, role, state,"
                " unlocked_at, unlocked_iso) VALUES (?, ?, ?, ?, 'unlocked', ?, ?)",
                [session_id, self.cabinet_id, resident, role, t, self._iso()],
            )

    def mark_opened(self, session_id: str, opened_at: float, baseline: Mapping[int, float]) -> None:
        """The door opened: state ``open``, and the per-lane baseline levels (g) are saved."""
        t = _real(opened_at, "opened_at")
        levels = {
            str(_int(lane, "baseline lane")): _real(g, f"baseline lane {lane}")
            for lane, g in baseline.items()
        }
        with self._write("mark_opened") as db:
            state = self._session_state(db, session_id)["state"]
            if state != "unlocked":
                raise StoreError(f"session {session_id} cannot open: state is {state}")
            db.execute(
                "UPDATE sessions SET state = 'open', opened_at = ?, opened_iso = ?,"
                " baseline_json = ? WHERE session_id = ?",
                [t, self._iso(), _dumps(levels, "baseline"), session_id],
            )

    def mark_closed(self, session_id: str, closed_at: float) -> None:
        """The door closed (settling and billing follow): state ``closed``.

        Closing a session that is already ``closed`` (a restart during settling) is
        harmless: the first close time is kept.
        """
        t = _real(closed_at, "closed_at")
        with self._write("mark_closed") as db:
            state = self._session_state(db, session_id)["state"]
            if state == "closed":
                return
            if state != "open":
                raise StoreError(f"session {session_id} cannot close: state is {state}")
            db.execute(
                "UPDATE sessions SET state = 'closed', closed_at = ?, closed_iso = ?"
                " WHERE session_id = ?",
                [t, self._iso(), session_id],
            )

    def mark_recovered(self, session_id: str) -> None:
        """Note that an open session was picked up again after a restart."""
        with self._write("mark_recovered") as db:
            state = self._session_state(db, session_id)["state"]
            if state not in _OPEN_STATES:
                raise StoreError(f"session {session_id} is not open: state is {state}")
            db.execute("UPDATE sessions SET recovered = 1 WHERE session_id = ?", [session_id])

    def expire_session(self, session_id: str, t: float, payload: Mapping[str, Any]) -> int:
        """The door never opened (``unlock_unused``): state ``expired`` and an outbox 'sale' row.

        One transaction. Returns the outbox seq; an already expired session returns
        its existing seq and writes nothing.
        """
        t = _real(t, "t")
        self._check_payload(session_id, payload, 0)
        payload_json = _dumps(dict(payload), "payload")
        with self._write("expire_session") as db:
            current = self._session_state(db, session_id)
            if current["state"] == "expired":
                return int(current["outbox_seq"])
            if current["state"] != "unlocked":
                raise StoreError(f"session {session_id} cannot expire: state is {current['state']}")
            flags = _flags(json.loads(current["flags"]), "flags")
            if "unlock_unused" not in flags:
                flags.append("unlock_unused")
            seq = self._insert_outbox(db, "sale", session_id, t, payload_json)
            db.execute(
                "UPDATE sessions SET state = 'expired', expired_at = ?, expired_iso = ?,"
                " total_fen = 0, flags = ?, outbox_seq = ? WHERE session_id = ?",
                [t, self._iso(), _dumps(flags, "flags"), seq, session_id],
            )
            return seq

    @staticmethod
    def _check_payload(session_id: str, payload: Mapping[str, Any], total_fen: int) -> None:
        if not isinstance(payload, Mapping):
            raise StoreError(f"session {session_id}: payload must be a mapping")
        if "session_id" in payload and payload["session_id"] != session_id:
            raise StoreError(
                f"session {session_id}: payload is for session {payload['session_id']!r}"
            )
        if "total_fen" in payload and payload["total_fen"] != total_fen:
            raise StoreError(
                f"session {session_id}: payload total_fen {payload['total_fen']!r}"
                f" != total_fen {total_fen}"
            )

    @staticmethod
    def _lines(session_id: str, lines: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        out: list[list[Any]] = []
        seen: set[int] = set()
        for i, line in enumerate(lines):
            what = f"session {session_id} line {i}"
            try:
                lane = _int(line["lane"], f"{what} lane")
                if lane in seen:
                    raise StoreError(f"{what}: lane {lane} appears twice")
                seen.add(lane)
                items = line.get("items")
                out.append(
                    [
                        session_id,
                        lane,
                        _text(line["sku"], f"{what} sku"),
                        _int(line["qty"], f"{what} qty", minimum=0),
                        _real(line["weight_g"], f"{what} weight_g"),
                        _int(line["unit_price_fen"], f"{what} unit_price_fen", minimum=0),
                        _int(line["amount_fen"], f"{what} amount_fen", minimum=0),
                        None if items is None else _dumps(_reals(items, f"{what} items"), what),
                    ]
                )
            except KeyError as exc:
                raise StoreError(f"{what}: missing {exc.args[0]!r}") from exc
        return out

    @staticmethod
    def _evidence(session_id: str, evidence: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        out: list[list[Any]] = []
        seen: set[int] = set()
        for i, ev in enumerate(evidence):
            what = f"session {session_id} evidence {i}"
            try:
                lane = _int(ev["lane"], f"{what} lane")
                before = _real(ev["before_g"], f"{what} before_g")
                after = _real(ev["after_g"], f"{what} after_g")
                delta = _real(ev["delta_g"], f"{what} delta_g")
            except KeyError as exc:
                raise StoreError(f"{what}: missing {exc.args[0]!r}") from exc
            if lane in seen:
                raise StoreError(f"{what}: lane {lane} appears twice")
            seen.add(lane)
            if abs(before + delta - after) > EVIDENCE_TOLERANCE_G:
                raise StoreError(
                    f"{what}: lane {lane} before {before} + delta {delta} != after {after}"
                )
            out.append([session_id, lane, before, after, delta])
        return out

    def finish_session(
        self,
        session_id: str,
        *,
        closed_at: float,
        billed_at: float,
        total_fen: int,
        flags: Sequence[str],
        lines: Sequence[Mapping[str, Any]],
        evidence: Sequence[Mapping[str, Any]],
        payload: Mapping[str, Any],
        inventory: Mapping[int, InventoryRow] | None = None,
    ) -> int:
        """Bill a session in ONE transaction; returns the outbox seq of its sale record.

        Writes: the session row (state ``billed``, times, total, flags), its sale
        lines (``lane, sku, qty, weight_g, unit_price_fen, amount_fen`` and, for
        tracked lanes, ``items``: the weights taken), its evidence (``lane,
        before_g, after_g, delta_g``), the inventory rows given, and an outbox row
        of kind ``sale`` whose payload is ``payload`` (the sale record).

        Refused (StoreError, nothing written) unless the session is ``open`` or
        ``closed``, the line amounts sum to ``total_fen``, every line's lane has
        evidence, and every evidence row satisfies before + delta = after (within
        :data:`EVIDENCE_TOLERANCE_G`). A session already billed with the same
        total returns its existing seq and writes nothing (idempotent retry).
        The flag ``recovered`` also sets the session's ``recovered`` column.
        """
        closed_t = _real(closed_at, "closed_at")
        billed_t = _real(billed_at, "billed_at")
        total = _int(total_fen, "total_fen", minimum=0)
        flag_list = _flags(flags, "flags")
        line_rows = self._lines(session_id, lines)
        evidence_rows = self._evidence(session_id, evidence)
        line_sum = sum(int(r[6]) for r in line_rows)
        if line_sum != total:
            raise StoreError(
                f"session {session_id}: sale lines sum to {line_sum} fen, total_fen is {total}"
            )
        missing = {int(r[1]) for r in line_rows} - {int(r[1]) for r in evidence_rows}
        if missing:
            raise StoreError(
                f"session {session_id}: no evidence for lanes {sorted(missing)} that sold"
            )
        self._check_payload(session_id, payload, total)
        payload_json = _dumps(dict(payload), "payload")
        inventory_rows: list[InventoryRow] = []
        for lane, row in (inventory or {}).items():
            if row.lane != lane:
                raise StoreError(f"inventory key {lane} holds lane {row.lane}")
            inventory_rows.append(row)

        with self._write("finish_session") as db:
            current = self._session_state(db, session_id)
            state = current["state"]
            if state == "billed":
                if current["total_fen"] != total:
                    raise StoreError(
                        f"session {session_id} is already billed at {current['total_fen']} fen,"
                        f" not {total}"
                    )
                return int(current["outbox_seq"])
            if state not in ("open", "closed"):
                raise StoreError(f"session {session_id} cannot be billed: state is {state}")
            merged = _flags(json.loads(current["flags"]), "flags")
            merged += [f for f in flag_list if f not in merged]
            seq = self._insert_outbox(db, "sale", session_id, billed_t, payload_json)
            iso = self._iso()
            db.execute(
                "UPDATE sessions SET state = 'billed', closed_at = ?,"
                " closed_iso = COALESCE(closed_iso, ?), billed_at = ?, billed_iso = ?,"
                " total_fen = ?, flags = ?, outbox_seq = ?, recovered = max(recovered, ?)"
                " WHERE session_id = ?",
                [
                    closed_t,
                    iso,
                    billed_t,
                    iso,
                    total,
                    _dumps(merged, "flags"),
                    seq,
                    int("recovered" in merged),
                    session_id,
                ],
            )
            for params in line_rows:
                db.execute(
                    "INSERT INTO sale_lines (session_id, lane, sku, qty, weight_g,"
                    " unit_price_fen, amount_fen, items_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    params,
                )
            for params in evidence_rows:
                db.execute(
                    "INSERT INTO evidence (session_id, lane, before_g, after_g, delta_g)"
                    " VALUES (?, ?, ?, ?, ?)",
                    params,
                )
            self._upsert_inventory(db, inventory_rows, billed_t)
            return seq

    # ---------------------------------------------------------------- events

    def record_event(
        self,
        t: float,
        type: str,
        *,
        session_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        severity: Severity | None = None,
    ) -> int:
        """Record an event and its outbox row (kind ``event``) in one transaction; returns seq.

        ``severity`` defaults to :data:`DEFAULT_SEVERITY` for the type, else ``info``;
        events that are not ``info`` are alarms (see :meth:`alarms`). The outbox
        payload is ``{cabinet_id, event_id, t, at, type, severity, session_id, data}``.
        """
        t = _real(t, "t")
        _text(type, "event type")
        sev: str = severity if severity is not None else DEFAULT_SEVERITY.get(type, "info")
        if sev not in _SEVERITIES:
            raise StoreError(f"event {type}: unknown severity {sev!r}")
        if data is not None and not isinstance(data, Mapping):
            raise StoreError(f"event {type}: data must be a mapping")
        data_dict = dict(data or {})
        data_json = _dumps(data_dict, f"event {type} data")
        with self._write("record_event") as db:
            if session_id is not None:
                self._session_state(db, session_id)
            at = self._iso()
            cursor = db.execute(
                "INSERT INTO events (t, at, type, session_id, severity, data_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [t, at, type, session_id, sev, data_json],
            )
            event_id = cursor.lastrowid
            assert event_id is not None
            payload = {
                "cabinet_id": self.cabinet_id,
                "event_id": event_id,
                "t": t,
                "at": at,
                "type": type,
                "severity": sev,
                "session_id": session_id,
                "data": data_dict,
            }
            seq = self._insert_outbox(db, "event", str(event_id), t, _dumps(payload, "event"))
            db.execute("UPDATE events SET outbox_seq = ? WHERE id = ?", [seq, event_id])
            return seq

    def events(
        self,
        *,
        session_id: str | None = None,
        type: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[EventRow]:
        """Events in id order, optionally of one session and/or one type."""
        with self._op("events"):
            rows = self._rows(
                "SELECT * FROM events WHERE (? IS NULL OR session_id = ?)"
                " AND (? IS NULL OR type = ?) AND id > ? ORDER BY id LIMIT ?",
                [session_id, session_id, type, type, after_id, -1 if limit is None else limit],
            )
        return [_event_row(r) for r in rows]

    def alarms(self, *, include_acknowledged: bool = False) -> list[EventRow]:
        """Events whose severity is not ``info``; by default only unacknowledged ones."""
        with self._op("alarms"):
            rows = self._rows(
                "SELECT * FROM events WHERE severity != 'info'"
                " AND (? OR acknowledged = 0) ORDER BY id",
                [int(include_acknowledged)],
            )
        return [_event_row(r) for r in rows]

    def acknowledge_alarm(self, event_id: int) -> bool:
        """Mark an alarm acknowledged; False if it already was. Unknown ids raise StoreError."""
        with self._write("acknowledge_alarm") as db:
            row = db.execute(
                "SELECT severity, acknowledged FROM events WHERE id = ?", [event_id]
            ).fetchone()
            if row is None:
                raise StoreError(f"unknown event {event_id}")
            if row[0] == "info":
                raise StoreError(f"event {event_id} is not an alarm")
            if row[1]:
                return False
            db.execute(
                "UPDATE events SET acknowledged = 1, acknowledged_at = ? WHERE id = ?",
                [self._iso(), event_id],
            )
            return True

    # ----------------------------------------------------------------- reads

    def session(self, session_id: str) -> SessionRow | None:
        """One session, or None."""
        with self._op("session"):
            rows = self._rows("SELECT * FROM sessions WHERE session_id = ?", [session_id])
        return _session_row(rows[0]) if rows else None

    def sessions(self, *, state: str | None = None, limit: int | None = None) -> list[SessionRow]:
        """Sessions in the order they began, optionally only those in ``state``."""
        with self._op("sessions"):
            rows = self._rows(
                "SELECT * FROM sessions WHERE (? IS NULL OR state = ?) ORDER BY rowid LIMIT ?",
                [state, state, -1 if limit is None else limit],
            )
        return [_session_row(r) for r in rows]

    def open_sessions(self) -> list[SessionRow]:
        """Sessions neither billed nor expired, oldest first: what a restart must recover."""
        with self._op("open_sessions"):
            rows = self._rows(
                "SELECT * FROM sessions WHERE state IN ('unlocked', 'open', 'closed')"
                " ORDER BY rowid"
            )
        return [_session_row(r) for r in rows]

    def sale_lines(self, session_id: str) -> list[SaleLineRow]:
        """The session's sale lines, by lane."""
        with self._op("sale_lines"):
            rows = self._rows(
                "SELECT * FROM sale_lines WHERE session_id = ? ORDER BY lane", [session_id]
            )
        return [
            SaleLineRow(
                session_id=r["session_id"],
                lane=r["lane"],
                sku=r["sku"],
                qty=r["qty"],
                weight_g=float(r["weight_g"]),
                unit_price_fen=r["unit_price_fen"],
                amount_fen=r["amount_fen"],
                items=None if r["items_json"] is None else json.loads(r["items_json"]),
            )
            for r in rows
        ]

    def evidence(self, session_id: str) -> list[EvidenceRow]:
        """The session's evidence rows, by lane."""
        with self._op("evidence"):
            rows = self._rows(
                "SELECT * FROM evidence WHERE session_id = ? ORDER BY lane", [session_id]
            )
        return [
            EvidenceRow(
                session_id=r["session_id"],
                lane=r["lane"],
                before_g=float(r["before_g"]),
                after_g=float(r["after_g"]),
                delta_g=float(r["delta_g"]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------- inventory

    def inventory(self) -> dict[int, InventoryRow]:
        """Every lane's recorded stock."""
        with self._op("inventory"):
            rows = self._rows("SELECT * FROM inventory ORDER BY lane")
        return {
            r["lane"]: InventoryRow(
                lane=r["lane"],
                sku=r["sku"],
                mode=r["mode"],
                level_g=float(r["level_g"]),
                count=r["count"],
                items=json.loads(r["items_json"]),
                updated_at=r["updated_at"],
                updated_t=_opt_float(r["updated_t"]),
            )
            for r in rows
        }

    def lane_overrides(self) -> dict[int, dict[str, Any]]:
        """Lane changes made by commands (prices, SKU, names): they outlive a restart and
        are applied over the configuration file's lanes at start."""
        with self._op("lane_overrides"):
            row = self._db.execute("SELECT value FROM meta WHERE key = 'lane_overrides'").fetchone()
        if row is None:
            return {}
        return {int(k): dict(v) for k, v in json.loads(row[0]).items()}

    def save_lane_overrides(self, changes: Mapping[int, Mapping[str, Any]]) -> None:
        """Merge ``changes`` into the stored overrides (the latest value of a field wins)."""
        with self._write("save_lane_overrides") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'lane_overrides'").fetchone()
            merged: dict[str, dict[str, Any]] = {} if row is None else json.loads(row[0])
            for lane, change in changes.items():
                merged.setdefault(str(lane), {}).update(change)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('lane_overrides', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [json.dumps(merged, sort_keys=True)],
            )

    def set_inventory(
        self,
        rows: Mapping[int, InventoryRow] | Iterable[InventoryRow],
        *,
        replace: bool = False,
        t: float | None = None,
    ) -> None:
        """Write inventory rows (insert or update by lane) in one transaction.

        With ``replace=True`` lanes not in ``rows`` are removed. ``t`` (cabinet
        clock) is stored as ``updated_t`` for rows that do not carry their own.
        """
        items: list[InventoryRow]
        if isinstance(rows, Mapping):
            items = []
            for lane, row in rows.items():
                if row.lane != lane:
                    raise StoreError(f"inventory key {lane} holds lane {row.lane}")
                items.append(row)
        else:
            items = list(rows)
        when = None if t is None else _real(t, "t")
        with self._write("set_inventory") as db:
            if replace:
                db.execute(
                    "DELETE FROM inventory WHERE lane NOT IN (SELECT value FROM json_each(?))",
                    [_dumps([r.lane for r in items], "lanes")],
                )
            self._upsert_inventory(db, items, when)

    # ---------------------------------------------------------------- outbox

    def outbox_pending(self, limit: int = 100, after_seq: int = 0) -> list[OutboxRow]:
        """Up to ``limit`` unacknowledged records with seq > ``after_seq``, in seq order."""
        limit = _int(limit, "limit", minimum=0)
        after_seq = _int(after_seq, "after_seq", minimum=0)
        with self._op("outbox_pending"):
            rows = self._rows(
                "SELECT seq, kind, ref, t, payload_json, created_at FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                [after_seq, limit],
            )
        return [
            OutboxRow(
                seq=r["seq"],
                kind=r["kind"],
                ref=r["ref"],
                t=_opt_float(r["t"]),
                payload_json=r["payload_json"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    def outbox_ack(self, upto_seq: int) -> int:
        """Cumulative ack: delete the records with seq <= ``upto_seq``; returns how many.

        Acking at or below an earlier ack deletes nothing and returns 0. Acking a
        seq that was never issued raises StoreError.
        """
        upto = _int(upto_seq, "upto_seq", minimum=0)
        with self._write("outbox_ack") as db:
            last = self._last_seq(db)
            if upto > last:
                raise StoreError(f"{self.path}: ack of seq {upto}, but the last seq is {last}")
            acked = db.execute("SELECT acked_upto FROM outbox_state WHERE id = 1").fetchone()[0]
            if upto <= acked:
                return 0
            removed = db.execute("DELETE FROM outbox WHERE seq <= ?", [upto]).rowcount
            db.execute(
                "UPDATE outbox_state SET acked_upto = ?, acked_at = ? WHERE id = 1",
                [upto, self._iso()],
            )
            return int(removed)

    @staticmethod
    def _last_seq(db: Database) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return 0 if row is None else int(row[0])

    def outbox_state(self) -> OutboxState:
        """The ack position, the last seq issued and how many records are pending."""
        with self._op("outbox_state") as db:
            acked, acked_at = db.execute(
                "SELECT acked_upto, acked_at FROM outbox_state WHERE id = 1"
            ).fetchone()
            pending = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            return OutboxState(
                acked_upto=int(acked),
                last_seq=self._last_seq(db),
                pending=int(pending),
                acked_at=acked_at,
            )

    # ----------------------------------------------------------- maintenance

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (e.g. before a backup)."""
        with self._op("checkpoint") as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def check_consistency(self) -> list[str]:
        """Every problem found in the stored data, one sentence each; [] means consistent.

        Checks SQLite's own ``quick_check`` and ``foreign_key_check``; sessions
        (billed/expired ones have their outbox seq and, until acked, their outbox
        'sale' row; open ones do not; open/closed ones have their baseline; sale
        lines sum to the total; lanes that sold have evidence; evidence adds up;
        expired ones are flagged ``unlock_unused``, total 0, with no lines);
        events (each has its outbox seq and row until acked); the outbox (every
        'sale' row has its billed or expired session, every 'event' row its event,
        no row at or below the ack, and no gap in seq between the ack and the last
        seq issued).
        """
        problems: list[str] = []
        with self._op("check_consistency") as db:
            for row in db.execute("PRAGMA quick_check").fetchall():
                if row[0] != "ok":
                    problems.append(f"sqlite quick_check: {row[0]}")
            for row in db.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"foreign key violation in {row[0]} rowid {row[1]} -> {row[2]}")
            acked = int(
                db.execute("SELECT acked_upto FROM outbox_state WHERE id = 1").fetchone()[0]
            )
            last = self._last_seq(db)
            outbox = {
                r["seq"]: r
                for r in self._rows("SELECT seq, kind, ref, payload_json FROM outbox ORDER BY seq")
            }
            problems += self._check_outbox_sequence(outbox, acked, last)
            problems += self._check_sessions(db, outbox, acked)
            problems += self._check_events(outbox, acked)
            problems += self._check_outbox_refs(outbox)
        return problems

    @staticmethod
    def _check_outbox_sequence(outbox: Mapping[int, Any], acked: int, last: int) -> list[str]:
        problems: list[str] = []
        if acked > last:
            problems.append(f"outbox acked up to {acked} but the last seq issued is {last}")
        seqs = sorted(outbox)
        for seq in seqs:
            if seq <= acked:
                problems.append(f"outbox seq {seq} is still present but was acked (<= {acked})")
            if seq > last:
                problems.append(f"outbox seq {seq} is above the last seq issued ({last})")
        present = set(seqs)
        gaps = [s for s in range(acked + 1, last + 1) if s not in present]
        if gaps:
            shown = ", ".join(str(s) for s in gaps[:10]) + (" ..." if len(gaps) > 10 else "")
            problems.append(f"outbox seq gap not explained by acks (acked {acked}): {shown}")
        return problems

    def _check_sessions(self, db: Database, outbox: Mapping[int, Any], acked: int) -> list[str]:
        problems: list[str] = []
        line_sums = {
            r[0]: (r[1], r[2])
            for r in db.execute(
                "SELECT session_id, sum(amount_fen), count(*) FROM sale_lines GROUP BY session_id"
            ).fetchall()
        }
        line_lanes: dict[str, set[int]] = {}
        for sid, lane in db.execute("SELECT session_id, lane FROM sale_lines").fetchall():
            line_lanes.setdefault(sid, set()).add(lane)
        evidence_lanes: dict[str, set[int]] = {}
        for sid, lane, before, after, delta in db.execute(
            "SELECT session_id, lane, before_g, after_g, delta_g FROM evidence"
        ).fetchall():
            evidence_lanes.setdefault(sid, set()).add(lane)
            if abs(before + delta - after) > EVIDENCE_TOLERANCE_G:
                problems.append(
                    f"session {sid} evidence lane {lane}: {before} + {delta} != {after}"
                )
        for s in self._rows(
            "SELECT session_id, cabinet_id, state, total_fen, flags, baseline_json, outbox_seq,"
            " opened_at, billed_at, expired_at FROM sessions ORDER BY rowid"
        ):
            sid, state, seq = s["session_id"], s["state"], s["outbox_seq"]
            if s["cabinet_id"] != self.cabinet_id:
                problems.append(f"session {sid} belongs to cabinet {s['cabinet_id']!r}")
            lines_total, n_lines = line_sums.get(sid, (0, 0))
            if state in ("billed", "expired"):
                if seq is None:
                    problems.append(f"{state} session {sid} has no outbox seq")
                elif seq > acked:
                    row = outbox.get(seq)
                    if row is None:
                        problems.append(f"{state} session {sid}: outbox row {seq} is missing")
                    elif row["kind"] != "sale" or row["ref"] != sid:
                        problems.append(
                            f"{state} session {sid}: outbox row {seq} is {row['kind']} {row['ref']}"
                        )
            elif seq is not None:
                problems.append(f"{state} session {sid} has outbox seq {seq}")
            if state in ("open", "closed") and s["baseline_json"] is None:
                problems.append(f"{state} session {sid} has no baseline")
            if state == "billed":
                if s["billed_at"] is None or s["total_fen"] is None:
                    problems.append(f"billed session {sid} lacks billed_at or total_fen")
                elif lines_total != s["total_fen"]:
                    problems.append(
                        f"billed session {sid}: sale lines sum to {lines_total} fen,"
                        f" total_fen is {s['total_fen']}"
                    )
                missing = line_lanes.get(sid, set()) - evidence_lanes.get(sid, set())
                if missing:
                    problems.append(
                        f"billed session {sid}: no evidence for lanes {sorted(missing)}"
                    )
            else:
                if n_lines:
                    problems.append(f"{state} session {sid} has {n_lines} sale lines")
                if sid in evidence_lanes:
                    problems.append(f"{state} session {sid} has evidence rows")
            if state == "expired" and (
                s["total_fen"] != 0
                or s["expired_at"] is None
                or "unlock_unused" not in json.loads(s["flags"])
            ):
                problems.append(f"expired session {sid} is not a zero unlock_unused record")
        return problems

    def _check_events(self, outbox: Mapping[int, Any], acked: int) -> list[str]:
        problems: list[str] = []
        for e in self._rows("SELECT id, outbox_seq FROM events ORDER BY id"):
            eid, seq = e["id"], e["outbox_seq"]
            if seq is None:
                problems.append(f"event {eid} has no outbox seq")
            elif seq > acked:
                row = outbox.get(seq)
                if row is None:
                    problems.append(f"event {eid}: outbox row {seq} is missing")
                elif row["kind"] != "event" or row["ref"] != str(eid):
                    problems.append(f"event {eid}: outbox row {seq} is {row['kind']} {row['ref']}")
        return problems

    def _check_outbox_refs(self, outbox: Mapping[int, Any]) -> list[str]:
        problems: list[str] = []
        sessions = {
            r["session_id"]: r
            for r in self._rows("SELECT session_id, state, total_fen, outbox_seq FROM sessions")
        }
        events = {
            str(r["id"]): r["outbox_seq"] for r in self._rows("SELECT id, outbox_seq FROM events")
        }
        for seq, row in outbox.items():
            if row["kind"] == "sale":
                s = sessions.get(row["ref"])
                if s is None:
                    problems.append(f"outbox sale {seq}: no session {row['ref']}")
                    continue
                if s["state"] not in ("billed", "expired"):
                    problems.append(f"outbox sale {seq}: session {row['ref']} is {s['state']}")
                if s["outbox_seq"] != seq:
                    problems.append(
                        f"outbox sale {seq}: session {row['ref']} points at seq {s['outbox_seq']}"
                    )
                payload = json.loads(row["payload_json"])
                if (
                    isinstance(payload, dict)
                    and "total_fen" in payload
                    and payload["total_fen"] != s["total_fen"]
                ):
                    problems.append(
                        f"outbox sale {seq}: payload total {payload['total_fen']}"
                        f" != session total {s['total_fen']}"
                    )
            elif row["kind"] == "event":
                if row["ref"] not in events:
                    problems.append(f"outbox event {seq}: no event {row['ref']}")
                elif events[row["ref"]] != seq:
                    problems.append(
                        f"outbox event {seq}: event {row['ref']} points at seq {events[row['ref']]}"
                    )
        return problems


# ---------------------------------------------------------------- row builders


def _session_row(r: Mapping[str, Any]) -> SessionRow:
    baseline = json.loads(r["baseline_json"]) if r["baseline_json"] else {}
    return SessionRow(
        session_id=r["session_id"],
        cabinet_id=r["cabinet_id"],
        resident=r["resident"],
        role=r["role"],
        state=r["state"],
        unlocked_at=float(r["unlocked_at"]),
        unlocked_iso=r["unlocked_iso"],
        opened_at=_opt_float(r["opened_at"]),
        opened_iso=r["opened_iso"],
        closed_at=_opt_float(r["closed_at"]),
        closed_iso=r["closed_iso"],
        billed_at=_opt_float(r["billed_at"]),
        billed_iso=r["billed_iso"],
        expired_at=_opt_float(r["expired_at"]),
        expired_iso=r["expired_iso"],
        total_fen=r["total_fen"],
        flags=list(json.loads(r["flags"])),
        baseline={int(lane): float(g) for lane, g in baseline.items()},
        recovered=bool(r["recovered"]),
        outbox_seq=r["outbox_seq"],
    )


def _event_row(r: Mapping[str, Any]) -> EventRow:
    return EventRow(
        id=r["id"],
        t=float(r["t"]),
        at=r["at"],
        type=r["type"],
        session_id=r["session_id"],
        severity=r["severity"],
        acknowledged=bool(r["acknowledged"]),
        acknowledged_at=r["acknowledged_at"],
        data=json.loads(r["data_json"]),
        outbox_seq=r["outbox_seq"],
    )

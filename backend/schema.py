"""The backend's tables (SQLAlchemy Core), on SQLite or PostgreSQL.

Conventions: money is integer fen, weights grams, times UTC ISO 8601 strings with
milliseconds and a ``Z`` (``2026-11-28T10:15:50.412Z``: they sort as text and their
first 10 characters are the day). JSON documents (sale lines, evidence, telemetry) are
kept as canonical text. The migrations under ``backend/migrations`` create exactly
these tables; a test compares them. The ingest's chain tables (``enrolment``, ``heads``,
``records``, ``held``, ``quarantine``, ``alarms``) belong to ``cloud_sync.ingest_db``
and are created by the first migration.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ROLES = ("resident", "operator", "supplier", "admin")
LANE_MODES = ("unit", "tracked", "weighed")
WALLET_KINDS = ("topup", "charge", "refund", "adjust")
REVIEW_STATES = ("none", "pending", "confirmed", "refunded")

TS = String(32)  # a UTC ISO 8601 time
ID = String(64)  # an identifier: cabinet, supplier, operator

operators = Table(
    "operators",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
)

suppliers = Table(
    "suppliers",
    metadata,
    Column("id", ID, primary_key=True),  # also its MQTT topic segment
    Column("name", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
)

households = Table(
    "households",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("building", String(40), nullable=False),
    Column("unit", String(40), nullable=False),
    Column("name", String(200), nullable=False, server_default=""),
    UniqueConstraint("building", "unit", name="uq_households_building_unit"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("household_id", Integer, ForeignKey("households.id"), nullable=True),
    Column("operator_id", ID, ForeignKey("operators.id"), nullable=True),
    Column("supplier_id", ID, ForeignKey("suppliers.id"), nullable=True),
    # the id a cabinet's unlock and sale carry for a resident ("r-17")
    Column("resident_code", String(32), nullable=True, unique=True),
    Column("balance_fen", BigInteger, nullable=False, server_default="0"),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_at", TS, nullable=False),
    CheckConstraint("role IN ('resident', 'operator', 'supplier', 'admin')", name="role"),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(100), nullable=False, server_default=""),
    Column("created_at", TS, nullable=False),
    Column("last_used_at", TS, nullable=True),
)

cabinets = Table(
    "cabinets",
    metadata,
    Column("id", ID, primary_key=True),
    Column("operator_id", ID, ForeignKey("operators.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("location", String(200), nullable=False, server_default=""),
    Column("public_key", String(128), nullable=True),
    Column("online", Boolean, nullable=False, server_default="0"),
    Column("status_at", TS, nullable=True),
    Column("door", String(16), nullable=False, server_default="unknown"),
    Column("lock", String(16), nullable=False, server_default="unknown"),
    Column("temperature_c", Float, nullable=True),
    Column("telemetry_json", Text, nullable=True),
    Column("telemetry_at", TS, nullable=True),
    Column("inventory_json", Text, nullable=True),
    Column("inventory_at", TS, nullable=True),
    Column("created_at", TS, nullable=False),
)

lanes = Table(
    "lanes",
    metadata,
    Column("cabinet_id", ID, ForeignKey("cabinets.id", ondelete="CASCADE"), nullable=False),
    Column("lane", Integer, nullable=False),
    Column("sku", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("mode", String(16), nullable=False),
    # fen per item (unit, tracked) or per kg (weighed)
    Column("price_fen", Integer, nullable=False),
    Column("unit_weight_g", Float, nullable=True),
    Column("par_level", Integer, nullable=False, server_default="6"),
    Column("supplier_id", ID, ForeignKey("suppliers.id"), nullable=True),
    # what the cabinet last reported: items (unit, tracked) and grams
    Column("stock_count", Integer, nullable=True),
    Column("stock_g", Float, nullable=True),
    Column("updated_at", TS, nullable=False),
    PrimaryKeyConstraint("cabinet_id", "lane"),
    CheckConstraint("mode IN ('unit', 'tracked', 'weighed')", name="mode"),
)

wallet_entries = Table(
    "wallet_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),  # signed: charges are negative
    Column("balance_after_fen", BigInteger, nullable=False),
    # the idempotence key: "charge:cab-1:12", "topup:sim-0001", "refund:cab-1:12"
    Column("ref", String(120), nullable=False, unique=True),
    Column("note", String(300), nullable=False, server_default=""),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=True),
    Column("created_at", TS, nullable=False),
    CheckConstraint("kind IN ('topup', 'charge', 'refund', 'adjust')", name="kind"),
)
Index("ix_wallet_entries_user", wallet_entries.c.user_id, wallet_entries.c.id)

unlocks = Table(
    "unlocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("nonce", String(64), nullable=False, unique=True),
    Column("cabinet_id", ID, ForeignKey("cabinets.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("role", String(16), nullable=False),
    # sent -> unlocked -> billed | door_never_opened; or refused | timeout
    Column("status", String(24), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("session_id", String(64), nullable=True),
    Column("sale_seq", BigInteger, nullable=True),
    Column("requested_at", TS, nullable=False),
    Column("answered_at", TS, nullable=True),
    Column("latency_ms", Float, nullable=True),
)
Index("ix_unlocks_cabinet", unlocks.c.cabinet_id, unlocks.c.id)

sales = Table(
    "sales",
    metadata,
    Column("cabinet_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("resident_code", String(64), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=True),
    Column("role", String(16), nullable=False),
    Column("total_fen", BigInteger, nullable=False),
    Column("charged_fen", BigInteger, nullable=False, server_default="0"),
    Column("refunded_fen", BigInteger, nullable=False, server_default="0"),
    Column("flags_json", Text, nullable=False),
    Column("lines_json", Text, nullable=False),
    Column("evidence_json", Text, nullable=False),
    Column("record_hash", String(64), nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("at", TS, nullable=False),  # when the cabinet wrote the record
    Column("review", String(16), nullable=False, server_default="none"),
    Column("reviewed_by", Integer, ForeignKey("users.id"), nullable=True),
    Column("reviewed_at", TS, nullable=True),
    Column("stored_at", TS, nullable=False),
    PrimaryKeyConstraint("cabinet_id", "seq"),
    CheckConstraint("review IN ('none', 'pending', 'confirmed', 'refunded')", name="review"),
)
Index("ix_sales_user", sales.c.user_id, sales.c.at)
Index("ix_sales_at", sales.c.at)

sale_lines = Table(
    "sale_lines",
    metadata,
    Column("cabinet_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("lane", Integer, nullable=False),
    Column("sku", String(64), nullable=False),
    Column("qty", Integer, nullable=True),
    Column("weight_g", Float, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("at", TS, nullable=False),
    PrimaryKeyConstraint("cabinet_id", "seq", "line_no"),
)
Index("ix_sale_lines_at", sale_lines.c.at)

cabinet_alarms = Table(
    "cabinet_alarms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cabinet_id", ID, nullable=False),
    # door_open_too_long, door_forced, sensor_fault, misplaced_return, needs_review,
    # foreign_object, quarantined, offline ...
    Column("kind", String(40), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("at", TS, nullable=False),
    Column("session_id", String(64), nullable=True),
    Column("seq", BigInteger, nullable=True),
    Column("detail_json", Text, nullable=False, server_default="{}"),
    # one alarm per (cabinet, record, kind): a redelivered record raises nothing new
    Column("dedupe", String(160), nullable=False, unique=True),
    Column("cleared_at", TS, nullable=True),
    Column("cleared_by", Integer, ForeignKey("users.id"), nullable=True),
)
Index("ix_cabinet_alarms_open", cabinet_alarms.c.cabinet_id, cabinet_alarms.c.cleared_at)

commands = Table(
    "commands",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("nonce", String(64), nullable=False, unique=True),
    Column("cabinet_id", ID, ForeignKey("cabinets.id"), nullable=False),
    Column("name", String(32), nullable=False),
    Column("args_json", Text, nullable=False),
    Column("status", String(24), nullable=False),  # sent, done, refused, timeout
    Column("reason", String(64), nullable=True),
    Column("sent_by", Integer, ForeignKey("users.id"), nullable=True),
    Column("sent_at", TS, nullable=False),
    Column("answered_at", TS, nullable=True),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("supplier_id", ID, ForeignKey("suppliers.id"), nullable=False),
    Column("cabinet_id", ID, ForeignKey("cabinets.id"), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("note", String(300), nullable=False, server_default=""),
    Column("status", String(16), nullable=False),  # confirmed (by the supplier), placed
    Column("confirmed_by", Integer, ForeignKey("users.id"), nullable=True),
    Column("confirmed_at", TS, nullable=False),
    Column("placed_qty", Integer, nullable=True),
    Column("placed_at", TS, nullable=True),
    CheckConstraint("qty > 0", name="qty"),
)

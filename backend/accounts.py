"""Accounts: users and their roles, web sessions, and API tokens.

A web session is a random 256-bit token in an HttpOnly cookie; the database keeps
only its SHA-256, so a copy of the database logs nobody in. API tokens (suppliers'
scripts) work the same way, sent as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from backend import schema as t
from backend.clock import iso
from backend.errors import Conflict, InputError
from backend.passwords import hash_password, needs_rehash, verify_password

__all__ = [
    "Principal",
    "authenticate",
    "create_household",
    "create_token",
    "create_user",
    "end_session",
    "principal_by_session",
    "principal_by_token",
    "principal_by_username",
    "start_session",
]

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is making a request, and what they may see."""

    user_id: int
    username: str
    role: str
    display_name: str
    operator_id: str | None = None
    supplier_id: str | None = None
    household_id: int | None = None
    resident_code: str | None = None
    csrf_token: str | None = None  # set for cookie sessions: state changes must echo it
    via_token: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "role": self.role,
            "display_name": self.display_name,
            "operator_id": self.operator_id,
            "supplier_id": self.supplier_id,
            "household_id": self.household_id,
            "resident_code": self.resident_code,
        }


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _principal(row: Any, csrf: str | None = None, via_token: bool = False) -> Principal:
    return Principal(
        user_id=row.id,
        username=row.username,
        role=row.role,
        display_name=row.display_name,
        operator_id=row.operator_id,
        supplier_id=row.supplier_id,
        household_id=row.household_id,
        resident_code=row.resident_code,
        csrf_token=csrf,
        via_token=via_token,
    )


# ------------------------------------------------------------------ users


def create_household(conn: Connection, building: str, unit: str, name: str = "") -> int:
    """The household at ``building``/``unit`` (created if new)."""
    row = conn.execute(
        select(t.households.c.id).where(
            t.households.c.building == building, t.households.c.unit == unit
        )
    ).first()
    if row is not None:
        return int(row.id)
    res = conn.execute(insert(t.households).values(building=building, unit=unit, name=name))
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def create_user(
    conn: Connection,
    *,
    username: str,
    password: str,
    role: str,
    display_name: str,
    now: datetime,
    household_id: int | None = None,
    operator_id: str | None = None,
    supplier_id: str | None = None,
) -> int:
    """Create a user; the checks name the field that is wrong."""
    if not USERNAME.fullmatch(username):
        raise InputError("username", "2-64 of a-z 0-9 . _ -, starting with a letter or digit")
    if role not in t.ROLES:
        raise InputError("role", f"must be one of {', '.join(t.ROLES)}")
    if len(password) < 8:
        raise InputError("password", "must be at least 8 characters")
    if not display_name.strip() or len(display_name) > 200:
        raise InputError("display_name", "must be 1-200 characters")
    if role == "resident" and household_id is None:
        raise InputError("household", "a resident belongs to a household")
    if role == "operator" and operator_id is None:
        raise InputError("operator_id", "an operator account belongs to a property company")
    if role == "supplier" and supplier_id is None:
        raise InputError("supplier_id", "a supplier account belongs to a vegetable base")
    taken = conn.execute(select(t.users.c.id).where(t.users.c.username == username)).first()
    if taken is not None:
        raise Conflict(f"username {username!r} is taken")
    res = conn.execute(
        insert(t.users).values(
            username=username,
            password_hash=hash_password(password),
            role=role,
            display_name=display_name.strip(),
            household_id=household_id,
            operator_id=operator_id,
            supplier_id=supplier_id,
            created_at=iso(now),
        )
    )
    pk = res.inserted_primary_key
    assert pk is not None
    user_id = int(pk[0])
    if role == "resident":
        conn.execute(
            update(t.users).where(t.users.c.id == user_id).values(resident_code=f"r-{user_id}")
        )
    return user_id


def authenticate(conn: Connection, username: str, password: str) -> Principal | None:
    """The user if the password is right (constant work whether or not the user exists)."""
    row = conn.execute(select(t.users).where(t.users.c.username == username)).first()
    ok = verify_password(None if row is None else row.password_hash, password)
    if row is None or not ok or row.disabled:
        return None
    if needs_rehash(row.password_hash):
        conn.execute(
            update(t.users)
            .where(t.users.c.id == row.id)
            .values(password_hash=hash_password(password))
        )
    return _principal(row)


def principal_by_username(conn: Connection, username: str) -> Principal:
    """The principal of a user, without a password: for the backend's own simulated
    residents (the demo), never for a request."""
    row = conn.execute(select(t.users).where(t.users.c.username == username)).one()
    return _principal(row)


# ------------------------------------------------------------------ web sessions


def start_session(conn: Connection, user_id: int, now: datetime, hours: float) -> tuple[str, str]:
    """A new session: ``(cookie token, csrf token)``."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    conn.execute(delete(t.web_sessions).where(t.web_sessions.c.expires_at < iso(now)))
    conn.execute(
        insert(t.web_sessions).values(
            token_hash=_digest(token),
            user_id=user_id,
            csrf_token=csrf,
            created_at=iso(now),
            expires_at=iso(now + timedelta(hours=hours)),
        )
    )
    return token, csrf


def principal_by_session(conn: Connection, token: str, now: datetime) -> Principal | None:
    row = conn.execute(
        select(t.users, t.web_sessions.c.csrf_token)
        .join(t.web_sessions, t.web_sessions.c.user_id == t.users.c.id)
        .where(
            t.web_sessions.c.token_hash == _digest(token),
            t.web_sessions.c.expires_at > iso(now),
            t.users.c.disabled.is_(False),
        )
    ).first()
    return None if row is None else _principal(row, csrf=row.csrf_token)


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(t.web_sessions).where(t.web_sessions.c.token_hash == _digest(token)))


# ------------------------------------------------------------------ API tokens


def create_token(conn: Connection, user_id: int, label: str, now: datetime) -> str:
    """A new API token for ``user_id``; only its hash is kept, so show it once."""
    token = "fbt_" + secrets.token_urlsafe(32)
    conn.execute(
        insert(t.api_tokens).values(
            user_id=user_id, token_hash=_digest(token), label=label[:100], created_at=iso(now)
        )
    )
    return token


def principal_by_token(conn: Connection, token: str, now: datetime) -> Principal | None:
    row = conn.execute(
        select(t.users, t.api_tokens.c.id.label("token_id"))
        .join(t.api_tokens, t.api_tokens.c.user_id == t.users.c.id)
        .where(t.api_tokens.c.token_hash == _digest(token), t.users.c.disabled.is_(False))
    ).first()
    if row is None:
        return None
    conn.execute(
        update(t.api_tokens).where(t.api_tokens.c.id == row.token_id).values(last_used_at=iso(now))
    )
    return _principal(row, via_token=True)


def count_users(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(t.users)).scalar_one())

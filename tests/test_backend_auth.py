"""Logins, sessions, CSRF, tokens and the JSON error contract."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from backend_env import Env, login


async def test_login_me_logout(api: TestClient[Any, Any]) -> None:
    resp = await api.get("/api/me")
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    csrf = await login(api, "li.wei")
    body = await (await api.get("/api/me")).json()
    assert body["user"]["role"] == "resident" and body["user"]["resident_code"].startswith("r-")
    assert body["csrf"] == csrf
    resp = await api.post("/logout", headers={"X-CSRF-Token": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await api.get("/api/me")).status == 401


async def test_wrong_password_and_unknown_user(api: TestClient[Any, Any]) -> None:
    for user, pw in (("li.wei", "nope-nope"), ("nobody", "whatever1")):
        resp = await api.post("/api/login", json={"username": user, "password": pw})
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"


async def test_bad_input_is_json_naming_the_field(api: TestClient[Any, Any]) -> None:
    resp = await api.post("/api/login", json={"username": "li.wei"})
    assert resp.status == 400
    assert await resp.json() == {
        "error": "invalid",
        "field": "password",
        "message": "is required",
    }
    resp = await api.post(
        "/api/login", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["field"] == "body"
    resp = await api.post("/api/login", json=["a", "list"])
    assert resp.status == 400 and (await resp.json())["field"] == "body"


async def test_state_change_needs_csrf(api: TestClient[Any, Any]) -> None:
    await login(api, "li.wei")
    resp = await api.post("/logout", allow_redirects=False)
    assert resp.status == 403
    assert "CSRF" in (await resp.json())["message"]


async def test_password_is_hashed_with_argon2(backend_env: Env) -> None:
    from sqlalchemy import select

    from backend import schema as t

    row = backend_env.backend.db.read(
        lambda c: c.execute(
            select(t.users.c.password_hash).where(t.users.c.username == "ops")
        ).one()
    )
    assert row.password_hash.startswith("$argon2id$")


async def test_unknown_route_is_json_404(api: TestClient[Any, Any]) -> None:
    resp = await api.get("/api/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"

"""The resident's side: cabinet page, Open, wallet, receipts, live events, QR codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import qrcode
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from backend_env import Env, login, make_env
from backend_sales import CabinetFeed, line
from PIL import Image
from sqlalchemy import select, update

import backend.views_resident as views
from backend import schema as t
from backend import wallet
from backend.app import create_app
from backend.errors import InputError
from backend.fleet import CommandResult
from backend.payments import Payment
from backend.qr import BORDER, cabinet_url, qr_matrix, qr_svg, write_qr_png

HTML = {"Accept": "text/html"}


# ------------------------------------------------------------------ helpers


class FakeFleet:
    """Answers every command with ``result``; remembers what was sent."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def command(
        self, cabinet_id: str, name: str, args: dict[str, Any], **kw: Any
    ) -> CommandResult:
        self.sent.append((cabinet_id, name, args))
        return self.result


UNLOCKED = CommandResult(True, "unlocked", None, {"session_id": "S1"})


def set_online(env: Env, cabinet_id: str, online: bool = True) -> None:
    env.backend.db.write(
        lambda c: c.execute(
            update(t.cabinets).where(t.cabinets.c.id == cabinet_id).values(online=online)
        )
    )


def use_fleet(env: Env, result: CommandResult) -> FakeFleet:
    fleet = FakeFleet(result)
    env.backend.fleet = fleet  # type: ignore[assignment]
    set_online(env, "cab-east-1")
    return fleet


def balance(env: Env, username: str) -> int:
    return env.backend.db.read(wallet.balance, env.users[username])


async def as_user(api: TestClient[Any, Any], username: str) -> str:
    """Log in as ``username`` (whoever was logged in before); returns the CSRF token."""
    api.session.cookie_jar.clear()
    return await login(api, username)


async def open_(api: TestClient[Any, Any], csrf: str, cabinet: str = "cab-east-1") -> Any:
    return await api.post(f"/api/cabinets/{cabinet}/open", headers={"X-CSRF-Token": csrf})


async def sse_until(resp: ClientResponse, prefix: bytes, timeout: float = 5.0) -> bytes:
    """The next line of an event stream that starts with ``prefix``."""

    async def read() -> bytes:
        while True:
            raw = await resp.content.readline()
            if not raw:
                raise AssertionError("the event stream ended")
            if raw.startswith(prefix):
                return raw.rstrip(b"\n")

    return await asyncio.wait_for(read(), timeout)


async def next_event(resp: ClientResponse) -> dict[str, Any]:
    raw = await sse_until(resp, b"data: ")
    event: dict[str, Any] = json.loads(raw[len(b"data: ") :])
    return event


# ------------------------------------------------------------------ QR codes


def test_cabinet_url() -> None:
    assert cabinet_url("https://shop.example", "cab-east-1") == "https://shop.example/c/cab-east-1"
    assert cabinet_url("http://127.0.0.1:8080/", "cab-1") == "http://127.0.0.1:8080/c/cab-1"
    for bad in ("", "cab 1", "../etc", "cab/1", "x" * 200):
        with pytest.raises(InputError) as err:
            cabinet_url("https://shop.example", bad)
        assert err.value.field == "cabinet"
    with pytest.raises(InputError) as err:
        cabinet_url("shop.example", "cab-1")
    assert err.value.field == "public_url"


def test_qr_png_matches_the_code_for_the_url(tmp_path: Path) -> None:
    url = cabinet_url("http://127.0.0.1:8080", "cab-east-1")
    path = tmp_path / "cab-east-1.png"
    write_qr_png(url, path, box_size=6)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cab-east-1.png"]  # no temp file left
    reference = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=BORDER)
    reference.add_data(url)
    reference.make(fit=True)
    matrix = reference.get_matrix()
    assert qr_matrix(url) == [[bool(m) for m in row] for row in matrix]
    n = len(matrix)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (n * 6, n * 6)
        gray = img.convert("L")
        # every module's centre pixel has the module's colour: the picture is the code
        for y in range(n):
            for x in range(n):
                dark = gray.getpixel((x * 6 + 3, y * 6 + 3)) < 128
                assert dark == bool(matrix[y][x]), (x, y)


def test_qr_png_box_size_and_errors(tmp_path: Path) -> None:
    url = "https://shop.example/c/cab-1"
    write_qr_png(url, tmp_path / "big.png")
    n = len(qr_matrix(url))
    with Image.open(tmp_path / "big.png") as img:
        assert img.size == (n * 10, n * 10)
    with pytest.raises(InputError):
        write_qr_png("", tmp_path / "x.png")
    with pytest.raises(InputError):
        write_qr_png(url, tmp_path / "x.png", box_size=0)
    with pytest.raises(OSError):
        write_qr_png(url, tmp_path / "missing-dir" / "x.png")


def test_qr_svg() -> None:
    url = "https://shop.example/c/cab-1"
    svg = qr_svg(url)
    n = len(qr_matrix(url))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert f'viewBox="0 0 {n} {n}"' in svg
    assert hasattr(svg, "__html__")  # Markup: a template shows it as it is
    assert "&lt;b&gt;" in qr_svg(url, title="<b>")


# ------------------------------------------------------------------ pages


async def test_cabinet_page_for_visitors(api: TestClient[Any, Any]) -> None:
    resp = await api.get("/c/cab-east-1", headers=HTML)
    assert resp.status == 200
    page = await resp.text()
    assert "East gate" in page and "Building 3" in page
    assert 'data-testid="cabinet-online">offline' in page
    assert "¥6.90 / item" in page and "¥8.00 / kg" in page and "Bok choy" in page
    assert 'data-testid="open" href="/login?next=/c/cab-east-1"' in page
    assert 'data-testid="balance"' not in page
    resp = await api.get("/c/no-such-cabinet", headers=HTML)
    assert resp.status == 404 and "no cabinet" in (await resp.text()).lower()
    assert (await api.get("/c/bad%20id", headers=HTML)).status == 404


async def test_cabinet_page_for_residents(api: TestClient[Any, Any], backend_env: Env) -> None:
    await as_user(api, "li.wei")
    page = await (await api.get("/c/cab-east-1", headers=HTML)).text()
    assert 'data-testid="open" id="open"' in page
    assert 'data-testid="open-status"' in page and 'data-testid="receipt"' in page
    assert 'data-testid="balance">¥50.00' in page
    assert "/static/resident.js" in page and 'name="csrf"' in page
    assert 'data-testid="balance-hint"' not in page
    await as_user(api, "wang.fang")
    page = await (await api.get("/c/cab-east-1", headers=HTML)).text()
    assert 'data-testid="balance-hint"' in page and "-¥3.50" in page
    await as_user(api, "ops")
    page = await (await api.get("/c/cab-east-1", headers=HTML)).text()
    assert 'data-testid="open"' not in page and 'data-testid="open-note"' in page


async def test_me_page(api: TestClient[Any, Any], backend_env: Env) -> None:
    resp = await api.get("/me", headers=HTML, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login?next=/me"
    feed = CabinetFeed(backend_env)
    feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 2, 1001.9, 690)])
    await as_user(api, "li.wei")
    resp = await api.get("/me", headers=HTML)
    assert resp.status == 200
    page = await resp.text()
    assert 'data-testid="balance" id="balance">¥36.20' in page
    assert 'data-testid="topup"' in page and 'data-testid="history"' in page
    assert 'data-testid="receipt-item"' in page and "Tomatoes 500 g" in page
    assert "verified ✓" in page and 'class="hash"' in page
    for username in ("ops", "base", "admin"):
        await as_user(api, username)
        resp = await api.get("/me", headers=HTML)
        assert resp.status == 403
        assert "text/html" in resp.headers["Content-Type"]


# ------------------------------------------------------------------ roles


async def test_unauthenticated_api_is_401(api: TestClient[Any, Any]) -> None:
    for path in ("/api/wallet", "/api/receipts", "/api/receipts/cab-east-1/1", "/api/events"):
        resp = await api.get(path)
        assert resp.status == 401, path
        assert (await resp.json())["error"] == "unauthorized"
    for path in ("/api/cabinets/cab-east-1/open", "/api/wallet/topup"):
        resp = await api.post(path, json={"amount_fen": 100})
        assert resp.status == 401, path
    # the cabinet's public information needs no login
    body = await (await api.get("/api/cabinets/cab-east-1")).json()
    assert body["name"] == "East gate" and body["online"] is False
    assert [(ln["sku"], ln["per"]) for ln in body["lanes"]] == [
        ("tomato-500", "item"),
        ("bokchoy", "kg"),
        ("eggs-10", "item"),
        ("chili-150", "item"),
    ]
    assert (await api.get("/api/cabinets/nope")).status == 404


async def test_other_roles_cannot_shop_or_see_receipts(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    feed = CabinetFeed(backend_env)
    seq = feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 1, 500.0, 690)])
    use_fleet(backend_env, UNLOCKED)
    for username in ("ops", "base", "admin"):
        csrf = await as_user(api, username)
        resp = await open_(api, csrf)
        assert resp.status == 403, username
        assert (await resp.json())["error"] == "forbidden"
        assert (await api.get("/api/receipts")).status == 403
        assert (await api.get(f"/api/receipts/cab-east-1/{seq}")).status == 403
        assert (await api.get("/api/wallet")).status == 403
        resp = await api.post(
            "/api/wallet/topup", json={"amount_fen": 100}, headers={"X-CSRF-Token": csrf}
        )
        assert resp.status == 403


async def test_a_resident_sees_only_their_own_receipts(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    feed = CabinetFeed(backend_env)
    mine = feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 2, 1001.9, 690)])
    backend_env.clock.advance(60)
    theirs = feed.sale("cab-east-1", "zhang.min", [line(4, "chili-150", 1, 151.0, 380)])
    await as_user(api, "zhang.min")
    body = await (await api.get("/api/receipts")).json()
    assert [(r["cabinet_id"], r["seq"]) for r in body["receipts"]] == [("cab-east-1", theirs)]
    resp = await api.get(f"/api/receipts/cab-east-1/{mine}")
    assert resp.status == 404  # not 403: whether it exists is none of her business
    assert (await api.get("/api/receipts/cab-east-1/999")).status == 404
    assert (await api.get("/api/receipts/cab-east-1/x1")).status == 404
    assert (await api.get("/api/receipts/bad%20id/1")).status == 404
    doc = await (await api.get(f"/api/receipts/cab-east-1/{theirs}")).json()
    assert doc["lines"][0]["name"] == "Chili 150 g" and doc["total_fen"] == 380


# ------------------------------------------------------------------ Open


async def test_open_is_refused_when_the_cabinet_is_offline(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    assert backend_env.backend.fleet is None
    csrf = await as_user(api, "li.wei")
    resp = await open_(api, csrf)
    assert resp.status == 503
    body = await resp.json()
    assert body["ok"] is False and body["error"] == "cabinet_offline"
    assert body["reason"] == "cabinet_offline" and "offline" in body["message"]
    assert body["balance_fen"] == 5000
    resp = await open_(api, csrf, "cab-nowhere")
    assert resp.status == 404
    # without the CSRF token a cookie session cannot open anything
    resp = await api.post("/api/cabinets/cab-east-1/open")
    assert resp.status == 403


async def test_open_is_refused_for_a_negative_balance(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    fleet = use_fleet(backend_env, UNLOCKED)
    csrf = await as_user(api, "wang.fang")
    resp = await open_(api, csrf)
    assert resp.status == 402
    body = await resp.json()
    assert body["error"] == "balance_too_low" and body["balance_fen"] == -350
    assert "top up" in body["message"].lower()
    assert fleet.sent == []  # nothing was sent to the cabinet


async def test_open_unlocks_and_then_the_cabinet_is_busy(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    fleet = use_fleet(backend_env, UNLOCKED)
    csrf = await as_user(api, "li.wei")
    resp = await open_(api, csrf)
    assert resp.status == 200
    body = await resp.json()
    assert body["ok"] is True and body["status"] == "unlocked" and body["session_id"] == "S1"
    assert body["message"].startswith("Door open") and "error" not in body
    code = f"r-{backend_env.users['li.wei']}"
    assert fleet.sent == [("cab-east-1", "unlock", {"resident": code, "role": "resident"})]
    row = backend_env.backend.db.read(lambda c: c.execute(select(t.unlocks)).one())
    assert row.status == "unlocked" and row.session_id == "S1"
    csrf = await as_user(api, "zhang.min")
    resp = await open_(api, csrf)
    assert resp.status == 409
    assert (await resp.json())["error"] == "busy"


@pytest.mark.parametrize(
    ("result", "status", "reason"),
    [
        (CommandResult(False, "refused", "busy", {}), 409, "busy"),
        (CommandResult(False, "refused", "expired", {}), 409, "refused:expired"),
        (CommandResult(False, "timeout", "timeout", {}), 504, "no_answer"),
        (CommandResult(False, "timeout", "backend_offline", {}), 503, "cabinet_offline"),
    ],
)
async def test_open_status_follows_the_cabinets_answer(
    api: TestClient[Any, Any],
    backend_env: Env,
    result: CommandResult,
    status: int,
    reason: str,
) -> None:
    use_fleet(backend_env, result)
    csrf = await as_user(api, "li.wei")
    resp = await open_(api, csrf)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == reason and body["reason"] == reason and body["message"]


@pytest.fixture
def strict_env(database_target: str, tmp_path: Path) -> Iterator[Env]:
    env = make_env(database_target, tmp_path, backend__min_balance_fen=6000)
    yield env
    env.backend.db.close()


@pytest_asyncio.fixture
async def strict_api(strict_env: Env) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(strict_env.backend)))
    await client.start_server()
    strict_env.backend.bus.bind(asyncio.get_running_loop())
    yield client
    await client.close()


async def test_minimum_balance_comes_from_the_settings(
    strict_api: TestClient[Any, Any], strict_env: Env
) -> None:
    assert strict_env.backend.settings.min_balance_fen == 6000
    use_fleet(strict_env, UNLOCKED)
    csrf = await as_user(strict_api, "li.wei")  # ¥50 < ¥60
    resp = await open_(strict_api, csrf)
    assert resp.status == 402
    assert (await resp.json())["error"] == "balance_too_low"
    page = await (await strict_api.get("/c/cab-east-1", headers=HTML)).text()
    assert "at least ¥60.00" in page
    resp = await strict_api.post(
        "/api/wallet/topup", json={"amount_fen": 1000}, headers={"X-CSRF-Token": csrf}
    )
    assert (await resp.json())["balance_fen"] == 6000
    resp = await open_(strict_api, csrf)
    assert resp.status == 200


# ------------------------------------------------------------------ wallet


async def test_topup_credits_the_wallet(api: TestClient[Any, Any], backend_env: Env) -> None:
    csrf = await as_user(api, "li.wei")
    h = {"X-CSRF-Token": csrf}
    resp = await api.post("/api/wallet/topup", json={"amount_fen": 2000}, headers=h)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "credited" and body["balance_fen"] == 7000
    assert body["entry"]["ref"] == f"topup:sim:{body['payment']['reference']}"
    assert balance(backend_env, "li.wei") == 7000
    w = await (await api.get("/api/wallet")).json()
    assert w["balance_fen"] == 7000 and w["min_balance_fen"] == 0
    assert [(e["kind"], e["amount_fen"]) for e in w["history"]] == [
        ("topup", 2000),
        ("topup", 5000),
    ]
    assert w["history"][0]["balance_after_fen"] == 7000
    # a second top-up is a second payment with its own reference
    body2 = await (await api.post("/api/wallet/topup", json={"amount_fen": 1}, headers=h)).json()
    assert body2["entry"]["ref"] != body["entry"]["ref"] and body2["balance_fen"] == 7001
    # a form post works too
    resp = await api.post("/api/wallet/topup", data={"amount_fen": "99", "csrf": csrf})
    assert resp.status == 200 and (await resp.json())["balance_fen"] == 7100


@pytest.mark.parametrize("amount", [None, 0, -5, 100_001, "abc", 12.5, True, "1e3"])
async def test_topup_validation_names_amount_fen(
    api: TestClient[Any, Any], backend_env: Env, amount: Any
) -> None:
    csrf = await as_user(api, "li.wei")
    data = {} if amount is None else {"amount_fen": amount}
    resp = await api.post("/api/wallet/topup", json=data, headers={"X-CSRF-Token": csrf})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid" and body["field"] == "amount_fen"
    assert balance(backend_env, "li.wei") == 5000


async def test_topup_needs_csrf(api: TestClient[Any, Any], backend_env: Env) -> None:
    await as_user(api, "li.wei")
    resp = await api.post("/api/wallet/topup", json={"amount_fen": 100})
    assert resp.status == 403
    assert balance(backend_env, "li.wei") == 5000


class EchoProvider:
    """A provider that confirms the same payment twice (a redelivered confirmation)."""

    name = "echo"

    def __init__(self, confirmed: bool = True) -> None:
        self.confirmed = confirmed

    def charge(self, user_id: int, amount_fen: int) -> Payment:
        return Payment(self.name, "pay-0001", amount_fen, self.confirmed)


async def test_topup_is_idempotent_on_the_payment_reference(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    backend_env.backend.payments = EchoProvider()
    csrf = await as_user(api, "li.wei")
    h = {"X-CSRF-Token": csrf}
    first = await (await api.post("/api/wallet/topup", json={"amount_fen": 500}, headers=h)).json()
    again = await (await api.post("/api/wallet/topup", json={"amount_fen": 500}, headers=h)).json()
    assert first["status"] == "credited" and first["balance_fen"] == 5500
    assert again["status"] == "already_credited" and again["balance_fen"] == 5500
    assert again["entry"]["ref"] == "topup:echo:pay-0001"
    assert balance(backend_env, "li.wei") == 5500
    # the wallet itself refuses a second entry with the same ref
    posted = backend_env.backend.db.write(
        wallet.post,
        backend_env.users["li.wei"],
        "topup",
        500,
        "topup:echo:pay-0001",
        backend_env.clock.now(),
    )
    assert posted is False and balance(backend_env, "li.wei") == 5500


async def test_unconfirmed_payment_credits_nothing_yet(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    backend_env.backend.payments = EchoProvider(confirmed=False)
    csrf = await as_user(api, "li.wei")
    resp = await api.post(
        "/api/wallet/topup", json={"amount_fen": 500}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status == 202 and (await resp.json())["status"] == "pending"
    assert balance(backend_env, "li.wei") == 5000


# ------------------------------------------------------------------ receipts


async def test_receipts_newest_first_with_pages(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    feed = CabinetFeed(backend_env)
    seqs = []
    for lane in ((1, "tomato-500", 1, 500.0, 690), (4, "chili-150", 2, 300.0, 380)):
        seqs.append(feed.sale("cab-east-1", "li.wei", [line(*lane)]))
        backend_env.clock.advance(30)
    seqs.append(feed.sale("cab-west-2", "li.wei", [line(2, "bokchoy", None, 412.0, 800)]))
    feed.sale("cab-east-1", "zhang.min", [line(1, "tomato-500", 1, 500.0, 690)])
    await as_user(api, "li.wei")
    body = await (await api.get("/api/receipts")).json()
    got = [(r["cabinet_id"], r["seq"]) for r in body["receipts"]]
    assert got == [("cab-west-2", seqs[2]), ("cab-east-1", seqs[1]), ("cab-east-1", seqs[0])]
    assert body["next_before"] is None
    newest = body["receipts"][0]
    assert newest["cabinet_name"] == "West garden" and newest["total_fen"] == 330
    assert newest["lines"][0]["name"] == "Bok choy" and newest["lines"][0]["qty"] is None
    assert newest["evidence"] == [
        {"lane": 2, "before_g": 2000.0, "after_g": 1588.0, "delta_g": -412.0}
    ]
    assert newest["verified"] is True and len(newest["record_hash"]) == 64
    pages: list[tuple[str, int]] = []
    before = ""
    while True:
        url = "/api/receipts?limit=1" + (f"&before={before}" if before else "")
        page = await (await api.get(url)).json()
        pages += [(r["cabinet_id"], r["seq"]) for r in page["receipts"]]
        if not page["next_before"]:
            break
        before = page["next_before"]
    assert pages == got
    # a plain time works as a cursor too
    cut = body["receipts"][0]["at"]
    page = await (await api.get(f"/api/receipts?before={cut}")).json()
    assert [(r["cabinet_id"], r["seq"]) for r in page["receipts"]] == got[1:]
    for bad in ("before=a/b", "before=2026/bad%20id/1", "before=x/cab-1/y", "limit=0"):
        resp = await api.get(f"/api/receipts?{bad}")
        assert resp.status == 400, bad
        assert (await resp.json())["field"] in ("before", "limit")


# ------------------------------------------------------------------ live events


async def test_receipt_arrives_on_the_event_stream(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    await as_user(api, "li.wei")
    resp = await api.get("/api/events")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert (await sse_until(resp, b"retry: ")) == b"retry: 3000"
    await sse_until(resp, b": connected")
    feed = CabinetFeed(backend_env)
    feed.sale("cab-east-1", "zhang.min", [line(4, "chili-150", 1, 151.0, 380)])
    seq = feed.sale("cab-east-1", "li.wei", [line(1, "tomato-500", 2, 1001.9, 690)])
    event = await next_event(resp)  # zhang.min's receipt never reaches li.wei
    assert event["type"] == "receipt" and event["cabinet_id"] == "cab-east-1"
    assert event["seq"] == seq and event["total_fen"] == 1380
    assert event["balance_fen"] == 3620 and event["verified"] is True
    assert event["lines"][0]["name"] == "Tomatoes 500 g"
    assert event["evidence"][0]["delta_g"] == -1001.9
    resp.close()


async def test_operators_hear_their_own_cabinets(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    await as_user(api, "ops")
    resp = await api.get("/api/events")
    await sse_until(resp, b": connected")
    feed = CabinetFeed(backend_env)
    feed.sale("cab-river-1", "li.wei", [line(4, "chili-150", 1, 151.0, 380)])
    seq = feed.sale("cab-west-2", "li.wei", [line(4, "chili-150", 1, 151.0, 380)])
    event = await next_event(resp)
    assert event == {
        "type": "sale",
        "cabinet_id": "cab-west-2",
        "seq": seq,
        "total_fen": 380,
        "flags": [],
    }
    resp.close()


async def test_admin_hears_every_operator(api: TestClient[Any, Any], backend_env: Env) -> None:
    await as_user(api, "admin")
    resp = await api.get("/api/events")
    await sse_until(resp, b": connected")
    feed = CabinetFeed(backend_env)
    feed.sale("cab-river-1", "li.wei", [line(4, "chili-150", 1, 151.0, 380)])
    feed.sale("cab-east-1", "li.wei", [line(4, "chili-150", 1, 151.0, 380)])
    got = {(await next_event(resp))["cabinet_id"] for _ in range(2)}
    assert got == {"cab-river-1", "cab-east-1"}
    resp.close()


async def test_event_stream_keeps_alive_and_unsubscribes(
    api: TestClient[Any, Any], backend_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(views, "POLL_S", 0.05)
    await as_user(api, "li.wei")
    channel = f"user:{backend_env.users['li.wei']}"
    bus = backend_env.backend.bus
    resp = await api.get("/api/events")
    await sse_until(resp, b": keepalive")
    assert bus.subscribers(channel) == 1
    resp.close()
    for _ in range(100):
        if bus.subscribers(channel) == 0:
            break
        await asyncio.sleep(0.02)
    assert bus.subscribers(channel) == 0


async def test_topup_and_unlock_events_reach_the_resident(
    api: TestClient[Any, Any], backend_env: Env
) -> None:
    csrf = await as_user(api, "li.wei")
    resp = await api.get("/api/events")
    await sse_until(resp, b": connected")
    await api.post("/api/wallet/topup", json={"amount_fen": 250}, headers={"X-CSRF-Token": csrf})
    event = await next_event(resp)
    assert event["type"] == "wallet" and event["balance_fen"] == 5250
    assert event["entry"]["kind"] == "topup"
    use_fleet(backend_env, UNLOCKED)
    await open_(api, csrf)
    event = await next_event(resp)
    assert event["type"] == "unlock" and event["ok"] is True and event["session_id"] == "S1"
    resp.close()

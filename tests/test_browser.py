"""Browser tests: headless Chromium (Debian's) driven by Playwright, against the whole stack.

A resident logs in, opens a cabinet from its QR URL, a simulated person takes produce,
and the receipt appears on the page; the operator then sees that sale and an alarm on
the dashboard; a supplier downloads the restock CSV. Skipped when Chromium is absent,
unless ``FRESHBOX_REQUIRE_SERVICES`` is set (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from backend.lab import CAB, Stack, running_stack
from backend.qr import cabinet_url
from backend.seed import DEMO_PASSWORD

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("FRESHBOX_CHROMIUM", "/usr/bin/chromium")


def _chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("FRESHBOX_REQUIRE_SERVICES"):
            pytest.fail(f"{CHROMIUM} is missing and FRESHBOX_REQUIRE_SERVICES is set")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    # a short door alarm: the simulated shopper's visit raises door_open_too_long
    async with running_stack(tmp_path, door_alarm_s=1.0) as s:
        yield s


async def test_resident_operator_supplier(stack: Stack, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    executable = _chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            # --- a resident scans the QR code: the cabinet page asks them to log in first
            phone = await browser.new_context(viewport={"width": 390, "height": 844})
            page = await phone.new_page()
            await page.goto(cabinet_url(stack.url, CAB))
            await page.get_by_test_id("open").click()
            await page.fill("input[name=username]", "li.wei")
            await page.fill("input[name=password]", DEMO_PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"**/c/{CAB}")
            await page.get_by_test_id("open").click()
            status = page.get_by_test_id("open-status")
            await expect(status).to_contain_text("Door open", timeout=1500)
            receipt = page.get_by_test_id("receipt")
            await expect(receipt).to_contain_text("verified", timeout=60_000)
            text = await receipt.inner_text()
            assert "¥" in text
            await page.screenshot(path=str(tmp_path / "receipt.png"), full_page=True)
            await phone.close()

            # --- the operator sees the sale and the alarm
            office = await browser.new_context()
            page = await office.new_page()
            await page.goto(f"{stack.url}/login")
            await page.fill("input[name=username]", "ops")
            await page.fill("input[name=password]", DEMO_PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/ops")
            card = page.get_by_test_id(f"cabinet-{CAB}")
            await expect(card).to_be_visible()
            await expect(page.get_by_test_id("sales-today")).not_to_contain_text("¥0.00")
            alarms = page.get_by_test_id(f"alarms-{CAB}")
            for _ in range(30):  # the alarm record may trail the sale by a moment
                if "door_open_too_long" in await alarms.inner_text():
                    break
                await page.wait_for_timeout(1000)
                await page.reload()
            await expect(alarms).to_contain_text("door_open_too_long")
            await office.close()

            # --- a vegetable base downloads its restock CSV
            base = await browser.new_context(accept_downloads=True)
            page = await base.new_page()
            await page.goto(f"{stack.url}/login")
            await page.fill("input[name=username]", "base")
            await page.fill("input[name=password]", DEMO_PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/supplier")
            async with page.expect_download() as info:
                await page.get_by_test_id("csv").click()
            download = await info.value
            target = tmp_path / "restock.csv"
            await download.save_as(str(target))
            lines = target.read_text(encoding="utf-8").splitlines()
            assert lines[0].startswith("supplier_id,cabinet_id")
            assert any(CAB in ln for ln in lines[1:])
            await base.close()
        finally:
            await browser.close()

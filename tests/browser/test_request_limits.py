"""A dashboard session past its request limit, in Chromium: the page says how long to wait (app.js reads
Retry-After from the 429), instead of showing nothing."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import Platform, set_password

PASSWORD = "limits and patience 7"


@pytest.fixture(scope="module")
def limited():
    # Two writes back to back, then one every 10 s: the third click is refused for about 10 s.
    running = Platform(RATE_LIMIT_WRITES="6", RATE_LIMIT_WRITES_BURST="2")
    try:
        yield running
    finally:
        running.stop()


def test_an_action_past_the_sessions_limit_shows_how_many_seconds_to_wait(limited, browser):
    out = limited.cli("create-tenant", "Patient Bakery", "--admin-email", "owner@patient.test")
    key = re.search(r"API key \(shown once, store it now\): (\S+)", out).group(1)
    link = re.search(r"set-password link .*: (http\S+)", out).group(1)
    bot = requests.post(f"{limited.url}/api/v1/bots", json={"name": "counter"}, timeout=10,
                        headers={"Authorization": f"Bearer {key}"}).json()["id"]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        set_password(page, link, PASSWORD)
        page.goto(f"{limited.url}/app/bots/{bot}/rules")
        notice = page.locator("#request-error")
        for n in range(2):  # the burst: each adds a rule, swapped in
            page.click("button[value=add]")
            expect(page.locator(f"#rule-{n}")).to_be_visible()
        expect(notice).to_be_hidden()
        page.click("button[value=add]")
        expect(notice).to_be_visible()
        waited = re.compile(r"^Too many requests from this session: wait \d+ seconds? and try again\.$")
        expect(notice).to_have_text(waited)
        expect(page.locator("#rule-2")).to_have_count(0)  # nothing was added
    finally:
        context.close()

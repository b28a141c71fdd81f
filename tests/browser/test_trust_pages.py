"""Issue 16's pages in Chromium: a refused proxy shown next to its field, the admin's audit log (desktop
and phone width), and a disabled organisation's message."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import set_password

PASSWORD = "audit trails and proxies 9"


def _signed_in(platform, browser, name, email, **context):
    out = platform.cli("create-tenant", name, "--admin-email", email)
    tenant = re.search(r"tenant (\S+) created", out).group(1)
    link = re.search(r"set-password link .*: (http\S+)", out).group(1)
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    set_password(page, link, PASSWORD)
    return tenant, ctx, page


def test_a_refused_proxy_is_shown_next_to_its_field_and_the_audit_log_shows_who_did_what(platform, browser, shots):
    _tenant, ctx, page = _signed_in(platform, browser, "Careful Bakery", "owner@careful.test")
    try:
        page.goto(f"{platform.url}/app/bots")
        page.fill("#bot-name", "Front desk")
        page.fill("#bot-proxy", "socks5://169.254.169.254:1080")
        page.click("form[action$='/app/bots'] button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("169.254.169.254 is a cloud metadata address")
        page.screenshot(path=str(shots / "proxy-refused.png"), full_page=True)
        page.fill("#bot-proxy", "")
        page.click("form[action$='/app/bots'] button[type=submit]")
        expect(page).to_have_url(re.compile(r"/app/bots/[0-9a-f-]{36}$"))
        page.goto(f"{platform.url}/app/admin/audit")
        rows = page.locator("table.audit tbody tr")
        expect(rows.first).to_contain_text("bot.create")
        expect(rows.first).to_contain_text("owner@careful.test")
        rows.first.locator("summary").click()
        expect(rows.first.locator("pre")).to_contain_text("Front desk")
        page.screenshot(path=str(shots / "audit-log.png"), full_page=True)
        page.set_viewport_size({"width": 360, "height": 780})
        page.screenshot(path=str(shots / "audit-log-phone.png"), full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"the audit log is {width} px wide on a 360 px phone"
    finally:
        ctx.close()


def test_a_member_of_a_disabled_organisation_is_told_so(platform, browser, shots):
    tenant, ctx, page = _signed_in(platform, browser, "Paused Bakery", "owner@paused.test")
    try:
        platform.cli("tenant", "disable", tenant)
        page.goto(f"{platform.url}/app/bots")
        expect(page.locator("h1")).to_have_text("Organisation disabled")
        expect(page.locator("main")).to_contain_text("disabled by the platform's operator")
        expect(page.get_by_role("link", name="Switch organisation")).to_be_visible()
        page.screenshot(path=str(shots / "tenant-disabled.png"), full_page=True)
        platform.cli("tenant", "enable", tenant)
        page.goto(f"{platform.url}/app/bots")
        expect(page.locator("h1")).to_contain_text("Bots")
    finally:
        ctx.close()

"""A shop owner's and their colleagues' working day, in Chromium, one step after another: accept the
invitation, sign in, create and pair a bot, answer customers with and without the bot, take over,
reply from the phone, retry a failed send, watch the events, and a viewer who may only look.

The steps share one platform, one browser and the state the earlier ones left (the day goes on),
and run in the order written. Nothing waits for a fixed time: Playwright's ``expect`` waits for
what the page should show, and ``wait_until`` for what the simulator or the API should report.
"""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import wait_until

OWNER = "owner@corner-bakery.test"
PASSWORD = "bread and butter 42"
CUSTOMER = "351912345678"
CUSTOMER_JID = CUSTOMER + "@s.whatsapp.net"
TIMEOUT = 15_000  # ms, for expect()


@pytest.fixture(scope="module")
def day(platform, browser, shots):
    """What the day carries from step to step."""

    class Day:
        pass

    d = Day()
    d.platform, d.shots = platform, shots
    out = platform.cli("create-tenant", "Corner Bakery", "--admin-email", OWNER)
    d.key = re.search(r"API key \(shown once, store it now\): (\S+)", out).group(1)
    d.link = re.search(r"set-password link .*: (http\S+)", out).group(1)
    platform.sim("POST", "/config", qr_rotate=1.5, receipt_delay=[0.3, 0.3])
    d.context = browser.new_context(viewport={"width": 1280, "height": 860})
    d.page = d.context.new_page()
    d.page.set_default_timeout(TIMEOUT)
    d.errors = []
    d.page.on("pageerror", lambda exc: d.errors.append(str(exc)))
    d.page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => console.error('CSP ' + e.violatedDirective"
        " + ' on ' + (e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 200) : e.target)"
        " + ' sample ' + e.sample))")
    d.page.on("console", lambda msg: d.errors.append(f"{d.page.url}: {msg.text} at {msg.location}")
              if msg.type == "error" else None)
    yield d
    d.context.close()


def api(day, method, path, **kwargs):
    response = requests.request(method, f"{day.platform.url}/api/v1{path}",
                                headers={"Authorization": f"Bearer {day.key}"}, timeout=10, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def mark_page(page):
    """A marker only this page load has: gone after a reload or navigation."""
    page.evaluate("window.__sameLoad = true")


def assert_same_page_load(page):
    assert page.evaluate("window.__sameLoad === true"), "the page reloaded"


def shot(day, name, page=None, full=True):
    (page or day.page).screenshot(path=str(day.shots / f"{name}.png"), full_page=full)


def customer_outbox(day, to=CUSTOMER):
    return day.platform.sim("GET", f"/bots/{day.bot_id}/outbox?to={to}")["messages"]


def message_status(day, text):
    found = [m for m in api(day, "GET", f"/bots/{day.bot_id}/conversations/{CUSTOMER}/messages")["messages"]
             if m["text"] == text]
    return found[0]["status"] if found else None


# -- the morning -----------------------------------------------------------------------------------


def test_the_owner_sets_a_password_from_the_cli_link_and_lands_in_an_empty_inbox(day):
    page = day.page
    page.goto(day.link)
    expect(page.locator("h1")).to_have_text("Welcome to Corner Bakery")
    shot(day, "set-password")
    page.fill("#display_name", "Olga")
    page.fill("#password", PASSWORD)
    page.fill("#password_again", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/app/inbox$"))
    expect(page.locator("#inbox-empty")).to_contain_text("No bots yet")


def test_signing_out_and_in_again_returns_to_the_dashboard(day):
    page = day.page
    page.click("header .me button[type=submit]")
    expect(page).to_have_url(re.compile(r"/signin$"))
    shot(day, "sign-in")
    # By keyboard alone: the email field has the focus (with a visible ring), Tab, password, Enter.
    assert page.evaluate("document.activeElement.id") == "email"
    assert page.evaluate("getComputedStyle(document.activeElement).boxShadow") != "none"
    page.keyboard.type(OWNER)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/app/inbox$"))
    expect(page.locator("header .me")).to_contain_text("Olga")
    page.keyboard.press("Tab")  # the first stop of every page: a visible "Skip to content"
    skip = page.locator("a.skip")
    expect(skip).to_be_focused()
    assert skip.bounding_box()["x"] >= 0


def test_a_new_bot_shows_its_qr_code_and_the_page_follows_each_new_code(day):
    page = day.page
    page.goto(day.platform.url + "/app/bots")
    page.fill("#bot-name", "Front desk")
    page.click("#new-bot button[type=submit]")
    expect(page).to_have_url(re.compile(r"/app/bots/[0-9a-f-]{36}$"))
    day.bot_id = page.url.rsplit("/", 1)[1]
    mark_page(page)
    qr = page.locator("#qr svg")
    expect(qr).to_be_visible()
    first = qr.inner_html()
    shot(day, "pairing")
    wait_until(lambda: page.locator("#qr svg").count() and page.locator("#qr svg").inner_html() != first,
               what="a new QR code on screen")
    assert_same_page_load(page)


def test_scanning_the_code_turns_the_page_to_connected_without_a_reload(day):
    page = day.page
    jid = day.platform.sim("POST", f"/bots/{day.bot_id}/scan")["jid"]
    expect(page.locator("#connected-as")).to_have_text(f"Connected as +{jid.split('@')[0]}")
    assert_same_page_load(page)
    shot(day, "bot-connected")


def test_a_second_bot_is_paired_with_a_pair_code_for_its_number(day):
    page = day.page
    page.goto(day.platform.url + "/app/bots")
    page.fill("#bot-name", "Back office")
    page.fill("#bot-phone", "+49 151 2345 6789")
    page.click("#new-bot button[type=submit]")
    expect(page.locator("#qr svg")).to_be_visible()
    expect(page.locator("#pair-phone")).to_have_value("4915123456789")
    page.click("button:has-text('Get a pair code')")
    code = page.locator("#pair-code")
    expect(code).to_have_text(re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$"))
    mark_page(page)
    day.platform.sim("POST", f"/bots/{page.url.rsplit('/', 1)[1]}/pair-code-enter", code=code.inner_text())
    expect(page.locator("#connected-as")).to_have_text("Connected as +4915123456789")
    assert_same_page_load(page)


def test_the_owner_adds_a_rule_with_the_rules_editor(day):
    page = day.page
    page.goto(f"{day.platform.url}/app/bots/{day.bot_id}/rules")
    page.click("button[value=add]")
    page.fill("#rules-0-pattern", "croissant")
    page.fill("#rules-0-reply", "Fresh every morning until noon!")
    page.click("button[value=save]")
    expect(page.locator("#rules-form .note.ok")).to_contain_text("Rules saved")
    page.fill("#test_text", "Do you have a CROISSANT today?")
    page.click("button[value=test]")
    expect(page.locator("#test-result")).to_contain_text("Rule 1 answers")
    shot(day, "rules")


def test_a_customer_writes_and_the_conversation_appears_in_the_inbox_without_a_reload(day):
    page = day.page
    page.goto(day.platform.url + "/app/inbox")
    mark_page(page)
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": CUSTOMER, "text": "Good morning! <b>Open</b>?"})
    row = page.locator(f'#conversations li[data-jid="{CUSTOMER_JID}"]')
    expect(row).to_contain_text("Good morning! <b>Open</b>?")
    expect(row.locator(".count")).to_have_text("1")
    assert_same_page_load(page)
    day.contact_id = row.get_attribute("id").removeprefix("conv-")
    expect(page.locator("#conversations li")).to_have_count(1)


def test_in_the_conversation_new_messages_and_the_bots_answer_appear_live_with_ticks(day):
    page = day.page
    page.goto(f"{day.platform.url}/app/inbox/{day.contact_id}")
    mark_page(page)
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": CUSTOMER, "text": "A croissant, please"})
    messages = page.locator("#messages")
    expect(messages.locator(".msg.in").last).to_contain_text("A croissant, please")
    answer = messages.locator(".msg.out").last
    expect(answer).to_contain_text("Fresh every morning until noon!")
    expect(answer.locator(".ticks.read")).to_be_visible()  # the simulator's receipts: delivered, then read
    assert_same_page_load(page)
    assert messages.locator(".msg.in", has_text="A croissant, please").count() == 1
    shot(day, "conversation")


def test_taking_over_shows_who_holds_it_and_the_bot_stays_quiet(day):
    page = day.page
    page.click("#takeover-button")
    expect(page.locator("#hold-state")).to_contain_text(f"Held by {OWNER}")
    sent_before = len(customer_outbox(day))
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": CUSTOMER, "text": "croissant with jam?"})
    expect(page.locator("#messages .msg.in").last).to_contain_text("croissant with jam?")
    wait_until(lambda: message_status(day, "croissant with jam?") == "ignored", what="the message ignored by the bot")
    assert len(customer_outbox(day)) == sent_before  # the rule matched, but nobody answered for the bot
    expect(page.locator("#messages .msg.in").last).to_contain_text("conversation paused")


def test_a_reply_from_the_composer_reaches_the_customer(day):
    page = day.page
    page.fill("#composer-text", "With apricot jam, yes. See you soon!")
    page.click("#send-button")
    mine = page.locator("#messages .msg.out", has_text="With apricot jam, yes.")
    expect(mine).to_have_count(1)
    wait_until(lambda: any(m["text"] == "With apricot jam, yes. See you soon!" for m in customer_outbox(day)),
               what="the customer receiving the reply")
    expect(mine.locator(".ticks")).to_be_visible()
    expect(page.locator("#composer-text")).to_have_value("")
    assert mine.count() == 1


def test_returning_the_conversation_to_the_bot_lets_it_answer_again(day):
    page = day.page
    page.click("#takeover-button")  # now "Return to bot"
    expect(page.locator("#hold-state")).to_contain_text("The bot answers this conversation")
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": CUSTOMER, "text": "one more croissant"})
    expect(page.locator("#messages .msg.out").last).to_contain_text("Fresh every morning until noon!")


def test_the_owner_replies_from_the_phone_and_the_bot_holds_off(day):
    page = day.page
    day.platform.sim("POST", f"/bots/{day.bot_id}/phone-send", to=CUSTOMER, text="I kept two aside for you.")
    from_phone = page.locator("#messages .msg.out", has_text="I kept two aside for you.")
    expect(from_phone).to_contain_text("from the phone")
    expect(page.locator("#hold-state")).to_contain_text("The owner answered from the phone")
    sent_before = len(customer_outbox(day))
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": CUSTOMER, "text": "croissant thanks!"})
    wait_until(lambda: message_status(day, "croissant thanks!") == "ignored", what="the bot holding off")
    assert len(customer_outbox(day)) == sent_before
    expect(page.locator("#messages .msg.in").last).to_contain_text("the owner is answering from the phone")


def test_a_send_the_server_refuses_shows_its_reason_in_the_composer(day):
    page = day.page
    mark_page(page)
    errors_before = len(day.errors)
    page.fill("#composer-text", "   ")
    page.click("#send-button")
    expect(page.locator("#send-error")).to_contain_text("The message")
    expect(page.locator("#composer-text")).to_have_attribute("aria-invalid", "true")
    assert_same_page_load(page)
    shot(day, "send-refused", full=False)
    # The browser reports the refused request (400) on its console; nothing else went wrong.
    assert all("400" in e for e in day.errors[errors_before:]), day.errors[errors_before:]
    del day.errors[errors_before:]


def test_a_send_that_cannot_reach_the_server_says_so_and_keeps_the_draft(day):
    page = day.page
    errors_before = len(day.errors)
    page.route("**/send", lambda route: route.abort())
    try:
        page.fill("#composer-text", "Are you still there?")
        page.click("#send-button")
        expect(page.locator("#request-error")).to_contain_text("did not reach the server")
        expect(page.locator("#composer-text")).to_have_value("Are you still there?")
        expect(page.locator("#send-error")).to_have_count(0)  # the earlier attempt's error no longer holds
        shot(day, "send-unreachable", full=False)
    finally:
        page.unroute("**/send")
    page.fill("#composer-text", "")
    del day.errors[errors_before:]  # the aborted request, on the console


def test_a_failed_send_shows_in_the_conversation_and_is_retried_from_the_outbox(day):
    page = day.page
    day.platform.sim("POST", f"/bots/{day.bot_id}/refuse-sends", times=1, error="recipient refused by the network")
    page.fill("#composer-text", "Your order is ready.")
    page.click("#send-button")
    failed = page.locator("#messages .msg.out", has_text="Your order is ready.")
    # Five hops before the page shows it (the POST, NOTIFY, the supervisor's pipeline, the network's
    # refusal, the live update): once, in a full CI run on 2 loaded cores, more than expect's 5 s.
    try:
        expect(failed).to_contain_text("Not delivered: recipient refused by the network", timeout=15_000)
    except AssertionError as exc:  # once in CI the message never showed: say what the page reported
        raise AssertionError(f"{exc}\nthe page's errors: {day.errors}") from None
    page.goto(f"{day.platform.url}/app/outbox")
    row = page.locator("table.list tbody tr", has_text="Your order is ready.")
    expect(row).to_contain_text("recipient refused by the network")
    shot(day, "outbox")
    row.locator("button", has_text="Retry").click()
    expect(page.locator("table.list tbody tr", has_text="Your order is ready.")).to_contain_text("queued again")
    wait_until(lambda: any(m["text"] == "Your order is ready." for m in customer_outbox(day)),
               what="the retried message reaching the customer")


def test_the_event_monitor_filters_by_type_pauses_and_resumes_without_a_gap(day):
    page = day.page
    page.goto(f"{day.platform.url}/app/events")
    page.fill("#ev-type", "message.in")
    page.click("#event-filter button[type=submit]")
    expect(page).to_have_url(re.compile(r"type=message\.in"))
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound",
                     **{"from": "4915112345678", "text": "croissant for Berlin?"})
    rows = page.locator("#event-rows tr")
    expect(rows.first).to_contain_text("croissant for Berlin?")
    wait_until(lambda: len(customer_outbox(day, "4915112345678")) == 1, what="the bot answering Berlin")
    types = rows.locator("td:nth-child(3)").all_inner_texts()
    assert set(types) == {"message.in"}, types  # the bot's answer (message.out) is filtered out
    page.click("#ev-pause")
    expect(page.locator("#ev-paused")).to_be_visible()
    count = rows.count()
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": "4915112345678", "text": "while paused"})
    wait_until(lambda: message_status_of(day, "4915112345678", "while paused"), what="the paused-time message stored")
    assert rows.count() == count
    page.click("#ev-pause")
    expect(rows.first).to_contain_text("while paused")
    assert rows.count() == count + 1
    shot(day, "events")


def stream_open(page):
    """Polled from here: wait_for_function compiles its predicate in the page, which the page's
    policy (no eval) forbids; evaluate() is not bound by it."""
    wait_until(lambda: page.evaluate("() => !!(window.wabotLive && window.wabotLive.source"
                                     " && window.wabotLive.source.readyState === 1)"), what="the live stream open")


def message_status_of(day, who, text):
    found = [m for m in api(day, "GET", f"/bots/{day.bot_id}/conversations/{who}/messages")["messages"]
             if m["text"] == text]
    return found[0]["status"] if found else None


def test_a_dropped_stream_says_reconnecting_and_resumes_without_gaps_or_repeats(day):
    page = day.page
    page.goto(f"{day.platform.url}/app/inbox/{day.contact_id}")
    expect(page.locator("#messages .msg").last).to_be_visible()
    stream_open(page)
    day.context.set_offline(True)
    # The connection drops (as when the network goes away): the page's own error handling takes over.
    page.evaluate("const s = window.wabotLive.source; s.close(); s.dispatchEvent(new Event('error'))")
    expect(page.locator("#live-status")).to_have_text("Reconnecting…")
    shot(day, "reconnecting", full=False)
    day.platform.sim("POST", f"/bots/{day.bot_id}/inbound", **{"from": CUSTOMER, "text": "are you still there?"})
    wait_until(lambda: message_status(day, "are you still there?"), what="the message stored while offline")
    day.context.set_offline(False)
    expect(page.locator("#live-status")).to_be_hidden(timeout=40_000)
    expect(page.locator("#messages .msg.in", has_text="are you still there?")).to_have_count(1)
    page.wait_for_timeout(500)  # a repeat would come right behind the first copy
    expect(page.locator("#messages .msg.in", has_text="are you still there?")).to_have_count(1)


# -- a colleague who only looks --------------------------------------------------------------------


def test_a_viewer_accepts_an_invitation_on_a_phone_and_sees_no_composer_and_may_not_post(day, browser):
    page = day.page
    page.goto(f"{day.platform.url}/app/admin/members")
    page.fill("#invite-email", "vera@corner-bakery.test")
    page.select_option("#invite-role", "viewer")
    page.click("button:has-text('Create invitation link')")
    link = page.locator("#new-link").input_value()
    shot(day, "members")
    phone = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    try:
        mobile = phone.new_page()
        mobile.set_default_timeout(TIMEOUT)
        mobile.goto(link)
        mobile.fill("#password", "view only please")
        mobile.fill("#password_again", "view only please")
        mobile.click("button[type=submit]")
        expect(mobile).to_have_url(re.compile(r"/app/inbox$"))
        shot(day, "mobile-inbox", page=mobile)
        mobile.goto(f"{day.platform.url}/app/inbox/{day.contact_id}")
        expect(mobile.locator("#messages .msg").first).to_be_visible()
        assert mobile.locator("#composer").count() == 0 and mobile.locator("#takeover-button").count() == 0
        shot(day, "mobile-conversation", page=mobile)
        mobile.goto(f"{day.platform.url}/app/webhooks")
        expect(mobile.locator("h1")).to_have_text("Webhooks")
        assert mobile.locator("form[action$='/app/webhooks']").count() == 0  # a viewer only reads
        assert mobile.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")  # nothing sideways
        shot(day, "mobile-webhooks", page=mobile)
        token = mobile.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
        before = (len(api(day, "GET", "/outbox?state=pending")["outbox"])
                  + len(api(day, "GET", "/outbox?state=sent")["outbox"]))
        refused = mobile.request.post(f"{day.platform.url}/app/inbox/{day.contact_id}/send",
                                      form={"text": "viewer was here", "csrf_token": token},
                                      headers={"Origin": day.platform.url})
        assert refused.status == 403
        after = (len(api(day, "GET", "/outbox?state=pending")["outbox"])
                 + len(api(day, "GET", "/outbox?state=sent")["outbox"]))
        assert after == before
    finally:
        phone.close()


def test_the_main_pages_render_without_script_errors(day):
    page = day.page
    for name, path in (("inbox", "/app/inbox"), ("bots", "/app/bots"), ("bot", f"/app/bots/{day.bot_id}"),
                       ("ai", f"/app/bots/{day.bot_id}/ai"), ("status", "/app/admin/status"),
                       ("webhooks", "/app/webhooks")):
        page.goto(day.platform.url + path)
        expect(page.locator("main h1").first).to_be_visible()
        shot(day, name)
    assert day.errors == [], day.errors

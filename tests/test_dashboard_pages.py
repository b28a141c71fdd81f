"""The dashboard's pages as a member uses them, over real HTTP: what each page shows and does,
escaping, tenant isolation, security headers, and the live streams' session authentication."""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest
import requests

from core import config
from db import pipeline_store
from tests.dbadmin import superuser_sql
from tests.openai_server import OpenAiServer, reply, status
from tests.sse_client import SSEClient
from tests.test_ws import WS
from transports.events import MessageReceived

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
PAGES = ["/app/inbox", "/app/inbox/{contact}", "/app/bots", "/app/bots/{bot}", "/app/bots/{bot}/rules",
         "/app/bots/{bot}/ai", "/app/outbox", "/app/events", "/app/admin/members", "/app/admin/keys",
         "/app/admin/status", "/app/account", "/tenants", "/app/webhooks", "/app/admin/audit"]


@pytest.fixture
def settings(pg, tmp_path):
    """Short heartbeats, so a stream notices a signed-out session within a test's patience."""
    return config.load({"DATABASE_URL": pg.app_url, "DATABASE_OWNER_URL": pg.owner_url, "DATA_DIR": str(tmp_path),
                        "DATABASE_ACQUIRE_TIMEOUT": "5", "PORT": "0", "SSE_HEARTBEAT": "0.3"})




def customer_writes(pool, tenant_id, bot_id, text, sender="15557654321", **fields):
    """What the pipeline stores when a customer writes (the statement a bot's pipeline runs)."""
    event = MessageReceived(message_id="3EB0" + uuid.uuid4().hex[:12].upper(), chat=f"{sender}@s.whatsapp.net",
                            sender=f"{sender}@s.whatsapp.net", timestamp=time.time(), text=text, **fields)
    return pipeline_store.store_many(pool, tenant_id, [(bot_id, event, None)])[0]


@pytest.fixture
def bot(shop):
    return shop.api.post("/bots", json={"name": "Front desk"}).json()["id"]


@pytest.fixture
def conversation(web, shop, bot):
    stored = customer_writes(web.pool, shop.tenant_id, bot, "Hello, are you open today?")
    return stored.contact_id


# -- security ------------------------------------------------------------------------------------


def test_every_page_is_served_with_a_strict_policy_and_no_inline_script_or_style(web, shop, bot, conversation):
    for path in PAGES:
        response = shop.admin.get(path.format(bot=bot, contact=conversation))
        assert response.status_code == 200, path
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"
        html = response.text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"inline script on {path}"
        assert not re.search(r"\sstyle=", html), f"inline style on {path}"
        assert not re.search(r"\son[a-z]+=", html), f"inline event handler on {path}"


def test_a_customers_hostile_text_is_shown_as_text_everywhere(web, shop, bot):
    stored = customer_writes(web.pool, shop.tenant_id, bot, HOSTILE)
    for path in ("/app/inbox", f"/app/inbox/{stored.contact_id}", f"/app/inbox/row?contact={stored.contact_id}",
                 f"/app/inbox/{stored.contact_id}/message?id={stored.message_id}"):
        html = shop.agent.get(path, headers={"HX-Request": "true"} if "?" in path else {}).text
        assert "<script>alert(1)" not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_another_tenants_bot_conversation_media_and_messages_are_404(web, shop, bot, conversation, make_tenant,
                                                                     make_member):
    other_tenant, _ = make_tenant()
    intruder = make_member(other_tenant, "admin")
    media = shop.api.post("/media", data=b"secret bytes", headers={"Content-Type": "application/pdf"}).json()["id"]
    outbox = shop.api.post(f"/bots/{bot}/messages", json={"to": "15550002222", "text": "x"}).json()["outbox_id"]
    for path in (f"/app/bots/{bot}", f"/app/bots/{bot}/rules", f"/app/bots/{bot}/ai", f"/app/bots/{bot}/panel",
                 f"/app/inbox/{conversation}", f"/app/inbox/{conversation}/head", f"/app/media/{media}",
                 f"/app/inbox/{conversation}/message?outbox={outbox}", "/app/bots/not-a-uuid"):
        response = intruder.get(path)
        assert response.status_code == 404, path
        assert "secret bytes" not in response.text
    for path in (f"/app/bots/{bot}/stop", f"/app/inbox/{conversation}/takeover", f"/app/outbox/{outbox}/retry",
                 f"/app/inbox/{conversation}/send"):
        assert intruder.post(path, {"text": "hi"}).status_code == 404, path
    assert shop.api.get(f"/bots/{bot}").json()["desired_state"] == "stopped"


def test_an_unknown_page_under_the_dashboard_is_an_html_404(web, shop):
    response = shop.admin.get("/app/nothing-here")
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html") and "Not Found" in response.text


def test_an_unknown_page_under_the_dashboard_is_served_with_the_dashboards_policy_so_its_stylesheet_loads(web, shop):
    # Before: the app's default policy (default-src 'none') came with it, and the page showed unstyled.
    response = shop.admin.get("/app/nothing-here")
    csp = response.headers["Content-Security-Policy"]
    assert "style-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"


# -- the inbox and a conversation ------------------------------------------------------------------


def test_the_inbox_lists_conversations_by_latest_activity_with_what_awaits_an_answer(web, shop, bot):
    first = customer_writes(web.pool, shop.tenant_id, bot, "older question", sender="15550000001")
    customer_writes(web.pool, shop.tenant_id, bot, "one", sender="15550000002")
    customer_writes(web.pool, shop.tenant_id, bot, "two", sender="15550000002")
    html = shop.viewer.get("/app/inbox").text
    assert html.index("+15550000002") < html.index("+15550000001")
    row = shop.viewer.get(f"/app/inbox/row?contact={first.contact_id}", headers={"HX-Request": "true"}).text
    assert 'aria-label="1 waiting for a reply"' in row
    second = re.search(r'<li id="conv-[^"]+"[^>]*data-jid="15550000002@s.whatsapp.net".*?</li>', html, re.S).group(0)
    assert 'aria-label="2 waiting for a reply"' in second


def test_a_long_inbox_is_paged(web, shop, bot):
    for n in range(32):
        customer_writes(web.pool, shop.tenant_id, bot, f"message {n}", sender=f"1555100{n:04d}")
    first = shop.viewer.get("/app/inbox").text
    older = re.search(r'href="(/app/inbox\?[^"]*before=[^"]+)"', first).group(1).replace("&amp;", "&")
    second = shop.viewer.get(older).text
    rows = lambda html: set(re.findall(r'<li id="conv-([0-9a-f-]+)"', html))  # noqa: E731
    assert len(rows(first)) == 30 and len(rows(second)) == 2 and not rows(first) & rows(second)
    assert "Newest" in second


def test_an_empty_inbox_says_what_to_do_next(web, shop):
    assert "Create a bot" in shop.admin.get("/app/inbox").text


def test_the_composer_queues_a_message_through_the_outbox_and_shows_it(web, shop, bot, conversation):
    response = shop.agent.post(f"/app/inbox/{conversation}/send", {"text": "We open at nine."})
    assert response.status_code == 303
    outbox = shop.api.get("/outbox", params={"state": "pending"}).json()["outbox"]
    assert [row["text"] for row in outbox] == ["We open at nine."]
    page = shop.agent.get(f"/app/inbox/{conversation}").text
    assert "We open at nine." in page and f'<span class="source who">{shop.agent.email}</span>' in page


def test_the_composer_sends_an_attachment_with_its_caption(web, shop, bot, conversation):
    response = shop.agent.http.post(f"{web.url}/app/inbox/{conversation}/send",
                                    data={"text": "your invoice", "csrf_token": shop.agent.csrf},
                                    files={"file": ("invoice.pdf", b"%PDF-1.4 test", "application/pdf")},
                                    headers={"Origin": web.url, "HX-Request": "true"}, timeout=10)
    assert response.status_code == 200 and 'data-upsert-into="messages"' in response.text
    row = shop.api.get("/outbox", params={"state": "pending"}).json()["outbox"][0]
    assert row["kind"] == "document" and row["text"] == "your invoice" and row["media_id"]
    page = shop.agent.get(f"/app/inbox/{conversation}").text
    assert "invoice.pdf" in page and f'/app/media/{row["media_id"]}' in page


def test_an_empty_message_is_refused_next_to_the_composer_and_nothing_is_queued(web, shop, bot, conversation):
    response = shop.agent.post(f"/app/inbox/{conversation}/send", {"text": "   "})
    assert response.status_code == 400 and 'id="send-error"' in response.text
    assert shop.api.get("/outbox", params={"state": "pending"}).json()["outbox"] == []


def test_taking_over_shows_who_holds_the_conversation_and_returning_it_clears_that(web, shop, bot, conversation):
    stream = SSEClient(web.url, key=shop.key, params={"type": "conversation.state"})
    try:
        assert shop.agent.post(f"/app/inbox/{conversation}/takeover").status_code == 303
        contact = shop.api.get(f"/bots/{bot}/conversations").json()["conversations"][0]
        assert contact["paused"] and contact["paused_by"] == f"member:{shop.agent.email}"
        page = shop.viewer.get(f"/app/inbox/{conversation}").text
        assert f"Held by <strong>{shop.agent.email}</strong>" in page
        assert "Take over" not in page and 'id="composer"' not in page  # a viewer: no buttons, no composer
        assert shop.agent.post(f"/app/inbox/{conversation}/release").status_code == 303
        assert not shop.api.get(f"/bots/{bot}/conversations").json()["conversations"][0]["paused"]
        events = stream.wait_events(2)
        assert [e.json()["payload"]["paused"] for e in events] == [True, False]
    finally:
        stream.close()


def test_a_conversation_shows_media_quotes_ticks_and_a_failed_send_with_a_retry(web, shop, bot, pg):
    image = shop.api.post("/media?filename=photo.png", data=b"\x89PNG\r\n\x1a\n....",
                          headers={"Content-Type": "image/png"}).json()["id"]
    question = customer_writes(web.pool, shop.tenant_id, bot, "Which colour?")
    wa_id = superuser_sql(pg, "SELECT wa_message_id FROM messages WHERE id = %s", (question.message_id,))[0][0]
    customer_writes(web.pool, shop.tenant_id, bot, "The red one", quoted_id=wa_id)
    shop.api.post(f"/bots/{bot}/messages", json={"to": "15557654321", "media_id": image, "caption": "this one?"})
    failed = shop.api.post(f"/bots/{bot}/messages", json={"to": "15557654321", "text": "lost"}).json()["outbox_id"]
    superuser_sql(pg, "UPDATE outbox SET state = 'dead', last_error = 'recipient refused by the network' WHERE id = %s",
              (failed,))
    superuser_sql(pg, "UPDATE messages SET status = 'failed' WHERE outbox_id = %s", (failed,))
    superuser_sql(pg, "UPDATE messages SET status = 'read'"
                      " WHERE contact_id = %s AND direction = 'out' AND kind = 'image'", (question.contact_id,))
    page = shop.agent.get(f"/app/inbox/{question.contact_id}").text
    assert f'<img src="/app/media/{image}"' in page
    assert "<blockquote>Which colour?</blockquote>" in page
    assert 'class="ticks read"' in page
    assert "Not delivered: recipient refused by the network" in page and f"/app/outbox/{failed}/retry" in page
    retried = shop.agent.post(f"/app/outbox/{failed}/retry", {"view": "conversation"}, headers={"HX-Request": "true"})
    assert retried.status_code == 200 and "Not delivered" not in retried.text
    assert superuser_sql(pg, "SELECT state FROM outbox WHERE id = %s", (failed,)) == [("pending",)]
    media = shop.viewer.get(f"/app/media/{image}")
    assert media.content == b"\x89PNG\r\n\x1a\n...."
    assert media.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


def test_older_messages_are_reached_by_paging(web, shop, bot):
    contact = None
    for n in range(45):
        contact = customer_writes(web.pool, shop.tenant_id, bot, f"line {n:02d}").contact_id
    latest = shop.viewer.get(f"/app/inbox/{contact}").text
    assert "line 44" in latest and "line 04" not in latest
    older = re.search(r'href="(/app/inbox/[^"?]+\?before=[^"]+)"', latest).group(1)
    page = shop.viewer.get(older).text
    assert "line 04" in page and "line 44" not in page and "Back to the latest messages" in page


def test_times_are_shown_in_the_viewers_time_zone(web, shop, conversation):
    shop.viewer.http.cookies.set("tz", "Asia/Kolkata")
    page = shop.viewer.get(f"/app/inbox/{conversation}").text
    shown = re.search(r'<time datetime="([^"]+)" data-style="short">([^<]+)</time>', page)
    import datetime
    import zoneinfo

    at = datetime.datetime.fromisoformat(shown.group(1)).astimezone(zoneinfo.ZoneInfo("Asia/Kolkata"))
    assert shown.group(2) in (at.strftime("%H:%M"), at.strftime("%Y-%m-%d %H:%M"))


# -- bots, rules, AI -------------------------------------------------------------------------------


def test_creating_a_bot_with_a_bad_proxy_shows_the_apis_error_next_to_the_field(web, shop):
    response = shop.admin.post("/app/bots", {"name": "proxied", "proxy": "ftp://x"})
    assert response.status_code == 400
    assert "scheme must be one of http, https, socks5" in response.text
    assert re.search(r'class="field invalid">\s*<label for="bot-proxy"', response.text)
    assert shop.api.get("/bots").json()["bots"] == []


def test_the_bot_page_shows_the_qr_code_while_pairing_and_the_number_once_connected(web, shop, bot, pg):
    superuser_sql(pg, "UPDATE bots SET desired_state = 'running', state = 'pairing', qr_code = '2@abc,def,ghi',"
                  " lease_owner = 'test' WHERE id = %s", (bot,))
    page = shop.agent.get(f"/app/bots/{bot}").text
    assert 'id="qr"' in page and "<svg" in page and "Link a device" in page
    superuser_sql(pg, "UPDATE bots SET state = 'connected', qr_code = NULL, paired = true,"
                  " jid = '4915123456789@s.whatsapp.net' WHERE id = %s", (bot,))
    panel = shop.agent.get(f"/app/bots/{bot}/panel", headers={"HX-Request": "true"}).text
    assert "Connected as +4915123456789" in panel and 'id="qr"' not in panel
    viewer = shop.viewer.get(f"/app/bots/{bot}").text
    assert "Stop" not in viewer and "Delete" not in viewer


def test_a_destructive_action_without_javascript_asks_for_confirmation_first(web, shop, bot):
    ask = shop.admin.post(f"/app/bots/{bot}/delete")
    assert ask.status_code == 200 and "Please confirm" in ask.text
    assert shop.api.get(f"/bots/{bot}").status_code == 200
    assert shop.admin.post(f"/app/bots/{bot}/delete", {"confirm": "yes"}).status_code == 303
    assert shop.api.get(f"/bots/{bot}").status_code == 404


def _rules_form(rules, action="save", **extra):
    data = {"action": action, "count": str(len(rules)), **extra}
    for i, (match, pattern, answer, enabled) in enumerate(rules):
        data.update({f"rules-{i}-match": match, f"rules-{i}-pattern": pattern, f"rules-{i}-reply": answer})
        if enabled:
            data[f"rules-{i}-enabled"] = "on"
    return data


def test_saving_rules_stores_them_in_order_as_the_api_reads_them(web, shop, bot):
    rules = [("keyword", "hours", "9 to 5", True), ("regex", r"deliver(y|ies)", "Yes, we deliver.", False)]
    response = shop.admin.post(f"/app/bots/{bot}/rules", _rules_form(rules))
    assert response.status_code == 200 and "Rules saved" in response.text
    stored = shop.api.get(f"/bots/{bot}/rules").json()["rules"]
    assert [(r["match"], r["pattern"], r["enabled"]) for r in stored] == [("keyword", "hours", True),
                                                                          ("regex", r"deliver(y|ies)", False)]


def test_a_bad_rule_is_shown_next_to_its_field_and_nothing_is_saved(web, shop, bot):
    shop.api.put(f"/bots/{bot}/rules", json={"rules": [{"match": "keyword", "pattern": "kept", "reply": "kept"}]})
    rules = [("keyword", "fine", "ok", True), ("regex", "(a+)+", "boom", True)]
    response = shop.admin.post(f"/app/bots/{bot}/rules", _rules_form(rules))
    assert response.status_code == 400
    assert "Rule 2:" in response.text and 'id="rules-1-pattern-error"' in response.text
    assert [r["pattern"] for r in shop.api.get(f"/bots/{bot}/rules").json()["rules"]] == ["kept"]


def test_moving_adding_and_removing_rules_edits_the_form_without_saving(web, shop, bot):
    rules = [("keyword", "first", "1", True), ("keyword", "second", "2", True), ("keyword", "third", "3", True)]
    moved = shop.admin.post(f"/app/bots/{bot}/rules", _rules_form(rules, action="down-0")).text
    assert moved.index('value="second"') < moved.index('value="first"') < moved.index('value="third"')
    removed = shop.admin.post(f"/app/bots/{bot}/rules", _rules_form(rules, action="remove-1")).text
    assert 'value="second"' not in removed and "Unsaved changes" in removed
    added = shop.admin.post(f"/app/bots/{bot}/rules", _rules_form(rules, action="add")).text
    assert 'name="rules-3-pattern"' in added
    assert shop.api.get(f"/bots/{bot}/rules").json()["rules"] == []


def test_the_rule_tester_names_the_rule_that_answers_a_message(web, shop, bot):
    rules = [("keyword", "price", "It costs 5.", True), ("keyword", "opening hours", "9 to 5", True)]
    found = shop.viewer.post(f"/app/bots/{bot}/rules", _rules_form(rules, action="test",
                                                                     test_text="What are your OPENING hours?")).text
    assert "Rule 2 answers:" in found and "9 to 5" in found
    none = shop.viewer.post(f"/app/bots/{bot}/rules", _rules_form(rules, action="test", test_text="hello")).text
    assert "No rule matches" in none


def test_ai_settings_show_the_apis_field_error_next_to_the_field(web, shop, bot):
    response = shop.admin.post(f"/app/bots/{bot}/ai", {"action": "save", "enabled": "on", "temperature": "3"})
    assert response.status_code == 400
    assert 'id="temperature"' in response.text and "must be a number from 0 to 2" in response.text
    assert shop.api.get(f"/bots/{bot}/ai").json()["ai"]["enabled"] is False


@pytest.fixture
def ai_web(web, pool):
    """The web app with an AI provider: a local OpenAI-compatible server."""
    from core.ai import AiClient

    with OpenAiServer() as server:
        web.ai = AiClient(config.replace(web.settings, ai_base_url=server.base_url + "/v1", ai_api_key="test-key",
                                         ai_max_retries=0))
        yield server
        web.ai.close()
        del web.ai


def test_trying_the_ai_sends_the_sample_with_the_forms_settings_and_shows_the_answer(web, shop, bot, ai_web):
    ai_web.script(reply("Yes, on Saturdays until noon."))
    response = shop.admin.post(f"/app/bots/{bot}/ai", {
        "action": "try", "system_prompt": "You are the bakery's assistant.", "temperature": "0.2",
        "sample": "customer: hi\nbot: Hello!\ncustomer: Do you deliver on Saturdays?"})
    assert response.status_code == 200 and "Yes, on Saturdays until noon." in response.text
    sent = ai_web.calls[0].body
    assert sent["temperature"] == 0.2
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert shop.api.get(f"/bots/{bot}/ai").json()["ai"]["system_prompt"] == ""  # trying saves nothing


def test_trying_the_ai_shows_the_providers_error(web, shop, bot, ai_web):
    ai_web.script(status(500))
    response = shop.admin.post(f"/app/bots/{bot}/ai", {"action": "try", "sample": "customer: hi"})
    assert 'id="ai-error"' in response.text and "500" in response.text


# -- outbox, events, admin -------------------------------------------------------------------------


def test_dead_letters_are_listed_with_their_reason_and_all_of_a_bots_can_be_retried(web, shop, bot, pg):
    ids = [shop.api.post(f"/bots/{bot}/messages", json={"to": "15550003333", "text": f"m{n}"}).json()["outbox_id"]
           for n in range(3)]
    superuser_sql(pg, "UPDATE outbox SET state = 'dead', last_error = 'number not on WhatsApp'"
                      " WHERE id = ANY(%s::uuid[])", (ids,))
    page = shop.agent.get(f"/app/outbox?bot={bot}").text
    assert page.count("number not on WhatsApp") == 3 and "Retry all" in page
    assert shop.agent.post("/app/outbox/retry-all", {"bot": bot}).status_code == 303
    states = {r[0] for r in superuser_sql(pg, "SELECT state FROM outbox WHERE id = ANY(%s::uuid[])", (ids,))}
    assert states == {"pending"}
    assert "3 failed messages queued again" in shop.agent.get(f"/app/outbox?bot={bot}&retried=3").text


def test_the_event_monitor_starts_with_recent_events_and_filters_them(web, shop, bot):
    web.publish(shop.tenant_id, bot, "bot.state", {"state": "connected"})
    web.publish(shop.tenant_id, bot, "message.in", {"text": "hi"})
    both = shop.viewer.get("/app/events").text
    assert "bot.state" in both and "message.in" in both
    only = shop.viewer.get("/app/events?type=message.*").text
    assert "<td>message.in</td>" in only and "<td>bot.state</td>" not in only
    assert 'data-live="/api/v1/events?type=message.%2A"' in only


def test_an_invite_link_is_shown_once_and_the_last_admin_cannot_be_demoted(web, shop):
    page = shop.admin.post("/app/admin/members", {"email": "new.agent@example.test", "role": "agent"}).text
    assert "shown once" in page and "/auth/link/wbl_" in page
    assert "/auth/link/wbl_" not in shop.admin.get("/app/admin/members").text
    demote = shop.admin.post(f"/app/admin/members/{shop.admin.user_id}/role", {"role": "viewer"})
    assert demote.status_code == 409 and "at least one admin" in demote.text
    promote = shop.admin.post(f"/app/admin/members/{shop.agent.user_id}/role", {"role": "admin"})
    assert promote.status_code == 303
    assert shop.admin.post(f"/app/admin/members/{shop.admin.user_id}/role", {"role": "viewer"}).status_code == 303


def test_a_new_api_key_is_shown_once_works_for_the_api_and_can_be_revoked(web, shop):
    page = shop.admin.post("/app/admin/keys", {"name": "crm"}).text
    key = re.search(r'value="(wbk_[^"]+)"', page).group(1)
    bearer = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{web.url}/api/v1/tenant", headers=bearer, timeout=10).status_code == 200
    listed = shop.admin.get("/app/admin/keys").text
    assert key not in listed and key[:10] in listed
    key_id = re.search(r'/app/admin/keys/([0-9a-f-]+)/revoke"[^>]*>\s*<input[^>]*>\s*<button', listed)
    key_ids = re.findall(r'id="key-([0-9a-f-]+)"[^<]*<td data-label="Name">crm', listed)
    assert key_id and key_ids
    assert shop.admin.post(f"/app/admin/keys/{key_ids[0]}/revoke", {"confirm": "yes"}).status_code == 303
    assert requests.get(f"{web.url}/api/v1/tenant", headers=bearer, timeout=10).status_code == 401


def test_the_status_page_shows_the_database_and_pool_and_says_when_no_supervisor_runs(web, shop):
    page = shop.admin.get("/app/admin/status").text
    assert "reachable" in page and "in use" in page
    assert "No supervisor process is running" in page


# -- live streams with the session cookie ---------------------------------------------------------


def test_a_members_event_stream_authenticates_with_the_cookie_and_carries_only_its_tenant(web, shop, bot, make_tenant):
    other_tenant, _ = make_tenant()
    cookie = {"Cookie": f"wabot_session={shop.viewer.token}"}
    mine = SSEClient(web.url, headers=cookie)
    foreign_filter = SSEClient(web.url, headers=cookie, params={"bot": str(uuid.uuid4())})
    try:
        assert mine.status == foreign_filter.status == 200
        web.publish(other_tenant, None, "bot.state", {"state": "theirs"})
        wanted = web.publish(shop.tenant_id, bot, "bot.state", {"state": "ours"})
        mine.wait_ids([wanted])
        assert [e.json()["payload"]["state"] for e in mine.events] == ["ours"]
        assert foreign_filter.events == []
    finally:
        mine.close()
        foreign_filter.close()


def test_a_stream_without_a_key_or_session_is_refused(web):
    stream = SSEClient(web.url, headers={"Cookie": "wabot_session=wbs_not-a-session"})
    try:
        assert stream.status == 401
    finally:
        stream.close()


def test_a_members_stream_ends_once_they_sign_out(web, shop):
    stream = SSEClient(web.url, headers={"Cookie": f"wabot_session={shop.agent.token}"})
    try:
        assert stream.status == 200
        shop.agent.post("/signout")
        closing = stream.wait_event(lambda e: e.event == "stream.closed", timeout=5, what="stream.closed")
        assert closing.json()["reason"] == "signed out"
        stream.wait_ended()
    finally:
        stream.close()


def test_a_websocket_with_the_session_cookie_follows_the_members_role(web, shop, bot):
    agent = WS(web.url, headers={"Cookie": f"wabot_session={shop.agent.token}", "Origin": web.url})
    viewer = WS(web.url, headers={"Cookie": f"wabot_session={shop.viewer.token}", "Origin": web.url})
    try:
        assert agent.status == viewer.status == 101
        agent.ready()
        viewer.ready()
        command = {"op": "send", "bot_id": bot, "to": "15550004444", "text": "hi", "id": 1}
        assert agent.command(**command)["type"] == "result"
        refused = viewer.command(**command)
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert len(shop.api.get("/outbox", params={"state": "pending"}).json()["outbox"]) == 1
    finally:
        agent.close()
        viewer.close()


def test_a_websocket_from_another_sites_page_gets_no_session(web, shop):
    ws = WS(web.url, headers={"Cookie": f"wabot_session={shop.agent.token}", "Origin": "https://evil.example"})
    try:
        assert ws.status == 401 and b"unauthorized" in ws.body
    finally:
        ws.close()


# -- usable by a person ----------------------------------------------------------------------------


def test_every_input_on_every_page_has_a_label(web, shop, bot, conversation):
    seen = 0
    for path in PAGES + ["/signin"]:
        html = shop.admin.get(path.format(bot=bot, contact=conversation)).text
        labelled = set(re.findall(r'<label[^>]*\bfor="([^"]+)"', html))
        fields = [tag for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html)
                  if not re.search(r'type="(hidden|submit)"|\bhidden\b', tag)]
        seen += len(fields)
        for tag in fields:
            field_id = re.search(r'\bid="([^"]+)"', tag)
            named = 'aria-label="' in tag or (field_id and field_id.group(1) in labelled)
            assert named or _inside_label(html, tag), (path, tag)
    assert seen > 20, f"only {seen} fields found: the pages did not render their forms"


def _inside_label(html, tag):
    """An input written inside its <label> element is labelled by it."""
    start = html.index(tag)
    return html.rfind("<label", 0, start) > html.rfind("</label>", 0, start)


def test_the_bots_list_shows_the_state_reason_attempt_countdown_and_ban(web, shop, bot, pg):
    superuser_sql(pg, "UPDATE bots SET desired_state = 'running', state = 'backing_off',"
                      " reason = 'network unreachable', attempt = 3, next_retry_at = now() + interval '40 seconds',"
                      " banned_until = now() + interval '2 hours' WHERE id = %s", (bot,))
    row = shop.viewer.get(f"/app/bots/{bot}/row", headers={"HX-Request": "true"}).text
    assert "backing off" in row and "network unreachable" in row and "attempt 3" in row
    assert re.search(r'data-until="[^"]+"', row) and "banned until" in row


def test_the_status_page_counts_each_live_supervisors_bots_of_this_tenant_only(web, shop, bot, pg, make_tenant):
    other_tenant, other_key = make_tenant()
    other_bot = requests.post(f"{web.url}/api/v1/bots", json={"name": "theirs"}, timeout=10,
                              headers={"Authorization": f"Bearer {other_key}"}).json()["id"]
    superuser_sql(pg, "INSERT INTO supervisors (owner, expires_at) VALUES ('host-a:1', now() + interval '1 minute')")
    try:
        superuser_sql(pg, "UPDATE bots SET lease_owner = 'host-a:1', lease_expires_at = now() + interval '1 minute'"
                          " WHERE id = ANY(%s::uuid[])", ([bot, other_bot],))
        page = shop.admin.get("/app/admin/status").text
        row = re.search(r"<tr><td data-label=\"Process\"><code>host-a:1</code>.*?</tr>", page, re.S).group(0)
        assert "alive" in row and '<td data-label="Your bots">1</td>' in row
    finally:
        superuser_sql(pg, "UPDATE bots SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = 'host-a:1'")
        superuser_sql(pg, "DELETE FROM supervisors WHERE owner = 'host-a:1'")


def test_a_key_made_in_the_dashboard_can_be_limited_to_scopes(web, shop):
    page = shop.admin.http.post(f"{web.url}/app/admin/keys", data={"name": "reader", "scopes": ["read"],
                                                                    "csrf_token": shop.admin.csrf},
                                headers={"Origin": web.url}, timeout=10).text
    key = re.search(r'value="(wbk_[^"]+)"', page).group(1)
    auth = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{web.url}/api/v1/bots", headers=auth, timeout=10).status_code == 200
    refused = requests.post(f"{web.url}/api/v1/bots", json={"name": "x"}, headers=auth, timeout=10)
    assert refused.status_code == 403 and "'manage'" in refused.json()["error"]["message"]
    listed = shop.admin.get("/app/admin/keys").text
    row = re.search(r'<td data-label="Name">reader</td>.*?</tr>', listed, re.S).group(0)
    assert '<span class="badge">read</span>' in row


# -- quotas --------------------------------------------------------------------------------------


def test_a_bot_past_the_quota_is_refused_on_the_bots_page_with_the_reason(web, shop, bot):
    from db import quotas
    from sansio import quotas as q

    quotas.set_limits(web.pool, shop.tenant_id, {q.BOTS: 1})
    response = shop.admin.post("/app/bots", {"name": "Second desk"})
    assert response.status_code == 403
    assert "quota of 1 bot is used up (1 in use)" in response.text
    assert len(shop.api.get("/bots").json()["bots"]) == 1


def test_a_send_past_the_daily_quota_is_refused_in_the_composer_with_the_draft_kept(web, shop, bot, conversation):
    from db import quotas
    from sansio import quotas as q

    quotas.set_limits(web.pool, shop.tenant_id, {q.MESSAGES_PER_DAY: 1})
    assert shop.agent.post(f"/app/inbox/{conversation}/send", {"text": "We open at nine."}).status_code == 303
    response = shop.agent.post(f"/app/inbox/{conversation}/send", {"text": "And close at six."})
    assert response.status_code == 429
    assert "quota of 1 messages per day is used up" in response.text and "And close at six." in response.text
    assert [r["text"] for r in shop.api.get("/outbox", params={"state": "pending"}).json()["outbox"]] == [
        "We open at nine."]


def test_an_attachment_past_the_media_quota_is_refused_in_the_composer_and_nothing_is_kept(web, shop, bot, conversation,
                                                                                          tmp_path):
    from db import quotas
    from sansio import quotas as q

    quotas.set_limits(web.pool, shop.tenant_id, {q.MEDIA_BYTES: 13})

    def attach(data):
        return shop.agent.http.post(f"{web.url}/app/inbox/{conversation}/send",
                                    data={"text": "your invoice", "csrf_token": shop.agent.csrf},
                                    files={"file": ("invoice.pdf", data, "application/pdf")},
                                    headers={"Origin": web.url, "HX-Request": "true"}, timeout=10)

    response = attach(b"%PDF-1.4 test!")  # 14 bytes: one past the quota
    assert response.status_code == 403 and 'id="send-error"' in response.text
    assert "would take the tenant&#39;s media past its quota of 13 bytes (0 stored)" in response.text
    assert shop.api.get("/outbox", params={"state": "pending"}).json()["outbox"] == []
    assert [f for _, _, fs in os.walk(tmp_path / "media") for f in fs] == []
    assert attach(b"%PDF-1.4 test").status_code == 200  # exactly at the quota
    assert len([f for _, _, fs in os.walk(tmp_path / "media") for f in fs]) == 1
    assert quotas.read(web.pool, shop.tenant_id)[1].media_bytes == 13


def test_the_status_page_and_bots_list_show_the_quotas_the_usage_and_the_answers_held(web, shop, bot, conversation):
    from db import quotas
    from sansio import quotas as q

    page = shop.admin.get("/app/admin/status").text
    assert 'id="quotas"' in page and "no limit" in page and 'id="held-answers"' not in page
    quotas.set_limits(web.pool, shop.tenant_id, {q.BOTS: 2, q.MESSAGES_PER_DAY: 1, q.MEDIA_BYTES: 5_000})
    assert shop.agent.post(f"/app/inbox/{conversation}/send", {"text": "We open at nine."}).status_code == 303
    for n in range(2):  # two answers past the day's one message: held
        message = customer_writes(web.pool, shop.tenant_id, bot, f"question {n}")
        pipeline_store.answer_many(web.pool, shop.tenant_id,
                                   [(bot, message.contact_id, [message.message_id], "hello", "rule", None, True)])
    page = shop.admin.get("/app/admin/status").text
    assert re.search(r'<td data-label="Quota">Bots</td><td data-label="Used">1</td>\s*<td data-label="Limit">2</td>',
                     page)
    assert "1 per day" in page and "5,000 bytes" in page
    assert "2 answers held by the daily message quota; they go out when it allows" in page
    bots_page = shop.agent.get("/app/bots").text
    assert "1 of 2 allowed" in bots_page
    assert "2 answers held by the daily message quota; they go out when it allows." in bots_page
    outbox = shop.agent.get("/app/outbox", params={"state": "held"}).text
    assert '<option value="held" selected>Held by the quota</option>' in outbox
    assert outbox.count('<tr id="outbox-') == 2
    assert "daily message quota is used up; sent when the quota allows" in outbox

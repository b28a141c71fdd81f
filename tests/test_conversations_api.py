"""Messages, conversations, pause/resume, rules and AI settings and the outbox over HTTP, against the
real embedded PostgreSQL. No supervisor runs here: the pipeline is not running, so these tests check
what the API records (and that it notifies ``bot_commands``), never a delivery."""

import datetime
import uuid

import psycopg2
import pytest
import requests

from core import config
from db import conversations, pipeline_store
from tests.waiting import wait_until
from transports.events import MessageReceived

INJECTIONS = ["'; DROP TABLE messages; --", "x' OR '1'='1", "1); DELETE FROM tenants; --",
              "\\'; SELECT pg_sleep(5); --"]
PHONE = "4915123456789"
JID = PHONE + "@s.whatsapp.net"
T0 = 1_700_000_000.0  # fixed WhatsApp timestamps for inbound messages: a known order




@pytest.fixture
def notices(pg):
    """What arrives on ``bot_commands``: ``notices(bot_id)`` waits (briefly) for one naming the bot and
    fails the test if none comes."""
    conn = psycopg2.connect(pg.app_url)
    conn.autocommit = True
    conn.cursor().execute("LISTEN bot_commands")
    seen = []

    def wait_for(bot_id, timeout=3.0, what="a notice on bot_commands"):
        def arrived():
            conn.poll()
            seen.extend(n.payload for n in conn.notifies)
            conn.notifies.clear()
            if bot_id in seen:
                seen.remove(bot_id)
                return True
            return False

        wait_until(arrived, timeout, f"{what} (naming {bot_id})", interval=0.02)

    def drain():
        conn.poll()
        conn.notifies.clear()
        seen.clear()

    wait_for.drain = drain
    yield wait_for
    conn.close()


def _bot(client, name="support"):
    response = client.post("/bots", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _send(client, bot_id, **body):
    response = client.post(f"/bots/{bot_id}/messages", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _error(response, status, field=None, code="invalid_input"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert error.get("field") == field, error
    return error


def _inbound(pool, client, bot_id, chat=JID, text="hello", ts=T0, wa_id=None, **fields):
    event = MessageReceived(message_id=wa_id or "IN" + uuid.uuid4().hex[:16].upper(), chat=chat, sender=chat,
                            timestamp=ts, text=text, **fields)
    return pipeline_store.store_many(pool, client.tenant_id, [(bot_id, event, "test")])[0]


def _media(pool, client, mime):
    rows = pool.query(
        client.tenant_id,
        "INSERT INTO media (backend, object_key, mime_type, size_bytes, sha256) VALUES ('local', %s, %s, 1, 'x')"
        " RETURNING id",
        (uuid.uuid4().hex, mime),
        repeatable=False,
    )
    return str(rows[0][0])


def _outbox_row(pool, client, outbox_id, columns):
    return pool.query(client.tenant_id, f"SELECT {columns} FROM outbox WHERE id = %s", (outbox_id,))[0]


def _message_row(pool, client, outbox_id, columns):
    return pool.query(
        client.tenant_id, f"SELECT {columns} FROM messages WHERE outbox_id = %s AND direction = 'out'", (outbox_id,)
    )[0]


def _all_pages(client, path, key, limit):
    """Every row of a listing, page by page; also the number of pages."""
    rows, before, pages = [], None, 0
    while True:
        params = {"limit": limit}
        if before:
            params["before"] = before
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body[key]) <= limit
        rows += body[key]
        pages += 1
        before = body["next_before"]
        if before is None:
            return rows, pages


# -- sending -------------------------------------------------------------------------------------------


def test_a_text_message_is_queued_pending_with_its_outgoing_row_contact_and_the_requests_correlation_id(
        alice, pool, notices):
    bot_id = _bot(alice)
    notices.drain()
    response = alice.post(f"/bots/{bot_id}/messages", json={"to": "+49 151-2345 6789", "text": "Hi there"},
                          headers={"X-Request-ID": "req-send-1"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "pending" and body["to"] == JID and body["kind"] == "text"
    outbox_id = body["outbox_id"]

    row = _outbox_row(pool, alice, outbox_id, "bot_id, to_jid, kind, body, state, attempts, source, correlation_id,"
                                             " media_id")
    assert row == (bot_id, JID, "text", "Hi there", "pending", 0, "api", "req-send-1", None)
    assert _message_row(pool, alice, outbox_id, "kind, body, status, correlation_id") == (
        "text", "Hi there", "pending", "req-send-1")
    assert pool.query(alice.tenant_id, "SELECT jid FROM contacts WHERE bot_id = %s", (bot_id,)) == [(JID,)]
    notices(bot_id, what="the pipeline to be woken")


def test_a_jid_and_every_spelling_of_the_number_reach_the_same_contact_and_4096_characters_fit(alice, pool):
    bot_id = _bot(alice)
    for to in (PHONE, "+" + PHONE, "49 151 2345-6789", JID, JID.upper().replace("S.WHATSAPP.NET", "s.WhatsApp.net")):
        assert _send(alice, bot_id, to=to, text="x")["to"] == JID
    _send(alice, bot_id, to=PHONE, text="y" * 4096)
    assert pool.query(alice.tenant_id, "SELECT count(*) FROM contacts WHERE bot_id = %s", (bot_id,)) == [(1,)]
    assert pool.query(alice.tenant_id, "SELECT count(*) FROM outbox WHERE bot_id = %s", (bot_id,)) == [(6,)]


@pytest.mark.parametrize(
    "body, field, reason",
    [
        ({"text": "hi"}, "to", "required"),
        ({"to": 4915123456789, "text": "hi"}, "to", "phone number"),
        ({"to": "1234567", "text": "hi"}, "to", "8 to 15"),
        ({"to": "1" * 16, "text": "hi"}, "to", "8 to 15"),
        ({"to": "49151x3456789", "text": "hi"}, "to", "8 to 15"),
        ({"to": "120363000000000000@g.us", "text": "hi"}, "to", "s.whatsapp.net"),
        ({"to": "4915123456789@lid", "text": "hi"}, "to", "s.whatsapp.net"),
        ({"to": "49151@s.whatsapp.net", "text": "hi"}, "to", "8 to 15"),
        ({"to": PHONE}, "text", "required"),
        ({"to": PHONE, "text": ""}, "text", "empty"),
        ({"to": PHONE, "text": " \n "}, "text", "empty"),
        ({"to": PHONE, "text": "x" * 4097}, "text", "4096"),
        ({"to": PHONE, "text": 42}, "text", "string"),
        ({"to": PHONE, "text": "a\x00b"}, "text", "NUL"),
        ({"to": PHONE, "text": "hi", "txt": "typo"}, "txt", "unknown"),
        ({"to": PHONE, "text": "hi", "caption": "c"}, "caption", "media_id"),
        ({"to": PHONE, "text": "hi", "media_id": str(uuid.uuid4())}, "text", "not both"),
        ({"to": PHONE, "media_id": "not-a-uuid"}, "media_id", "UUID"),
        ({"to": PHONE, "media_id": 7}, "media_id", "UUID"),
        ({"to": PHONE, "media_id": str(uuid.uuid4()), "caption": "c" * 1025}, "caption", "1024"),
        ({"to": PHONE, "media_id": str(uuid.uuid4()), "caption": ["c"]}, "caption", "string"),
    ],
)
def test_an_invalid_message_is_rejected_with_400_naming_the_field_and_nothing_is_queued(alice, pool, body, field,
                                                                                         reason):
    bot_id = _bot(alice)
    error = _error(alice.post(f"/bots/{bot_id}/messages", json=body), 400, field)
    assert reason in error["message"]
    assert pool.query(alice.tenant_id, "SELECT count(*) FROM outbox") == [(0,)]


def test_a_body_that_is_not_a_json_object_is_rejected(alice):
    bot_id = _bot(alice)
    _error(alice.post(f"/bots/{bot_id}/messages", data="[1]", headers={"Content-Type": "application/json"}), 400,
           code="invalid_json")


def test_media_messages_take_image_or_document_from_the_media_type_and_carry_the_caption(alice, pool):
    bot_id = _bot(alice)
    image, pdf = _media(pool, alice, "image/png"), _media(pool, alice, "application/pdf")
    sent_image = _send(alice, bot_id, to=PHONE, media_id=image, caption="Our menu")
    sent_pdf = _send(alice, bot_id, to=PHONE, media_id=pdf)
    assert (sent_image["kind"], sent_pdf["kind"]) == ("image", "document")
    assert _outbox_row(pool, alice, sent_image["outbox_id"], "kind, body, media_id") == (
        "image", "Our menu", image)
    assert _outbox_row(pool, alice, sent_pdf["outbox_id"], "kind, body, media_id") == ("document", "", pdf)

    messages = alice.get(f"/bots/{bot_id}/conversations/{PHONE}/messages").json()["messages"]
    assert [(m["kind"], m["text"], m["media_id"]) for m in messages] == [
        ("document", "", pdf), ("image", "Our menu", image)]


def test_unknown_media_or_another_tenants_media_is_not_found_and_queues_nothing(alice, mallory, pool):
    bot_id = _bot(alice)
    theirs = _media(pool, mallory, "image/jpeg")
    for media_id in (theirs, str(uuid.uuid4())):
        error = _error(alice.post(f"/bots/{bot_id}/messages", json={"to": PHONE, "media_id": media_id}), 404,
                       "media_id", code="not_found")
        assert "media" in error["message"]
    assert pool.query(alice.tenant_id, "SELECT count(*) FROM outbox") == [(0,)]


# -- conversations and their messages --------------------------------------------------------------


def test_conversations_are_listed_by_latest_activity_with_a_preview_and_paged_by_cursor_or_time(alice, pool):
    bot_id = _bot(alice)
    jids = [f"49151000000{i:02d}@s.whatsapp.net" for i in range(5)]
    for i, jid in enumerate(jids):
        _inbound(pool, alice, bot_id, chat=jid, text=f"message {i} " + "z" * 200, ts=T0 + i)
    other_bot = _bot(alice, "other")
    _inbound(pool, alice, other_bot, chat=jids[0], ts=T0 + 99)  # another bot's conversation: not listed

    listed = alice.get(f"/bots/{bot_id}/conversations").json()
    assert [c["jid"] for c in listed["conversations"]] == jids[::-1]
    assert listed["next_before"] is None
    newest = listed["conversations"][0]
    assert newest["paused"] is False and newest["paused_at"] is None
    assert newest["last_message"]["direction"] == "in"
    assert newest["last_message"]["preview"] == ("message 4 " + "z" * 200)[:100]
    assert datetime.datetime.fromisoformat(newest["last_message_at"]).timestamp() == T0 + 4

    rows, pages = _all_pages(alice, f"/bots/{bot_id}/conversations", "conversations", 2)
    assert [c["jid"] for c in rows] == jids[::-1] and pages == 3

    # An outgoing message is activity too: the oldest conversation moves to the top.
    _send(alice, bot_id, to=jids[0], text="a reply from a human")
    first = alice.get(f"/bots/{bot_id}/conversations", params={"limit": 1}).json()
    assert first["conversations"][0]["jid"] == jids[0]
    assert first["conversations"][0]["last_message"] == {
        "direction": "out", "kind": "text", "preview": "a reply from a human", "status": "pending"}
    assert first["next_before"]

    # An ISO time: strictly older than it ('+' sent unencoded arrives as a space and still works).
    cut = datetime.datetime.fromtimestamp(T0 + 3, datetime.UTC)
    for before in (cut.isoformat(), cut.strftime("%Y-%m-%dT%H:%M:%SZ")):
        older = alice.get(f"/bots/{bot_id}/conversations", params={"before": before}).json()["conversations"]
        assert [c["jid"] for c in older] == [jids[2], jids[1]]
    raw = requests.get(f"{alice.base}/bots/{bot_id}/conversations?before={cut.isoformat()}",
                       headers={"Authorization": f"Bearer {alice.key}"}, timeout=10)
    assert [c["jid"] for c in raw.json()["conversations"]] == [jids[2], jids[1]]


def test_a_conversations_messages_are_listed_newest_first_by_contact_id_number_or_jid_and_paged_without_gaps(
        alice, pool):
    bot_id = _bot(alice)
    stored = _inbound(pool, alice, bot_id, text="first", ts=T0, wa_id="WA-FIRST")
    photo = _inbound(pool, alice, bot_id, text="", ts=T0 + 1, kind="image", caption="a photo", mime_type="image/jpeg",
                     quoted_id="WA-FIRST")
    media_id = str(uuid.uuid4())
    conversations.set_media(pool, alice.tenant_id, photo.message_id, media_id, "key")
    for i in range(4):  # the same second: the id orders them, and paging must neither skip nor repeat
        _inbound(pool, alice, bot_id, text=f"burst {i}", ts=T0 + 2)
    sent = _send(alice, bot_id, to=PHONE, text="we are on it")

    by_id = alice.get(f"/bots/{bot_id}/conversations/{stored.contact_id}/messages").json()
    assert by_id["contact"]["id"] == stored.contact_id and by_id["contact"]["jid"] == JID
    messages = by_id["messages"]
    assert len(messages) == 7 and by_id["next_before"] is None
    assert messages[0]["direction"] == "out" and messages[0]["text"] == "we are on it"
    assert messages[0]["status"] == "pending" and messages[0]["outbox_id"] == sent["outbox_id"]
    assert messages[0]["wa_message_id"].startswith("3EB0")
    assert [m["text"] for m in messages[-2:]] == ["a photo", "first"]
    photo_row = messages[-2]
    assert (photo_row["kind"], photo_row["media_id"], photo_row["quoted_wa_id"]) == ("image", media_id, "WA-FIRST")
    assert messages[-1] == {
        "id": stored.message_id, "direction": "in", "kind": "text", "text": "first", "status": "stored",
        "wa_message_id": "WA-FIRST", "created_at": messages[-1]["created_at"], "media_id": None,
        "quoted_wa_id": None, "outbox_id": None, "answered_at": None}

    for ref in (PHONE, "+49 151 2345 6789", JID):
        assert alice.get(f"/bots/{bot_id}/conversations/{ref}/messages").json()["messages"] == messages
    for limit in (1, 2, 3):
        rows, _pages = _all_pages(alice, f"/bots/{bot_id}/conversations/{PHONE}/messages", "messages", limit)
        assert [m["id"] for m in rows] == [m["id"] for m in messages]


def test_an_unknown_contact_or_another_bots_contact_is_404(alice, pool):
    bot_id, other_bot = _bot(alice), _bot(alice, "other")
    theirs = _inbound(pool, alice, other_bot, chat="4917000000000@s.whatsapp.net")
    for ref in (theirs.contact_id, "4917000000000", str(uuid.uuid4()), "nobody", "4915999999999@s.whatsapp.net"):
        for method, suffix in (("get", "messages"), ("post", "pause"), ("post", "resume")):
            error = _error(getattr(alice, method)(f"/bots/{bot_id}/conversations/{ref}/{suffix}"), 404,
                           code="not_found")
            assert "contact" in error["message"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": "-1"}, "limit"),
        ({"before": "yesterday"}, "before"), ({"before": "c1.bm9wZQ"}, "before"), ({"before": "c1.%%%"}, "before"),
        ({"before": "2024-13-45T00:00:00Z"}, "before"),
    ],
)
def test_bad_paging_parameters_are_400_naming_them(alice, pool, params, field):
    bot_id = _bot(alice)
    _inbound(pool, alice, bot_id)
    for path in (f"/bots/{bot_id}/conversations", f"/bots/{bot_id}/conversations/{PHONE}/messages", "/outbox"):
        _error(alice.get(path, params=params), 400, field)


# -- taking a conversation over ------------------------------------------------------------------------


def test_pausing_records_when_and_which_api_key_and_resuming_hands_the_conversation_back(alice, pool, notices):
    bot_id = _bot(alice)
    stored = _inbound(pool, alice, bot_id)
    notices.drain()

    paused = alice.post(f"/bots/{bot_id}/conversations/{PHONE}/pause")
    assert paused.status_code == 200, paused.text
    contact = paused.json()
    assert contact["id"] == stored.contact_id and contact["paused"] is True
    assert contact["paused_by"] == f"api-key:{alice.key[:10]} (default)"
    assert contact["paused_at"] is not None
    notices(bot_id)
    row = pool.query(alice.tenant_id, "SELECT paused, paused_at, paused_by FROM contacts WHERE id = %s",
                     (stored.contact_id,))[0]
    assert row[0] is True and row[1].isoformat() == contact["paused_at"] and row[2] == contact["paused_by"]

    again = alice.post(f"/bots/{bot_id}/conversations/{stored.contact_id}/pause").json()
    assert again["paused_at"] == contact["paused_at"], "pausing again keeps when it was first paused"
    listed = alice.get(f"/bots/{bot_id}/conversations").json()["conversations"][0]
    assert (listed["paused"], listed["paused_by"]) == (True, contact["paused_by"])

    resumed = alice.post(f"/bots/{bot_id}/conversations/{JID}/resume")
    assert resumed.status_code == 200
    assert (resumed.json()["paused"], resumed.json()["paused_at"], resumed.json()["paused_by"]) == (False, None, None)
    assert pool.query(alice.tenant_id, "SELECT paused, paused_at, paused_by FROM contacts WHERE id = %s",
                      (stored.contact_id,)) == [(False, None, None)]
    notices(bot_id)


# -- rules and AI settings -----------------------------------------------------------------------------


def test_rules_round_trip_in_order_with_defaults_filled_and_the_pipeline_is_notified(alice, pool, notices):
    bot_id = _bot(alice)
    assert alice.get(f"/bots/{bot_id}/rules").json() == {"rules": []}
    rules = [
        {"match": "keyword", "pattern": "opening hours", "reply": "9 to 5"},
        {"match": "regex", "pattern": r"order\s*#?\d+", "reply": "Let me check", "enabled": False},
    ]
    notices.drain()
    response = alice.put(f"/bots/{bot_id}/rules", json={"rules": rules})
    assert response.status_code == 200, response.text
    expected = [dict(rules[0], enabled=True), rules[1]]
    assert response.json() == {"rules": expected}
    notices(bot_id)
    assert alice.get(f"/bots/{bot_id}/rules").json() == {"rules": expected}
    assert pool.query(alice.tenant_id, "SELECT rules FROM bots WHERE id = %s", (bot_id,)) == [(expected,)]

    assert alice.put(f"/bots/{bot_id}/rules", json={"rules": []}).json() == {"rules": []}
    assert alice.get(f"/bots/{bot_id}/rules").json() == {"rules": []}


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "rules"),
        ({"rules": {"match": "keyword"}}, "rules"),
        ({"rules": [], "rulez": []}, "rulez"),
        ({"rules": ["hi"]}, "rules[0]"),
        ({"rules": [{"match": "glob", "pattern": "a", "reply": "b"}]}, "rules[0].match"),
        ({"rules": [{"match": "keyword", "reply": "b"}]}, "rules[0].pattern"),
        ({"rules": [{"match": "keyword", "pattern": "a", "reply": "b", "enable": False}]}, "rules[0].enable"),
        ({"rules": [{"match": "keyword", "pattern": "a", "reply": "b"},
                    {"match": "keyword", "pattern": "c", "reply": "d"},
                    {"match": "regex", "pattern": "(a+)+$", "reply": "e"}]}, "rules[2].pattern"),
        ({"rules": [{"match": "regex", "pattern": "([a-z]", "reply": "e"}]}, "rules[0].pattern"),
        ({"rules": [{"match": "keyword", "pattern": "a", "reply": ""}]}, "rules[0].reply"),
        ({"rules": [{"match": "keyword", "pattern": "a", "reply": "b", "enabled": "yes"}]}, "rules[0].enabled"),
    ],
)
def test_invalid_rules_are_rejected_with_the_rules_path_and_the_stored_rules_stay(alice, body, field):
    bot_id = _bot(alice)
    kept = [{"match": "keyword", "pattern": "hi", "reply": "hello", "enabled": True}]
    assert alice.put(f"/bots/{bot_id}/rules", json={"rules": kept}).status_code == 200
    _error(alice.put(f"/bots/{bot_id}/rules", json=body), 400, field)
    assert alice.get(f"/bots/{bot_id}/rules").json() == {"rules": kept}


def test_ai_settings_read_with_defaults_round_trip_and_say_whether_a_provider_is_configured(alice, web, pool,
                                                                                            notices):
    bot_id = _bot(alice)
    assert alice.get(f"/bots/{bot_id}/ai").json() == {
        "ai": {"enabled": False, "system_prompt": "", "temperature": 0.7, "history": 10, "model": None,
               "fallback_reply": None},
        "provider_configured": False,
    }
    notices.drain()
    response = alice.put(f"/bots/{bot_id}/ai", json={"ai": {"enabled": True, "system_prompt": "Be brief.",
                                                            "temperature": 0}})
    assert response.status_code == 200, response.text
    expected = {"enabled": True, "system_prompt": "Be brief.", "temperature": 0.0, "history": 10, "model": None,
                "fallback_reply": None}
    assert response.json() == {"ai": expected, "provider_configured": False}
    notices(bot_id)
    assert pool.query(alice.tenant_id, "SELECT ai FROM bots WHERE id = %s", (bot_id,)) == [(expected,)]

    web.settings = config.replace(web.settings, ai_api_key="sk-test")
    got = alice.get(f"/bots/{bot_id}/ai").json()
    assert got == {"ai": expected, "provider_configured": True}
    assert alice.put(f"/bots/{bot_id}/ai", json=got).status_code == 200, "a GET body can be sent back as is"
    assert alice.put(f"/bots/{bot_id}/ai", json={"ai": {}}).json()["ai"]["enabled"] is False


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "ai"),
        ({"ai": []}, "ai"),
        ({"ai": {}, "extra": 1}, "extra"),
        ({"ai": {"enabled": "yes"}}, "ai.enabled"),
        ({"ai": {"temperature": 3}}, "ai.temperature"),
        ({"ai": {"temperature": True}}, "ai.temperature"),
        ({"ai": {"history": -1}}, "ai.history"),
        ({"ai": {"history": 51}}, "ai.history"),
        ({"ai": {"model": ""}}, "ai.model"),
        ({"ai": {"system_prompt": "x" * 8001}}, "ai.system_prompt"),
        ({"ai": {"temprature": 1}}, "ai.temprature"),
    ],
)
def test_invalid_ai_settings_are_rejected_with_the_ai_path_and_the_stored_settings_stay(alice, pool, body, field):
    bot_id = _bot(alice)
    assert alice.put(f"/bots/{bot_id}/ai", json={"ai": {"enabled": True}}).status_code == 200
    _error(alice.put(f"/bots/{bot_id}/ai", json=body), 400, field)
    assert alice.get(f"/bots/{bot_id}/ai").json()["ai"]["enabled"] is True


# -- the outbox ----------------------------------------------------------------------------------------


def _dead(pool, client, outbox_id, error="recipient not on WhatsApp"):
    pool.execute(client.tenant_id,
                 "UPDATE outbox SET state = 'dead', attempts = 5, last_error = %s,"
                 " next_attempt_at = now() + interval '1 hour' WHERE id = %s", (error, outbox_id))
    pool.execute(client.tenant_id, "UPDATE messages SET status = 'failed' WHERE outbox_id = %s", (outbox_id,))


def test_the_outbox_lists_by_state_newest_first_dead_by_default_filtered_by_bot_and_paged(alice, pool):
    bot_a, bot_b = _bot(alice, "a"), _bot(alice, "b")
    ids = [_send(alice, bot_a if i % 2 == 0 else bot_b, to=PHONE, text=f"m{i}")["outbox_id"] for i in range(6)]
    for outbox_id in ids[:4]:
        _dead(pool, alice, outbox_id)
    pool.execute(alice.tenant_id, "UPDATE outbox SET state = 'sent', sent_at = now() WHERE id = %s", (ids[4],))

    dead = alice.get("/outbox").json()
    assert [r["id"] for r in dead["outbox"]] == ids[3::-1] and dead["next_before"] is None
    row = dead["outbox"][-1]
    assert {k: row[k] for k in ("bot_id", "to", "text", "state", "attempts", "last_error", "source", "sent_at")} == {
        "bot_id": bot_a, "to": JID, "text": "m0", "state": "dead", "attempts": 5,
        "last_error": "recipient not on WhatsApp", "source": "api", "sent_at": None}
    assert row["created_at"]

    assert [r["id"] for r in alice.get("/outbox", params={"state": "dead", "bot": bot_a}).json()["outbox"]] == [
        ids[2], ids[0]]
    sent = alice.get("/outbox", params={"state": "sent"}).json()["outbox"]
    assert [r["id"] for r in sent] == [ids[4]] and sent[0]["sent_at"]
    assert [r["id"] for r in alice.get("/outbox", params={"state": "pending"}).json()["outbox"]] == [ids[5]]
    assert alice.get("/outbox", params={"state": "sending"}).json() == {"outbox": [], "next_before": None}

    rows, pages = _all_pages(alice, "/outbox", "outbox", 3)
    assert [r["id"] for r in rows] == ids[3::-1] and pages == 2

    _error(alice.get("/outbox", params={"state": "failed"}), 400, "state")
    _error(alice.get("/outbox", params={"bot": "nope"}), 400, "bot")
    _error(alice.get("/outbox", params={"bot": str(uuid.uuid4())}), 404, code="not_found")


def test_retrying_a_dead_message_queues_it_again_from_scratch_and_wakes_the_pipeline(alice, pool, notices):
    bot_id = _bot(alice)
    outbox_id = _send(alice, bot_id, to=PHONE, text="try me again")["outbox_id"]
    wa_id = _outbox_row(pool, alice, outbox_id, "wa_message_id")[0]
    _dead(pool, alice, outbox_id)
    notices.drain()

    response = alice.post(f"/outbox/{outbox_id}/retry")
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["id"], body["state"], body["attempts"], body["last_error"]) == (outbox_id, "pending", 0, None)
    state, attempts, last_error, due, same_id = _outbox_row(
        pool, alice, outbox_id, "state, attempts, last_error, next_attempt_at <= now(), wa_message_id")
    assert (state, attempts, last_error, due, same_id) == ("pending", 0, None, True, wa_id)
    assert _message_row(pool, alice, outbox_id, "status")[0] == "pending"
    notices(bot_id)
    assert [r["id"] for r in alice.get("/outbox", params={"state": "pending"}).json()["outbox"]] == [outbox_id]


def test_retrying_a_message_that_is_not_dead_is_409_and_changes_nothing(alice, pool):
    bot_id = _bot(alice)
    outbox_id = _send(alice, bot_id, to=PHONE, text="still pending")["outbox_id"]
    before = _outbox_row(pool, alice, outbox_id, "state, attempts, next_attempt_at")
    error = _error(alice.post(f"/outbox/{outbox_id}/retry"), 409, code="conflict")
    assert "pending" in error["message"]
    pool.execute(alice.tenant_id, "UPDATE outbox SET state = 'sent' WHERE id = %s", (outbox_id,))
    _error(alice.post(f"/outbox/{outbox_id}/retry"), 409, code="conflict")
    assert _outbox_row(pool, alice, outbox_id, "attempts, next_attempt_at") == before[1:]
    for bad in (str(uuid.uuid4()), "not-a-uuid"):
        _error(alice.post(f"/outbox/{bad}/retry"), 404, code="not_found")


# -- isolation, ids and hostile input --------------------------------------------------------------


def test_another_tenant_gets_404_on_every_endpoint_and_changes_nothing(alice, mallory, pool):
    bot_id = _bot(alice)
    stored = _inbound(pool, alice, bot_id)
    rules = [{"match": "keyword", "pattern": "hi", "reply": "hello", "enabled": True}]
    alice.put(f"/bots/{bot_id}/rules", json={"rules": rules})
    outbox_id = _send(alice, bot_id, to=PHONE, text="mine")["outbox_id"]
    _dead(pool, alice, outbox_id)
    contact = f"/bots/{bot_id}/conversations/{stored.contact_id}"
    calls = [
        ("post", f"/bots/{bot_id}/messages", {"to": PHONE, "text": "hijack"}),
        ("get", f"/bots/{bot_id}/conversations", None),
        ("get", f"{contact}/messages", None),
        ("get", f"/bots/{bot_id}/conversations/{PHONE}/messages", None),
        ("post", f"{contact}/pause", None),
        ("post", f"{contact}/resume", None),
        ("get", f"/bots/{bot_id}/rules", None),
        ("put", f"/bots/{bot_id}/rules", {"rules": []}),
        ("get", f"/bots/{bot_id}/ai", None),
        ("put", f"/bots/{bot_id}/ai", {"ai": {"enabled": True}}),
        ("get", f"/outbox?bot={bot_id}", None),
        ("post", f"/outbox/{outbox_id}/retry", None),
    ]
    for method, path, body in calls:
        response = getattr(mallory, method)(path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert mallory.get("/outbox").json() == {"outbox": [], "next_before": None}

    assert pool.query(alice.tenant_id, "SELECT count(*) FROM outbox") == [(1,)]
    assert _outbox_row(pool, alice, outbox_id, "state")[0] == "dead"
    assert alice.get(f"/bots/{bot_id}/rules").json() == {"rules": rules}
    assert alice.get(f"/bots/{bot_id}/ai").json()["ai"]["enabled"] is False
    assert alice.get(f"/bots/{bot_id}/conversations").json()["conversations"][0]["paused"] is False


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1", "' OR 1=1 --", str(uuid.uuid4())])
def test_a_malformed_or_unknown_bot_id_is_404_everywhere(alice, bad_id):
    for method, path, body in [
        ("post", "/messages", {"to": PHONE, "text": "x"}),
        ("get", "/conversations", None),
        ("get", f"/conversations/{PHONE}/messages", None),
        ("post", f"/conversations/{PHONE}/pause", None),
        ("get", "/rules", None),
        ("put", "/rules", {"rules": []}),
        ("get", "/ai", None),
        ("put", "/ai", {"ai": {}}),
    ]:
        response = getattr(alice, method)(f"/bots/{bad_id}{path}", json=body)
        assert response.status_code == 404, (method, path, response.text)


def test_requests_without_a_valid_api_key_are_401(web):
    for path in ("/outbox", f"/bots/{uuid.uuid4()}/conversations"):
        assert requests.get(web.url + "/api/v1" + path, timeout=10).status_code == 401
        assert requests.get(web.url + "/api/v1" + path, headers={"Authorization": "Bearer wbk_nope"},
                            timeout=10).status_code == 401


def test_injection_strings_are_stored_verbatim_or_rejected_and_leave_everything_else_alone(alice, mallory, pool):
    theirs = _bot(mallory, "mallory's bot")
    _send(mallory, theirs, to=PHONE, text="mallory's message")
    bot_id = _bot(alice)

    sent = [_send(alice, bot_id, to=PHONE, text=text)["outbox_id"] for text in INJECTIONS]
    assert [_outbox_row(pool, alice, o, "body")[0] for o in sent] == INJECTIONS
    listed = alice.get(f"/bots/{bot_id}/conversations/{PHONE}/messages").json()["messages"]
    assert [m["text"] for m in listed] == INJECTIONS[::-1]
    _send(alice, bot_id, to=PHONE, media_id=_media(pool, alice, "image/png"), caption=INJECTIONS[0])

    for text in INJECTIONS:
        _error(alice.post(f"/bots/{bot_id}/messages", json={"to": text, "text": "hi"}), 400, "to")
        _error(alice.post(f"/bots/{bot_id}/messages", json={"to": PHONE, "media_id": text}), 400, "media_id")
        _error(alice.get("/outbox", params={"state": text}), 400, "state")
        _error(alice.get("/outbox", params={"bot": text}), 400, "bot")
        _error(alice.get(f"/bots/{bot_id}/conversations", params={"before": text}), 400, "before")
        assert alice.get(f"/bots/{bot_id}/conversations/{requests.utils.quote(text, safe='')}/messages"
                         ).status_code == 404
        assert alice.post(f"/outbox/{requests.utils.quote(text, safe='')}/retry").status_code == 404

    rules = [{"match": "keyword", "pattern": text, "reply": text, "enabled": True} for text in INJECTIONS]
    rules.append({"match": "regex", "pattern": "'; DROP TABLE bots; --", "reply": "ok", "enabled": True})
    assert alice.put(f"/bots/{bot_id}/rules", json={"rules": rules}).json() == {"rules": rules}
    assert pool.query(alice.tenant_id, "SELECT rules FROM bots WHERE id = %s", (bot_id,)) == [(rules,)]
    ai = {"enabled": True, "system_prompt": INJECTIONS[1], "model": INJECTIONS[0]}
    assert alice.put(f"/bots/{bot_id}/ai", json={"ai": ai}).json()["ai"]["model"] == INJECTIONS[0]

    # The other tenant, and the tables, are untouched.
    assert [b["id"] for b in mallory.get("/bots").json()["bots"]] == [theirs]
    assert [m["text"] for m in mallory.get(f"/bots/{theirs}/conversations/{PHONE}/messages").json()["messages"]] == [
        "mallory's message"]
    assert mallory.get(f"/bots/{theirs}/rules").json() == {"rules": []}
    assert pool.query(alice.tenant_id, "SELECT count(*) FROM messages WHERE bot_id = %s", (bot_id,)) == [(5,)]

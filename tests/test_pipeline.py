"""The bot's work end to end over the simulator's real socket, with a real OpenAI-compatible server on
127.0.0.1 reached through the real `openai` client: store, answer (rules, AI, fallback), deliver,
receipts, debounce, duplicates, human takeover, the owner answering from the phone, rate limit, dead
letters."""

import itertools
import json

import pytest

from core import config
from db import bots as bots_db
from db import conversations as conv
from db import pipeline_store as ps
from simulator.server import Simulator
from tests.openai_server import OpenAiServer, reply, status
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision

CUSTOMER = "15550001111"
CUSTOMER_JID = CUSTOMER + "@s.whatsapp.net"


@pytest.fixture
def sim():
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=(0.05, 0.05)) as simulator:
        yield simulator


@pytest.fixture
def ai_server():
    with OpenAiServer() as server:
        yield server


def _settings(pg, tmp_path, sim, ai_server, **extra):
    env = dict(AI_BASE_URL=ai_server.base_url + "/v1", AI_API_KEY="test-key", AI_MODEL="test-model",
               AI_TIMEOUT="10", AI_MAX_RETRIES="0", AI_DEBOUNCE="0.3", AI_BREAKER_FAILURES="2",
               AI_BREAKER_RESET="60", BOT_SEND_RATE="0", OUTBOX_RETRY_BASE="0.1")
    env.update(extra)
    return session_settings(pg, str(tmp_path), sim.address, **env)


def _configure(pool, tenant, bot, rules=(), ai=None):
    pool.execute(tenant, "UPDATE bots SET rules = %s, ai = %s WHERE id = %s",
                 (json.dumps(list(rules)), json.dumps(ai or {}), bot))


def _connected_bot(sim, events, pool, tenant, **config):
    bot = new_bot(pool, tenant, running=False)
    _configure(pool, tenant, bot, **config)
    bots_db.set_desired(pool, tenant, bot, "running")
    events.wait_state(bot, "pairing")
    events.wait_for(lambda: sim.bot_state(bot)["qr"], what="a QR")
    sim.scan(bot)
    events.wait_state(bot, "connected")
    return bot


def _messages(pool, tenant, bot, direction=None):
    sql = "SELECT direction, body, status, wa_message_id FROM messages WHERE bot_id = %s"
    params = [bot]
    if direction:
        sql += " AND direction = %s"
        params.append(direction)
    return pool.query(tenant, sql + " ORDER BY created_at, id", params)


def _sent_texts(sim, bot):
    return [m["text"] for m in sim.outbox(bot)]


AI_ON = {"enabled": True, "system_prompt": "You are the shop's assistant.", "temperature": 0.2, "history": 5}


@pytest.fixture
def env(pg, tmp_path, sim, ai_server, pool):
    events = EventLog()
    settings = _settings(pg, tmp_path, sim, ai_server)
    with supervision(settings, pool, events) as sup:
        yield sup, events, new_tenant(pool)


def test_a_customer_message_is_stored_answered_by_the_ai_delivered_and_its_receipts_recorded(env, sim, ai_server, pool):
    sup, events, tenant = env
    ai_server.default = reply("We open at nine.")
    bot = _connected_bot(sim, events, pool, tenant, ai=AI_ON)
    sim.inbound(bot, CUSTOMER, "When do you open?")
    events.wait_for(lambda: _sent_texts(sim, bot) == ["We open at nine."], what="the AI's answer on the network")
    call = ai_server.calls[0]
    assert call.body["model"] == "test-model"
    assert call.body["messages"][0] == {"role": "system", "content": "You are the shop's assistant."}
    assert call.body["messages"][-1] == {"role": "user", "content": "When do you open?"}
    events.wait_for(lambda: [r[2] for r in _messages(pool, tenant, bot, "out")] == ["read"], what="the read receipt")
    inbound = _messages(pool, tenant, bot, "in")
    assert [(r[1], r[2]) for r in inbound] == [("When do you open?", "answered")]
    assert sim.bot_state(bot)["pending_inbound"] == 0  # acked once stored
    types = [t for _, b, t, _ in events.events if b == bot]
    assert {"message.in", "message.out", "message.status"} <= set(types)


def test_a_duplicate_delivery_is_stored_once_and_answered_once(env, sim, ai_server, pool):
    sup, events, tenant = env
    bot = _connected_bot(sim, events, pool, tenant, rules=[{"match": "keyword", "pattern": "price", "reply": "10 EUR"}])
    sim.inbound(bot, CUSTOMER, "price?", message_id="DUP1")
    sim.inbound(bot, CUSTOMER, "price?", message_id="DUP1")  # the network delivers it again
    events.wait_for(lambda: _sent_texts(sim, bot) == ["10 EUR"], what="one answer")
    # A later message proves the pipeline went past both deliveries.
    sim.inbound(bot, CUSTOMER, "price again", message_id="DUP2")
    events.wait_for(lambda: len(_sent_texts(sim, bot)) == 2, what="the second answer")
    assert len(_messages(pool, tenant, bot, "in")) == 2


def test_several_messages_within_the_debounce_get_one_ai_answer(env, sim, ai_server, pool):
    sup, events, tenant = env
    ai_server.default = reply("Sure, here is everything.")
    bot = _connected_bot(sim, events, pool, tenant, ai=AI_ON)
    for text in ("hi", "I need help", "with my order"):
        sim.inbound(bot, CUSTOMER, text)
    events.wait_for(lambda: _sent_texts(sim, bot) == ["Sure, here is everything."], what="one answer")
    assert len(ai_server.calls) == 1
    assert ai_server.calls[0].body["messages"][-1]["content"] == "hi\nI need help\nwith my order"
    assert {r[2] for r in _messages(pool, tenant, bot, "in")} == {"answered"}


def test_rules_answer_before_the_ai_is_asked(env, sim, ai_server, pool):
    sup, events, tenant = env
    ai_server.default = reply("from the AI")
    rules = [{"match": "regex", "pattern": r"\bhours?\b", "reply": "9 to 5"}]
    bot = _connected_bot(sim, events, pool, tenant, rules=rules, ai=AI_ON)
    sim.inbound(bot, CUSTOMER, "What are your hours")
    events.wait_for(lambda: _sent_texts(sim, bot) == ["9 to 5"], what="the rule's answer")
    sim.inbound(bot, CUSTOMER, "something else")
    events.wait_for(lambda: _sent_texts(sim, bot) == ["9 to 5", "from the AI"], what="the AI's answer")
    assert len(ai_server.calls) == 1


@pytest.fixture
def env_no_debounce(pg, tmp_path, sim, ai_server, pool):
    events = EventLog()
    with supervision(_settings(pg, tmp_path, sim, ai_server, AI_DEBOUNCE="0"), pool, events) as sup:
        yield sup, events, new_tenant(pool)


def test_without_debounce_each_ai_answer_sees_the_conversation_so_far(env_no_debounce, sim, ai_server, pool):
    sup, events, tenant = env_no_debounce
    ai_server.default = reply("noted")
    bot = _connected_bot(sim, events, pool, tenant, ai=AI_ON)
    for n, text in enumerate(("first", "second", "third"), 1):
        sim.inbound(bot, CUSTOMER, text)
        events.wait_for(lambda n=n: len(_sent_texts(sim, bot)) == n, what=f"answer {n}")
    assert [m["content"] for m in ai_server.calls[2].body["messages"][1:]] == [
        "first", "noted", "second", "noted", "third"]


def test_without_debounce_a_message_a_rule_answered_is_not_in_the_next_ai_prompt(env_no_debounce, sim, ai_server, pool):
    sup, events, tenant = env_no_debounce
    ai_server.default = reply("from the AI")
    rules = [{"match": "regex", "pattern": r"\bhours?\b", "reply": "9 to 5"}]
    bot = _connected_bot(sim, events, pool, tenant, rules=rules, ai=AI_ON)
    for round_ in range(5):  # back to back, so the second is often stored while the first is answered
        sim.inbound(bot, CUSTOMER, f"What are your hours {round_}")
        sim.inbound(bot, CUSTOMER, f"something else {round_}")
        events.wait_for(lambda round_=round_: len(_sent_texts(sim, bot)) == 2 * (round_ + 1), what="both answers")
    for call in ai_server.calls:
        assert "hours" not in call.body["messages"][-1]["content"]
    assert len(ai_server.calls) == 5


def test_a_paused_conversation_is_not_answered_until_it_is_resumed(env, sim, ai_server, pool):
    sup, events, tenant = env
    bot = _connected_bot(sim, events, pool, tenant, rules=[{"match": "keyword", "pattern": "hello", "reply": "hi!"}])
    sim.inbound(bot, CUSTOMER, "hello")
    events.wait_for(lambda: _sent_texts(sim, bot) == ["hi!"], what="the first answer")
    pool.execute(tenant, "UPDATE contacts SET paused = true WHERE bot_id = %s AND jid = %s", (bot, CUSTOMER_JID))
    sim.inbound(bot, CUSTOMER, "hello, human?")
    events.wait_for(lambda: len(_messages(pool, tenant, bot, "in")) == 2 and
                    _messages(pool, tenant, bot, "in")[1][2] == "ignored", what="the paused message stored")
    pool.execute(tenant, "UPDATE contacts SET paused = false WHERE bot_id = %s AND jid = %s", (bot, CUSTOMER_JID))
    sim.inbound(bot, CUSTOMER, "hello again")
    events.wait_for(lambda: _sent_texts(sim, bot) == ["hi!", "hi!"], what="answers after resuming")


def test_while_the_ai_provider_fails_the_fallback_reply_is_sent_and_the_breaker_opens(env, sim, ai_server, pool):
    sup, events, tenant = env
    ai_server.default = status(500)
    bot = _connected_bot(sim, events, pool, tenant, ai={**AI_ON, "fallback_reply": "We will get back to you."})
    for i in range(3):
        sim.inbound(bot, CUSTOMER, f"question {i}")
        events.wait_for(lambda n=i: len(_sent_texts(sim, bot)) == n + 1, what=f"fallback {i}")
    assert set(_sent_texts(sim, bot)) == {"We will get back to you."}
    # Two failures opened the breaker: the third question never reached the provider.
    assert len(ai_server.calls) == 2
    assert sup.pipeline_deps.ai.breaker_state() == "open"
    assert any(t == "ai.error" for _, b, t, _ in events.events if b == bot)


def test_an_api_message_to_an_invalid_recipient_becomes_a_dead_letter(env, sim, ai_server, pool):
    sup, events, tenant = env
    bot = _connected_bot(sim, events, pool, tenant)
    outbox_id = conv.enqueue(pool, tenant, bot, "not-a-number", "hello?", None)
    events.wait_for(lambda: pool.query(tenant, "SELECT state FROM outbox WHERE id = %s", (outbox_id,))[0][0] == "dead",
                    what="the dead letter")
    row = pool.query(tenant, "SELECT last_error, attempts FROM outbox WHERE id = %s", (outbox_id,))[0]
    assert row[0] and row[1] == 1
    assert any(t == "outbox.dead" for _, b, t, _ in events.events if b == bot)


def test_the_send_rate_limit_spaces_messages_after_a_burst(pg, tmp_path, sim, ai_server, pool):
    events = EventLog()
    settings = _settings(pg, tmp_path, sim, ai_server, BOT_SEND_RATE="60", BOT_SEND_BURST="2")
    tenant = new_tenant(pool)
    with supervision(settings, pool, events):
        bot = _connected_bot(sim, events, pool, tenant)
        for i in range(5):
            conv.enqueue(pool, tenant, bot, CUSTOMER, f"m{i}", None)
        events.wait_for(lambda: len(sim.outbox(bot)) == 5, timeout=15, what="all five sent")
    times = [m["ts"] for m in sim.outbox(bot)]
    assert [m["text"] for m in sim.outbox(bot)] == [f"m{i}" for i in range(5)]
    # Two at once, then one a second (60 per minute).
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert times[4] - times[0] >= 2.8


def _queue_while_disconnected(sim, events, pool, tenant, texts):
    """A connected bot, API messages queued for it during an outage, then the link back; their ids."""
    bot = _connected_bot(sim, events, pool, tenant)
    mark = len(events.states(bot))
    sim.outage()
    events.wait_state(bot, "backing_off", after=mark)
    ids = [conv.enqueue(pool, tenant, bot, CUSTOMER, text, None) for text in texts]
    sim.recover()
    return bot, ids


def _wait_recorded_sent(events, pool, tenant, ids):
    # Recorded just after the network took them (in the background).
    events.wait_for(lambda: {s[0] for s in pool.query(tenant, "SELECT state FROM outbox WHERE id = ANY(%s::uuid[])",
                                                      (ids,))} == {"sent"}, what="the rows recorded as sent")


def test_a_backlog_of_several_batches_is_sent_once_each_with_one_message_out_event_each(env, sim, ai_server, pool):
    # Claims follow one another while the previous batch's 'sent' record is still being written: a
    # row the next claim sees again must not be sent or announced twice.
    sup, events, tenant = env
    texts = [f"backlog {i}" for i in range(130)]  # DELIVERY_BATCH is 50: three claims
    bot, ids = _queue_while_disconnected(sim, events, pool, tenant, texts)
    events.wait_for(lambda: len(sim.outbox(bot)) >= len(texts), timeout=20, what="the backlog on the network")
    _wait_recorded_sent(events, pool, tenant, ids)
    assert [m["text"] for m in sim.outbox(bot)] == texts
    announced = [p["outbox_id"] for _, b, t, p in events.events if b == bot and t == "message.out"]
    assert sorted(announced) == sorted(ids)


def test_messages_queued_while_disconnected_are_delivered_once_the_link_is_back(env, sim, ai_server, pool):
    sup, events, tenant = env
    bot, ids = _queue_while_disconnected(sim, events, pool, tenant, [f"queued {i}" for i in range(3)])
    events.wait_for(lambda: len(sim.outbox(bot)) == 3, timeout=15, what="the queued messages")
    assert [m["text"] for m in sim.outbox(bot)] == ["queued 0", "queued 1", "queued 2"]
    _wait_recorded_sent(events, pool, tenant, ids)


def test_inbound_media_is_downloaded_stored_and_linked_from_its_message(env, sim, ai_server, pool):
    from db import media as media_db

    sup, events, tenant = env
    bot = _connected_bot(sim, events, pool, tenant,
                         rules=[{"match": "keyword", "pattern": "receipt", "reply": "thanks"}])
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    sim.inbound(bot, CUSTOMER, "my receipt", media={"kind": "image", "mime": "image/png", "data": picture})
    events.wait_for(lambda: _sent_texts(sim, bot) == ["thanks"], what="the caption answered by the rule")
    row = events.wait_for(lambda: (r := pool.query(
        tenant, "SELECT kind, body, payload->>'media_id', media_key FROM messages"
                " WHERE bot_id = %s AND direction = 'in'",
        (bot,))) and r[0][2] and r[0], what="the media linked from the message")
    kind, caption, media_id, key = row
    assert (kind, caption) == ("image", "my receipt")
    record = media_db.get(pool, tenant, media_id)
    assert record["mime_type"] == "image/png" and record["size_bytes"] == len(picture)
    assert sup.pipeline_deps.media.get(record["backend"], record["object_key"]) == picture


def test_an_image_sent_through_the_api_reaches_the_customer_with_its_caption(env, sim, ai_server, pool):
    import media

    sup, events, tenant = env
    bot = _connected_bot(sim, events, pool, tenant)
    picture = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048
    media_id, _ = media.save(pool, sup.pipeline_deps.media, tenant, bot, picture, "image/png", "menu.png")
    conv.enqueue(pool, tenant, bot, CUSTOMER_JID, "today's menu", None, media_id=media_id, kind="image")
    sent = events.wait_for(lambda: sim.outbox(bot), what="the image on the network")[0]
    assert (sent["kind"], sent["mime"], sent["size"], sent["text"]) == (
        "image", "image/png", len(picture), "today's menu")
    assert sent["filename"] == "menu.png"


def test_one_inbound_messages_correlation_id_follows_it_through_store_ai_outbox_send_and_receipt(
    env, sim, ai_server, pool
):
    import logging

    from core.logs import JsonFormatter

    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(JsonFormatter().format(record)))

    handler = Collect(level=logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        sup, events, tenant = env
        ai_server.default = reply("Your order ships today.")
        bot = _connected_bot(sim, events, pool, tenant, ai=AI_ON)
        sim.inbound(bot, CUSTOMER, "Where is my order?")
        events.wait_for(lambda: any(t == "message.status" and p["status"] == "read"
                                    for _, b, t, p in events.events if b == bot), what="the read receipt")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    published = {t: p for _, b, t, p in events.events if b == bot and t.startswith("message.")}
    correlation = published["message.in"]["correlation_id"]
    assert correlation
    assert published["message.out"]["correlation_id"] == correlation
    assert published["message.status"]["correlation_id"] == correlation
    stored = pool.query(tenant, "SELECT correlation_id FROM outbox WHERE bot_id = %s", (bot,))
    assert stored == [(correlation,)]
    followed = [line["msg"] for line in lines if line.get("correlation_id") == correlation]
    for step in ("message stored", "AI answered", "message sent", "message status"):
        assert step in followed, (step, followed)
    assert all(line.get("bot_id") == bot for line in lines if line.get("correlation_id") == correlation)


# -- the owner answers from the phone ------------------------------------------------------------

EVERYTHING = [{"match": "regex", "pattern": ".", "reply": "got it"}]
OWNER_TEXT = "Hi, it's Maria from the shop: I'll look into it myself."


def _phone_settings(pg, tmp_path, sim, ai_server, takeover, **extra):
    return config.replace(_settings(pg, tmp_path, sim, ai_server, **extra), bot_phone_takeover=takeover)


def _bot_texts(sim, bot):
    """What the bot sent, without what the owner sent from the phone."""
    return [m["text"] for m in sim.outbox(bot) if not m.get("from_phone")]


def _inbound_states(pool, tenant, bot):
    return [tuple(r) for r in pool.query(
        tenant, "SELECT body, status, payload->>'ignored' FROM messages WHERE bot_id = %s AND direction = 'in'"
                " ORDER BY created_at, id", (bot,))]


def _phone_messages(pool, tenant, bot):
    return pool.query(tenant, "SELECT body, status, wa_message_id, payload FROM messages WHERE bot_id = %s"
                              " AND direction = 'out' AND payload->>'source' = 'phone' ORDER BY created_at, id", (bot,))


def _hold(pool, tenant, bot, jid=CUSTOMER_JID):
    """(phone_hold_until, seconds left) of the customer's conversation."""
    return tuple(pool.query(tenant, "SELECT phone_hold_until, extract(epoch FROM phone_hold_until - now())"
                                    " FROM contacts WHERE bot_id = %s AND jid = %s", (bot, jid))[0])


def _published(events, bot, event_type):
    return [p for _, b, t, p in events.events if b == bot and t == event_type]


def test_a_message_from_the_phone_is_stored_as_outgoing_and_the_bot_holds_off_that_customer(pg, tmp_path, sim,
                                                                                              ai_server, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(_phone_settings(pg, tmp_path, sim, ai_server, 1800.0), pool, events):
        bot = _connected_bot(sim, events, pool, tenant, rules=EVERYTHING)
        sim.inbound(bot, CUSTOMER, "my order is late")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["got it"], what="the bot's answer")
        phone_id = sim.phone_send(bot, CUSTOMER, OWNER_TEXT)
        stored = events.wait_for(lambda: _phone_messages(pool, tenant, bot), what="the owner's message stored")
        assert [(r[0], r[1], r[2], r[3]["source"]) for r in stored] == [(OWNER_TEXT, "sent", phone_id, "phone")]
        hold_until, left = _hold(pool, tenant, bot)
        assert 1790 < left <= 1800
        events.wait_for(lambda: sim.bot_state(bot)["pending_inbound"] == 0, what="the owner's message acked")

        sim.inbound(bot, CUSTOMER, "hello? still there?")
        events.wait_for(lambda: len(_inbound_states(pool, tenant, bot)) == 2 and
                        _inbound_states(pool, tenant, bot)[1][1] == "ignored", what="the held message stored")
        assert _inbound_states(pool, tenant, bot) == [
            ("my order is late", "answered", None), ("hello? still there?", "ignored", conv.OWNER_ON_PHONE)]
        # Another customer of the same bot is answered as before, after the held message was considered.
        sim.inbound(bot, "15550002222", "me too")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["got it", "got it"], what="the other customer's answer")
        assert len(sim.outbox(bot, to=CUSTOMER)) == 2  # the bot's first answer and the owner's message

    contact_id = str(pool.query(tenant, "SELECT id FROM contacts WHERE bot_id = %s AND jid = %s",
                                (bot, CUSTOMER_JID))[0][0])
    message_id = str(pool.query(tenant, "SELECT id FROM messages WHERE wa_message_id = %s", (phone_id,))[0][0])
    assert [p for p in _published(events, bot, "message.out") if p.get("source") == "phone"] == [{
        "message_id": message_id, "contact_id": contact_id, "to": CUSTOMER_JID, "text": OWNER_TEXT,
        "wa_message_id": phone_id, "source": "phone"}]
    assert _published(events, bot, "conversation.state") == [{
        "contact_id": contact_id, "jid": CUSTOMER_JID, "paused": False, "paused_by": None, "paused_at": None,
        "phone_hold_until": hold_until.isoformat()}]


def test_the_customers_waiting_messages_are_ignored_when_the_owner_answers_and_a_late_ai_answer_is_not_sent(
    pg, tmp_path, sim, ai_server, pool
):
    events = EventLog()
    tenant = new_tenant(pool)
    ai_server.script(reply("the AI's late answer", delay=1.5))
    ai_server.default = reply("the AI again")
    with supervision(_phone_settings(pg, tmp_path, sim, ai_server, 1.0), pool, events):
        bot = _connected_bot(sim, events, pool, tenant, ai=AI_ON)
        sim.inbound(bot, CUSTOMER, "can I change my order?")
        events.wait_for(lambda: ai_server.calls, what="the AI call in flight")
        sim.phone_send(bot, CUSTOMER, OWNER_TEXT)
        events.wait_for(lambda: _inbound_states(pool, tenant, bot) == [
            ("can I change my order?", "ignored", conv.ANSWERED_FROM_PHONE)], what="the waiting message ignored")
        events.wait_for(lambda: ai_server.calls[0].answered_at, what="the AI's late answer")
        # Once the hold is over the customer is answered again: by then the late answer had its turn.
        events.wait_for(lambda: _hold(pool, tenant, bot)[1] < 0, what="the hold to end")
        sim.inbound(bot, CUSTOMER, "thanks, one more thing")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["the AI again"], what="the answer after the hold")
    assert "the AI's late answer" not in [m["text"] for m in sim.outbox(bot)]
    assert pool.query(tenant, "SELECT count(*) FROM outbox WHERE bot_id = %s", (bot,))[0][0] == 1


def test_without_a_phone_takeover_the_owners_message_is_stored_and_the_bot_keeps_answering(pg, tmp_path, sim,
                                                                                           ai_server, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(_phone_settings(pg, tmp_path, sim, ai_server, 0.0), pool, events):
        bot = _connected_bot(sim, events, pool, tenant, rules=EVERYTHING)
        sim.phone_send(bot, CUSTOMER, OWNER_TEXT)
        events.wait_for(lambda: _phone_messages(pool, tenant, bot), what="the owner's message stored")
        assert _hold(pool, tenant, bot) == (None, None)
        sim.inbound(bot, CUSTOMER, "ok, and the bot?")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["got it"], what="the bot's answer")
    assert _inbound_states(pool, tenant, bot) == [("ok, and the bot?", "answered", None)]
    assert _published(events, bot, "conversation.state")[0]["phone_hold_until"] is None


def test_after_the_hold_ends_the_customer_is_answered_again(pg, tmp_path, sim, ai_server, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(_phone_settings(pg, tmp_path, sim, ai_server, 1.0), pool, events):
        bot = _connected_bot(sim, events, pool, tenant, rules=EVERYTHING)
        sim.phone_send(bot, CUSTOMER, OWNER_TEXT)
        events.wait_for(lambda: _phone_messages(pool, tenant, bot), what="the owner's message stored")
        sim.inbound(bot, CUSTOMER, "during the hold")
        events.wait_for(lambda: _inbound_states(pool, tenant, bot) == [
            ("during the hold", "ignored", conv.OWNER_ON_PHONE)], what="the held message ignored")
        events.wait_for(lambda: _hold(pool, tenant, bot)[1] < 0, what="the hold to end")
        sim.inbound(bot, CUSTOMER, "after the hold")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["got it"], what="the answer after the hold")
    assert _inbound_states(pool, tenant, bot)[1] == ("after the hold", "answered", None)


def test_the_echo_of_a_message_the_platform_sent_is_stored_once_and_holds_nothing(pg, tmp_path, sim, ai_server,
                                                                                   pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(_phone_settings(pg, tmp_path, sim, ai_server, 1800.0), pool, events):
        bot = _connected_bot(sim, events, pool, tenant, rules=EVERYTHING)
        sim.inbound(bot, CUSTOMER, "hello")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["got it"], what="the bot's answer")
        sent_id = sim.outbox(bot)[0]["id"]
        sim.phone_send(bot, CUSTOMER, "got it", message_id=sent_id)  # the network echoes our own send
        events.wait_for(lambda: sim.bot_state(bot)["pending_inbound"] == 0, what="the echo acked (so stored)")
        sim.inbound(bot, CUSTOMER, "hello again")
        events.wait_for(lambda: _bot_texts(sim, bot) == ["got it", "got it"], what="the next answer")
    rows = pool.query(tenant, "SELECT direction, payload->>'source' FROM messages WHERE wa_message_id = %s", (sent_id,))
    assert rows == [("out", "rule")]
    assert _hold(pool, tenant, bot) == (None, None)
    assert _published(events, bot, "conversation.state") == []
    assert all(p.get("source") != "phone" for p in _published(events, bot, "message.out"))


def test_a_send_the_network_refuses_becomes_a_dead_letter(env, sim, ai_server, pool):
    sup, events, tenant = env
    bot = _connected_bot(sim, events, pool, tenant, rules=EVERYTHING)
    sim.refuse_sends(bot, times=1, error="recipient refused by the network")
    sim.inbound(bot, CUSTOMER, "hello")
    events.wait_for(lambda: pool.query(tenant, "SELECT state FROM outbox WHERE bot_id = %s", (bot,)) == [("dead",)],
                    what="the dead letter")
    last_error, attempts = pool.query(tenant, "SELECT last_error, attempts FROM outbox WHERE bot_id = %s", (bot,))[0]
    assert "recipient refused by the network" in last_error and attempts == 1
    assert [r[2] for r in _messages(pool, tenant, bot, "out")] == ["failed"]
    assert _published(events, bot, "outbox.dead")[0]["error"] == "recipient refused by the network"
    assert sim.outbox(bot) == []


def test_after_a_restart_waiting_messages_of_held_or_paused_conversations_are_ignored_not_answered(env, sim,
                                                                                                   ai_server, pool):
    # A crash between a message's store and its being ignored leaves it 'stored': the next start
    # must not answer it when its conversation is held or paused.
    import time

    from transports.events import MessageReceived

    sup, events, tenant = env
    bot = new_bot(pool, tenant, running=False)
    _configure(pool, tenant, bot, rules=EVERYTHING)
    held, paused, free = (f"1555000{n}@s.whatsapp.net" for n in ("3333", "4444", "5555"))
    ps.store_many(pool, tenant, [(bot, MessageReceived(f"W{n}", jid, jid, time.time(), text=f"waiting {n}"), None)
                                 for n, jid in enumerate((held, paused, free))])
    pool.execute(tenant, "UPDATE contacts SET phone_hold_until = now() + interval '1 hour' WHERE jid = %s", (held,))
    pool.execute(tenant, "UPDATE contacts SET paused = true WHERE jid = %s", (paused,))
    bots_db.set_desired(pool, tenant, bot, "running")
    events.wait_state(bot, "pairing")
    events.wait_for(lambda: sim.bot_state(bot)["qr"], what="a QR")
    sim.scan(bot)
    events.wait_for(lambda: _bot_texts(sim, bot) == ["got it"], what="the free conversation answered")
    assert [m["to"] for m in sim.outbox(bot)] == [free]
    assert _inbound_states(pool, tenant, bot) == [("waiting 0", "ignored", conv.OWNER_ON_PHONE),
                                                  ("waiting 1", "ignored", "conversation paused"),
                                                  ("waiting 2", "answered", None)]

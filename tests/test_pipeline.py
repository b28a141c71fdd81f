"""The bot's work end to end over the simulator's real socket, with a real OpenAI-compatible server on
127.0.0.1 reached through the real `openai` client: store, answer (rules, AI, fallback), deliver,
receipts, debounce, duplicates, human takeover, rate limit, dead letters."""

import json

import pytest

from db import bots as bots_db
from db import conversations as conv
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
        events.wait_for(lambda: len(_sent_texts(sim, bot)) == n, what=f"answer {n}")
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
        events.wait_for(lambda: len(_sent_texts(sim, bot)) == 2 * (round_ + 1), what="both answers")
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
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
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
    bot = _connected_bot(sim, events, pool, tenant, rules=[{"match": "keyword", "pattern": "receipt", "reply": "thanks"}])
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    sim.inbound(bot, CUSTOMER, "my receipt", media={"kind": "image", "mime": "image/png", "data": picture})
    events.wait_for(lambda: _sent_texts(sim, bot) == ["thanks"], what="the caption answered by the rule")
    row = events.wait_for(lambda: (r := pool.query(
        tenant, "SELECT kind, body, payload->>'media_id', media_key FROM messages WHERE bot_id = %s AND direction = 'in'",
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
    assert (sent["kind"], sent["mime"], sent["size"], sent["text"]) == ("image", "image/png", len(picture), "today's menu")
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

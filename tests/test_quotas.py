"""Tenant quotas (issue 16): limits, their edges (exactly at the limit allowed, one past refused), the
race between two processes, and the bot's answers past the daily quota held, never lost."""

import gevent
import pytest

from db import bots, conversations, quotas
from db import pipeline_store as ps
from sansio import quotas as q


def test_a_limit_of_zero_or_none_means_no_limit_and_a_bad_one_says_why():
    assert q.parse_limit("bots", "0") is None
    assert q.parse_limit("bots", "None") is None
    assert q.parse_limit("messages_per_day", "1_000") == 1000
    with pytest.raises(ValueError, match="not a whole number"):
        q.parse_limit("bots", "-3")
    with pytest.raises(ValueError, match="largest limit"):
        q.parse_limit("bots", str(2**31))


def test_the_refusal_comes_one_past_the_limit_not_at_it():
    assert q.refusal(q.BOTS, 3, 2) is None
    assert "quota of 3 bots is used up (3 in use)" in q.refusal(q.BOTS, 3, 3)
    assert q.refusal(q.MEDIA_BYTES, 100, 60, 40) is None
    assert "quota of 100 bytes (61 stored)" in q.refusal(q.MEDIA_BYTES, 100, 61, 40)


def test_a_bot_up_to_the_quota_is_created_and_the_next_one_refused_over_the_api(alice):
    quotas.set_limits(_pool(alice), alice.tenant_id, {q.BOTS: 2})
    assert alice.post("/bots", json={"name": "one"}).status_code == 201
    assert alice.post("/bots", json={"name": "two"}).status_code == 201
    refused = alice.post("/bots", json={"name": "three"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "quota of 2 bots is used up (2 in use)" in refused.json()["error"]["message"]
    assert len(alice.get("/bots").json()["bots"]) == 2


def test_two_bot_creations_at_one_below_the_quota_give_one_bot(pool, make_tenant):
    tenant, _key = make_tenant()
    quotas.set_limits(pool, tenant, {q.BOTS: 1})

    def create(name):
        try:
            return bots.create(pool, tenant, name, {})
        except quotas.QuotaExceeded as exc:
            return exc

    both = gevent.joinall([gevent.spawn(create, "a"), gevent.spawn(create, "b")], raise_error=True)
    results = [g.get() for g in both]
    assert sorted(type(r).__name__ for r in results) == ["QuotaExceeded", "dict"]
    assert len(bots.list_all(pool, tenant)) == 1


def test_api_sends_up_to_the_daily_quota_are_queued_and_the_next_gets_429_with_nothing_stored(alice):
    bot = alice.post("/bots", json={"name": "desk"}).json()["id"]
    quotas.set_limits(_pool(alice), alice.tenant_id, {q.MESSAGES_PER_DAY: 2})
    for n in range(2):
        assert alice.post(f"/bots/{bot}/messages", json={"to": "4915123456789", "text": f"m{n}"}).status_code == 202
    refused = alice.post(f"/bots/{bot}/messages", json={"to": "4915123456789", "text": "m2"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(alice.get("/outbox", params={"state": "pending"}).json()["outbox"]) == 2
    _limits, usage = quotas.read(_pool(alice), alice.tenant_id)
    assert usage.messages_today == 2


def test_answers_past_the_daily_quota_are_held_and_a_claim_releases_them_once_the_quota_is_raised(pool, make_tenant):
    tenant, _key = make_tenant()
    bot = bots.create(pool, tenant, "desk", {})["id"]
    quotas.set_limits(pool, tenant, {q.MESSAGES_PER_DAY: 1})
    conversations.enqueue(pool, tenant, bot, "4915123456789@s.whatsapp.net", "first", None)  # uses the day's one
    contact = pool.query(tenant, "SELECT id FROM contacts WHERE bot_id = %s", (bot,))[0][0]
    mid = pool.query(
        tenant,
        "INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, body) VALUES (%s, %s, 'in', 'w1', 'hi')"
        " RETURNING id", (bot, contact))[0][0]
    (oid, row), = ps.answer_many(pool, tenant, [(bot, str(contact), [str(mid)], "hello", "rule", None, True)])
    assert row is None  # not sent at once
    assert pool.query(tenant, "SELECT state, last_error FROM outbox WHERE id = %s", (oid,))[0] == ("held",
                                                                                                  ps.HELD_REASON)
    claimed = ps.claim_many(pool, tenant, [(bot, 10, ())])[0]
    assert [r.body for r in claimed] == ["first"]  # the held answer waits; the API message goes
    assert claimed.held_for is not None and 0 < claimed.held_for <= 86400
    quotas.set_limits(pool, tenant, {q.MESSAGES_PER_DAY: 5})
    released = ps.claim_many(pool, tenant, [(bot, 10, (claimed[0].id,))])[0]
    assert [r.id for r in released] == [oid]
    assert released.held_for is None
    assert quotas.read(pool, tenant)[1].messages_today == 2


def test_the_tenant_shows_its_quotas_and_usage_with_the_answers_held(alice):
    fresh = alice.get("/tenant").json()
    assert fresh["quotas"] == {"bots": None, "messages_per_day": None, "media_bytes": None}
    assert fresh["usage"] == {"bots": 0, "messages_today": 0, "media_bytes": 0, "held": 0}
    assert fresh["id"] == alice.tenant_id and fresh["name"] and fresh["created_at"]
    pool, tenant = _pool(alice), alice.tenant_id
    bot = alice.post("/bots", json={"name": "desk"}).json()["id"]
    quotas.set_limits(pool, tenant, {q.BOTS: 3, q.MESSAGES_PER_DAY: 1, q.MEDIA_BYTES: 1000})
    assert alice.post(f"/bots/{bot}/messages", json={"to": "4915123456789", "text": "m"}).status_code == 202
    assert alice.post("/media", data=b"x" * 10, headers={"Content-Type": "image/png"}).status_code == 201
    _answer(pool, tenant, bot)  # past the day's one message: held
    shown = alice.get("/tenant").json()
    assert shown["quotas"] == {"bots": 3, "messages_per_day": 1, "media_bytes": 1000}
    assert shown["usage"] == {"bots": 1, "messages_today": 1, "media_bytes": 10, "held": 1}


def test_held_answers_are_listed_by_the_outbox_state_filter_and_counted_by_the_outbox_metrics(alice):
    from db.conversations import outbox_stats

    pool, tenant = _pool(alice), alice.tenant_id
    bot = alice.post("/bots", json={"name": "desk"}).json()["id"]
    quotas.set_limits(pool, tenant, {q.MESSAGES_PER_DAY: 1})
    assert alice.post(f"/bots/{bot}/messages", json={"to": "4915123456789", "text": "m"}).status_code == 202
    oid, _row = _answer(pool, tenant, bot)
    listed = alice.get("/outbox", params={"state": "held"})
    assert listed.status_code == 200
    assert [(r["id"], r["state"], r["last_error"]) for r in listed.json()["outbox"]] == [(oid, "held", ps.HELD_REASON)]
    assert [r["text"] for r in alice.get("/outbox", params={"state": "pending"}).json()["outbox"]] == ["m"]
    assert alice.get("/outbox", params={"state": "parked"}).status_code == 400
    assert outbox_stats(pool)["held"][0] >= 1  # every tenant's, as the metrics read it


def _answer(pool, tenant, bot):
    """A bot's answer to a customer's message, as the pipeline writes it: (outbox id, row or None if held)."""
    contact = pool.query(tenant, "SELECT id FROM contacts WHERE bot_id = %s LIMIT 1", (bot,))[0][0]
    mid = pool.query(
        tenant,
        "INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, body) VALUES (%s, %s, 'in', %s, 'hi')"
        " RETURNING id", (bot, contact, f"w{contact}"))[0][0]
    return ps.answer_many(pool, tenant, [(bot, str(contact), [str(mid)], "hello", "rule", None, True)])[0]


def _pool(client):
    return client.pool  # the pool the web fixture's app shares


@pytest.fixture
def alice(web, make_tenant, pool):
    from tests.conftest import ApiClient

    tenant_id, key = make_tenant()
    client = ApiClient(web.url, key, tenant_id)
    client.__dict__["pool"] = pool
    return client

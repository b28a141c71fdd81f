"""Every committed fact a webhook reports becomes one delivery per matching endpoint, in the fact's
own transaction, through the code paths that write the facts."""

import pytest

from db import bots as bots_db
from db import conversations as conv
from db import pipeline_store
from tests.webhook_harness import clear_webhooks, inbound, new_bot, new_endpoint, new_tenant

CUSTOMER = "4915100000002@s.whatsapp.net"


@pytest.fixture(autouse=True)
def _no_other_endpoints(pg):
    clear_webhooks(pg.owner_url)
    yield
    clear_webhooks(pg.owner_url)


def _deliveries(pool, tenant, endpoint):
    return pool.query(tenant, "SELECT type, data, event_key, state FROM webhook_deliveries WHERE endpoint_id = %s"
                      " ORDER BY created_at, id", (endpoint,))


def _sent(pool, tenant, bot, text="your order is ready"):
    outbox_id = conv.enqueue(pool, tenant, bot, CUSTOMER, text, "cid-1")
    pipeline_store.mark_sent_many(pool, tenant, [(outbox_id, "NET-1")])
    return outbox_id


def test_an_api_message_on_the_network_is_one_message_out(pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/in")
    outbox_id = conv.enqueue(pool, tenant, bot, CUSTOMER, "your order is ready", "cid-1")
    assert _deliveries(pool, tenant, endpoint) == []  # queued is not yet a fact worth a webhook
    pipeline_store.mark_sent_many(pool, tenant, [(outbox_id, "NET-1")])
    [(kind, data, _, state)] = _deliveries(pool, tenant, endpoint)
    assert kind == "message.out" and state == "pending"
    assert data["outbox_id"] == outbox_id and data["to"] == CUSTOMER and data["text"] == "your order is ready"
    assert data["wa_message_id"] == "NET-1" and data["source"] == "api" and data["correlation_id"] == "cid-1"


def test_receipts_are_one_message_status_each(pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/in", types=("message.status",))
    _sent(pool, tenant, bot)
    conv.record_receipt(pool, tenant, bot, ["NET-1"], "delivered")
    conv.record_receipt(pool, tenant, bot, ["NET-1"], "delivered")  # a repeat changes nothing
    conv.record_receipt(pool, tenant, bot, ["NET-1"], "read")
    rows = _deliveries(pool, tenant, endpoint)
    assert [(r[0], r[1]["status"]) for r in rows] == [("message.status", "delivered"), ("message.status", "read")]


def test_a_dead_letter_is_one_outbox_dead(pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/in", types=("outbox.*",))
    outbox_id = conv.enqueue(pool, tenant, bot, CUSTOMER, "hello", None)
    conv.mark_failed(pool, tenant, outbox_id, "the number is not on WhatsApp", None)
    [(kind, data, _, _)] = _deliveries(pool, tenant, endpoint)
    assert kind == "outbox.dead" and data["outbox_id"] == outbox_id
    assert data["error"] == "the number is not on WhatsApp"


def test_a_bot_state_change_is_one_bot_state_and_a_rewrite_of_the_same_state_none(pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/in", types=("bot.state",))
    pool.execute(tenant, "UPDATE bots SET lease_owner = 'me' WHERE id = %s", (bot,))
    bots_db.write_state(pool, tenant, bot, "me", {"state": "connecting"})
    bots_db.write_state(pool, tenant, bot, "me", {"state": "connecting", "attempt": 1})
    bots_db.write_state(pool, tenant, bot, "me", {"state": "connected"})
    rows = _deliveries(pool, tenant, endpoint)
    assert [(r[1]["previous_state"], r[1]["state"]) for r in rows] == [("stopped", "connecting"),
                                                                       ("connecting", "connected")]


def test_an_endpoint_gets_only_the_types_and_bots_it_asked_for(pool):
    tenant = new_tenant(pool)
    bot, other_bot = new_bot(pool, tenant), new_bot(pool, tenant)
    messages_only, _ = new_endpoint(pool, tenant, "https://hooks.example/a", types=("message.*",))
    states_only, _ = new_endpoint(pool, tenant, "https://hooks.example/b", types=("bot.state",))
    other_bots, _ = new_endpoint(pool, tenant, "https://hooks.example/c", bots=[other_bot])
    everything, _ = new_endpoint(pool, tenant, "https://hooks.example/d")
    inbound(pool, tenant, bot)
    assert [r[0] for r in _deliveries(pool, tenant, messages_only)] == ["message.in"]
    assert _deliveries(pool, tenant, states_only) == []
    assert _deliveries(pool, tenant, other_bots) == []
    assert [r[0] for r in _deliveries(pool, tenant, everything)] == ["message.in"]


def test_another_tenants_endpoint_gets_nothing(pool):
    tenant, other = new_tenant(pool), new_tenant(pool)
    bot = new_bot(pool, tenant)
    theirs, _ = new_endpoint(pool, other, "https://hooks.example/theirs")
    inbound(pool, tenant, bot)
    assert _deliveries(pool, other, theirs) == []


def test_a_fact_that_rolls_back_leaves_no_delivery(pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/in")

    def work(unit):
        contact = unit.scalar("INSERT INTO contacts (bot_id, jid) VALUES (%s, %s) RETURNING id", (bot, CUSTOMER))
        unit.execute("INSERT INTO messages (bot_id, contact_id, direction, wa_message_id) VALUES (%s, %s, 'in', 'x')",
                     (bot, contact))
        assert unit.scalar("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = %s", (endpoint,)) == 1
        raise RuntimeError("the fact's transaction fails")  # ...written with the fact...

    with pytest.raises(RuntimeError):
        pool.run(tenant, work, repeatable=False)
    assert _deliveries(pool, tenant, endpoint) == []  # ...and gone with it


def test_a_fact_written_again_after_a_crash_lost_it_is_delivered_under_the_same_webhook_id(pool):
    # A send marked sent or a receipt commits without waiting for the flush: a crash of the server can
    # lose it after its delivery went out; the fact is then written again, and its delivery must carry
    # the id the receiver already saw, so the receiver can tell it is the same event.
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/in")
    other_endpoint, _ = new_endpoint(pool, tenant, "https://hooks.example/other")
    contact = pool.run(tenant, lambda unit: unit.scalar(
        "INSERT INTO contacts (bot_id, jid) VALUES (%s, %s) RETURNING id", (bot, CUSTOMER)), repeatable=False)
    message = "5b0c3a52-8f4e-4d7c-9a61-0b7e2f1d9c11"

    def write(unit):
        unit.execute("INSERT INTO messages (id, bot_id, contact_id, direction, wa_message_id)"
                     " VALUES (%s, %s, %s, 'in', 'x')", (message, bot, contact))
        return unit.all("SELECT endpoint_id::text, id::text FROM webhook_deliveries WHERE event_key = %s"
                        " ORDER BY endpoint_id", ("message.in:" + message,))

    seen = []

    def lost(unit):
        seen.extend(write(unit))
        raise RuntimeError("the server crashed before the commit reached the disk")

    with pytest.raises(RuntimeError):
        pool.run(tenant, lost, repeatable=False)
    again = pool.run(tenant, write, repeatable=False)
    assert [tuple(r) for r in again] == [tuple(r) for r in seen] and len(again) == 2
    assert len({r[1] for r in again}) == 2  # each endpoint its own id
    assert {r[0] for r in again} == {endpoint, other_endpoint}


def test_a_fact_that_makes_a_delivery_commits_durably_even_when_its_transaction_asked_not_to(pool):
    # A receipt commits without waiting for the flush; once it carries a delivery a worker may send at
    # once, so the commit must not be one a crash can take back.
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    contact = pool.run(tenant, lambda unit: unit.scalar(
        "INSERT INTO contacts (bot_id, jid) VALUES (%s, %s) RETURNING id", (bot, CUSTOMER)), repeatable=False)

    def write(unit):
        unit.execute("SELECT set_config('synchronous_commit', 'off', true)")
        unit.execute("INSERT INTO messages (bot_id, contact_id, direction, wa_message_id) VALUES (%s, %s, 'in', %s)",
                     (bot, contact, f"x{unit.scalar('SELECT random()')}"))
        return unit.scalar("SHOW synchronous_commit")

    assert pool.run(tenant, write, repeatable=False) == "off"  # no endpoint, no delivery: as asked
    new_endpoint(pool, tenant, "https://hooks.example/in")
    assert pool.run(tenant, write, repeatable=False) == "on"


def test_a_tenant_without_endpoints_writes_facts_without_deliveries(pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    inbound(pool, tenant, bot)
    assert pool.query(tenant, "SELECT count(*) FROM webhook_deliveries")[0][0] == 0

"""Webhook deliveries end to end: facts committed in PostgreSQL, the dispatcher, real HTTP receivers
on 127.0.0.1."""

import pytest
from standardwebhooks import Webhook

from tests.waiting import wait_until
from tests.webhook_harness import (
    clear_webhooks,
    deliveries,
    dispatcher,
    inbound,
    new_bot,
    new_endpoint,
    new_tenant,
)
from tests.webhook_receiver import Receiver


@pytest.fixture(autouse=True)
def _no_other_endpoints(pg):
    clear_webhooks(pg.owner_url)
    yield
    clear_webhooks(pg.owner_url)


def test_a_stored_inbound_message_reaches_the_receiver_signed_per_standard_webhooks(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, secret = new_endpoint(pool, tenant, receiver.url())
    with dispatcher(settings, pool):
        message_id = inbound(pool, tenant, bot, "I would like a pizza")
        wait_until(lambda: receiver.done, 10, "the delivery")
        wait_until(lambda: deliveries(pool, tenant, endpoint)[0]["state"] == "delivered", 10, "the outcome recorded")
    request = receiver.requests[0]
    body = Webhook(secret).verify(request.body, request.headers)
    assert body["type"] == "message.in"
    assert body["data"]["message_id"] == message_id
    assert body["data"]["text"] == "I would like a pizza"
    assert body["data"]["from"] == "4915100000001@s.whatsapp.net"
    assert set(body) == {"type", "timestamp", "data"}
    [row] = deliveries(pool, tenant, endpoint)
    assert request.webhook_id == row["id"] and row["state"] == "delivered" and row["attempts"] == 1
    receiver.stop()

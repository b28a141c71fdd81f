"""Webhook deliveries end to end: facts committed in PostgreSQL, the dispatcher, real HTTP receivers
on 127.0.0.1."""

import itertools

import gevent
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from sansio import webhooks
from tests.waiting import wait_until
from tests.webhook_harness import (
    attempts,
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


def test_both_secrets_sign_while_a_rotated_secret_overlaps(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, old = new_endpoint(pool, tenant, receiver.url())
    new = webhooks.new_secret()
    pool.query(tenant, "UPDATE webhook_endpoints SET previous_secret = secret, secret = %s,"
               " previous_secret_until = now() + interval '24 hours' WHERE id = %s", (new, endpoint))
    with dispatcher(settings, pool):
        inbound(pool, tenant, bot)
        wait_until(lambda: receiver.done, 10, "the delivery")
    request = receiver.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(request.body, request.headers)["type"] == "message.in"
    assert Webhook(old).verify(request.body, request.headers)["type"] == "message.in"
    receiver.stop()


def test_an_expired_overlap_signs_with_the_new_secret_only(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, old = new_endpoint(pool, tenant, receiver.url())
    new = webhooks.new_secret()
    pool.query(tenant, "UPDATE webhook_endpoints SET previous_secret = secret, secret = %s,"
               " previous_secret_until = now() - interval '1 second' WHERE id = %s", (new, endpoint))
    with dispatcher(settings, pool):
        inbound(pool, tenant, bot)
        wait_until(lambda: receiver.done, 10, "the delivery")
    request = receiver.requests[0]
    Webhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, request.headers)
    receiver.stop()


def _advance_to_next_attempt(pool, tenant, endpoint, timers, attempts_done):
    """Wait until ``attempts_done`` attempts are recorded, then move the fake clock past the next one."""
    row = wait_until(lambda: (d := deliveries(pool, tenant, endpoint)[0])["attempts"] == attempts_done and
                     d["state"] in ("pending", "delivered", "failed") and d, 10, f"attempt {attempts_done} recorded")
    if row["state"] != "pending":
        return row
    timers.advance(max(0.0, row["next_attempt_at"].timestamp() - timers.now()) + 1.0)
    return row


def test_a_receiver_down_for_a_day_gets_the_delivery_on_the_schedule_then_once_when_back(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    receiver.stop()  # down: connections refused
    with dispatcher(settings, pool, fake_clock=True) as (_, _, timers):
        start = timers.now()
        inbound(pool, tenant, bot)
        timers.advance(1.0)  # the first poll: attempt 1, at once
        done = 1
        while True:
            row = _advance_to_next_attempt(pool, tenant, endpoint, timers, done)
            if row["state"] != "pending":
                break
            done += 1
            if timers.now() - start >= 86400 and receiver.port and not receiver.requests:
                receiver.start()  # back after a day, on the same port
        [delivery] = deliveries(pool, tenant, endpoint)
        tried = attempts(pool, tenant, delivery["id"])
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in tried] == [None] * (len(tried) - 1) + [200]
    assert all(a["error"] == "connection refused" for a in tried[:-1])
    gaps = [(b["attempted_at"] - a["attempted_at"]).total_seconds() for a, b in itertools.pairwise(tried)]
    for gap, planned in zip(gaps, webhooks.SCHEDULE):
        assert planned * 0.9 <= gap <= planned * 1.1 + 1.5  # the jitter, and the one-second poll
    assert len(tried) == 8  # 27.6 h of schedule: the eighth attempt is the first after the day
    assert len(receiver.requests) == 1
    receiver.stop()


def test_retry_after_of_a_429_puts_the_next_attempt_no_sooner(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    answers = iter([(429, [("Retry-After", "120")], b"slow down"), (200, [], b"ok")])
    receiver = Receiver(lambda request: next(answers))
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    with dispatcher(settings, pool, fake_clock=True) as (_, _, timers):
        inbound(pool, tenant, bot)
        timers.advance(1.0)
        row = _advance_to_next_attempt(pool, tenant, endpoint, timers, 1)
        _advance_to_next_attempt(pool, tenant, endpoint, timers, 2)
        first, second = attempts(pool, tenant, row["id"])
    assert first["status_code"] == 429 and first["response_head"] == "slow down"
    assert (second["attempted_at"] - first["attempted_at"]).total_seconds() >= 120
    assert second["status_code"] == 200
    receiver.stop()


def test_a_410_disables_the_endpoint_and_announces_it(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver(lambda request: (410, [], b"gone"))
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    with dispatcher(settings, pool) as (_, published, _):
        inbound(pool, tenant, bot)
        wait_until(lambda: deliveries(pool, tenant, endpoint)[0]["state"] == "failed", 10, "the delivery failed")
        wait_until(lambda: published.events, 5, "the webhook.disabled notice")
    enabled, reason = pool.query(tenant, "SELECT enabled, disabled_reason FROM webhook_endpoints WHERE id = %s",
                                 (endpoint,))[0]
    assert not enabled and "410" in reason
    assert published.events == [(tenant, None, "webhook.disabled", {"endpoint_id": endpoint, "reason": reason})]
    inbound(pool, tenant, bot)  # a disabled endpoint gets no new deliveries
    assert len(deliveries(pool, tenant, endpoint)) == 1
    receiver.stop()


def test_a_redirect_is_not_followed(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    elsewhere = Receiver()
    receiver = Receiver(lambda request: (302, [("Location", elsewhere.url())], b""))
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    with dispatcher(settings, pool):
        inbound(pool, tenant, bot)
        row = wait_until(lambda: (d := deliveries(pool, tenant, endpoint)[0])["attempts"] == 1 and d, 10, "attempt 1")
    assert row["state"] == "pending" and row["last_status"] == 302
    assert row["last_error"] == "redirect (302) not followed"
    assert elsewhere.requests == []
    receiver.stop()
    elsewhere.stop()


def test_a_hanging_receiver_holds_its_own_slots_and_never_delays_another_endpoint(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    stuck, healthy = Receiver(), Receiver()
    stuck.hang = True
    new_endpoint(pool, tenant, stuck.url())
    other, _ = new_endpoint(pool, tenant, healthy.url())
    with dispatcher(settings, pool, webhook_timeout=30):
        for i in range(20):
            inbound(pool, tenant, bot, f"message {i}")
        wait_until(lambda: len(healthy.done) == 20, 10, "the healthy endpoint's 20 deliveries")
        assert stuck.in_flight == 4 and stuck.max_in_flight == 4  # WEBHOOK_MAX_IN_FLIGHT
        wait_until(lambda: all(d["state"] == "delivered" for d in deliveries(pool, tenant, other)), 10,
                   "the healthy endpoint's outcomes recorded")
        stuck.release()
        wait_until(lambda: len(stuck.done) == 20, 10, "the stuck endpoint's deliveries once released")
    assert stuck.max_in_flight == 4
    stuck.stop()
    healthy.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/hook", "http://10.0.0.1/hook",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]:{port}/hook",
                                 "http://[::ffff:127.0.0.1]:{port}/hook", "http://localhost:{port}/hook"])
def test_a_private_address_is_refused_at_delivery_when_not_allowed(settings, pool, url):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, _ = new_endpoint(pool, tenant, url.format(port=receiver.port))
    with dispatcher(settings, pool, webhooks_allow_private=False):
        inbound(pool, tenant, bot)
        row = wait_until(lambda: (d := deliveries(pool, tenant, endpoint)[0])["attempts"] == 1 and d, 10, "attempt 1")
    assert row["state"] == "pending" and row["last_status"] is None
    assert row["last_error"].startswith("address refused: ")
    assert receiver.requests == []
    receiver.stop()


def test_two_dispatchers_send_every_delivery_and_never_one_at_the_same_time(settings, pool, make_pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver(lambda request: (gevent.sleep(0.005), (200, [], b"ok"))[1])
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    other_pool = make_pool(size=4)
    with dispatcher(settings, pool, owner="one"), dispatcher(settings, other_pool, owner="two"):
        for i in range(200):
            inbound(pool, tenant, bot, f"message {i}")
        wait_until(lambda: all(d["state"] == "delivered" for d in deliveries(pool, tenant, endpoint)), 30,
                   "every delivery delivered")
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == 200
    assert receiver.concurrent_ids == []
    assert receiver.max_in_flight <= 4
    receiver.stop()


def test_an_endpoint_failing_every_attempt_for_five_days_is_disabled_and_announced(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver(lambda request: (500, [], b"broken"))
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    pool.query(tenant, "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days' WHERE id = %s",
               (endpoint,))
    with dispatcher(settings, pool) as (_, published, _):
        inbound(pool, tenant, bot)
        wait_until(lambda: published.events, 10, "the webhook.disabled notice")
    enabled, reason, disabled_at = pool.query(
        tenant, "SELECT enabled, disabled_reason, disabled_at FROM webhook_endpoints WHERE id = %s", (endpoint,))[0]
    assert not enabled and disabled_at is not None
    assert reason == "every attempt failed for 5 days (last: HTTP 500)"
    [(_, _, kind, payload)] = published.events
    assert kind == "webhook.disabled" and payload == {"endpoint_id": endpoint, "reason": reason}
    receiver.stop()


def test_a_success_ends_an_endpoints_failing_spell(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    pool.query(tenant, "UPDATE webhook_endpoints SET failing_since = now() - interval '1 day' WHERE id = %s",
               (endpoint,))
    with dispatcher(settings, pool):
        inbound(pool, tenant, bot)
        wait_until(lambda: pool.query(tenant, "SELECT failing_since IS NULL FROM webhook_endpoints WHERE id = %s",
                                      (endpoint,))[0][0], 10, "the failing spell ended")
    receiver.stop()


def test_metrics_count_outcomes_and_show_each_endpoints_queue(settings, pool):
    from prometheus_client import CollectorRegistry, generate_latest

    from actors.webhooks import WebhookMetrics

    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver, down = Receiver(), Receiver()
    healthy, _ = new_endpoint(pool, tenant, receiver.url())
    waiting, _ = new_endpoint(pool, tenant, down.url())
    down.stop()
    registry = CollectorRegistry()
    with dispatcher(settings, pool, metrics=WebhookMetrics(registry, pool)):
        inbound(pool, tenant, bot)
        # Both outcomes recorded (each is counted before it is recorded).
        wait_until(lambda: all(deliveries(pool, tenant, e)[0]["attempts"] == 1 for e in (healthy, waiting)), 10,
                   "both tried")
        text = generate_latest(registry).decode()
    assert 'webhook_deliveries_total{outcome="delivered"} 1.0' in text
    assert 'webhook_deliveries_total{outcome="retry"} 1.0' in text
    assert f'webhook_queue_deliveries{{endpoint="{waiting}",state="pending"}} 1.0' in text
    assert "webhook_delivery_latency_seconds_count 1.0" in text
    assert "webhook_endpoints_disabled 0.0" in text
    receiver.stop()


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt_that_says_so(settings, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    receiver.hang = True
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    with dispatcher(settings, pool, webhook_timeout=0.5):
        inbound(pool, tenant, bot)
        row = wait_until(lambda: (d := deliveries(pool, tenant, endpoint)[0])["attempts"] == 1 and d, 10, "attempt 1")
    receiver.release()
    [tried] = attempts(pool, tenant, row["id"])
    assert row["state"] == "pending" and tried["error"] == "timed out after 0.5 s" and tried["status_code"] is None
    assert 450 <= tried["duration_ms"] < 2000
    receiver.stop()

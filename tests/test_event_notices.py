"""Batched event notices against the real embedded PostgreSQL: ``db.events.publish_many`` (one
statement, ids in the given order, one notification) and ``actors.event_bus.make_notice_publisher``
(queued per tenant, written in fewer statements than events, in publish order, counted after commit,
seen by live and resumed streams like any event, and never raising into the code that announces).

Statements are counted with the pool's own ``acquired_total``: each ``pool.query`` borrows one
connection for one round trip, and a pool made for the test has no other borrower.
"""

from __future__ import annotations

import logging
import uuid

import gevent
import gevent.socket
import psycopg2
import pytest
from prometheus_client import CollectorRegistry, Counter

from actors.event_bus import make_notice_publisher
from db import bots as bots_db
from db import events as events_db
from db import tenants
from tests.sse_client import SSEClient

TIMEOUT = 5


@pytest.fixture
def tenant(pool):
    """A fresh tenant: (tenant id, API key, a bot id)."""
    tenant_id, key = tenants.create_tenant(pool, f"notice-{uuid.uuid4().hex[:8]}")
    bot = bots_db.create(pool, tenant_id, f"bot-{uuid.uuid4().hex[:6]}", {})["id"]
    return tenant_id, key, bot


@pytest.fixture
def own_pool(make_pool):
    """A pool nobody else borrows from, so its borrow count is this test's statement count."""
    return make_pool(size=4)


@pytest.fixture
def published():
    return Counter("events_published", "Events written to the event log", ["type"], registry=CollectorRegistry())


def statements(pool) -> int:
    return pool.stats()["acquired_total"]


def stored(pool, tenant_id) -> list[events_db.StoredEvent]:
    return events_db.for_tenant(pool, tenant_id, 0, 2**62, None, None, limit=100_000)


def count_of(counter, event_type: str) -> float:
    return counter.labels(event_type)._value.get()


def notifications(pg_url: str):
    """A LISTEN connection on the events channel; returns a function waiting for the next payload."""
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"LISTEN {events_db.CHANNEL}")

    def next_payload() -> str:
        while not conn.notifies:
            gevent.socket.wait_read(conn.fileno(), timeout=TIMEOUT)  # raises on timeout
            conn.poll()
        return conn.notifies.pop(0).payload

    return conn, next_payload


# -- publish_many -------------------------------------------------------------------------------------


def test_publish_many_stores_the_rows_in_one_statement_with_ids_increasing_in_the_given_order(own_pool, tenant):
    tenant_id, _, bot = tenant
    rows = [(bot, "b.first", {"n": 0}), (None, "a.second", {"n": 1}), (bot, "c.third", {"n": 2, "x": [1]})]
    before = statements(own_pool)

    ids = events_db.publish_many(own_pool, tenant_id, rows)

    assert statements(own_pool) - before == 1
    assert ids == sorted(ids) and len(set(ids)) == 3
    events = stored(own_pool, tenant_id)
    assert [e.id for e in events] == ids
    assert [(e.bot_id, e.type, e.payload) for e in events] == rows
    assert all(e.tenant_id == tenant_id for e in events)


def test_publish_many_of_nothing_sends_no_statement(own_pool, tenant):
    before = statements(own_pool)

    assert events_db.publish_many(own_pool, tenant[0], []) == []
    assert statements(own_pool) == before


def test_publish_many_notifies_once_with_the_highest_new_id(pg, own_pool, tenant):
    tenant_id, _, bot = tenant
    conn, next_payload = notifications(pg.app_url)
    try:
        ids = events_db.publish_many(own_pool, tenant_id, [(bot, "t", {"n": n}) for n in range(3)])
        single = events_db.publish(own_pool, tenant_id, bot, "t", {"n": 3})

        # Notifications arrive in commit order: the one after the batch's is the next statement's.
        assert next_payload() == str(ids[-1])
        assert next_payload() == str(single)
    finally:
        conn.close()


def test_publish_keeps_answering_the_id_of_the_one_event_it_stored(own_pool, tenant):
    tenant_id, _, bot = tenant

    event_id = events_db.publish(own_pool, tenant_id, bot, "bot.state", {"state": "connected"})

    (event,) = stored(own_pool, tenant_id)
    assert (event.id, event.bot_id, event.type, event.payload) == (event_id, bot, "bot.state", {"state": "connected"})


# -- the notice publisher -----------------------------------------------------------------------------


def test_notices_from_many_greenlets_all_land_in_publish_order_per_tenant_in_fewer_statements(
    own_pool, make_tenant, published
):
    tenant_ids = [make_tenant()[0] for _ in range(3)]
    notices = make_notice_publisher(own_pool, published)
    order: dict[str, list[dict]] = {t: [] for t in tenant_ids}
    before = statements(own_pool)

    def announce(tenant_id: str, source: int) -> None:
        for n in range(25):
            payload = {"source": source, "n": n}
            order[tenant_id].append(payload)  # no yield between this and the queueing below
            notices(tenant_id, None, "message.in", payload)
            gevent.sleep(0)  # let the other publishers and the writers run in between

    gevent.joinall([gevent.spawn(announce, t, s) for t in tenant_ids for s in range(4)], raise_error=True)
    assert notices.flush(TIMEOUT)

    total = sum(len(payloads) for payloads in order.values())
    assert total == 300
    for tenant_id in tenant_ids:
        assert [e.payload for e in stored(own_pool, tenant_id)] == order[tenant_id]
    assert statements(own_pool) - before < total
    assert count_of(published, "message.in") == total


def test_a_notice_returns_before_it_is_written_and_flush_waits_for_it(own_pool, tenant, published):
    tenant_id, _, bot = tenant
    notices = make_notice_publisher(own_pool, published)

    assert notices(tenant_id, bot, "bot.qr", {"code": "x"}) is None
    # Checked before anything yields (a read of the table would let the writer run meanwhile).
    assert notices.queued == 1 and count_of(published, "bot.qr") == 0

    assert notices.flush(TIMEOUT)
    assert [(e.type, e.payload) for e in stored(own_pool, tenant_id)] == [("bot.qr", {"code": "x"})]
    assert count_of(published, "bot.qr") == 1


def test_a_notice_reaches_live_and_resumed_streams_like_a_published_event(web, tenant):
    tenant_id, key, bot = tenant
    notices = make_notice_publisher(web.pool, web.metrics.events_published)
    with SSEClient(web.url, key=key) as live:
        assert live.status == 200
        notices(tenant_id, bot, "bot.state", {"state": "connected"})
        assert notices.flush(TIMEOUT)
        (event,) = stored(web.pool, tenant_id)

        live.wait_ids([event.id], what="the notice, live")
        assert live.events[0].event == "bot.state"
        assert live.events[0].json()["payload"] == {"state": "connected"}
        assert live.events[0].json()["bot_id"] == bot

    with SSEClient(web.url, key=key, last_event_id=0) as resumed:
        resumed.wait_ids([event.id], what="the notice, from the backlog")


def test_a_notice_the_database_refuses_fails_alone_and_the_rest_of_its_statement_lands(
    own_pool, tenant, published, caplog
):
    caplog.set_level(logging.WARNING, logger="db.batch")
    tenant_id, _, bot = tenant
    notices = make_notice_publisher(own_pool, published)

    # Queued without a yield in between: one combined statement, refused for the bad bot id.
    notices(tenant_id, bot, "m", {"n": 0})
    notices(tenant_id, "not-a-uuid", "m", {"n": 1})
    notices(tenant_id, bot, "m", {"n": 2})
    assert notices.flush(TIMEOUT)

    assert [e.payload for e in stored(own_pool, tenant_id)] == [{"n": 0}, {"n": 2}]
    assert count_of(published, "m") == 2
    (failure,) = [r for r in caplog.records if r.name == "db.batch"]
    assert failure.operation == "events.publish" and "uuid" in failure.error


def test_a_database_that_is_away_does_not_raise_into_the_publisher_and_is_logged(make_pool, tenant, published, caplog):
    caplog.set_level(logging.WARNING)
    away = make_pool(size=1)
    away.stop()
    notices = make_notice_publisher(away, published)

    assert notices(tenant[0], None, "bot.state", {}) is None
    assert notices.flush(TIMEOUT)

    assert count_of(published, "bot.state") == 0
    (failure,) = [r for r in caplog.records if r.name == "db.batch"]
    assert failure.operation == "events.publish" and "PoolClosed" in failure.error


def test_notices_beyond_the_limit_are_dropped_and_logged_not_raised(own_pool, tenant, caplog):
    caplog.set_level(logging.WARNING, logger="actors.event_bus")
    tenant_id, _, bot = tenant
    notices = make_notice_publisher(own_pool, limit=1)

    notices(tenant_id, bot, "m", {"n": 0})  # queued; its writer has not run yet
    assert notices(tenant_id, bot, "m", {"n": 1}) is None
    assert notices.flush(TIMEOUT)

    assert [e.payload for e in stored(own_pool, tenant_id)] == [{"n": 0}]
    assert notices.dropped == 1
    (record,) = [r for r in caplog.records if r.name == "actors.event_bus"]
    assert record.getMessage() == "event not published" and "Overflow" in record.error


def test_after_stop_notices_already_queued_are_written_and_later_ones_dropped_without_raising(own_pool, tenant):
    tenant_id, _, bot = tenant
    notices = make_notice_publisher(own_pool)

    notices(tenant_id, bot, "m", {"n": 0})
    notices.stop()
    assert notices(tenant_id, bot, "m", {"n": 1}) is None
    assert notices.flush(TIMEOUT)

    assert [e.payload for e in stored(own_pool, tenant_id)] == [{"n": 0}]
    assert notices.dropped == 1

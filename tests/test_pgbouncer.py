"""The platform behind a real PgBouncer in transaction pooling mode: the pool's transactions stay
tenant-local and keep their statement timeout, and what needs a session of its own (LISTEN) goes
over DATABASE_DIRECT_URL."""

import gevent
import psycopg2
import pytest

from actors.pool import Pool, PoolConfig
from bench._pgbouncer import PgBouncer
from db import embedded
from tests.waiting import wait_until
from tests.webhook_harness import clear_webhooks, deliveries, dispatcher, inbound, new_bot, new_endpoint, new_tenant
from tests.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def bouncer(pg):
    server = PgBouncer(pg.app_url, (embedded.APP_ROLE,), pool_size=2)
    yield server
    server.stop()


@pytest.fixture
def pooled(bouncer):
    pools = []

    def make(**changes):
        config = PoolConfig(dsn=bouncer.url(embedded.APP_ROLE), size=8, pooled=True, **changes)
        pool = Pool(config)
        pools.append(pool)
        assert pool.wait_ready(10), pool.stats()["last_connect_error"]
        return pool

    yield make
    for pool in pools:
        pool.stop()


def test_transactions_through_the_pooler_see_only_their_own_tenants_rows(pool, pooled):
    tenants = [new_tenant(pool) for _ in range(2)]
    for count, tenant in enumerate(tenants, start=1):
        for _ in range(count):
            new_bot(pool, tenant)
    through = pooled()  # 8 client connections over 2 server connections

    def count_bots(i):
        tenant = tenants[i % 2]
        if i % 3:
            return tenant, through.query(tenant, "SELECT count(*) FROM bots")[0][0]
        with through.unit(tenant) as unit:
            gevent.sleep(0.001)  # hold the transaction while others run on the other server connection
            return tenant, unit.scalar("SELECT count(*) FROM bots")

    jobs = [gevent.spawn(count_bots, i) for i in range(200)]
    gevent.joinall(jobs, raise_error=True)
    expected = {tenants[0]: 1, tenants[1]: 2}
    assert all(job.value[1] == expected[job.value[0]] for job in jobs)
    assert through.query(None, "SELECT count(*) FROM bots")[0][0] == 0  # no tenant set: none left behind


def test_the_statement_timeout_holds_for_every_transaction_through_the_pooler(pooled):
    through = pooled(statement_timeout=0.3)
    with pytest.raises(psycopg2.errors.QueryCanceled):
        through.query(None, "SELECT pg_sleep(2)", repeatable=False)
    with pytest.raises(psycopg2.errors.QueryCanceled), through.unit(None) as unit:
        unit.execute("SELECT pg_sleep(2)")
    assert through.query(None, "SELECT current_setting('statement_timeout')")[0][0] == "300ms"


def test_a_pool_that_sets_the_timeout_at_connect_is_refused_by_the_pooler(bouncer):
    pool = Pool(PoolConfig(dsn=bouncer.url(embedded.APP_ROLE), size=1, pooled=False, connect_timeout=2))
    try:
        assert not pool.wait_ready(3)
        assert "unsupported startup parameter" in str(pool.stats()["last_connect_error"])
    finally:
        pool.stop()


def test_webhooks_are_woken_over_the_direct_url_while_the_pool_goes_through_the_pooler(pg, settings, pool, pooled):
    clear_webhooks(pg.owner_url)
    through = pooled()
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    try:
        # Polls a minute apart: a delivery within seconds came from the LISTEN on the direct URL.
        with dispatcher(settings, through, listen_dsn=pg.app_url, poll=60.0):
            gevent.sleep(0.5)  # the first claim (at start) has run; the LISTEN is in place
            inbound(through, tenant, bot)
            wait_until(lambda: receiver.done, 10, "the delivery, woken by the notification")
            wait_until(lambda: deliveries(pool, tenant, endpoint)[0]["state"] == "delivered", 10, "recorded")
    finally:
        receiver.stop()
        clear_webhooks(pg.owner_url)

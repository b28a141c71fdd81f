"""The soak's TCP fault proxy between the pool and the real PostgreSQL: latency, resets and a black
hole reach the platform as the faults they imitate, and the pool comes back from each."""

import os
import time
import urllib.parse

import gevent
import pytest

from actors.pool import Pool, PoolConfig
from bench._faultproxy import FaultProxy
from db.green import pending_cancels
from tests.waiting import wait_until


@pytest.fixture
def proxy(pg):
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(pg.app_url).query)["host"][0]
    server = FaultProxy(os.path.join(socket_dir, ".s.PGSQL.5432"))
    yield server
    server.stop()


@pytest.fixture
def proxied_pool(pg, proxy):
    pool = Pool(PoolConfig(dsn=f"postgresql://wabot_app@127.0.0.1:{proxy.port}/wabot", size=2, connect_timeout=2,
                           acquire_timeout=5))
    assert pool.wait_ready(10), pool.stats()["last_connect_error"]
    yield pool
    pool.stop()


def test_queries_pass_through_the_proxy(proxied_pool, proxy):
    assert proxied_pool.query(None, "SELECT 41 + 1")[0][0] == 42
    assert proxy.accepted >= 1


def test_latency_delays_each_direction(proxied_pool, proxy):
    proxy.latency(0.2)
    started = time.monotonic()
    proxied_pool.query(None, "SELECT 1")
    assert time.monotonic() - started >= 0.4  # the query there, the answer back
    proxy.passing()


def test_a_reset_breaks_the_connections_and_the_pool_reconnects(proxied_pool, proxy):
    proxied_pool.query(None, "SELECT 1")
    proxy.reset()
    assert proxy.resets >= 2
    assert proxied_pool.query(None, "SELECT 2")[0][0] == 2  # retried on a fresh connection


def test_a_query_abandoned_in_a_black_hole_leaves_at_its_deadline_and_the_process_goes_on(proxied_pool, proxy):
    proxied_pool.query(None, "SELECT 1")
    proxy.black_hole(True)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(1000)])

    def abandoned():
        with gevent.Timeout(0.5):
            proxied_pool.query(None, "SELECT 1", repeatable=False)

    query = gevent.spawn(abandoned)
    query.join(3)  # its cancel request goes into the black hole too, from a greenlet of its own
    assert query.ready() and isinstance(query.exception, gevent.Timeout)
    gevent.sleep(0.5)
    assert len(ticks) >= 15  # the hub never stopped (libpq's blocking cancel froze the process)
    ticker.kill()
    proxy.black_hole(False)
    assert proxied_pool.query(None, "SELECT 3")[0][0] == 3
    wait_until(lambda: pending_cancels() == 0, 10, "the cancel request's greenlet to end")

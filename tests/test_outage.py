"""A real database outage: the PostgreSQL server is stopped under load and started again."""

import gevent
import gevent.event
import pytest
import requests

from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def test_the_pool_recovers_after_a_server_restart_and_readyz_follows(pg, web):
    pool = web.pool
    stop = gevent.event.Event()
    results = {"ok": 0, "failed": 0, "ok_after_restart": 0}
    restarted = gevent.event.Event()

    def load():
        while not stop.is_set():
            try:
                pool.query(None, "SELECT 1")
                results["ok"] += 1
                if restarted.is_set():
                    results["ok_after_restart"] += 1
            except Exception:  # noqa: BLE001 - failures are expected during the outage
                results["failed"] += 1
                gevent.sleep(0.01)  # paces a failing worker's load (not a wait for anything)

    workers = [gevent.spawn(load) for _ in range(12)]
    try:
        wait_until(lambda: results["ok"] > 200, 10, "200 queries before the outage", interval=0.05)
        assert requests.get(web.url + "/readyz", timeout=5).status_code == 200

        pg.stop_server()
        wait_until(lambda: results["failed"] > 0, 10, "a failed query in the outage", interval=0.05)
        down = requests.get(web.url + "/readyz", timeout=10)
        assert down.status_code == 503
        assert down.json()["status"] == "unavailable" and down.json()["reason"]

        pg.start_server()
        restarted.set()
        wait_until(lambda: requests.get(web.url + "/readyz", timeout=10).status_code == 200, 30, "readyz to say ready",
                   interval=0.2)
        before = results["ok_after_restart"]
        wait_until(lambda: results["ok_after_restart"] > before + 200, 15, "200 queries after the restart",
                   interval=0.05)
    finally:
        stop.set()
        gevent.joinall(workers, timeout=30)
    stats = pool.stats()
    assert stats["replaced_total"] >= pool.config.size
    assert stats["in_use"] == 0
    wait_until(lambda: pool.stats()["idle"] == pool.config.size, 15, "every connection idle again", interval=0.05)

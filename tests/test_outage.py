"""A real database outage: the PostgreSQL server is stopped under load and started again."""

import gevent
import gevent.event
import pytest
import requests

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout, interval=0.05):
    with gevent.Timeout(timeout, AssertionError(f"condition not met within {timeout}s")):
        while not predicate():
            gevent.sleep(interval)


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
                gevent.sleep(0.01)

    workers = [gevent.spawn(load) for _ in range(12)]
    try:
        _wait_for(lambda: results["ok"] > 200, 10)
        assert requests.get(web.url + "/readyz", timeout=5).status_code == 200

        pg.stop_server()
        _wait_for(lambda: results["failed"] > 0, 10)
        down = requests.get(web.url + "/readyz", timeout=10)
        assert down.status_code == 503
        assert down.json()["status"] == "unavailable" and down.json()["reason"]

        pg.start_server()
        restarted.set()
        _wait_for(lambda: requests.get(web.url + "/readyz", timeout=10).status_code == 200, 30, 0.2)
        before = results["ok_after_restart"]
        _wait_for(lambda: results["ok_after_restart"] > before + 200, 15)
    finally:
        stop.set()
        gevent.joinall(workers, timeout=30)
    stats = pool.stats()
    assert stats["replaced_total"] >= pool.config.size
    assert stats["in_use"] == 0
    _wait_for(lambda: pool.stats()["idle"] == pool.config.size, 15)

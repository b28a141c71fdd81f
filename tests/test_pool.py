"""The pool actor: exhaustion, churn with failures and kills, leaks, recycling, outages, retries."""

import logging
import random

import gevent
import gevent.event
import psycopg2
import pytest

from actors.pool import PoolClosed, PoolExhausted
from sansio.retry_rules import is_transient
from tests.waiting import wait_until


def test_a_borrower_gets_a_clear_error_naming_pool_size_and_waiters_when_none_is_free(make_pool):
    pool = make_pool(size=2, acquire_timeout=0.2)
    release = gevent.event.Event()

    def hold():
        with pool.unit(None):
            release.wait()

    holders = [gevent.spawn(hold) for _ in range(2)]
    wait_until(lambda: pool.stats()["in_use"] == 2, what="both connections borrowed")
    with pytest.raises(PoolExhausted) as caught, pool.unit(None):
        pass
    message = str(caught.value)
    assert "pool size 2" in message and "1 waiting" in message and "0.2s" in message
    release.set()
    gevent.joinall(holders, timeout=5)
    assert pool.stats()["acquire_timeouts_total"] == 1
    assert pool.stats()["waiting"] == 0


def test_a_waiting_borrower_gets_the_next_returned_connection(make_pool):
    pool = make_pool(size=1)
    release = gevent.event.Event()

    def hold():
        with pool.unit(None):
            release.wait()

    holder = gevent.spawn(hold)
    wait_until(lambda: pool.stats()["in_use"] == 1, what="the connection borrowed")
    waiter = gevent.spawn(pool.query, None, "SELECT 42")
    wait_until(lambda: pool.stats()["waiting"] == 1, what="one borrower waiting")
    release.set()
    assert waiter.get(timeout=5) == [(42,)]
    holder.join(5)
    assert pool.stats()["waited_total"] == 1


def test_ten_thousand_borrow_cycles_with_random_failures_and_kills_lose_and_leak_no_connection(make_pool):
    pool = make_pool(size=6, acquire_timeout=30)
    rng = random.Random(2026)
    outcomes = {"ok": 0, "error": 0, "killed": 0}

    def cycle(kind):
        if kind == "ok":
            pool.query(None, "SELECT 1")
        elif kind == "error":
            with pool.unit(None) as unit:
                unit.execute("SELECT 1")
                raise ValueError("boom")
        elif kind == "sql":
            with pool.unit(None) as unit:
                unit.execute("SELECT 1 / 0")
        else:
            with pool.unit(None) as unit:
                unit.execute("SELECT pg_sleep(%s)", (rng.choice((0, 0.001, 0.01)),))

    def worker(n):
        for _ in range(n):
            kind = rng.choices(("ok", "error", "sql", "slow"), (70, 10, 10, 10))[0]
            try:
                cycle(kind)
                outcomes["ok"] += 1
            except (ValueError, psycopg2.Error):
                outcomes["error"] += 1

    total = 0
    batch = []
    while total < 10_000:
        n = rng.randint(20, 80)
        total += n
        batch.append(gevent.spawn(worker, n))
        if len(batch) == 16:
            # Kill a few workers mid-flight: some while waiting for a connection, some mid-query (a
            # random moment is the point here, not a wait for anything).
            gevent.sleep(rng.random() * 0.005)
            for victim in rng.sample(batch, 3):
                if not victim.dead:
                    victim.kill(block=False)
                    outcomes["killed"] += 1
            gevent.joinall(batch, timeout=60)
            batch = []
    gevent.joinall(batch, timeout=60)
    assert outcomes["ok"] > 5_000
    # Every connection comes back: after replacements settle the pool holds exactly its size.
    stats = wait_until(lambda: (s := pool.stats())["idle"] == 6 and s["connecting"] == 0 and s,
                       what="every connection idle again", interval=0.02)
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    live = pool.query(None, "SELECT count(*) FROM pg_stat_activity"
                            " WHERE application_name = 'wabot' AND usename = current_user")
    assert live[0][0] >= 6


def test_a_borrower_holding_a_connection_too_long_is_logged_with_its_stack(make_pool, caplog):
    pool = make_pool(size=1, leak_threshold=0.1)
    logged = gevent.event.Event()

    class Spy(logging.Handler):
        def emit(self, record):
            if record.getMessage() == "database connection held too long":
                self.record = record
                logged.set()

    spy = Spy()
    logging.getLogger("actors.pool").addHandler(spy)
    try:
        def forgetful_borrower():
            with pool.unit(None):
                logged.wait(5)

        g = gevent.spawn(forgetful_borrower)
        assert logged.wait(5)
        g.join(5)
    finally:
        logging.getLogger("actors.pool").removeHandler(spy)
    assert "forgetful_borrower" in spy.record.stack
    assert pool.stats()["leaks_total"] == 1


def test_connections_are_recycled_after_their_lifetime(make_pool):
    pool = make_pool(size=2, max_lifetime=0.05)
    first = {pool.query(None, "SELECT pg_backend_pid()")[0][0]}
    gevent.sleep(0.1)  # real time past the lifetime is what this test is about
    later = {pool.query(None, "SELECT pg_backend_pid()")[0][0] for _ in range(4)}
    assert first.isdisjoint(later)
    assert pool.stats()["replaced_total"] >= 2


def test_lifetimes_are_jittered_so_connections_do_not_recycle_together(make_pool):
    pool = make_pool(size=8, max_lifetime=1000)
    wait_until(lambda: pool.stats()["idle"] == 8, what="all eight connections open")
    expiries = {round(c.expires_at, 6) for c in pool._shared.idle}
    assert len(expiries) == 8


def test_a_statement_over_the_statement_timeout_is_cancelled_by_the_server(make_pool):
    pool = make_pool(size=1, statement_timeout=0.1)
    with pytest.raises(psycopg2.errors.QueryCanceled):
        pool.query(None, "SELECT pg_sleep(2)", repeatable=False)
    assert pool.query(None, "SELECT 1") == [(1,)]


def test_a_gevent_timeout_around_a_query_cancels_it_on_the_server(make_pool):
    pool = make_pool(size=2)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.1):
        pool.query(None, "SELECT pg_sleep(20) -- abandoned", repeatable=False)
    # The cancel and the discarded connection's exit reach the server asynchronously; an uncancelled
    # query would stay active for its whole 20 s.
    running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%-- abandoned'"
    wait_until(lambda: pool.query(None, running) == [(0,)], timeout=5, what="the abandoned query to end on the server")


def test_a_stopped_pool_refuses_borrowers_and_closes_its_connections(make_pool):
    pool = make_pool(size=2)
    pool.stop()
    with pytest.raises(PoolClosed):
        pool.query(None, "SELECT 1")
    assert pool.stats()["idle"] == 0


def test_repeatable_work_is_retried_after_a_serialization_failure_but_not_after_an_integrity_error(pool):
    calls = {"n": 0}

    def flaky(unit):
        calls["n"] += 1
        if calls["n"] == 1:
            unit.execute("SELECT 1")
            raise psycopg2.errors.SerializationFailure("simulated")
        return unit.scalar("SELECT 7")

    assert pool.run(None, flaky, repeatable=True) == 7
    assert calls["n"] == 2

    calls["n"] = 0

    def once(unit):
        calls["n"] += 1
        raise psycopg2.errors.SerializationFailure("simulated")

    with pytest.raises(psycopg2.errors.SerializationFailure):
        pool.run(None, once, repeatable=False)
    assert calls["n"] == 1

    calls["n"] = 0

    def integrity(unit):
        calls["n"] += 1
        raise psycopg2.errors.UniqueViolation("dup")

    with pytest.raises(psycopg2.errors.UniqueViolation):
        pool.run(None, integrity, repeatable=True)
    assert calls["n"] == 1


@pytest.mark.parametrize(
    "exc, transient",
    [
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg2.InterfaceError("connection already closed"), True),
        (psycopg2.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg2.errors.SerializationFailure("could not serialize access"), True),
        (psycopg2.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg2.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg2.errors.UniqueViolation("duplicate key"), False),
        (psycopg2.errors.ForeignKeyViolation("fk"), False),
        (psycopg2.errors.UndefinedTable("relation does not exist"), False),
        (psycopg2.errors.SyntaxError("syntax error"), False),
        (psycopg2.errors.InvalidTextRepresentation("invalid input syntax for type uuid"), False),
        (psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg2.errors.InsufficientPrivilege("permission denied"), False),
        (PoolExhausted("no connection"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_retry_classification(exc, transient):
    assert is_transient(exc) is transient

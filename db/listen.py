"""A LISTEN loop on a dedicated connection (not from the pool: it is held for as long as the process
runs), reconnecting with capped backoff after the server goes away (``RECONNECT``: 0.1 s doubling to
5 s, counted again from the start after every successful LISTEN).

``on_connected`` runs after every (re)connect once LISTEN is in place — callers catch up there on
whatever was said while they were not listening; ``on_notify(payload)`` runs per notification. Both
run in the listening greenlet and must only hand work over (an actor ``tell``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import gevent
import gevent.socket
import psycopg2
from psycopg2 import extensions, sql

from sansio.backoff import BackoffPolicy, Rng

log = logging.getLogger(__name__)

# Equal jitter (each delay uniform in [d/2, d]) so the listeners of every process, which all lose the
# server at the same instant, do not all come back at the same instants.
RECONNECT = BackoffPolicy(base=0.1, cap=5.0, jitter="equal")


def listen_forever(
    dsn: str,
    channel: str,
    on_notify: Callable[[str], None],
    on_connected: Callable[[], None],
    stopping: Callable[[], bool],
    *,
    idle_check: float = 30.0,
    rng: Rng | None = None,
) -> None:
    rng = rng or random.Random()
    attempt = 0  # failed connections since the last successful LISTEN
    while not stopping():
        conn = None
        try:
            conn = psycopg2.connect(dsn, application_name=f"wabot-listen-{channel}")
            conn.set_isolation_level(extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            attempt = 0
            on_connected()
            while not stopping():
                try:
                    gevent.socket.wait_read(conn.fileno(), timeout=idle_check)
                except gevent.socket.timeout:
                    # A quiet channel: make sure the server is still there (a dead peer may never
                    # wake a read).
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    continue
                conn.poll()
                while conn.notifies:
                    on_notify(conn.notifies.pop(0).payload)
        except Exception as exc:  # noqa: BLE001 - reconnect with backoff whatever went wrong
            if stopping():
                return
            attempt += 1
            delay = RECONNECT.delay(attempt, rng)
            log.warning("listen connection lost", extra={"channel": channel, "error": repr(exc), "retry_in": delay})
            gevent.sleep(delay)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

"""Make psycopg2 cooperative under gevent, and cancel server-side work when a query is abandoned.

psycogreen's wait callback yields to the hub while libpq waits on the socket. If the waiting greenlet
is killed or times out (``GreenletExit``, ``gevent.Timeout``: BaseExceptions) the stock callback leaves
the query running on the server; this one sends a cancel request first, then lets the exception go on.
psycopg2 closes the connection after a failed wait, so the pool discards it.
"""

from __future__ import annotations

import psycopg2
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

_POLL_OK = extensions.POLL_OK
_POLL_READ = extensions.POLL_READ
_POLL_WRITE = extensions.POLL_WRITE


def gevent_wait_callback(conn, timeout=None):  # signature fixed by psycopg2
    try:
        while True:
            state = conn.poll()
            if state == _POLL_OK:
                return
            if state == _POLL_READ:
                wait_read(conn.fileno(), timeout=timeout)
            elif state == _POLL_WRITE:
                wait_write(conn.fileno(), timeout=timeout)
            else:
                raise psycopg2.OperationalError(f"bad state from poll: {state}")
    except BaseException:
        # Only a query in progress can be cancelled; cancel() on a dead socket just fails.
        try:
            conn.cancel()
        except Exception:  # noqa: BLE001 - the original exception matters, not this one
            pass
        raise


def make_psycopg2_green() -> None:
    extensions.set_wait_callback(gevent_wait_callback)

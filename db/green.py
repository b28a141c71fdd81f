"""Make psycopg2 cooperative under gevent, and cancel server-side work when a query is abandoned.

psycogreen's wait callback yields to the hub while libpq waits on the socket. If the waiting greenlet
is killed or times out (``GreenletExit``, ``gevent.Timeout``: BaseExceptions) the stock callback leaves
the query running on the server; this one sends a cancel request first, then lets the exception go on.
psycopg2 closes the connection after a failed wait, so the pool discards it.

libpq's cancel request (``PQcancel``) is blocking I/O on a new connection, without a timeout, and
psycopg2 holds the GIL through it: while the database's network was a black hole it froze the whole
process, native threads or not (tests/test_fault_proxy.py, found with the soak's fault proxy).
Connections of class ``CancellableConnection`` (the pool's) say how instead: ``cancel_dsn`` set, a
tracked greenlet asks the server over a new green connection (``pg_cancel_backend`` of the backend's
pid, allowed for the same role), bounded by ``CANCEL_TIMEOUT``, and the abandoning greenlet leaves at
once; ``cancel_dsn`` None (a transaction pooler, whose backend pids are its own, not the server's) the
abandoned statement runs on until the statement timeout. Other connections keep ``PQcancel``.
"""

from __future__ import annotations

import functools
import logging

import gevent
import gevent.pool
import psycopg2
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

log = logging.getLogger(__name__)

CANCEL_TIMEOUT = 5.0


class CancellableConnection(extensions.connection):
    """A connection that says how an abandoned statement of it is cancelled (``cancel_dsn``)."""

    cancel_dsn: str | None = None


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
        _cancel(conn)
        raise


@functools.cache
def _cancels() -> gevent.pool.Group:
    """Every cancel greenlet of the process, so they can be counted and ended (made on first use)."""
    return gevent.pool.Group()


def _cancel(conn) -> None:
    if isinstance(conn, CancellableConnection):
        if conn.cancel_dsn is not None:
            try:
                pid = conn.info.backend_pid
            except Exception:  # noqa: BLE001 - no backend to cancel
                return
            if pid:
                _cancels().spawn(_cancel_by_sql, conn.cancel_dsn, pid)
        return
    # Only a query in progress can be cancelled; cancel() on a dead socket just fails.
    try:
        conn.cancel()
    except Exception:  # noqa: BLE001 - the original exception matters, not this one
        pass


def _cancel_by_sql(dsn: str, pid: int) -> None:
    try:
        with gevent.Timeout(CANCEL_TIMEOUT):
            other = psycopg2.connect(dsn, connection_factory=CancellableConnection,
                                     application_name="wabot-cancel")
            try:
                other.autocommit = True
                with other.cursor() as cur:
                    cur.execute("SELECT pg_cancel_backend(%s)", (pid,))
            finally:
                other.close()
    except (Exception, gevent.Timeout) as exc:  # noqa: BLE001 - the statement timeout ends it anyway
        log.info("cancel request not sent", extra={"backend_pid": pid, "error": repr(exc)})


def pending_cancels() -> int:
    """Cancel requests on their way (tests)."""
    return len(_cancels())


def make_psycopg2_green() -> None:
    extensions.set_wait_callback(gevent_wait_callback)

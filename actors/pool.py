"""The database pool: an actor that owns a fixed set of psycopg2 connections, and the handle callers
borrow them through.

Ownership and I/O belong to ``PoolActor``: it opens the connections, replaces broken ones in the
background with capped, jittered backoff, recycles connections after their (jittered) lifetime, logs
borrowers that hold a connection too long with the stack they are stuck in, and reports stats. The
borrow and return path does not go through the actor's mailbox: borrowers take an idle connection from
state shared within the hub thread (no yield happens between reading and updating it, so it needs no
lock) and only *tell* the actor about slow-path events (a broken or expired connection). That keeps a
borrow at a few microseconds, where an ``ask`` round trip would cost more than the query.

A unit of work names its tenant. The tenant is applied transaction-locally in the same round trip as
the first statement: a transaction sends ``BEGIN; SELECT set_config('app.current_tenant', $t, true);
<first statement>`` as one query string, and a single-statement query sends ``SELECT set_config(...,
true); <statement>`` (one implicit transaction). Nothing survives on the connection for the next
borrower, and a single-statement unit of work costs exactly one round trip.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import random
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import gevent.event
import psycopg2
from psycopg2 import extensions

from actors.base import Actor
from core import retry
from db.green import CancellableConnection
from sansio.backoff import BackoffPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

_IDLE = extensions.TRANSACTION_STATUS_IDLE

# Opening a connection again after a failure: 0.05 s doubling to 5 s, each delay uniform in [d/2, d]
# so the pool's connectors (and other processes' pools) do not retry in step.
RECONNECT = BackoffPolicy(base=0.05, cap=5.0, jitter="equal")


class PoolExhausted(RuntimeError):
    """No connection became free within the acquire timeout."""

    transient = False


class PoolClosed(RuntimeError):
    """The pool has been stopped."""


@dataclasses.dataclass(eq=False)
class _Conn:
    raw: Any
    ident: int
    expires_at: float
    borrowed_at: float = 0.0
    holder: Any = None
    leak_reported: bool = False


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    dsn: str
    size: int = 20
    connect_timeout: float = 5.0
    acquire_timeout: float = 10.0
    max_lifetime: float = 3600.0
    statement_timeout: float = 30.0
    leak_threshold: float = 30.0
    application_name: str = "wabot"
    # True when ``dsn`` is a transaction pooler (PgBouncer's pool_mode = transaction): it refuses the
    # ``options`` startup parameter and hands each transaction to any server connection, so the
    # statement timeout goes with every transaction instead of once per connection.
    pooled: bool = False

    @classmethod
    def from_settings(cls, settings: Any, dsn: str) -> PoolConfig:
        return cls(
            dsn=dsn,
            size=settings.database_max_connections,
            connect_timeout=settings.database_connect_timeout,
            acquire_timeout=settings.database_acquire_timeout,
            max_lifetime=settings.database_max_lifetime,
            statement_timeout=settings.database_statement_timeout,
            leak_threshold=settings.database_leak_threshold,
            pooled=settings.database_direct_url is not None,
        )

    def transaction_prefix(self) -> bytes:
        """What every transaction starts with on a pooled connection (nothing on a direct one)."""
        if not self.pooled:
            return b""
        return f"SELECT set_config('statement_timeout', '{int(self.statement_timeout * 1000)}', true); ".encode()


class _Shared:
    """What borrowers and the actor both touch; only ever used from the hub thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: collections.deque[_Conn] = collections.deque()
        self.in_use: dict[int, _Conn] = {}
        self.waiters: collections.deque[gevent.event.AsyncResult[_Conn]] = collections.deque()
        self.closed = False
        self.connecting = 0
        self.acquired_total = 0
        self.waited_total = 0
        self.acquire_wait_seconds = 0.0
        self.timeouts_total = 0
        self.replaced_total = 0
        self.leaks_total = 0
        self.last_connect_error: str | None = None


# -- messages ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Replace:
    reason: str


@dataclasses.dataclass(frozen=True)
class _Opened:
    conn: _Conn


class _Sweep:
    pass


class _Stats:
    pass


class PoolActor(Actor):
    """Owns the connections: opens, replaces, recycles, watches for leaks, reports stats."""

    def __init__(self, config: PoolConfig, shared: _Shared, rng: random.Random | None = None) -> None:
        super().__init__()
        self.config = config
        self.shared = shared
        self.rng = rng or random.Random()
        self._ids = itertools.count(1)
        self._connectors: set[gevent.Greenlet] = set()
        self._sweeper: gevent.Greenlet | None = None

    def on_start(self) -> None:
        for _ in range(self.config.size):
            self._start_connector("initial")
        self._schedule_sweep()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Opened):
            return self._opened(message.conn)
        if isinstance(message, _Replace):
            self.shared.replaced_total += 1
            return self._start_connector(message.reason)
        if isinstance(message, _Sweep):
            return self._sweep()
        if isinstance(message, _Stats):
            return stats_of(self.shared)
        return super().on_receive(message)

    def on_stop(self) -> None:
        self._teardown()

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    # -- connections -------------------------------------------------------------------------------

    def _start_connector(self, reason: str) -> None:
        if self.shared.closed:
            return
        self.shared.connecting += 1
        connector = gevent.spawn(self._connect_until_open, reason)
        self._connectors.add(connector)
        connector.link(self._connectors.discard)

    def _connect_until_open(self, reason: str) -> None:
        """Runs in its own greenlet so a slow or failing server never blocks the actor's mailbox."""
        attempt = 0
        try:
            while not self.shared.closed:
                try:
                    raw = self._open()
                except Exception as exc:  # noqa: BLE001 - every failure to connect is retried
                    attempt += 1
                    delay = RECONNECT.delay(attempt, self.rng)
                    self.shared.last_connect_error = _one_line(exc)
                    log.warning("database connect failed", extra={"error": _one_line(exc), "retry_in": delay})
                    gevent.sleep(delay)
                    continue
                lifetime = self.config.max_lifetime * (1 - 0.1 * self.rng.random())
                conn = _Conn(raw=raw, ident=next(self._ids), expires_at=time.monotonic() + lifetime)
                self.shared.last_connect_error = None
                try:
                    self.actor_ref.tell(_Opened(conn))
                except Exception:  # noqa: BLE001 - the pool stopped meanwhile
                    _close_quietly(raw)
                return
        finally:
            self.shared.connecting -= 1

    def _open(self) -> Any:
        # Behind a transaction pooler the timeout goes with each transaction (PoolConfig.pooled).
        options = None if self.config.pooled else f"-c statement_timeout={int(self.config.statement_timeout * 1000)}"
        # libpq ignores connect_timeout for the asynchronous connect that green mode uses.
        with gevent.Timeout(self.config.connect_timeout, psycopg2.OperationalError("connect timed out")):
            raw = psycopg2.connect(self.config.dsn, application_name=self.config.application_name, options=options,
                                   connection_factory=CancellableConnection)
        # An abandoned statement is cancelled over a new connection to the server (db/green.py);
        # behind a transaction pooler the backend's pid is the pooler's, so the statement timeout ends it.
        raw.cancel_dsn = None if self.config.pooled else self.config.dsn
        raw.autocommit = True
        return raw

    def _opened(self, conn: _Conn) -> None:
        if self.shared.closed:
            _close_quietly(conn.raw)
            return
        _hand_over(self.shared, conn)

    # -- housekeeping ------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        interval = max(0.05, min(self.config.leak_threshold / 2, 5.0))
        self._sweeper = gevent.spawn_later(interval, self._tell_sweep)

    def _tell_sweep(self) -> None:
        try:
            self.actor_ref.tell(_Sweep())
        except Exception:  # noqa: BLE001 - stopped
            pass

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.shared.in_use.values()):
            held = now - conn.borrowed_at
            if held > self.config.leak_threshold and not conn.leak_reported:
                conn.leak_reported = True
                self.shared.leaks_total += 1
                frame = getattr(conn.holder, "gr_frame", None)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "(holder not running)"
                log.warning(
                    "database connection held too long",
                    extra={"held_seconds": round(held, 3), "threshold": self.config.leak_threshold, "stack": stack},
                )
        # Recycle idle connections past their lifetime without waiting for a borrower to find them.
        for conn in [c for c in self.shared.idle if c.expires_at <= now]:
            self.shared.idle.remove(conn)
            _close_quietly(conn.raw)
            self.shared.replaced_total += 1
            self._start_connector("lifetime")
        self._schedule_sweep()

    def _teardown(self) -> None:
        shared = self.shared
        shared.closed = True
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for connector in list(self._connectors):
            connector.kill(block=False)
        while shared.idle:
            _close_quietly(shared.idle.popleft().raw)
        while shared.waiters:
            shared.waiters.popleft().set_exception(PoolClosed("database pool stopped"))
        # Connections in use are closed by their borrowers on return (shared.closed is set).


def _hand_over(shared: _Shared, conn: _Conn) -> None:
    """Give a healthy connection to the longest waiter, else put it back on the idle stack."""
    while shared.waiters:
        waiter = shared.waiters.popleft()
        if not waiter.ready():
            waiter.set(conn)
            return
    shared.idle.append(conn)


def _close_quietly(raw: Any) -> None:
    try:
        raw.close()
    except Exception:  # noqa: BLE001
        pass


def _connection_lost(conn: _Conn, exc: BaseException | None) -> bool:
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and bool(conn.raw.closed)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def stats_of(shared: _Shared) -> dict[str, Any]:
    return {
        "size": shared.size,
        "in_use": len(shared.in_use),
        "idle": len(shared.idle),
        "waiting": len(shared.waiters),
        "connecting": shared.connecting,
        "acquired_total": shared.acquired_total,
        "waited_total": shared.waited_total,
        "acquire_wait_seconds_total": shared.acquire_wait_seconds,
        "acquire_timeouts_total": shared.timeouts_total,
        "replaced_total": shared.replaced_total,
        "leaks_total": shared.leaks_total,
        "last_connect_error": shared.last_connect_error,
    }


# -- the borrower's side -------------------------------------------------------------------------


class Unit:
    """One unit of work on one borrowed connection, in one transaction, for one tenant (or none).

    The first ``execute`` sends BEGIN, the tenant setting and the statement in a single round trip.
    """

    __slots__ = ("_pool", "_conn", "_cur", "_prefix", "_begun", "tenant_id")

    def __init__(self, pool: Pool, tenant_id: str | None) -> None:
        self._pool = pool
        self.tenant_id = tenant_id
        self._conn: _Conn | None = None
        self._cur: Any = None
        self._begun = False

    def __enter__(self) -> Unit:
        self._conn = self._pool._acquire()  # noqa: SLF001 - a unit is the pool's own part
        self._cur = self._conn.raw.cursor()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self._conn
        assert conn is not None  # __enter__ set it
        self._conn = None
        broken = False
        try:
            if exc_type is None:
                if self._begun:
                    self._cur.execute("COMMIT")
            elif not issubclass(exc_type, Exception):
                # Killed or timed out: psycopg2 has closed the connection after the wait callback
                # cancelled the query, or the holder died mid-transaction. Never reuse it.
                broken = True
            elif conn.raw.closed:
                broken = True
            elif self._begun:
                self._cur.execute("ROLLBACK")
        except BaseException:
            broken = True
            if exc_type is None:
                raise
        finally:
            self._pool._release(conn, broken, lost=_connection_lost(conn, exc))  # noqa: SLF001 - the pool's own part

    @property
    def connection(self) -> Any:
        assert self._conn is not None, "the unit is not open"
        return self._conn.raw

    def execute(self, sql: str, params: Any = None) -> Any:
        """Run a statement; returns the cursor (fetchone/fetchall/rowcount)."""
        cur = self._cur
        if self._begun:
            cur.execute(sql, params)
        else:
            self._begun = True
            cur.execute(self._pool._begin_prefix(cur, self.tenant_id) + cur.mogrify(sql, params))  # noqa: SLF001
        return cur

    def one(self, sql: str, params: Any = None) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Any = None) -> list[Any]:
        return self.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Any = None) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]


_BEGIN_NO_TENANT = b"BEGIN; "
_TENANT_SQL = "SELECT set_config('app.current_tenant', %s, true); "
_NOT_DURABLE = b"SELECT set_config('synchronous_commit', 'off', true); "


class Pool:
    """The handle callers use. Cheap to pass around; all state is owned by the actor."""

    def __init__(self, config: PoolConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._prefix = config.transaction_prefix()
        self._shared = _Shared(config.size)
        self.actor_ref = PoolActor.start(config, self._shared, rng)

    # -- public API --------------------------------------------------------------------------------

    def unit(self, tenant_id: str | None) -> Unit:
        """A context manager for one transaction as ``tenant_id`` (None: no tenant, sees nothing)."""
        return Unit(self, None if tenant_id is None else str(tenant_id))

    def run(self, tenant_id: str | None, work: Callable[[Unit], T], *, repeatable: bool) -> T:
        """Run ``work(unit)`` in one transaction; repeated after transient faults only if ``repeatable``."""

        def attempt() -> T:
            with self.unit(tenant_id) as unit:
                return work(unit)

        return retry.call(attempt, repeatable=repeatable)

    def query(self, tenant_id: str | None, sql: str, params: Any = None, *, repeatable: bool = True,
              durable: bool = True) -> list[Any]:
        """One statement, one round trip; returns all rows (or [] for statements without rows).

        ``durable=False`` commits without waiting for the WAL flush (``synchronous_commit = off`` for
        this transaction only): for writes that a crash may lose because they can be repaired (event
        notices, outbox bookkeeping that the network's message ids make safe to redo)."""
        return retry.call(lambda: self._single(tenant_id, sql, params, True, durable), repeatable=repeatable)

    def execute(self, tenant_id: str | None, sql: str, params: Any = None, *, repeatable: bool = False,
                durable: bool = True) -> int:
        """One statement, one round trip; returns the row count (``durable`` as for ``query``)."""
        return retry.call(lambda: self._single(tenant_id, sql, params, False, durable), repeatable=repeatable)

    def stats(self) -> dict[str, Any]:
        return stats_of(self._shared)

    def ping(self, timeout: float) -> None:
        """Borrow a connection and run ``SELECT 1`` within ``timeout`` seconds; raise if that fails."""
        with gevent.Timeout(timeout, TimeoutError(f"database did not answer within {timeout:g}s")):
            conn = self._acquire(timeout=timeout)
            broken = lost = False
            try:
                with conn.raw.cursor() as cur:
                    cur.execute("SELECT 1")
            except BaseException as exc:
                broken = True
                lost = _connection_lost(conn, exc)
                raise
            finally:
                self._release(conn, broken, lost=lost)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until at least one connection is open (or timeout); True if one is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._shared.idle or self._shared.in_use:
                return True
            gevent.sleep(0.02)
        return bool(self._shared.idle or self._shared.in_use)

    def stop(self, timeout: float = 10.0) -> None:
        if self.actor_ref.is_alive():
            try:
                self.actor_ref.stop(timeout=timeout)
            except Exception:  # noqa: BLE001 - already stopping
                pass
        self._shared.closed = True

    @property
    def closed(self) -> bool:
        return self._shared.closed

    # -- internals ---------------------------------------------------------------------------------

    def _single(self, tenant_id: str | None, sql: str, params: Any, rows: bool, durable: bool = True) -> Any:
        conn = self._acquire()
        broken = lost = False
        try:
            cur = conn.raw.cursor()
            body = cur.mogrify(sql, params)
            if tenant_id is not None:
                body = cur.mogrify(_TENANT_SQL, (str(tenant_id),)) + body
            if not durable:
                body = _NOT_DURABLE + body
            if self._prefix:
                body = self._prefix + body
            cur.execute(body)
            if not rows:
                return cur.rowcount
            return cur.fetchall() if cur.description is not None else []
        except BaseException as exc:
            broken = not isinstance(exc, Exception) or bool(conn.raw.closed)
            lost = _connection_lost(conn, exc)
            raise
        finally:
            self._release(conn, broken, lost=lost)

    def _begin_prefix(self, cur: Any, tenant_id: str | None) -> bytes:
        begin = _BEGIN_NO_TENANT + self._prefix
        if tenant_id is None:
            return begin
        return begin + cur.mogrify(_TENANT_SQL, (tenant_id,))

    def _acquire(self, timeout: float | None = None) -> _Conn:
        shared = self._shared
        if shared.closed:
            raise PoolClosed("database pool stopped")
        now = time.monotonic()
        holder = gevent.getcurrent()
        idle = shared.idle
        while idle:
            conn = idle.pop()  # LIFO: the most recently used connection is the warmest
            if conn.expires_at <= now or conn.raw.closed:
                self._retire(conn, "lifetime" if not conn.raw.closed else "closed")
                continue
            conn.borrowed_at = now
            conn.holder = holder
            conn.leak_reported = False
            shared.in_use[conn.ident] = conn
            shared.acquired_total += 1
            return conn
        return self._wait(timeout if timeout is not None else self.config.acquire_timeout, holder, now)

    def _wait(self, timeout: float, holder: Any, started: float) -> _Conn:
        shared = self._shared
        waiter: gevent.event.AsyncResult[_Conn] = gevent.event.AsyncResult()
        shared.waiters.append(waiter)
        try:
            conn = waiter.get(timeout=timeout)
        except gevent.Timeout:
            if waiter.successful():
                conn = waiter.value
            else:
                self._forget_waiter(waiter)
                shared.timeouts_total += 1
                raise PoolExhausted(
                    f"no database connection free within {timeout:g}s: pool size {shared.size}, "
                    f"{len(shared.in_use)} in use, {len(shared.waiters) + 1} waiting"
                ) from None
        except BaseException:
            # Killed while waiting: give back a connection that was handed over meanwhile.
            self._forget_waiter(waiter)
            handed = waiter.value
            if waiter.successful() and handed is not None:  # only connections are handed over
                self._release(handed, False, borrowed=False)
            raise
        assert conn is not None  # only connections are handed over
        now = time.monotonic()
        shared.waited_total += 1
        shared.acquire_wait_seconds += now - started
        shared.acquired_total += 1
        conn.borrowed_at = now
        conn.holder = holder
        conn.leak_reported = False
        shared.in_use[conn.ident] = conn
        return conn

    def _forget_waiter(self, waiter: gevent.event.AsyncResult) -> None:
        try:
            self._shared.waiters.remove(waiter)
        except ValueError:
            pass

    def _release(self, conn: _Conn, broken: bool, borrowed: bool = True, lost: bool = False) -> None:
        shared = self._shared
        if borrowed:
            shared.in_use.pop(conn.ident, None)
            conn.holder = None
        if lost:
            # The server dropped this connection (restart, pg_terminate_backend): idle siblings are
            # likely dead too, and borrowers should not have to discover each one by failing on it.
            while shared.idle:
                self._retire(shared.idle.popleft(), "server lost")
        raw = conn.raw
        if broken or raw.closed or shared.closed:
            self._retire(conn, "broken" if not shared.closed else "closed")
            return
        if raw.info.transaction_status != _IDLE:
            # A borrower left a transaction open (or a failed ROLLBACK): never hand that state on.
            self._retire(conn, "unclean")
            return
        if conn.expires_at <= time.monotonic():
            self._retire(conn, "lifetime")
            return
        _hand_over(shared, conn)

    def _retire(self, conn: _Conn, reason: str) -> None:
        _close_quietly(conn.raw)
        if self._shared.closed:
            return
        try:
            self.actor_ref.tell(_Replace(reason))
        except Exception:  # noqa: BLE001 - the actor is gone; nothing to replace for
            pass

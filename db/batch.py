"""Group commit for one operation: calls made while the previous statement is in flight run together.

Under load many bot pipelines ask the database the same kind of thing at once (store an inbound
message, mark a message sent). One statement per call spends most of its cost on the round trip, the
parse and plan with row-level security and the commit, not on the row. A ``Coalescer`` gathers the
calls of one operation per tenant: the first call of a quiet moment runs at once, alone; calls that
arrive while it is in flight wait and then run together as one multi-row statement. Nothing is delayed
on purpose, so a lone call costs what it did, and batches grow exactly as fast as load does.

Each caller's greenlet blocks until its own rows are committed and gets its own results, so the code
around a call reads as before: nothing is treated as done before the commit it depends on.

Failure isolation: when a combined run fails with a fault that is not transient (bad data, a
constraint), each call of the batch is run again on its own, so one caller's bad input fails only that
caller. Transient faults (the database away) fail every call of the batch as they are: each caller
already has its own answer to an outage (retry with backoff), and re-running them one by one would only
multiply the wait.

``submit`` queues a call without waiting (for notices whose outcome nobody waits on); ``limit`` bounds
how many such calls may wait, so an outage cannot grow memory without end. Work that nobody waits on
may also ``gather``: it waits that long for company before its statement runs (unless a waiting call
joins it), trading a little of its own latency for fewer statements.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import gevent
import gevent.event

from sansio.retry_rules import is_transient

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# run(tenant_id, items) -> one result per item, in order
Runner = Callable[[str, list[Any]], Sequence[Any]]


class Overflow(Exception):
    """More calls are waiting than the coalescer holds; this one was not queued."""


class _Call:
    __slots__ = ("items", "done", "settled", "on_done", "with_results")

    def __init__(self, items: list[Any], wait: bool, on_done: Callable[..., None] | None = None,
                 with_results: bool = False) -> None:
        self.items = items
        self.done: gevent.event.AsyncResult[Any] | None = gevent.event.AsyncResult() if wait else None
        self.settled = False  # succeeded or failed; a submitted call has no ``done`` to ask
        # A submitted call's outcome: on_done(None or the exception), or with_results
        # on_done(results, None) / on_done(None, exception).
        self.on_done = on_done
        self.with_results = with_results


class Coalescer(Generic[Item, Result]):
    def __init__(self, name: str, run: Runner, *, max_batch: int = 200, limit: int = 100_000,
                 observe: Callable[[str, int], None] | None = None, gather: float = 0.0) -> None:
        self.name = name
        self._run = run
        self._max_batch = max_batch
        self._limit = limit
        self._observe = observe  # (name, rows in the statement), once per statement
        self._waiting: dict[str, collections.deque[_Call]] = {}
        self._queued_items = 0
        self._flushers: dict[str, gevent.Greenlet] = {}
        self._stopped = False
        self._gather = gather
        self._gathering: dict[str, gevent.event.Event] = {}  # tenant -> set when a waiting call joins

    # -- callers -----------------------------------------------------------------------------------

    def call(self, tenant_id: str, items: list[Item]) -> list[Result]:
        """Run ``items`` (with whatever else is waiting for this tenant); their results, in order."""
        if not items:
            return []
        done = self._queue(tenant_id, _Call(list(items), wait=True)).done
        assert done is not None  # a waiting call has one
        return cast("list[Result]", done.get())  # what _succeed set, or get() raises what _fail set

    def one(self, tenant_id: str, item: Item) -> Result:
        return self.call(tenant_id, [item])[0]

    def submit(self, tenant_id: str, items: list[Item], on_done: Callable[..., None] | None = None, *,
               with_results: bool = False) -> None:
        """Queue ``items`` and return at once. Their outcome goes to ``on_done(None or the
        exception)`` — with ``with_results``, to ``on_done(results, None)`` or ``on_done(None,
        exception)`` — called from the statement's greenlet (it must not block), or without one is
        only logged. Raises ``Overflow`` when ``limit`` items are already waiting (nothing queued)."""
        if items:
            if self._queued_items + len(items) > self._limit:
                raise Overflow(f"{self.name}: {self._queued_items} items already waiting")
            self._queue(tenant_id, _Call(list(items), wait=False, on_done=on_done, with_results=with_results))

    def stop(self) -> None:
        """Let in-flight statements finish; calls queued from now on fail at once."""
        self._stopped = True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or in flight (tests, orderly shutdown); True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Work queued meanwhile for another tenant starts a flusher the first join did not cover.
        while self._flushers:
            remaining = None if deadline is None else deadline - time.monotonic()
            live = [flusher for flusher in self._flushers.values() if not flusher.dead]
            if not live or (remaining is not None and remaining <= 0):
                break
            gevent.joinall(live, timeout=remaining)
        return not self._flushers

    @property
    def queued(self) -> int:
        return self._queued_items

    # -- internals ---------------------------------------------------------------------------------

    def _queue(self, tenant_id: str, call: _Call) -> _Call:
        if self._stopped:
            raise RuntimeError(f"{self.name}: stopped")
        self._waiting.setdefault(tenant_id, collections.deque()).append(call)
        self._queued_items += len(call.items)
        if call.done is not None and tenant_id in self._gathering:
            self._gathering[tenant_id].set()  # someone waits: no more gathering
        if tenant_id not in self._flushers:
            flusher = gevent.spawn(self._flush_tenant, tenant_id)
            # Killed before it first ran, a flusher never reaches its own clean-up below.
            flusher.link(functools.partial(self._flusher_ended, tenant_id))
            self._flushers[tenant_id] = flusher
        return call

    def _flush_tenant(self, tenant_id: str) -> None:
        waiting = self._waiting[tenant_id]
        batch: list[_Call] = []
        try:
            while waiting:
                if self._gather > 0 and not any(c.done is not None for c in waiting):
                    self._gathering[tenant_id] = gevent.event.Event()
                    try:
                        self._gathering[tenant_id].wait(self._gather)
                    finally:
                        del self._gathering[tenant_id]
                batch = []
                rows = 0
                while waiting and (not batch or rows + len(waiting[0].items) <= self._max_batch):
                    call = waiting.popleft()
                    batch.append(call)
                    rows += len(call.items)
                self._queued_items -= rows
                self._run_batch(tenant_id, batch)
        except BaseException as exc:
            # Killed (shutdown): nobody may wait forever on a call that will not run, including the
            # callers of the statement that was in flight.
            failure = exc if isinstance(exc, Exception) else RuntimeError(f"{self.name}: stopped")
            self._abandon([*batch, *waiting], failure)
            self._queued_items -= sum(len(c.items) for c in waiting)
            waiting.clear()
            raise
        finally:
            del self._flushers[tenant_id]
            if not waiting:
                self._waiting.pop(tenant_id, None)

    def _flusher_ended(self, tenant_id: str, flusher: gevent.Greenlet) -> None:
        if self._flushers.get(tenant_id) is not flusher:
            return  # it ran and cleaned up after itself
        del self._flushers[tenant_id]
        waiting = self._waiting.pop(tenant_id, collections.deque())
        self._queued_items -= sum(len(c.items) for c in waiting)
        self._abandon(list(waiting), RuntimeError(f"{self.name}: stopped"))

    def _abandon(self, calls: list[_Call], failure: Exception) -> None:
        for call in calls:
            if not call.settled:
                self._fail(call, failure)

    def _run_batch(self, tenant_id: str, batch: list[_Call]) -> None:
        items = [item for call in batch for item in call.items]
        try:
            results = self._execute(tenant_id, items)
        except Exception as exc:  # noqa: BLE001 - given to the callers, or isolated below
            if len(batch) == 1 or is_transient(exc):
                for call in batch:
                    self._fail(call, exc)
                return
            # Not a fault time fixes: find whose input it is by running each call on its own.
            for call in batch:
                try:
                    self._succeed(call, self._execute(tenant_id, call.items))
                except Exception as own:  # noqa: BLE001
                    self._fail(call, own)
            return
        start = 0
        for call in batch:
            end = start + len(call.items)
            self._succeed(call, list(results[start:end]))
            start = end

    def _execute(self, tenant_id: str, items: list[Any]) -> Sequence[Any]:
        results = self._run(tenant_id, items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        if self._observe is not None:
            self._observe(self.name, len(items))
        return results

    def _succeed(self, call: _Call, results: Sequence[Any]) -> None:
        call.settled = True
        if call.done is not None:
            call.done.set(results)
        elif call.on_done is not None:
            self._tell(call.on_done, (results, None) if call.with_results else (None,))

    def _fail(self, call: _Call, exc: Exception) -> None:
        call.settled = True
        if call.done is not None:
            call.done.set_exception(exc)
        elif call.on_done is not None:
            self._tell(call.on_done, (None, exc) if call.with_results else (exc,))
        else:
            log.warning("queued work failed", extra={"operation": self.name, "items": len(call.items),
                                                      "error": repr(exc)})

    def _tell(self, on_done: Callable[..., None], outcome: tuple) -> None:
        try:
            on_done(*outcome)
        except Exception:  # one caller's callback must not fail the others' calls
            log.exception("outcome callback raised", extra={"operation": self.name})

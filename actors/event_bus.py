"""The event bus of one process: routes the tenant-scoped event log to live subscribers.

Every event is written to PostgreSQL first (``db.events.publish``, from any process) and announced
with ``NOTIFY wabot_events``. Each process runs one ``EventBus`` actor that LISTENs (a dedicated
connection, reconnected with backoff), and on each wake-up reads the events after the last id it
dispatched — so a notification lost during a database restart costs nothing: the next read after
reconnecting catches up, in id order, with no gap and no duplicate.

Subscribers register with their tenant and filter. ``subscribe`` answers with the dispatch watermark:
every event up to it has been dispatched before the subscriber joined, every later one will be, so a
subscriber that reads its backlog up to the watermark from the table resumes with no gap and no
duplicate. A subscriber whose bounded mailbox is full is cut off at once with a reason (it never slows
the others); the bus drops it from its routing table. Old events are pruned after EVENTS_RETENTION, and
audit log rows after AUDIT_RETENTION (in the same round).

Publishing: ``make_publisher`` writes one event and answers its id; ``make_notice_publisher`` queues
notices nobody waits on and writes each tenant's queued notices as one statement (group commit), so
a busy pipeline announcing every message costs a fraction of a statement per event.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import gevent
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from actors.base import Actor, MailboxFull, actor_of
from db import audit as audit_db
from db import events as events_db
from db.batch import Coalescer
from db.listen import listen_forever
from sansio.sse import Filter
from sansio.sse import frame as sse_frame

log = logging.getLogger(__name__)

BATCH = 1000


class Deliver:
    """One event on its way to every subscriber it matches: a single message object shared by all
    their mailboxes, which encodes the event once per wire format however many subscribers get it."""

    __slots__ = ("event", "_sse", "_ws")

    def __init__(self, event: events_db.StoredEvent) -> None:
        self.event = event
        self._sse: bytes | None = None
        self._ws: bytes | None = None

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = sse_frame(self.event.id, self.event.type, self.event.as_json())
        return self._sse

    def ws(self) -> bytes:
        """The WebSocket text frame ``{"type": "event", "event": {...}}``, framed by wsproto. A server's
        frames are unmasked and no extension is negotiated, so these bytes are the same on every
        connection: framed once, written as they are by each (``web.ws``)."""
        if self._ws is None:
            text = json.dumps({"type": "event", "event": self.event.as_json()}, separators=(",", ":"),
                              ensure_ascii=False, default=str)
            self._ws = bytes(Connection(ConnectionType.SERVER).send(TextMessage(data=text)))
        return self._ws


@dataclasses.dataclass
class _Entry:
    ref: Any
    tenant_id: str
    filter: Filter
    kind: str


@dataclasses.dataclass(frozen=True)
class Subscribe:
    ref: Any
    tenant_id: str
    filter: Filter
    kind: str


@dataclasses.dataclass(frozen=True)
class Unsubscribe:
    ref: Any
    reason: str


@dataclasses.dataclass(frozen=True)
class ChangeFilter:
    ref: Any
    filter: Filter


class _Wake:
    pass


class _Prune:
    pass


class StreamMetrics:
    def __init__(self, registry: Any, bus: EventBus) -> None:
        self.delivered = Counter("events_delivered", "Events written to subscribers", ["kind"], registry=registry)
        self.disconnects = Counter(
            "stream_disconnects", "Live-stream subscribers that went away, by reason", ["kind", "reason"],
            registry=registry,
        )
        registry.register(_BusCollector(bus))


class _BusCollector(Collector):
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        by_kind = GaugeMetricFamily("stream_subscribers", "Live-stream subscribers by kind", labels=["kind"])
        depth = GaugeMetricFamily("stream_mailbox_depth", "Queued events across subscribers", labels=["stat"])
        counts: dict[str, int] = {}
        total = deepest = 0
        for entry in list(self.bus.entries.values()):
            counts[entry.kind] = counts.get(entry.kind, 0) + 1
            queued = actor_of(entry.ref).mailbox_depth
            total += queued
            deepest = max(deepest, queued)
        for kind in ("sse", "ws"):
            by_kind.add_metric([kind], counts.get(kind, 0))
        depth.add_metric(["total"], total)
        depth.add_metric(["max"], deepest)
        yield by_kind
        yield depth
        yield GaugeMetricFamily("events_dispatched_id", "Last event id this process dispatched",
                                value=self.bus.high or 0)


class EventBus(Actor):
    def __init__(self, pool: Any, listen_dsn: str, retention: float, registry: Any) -> None:
        super().__init__()
        self.pool = pool
        self.listen_dsn = listen_dsn
        self.retention = retention
        self.entries: dict[str, _Entry] = {}  # actor urn -> entry
        self.by_tenant: dict[str, dict[str, _Entry]] = {}
        self.high: int | None = None  # last id dispatched
        self.metrics = StreamMetrics(registry, self)
        self._wake_pending = False
        self._stopping = False
        self._listener: gevent.Greenlet | None = None
        self._pruner: gevent.Greenlet | None = None
        self._retry: gevent.Greenlet | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._listener = gevent.spawn(
            listen_forever,
            self.listen_dsn,
            events_db.CHANNEL,
            on_notify=lambda _payload: self._wake(),
            on_connected=self._wake,
            stopping=lambda: self._stopping,
        )
        self._schedule_prune(min(self.retention / 10, 600.0))

    def on_stop(self) -> None:
        self._teardown()
        for entry in list(self.entries.values()):
            self._drop(entry, "shutdown")
            # Streams end with a last event saying why, so clients reconnect to another process.
            actor_of(entry.ref).close_stream("server shutting down")

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        self._stopping = True
        for greenlet in (self._listener, self._pruner, self._retry):
            if greenlet is not None:
                greenlet.kill(block=False)

    # -- messages ----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Wake):
            self._wake_pending = False
            try:
                return self._dispatch()
            except Exception as exc:  # noqa: BLE001 - the database is away; read again shortly
                log.warning("event dispatch failed", extra={"error": repr(exc)})
                self._retry = gevent.spawn_later(1.0, self._wake)
                return None
        if isinstance(message, Subscribe):
            return self._subscribe(message)
        if isinstance(message, Unsubscribe):
            entry = self.entries.get(message.ref.actor_urn)
            if entry is not None:
                self._drop(entry, message.reason)
            return None
        if isinstance(message, ChangeFilter):
            entry = self.entries.get(message.ref.actor_urn)
            if entry is not None:
                entry.filter = message.filter
            return None
        if isinstance(message, _Prune):
            return self._prune()
        return super().on_receive(message)

    def _wake(self) -> None:
        # Runs in the listener greenlet; a burst of notifications becomes one read.
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.actor_ref.tell(_Wake())
            except Exception:  # noqa: BLE001 - stopping
                pass

    def _subscribe(self, message: Subscribe) -> int:
        if self.high is None:
            self.high = events_db.high_water(self.pool)
        entry = _Entry(message.ref, message.tenant_id, message.filter, message.kind)
        self.entries[message.ref.actor_urn] = entry
        self.by_tenant.setdefault(message.tenant_id, {})[message.ref.actor_urn] = entry
        return self.high

    def _drop(self, entry: _Entry, reason: str) -> None:
        urn = entry.ref.actor_urn
        if self.entries.pop(urn, None) is None:
            return
        tenant = self.by_tenant.get(entry.tenant_id)
        if tenant is not None:
            tenant.pop(urn, None)
            if not tenant:
                del self.by_tenant[entry.tenant_id]
        self.metrics.disconnects.labels(entry.kind, reason).inc()

    # -- dispatch ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.high is None:
            # First contact: history before this process started is read by subscribers that ask.
            self.high = events_db.high_water(self.pool)
            return
        while True:
            batch = events_db.after(self.pool, self.high, BATCH)
            for event in batch:
                self._route(event)
                self.high = event.id
            if len(batch) < BATCH:
                return

    def _route(self, event: events_db.StoredEvent) -> None:
        subscribers = self.by_tenant.get(event.tenant_id)
        if not subscribers:
            return
        message = Deliver(event)
        for entry in list(subscribers.values()):
            if not entry.filter.matches(event.bot_id, event.type):
                continue
            try:
                entry.ref.tell(message)
            except MailboxFull:
                self._drop(entry, "overflow")
                subscriber = actor_of(entry.ref)
                subscriber.close_stream(f"too slow: more than {subscriber.mailbox_size} events waiting", too_slow=True)
            except Exception:  # noqa: BLE001 - it ended between lookups; its stream cleans up
                self._drop(entry, "gone")

    # -- retention ---------------------------------------------------------------------------------

    def _schedule_prune(self, delay: float) -> None:
        self._pruner = gevent.spawn_later(delay, _tell_quietly, self.actor_ref, _Prune())

    def _prune(self) -> None:
        try:
            removed = events_db.prune(self.pool, self.retention)
            if removed:
                log.info("events pruned", extra={"removed": removed, "retention_seconds": self.retention})
        except Exception as exc:  # noqa: BLE001 - try again next time
            log.warning("event pruning failed", extra={"error": repr(exc)})
        try:
            # The audit log's retention is the owner's (AUDIT_RETENTION, stored when migrations run).
            removed = audit_db.prune(self.pool)
            if removed:
                log.info("audit log pruned", extra={"removed": removed})
        except Exception as exc:  # noqa: BLE001 - try again next time
            log.warning("audit log pruning failed", extra={"error": repr(exc)})
        self._schedule_prune(min(self.retention / 10, 600.0))


def _tell_quietly(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001
        pass


def make_publisher(pool: Any, published: Any = None) -> Callable[..., int | None]:
    """``publish(tenant_id, bot_id, type, payload) -> event id`` for any process; failures are logged,
    never raised, so a database fault cannot stop the work that wanted to announce something."""

    def publish(tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> int | None:
        try:
            event_id = events_db.publish(pool, tenant_id, bot_id, event_type, payload)
        except Exception as exc:  # noqa: BLE001
            log.warning("event not published", extra={"type": event_type, "error": repr(exc)})
            return None
        if published is not None:
            published.labels(event_type).inc()
        return event_id

    return publish


# A notice waits this long for others before its statement runs: a dashboard does not see 20 ms, and
# under load the database runs one statement for many notices instead of one per few.
NOTICE_GATHER = 0.02


class NoticePublisher:
    """``publish(tenant_id, bot_id, type, payload) -> None`` that never waits and never raises.

    Notices of one tenant are queued on a ``Coalescer``: one statement per tenant is in flight at a
    time, each gathering notices for ``NOTICE_GATHER`` first, and everything queued meanwhile goes in
    the next one, in the order it was published (the coalescer runs a tenant's queue first in, first
    out). A notice that cannot be queued (too many waiting during an outage, or stopped) is logged as
    not published; one whose statement fails is logged by the coalescer."""

    def __init__(self, pool: Any, published: Any = None, *, limit: int = 100_000) -> None:
        self._pool = pool
        self._published = published
        self._coalescer: Coalescer = Coalescer("events.publish", self._write, limit=limit, gather=NOTICE_GATHER)
        self.dropped = 0  # notices refused before they were queued

    def __call__(self, tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> None:
        try:
            self._coalescer.submit(tenant_id, [(bot_id, event_type, payload)])
        except Exception as exc:  # noqa: BLE001 - announcing must never stop the work announced
            self.dropped += 1
            log.warning("event not published", extra={"type": event_type, "error": repr(exc)})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued notice is written or has failed; True if none is left."""
        return self._coalescer.flush(timeout)

    def stop(self) -> None:
        """Notices already queued are still written; later ones are dropped (and logged)."""
        self._coalescer.stop()

    @property
    def queued(self) -> int:
        return self._coalescer.queued

    def _write(self, tenant_id: str, rows: list[tuple[str | None, str, dict]]) -> list[int]:
        ids = events_db.publish_many(self._pool, tenant_id, rows)
        # Counted here, after the commit, so a failed statement counts nothing; a combined statement
        # that failed and is then re-run call by call counts each event once, when its own run commits.
        if self._published is not None:
            for _, event_type, _ in rows:
                self._published.labels(event_type).inc()
        return ids


def make_notice_publisher(pool: Any, published: Any = None, *, limit: int = 100_000) -> NoticePublisher:
    """A publisher of notices whose id nobody needs: called like ``make_publisher``'s function, it
    queues the event and returns None at once; ``flush(timeout)`` and ``stop()`` for shutdown and
    tests. ``limit`` bounds the notices waiting (an outage drops, and logs, the ones beyond it)."""
    return NoticePublisher(pool, published, limit=limit)

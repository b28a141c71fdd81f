"""Live event streams over HTTP: ``GET /api/v1/events`` (server-sent events).

Each client gets a ``Subscriber`` actor registered with the process's event bus. The request's own
greenlet writes: first the backlog after the client's resume position (read from the event table,
tenant-scoped, up to the bus's watermark), then live events from the subscriber's hand-off, with a
comment heartbeat whenever the stream is idle for ``SSE_HEARTBEAT``. A client that went away is found
by the heartbeat writes (the second write after a close fails), and then the subscriber and its bus
registration go with the request — nothing of a closed client outlives two heartbeats.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.queue
import pykka
from flask import Response, g
from prometheus_client import Counter

from actors.base import actor_of
from actors.event_bus import Subscribe, Unsubscribe
from actors.subscriber import Closing, Subscriber
from core import context
from core.root import WebRoot
from db import events as events_db
from sansio import sse
from web.api import api_blueprint, error_responses, operation
from web.auth import session_check, system
from web.errors import ApiError, bad_request
from web.schemas.streams import EventsQuery, StreamHeaders

blueprint = api_blueprint("streams", __name__, "Live events", "The tenant's events as server-sent events, with"
                          " resume; the same events (and commands) over a WebSocket at /api/v1/ws.")

STREAM_DESCRIPTION = """A `text/event-stream` of the tenant's events. Each event is sent as `id: <event id>`,
`event: <type>`, `data: {"id", "type", "bot_id", "payload", "created_at"}`. The stream starts with
`retry: <SSE_RETRY>` and a `: connected` comment; an idle stream gets a `: keepalive` comment every
`SSE_HEARTBEAT` seconds.

**Resume**: send `Last-Event-ID: <id>` (browsers do on reconnect) or `?last_event_id=<id>`: every
event after that id (kept for `EVENTS_RETENTION`) comes first, then live ones — no gap, no duplicate.
Without either, the stream starts with the events after the moment of connecting.

**Event types**: `bot.state` `{state, reason, attempt, next_retry_at, banned_until}`, `bot.qr` `{codes}`,
`bot.pair_code` `{code}`, `bot.paired` `{jid}`, `message.in`, `message.out`, `message.status` (delivery
and read receipts), `outbox.dead`, `ai.error`, `conversation.state`.

A client that falls `SSE_BUFFER` events behind gets `event: stream.closed` with `{"reason",
"last_event_id"}` and is disconnected; so is every client when the server shuts down, and a
dashboard session's stream when the session ends. Reconnect with `Last-Event-ID` to continue.

Without an `Authorization` header, a signed-in dashboard session's cookie is accepted."""

BACKLOG_PAGE = 500
SUBSCRIBE_TIMEOUT = 5.0


def parse_filter(bots: list[str], types: list[str]) -> sse.Filter:
    bot_ids = set()
    for raw in sse.split_list(bots):
        try:
            bot_ids.add(str(uuid.UUID(raw)))
        except ValueError:
            raise bad_request("bot", f"{raw!r} is not a bot id") from None
    type_set = set()
    for raw in sse.split_list(types):
        if len(raw) > 100 or not all(c.isalnum() or c in "._-*" for c in raw):
            raise bad_request("type", f"{raw[:100]!r} is not an event type")
        type_set.add(raw)
    return sse.Filter(frozenset(bot_ids), frozenset(type_set))


def open_subscription(
    root: WebRoot, tenant_id: str, flt: sse.Filter, kind: str
) -> tuple[pykka.ActorRef[Subscriber], Subscriber, int, Counter]:
    """Start a subscriber and register it with the root's bus; returns (ref, actor, watermark, the
    counter of events delivered to this kind of stream)."""
    bus, metrics = root.bus, root.bus_metrics
    if bus is None or metrics is None:
        raise ApiError(503, "streams_unavailable", "this process does not serve live streams")
    subscriber = Subscriber(tenant_id, root.settings.sse_buffer, kind)
    # Runs in the request's greenlet, which is the one that writes this client's stream.
    ref = subscriber.start_inline()
    try:
        high: int = bus.ask(Subscribe(ref, tenant_id, flt, kind), block=True, timeout=SUBSCRIBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the database or the bus is unavailable
        subscriber.kill()
        raise ApiError(503, "streams_unavailable", f"cannot subscribe right now: {exc}") from None
    return ref, subscriber, high, metrics.delivered.labels(kind)


def close_subscription(root: WebRoot, ref: pykka.ActorRef[Subscriber], reason: str) -> None:
    """Unregister and end a subscriber; safe outside a request (streams end after the view returned)."""
    bus = root.bus
    if bus is not None:
        try:
            bus.tell(Unsubscribe(ref, reason))
        except Exception:  # noqa: BLE001 - the bus is stopping
            pass
    actor_of(ref).end()


def backlog(pool: Any, tenant_id: str, flt: sse.Filter, after: int, up_to: int) -> Iterator[events_db.StoredEvent]:
    """The tenant's events in (after, up_to] that pass the filter, in id order, page by page."""
    cursor = after
    while cursor < up_to:
        page = events_db.for_tenant(
            pool, tenant_id, cursor, up_to, flt.bot_ids or None, flt.exact_types, BACKLOG_PAGE
        )
        for event in page:
            cursor = event.id
            if flt.matches(event.bot_id, event.type):
                yield event
        if len(page) < BACKLOG_PAGE:
            return


@operation(blueprint, "get", "/events", scope="read", auth="key_or_session", operation_id="streamEvents",
           summary="The tenant's live events (server-sent events)", description=STREAM_DESCRIPTION,
           responses={200: {"description": "a text/event-stream of the tenant's events"}, **error_responses(400, 503)})
def events(query: EventsQuery, header: StreamHeaders) -> Any:
    root = system()
    settings = root.settings
    last = sse.resume_position(header.last_event_id, query.last_event_id)
    flt = parse_filter(query.bot, query.type)
    tenant_id = g.tenant_id
    ref, subscriber, high, delivered = open_subscription(root, tenant_id, flt, "sse")
    work = context.current()
    still_valid = session_check(root, g.get("person"))

    def stream() -> Iterator[bytes]:
        context.set_current(work)
        subscriber.bind_writer()
        reason = "client_closed"
        sent = high if last is None else last
        try:
            yield sse.retry(settings.sse_retry) + sse.comment("connected")
            if last is not None and last < high:
                for event in backlog(root.pool, tenant_id, flt, last, high):
                    sent = event.id
                    yield sse.frame(event.id, event.type, event.as_json())
                    delivered.inc()
                sent = max(sent, high)
            check_at = time.monotonic() + settings.sse_heartbeat
            while True:
                if still_valid is not None and time.monotonic() >= check_at:
                    # A session signed out, expired or removed from the tenant ends its streams too.
                    check_at = time.monotonic() + settings.sse_heartbeat
                    if not still_valid():
                        reason = "signed_out"
                        yield sse.frame(None, "stream.closed", {"reason": "signed out", "last_event_id": sent})
                        return
                try:
                    item = subscriber.next(timeout=settings.sse_heartbeat)
                except gevent.queue.Empty:
                    yield sse.comment("keepalive")
                    continue
                if isinstance(item, Closing):
                    reason = "overflow" if item.too_slow else "closed"
                    yield sse.frame(None, "stream.closed", {"reason": item.reason, "last_event_id": sent})
                    return
                if item.event.id <= sent:
                    continue
                sent = item.event.id
                yield item.sse()  # encoded once for every subscriber of this event
                delivered.inc()
        finally:
            close_subscription(root, ref, reason)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

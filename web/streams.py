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
from typing import Any, Iterator

import gevent
import gevent.queue
from flask import Blueprint, Response, g, request

from actors.base import actor_of
from actors.event_bus import Subscribe, Unsubscribe
from actors.subscriber import Closing, Subscriber
from core import context
from db import events as events_db
from sansio import sse
from web.auth import require_tenant_or_session, session_check, system
from web.errors import ApiError, bad_request

blueprint = Blueprint("streams", __name__)

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


def open_subscription(root: Any, tenant_id: str, flt: sse.Filter, kind: str) -> tuple[Any, Subscriber, int]:
    """Start a subscriber and register it with the root's bus; returns (ref, actor, watermark)."""
    bus = getattr(root, "bus", None)
    if bus is None:
        raise ApiError(503, "streams_unavailable", "this process does not serve live streams")
    subscriber = Subscriber(tenant_id, root.settings.sse_buffer, kind)
    # Runs in the request's greenlet, which is the one that writes this client's stream.
    ref = subscriber.start_inline()
    try:
        high = bus.ask(Subscribe(ref, tenant_id, flt, kind), timeout=SUBSCRIBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the database or the bus is unavailable
        actor_of(ref).kill()
        raise ApiError(503, "streams_unavailable", f"cannot subscribe right now: {exc}") from None
    return ref, actor_of(ref), high


def close_subscription(root: Any, ref: Any, reason: str) -> None:
    """Unregister and end a subscriber; safe outside a request (streams end after the view returned)."""
    bus = getattr(root, "bus", None)
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


@blueprint.get("/events")
@require_tenant_or_session
def events() -> Any:
    root = system()
    settings = root.settings
    try:
        last = sse.resume_position(request.headers.get("Last-Event-ID"), request.args.get("last_event_id"))
    except sse.BadResume as exc:
        raise bad_request("last_event_id", str(exc)) from None
    flt = parse_filter(request.args.getlist("bot"), request.args.getlist("type"))
    tenant_id = g.tenant_id
    ref, subscriber, high = open_subscription(root, tenant_id, flt, "sse")
    work = context.current()
    delivered = root.bus_metrics.delivered.labels("sse")
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
                    reason = "overflow" if item.reason.startswith("too slow") else "closed"
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

"""One live-stream client (SSE or WebSocket) as an actor.

Its bounded mailbox (``SSE_BUFFER``) is the client's buffer: the bus ``tell``s it events, and it
passes them one at a time to the connection's writer through a one-slot hand-off. A writer stuck on a
client that does not read blocks that hand-off, the mailbox fills, and the bus cuts the subscriber off
(``close_stream``) — the stalled client costs the others nothing.

``close_stream`` is called by the bus directly (also at shutdown) (the mailbox is full, so a message could not get in): it
replaces whatever waits in the hand-off with a closing notice, so the writer sends a last event that
says why and ends the stream; if the client does not even take that within ``grace`` seconds, the
connection's greenlet is killed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gevent
import gevent.queue

from actors.base import Actor
from actors.event_bus import Deliver


@dataclasses.dataclass(frozen=True)
class Closing:
    reason: str


class Subscriber(Actor):
    def __init__(self, tenant_id: str, mailbox_size: int, kind: str = "sse", grace: float = 5.0) -> None:
        self.mailbox_size = mailbox_size  # read by the base class when it builds the inbox
        super().__init__()
        self.tenant_id = tenant_id
        self.kind = kind
        self.grace = grace
        self.handoff: gevent.queue.Queue = gevent.queue.Queue(maxsize=1)
        self.writer: gevent.Greenlet | None = None  # the connection's greenlet, killed if it hangs
        self.closed_reason: str | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Deliver):
            if self.closed_reason is None:
                self.handoff.put(message.event)  # blocks while the writer is busy: the backpressure
            return None
        return super().on_receive(message)

    def end(self) -> None:
        """The connection is gone: stop taking events and stop the actor without a kill. Draining
        with get() wakes a handler blocked on the hand-off, so the stop request gets handled."""
        if self.closed_reason is None:
            self.closed_reason = "connection closed"
        while True:
            try:
                self.handoff.get_nowait()
            except gevent.queue.Empty:
                break
        try:
            self.actor_ref.stop(block=False)
        except Exception:  # noqa: BLE001 - already stopped
            pass

    def close_stream(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        # No yield between clearing and putting: the slot is ours before the blocked handler wakes.
        self.handoff.queue.clear()
        self.handoff.put_nowait(Closing(reason))
        writer = self.writer
        if writer is not None:
            gevent.spawn_later(self.grace, writer.kill, block=False)

"""One live-stream client (SSE or WebSocket) as an actor.

The bus ``tell``s it events; its bounded mailbox (``SSE_BUFFER``) is the client's buffer. It runs
inline (``Actor.start_inline``): the connection's own greenlet is the actor's thread and takes each
message with ``next()`` before writing it, so there is no extra greenlet or hand-off per subscriber.
A writer stuck on a client that does not read stops taking messages, the mailbox fills, and the bus
cuts the subscriber off (``close_stream``) — the stalled client costs the others nothing.

``close_stream`` is called by the bus directly (the mailbox is full, so a plain message could not get
in; also at shutdown): it drops what is queued and leaves a ``Closing`` notice that bypasses the bound,
so the writer sends a last event saying why and ends the stream; if the client does not even take
that within ``grace`` seconds, the connection's greenlet is killed (a timer that ``end`` cancels, so
a writer that ended in time — its greenlet perhaps serving the connection's next request — is left
alone).
"""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

import gevent

from actors.base import Actor, current_greenlet
from actors.event_bus import Deliver


@dataclasses.dataclass(frozen=True)
class Closing:
    """The stream ends: ``reason`` is for people (sent to the client as is); ``too_slow`` says the
    client was cut off because it fell ``SSE_BUFFER`` events behind (the streams tell it so and count
    it as an overflow), as opposed to the server ending every stream (shutting down, stopped)."""

    reason: str
    too_slow: bool = False
    bypasses_bound = True  # must reach a full mailbox


class Subscriber(Actor):
    def __init__(self, tenant_id: str, mailbox_size: int, kind: str = "sse", grace: float = 5.0) -> None:
        self.mailbox_size = mailbox_size  # read by the base class when it builds the inbox
        super().__init__()
        self.tenant_id = tenant_id
        self.kind = kind
        self.grace = grace
        self.closed_reason: str | None = None
        self._reaper: gevent.Greenlet | None = None  # kills a writer that does not end within grace

    def bind_writer(self) -> None:
        """The calling greenlet takes the messages and writes them (the one killed if it hangs)."""
        self._greenlet = current_greenlet()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Deliver):
            return message if self.closed_reason is None else None
        if isinstance(message, Closing):
            return message
        return super().on_receive(message)

    def next(self, timeout: float) -> Deliver | Closing:
        """The next event (or closing notice) for the connection to write; ``queue.Empty`` after
        ``timeout`` seconds without one (time for a heartbeat)."""
        while True:
            item = self.receive_inline(timeout)
            if item is not None:
                return item
            if self.actor_stopped.is_set():
                return Closing("stream stopped")

    def end(self) -> None:
        """The connection is gone: the actor ends with it."""
        if self.closed_reason is None:
            self.closed_reason = "connection closed"
        if self._reaper is not None:  # the writer ended in time: nothing left to kill
            self._reaper.kill(block=False)
            self._reaper = None
        self.finish_inline()

    def close_stream(self, reason: str, too_slow: bool = False) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        while True:  # what is queued will not be written; the client resumes from its last id
            try:
                self.actor_inbox.get_nowait()
            except queue.Empty:
                break
        try:
            self.actor_ref.tell(Closing(reason, too_slow))
        except Exception:  # noqa: BLE001 - already ended
            return
        writer = self._greenlet
        if writer is not None:
            self._reaper = gevent.spawn_later(self.grace, writer.kill, block=False)

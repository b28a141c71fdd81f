"""The soak's stream subscribers (issue 15): clients of a tenant's live events that come and go the
way real ones do, and record every event id they were given so the history checker can tell whether
each saw every event of its tenant exactly once across its resumes.

- ``SseSubscriber``: ``GET /api/v1/events`` (tests/sse_client.py, the project's tested SSE client).
- ``WsSubscriber``: ``GET /api/v1/ws``, framed by ``wsproto``.

Each runs ``sessions()`` as a greenlet: connect with ``last_event_id`` (the last id it saw; 0 on the
first connection, so it sees the tenant's events from the beginning), read for a while, hang up,
reconnect. A ``slow`` subscriber stalls now and then with a tiny receive buffer, long enough for the
server to cut it off as too slow; it resumes like any other. A connection that fails (a web process
killed, nginx answering 502 meanwhile) is counted and retried after a short pause.
"""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import gevent
import gevent.event
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.sse_client import SSEClient


class Subscriber:
    kind = "?"

    def __init__(self, name: str, base_url: str, key: str, rng: random.Random, stop: gevent.event.Event,
                 *, slow: bool = False) -> None:
        self.name, self.base_url, self.key, self.rng, self.stop, self.slow = name, base_url, key, rng, stop, slow
        self.seen: list[int] = []  # event ids in arrival order, across connections
        self.resumed_from: list[int] = []  # per connection, the last_event_id it asked to resume after
        self.first_seen_on: dict[int, int] = {}  # event id -> the connection (index) that first brought it
        self.twice: list[str] = []  # an event brought again: which connections, resumed from where
        self.connections = 0
        self.failed_connects = 0
        self.cut_off = 0  # ended by the server (too slow, a process stopping)

    @property
    def last_id(self) -> int:
        return self.seen[-1] if self.seen else 0

    def opened(self) -> None:
        self.resumed_from.append(self.last_id)
        self.connections += 1

    def saw(self, event_id: int) -> None:
        conn = self.connections - 1
        first = self.first_seen_on.setdefault(event_id, conn)
        if first != conn or event_id in self.seen[-50:]:
            self.twice.append(f"{event_id} on connection {first} (resumed after {self.resumed_from[first]}) and"
                              f" {conn} (resumed after {self.resumed_from[conn]})")
        self.seen.append(event_id)

    def sessions(self) -> None:
        while not self.stop.is_set():
            try:
                self.session(self.rng.uniform(3, 12))
            except (OSError, AssertionError, EOFError, ValueError):
                self.failed_connects += 1
            self.stop.wait(self.rng.uniform(0.2, 1.5))

    def catch_up(self, high_water: int, timeout: float) -> bool:
        """One last connection, read until the event ``high_water`` arrived (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.last_id < high_water and time.monotonic() < deadline:
            try:
                self.session(min(5.0, deadline - time.monotonic()), until=high_water)
            except (OSError, AssertionError, EOFError, ValueError):
                self.failed_connects += 1
                gevent.sleep(0.5)
        return self.last_id >= high_water

    def ending(self, until: int | None) -> bool:
        """The traffic stopped: hang up now (a catch-up connection, ``until`` given, reads on). Two
        connections of one subscriber at once would each bring the last events."""
        return until is None and self.stop.is_set()

    def session(self, seconds: float, until: int | None = None) -> None:
        raise NotImplementedError


class SseSubscriber(Subscriber):
    kind = "sse"

    def session(self, seconds: float, until: int | None = None) -> None:
        stall = self.slow and until is None and self.rng.random() < 0.5
        client = SSEClient(self.base_url, key=self.key, last_event_id=self.last_id, timeout=5,
                           rcvbuf=2048 if stall else None, read=not stall)
        self.opened()
        taken = 0
        try:
            if client.status != 200:
                raise AssertionError(f"status {client.status}")
            if stall:  # nobody reads: the server's writes back up until it cuts the stream off
                self.stop.wait(seconds)
                client.start_reading()
            deadline = time.monotonic() + (1.0 if stall else seconds)
            while time.monotonic() < deadline and not client.ended and not self.ending(until):
                taken = self._take(client, taken)
                if until is not None and self.last_id >= until:
                    return
                gevent.sleep(0.05)
            taken = self._take(client, taken)
            if client.ended:
                self.cut_off += 1
        finally:
            client.close()

    def _take(self, client: SSEClient, taken: int) -> int:
        events = client.events
        for event in events[taken:]:
            if event.id is not None and event.event != "stream.closed":
                self.saw(int(event.id))
        return len(events)


class WsSubscriber(Subscriber):
    kind = "ws"

    def session(self, seconds: float, until: int | None = None) -> None:
        parts = urlsplit(self.base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.create_connection((host, port), timeout=5)
        self.opened()
        ws = WSConnection(ConnectionType.CLIENT)
        target = "/api/v1/ws?" + urlencode({"last_event_id": self.last_id})
        try:
            sock.sendall(ws.send(Request(host=f"{host}:{port}", target=target,
                                         extra_headers=[(b"authorization", f"Bearer {self.key}".encode())])))
            deadline = time.monotonic() + seconds
            accepted, partial = False, ""
            sock.settimeout(0.5)
            while time.monotonic() < deadline and not self.ending(until):
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    self.cut_off += 1
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        accepted = True
                    elif isinstance(event, (RejectConnection, RejectData)):
                        raise AssertionError("the upgrade was refused")
                    elif isinstance(event, Ping):
                        sock.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.cut_off += 1
                        return
                    elif isinstance(event, TextMessage):  # a frame's worth, maybe part of a message
                        partial += event.data
                        if event.message_finished:
                            self._message(partial)
                            partial = ""
                if until is not None and self.last_id >= until:
                    break
            if accepted:
                sock.sendall(ws.send(CloseConnection(code=1000)))
        finally:
            sock.close()

    def _message(self, data: str) -> None:
        message: dict[str, Any] = json.loads(data)
        if message.get("type") == "event":
            self.saw(int(message["event"]["id"]))

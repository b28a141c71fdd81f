"""A TCP fault proxy for the soak (issue 15): it sits between the platform and a server (PostgreSQL's
unix socket or a TCP port) and, on command, adds latency, resets every connection, or becomes a
black hole.

- ``latency(seconds)``: every chunk is held that long before it is passed on (each direction).
- ``reset()``: every open connection is closed with a TCP reset (``SO_LINGER`` 0), as a crashed
  middlebox or a server restart does; new connections are taken as usual.
- ``black_hole(True)``: nothing passes in either direction and new connections are accepted but never
  forwarded, so the client waits until its own timeouts fire — the fault keepalives and deadlines
  exist for; ``black_hole(False)`` lets the held data through again.
- ``passing()``: back to passing everything at once.

Runs on gevent in the process that owns it (the soak's driver); every greenlet it starts is in one
group, killed by ``stop()``.
"""

from __future__ import annotations

import socket
import struct

import gevent
import gevent.event
import gevent.pool
from gevent.server import StreamServer

CHUNK = 65536


class FaultProxy:
    """Listens on 127.0.0.1 (``port``) and forwards to ``target``: ``(host, port)`` or a unix path."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.delay = 0.0
        self._open = gevent.event.Event()  # set: data flows; clear: a black hole
        self._open.set()
        self._conns: set[socket.socket] = set()
        self._tasks = gevent.pool.Pool()  # unbounded; StreamServer spawns connections into it
        self.accepted = 0
        self.resets = 0
        self._server = StreamServer(("127.0.0.1", 0), self._handle, spawn=self._tasks)
        self._server.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    # -- faults ------------------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        self.delay = max(0.0, seconds)

    def black_hole(self, on: bool = True) -> None:
        if on:
            self._open.clear()
        else:
            self._open.set()

    def passing(self) -> None:
        self.delay = 0.0
        self._open.set()

    def reset(self) -> None:
        """Reset every open connection (both sides)."""
        conns, self._conns = self._conns, set()
        for sock in conns:
            self.resets += 1
            _abort(sock)

    def stop(self) -> None:
        self._server.stop(timeout=1)
        self.reset()
        self._tasks.kill(block=True, timeout=2)

    # -- forwarding --------------------------------------------------------------------------------

    def _handle(self, client: socket.socket, _address: object) -> None:
        self.accepted += 1
        self._open.wait()
        try:
            if isinstance(self.target, str):
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
            else:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
        except OSError:
            _abort(client)
            return
        self._conns.update((client, upstream))
        back = self._tasks.spawn(self._pump, upstream, client)
        try:
            self._pump(client, upstream)
        finally:
            back.kill(block=False)
            for sock in (client, upstream):
                self._conns.discard(sock)
                try:
                    sock.close()
                except OSError:
                    pass

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                _abort(sink)
                return
            if self.delay:
                gevent.sleep(self.delay)
            self._open.wait()
            try:
                sink.sendall(data)
            except OSError:
                _abort(source)
                return


def _abort(sock: socket.socket) -> None:
    """Close with a reset rather than an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass

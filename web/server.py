"""The HTTP server: gevent's WSGI server with gevent-websocket's handler, plus the two timeouts a
long-running service needs — how long a client may take to send its request headers, and how long an
idle keep-alive connection is kept — so slow or silent clients cannot pin connections forever.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import gevent
import gevent.socket
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

log = logging.getLogger(__name__)


class TimedHandler(WebSocketHandler):
    header_timeout = 10.0
    keepalive_timeout = 75.0
    _served = 0

    def read_requestline(self) -> Any:
        # Waiting for the first request line is bounded by the header timeout; waiting for the next
        # request on a kept-alive connection by the (longer) keep-alive timeout.
        limit = self.keepalive_timeout if self._served else self.header_timeout
        self._served += 1
        with gevent.Timeout(limit, False):  # type: ignore[arg-type]  # False: end quietly (documented; not in the stubs)
            return super().read_requestline()
        return ""  # timed out: an empty line makes the handler close the connection

    def read_request(self, raw_requestline: str) -> Any:
        with gevent.Timeout(self.header_timeout, ValueError("request headers not received in time")):
            return super().read_request(raw_requestline)

    def upgrade_websocket(self) -> Any:
        # gevent-websocket answers 101 before the app runs; upgrade only what the app accepts, so a
        # refused request (wrong key, wrong path) runs as plain HTTP and gets its 401/400 JSON.
        gate = getattr(self.application, "websocket_gate", None)
        if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket" and (gate is None or not gate(self.environ)):
            return None
        return super().upgrade_websocket()

    def log_request(self) -> None:
        # Access is recorded as metrics and JSON logs by the app; the handler's own line is noise.
        pass


def make_server(app: Any, settings: Any, port: int | None = None) -> WSGIServer:
    """The WSGI server for ``app`` on HOST and ``port`` (PORT unless given)."""
    handler = type(
        "ConfiguredHandler",
        (TimedHandler,),
        {"header_timeout": settings.http_header_timeout, "keepalive_timeout": settings.http_keepalive_timeout},
    )
    listener = _listener(settings.host, settings.port if port is None else port)
    return WSGIServer(listener, app, handler_class=handler, log=None, error_log=log)


def _listener(host: str, port: int) -> Any:
    """The listening socket, with TCP_NODELAY (inherited by accepted sockets on Linux): without it a
    keep-alive response waits ~40 ms for the client's delayed ACK when written in two parts."""
    sock = gevent.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock

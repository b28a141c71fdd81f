"""Keep-alive HTTP/1.1 connections to one origin (the AI provider), on the standard library's
``http.client``: it writes each request and parses each answer; this module only keeps connections
and turns their failures into two kinds.

- One request, one answer. The head ``http.client`` writes and the body go in one write (it would
  send them apart: a second system call, and a second segment for the server to wait on);
  ``TCP_NODELAY`` is set.
- Connections are reused most recently used first while the answer allowed it
  (``sansio.ai_http.reusable``); at most ``max_idle`` are kept, none idle longer than
  ``idle_timeout`` seconds.
- A kept connection the server closed while it was idle is not polled for (under gevent a readiness
  check goes through the hub: the largest cost of httpcore's pool): it is noticed when the request on
  it gets no byte of an answer (``RemoteDisconnected``, a reset or a broken pipe), and the request
  goes once more on a fresh connection, which the server never saw it on.
- https with the standard ``ssl`` module's certificate and host name checks (``SSL_CERT_FILE`` or
  ``SSL_CERT_DIR`` when set, else certifi's roots when installed, else the system's). Through an
  ``http://`` proxy when one is given: requests in absolute form for http, a ``CONNECT`` tunnel for https.
- The answer's body is read up to ``max_body`` bytes; a larger one is refused (``BodyTooLarge``)
  and its connection closed.
- Failures: ``TransportTimeout`` (a socket timeout, while connecting, sending or waiting) and
  ``TransportError`` (anything else: refused, reset, TLS, a malformed answer). A ``BaseException``
  arriving mid-exchange (a ``gevent.Timeout``, ``GreenletExit``) closes that connection and goes on.

Not thread-safe and needs no lock under gevent: nothing between taking a connection from the idle
list and putting one back yields.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from sansio import ai_http
from sansio.ai_http import Endpoint, Proxy


class TransportError(Exception):
    """No answer: the connection failed or the answer was not HTTP."""


class TransportTimeout(TransportError):
    """A socket timeout while connecting, sending or waiting for the answer."""


class BodyTooLarge(TransportError):
    """The answer's body is larger than the limit; it was not read."""


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage  # case-insensitive ``get``
    body: bytes


def default_ssl_context() -> ssl.SSLContext:
    """Certificates and host names checked: against ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when the
    environment names them (OpenSSL reads them; a company's own CA, as httpx honoured them), else
    certifi's roots when installed, else the system's."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context()
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Connection(http.client.HTTPConnection):
    """A connection that sends a request's head and body in one write: ``http.client`` sends them
    separately (``send`` twice), which costs a system call and, without ``TCP_NODELAY`` on either
    side, can hold the body back for a delayed ACK. ``send`` is the class's documented way out."""

    _held: list[bytes] | None = None

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: Any) -> None:
        if self._held is not None and isinstance(data, bytes):
            self._held.append(data)
        else:
            super().send(data)

    def request_at_once(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> None:
        self._held = []
        try:
            self.request(method, target, body=body, headers=headers)
            data = b"".join(self._held)
        finally:
            self._held = None
        super().send(data)


class _TlsConnection(_Connection, http.client.HTTPSConnection):
    pass


class _Stale(Exception):
    """The connection ended before any byte of the answer."""


# No byte of the answer, the connection gone: a FIN (RemoteDisconnected), an RST, a TLS connection
# ended with or without its close_notify.
_STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError,
                 ssl.SSLZeroReturnError)


class ConnectionPool:
    def __init__(self, origin: Endpoint, *, timeout: float, max_idle: int = 16, idle_timeout: float = 30.0,
                 proxy: Proxy | None = None, ssl_context: ssl.SSLContext | None = None,
                 max_body: int = ai_http.MAX_RESPONSE_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.origin = origin
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._proxy = proxy
        self._max_body = max_body
        self._clock = clock
        self._ssl = (ssl_context or default_ssl_context()) if origin.scheme == "https" else None
        self._idle: list[tuple[_Connection, float]] = []  # (connection, idle since)
        # Through an http proxy, plain http requests name the whole URL; everything else the path.
        self._absolute = proxy is not None and origin.scheme == "http"
        self._proxy_headers = ({"Proxy-Authorization": proxy.authorization}
                               if self._absolute and proxy is not None and proxy.authorization else {})

    def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        """One exchange; ``target`` is the path (and query) on the origin."""
        if self._absolute:
            target = self.origin.origin + target
            headers = {**headers, **self._proxy_headers}
        conn, reused = self._checkout()
        try:
            return self._exchange(conn, method, target, body, headers)
        except _Stale:
            if not reused:
                raise TransportError("the server closed the connection without answering") from None
        # Closed by the server while idle: it never saw the request. Once more, on a new connection
        # (the other kept ones may be just as old).
        try:
            return self._exchange(self._connect(), method, target, body, headers)
        except _Stale:
            raise TransportError("the server closed the connection without answering") from None

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    @property
    def idle(self) -> int:
        """Connections kept for the next requests."""
        return len(self._idle)

    # -- connections -------------------------------------------------------------------------------

    def _checkout(self) -> tuple[_Connection, bool]:
        now = self._clock()
        while self._idle:
            conn, since = self._idle.pop()
            if now - since < self._idle_timeout:
                return conn, True
            conn.close()
        return self._connect(), False

    def _checkin(self, conn: _Connection) -> None:
        if len(self._idle) >= self._max_idle:
            conn.close()
        else:
            self._idle.append((conn, self._clock()))

    def _connect(self) -> _Connection:
        origin, proxy = self.origin, self._proxy
        host, port = (proxy.host, proxy.port) if proxy is not None else (origin.host, origin.port)
        conn: _Connection
        if self._ssl is not None:
            conn = _TlsConnection(host, port, timeout=self._timeout, context=self._ssl)
            if proxy is not None:
                tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                conn.set_tunnel(origin.host, origin.port, headers=tunnel)
        else:
            conn = _Connection(host, port, timeout=self._timeout)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise TransportTimeout(f"connecting to {origin.origin}: timed out") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, DNS, TLS, a proxy's no
            conn.close()
            raise TransportError(f"connecting to {origin.origin}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    # -- one exchange ------------------------------------------------------------------------------

    def _exchange(self, conn: _Connection, method: str, target: str, body: bytes | None,
                  headers: dict[str, str]) -> Reply:
        keep = False
        try:
            try:
                conn.request_at_once(method, target, body, headers)
                response = conn.getresponse()
            except _STALE_ERRORS as exc:
                raise _Stale() from exc
            length = response.getheader("content-length")
            chunked = "chunked" in (response.getheader("transfer-encoding") or "").lower()
            if length is not None and length.strip().isdigit() and not chunked:
                if int(length) > self._max_body:
                    raise BodyTooLarge(f"the answer's body is {int(length)} bytes, more than {self._max_body}")
                data = response.read()  # as long as it said; IncompleteRead when cut short
            else:  # chunked, or until the server closes: read one byte past the limit to know
                data = response.read(self._max_body + 1)
                if len(data) > self._max_body:
                    raise BodyTooLarge(f"the answer's body is more than {self._max_body} bytes")
            framed = (length is not None or chunked or method == "HEAD" or response.status in (204, 304))
            keep = response.isclosed() and ai_http.reusable(response.version, response.headers, framed)
            return Reply(response.status, response.headers, data)
        except TimeoutError as exc:
            raise TransportTimeout(f"{self.origin.origin}: timed out") from exc
        except (OSError, http.client.HTTPException) as exc:  # reset mid-answer, not HTTP, cut short
            raise TransportError(f"{self.origin.origin}: {exc!r}") from exc
        finally:
            if keep:
                self._checkin(conn)
            else:
                conn.close()


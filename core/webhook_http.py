"""One webhook request, on the standard library's ``http.client``, to the address that was checked.

``resolve`` looks the host up (gevent's resolver under the patched ``socket``) and applies the
outbound address policy (``sansio.outbound_address``) to every address found; ``post`` then connects
to the first allowed address itself — never to the name, so a second lookup cannot return something
else (DNS rebinding) — with the name kept for the ``Host`` header, TLS's server name and its
certificate check. Both the web app (when a URL is saved) and the delivery workers (before every
attempt) call ``resolve``.

A request is one connection (``Connection: close``): receivers are many and each sees a few requests
a second at most. Nothing is followed: a redirect is an answer like any other, which
``sansio.webhooks.decide`` counts as a failure. Of the answer only the status, ``Retry-After`` and the
first KB of the body are read. The whole attempt (lookup, connect, TLS, send, answer) has one
deadline; when it passes the attempt ends as "timed out".
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from typing import NamedTuple

import gevent

from core import outbound
from core.http_transport import default_ssl_context
from sansio import webhooks
from sansio.outbound_address import AddressRefused, Target

USER_AGENT = "wabot-webhooks/1"


def resolve(target: Target, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``target``, each allowed by the policy; raises AddressRefused."""
    return outbound.resolve(target.host, target.port, allow_private=allow_private)


class _Pinned(http.client.HTTPConnection):
    """Connects to ``address`` while speaking to ``host`` (the Host header comes from the caller)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedTls(_Pinned):
    def __init__(self, host: str, port: int, address: str, timeout: float, tls: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout)
        self.tls = tls

    def connect(self) -> None:
        super().connect()
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


class Attempt(NamedTuple):
    answer: webhooks.Answer
    head: bytes  # the first KB of the body
    duration_ms: float


class Sender:
    """Posts webhook requests; one per process (it holds the TLS context)."""

    def __init__(self, *, timeout: float, allow_private: bool, tls: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.tls = tls or default_ssl_context()

    def post(self, target: Target, payload: bytes, headers: dict[str, str]) -> Attempt:
        started = time.monotonic()
        deadline = gevent.Timeout(self.timeout)
        deadline.start()
        try:
            answer, head = self._exchange(target, payload, headers)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            answer, head = webhooks.Answer(None, f"timed out after {self.timeout:g} s"), b""
        finally:
            deadline.close()
        return Attempt(answer, head, (time.monotonic() - started) * 1000)

    def _exchange(self, target: Target, payload: bytes, headers: dict[str, str]) -> tuple[webhooks.Answer, bytes]:
        try:
            addresses = resolve(target, allow_private=self.allow_private)
        except AddressRefused as exc:
            return webhooks.Answer(None, f"address refused: {exc}"), b""
        conn: _Pinned
        if target.scheme == "https":
            conn = _PinnedTls(target.host, target.port, addresses[0], self.timeout, self.tls)
        else:
            conn = _Pinned(target.host, target.port, addresses[0], self.timeout)
        try:
            conn.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
            for name, value in (("Host", target.host_header), ("User-Agent", USER_AGENT),
                                ("Content-Length", str(len(payload))), ("Connection", "close"), *headers.items()):
                conn.putheader(name, value)
            conn.endheaders(payload)
            response = conn.getresponse()
            head = response.read(webhooks.RESPONSE_HEAD)
            return webhooks.Answer(response.status, None, response.getheader("Retry-After")), head
        except TimeoutError:
            return webhooks.Answer(None, f"timed out after {self.timeout:g} s"), b""
        except ssl.SSLError as exc:
            return webhooks.Answer(None, f"TLS: {exc.reason or exc}"), b""
        except ConnectionRefusedError:
            return webhooks.Answer(None, "connection refused"), b""
        except (OSError, http.client.HTTPException) as exc:
            return webhooks.Answer(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), b""
        finally:
            conn.close()

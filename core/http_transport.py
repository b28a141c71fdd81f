"""A lean keep-alive HTTP/1.1 transport for httpx, under the ``openai`` client of ``core.ai``.

The ``openai`` library builds the request and reads the answer; httpx hands the request to a
transport. httpx's default one (httpcore + h11) is general and careful, and costs for it: on every
request it walks every pooled connection and polls its socket, and parses each response through a
general HTTP state machine. At hundreds of AI calls per second that was the largest CPU cost of the
bots' process (bench/pipeline.py). This transport does only what a JSON API call needs:

- one request, one response, HTTP/1.1, keep-alive connections per (scheme, host, port), most
  recently used first; ``https`` through the standard ``ssl`` module with certificate checks;
- bodies by ``Content-Length`` or chunked transfer encoding (content codings such as gzip are left to
  httpx, which decodes them from the headers); no upgrades, no HTTP/2;
- a pooled connection that the server closed while idle is noticed when the request fails before
  any byte of the answer arrived, and the request goes once more on a fresh connection (the server
  never saw it); idle connections older than ``idle_timeout`` are not reused;
- socket timeouts become ``httpx.ConnectTimeout``/``ReadTimeout``/``WriteTimeout`` and socket
  errors ``httpx.ConnectError``/``ReadError``/``WriteError``, which the ``openai`` client turns into
  its timeout and connection errors as with httpx's own transport.

Not for proxies: ``core.ai`` uses it only when no proxy is configured in the environment.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import time
from typing import Any

import httpx

_MAX_HEAD = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _StaleConnection(Exception):
    """The connection was closed before any byte of the answer arrived."""


class _Connection:
    __slots__ = ("sock", "buffer", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.idle_since = 0.0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reading -----------------------------------------------------------------------------------

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_until(self, marker: bytes, limit: int) -> bytes:
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                line, self.buffer = self.buffer[:index], self.buffer[index + len(marker):]
                return line
            if len(self.buffer) > limit:
                raise httpx.RemoteProtocolError("response head too large")
            if not self._fill():
                raise httpx.RemoteProtocolError("connection closed mid-response")

    def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise httpx.RemoteProtocolError("connection closed mid-body")
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_to_close(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


class KeepAliveTransport(httpx.BaseTransport):
    def __init__(self, *, max_idle: int = 16, idle_timeout: float = 30.0, verify: bool = True,
                 clock: Any = time.monotonic) -> None:
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._verify = verify

    # -- httpx.BaseTransport -----------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        key = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeouts = request.extensions.get("timeout", {})
        message = self._serialise(request)
        for attempt in range(2):
            if attempt == 0:
                conn, reused = self._checkout(key, request, timeouts)
            else:  # the retry: on a fresh connection, as the other idle ones may be just as stale
                conn, reused = self._connect(key, request, timeouts), False
            try:
                status, reason, headers, body, keep = self._exchange(conn, message, request, timeouts)
            except _StaleConnection:
                conn.close()
                if reused and attempt == 0:
                    continue  # closed by the server while idle: it never saw this request
                raise httpx.RemoteProtocolError("server closed the connection without answering", request=request)
            except BaseException:
                conn.close()
                raise
            if keep:
                self._checkin(key, conn)
            else:
                conn.close()
            return _response(status, headers, body, request, reason)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- connections -------------------------------------------------------------------------------

    def _checkout(self, key: tuple[str, str, int], request: httpx.Request,
                  timeouts: dict) -> tuple[_Connection, bool]:
        conns = self._idle.get(key)
        now = self._clock()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since < self._idle_timeout and not conn.buffer:
                return conn, True
            conn.close()
        return self._connect(key, request, timeouts), False

    def _checkin(self, key: tuple[str, str, int], conn: _Connection) -> None:
        conns = self._idle.setdefault(key, [])
        if len(conns) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = self._clock()
        conns.append(conn)

    def _connect(self, key: tuple[str, str, int], request: httpx.Request, timeouts: dict) -> _Connection:
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.get("connect"))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._ssl_context().wrap_socket(sock, server_hostname=host)
        except socket.timeout as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return _Connection(sock)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self._verify:
                try:
                    import certifi

                    self._ssl = ssl.create_default_context(cafile=certifi.where())
                except ImportError:
                    self._ssl = ssl.create_default_context()
            else:
                self._ssl = ssl._create_unverified_context()  # noqa: SLF001 - explicitly asked for
        return self._ssl

    # -- one exchange ------------------------------------------------------------------------------

    @staticmethod
    def _serialise(request: httpx.Request) -> bytes:
        body = request.read()
        target = request.url.raw_path
        lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
        has_length = False
        for name, value in request.headers.raw:
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
            elif lowered == b"transfer-encoding":
                continue  # the whole body is sent with a length
            lines.append(name + b": " + value)
        if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
            lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _exchange(self, conn: _Connection, message: bytes, request: httpx.Request,
                  timeouts: dict) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        sock = conn.sock
        phase = "write"
        try:
            sock.settimeout(timeouts.get("write"))
            try:
                sock.sendall(message)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise _StaleConnection() from exc
            phase = "read"
            sock.settimeout(timeouts.get("read"))
            try:
                if not conn.buffer and not conn._fill():  # noqa: SLF001
                    raise _StaleConnection()
            except ConnectionResetError as exc:
                raise _StaleConnection() from exc
            status, reason, headers = self._read_head(conn)
            while 100 <= status < 200:  # interim answers (100 Continue): the real one follows
                status, reason, headers = self._read_head(conn)
            body, keep = self._read_body(conn, request, status, headers)
        except socket.timeout as exc:
            if phase == "write":
                raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from exc
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except httpx.HTTPError as exc:
            exc.request = request
            raise
        except OSError as exc:
            error = httpx.WriteError if phase == "write" else httpx.ReadError
            raise error(str(exc), request=request) from exc
        # The body is whole now: a chunked framing header would describe bytes no longer there.
        headers = [(n, v) for n, v in headers if n.lower() != b"transfer-encoding"]
        return status, reason, headers, body, keep

    @staticmethod
    def _read_head(conn: _Connection) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        head = conn.read_until(b"\r\n\r\n", _MAX_HEAD)
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad status line: {status_line[:80]!r}") from None
        headers = []
        for line in rest.split(b"\r\n") if rest else []:
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError(f"bad header line: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        return status, parts[2] if len(parts) > 2 else b"", headers

    @staticmethod
    def _read_body(conn: _Connection, request: httpx.Request, status: int,
                   headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
        values = {name.lower(): value for name, value in headers}
        keep = values.get(b"connection", b"").lower() != b"close"
        if request.method == "HEAD" or status in (204, 304):
            return b"", keep
        if values.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
            chunks = []
            while True:
                size_line = conn.read_until(b"\r\n", 1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"bad chunk size: {size_line[:40]!r}") from None
                if size == 0:
                    while conn.read_until(b"\r\n", _MAX_HEAD):  # trailers, up to the empty line
                        pass
                    return b"".join(chunks), keep
                chunks.append(conn.read_exactly(size))
                conn.read_exactly(2)
        length = values.get(b"content-length")
        if length is not None:
            try:
                count = int(length)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad Content-Length: {length[:40]!r}") from None
            return conn.read_exactly(count), keep
        return conn.read_to_close(), False  # delimited by the end of the connection


def _response(status: int, headers: list[tuple[bytes, bytes]], body: bytes, request: httpx.Request,
              reason: bytes) -> httpx.Response:
    """The response, already read. With a content coding (gzip, ...) httpx decodes the body as it
    reads it; without one, reading only copied it through httpx's decoder chain, a third of the cost
    of building the response: the body is then handed over as read. ``_content`` is how httpx itself
    marks a response read (``Response.read``)."""
    extensions = {"http_version": b"HTTP/1.1", "reason_phrase": reason}
    if any(name.lower() == b"content-encoding" and value.strip().lower() not in (b"", b"identity")
           for name, value in headers):
        return httpx.Response(status, headers=headers, content=body, request=request, extensions=extensions)
    if not any(name.lower() == b"content-length" for name, _ in headers):
        headers = [*headers, (b"Content-Length", str(len(body)).encode())]  # as content= would add
    response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request,
                              extensions=extensions)
    response._content = body  # noqa: SLF001
    response.is_stream_consumed = True
    response.is_closed = True
    return response


class DirectClient(httpx.Client):
    """An httpx client whose ``send`` hands the request straight to its transport.

    httpx's ``send`` runs the auth flow, the redirect loop, the cookie jar and event hooks around
    every request; for the AI provider none of it does anything (the openai client sets its own
    Authorization header, API calls are not redirected or given cookies, no hooks are installed),
    yet it was a fifth of each call's CPU. The transport returns responses already read
    (``KeepAliveTransport``), so ``stream`` changes nothing."""

    def build_request(self, method: str, url: Any, *, content: Any = None, data: Any = None, files: Any = None,
                      json: Any = None, params: Any = None, headers: Any = None, cookies: Any = None,
                      timeout: Any = httpx.USE_CLIENT_DEFAULT, extensions: Any = None) -> httpx.Request:
        """httpx merges the client's base URL, cookies, query parameters and headers into each
        request, through its general machinery. A request as the openai client builds it (an absolute
        URL, its own headers, a body of bytes, nothing else) needs only the client's default headers
        under its own and the timeout: built here directly, the same request for a third of the CPU.
        Anything else goes through httpx's own merge."""
        if (data is not None or files is not None or json is not None or params or cookies or extensions
                or self.params or self.cookies or not isinstance(url, httpx.URL) or not url.is_absolute_url
                or not isinstance(content, bytes) or not isinstance(headers, httpx.Headers)):
            return super().build_request(method, url, content=content, data=data, files=files, json=json,
                                         params=params, headers=headers, cookies=cookies, timeout=timeout,
                                         extensions=extensions)
        own = headers.raw
        names = {name.lower() for name, _ in own}
        merged = [item for item in self.headers.raw if item[0].lower() not in names]
        merged.extend(own)
        return httpx.Request(method, url, content=content, headers=merged,
                             extensions={"timeout": self._timeout_dict(timeout)})

    def _timeout_dict(self, timeout: Any) -> dict:
        # The same timeout object on every call (the client's or the openai client's): convert once.
        if timeout is httpx.USE_CLIENT_DEFAULT:
            timeout = self.timeout
        cached = getattr(self, "_timeout_cache", None)
        if cached is None or cached[0] is not timeout:
            cached = self._timeout_cache = (timeout, httpx.Timeout(timeout).as_dict())
        return cached[1]

    def send(self, request: httpx.Request, *, stream: bool = False, auth: Any = None,
             follow_redirects: Any = None) -> httpx.Response:
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        started = time.perf_counter()
        response = self._transport.handle_request(request)
        response.request = request
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        response.default_encoding = self._default_encoding
        return response

"""``core.http_transport.ConnectionPool`` against real servers on 127.0.0.1.

Each test runs a gevent ``StreamServer`` whose handler speaks raw HTTP bytes, so the test controls the
framing exactly and sees every connection and request the pool makes: keep-alive and its limits,
connections the server ends, the size cap, timeouts and errors, https and proxies. The pool is used
as ``core.ai`` uses it; the last tests go through ``AiClient`` itself.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.pool
import pytest
from gevent.server import StreamServer

from core import config
from core.ai import AiClient, AiUnavailable
from core.http_transport import BodyTooLarge, ConnectionPool, TransportError, TransportTimeout, _Connection
from sansio.ai_http import MAX_RESPONSE_BYTES, Proxy, endpoint
from tests.openai_server import Certificates, certificates, completion
from tests.waiting import wait_until

# -- a raw HTTP server -------------------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    connection: int  # index of the connection it came on, in accept order
    method: str
    target: str
    raw_headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.raw_headers if n.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


class Peer:
    """One accepted connection, as a handler sees it."""

    def __init__(self, server: RawServer, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index
        self.buffer = b""
        self.reset_on_close = False

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_head(self) -> list[str] | None:
        """The next request's head lines; None when the client closed the connection between requests."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                assert not self.buffer, f"client closed mid-request: {self.buffer[:80]!r}"
                self.server.closed_by_client.add(self.index)
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head.decode("latin-1").split("\r\n")

    def read_request(self) -> Received | None:
        """The next request on this connection; None when the client closed it between requests."""
        lines = self.read_head()
        if lines is None:
            return None
        method, target, version = lines[0].split(" ")
        assert version == "HTTP/1.1" or method == "CONNECT", lines[0]  # Python before 3.12 tunnels with 1.0
        raw_headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep, f"bad header line {line!r}"
            raw_headers.append((name.strip(), value.strip()))
        received = Received(self.index, method, target, raw_headers, b"")
        length = int(received.header("content-length") or 0)
        while len(self.buffer) < length:
            assert self._fill(), "client closed mid-body"
        received.body, self.buffer = self.buffer[:length], self.buffer[length:]
        self.server.requests.append(received)
        return received

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, body: bytes = b"ok", status: str = "200 OK", headers: tuple[str, ...] = ()) -> None:
        """A complete Content-Length response."""
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
        self.send("\r\n".join(head).encode() + b"\r\n\r\n" + body)


Handler = Callable[[Peer], None]


class RawServer:
    def __init__(self, handler: Handler, tls: Certificates | None = None) -> None:
        self.handler = handler
        self.connections = 0  # accepted so far
        self.requests: list[Received] = []
        self.closed: set[int] = set()  # connections whose handler has finished (and socket closed)
        self.closed_by_client: set[int] = set()  # connections the client closed between requests
        self.scheme = "https" if tls is not None else "http"
        self._pool = gevent.pool.Pool()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        extra = {"ssl_context": tls.server_context()} if tls is not None else {}
        self._server = StreamServer(listener, self._handle, spawn=self._pool, **extra)
        self._server.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(timeout=0)

    def _handle(self, sock: socket.socket, address: Any) -> None:
        peer = Peer(self, sock, self.connections)
        self.connections += 1
        try:
            self.handler(peer)
        except (OSError, AssertionError):
            pass  # the client went away (TLS refused, reset): the test sees it from the client's side
        finally:
            if peer.reset_on_close:  # an RST instead of a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            self.closed.add(peer.index)


def keep_alive(respond: Callable[[Peer, Received], None]) -> Handler:
    """A handler answering every request on the connection until the client closes it."""

    def handler(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            respond(peer, request)

    return handler


def echo_path(peer: Peer, request: Received) -> None:
    peer.answer(request.target.encode())


@pytest.fixture
def serve():
    servers: list[RawServer] = []

    def start(handler: Handler, tls: Certificates | None = None) -> RawServer:
        server = RawServer(handler, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pools():
    made: list[ConnectionPool] = []

    def make(url: str, **options: Any) -> ConnectionPool:
        pool = ConnectionPool(endpoint(url), **{"timeout": 5.0, **options})
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def get(pool: ConnectionPool, target: str) -> bytes:
    reply = pool.request("GET", target, None, {})
    assert reply.status == 200, reply
    return reply.body


def refused_address() -> tuple[socket.socket, str]:
    """A port bound but not listening: connections to it are refused, and no one else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- bodies and keep-alive ---------------------------------------------------------------------------


def test_a_content_length_body_is_returned_whole_and_the_connection_is_reused(serve, pools):
    big = bytes(range(256)) * 1024  # 256 KiB: several reads on the client side
    server = serve(keep_alive(lambda peer, request: peer.answer(big if request.target == "/big" else b"small")))
    pool = pools(server.url)

    assert get(pool, "/big") == big
    assert get(pool, "/small") == b"small"
    assert [r.connection for r in server.requests] == [0, 0]


def test_a_chunked_body_with_extensions_and_trailers_is_returned_whole(serve, pools):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"2 ; other\r\n, \r\n"
        b"1A\r\n" + b"x" * 26 + b"\r\n"
        b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    server = serve(keep_alive(lambda peer, request: peer.send(chunked)))

    assert get(pools(server.url), "/") == b"hello, " + b"x" * 26


def test_after_a_chunked_body_with_trailers_the_connection_is_reused_for_the_next_request(serve, pools):
    def respond(peer: Peer, request: Received) -> None:
        if request.target == "/chunked":
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n")
        else:
            peer.answer(b"next")

    server = serve(keep_alive(respond))
    pool = pools(server.url)

    assert get(pool, "/chunked") == b"abc"
    assert get(pool, "/next") == b"next"
    assert [r.connection for r in server.requests] == [0, 0]


def test_a_204_answer_has_no_body_and_the_connection_is_reused(serve, pools):
    def respond(peer: Peer, request: Received) -> None:
        if request.target == "/empty":
            peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            peer.answer(b"after")

    server = serve(keep_alive(respond))
    pool = pools(server.url)

    empty = pool.request("GET", "/empty", None, {})
    assert (empty.status, empty.body) == (204, b"")
    assert get(pool, "/after") == b"after"
    assert [r.connection for r in server.requests] == [0, 0]


def test_an_interim_100_continue_is_skipped_and_the_final_answer_returned(serve, pools):
    server = serve(keep_alive(lambda peer, request: peer.send(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")))

    reply = pools(server.url).request("POST", "/", b"payload", {})

    assert (reply.status, reply.body) == (201, b"done")


def test_connections_kept_are_at_most_max_idle(serve, pools):
    def respond(peer: Peer, request: Received) -> None:
        wait_until(lambda: len(server.requests) >= 3, what="three requests in flight")  # three connections
        peer.answer(b"ok")

    server = serve(keep_alive(respond))
    pool = pools(server.url, max_idle=2)
    calls = [gevent.spawn(get, pool, f"/{n}") for n in range(3)]
    gevent.joinall(calls, raise_error=True)

    assert pool.idle == 2
    wait_until(lambda: len(server.closed_by_client) == 1, what="the third connection closed by the client")


# -- connections the server ends -----------------------------------------------------------------------


def test_after_a_connection_close_answer_the_client_closes_it_and_the_next_request_opens_a_new_one(serve, pools):
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        peer.answer(request.target.encode(), headers=("Connection: close",))
        # The server leaves the connection open: the client must close it, not send on it again.
        assert peer.read_request() is None

    server = serve(handler)
    pool = pools(server.url)

    assert get(pool, "/one") == b"/one"
    wait_until(lambda: 0 in server.closed_by_client, what="the client to close the connection")
    assert get(pool, "/two") == b"/two"
    assert [r.connection for r in server.requests] == [0, 1]


def test_a_body_delimited_by_the_end_of_the_connection_is_returned_whole_and_not_reused(serve, pools):
    body = b"until the end " * 10000

    def handler(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
        peer.sock.shutdown(socket.SHUT_WR)  # the end of the body; a request sent on it would still arrive
        assert peer.read_request() is None

    server = serve(handler)
    pool = pools(server.url)

    assert get(pool, "/one") == body
    wait_until(lambda: 0 in server.closed_by_client, what="the client to close the connection")
    assert get(pool, "/two") == body
    assert [r.connection for r in server.requests] == [0, 1]


def test_a_pooled_connection_the_server_closed_while_idle_is_replaced_and_the_request_arrives_once(serve, pools):
    def handler(peer: Peer) -> None:  # one answer per connection, then close as an idle timeout would
        request = peer.read_request()
        if request is not None:
            peer.answer(request.target.encode())

    server = serve(handler)
    pool = pools(server.url)

    assert get(pool, "/first") == b"/first"
    wait_until(lambda: 0 in server.closed, what="the server to close the connection")

    assert get(pool, "/second") == b"/second"
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


def test_a_pooled_connection_the_server_reset_while_idle_is_replaced_and_the_request_arrives_once(serve, pools):
    answered = gevent.event.Event()

    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is not None:
            peer.answer(request.target.encode())
            answered.wait()  # the client has the answer: only now may the RST go
            peer.reset_on_close = True

    server = serve(handler)
    pool = pools(server.url)

    assert get(pool, "/first") == b"/first"
    answered.set()
    wait_until(lambda: 0 in server.closed, what="the server to reset the connection")

    assert get(pool, "/second") == b"/second"
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


def test_when_every_pooled_connection_was_closed_while_idle_the_retry_goes_on_a_fresh_connection(serve, pools):
    # A server's keep-alive timeout closes all of a client's idle connections at about the same time.
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is None:
            return
        if request.target.startswith("/together"):  # hold both answers: two connections get pooled
            wait_until(lambda: len(server.requests) >= 2, what="both requests")
        peer.answer(request.target.encode())

    server = serve(handler)
    pool = pools(server.url)
    together = [gevent.spawn(get, pool, f"/together/{i}") for i in range(2)]
    gevent.joinall(together, raise_error=True)
    assert sorted(g.value for g in together) == [b"/together/0", b"/together/1"]
    wait_until(lambda: server.closed == {0, 1}, what="the server to close both connections")

    assert get(pool, "/after") == b"/after"
    assert [(r.connection, r.target) for r in server.requests][2:] == [(2, "/after")]


def test_a_fresh_connection_closed_without_an_answer_is_a_transport_error_without_retrying(serve, pools):
    server = serve(lambda peer: peer.read_request())  # reads the request, closes without answering

    with pytest.raises(TransportError, match="without answering"):
        get(pools(server.url), "/unanswered")

    assert server.connections == 1
    assert [r.target for r in server.requests] == ["/unanswered"]


def test_a_retry_on_a_fresh_connection_that_also_goes_unanswered_is_a_transport_error(serve, pools):
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is not None and request.target == "/first":
            peer.answer(b"first")  # then close while idle; every later connection goes unanswered

    server = serve(handler)
    pool = pools(server.url)
    assert get(pool, "/first") == b"first"
    wait_until(lambda: 0 in server.closed, what="the server to close the connection")

    with pytest.raises(TransportError, match="without answering"):
        get(pool, "/second")

    assert server.connections == 2
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


# -- the size cap --------------------------------------------------------------------------------------


def test_a_body_whose_content_length_is_over_the_cap_is_refused_and_its_connection_closed(serve, pools):
    def handler(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1))
        assert peer.read_request() is None  # nothing of the body was sent, or needed: the client hangs up

    server = serve(handler)
    pool = pools(server.url)

    with pytest.raises(BodyTooLarge):
        get(pool, "/")
    wait_until(lambda: 0 in server.closed_by_client, what="the client to close the connection")
    assert pool.idle == 0


def test_a_chunked_body_over_the_cap_is_refused(serve, pools):
    chunk = b"x" * 65536
    server = serve(keep_alive(lambda peer, request: peer.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000\r\n" + chunk + b"\r\n" * 1 + (b"10000\r\n" + chunk + b"\r\n") * 16 + b"0\r\n\r\n")))
    pool = pools(server.url, max_body=16 * 65536)

    with pytest.raises(BodyTooLarge):
        get(pool, "/")
    assert pool.idle == 0


def test_a_body_of_exactly_the_cap_is_returned(serve, pools):
    server = serve(keep_alive(lambda peer, request: peer.answer(b"y" * 1000)))

    assert get(pools(server.url, max_body=1000), "/") == b"y" * 1000


# -- errors ------------------------------------------------------------------------------------------


def test_an_answer_slower_than_the_timeout_is_a_transport_timeout(serve, pools):
    release = gevent.event.Event()

    def handler(peer: Peer) -> None:
        peer.read_request()
        release.wait()

    server = serve(handler)
    try:
        with pytest.raises(TransportTimeout):
            get(pools(server.url, timeout=0.2), "/slow")
    finally:
        release.set()


def test_a_refused_connection_is_a_transport_error_not_a_timeout(pools):
    sock, url = refused_address()
    try:
        with pytest.raises(TransportError) as caught:
            get(pools(url), "/")
    finally:
        sock.close()
    assert not isinstance(caught.value, TransportTimeout)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 OK", b"HTTP/1.1 2xx OK", b"SSH-2.0-OpenSSH_9.6", b"HTTP/2 200"])
def test_a_malformed_status_line_is_a_transport_error(serve, pools, status_line):
    server = serve(keep_alive(lambda peer, request: peer.send(status_line + b"\r\nContent-Length: 0\r\n\r\n")))

    with pytest.raises(TransportError):
        get(pools(server.url), "/")


def test_a_body_cut_short_of_its_content_length_is_a_transport_error(serve, pools):
    server = serve(lambda peer: (peer.read_request(), peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")))

    with pytest.raises(TransportError):
        get(pools(server.url), "/")


def test_a_request_abandoned_by_a_gevent_timeout_leaves_no_connection_for_the_next_request(serve, pools):
    release = gevent.event.Event()

    def respond(peer: Peer, request: Received) -> None:
        if request.target == "/slow":
            release.wait()
        peer.answer(request.target.encode())

    server = serve(keep_alive(respond))
    pool = pools(server.url)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.1):
        get(pool, "/slow")
    release.set()

    assert get(pool, "/next") == b"/next"
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/slow"), (1, "/next")]
    wait_until(lambda: 0 in server.closed, what="the abandoned connection to be closed")


# -- idle timeout --------------------------------------------------------------------------------------


def test_an_idle_connection_older_than_idle_timeout_is_closed_and_not_reused(serve, pools):
    now = [1000.0]
    server = serve(keep_alive(echo_path))
    pool = pools(server.url, idle_timeout=10.0, clock=lambda: now[0])

    assert get(pool, "/one") == b"/one"
    now[0] += 10.0
    assert get(pool, "/two") == b"/two"

    assert [r.connection for r in server.requests] == [0, 1]
    wait_until(lambda: 0 in server.closed_by_client, what="the client to close the old connection")


def test_an_idle_connection_younger_than_idle_timeout_is_reused(serve, pools):
    now = [1000.0]
    server = serve(keep_alive(echo_path))
    pool = pools(server.url, idle_timeout=10.0, clock=lambda: now[0])

    assert get(pool, "/one") == b"/one"
    now[0] += 9.9
    assert get(pool, "/two") == b"/two"

    assert [r.connection for r in server.requests] == [0, 0]


# -- requests ------------------------------------------------------------------------------------------


def test_a_post_body_and_its_headers_arrive_intact(serve, pools):
    body = bytes(range(256)) * 4096  # 1 MiB
    server = serve(keep_alive(echo_path))

    pools(server.url).request("POST", "/upload?kind=raw&n=1", body,
                              {"X-Custom": "value", "Content-Type": "application/x"})

    [request] = server.requests
    assert request.method == "POST"
    assert request.target == "/upload?kind=raw&n=1"
    assert request.body == body
    assert request.header("Content-Length") == str(len(body))
    assert request.header("Host") == server.host
    assert request.header("X-Custom") == "value"
    assert request.header("Content-Type") == "application/x"
    assert request.header("Transfer-Encoding") is None


def test_a_request_goes_to_the_socket_in_one_write():
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def sendall(self, data: bytes) -> None:
            self.writes.append(bytes(data))

    conn = _Connection("127.0.0.1", 9)
    conn.sock = Recorder()  # what http.client writes to
    conn.request_at_once("POST", "/v1/chat/completions", b'{"a":1}', {"Content-Type": "application/json"})

    [write] = conn.sock.writes
    assert write.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 7\r\n" in write and write.endswith(b"\r\n\r\n{\"a\":1}")


def test_requests_ask_for_no_content_coding(serve, pools):
    server = serve(keep_alive(echo_path))
    get(pools(server.url), "/")
    assert server.requests[0].header("Accept-Encoding") == "identity"


# -- https ---------------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path) -> Certificates:
    return certificates(tmp_path)


def test_https_with_a_trusted_certificate_answers_on_one_kept_alive_connection(serve, pools, tls):
    server = serve(keep_alive(echo_path), tls=tls)
    pool = pools(server.url, ssl_context=tls.client_context())

    assert get(pool, "/one") == b"/one"
    assert get(pool, "/two") == b"/two"
    assert [r.connection for r in server.requests] == [0, 0]


def test_an_https_connection_the_server_closed_while_idle_is_replaced_and_the_request_arrives_once(serve, pools,
                                                                                                    tls):
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is not None:
            peer.answer(request.target.encode())

    server = serve(handler, tls=tls)
    pool = pools(server.url, ssl_context=tls.client_context())

    assert get(pool, "/first") == b"/first"
    wait_until(lambda: 0 in server.closed, what="the server to close the connection")

    assert get(pool, "/second") == b"/second"
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


def test_https_with_a_certificate_the_default_roots_do_not_trust_is_a_transport_error(serve, pools, tls):
    server = serve(keep_alive(echo_path), tls=tls)

    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        get(pools(server.url), "/")
    assert server.requests == []


def test_https_trusts_the_ca_that_ssl_cert_file_names(serve, pools, tls, tmp_path, monkeypatch):
    ca_file = tmp_path / "company-ca.pem"
    ca_file.write_bytes(tls.ca)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = serve(keep_alive(echo_path), tls=tls)

    assert get(pools(server.url), "/") == b"/"  # no context given: the default one


def test_https_with_a_certificate_for_another_host_is_a_transport_error(serve, pools, tmp_path):
    tls = certificates(tmp_path, names=("elsewhere.example",))
    server = serve(keep_alive(echo_path), tls=tls)

    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        get(pools(server.url, ssl_context=tls.client_context()), "/")
    assert server.requests == []


# -- proxies -------------------------------------------------------------------------------------------


def test_through_an_http_proxy_a_plain_request_names_the_whole_url_and_carries_its_authorization(serve, pools):
    proxy = serve(keep_alive(lambda peer, request: peer.answer(b"via proxy")))

    pool = pools("http://provider.example:8080/v1", proxy=Proxy("127.0.0.1", proxy.port, "Basic dTpw"))
    assert get(pool, "/v1/chat/completions") == b"via proxy"
    assert get(pool, "/v1/chat/completions") == b"via proxy"

    first, second = proxy.requests
    assert first.target == "http://provider.example:8080/v1/chat/completions"
    assert first.header("Host") == "provider.example:8080"
    assert first.header("Proxy-Authorization") == "Basic dTpw"
    assert second.connection == 0


def tunnel(target_port: int, seen: list[list[str]]) -> Handler:
    """A CONNECT proxy: records the CONNECT head, then relays bytes both ways to 127.0.0.1:target_port."""

    def relay(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handler(peer: Peer) -> None:
        head = peer.read_head()
        if head is None:
            return
        seen.append(head)
        upstream = socket.create_connection(("127.0.0.1", target_port))
        peer.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if peer.buffer:
            upstream.sendall(peer.buffer)
        relays = [gevent.spawn(relay, peer.sock, upstream), gevent.spawn(relay, upstream, peer.sock)]
        try:
            gevent.joinall(relays)
        finally:
            gevent.killall(relays)
            upstream.close()

    return handler


def test_through_an_http_proxy_https_goes_in_a_connect_tunnel_with_the_certificate_checked(serve, pools, tls):
    server = serve(keep_alive(echo_path), tls=tls)
    heads: list[list[str]] = []
    proxy = serve(tunnel(server.port, heads))
    authorization = "Basic " + base64.b64encode(b"u:p").decode()

    pool = pools(f"https://localhost:{server.port}", ssl_context=tls.client_context(),
                 proxy=Proxy("127.0.0.1", proxy.port, authorization))
    assert get(pool, "/secret") == b"/secret"
    assert get(pool, "/again") == b"/again"

    [head] = heads  # one tunnel, kept alive
    assert head[0].startswith(f"CONNECT localhost:{server.port} HTTP/1.")
    assert f"Proxy-Authorization: {authorization}" in head[1:]
    assert [(r.connection, r.target, r.header("Host")) for r in server.requests] == [
        (0, "/secret", f"localhost:{server.port}"), (0, "/again", f"localhost:{server.port}")]


def test_a_proxy_that_refuses_the_tunnel_is_a_transport_error(serve, pools, tls):
    proxy = serve(keep_alive(lambda peer, request: peer.answer(b"no", status="407 Proxy Authentication Required")))

    with pytest.raises(TransportError, match="407"):
        get(pools("https://provider.example", ssl_context=tls.client_context(),
                  proxy=Proxy("127.0.0.1", proxy.port, None)), "/")


# -- through AiClient ----------------------------------------------------------------------------------


def completion_answer(peer: Peer, request: Received) -> None:
    asked = json.loads(request.body)["messages"][-1]["content"]
    peer.answer(json.dumps(completion(f"re: {asked}")).encode(), headers=("Content-Type: application/json",))


def ai_client(base_url: str, **options: Any) -> AiClient:
    settings = config.load({}, ai_base_url=base_url, ai_api_key="test-key", ai_model="m", ai_timeout=2.0,
                           ai_max_retries=0)
    return AiClient(settings, **{"proxies": {}, **options})


def test_ai_replies_go_on_one_kept_alive_connection(serve):
    server = serve(keep_alive(completion_answer))
    client = ai_client(server.url + "/v1")
    try:
        assert client.reply([{"role": "user", "content": "hi"}]) == "re: hi"
        assert client.reply([{"role": "user", "content": "again"}]) == "re: again"
    finally:
        client.close()
    assert [(r.connection, r.method, r.target) for r in server.requests] == [
        (0, "POST", "/v1/chat/completions"), (0, "POST", "/v1/chat/completions")]


def test_ai_replies_use_the_proxy_the_environment_names(serve):
    proxy = serve(keep_alive(completion_answer))
    client = ai_client("http://provider.example/v1", proxies={"http": f"http://127.0.0.1:{proxy.port}"})
    try:
        assert client.reply([{"role": "user", "content": "hi"}]) == "re: hi"
    finally:
        client.close()
    assert proxy.requests[0].target == "http://provider.example/v1/chat/completions"


def test_an_ai_provider_that_closes_a_fresh_connection_unanswered_is_a_connection_error(serve):
    server = serve(lambda peer: peer.read_request())
    client = ai_client(server.url)
    try:
        with pytest.raises(AiUnavailable) as info:
            client.reply([{"role": "user", "content": "hi"}])
    finally:
        client.close()
    assert info.value.kind == "connection"

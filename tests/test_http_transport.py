"""``core.http_transport.KeepAliveTransport`` against real servers on 127.0.0.1.

Each test runs a gevent ``StreamServer`` whose handler speaks raw HTTP bytes, so the test controls the
framing exactly and sees every connection and request the transport makes. The transport is used
as in ``core.ai``: under ``httpx.Client`` and, for the error mapping, under ``openai.OpenAI``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
import struct
from typing import Any, Callable

import gevent
import gevent.event
import gevent.pool
import httpx
import openai
import pytest
from gevent.server import StreamServer

from core.http_transport import DirectClient, KeepAliveTransport

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

    def __init__(self, server: "RawServer", sock: socket.socket, index: int) -> None:
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

    def read_request(self) -> Received | None:
        """The next request on this connection; None when the client closed it between requests."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                assert not self.buffer, f"client closed mid-request: {self.buffer[:80]!r}"
                self.server.note(closed_by_client=self.index)
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        assert version == "HTTP/1.1"
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
        self.server.note(request=received)
        return received

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, body: bytes = b"ok", status: str = "200 OK", headers: tuple[str, ...] = ()) -> None:
        """A complete Content-Length response."""
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
        self.send("\r\n".join(head).encode() + b"\r\n\r\n" + body)


Handler = Callable[[Peer], None]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0  # accepted so far
        self.requests: list[Received] = []
        self.closed: set[int] = set()  # connections whose handler has finished (and socket closed)
        self.closed_by_client: set[int] = set()  # connections the client closed between requests
        self._changed = gevent.event.Event()
        self._pool = gevent.pool.Pool()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._server = StreamServer(listener, self._handle, spawn=self._pool)
        self._server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.stop(timeout=0)

    def note(self, request: Received | None = None, closed_by_client: int | None = None) -> None:
        if request is not None:
            self.requests.append(request)
        if closed_by_client is not None:
            self.closed_by_client.add(closed_by_client)
        self._changed.set()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with gevent.Timeout(timeout, AssertionError(f"condition not met within {timeout}s")):
            while not predicate():
                # No yield between the check and clear(): a change cannot slip in unseen.
                self._changed.clear()
                self._changed.wait()

    def _handle(self, sock: socket.socket, address: Any) -> None:
        peer = Peer(self, sock, self.connections)
        self.connections += 1
        self._changed.set()
        try:
            self.handler(peer)
        finally:
            if peer.reset_on_close:  # an RST instead of a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            self.closed.add(peer.index)
            self._changed.set()


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
    clients: list[httpx.Client] = []

    def start(handler: Handler) -> RawServer:
        server = RawServer(handler)
        servers.append(server)
        return server

    start.clients = clients  # type: ignore[attr-defined]
    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def make_client(serve: Any, server_url: str, transport: KeepAliveTransport | None = None,
                timeout: httpx.Timeout | float = 5.0) -> httpx.Client:
    client = httpx.Client(transport=transport or KeepAliveTransport(), base_url=server_url, timeout=timeout)
    serve.clients.append(client)
    return client


def refused_address() -> tuple[socket.socket, str]:
    """A port bound but not listening: connections to it are refused, and no one else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- bodies and keep-alive ---------------------------------------------------------------------------


def test_a_content_length_body_is_returned_whole_and_the_connection_is_reused(serve):
    big = bytes(range(256)) * 1024  # 256 KiB: several reads on the client side
    server = serve(keep_alive(lambda peer, request: peer.answer(big if request.target == "/big" else b"small")))
    client = make_client(serve, server.url)

    first = client.get("/big")
    second = client.get("/small")

    assert first.status_code == 200 and first.content == big
    assert second.content == b"small"
    assert server.connections == 1
    assert [r.connection for r in server.requests] == [0, 0]


def test_a_chunked_body_with_extensions_and_trailers_is_returned_whole_without_transfer_encoding(serve):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"2 ; other\r\n, \r\n"
        b"1A\r\n" + b"x" * 26 + b"\r\n"
        b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    server = serve(keep_alive(lambda peer, request: peer.send(chunked)))
    client = make_client(serve, server.url)

    response = client.get("/")

    assert response.content == b"hello, " + b"x" * 26
    assert "transfer-encoding" not in response.headers
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-length"] == str(len(response.content))  # the body's length now
    assert response.is_closed and response.is_stream_consumed and response.read() == response.content


def test_after_a_chunked_body_with_trailers_the_connection_is_reused_for_the_next_request(serve):
    def respond(peer: Peer, request: Received) -> None:
        if request.target == "/chunked":
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n")
        else:
            peer.answer(b"next")

    server = serve(keep_alive(respond))
    client = make_client(serve, server.url)

    assert client.get("/chunked").content == b"abc"
    assert client.get("/next").content == b"next"
    assert [r.connection for r in server.requests] == [0, 0]


def test_a_gzip_encoded_body_is_decoded_by_httpx(serve):
    document = {"items": list(range(500))}
    compressed = gzip.compress(json.dumps(document).encode())
    server = serve(keep_alive(lambda peer, request: peer.answer(
        compressed, headers=("Content-Encoding: gzip", "Content-Type: application/json"))))
    client = make_client(serve, server.url)

    response = client.get("/")

    assert response.json() == document


def test_a_204_answer_has_no_body_and_the_connection_is_reused(serve):
    def respond(peer: Peer, request: Received) -> None:
        if request.target == "/empty":
            peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            peer.answer(b"after")

    server = serve(keep_alive(respond))
    client = make_client(serve, server.url)

    empty = client.get("/empty")
    after = client.get("/after")

    assert empty.status_code == 204 and empty.content == b""
    assert after.content == b"after"
    assert [r.connection for r in server.requests] == [0, 0]


def test_an_interim_100_continue_is_skipped_and_the_final_answer_returned(serve):
    server = serve(keep_alive(lambda peer, request: peer.send(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")))
    client = make_client(serve, server.url)

    response = client.post("/", content=b"payload")

    assert response.status_code == 201 and response.content == b"done"


# -- connections the server ends -----------------------------------------------------------------------


def test_after_a_connection_close_answer_the_client_closes_it_and_the_next_request_opens_a_new_one(serve):
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        peer.answer(request.target.encode(), headers=("Connection: close",))
        # The server leaves the connection open: the client must close it, not send on it again.
        assert peer.read_request() is None

    server = serve(handler)
    client = make_client(serve, server.url)

    assert client.get("/one").content == b"/one"
    server.wait_until(lambda: 0 in server.closed_by_client)
    assert client.get("/two").content == b"/two"

    assert [r.connection for r in server.requests] == [0, 1]


def test_a_body_delimited_by_the_end_of_the_connection_is_returned_whole_and_not_reused(serve):
    body = b"until the end " * 10000

    def handler(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
        peer.sock.shutdown(socket.SHUT_WR)  # the end of the body; a request sent on it would still arrive
        assert peer.read_request() is None

    server = serve(handler)
    client = make_client(serve, server.url)

    assert client.get("/one").content == body
    server.wait_until(lambda: 0 in server.closed_by_client)
    assert client.get("/two").content == body

    assert [r.connection for r in server.requests] == [0, 1]


def test_a_pooled_connection_the_server_closed_while_idle_is_replaced_and_the_request_arrives_once(serve):
    def handler(peer: Peer) -> None:  # one answer per connection, then close as an idle timeout would
        request = peer.read_request()
        if request is not None:
            peer.answer(request.target.encode())

    server = serve(handler)
    client = make_client(serve, server.url)

    assert client.get("/first").content == b"/first"
    server.wait_until(lambda: 0 in server.closed)

    assert client.get("/second").content == b"/second"
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


def test_a_pooled_connection_the_server_reset_while_idle_is_replaced_and_the_request_arrives_once(serve):
    answered = gevent.event.Event()

    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is not None:
            peer.answer(request.target.encode())
            answered.wait()  # the client has the answer: only now may the RST go
            peer.reset_on_close = True

    server = serve(handler)
    client = make_client(serve, server.url)

    assert client.get("/first").content == b"/first"
    answered.set()
    server.wait_until(lambda: 0 in server.closed)

    assert client.get("/second").content == b"/second"
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


def test_when_every_pooled_connection_was_closed_while_idle_the_retry_goes_on_a_fresh_connection(serve):
    # A server's keep-alive timeout closes all of a client's idle connections at about the same time.
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is None:
            return
        if request.target.startswith("/together"):  # hold both answers: two connections get pooled
            server.wait_until(lambda: len(server.requests) >= 2)
        peer.answer(request.target.encode())

    server = serve(handler)
    client = make_client(serve, server.url)
    together = [gevent.spawn(client.get, f"/together/{i}") for i in range(2)]
    gevent.joinall(together, raise_error=True)
    assert sorted(g.value.content for g in together) == [b"/together/0", b"/together/1"]
    server.wait_until(lambda: server.closed == {0, 1})

    assert client.get("/after").content == b"/after"
    assert [(r.connection, r.target) for r in server.requests][2:] == [(2, "/after")]


def test_a_fresh_connection_closed_without_an_answer_gives_remote_protocol_error_without_retrying(serve):
    server = serve(lambda peer: peer.read_request())  # reads the request, closes without answering
    client = make_client(serve, server.url)

    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/unanswered")

    assert server.connections == 1
    assert [r.target for r in server.requests] == ["/unanswered"]


def test_a_retry_on_a_fresh_connection_that_also_goes_unanswered_gives_remote_protocol_error(serve):
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is not None and request.target == "/first":
            peer.answer(b"first")  # then close while idle; every later connection goes unanswered

    server = serve(handler)
    client = make_client(serve, server.url)
    assert client.get("/first").content == b"first"
    server.wait_until(lambda: 0 in server.closed)

    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/second")

    assert server.connections == 2
    assert [(r.connection, r.target) for r in server.requests] == [(0, "/first"), (1, "/second")]


# -- errors ------------------------------------------------------------------------------------------


def test_an_answer_slower_than_the_read_timeout_gives_read_timeout(serve):
    release = gevent.event.Event()

    def handler(peer: Peer) -> None:
        peer.read_request()
        release.wait()

    server = serve(handler)
    client = make_client(serve, server.url, timeout=httpx.Timeout(5.0, read=0.2))
    try:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/slow")
    finally:
        release.set()


def test_a_refused_connection_gives_connect_error(serve):
    sock, url = refused_address()
    client = make_client(serve, url)
    try:
        with pytest.raises(httpx.ConnectError):
            client.get("/")
    finally:
        sock.close()


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 OK", b"HTTP/1.1 2xx OK", b"SSH-2.0-OpenSSH_9.6", b"HTTP/2 200"])
def test_a_malformed_status_line_gives_remote_protocol_error(serve, status_line):
    server = serve(keep_alive(lambda peer, request: peer.send(status_line + b"\r\nContent-Length: 0\r\n\r\n")))
    client = make_client(serve, server.url)

    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/")


def test_a_body_cut_short_of_its_content_length_gives_remote_protocol_error(serve):
    server = serve(lambda peer: (peer.read_request(), peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")))
    client = make_client(serve, server.url)

    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/")


# -- idle timeout --------------------------------------------------------------------------------------


def test_an_idle_connection_older_than_idle_timeout_is_closed_and_not_reused(serve):
    now = [1000.0]
    server = serve(keep_alive(echo_path))
    client = make_client(serve, server.url, KeepAliveTransport(idle_timeout=10.0, clock=lambda: now[0]))

    assert client.get("/one").content == b"/one"
    now[0] += 10.0
    assert client.get("/two").content == b"/two"

    assert [r.connection for r in server.requests] == [0, 1]
    server.wait_until(lambda: 0 in server.closed_by_client)


def test_an_idle_connection_younger_than_idle_timeout_is_reused(serve):
    now = [1000.0]
    server = serve(keep_alive(echo_path))
    client = make_client(serve, server.url, KeepAliveTransport(idle_timeout=10.0, clock=lambda: now[0]))

    assert client.get("/one").content == b"/one"
    now[0] += 9.9
    assert client.get("/two").content == b"/two"

    assert [r.connection for r in server.requests] == [0, 0]


# -- requests ------------------------------------------------------------------------------------------


def test_a_post_body_and_its_headers_arrive_intact(serve):
    body = bytes(range(256)) * 4096  # 1 MiB
    server = serve(keep_alive(echo_path))
    client = make_client(serve, server.url)

    client.post("/upload?kind=raw&n=1", content=body, headers={"X-Custom": "value", "Content-Type": "application/x"})

    [request] = server.requests
    assert request.method == "POST"
    assert request.target == "/upload?kind=raw&n=1"
    assert request.body == body
    assert request.header("Content-Length") == str(len(body))
    assert request.header("Host") == server.host
    assert request.header("X-Custom") == "value"
    assert request.header("Content-Type") == "application/x"
    assert request.header("Transfer-Encoding") is None


def test_a_streamed_post_body_is_sent_whole_with_a_content_length(serve):
    server = serve(keep_alive(echo_path))
    client = make_client(serve, server.url)

    client.post("/stream", content=iter([b"part one, ", b"part two"]))

    [request] = server.requests
    assert request.body == b"part one, part two"
    assert request.header("Content-Length") == str(len(request.body))
    assert request.header("Transfer-Encoding") is None


def test_a_post_without_a_body_sends_content_length_zero(serve):
    server = serve(keep_alive(echo_path))
    client = make_client(serve, server.url)

    client.post("/empty")

    [request] = server.requests
    assert request.header("Content-Length") == "0" and request.body == b""


# -- through the openai client -------------------------------------------------------------------------


def openai_client(serve: Any, base_url: str, timeout: httpx.Timeout | float = 5.0) -> openai.OpenAI:
    # As core.ai builds it: the direct client over the keep-alive transport.
    http_client = DirectClient(transport=KeepAliveTransport(), timeout=timeout)
    serve.clients.append(http_client)
    return openai.OpenAI(base_url=base_url, api_key="test-key", http_client=http_client, max_retries=0,
                         timeout=timeout)


def completion_answer(peer: Peer, request: Received) -> None:
    asked = json.loads(request.body)["messages"][-1]["content"]
    body = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"re: {asked}"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()
    peer.answer(body, headers=("Content-Type: application/json",))


def test_openai_chat_completions_go_through_the_transport_on_one_kept_alive_connection(serve):
    server = serve(keep_alive(completion_answer))
    client = openai_client(serve, server.url + "/v1")

    first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    second = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "again"}])

    assert first.choices[0].message.content == "re: hi"
    assert second.choices[0].message.content == "re: again"
    assert [(r.connection, r.method, r.target) for r in server.requests] == [
        (0, "POST", "/v1/chat/completions"), (0, "POST", "/v1/chat/completions")]
    assert server.requests[0].header("Authorization") == "Bearer test-key"
    assert server.requests[0].header("Content-Length") == str(len(server.requests[0].body))


def test_openai_sees_an_answer_slower_than_the_read_timeout_as_api_timeout_error(serve):
    release = gevent.event.Event()

    def handler(peer: Peer) -> None:
        peer.read_request()
        release.wait()

    server = serve(handler)
    client = openai_client(serve, server.url + "/v1", timeout=httpx.Timeout(5.0, read=0.2))
    try:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        release.set()
    assert server.connections == 1  # max_retries=0 and no retry of ours


def test_openai_sees_a_refused_connection_as_api_connection_error(serve):
    sock, url = refused_address()
    client = openai_client(serve, url + "/v1")
    try:
        with pytest.raises(openai.APIConnectionError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        sock.close()
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_the_direct_client_gives_a_read_response_with_its_elapsed_time_and_refuses_once_closed(serve):
    server = serve(keep_alive(echo_path))
    client = DirectClient(transport=KeepAliveTransport(), base_url=server.url, timeout=5.0)
    response = client.get("/direct")
    assert response.content == b"/direct"
    assert response.elapsed.total_seconds() >= 0
    assert response.request.url.path == "/direct"
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.get("/again")


def test_the_direct_client_builds_an_api_request_exactly_as_httpx_would():
    headers = httpx.Headers({"Authorization": "Bearer k", "Accept": "application/json", "User-Agent": "ours/1"})
    url = httpx.URL("http://127.0.0.1:9/v1/chat/completions")
    timeout = httpx.Timeout(7.0, connect=2.0)
    ours = DirectClient(transport=KeepAliveTransport(), timeout=5.0)
    plain = httpx.Client(transport=KeepAliveTransport(), timeout=5.0)  # httpx's own build_request
    try:
        for kwargs in ({"timeout": timeout}, {}):  # the caller's timeout, then the client's own
            built = ours.build_request("POST", url, content=b'{"a":1}', headers=headers, **kwargs)
            expected = plain.build_request("POST", url, content=b'{"a":1}', headers=headers, **kwargs)
            assert (built.method, built.url, built.headers.raw, built.read(), built.extensions) == \
                (expected.method, expected.url, expected.headers.raw, expected.read(), expected.extensions)
    finally:
        ours.close()
        plain.close()


def test_the_direct_client_leaves_other_requests_to_httpxs_own_merge(serve):
    server = serve(keep_alive(echo_path))
    client = DirectClient(transport=KeepAliveTransport(), base_url=server.url, params={"v": "1"}, timeout=5.0)
    try:
        built = client.build_request("GET", "/relative", params={"q": "x"})
        assert built.url == httpx.URL(server.url + "/relative?v=1&q=x")
    finally:
        client.close()

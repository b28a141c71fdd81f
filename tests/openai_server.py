"""A scriptable OpenAI-compatible provider for tests: a real HTTP server on 127.0.0.1 (random port)
answering ``POST /v1/chat/completions`` (and ``/chat/completions``) the way the test says, one scripted
response per call, and recording every request it received.

    with OpenAiServer() as server:
        server.script(status(429, retry_after="1"), reply("hello"))
        client = AiClient(config.load({}, ai_base_url=server.base_url + "/v1", ai_api_key="k", ...))
        assert client.reply([{"role": "user", "content": "hi"}]) == "hello"
        assert len(server.calls) == 2

A call with nothing left in the script gets ``server.default`` (a 500 naming the problem, unless a
test sets another, e.g. ``status(500)`` for a provider that stays down).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections import deque
from typing import Any

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

_PATHS = ("/v1/chat/completions", "/chat/completions")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    delay: float = 0.0  # seconds the server waits before answering


def completion(text: str, model: str = "test-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def reply(text: str, delay: float = 0.0) -> Response:
    return Response(200, json.dumps(completion(text)).encode(), delay=delay)


def status(
    code: int, retry_after: str | None = None, delay: float = 0.0, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps({"error": {"message": f"scripted {code}", "type": "test", "code": code}}).encode()
    extra = tuple((headers or {}).items()) + ((("Retry-After", retry_after),) if retry_after is not None else ())
    return Response(code, body, (("Content-Type", "application/json"),) + extra, delay=delay)


def raw(body: bytes, content_type: str = "application/json", code: int = 200) -> Response:
    """Any body, e.g. malformed JSON or JSON without ``choices``."""
    return Response(code, body, (("Content-Type", content_type),))


@dataclasses.dataclass
class Call:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body (None if it was not JSON)
    received_at: float  # time.monotonic() when the request arrived
    answered_at: float | None = None  # when the response was sent (None if the client went away first)


def _listener() -> socket.socket:
    """A listening socket whose connections send at once: pywsgi writes headers and body separately,
    and with Nagle on, the body waits for the client's delayed ACK (40 ms a request on Linux, where
    accepted sockets inherit TCP_NODELAY from the listener)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class OpenAiServer:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.default = status(500)  # for calls beyond the script
        self.unscripted = 0  # calls answered with the default
        self._script: deque[Response] = deque()
        self._arrived = gevent.event.Event()
        self._server = WSGIServer(_listener(), self._app, log=None, error_log=None)

    def start(self) -> "OpenAiServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def __enter__(self) -> "OpenAiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The server's root; as AI_BASE_URL it is called like DeepSeek (``/chat/completions``), and
        ``base_url + "/v1"`` like OpenAI (``/v1/chat/completions``)."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def script(self, *responses: Response) -> None:
        """Queue responses for the next calls, in order."""
        self._script.extend(responses)

    def wait_for_calls(self, count: int, timeout: float = 5.0) -> list[Call]:
        """Block until at least ``count`` calls have arrived; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(self.calls)} calls arrived within {timeout}s, expected {count}")
            # No yield between the check above and clear(): a call cannot slip in unseen.
            self._arrived.clear()
            self._arrived.wait(remaining)
        return self.calls

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "POST" or path not in _PATHS:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": {"message": "not found"}}']
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        call = Call(path, headers, body, time.monotonic())
        self.calls.append(call)
        self._arrived.set()
        if self._script:
            response = self._script.popleft()
        else:
            self.unscripted += 1
            response = self.default
        if response.delay:
            gevent.sleep(response.delay)
        call.answered_at = time.monotonic()
        start_response(f"{response.status} {_REASONS.get(response.status, 'Status')}", list(response.headers))
        return [response.body]

"""A real HTTP webhook receiver on 127.0.0.1 for tests: gevent's WSGI server, recording every request
(headers, body, when it arrived and finished) and answering as the test says.

``behave(request) -> (status, headers, body)`` decides each answer; ``hang`` holds requests until
``release()``; ``stop()``/``start()`` take the port down and back up (connection refused meanwhile).
Usable from a patched test process and from an unpatched one (``serve_in_thread`` is not needed:
under gevent the server is a greenlet of the test's hub).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer


class Request(NamedTuple):
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float
    webhook_id: str

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, list[tuple[str, str]], bytes]


def ok(request: Request) -> Answer:
    return 200, [], b"ok"


class Receiver:
    def __init__(self, behave: Callable[[Request], Answer] = ok, port: int = 0) -> None:
        self.behave = behave
        self.requests: list[Request] = []
        self.done: list[Request] = []  # answered (the receiver's 2xx, or whatever it answered)
        self.in_flight = 0
        self.max_in_flight = 0
        self.concurrent_ids: list[str] = []  # webhook-ids seen twice at the same time
        self._active: dict[str, int] = {}
        self.hang = False
        self._released = gevent.event.Event()
        self._port = port
        self._server: WSGIServer | None = None
        self.start()

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._port}{path}"

    def start(self) -> None:
        server = WSGIServer(("127.0.0.1", self._port), self._app, log=None, error_log=None)
        server.start()
        self._server = server
        self._port = server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=0.5)
            self._server = None

    def release(self) -> None:
        self.hang = False
        self._released.set()

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.requests]

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        request = Request(environ.get("PATH_INFO", ""), headers, body, time.time(), headers.get("webhook-id", ""))
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        wid = request.webhook_id
        self._active[wid] = self._active.get(wid, 0) + 1
        if self._active[wid] > 1:
            self.concurrent_ids.append(wid)
        try:
            if self.hang:
                self._released.clear()
                self._released.wait()
            status, extra, answer = self.behave(request)
        finally:
            self.in_flight -= 1
            self._active[wid] -= 1
        self.done.append(request)
        start_response(f"{status} X", [("Content-Length", str(len(answer))), *extra])
        return [answer]

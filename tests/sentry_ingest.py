"""A tiny Sentry ingest endpoint for tests: a real HTTP server on 127.0.0.1 that receives what the real
sentry-sdk sends (``POST /api/<project>/envelope/``), decodes the envelope and queues its events.

Envelope format: one JSON header line, then per item a JSON item-header line and a payload of
``length`` bytes (or, without ``length``, up to the next newline), each followed by a newline. The
body may be compressed (``Content-Encoding: gzip``, ``deflate``, or ``br`` when brotli is installed).

    with SentryIngest() as ingest:
        settings = config.replace(settings, sentry_dsn=ingest.dsn)
        ...
        event = ingest.next_event(timeout=5)
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from typing import Any

import gevent.queue
from gevent.pywsgi import WSGIServer

_ENVELOPE_PATH = re.compile(r"^/api/(?P<project>[^/]+)/envelope/?$")


class EnvelopeError(ValueError):
    """The body is not a well-formed Sentry envelope."""


def decompress(body: bytes, encoding: str) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only when the SDK found it installed

        return brotli.decompress(body)
    raise EnvelopeError(f"unsupported Content-Encoding {encoding!r}")


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """Split an envelope into its header and a list of (item header, payload bytes)."""
    header_line, sep, rest = data.partition(b"\n")
    try:
        header = json.loads(header_line or b"{}")
    except ValueError as exc:
        raise EnvelopeError(f"bad envelope header: {exc}") from None
    items: list[tuple[dict[str, Any], bytes]] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(b"\n", pos)
        line = rest[pos:] if end < 0 else rest[pos:end]
        pos = len(rest) if end < 0 else end + 1
        if not line.strip():
            continue
        try:
            item_header = json.loads(line)
        except ValueError as exc:
            raise EnvelopeError(f"bad item header: {exc}") from None
        length = item_header.get("length")
        if length is not None:
            payload = rest[pos : pos + length]
            if len(payload) != length:
                raise EnvelopeError("item payload shorter than its length")
            pos += length
            if rest[pos : pos + 1] == b"\n":
                pos += 1
        else:
            end = rest.find(b"\n", pos)
            payload = rest[pos:] if end < 0 else rest[pos:end]
            pos = len(rest) if end < 0 else end + 1
        items.append((item_header, payload))
    return header, items


class SentryIngest:
    """Receives envelopes on 127.0.0.1 (random port); ``events`` is a gevent queue of event dicts."""

    def __init__(self, project: str = "1", public_key: str = "public") -> None:
        self.project = project
        self.public_key = public_key
        self.events: gevent.queue.Queue = gevent.queue.Queue()
        self.envelopes: list[tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]] = []
        self.errors: list[str] = []
        self._server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> SentryIngest:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def __enter__(self) -> SentryIngest:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def dsn(self) -> str:
        return f"http://{self.public_key}@127.0.0.1:{self.port}/{self.project}"

    # -- waiting -----------------------------------------------------------------------------------

    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event received; raises ``AssertionError`` if none arrives in time."""
        try:
            return self.events.get(timeout=timeout)
        except gevent.queue.Empty:
            raise AssertionError(
                f"no Sentry event within {timeout}s (envelopes: {len(self.envelopes)}, errors: {self.errors})"
            ) from None

    def event_where(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first event received (from now on) for which ``predicate(event)`` is true."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching Sentry event within {timeout}s; saw {seen!r}")
            event = self.next_event(remaining)
            if predicate(event):
                return event
            seen.append(event.get("exception") or event.get("message"))

    # -- the WSGI app ------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        match = _ENVELOPE_PATH.match(path)
        if environ["REQUEST_METHOD"] != "POST" or not match:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"detail":"not found"}']
        if match.group("project") != self.project:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"detail":"unknown project"}']
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        try:
            data = decompress(body, environ.get("HTTP_CONTENT_ENCODING", ""))
            header, items = parse_envelope(data)
        except Exception as exc:  # noqa: BLE001 - reported to the test through self.errors
            self.errors.append(repr(exc))
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [json.dumps({"detail": repr(exc)}).encode()]
        self.envelopes.append((header, items))
        for item_header, payload in items:
            if item_header.get("type") == "event":
                try:
                    self.events.put(json.loads(payload))
                except ValueError as exc:
                    self.errors.append(f"bad event payload: {exc!r}")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"id": header.get("event_id")}).encode()]

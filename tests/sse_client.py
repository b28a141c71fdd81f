"""A small raw-socket SSE client for tests: one GET over a plain socket, the HTTP/1.1 response head
parsed by hand, a chunked (or length-delimited, or until-EOF) body decoded incrementally, and the
body interpreted as an event stream per the HTML standard: events (id, event, data) and comments,
each stamped with its arrival time (``time.monotonic()``).

A reader greenlet takes everything the server sends; tests wait on what arrived (``wait_for``),
never on a sleep. ``SSEClient(..., rcvbuf=2048, read=False)`` makes a stalled client: a tiny kernel
receive buffer and nobody reading it, so the server's writes soon block. ``close()`` ends the
connection from the client's side.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode, urlsplit

import gevent

from tests.waiting import wait_until


@dataclasses.dataclass(frozen=True)
class Event:
    id: str | None  # the id field of this frame (None when the frame had none)
    event: str  # the event type ("message" when the frame named none)
    data: str
    at: float
    last_event_id: str = ""  # the stream's last event id buffer when this event was dispatched

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def int_id(self) -> int:
        assert self.id is not None, f"event without an id: {self}"
        return int(self.id)


@dataclasses.dataclass(frozen=True)
class Comment:
    text: str
    at: float


@dataclasses.dataclass(frozen=True)
class Retry:
    milliseconds: int
    at: float


class SSEParser:
    """Incremental event-stream interpretation (HTML standard, 'Interpreting an event stream').

    ``feed(bytes, at)`` returns the items completed by those bytes. Lines end in CRLF, LF or CR (a CR
    at the very end of what has arrived waits for the next bytes, which may start with its LF)."""

    def __init__(self) -> None:
        self._pending = b""
        self._first = True
        self.last_event_id = ""
        self._data: list[str] = []
        self._type = ""
        self._frame_id: str | None = None
        self._fields_seen = False

    def feed(self, data: bytes, at: float) -> list[Event | Comment | Retry]:
        buffer = self._pending + data
        out: list[Event | Comment | Retry] = []
        start = 0
        while True:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if buffer[end : end + 1] == b"\r":
                if end + 1 == len(buffer):
                    break  # a CR that may be the first half of a CRLF
                step = 2 if buffer[end + 1 : end + 2] == b"\n" else 1
            else:
                step = 1
            line = buffer[start:end]
            start = end + step
            if self._first:
                self._first = False
                if line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
            item = self._line(line.decode("utf-8", "replace"), at)
            if item is not None:
                out.append(item)
        self._pending = buffer[start:]
        return out

    def _line(self, line: str, at: float) -> Event | Comment | Retry | None:
        if line == "":
            return self._dispatch(at)
        if line.startswith(":"):
            text = line[1:]
            return Comment(text[1:] if text.startswith(" ") else text, at)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._fields_seen = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
                self._frame_id = value
        elif name == "retry" and value.isdigit():
            return Retry(int(value), at)
        return None

    def _dispatch(self, at: float) -> Event | None:
        data, type_, frame_id = self._data, self._type, self._frame_id
        self._data, self._type, self._frame_id, self._fields_seen = [], "", None, False
        if not data:
            return None  # the standard dispatches nothing without data
        return Event(frame_id, type_ or "message", "\n".join(data), at, self.last_event_id)


class _Chunked:
    """Incremental decoder of a chunked transfer-coded body."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining: int | None = None  # bytes left in the current chunk; None: a size line is next
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while not self.done:
            if self._remaining is None:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(self._buffer[:end].split(b";", 1)[0].strip(), 16)
                self._buffer = self._buffer[end + 2 :]
                if size == 0:
                    self.done = True  # trailers (if any) are not of interest
                    break
                self._remaining = size
            else:
                if self._remaining:
                    take = self._buffer[: self._remaining]
                    out += take
                    self._buffer = self._buffer[len(take) :]
                    self._remaining -= len(take)
                    if self._remaining:
                        break
                if len(self._buffer) < 2:
                    break
                assert self._buffer[:2] == b"\r\n", f"bad chunk end {self._buffer[:10]!r}"
                self._buffer = self._buffer[2:]
                self._remaining = None
        return bytes(out)


class SSEClient:
    """One GET to an SSE endpoint. The response head is read before the constructor returns
    (``status``, ``headers`` with lower-case names); the body is read by a greenlet unless
    ``read=False``, in which case nobody reads the socket until ``start_reading()``."""

    def __init__(
        self,
        base_url: str,
        path: str = "/api/v1/events",
        *,
        key: str | None = None,
        params: Iterable[tuple[str, str]] | dict | None = None,
        headers: dict[str, str] | None = None,
        last_event_id: int | str | None = None,
        rcvbuf: int | None = None,
        read: bool = True,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or 80
        query = urlencode(list(params.items()) if isinstance(params, dict) else list(params)) if params else ""
        target = path + ("?" + query if params else "")
        send = {"Host": f"{self.host}:{self.port}", "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if key is not None:
            send["Authorization"] = f"Bearer {key}"
        if last_event_id is not None:
            send["Last-Event-ID"] = str(last_event_id)
        send.update(headers or {})

        self.events: list[Event] = []
        self.comments: list[Comment] = []
        self.retries: list[Retry] = []
        self.items: list[Event | Comment | Retry] = []
        self.body = bytearray()  # the decoded body as received, for tests of the raw framing
        self.ended = False  # the server finished the response (last chunk, or EOF)
        self.error: BaseException | None = None
        self._parser = SSEParser()
        self._reader: gevent.Greenlet | None = None
        self._closed = False

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the client advertises is small from the first segment.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((self.host, self.port))
        request = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in send.items()) + "\r\n"
        self.sock.sendall(request.encode("latin-1"))
        self.status, self.headers, rest = self._read_head(timeout)
        self.sock.settimeout(None)
        self._body_rest = rest
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked: _Chunked | None = _Chunked()
            self._length: int | None = None
        else:
            self._chunked = None
            self._length = int(self.headers["content-length"]) if "content-length" in self.headers else None
        self._take(rest, time.monotonic())
        if read:
            self.start_reading()

    # -- reading ---------------------------------------------------------------------------------

    def _read_head(self, timeout: float) -> tuple[int, dict[str, str], bytes]:
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            if time.monotonic() > deadline:
                raise AssertionError(f"no response head within {timeout}s: {data!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before a response head: {data!r}")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, rest

    def _take(self, data: bytes, at: float) -> None:
        if self._chunked is not None:
            body = self._chunked.feed(data)
            done = self._chunked.done
        elif self._length is not None:
            body = data[: self._length - len(self.body)]
            done = len(self.body) + len(body) >= self._length
        else:
            body, done = data, False
        self.body += body
        for item in self._parser.feed(body, at):
            self.items.append(item)
            if isinstance(item, Event):
                self.events.append(item)
            elif isinstance(item, Comment):
                self.comments.append(item)
            else:
                self.retries.append(item)
        if done:
            self.ended = True

    def start_reading(self) -> None:
        if self._reader is None and not self.ended:
            self._reader = gevent.spawn(self._read_loop)

    def _read_loop(self) -> None:
        try:
            while not self.ended:
                data = self.sock.recv(65536)
                if not data:
                    self.ended = True
                    break
                self._take(data, time.monotonic())
        except OSError as exc:
            if not self._closed:
                self.error = exc
                self.ended = True
        except Exception as exc:  # noqa: BLE001 - a framing error (an AssertionError): the test must see it
            self.error = exc
            self.ended = True

    def stall(self) -> None:
        """Stop reading the socket (what arrives stays in the kernel's buffers)."""
        if self._reader is not None:
            self._reader.kill()
            self._reader = None

    # -- waiting ---------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_until(
            predicate, timeout, what,
            detail=lambda: f"ended={self.ended} error={self.error!r}; last items: {self.items[-6:]}",
        )

    def wait_events(self, count: int, timeout: float = 10.0, kind: str | None = None) -> list[Event]:
        """Wait until ``count`` events (of type ``kind`` if given) arrived; returns them all."""

        def chosen() -> list[Event]:
            return [e for e in self.events if kind is None or e.event == kind]

        self.wait_for(lambda: len(chosen()) >= count, timeout, f"{count} {kind or ''} events (have {len(chosen())})")
        return chosen()

    def wait_ids(self, expected: list[int], timeout: float = 10.0, what: str = "events") -> None:
        """Wait until the last of ``expected`` (or anything after it) arrived, then assert that the
        ids received are exactly ``expected``: no gap, no duplicate, no stranger, in order."""
        if expected:
            last = expected[-1]
            self.wait_for(lambda: any(i >= last for i in self.ids()), timeout, f"{what} up to id {last}")
        assert self.ids() == expected, f"{what}: got ids {self.ids()}, expected {expected}"

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 10.0, what: str = "an event") -> Event:
        return self.wait_for(lambda: next((e for e in self.events if predicate(e)), None), timeout, what)

    def wait_comment(self, text: str, count: int = 1, timeout: float = 10.0) -> list[Comment]:
        self.wait_for(
            lambda: sum(1 for c in self.comments if c.text == text) >= count, timeout, f"{count} ': {text}' comments"
        )
        return [c for c in self.comments if c.text == text]

    def wait_ended(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.ended, timeout, "the response to end")

    def ids(self, kind: str | None = None) -> list[int]:
        return [e.int_id for e in self.events if e.id is not None and (kind is None or e.event == kind)]

    def json_body(self) -> Any:
        self.wait_ended()
        return json.loads(bytes(self.body))

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection from the client's side (FIN, or RST if unread data is pending)."""
        if self._closed:
            return
        self._closed = True
        self.stall()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""Live events and commands over a WebSocket: ``GET /api/v1/ws``.

The same events, filters and resume as the SSE stream (``web.streams``), as JSON text frames, plus
commands from the client (ping, change the filter, queue a text message). The API key comes in the
``Authorization: Bearer`` header or, because browsers cannot set headers on a WebSocket, in a
``token`` query parameter.

One connection is three greenlets: the request's own greenlet starts the other two and cleans up;
the *reader* reads client frames and answers commands; the *pump* writes events from the subscriber's
hand-off, the backlog first when resuming, and a ping whenever the stream is idle for
``SSE_HEARTBEAT``. Every frame goes out through one lock (``_Socket.write``). Whichever of reader and
pump ends first ends the connection — the client closed or broke the protocol, or the server cut the
subscriber off (too slow, shutting down) — and the subscriber is unregistered at once.

The protocol is wsproto's (sans-I/O): a ``wsproto.connection.Connection`` per connection parses what
the client sends — unmasking, fragments, pings, the close handshake, UTF-8, every protocol error with
its close code — and frames what the server sends; this module only moves bytes on gevent. The
opening handshake is the server's handler's (gevent-websocket, ``web.server``), done before the app
runs; wsproto takes over from the first frame, as its "post handshake connection" usage describes.
wsproto buffers only what it is given and hands message data on as it arrives, so a frame header
claiming gigabytes costs nothing; a message (all fragments together) over ``WS_MAX_FRAME`` bytes is
refused from its header alone (``_MessageLimit``, wsproto's per-frame header hook): an error frame
``frame_too_large``, then close 1009.

The upgrade itself is done by the server's handler (gevent-websocket) *before* the app runs. The
blueprint installs ``app.websocket_gate(environ)`` for the server: the handler asks it before
upgrading (``web.server``), so a refused key gets the app's plain HTTP response (401 JSON) and no
upgrade. Under a handler that does not ask, a refused key gets an ``unauthorized`` error frame and
close 1008 after the 101.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.lock
import gevent.queue
import pykka
from flask import Blueprint, Response, g, request
from prometheus_client import Counter
from werkzeug.wrappers import Request
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode
from wsproto.utilities import LocalProtocolError

from actors.event_bus import ChangeFilter
from actors.subscriber import Closing, Subscriber
from core import context, sentry
from core.root import WebRoot
from db import audit as audit_db
from db import outbox, tenants
from db.quotas import QuotaExceeded
from sansio import roles, sse
from web import audit, rate_limits
from web.auth import session_check, system
from web.errors import ApiError, bad_request, not_found
from web.streams import SUBSCRIBE_TIMEOUT, backlog, close_subscription, open_subscription, parse_filter

log = logging.getLogger(__name__)

blueprint = Blueprint("ws", __name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

SEND_TIMEOUT = 30.0
"""Seconds one frame may take to be written; a client that takes longer is gone."""
CLOSE_WAIT = 2.0
"""Seconds the server waits for the client's close frame after sending its own."""
DRAIN_MAX = 1 << 20
"""Bytes read and dropped after the server's close frame to reach the client's (or the end of its
stream); beyond this the connection is just closed."""
READ_CHUNK = 65536
"""Bytes taken from the socket at most per read: all that wsproto ever holds of a client's data."""
PING_GRACE = 2
"""Heartbeats a WebSocket ping may go unanswered (no frame at all from the client) before the client
counts as gone."""
ID_MAX = 128

_GATE_TENANT = "wabot.ws_tenant"


class _Gone(Exception):
    """The connection cannot take another frame (closing, broken, or the client stopped reading)."""


class _Violation(Exception):
    """The client broke the protocol or a limit: an error frame, then close with ``close_code``."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


# -- authentication -----------------------------------------------------------------------------------


def _presented_key(headers: Any, args: Any) -> str | None:
    """The header wins; the ``token`` query parameter is for clients that cannot set headers."""
    header = headers.get("Authorization", "")
    if header:
        scheme, _, key = header.partition(" ")
        return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return args.get("token", "").strip() or None


class _Caller(str):
    """The tenant a connection acts for, and who: ``person`` is the dashboard member of a session
    (whose role decides which commands they may use); for a key, ``scopes`` (None: every command)."""

    person: Any = None
    scopes: tuple[str, ...] | None = None
    subject: str = ""  # whose request limit a connection counts against (web.rate_limits)


def _authenticate(pool: Any, headers: Any, args: Any, environ: dict | None = None) -> _Caller:
    key = _presented_key(headers, args)
    if key is None and environ is not None:
        person = _session_person(environ)
        if person is not None:
            caller = _Caller(person.tenant_id)
            caller.person = person
            caller.subject = rate_limits.session_subject(person.session_id)
            return caller
    if key is None:
        raise ApiError(
            401, "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>' or the query parameter token=<key>",
        )
    try:
        found = tenants.authenticate_with_scopes(pool, key)
    except tenants.TenantDisabled as exc:
        raise ApiError(403, "tenant_disabled", exc.MESSAGE) from None
    if found is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    caller = _Caller(found[0])
    caller.scopes = found[1]
    caller.subject = rate_limits.key_subject(key)
    if caller.scopes is not None and "read" not in caller.scopes:
        raise ApiError(403, "forbidden", f"this key lacks the scope 'read' (it has: {', '.join(caller.scopes)})")
    return caller


def _session_person(environ: dict) -> Any:
    """The dashboard member behind the session cookie, for a same-origin upgrade only: a WebSocket is
    not bound by CORS, so a page on another site could otherwise open one with the visitor's cookie."""
    from web.dashboard import session  # the dashboard imports the API's modules: import late

    origin = environ.get("HTTP_ORIGIN")
    host = environ.get("HTTP_HOST", "")
    if origin is not None and urlsplit(origin).netloc != host:
        return None
    person = session.current()
    return person if person is not None and person.tenant_id is not None and person.role is not None else None


def _gate(app: Any, path: str, environ: dict) -> bool:
    """For the server's handler, before it upgrades: may this request become a WebSocket? Only on this
    route and with a valid key (or session); otherwise the handler should run the app as plain HTTP,
    whose answer (401, 400) is then an ordinary JSON response. Reads headers and query only, never the
    body."""
    if environ.get("PATH_INFO") != path:
        return False
    req = Request(environ)
    try:
        key = _presented_key(req.headers, req.args)
        if key is None:
            # A session needs the app's request context: the view checks it. A foreign page's
            # upgrade is refused here already, as plain HTTP.
            origin = environ.get("HTTP_ORIGIN")
            same_site = origin is None or urlsplit(origin).netloc == environ.get("HTTP_HOST", "")
            return same_site and session_cookie_name() in req.cookies
        environ[_GATE_TENANT] = _authenticate(app.extensions["wabot"].pool, req.headers, req.args)
    except Exception:  # noqa: BLE001 - refused, or the database is away: the app answers properly
        return False
    return True


def session_cookie_name() -> str:
    from web.dashboard.session import COOKIE

    return COOKIE


@blueprint.record_once
def _install_gate(state: Any) -> None:
    state.app.websocket_gate = functools.partial(_gate, state.app, (state.url_prefix or "") + "/ws")


# -- the connection -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class _MessageLimit(Extension):
    """``WS_MAX_FRAME`` for one connection, checked from frame headers alone.

    wsproto calls an extension's ``frame_inbound_header`` for every frame header it parses, before
    any of the payload; a ``CloseReason`` returned there makes wsproto refuse the frame with that code.
    This one counts what the current message's headers claim (its fragments together) and refuses
    with 1009 past the limit. It is local, never offered or negotiated in a handshake: it uses no
    reserved bit and leaves every payload as it is. Counting is by completed frames plus the current
    header, so a header wsproto parses twice (it waits for the rest of an incomplete header) counts once.
    """

    name = "wabot-message-limit"  # never on the wire

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused_at: int | None = None  # what the refused message claimed
        self._done = 0  # bytes of the current message's completed fragments
        self._claimed = 0  # the same plus the frame being read
        self._control = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(self, proto: Any, opcode: Opcode, rsv: Any, payload_length: int) -> Any:
        self._control = opcode.iscontrol()
        if not self._control:
            self._claimed = (self._done if opcode is Opcode.CONTINUATION else 0) + payload_length
            if self._claimed > self.limit:
                self.refused_at = self._claimed
                return CloseReason.MESSAGE_TOO_BIG
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_complete(self, proto: Any, fin: bool) -> None:
        if not self._control:
            self._done = 0 if fin else self._claimed


class _Socket:
    """One upgraded connection: wsproto's protocol state, the socket's bytes on gevent, and one lock
    for writing.

    The socket is the one gevent's WSGI handler served the request on (gevent-websocket hands it to
    the app as ``environ["wsgi.websocket"].handler``): ``rfile`` is buffered and may already hold the
    client's first frames, so reads go through it."""

    def __init__(self, ws: Any, max_message: int) -> None:
        self.ws = ws
        self.rfile = ws.handler.rfile
        self.raw = ws.handler.socket
        self.limit = _MessageLimit(max_message)
        self.conn = Connection(ConnectionType.SERVER, [self.limit])
        self.lock = gevent.lock.Semaphore()
        self.broken = False  # a write failed or was cut off mid-frame: nothing more can follow
        self.refused = False  # wsproto refused the client's bytes: it parses nothing after them
        self.received = 0  # bytes read from the client
        self.last_heard = time.monotonic()

    # writing

    def write(self, *events: Event, timeout: float = SEND_TIMEOUT) -> None:
        with self.lock:
            if self.broken:
                raise _Gone("the connection is broken")
            try:
                data = b"".join([self.conn.send(event) for event in events])
            except LocalProtocolError:  # a close frame went out (or came in): no more data frames
                raise _Gone("the connection is closing") from None
            self._sendall(data, timeout)

    def write_frame(self, frame: bytes) -> None:
        """A whole text frame framed by wsproto elsewhere (the bus frames each event once for every
        connection): fine while the connection is open, as a server sends no fragments."""
        with self.lock:
            if self.broken or self.conn.state is not ConnectionState.OPEN:
                raise _Gone("the connection is closing")
            self._sendall(frame, SEND_TIMEOUT)

    def _sendall(self, data: bytes, timeout: float) -> None:
        timer = gevent.Timeout(timeout)
        timer.start()
        done = False
        try:
            self.raw.sendall(data)
            done = True
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise _Gone(f"the client took no frame for {timeout:g} s") from None
        except OSError as exc:
            raise _Gone(f"write failed: {exc}") from None
        finally:
            timer.close()
            if not done:
                self.broken = True

    def send(self, message: dict) -> None:
        self.write(TextMessage(data=_text(message)))

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (once: wsproto refuses a second; never after a broken write); never raises."""
        try:
            self.write(CloseConnection(code=code, reason=reason), timeout=CLOSE_WAIT)
        except _Gone:
            pass

    def abort(self) -> None:
        """Make the coming close a reset: the kernel then drops what the client never took instead of
        holding it, and the connection, until the client reads or TCP gives up."""
        try:
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    # reading

    def events(self) -> Iterator[Event]:
        """What the client sends, as wsproto's events, read as they are needed (the client waits in
        TCP meanwhile); ends with the stream, or once both close frames have passed. A protocol error
        comes as a ``CloseConnection`` that the client did not send (see ``from_client``).

        Raises ``OSError`` when the connection breaks."""
        while True:
            yield from self.conn.events()
            if self.conn.state is ConnectionState.CLOSED:
                return
            data = self.rfile.read1(READ_CHUNK)
            if not data:
                return
            self.received += len(data)
            self.last_heard = time.monotonic()
            self.conn.receive_data(data)

    def from_client(self, event: CloseConnection) -> bool:
        """Whether a ``CloseConnection`` is the client's close frame; if not, wsproto refused what the
        client sent (its code says why) and stops parsing there."""
        if self.conn.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
            return True
        self.refused = True
        return False

    def await_close(self) -> None:
        """After our close frame: read and drop what the client still sends until its close frame (or
        the end of the stream), at most ``CLOSE_WAIT`` seconds and ``DRAIN_MAX`` bytes, so closing the
        socket does not reset a connection with unread data (which can cost the client our last frames).

        After a protocol error wsproto parses no further, so the client's close frame cannot be told
        apart: the server ends its side of the stream (its close frame is the last thing the client
        gets) and drops what comes until the client closes too."""
        with gevent.Timeout(CLOSE_WAIT, False):  # type: ignore[arg-type]  # False: end quietly (as in web.server)
            try:
                if self.refused:
                    self.raw.shutdown(socket.SHUT_WR)
                    budget = DRAIN_MAX
                    while budget > 0:
                        chunk = self.rfile.read1(min(budget, READ_CHUNK))
                        if not chunk:
                            return
                        budget -= len(chunk)
                    return
                until = self.received + DRAIN_MAX
                for event in self.events():
                    if isinstance(event, CloseConnection) or self.received > until:
                        return
            except OSError:
                return


# -- the endpoint -------------------------------------------------------------------------------------


# werkzeug routes an upgrade request only to a rule marked websocket=True (others answer 400), and a
# plain request only to one that is not: the same view serves both, so plain HTTP gets 401/400 JSON.
@blueprint.get("/ws", websocket=True)
@blueprint.get("/ws", endpoint="websocket_http")
def websocket() -> Any:
    root = system()
    environ = request.environ
    ws = environ.get("wsgi.websocket")
    try:
        caller = environ.get(_GATE_TENANT) or _authenticate(root.pool, request.headers, request.args, environ)
        tenant_id = g.tenant_id = str(caller)
        limited = rate_limits.check(tenant_id, caller.subject)  # a connection is one request, at connect
        if limited is not None and not limited.allowed:
            who = "this dashboard session" if caller.person is not None else "this API key"
            raise ApiError(429, "rate_limited", rate_limits.refusal_message(limited, who))
        if ws is None:
            raise ApiError(
                400, "websocket_required",
                "this endpoint speaks WebSocket only: send an upgrade request (Upgrade: websocket)",
            )
        try:
            last = sse.resume_position(request.headers.get("Last-Event-ID"), request.args.get("last_event_id"))
        except sse.BadResume as exc:
            raise bad_request("last_event_id", str(exc)) from None
        flt = parse_filter(request.args.getlist("bot"), request.args.getlist("type"))
    except ApiError as exc:
        if ws is None:
            raise
        return _refuse(ws, root.settings, exc, CLOSE_TRY_AGAIN if exc.status == 429 else CLOSE_POLICY)
    with context.bound(tenant_id=tenant_id):
        try:
            ref, subscriber, high, delivered = open_subscription(root, tenant_id, flt, "ws")
        except ApiError as exc:
            return _refuse(ws, root.settings, exc, CLOSE_TRY_AGAIN)
        try:
            session = _Session(_Socket(ws, root.settings.ws_max_frame), root, tenant_id, ref, subscriber, high,
                               delivered, last, flt, caller.person, caller.scopes)
            # Who the connection's sends are recorded as in the audit log, and from where.
            session.audit_actor = audit.actor_of(caller.person, _presented_key(request.headers, request.args))
            session.address = audit.client_address()
        except BaseException:
            close_subscription(root, ref, "error")
            raise
        session.run()
    return Response(status=101)


def _refuse(ws: Any, settings: Any, exc: ApiError, close_code: int) -> Any:
    sock = _Socket(ws, settings.ws_max_frame)
    frame: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message, "id": None}
    if exc.field is not None:
        frame["field"] = exc.field
    try:
        sock.send(frame)
    except _Gone:
        pass
    sock.close(close_code, exc.code)
    sock.await_close()
    ws.closed = True  # closed here, with a status code; the library must not send a close of its own
    return Response(status=exc.status)


class _Session:
    def __init__(
        self, sock: _Socket, root: WebRoot, tenant_id: str, ref: pykka.ActorRef[Subscriber], subscriber: Subscriber,
        high: int, delivered: Counter, last: int | None, flt: sse.Filter, person: Any = None,
        scopes: tuple[str, ...] | None = None,
    ) -> None:
        self.scopes = scopes  # a key's scopes (None: everything)
        self.audit_actor: audit_db.Actor | None = None
        self.address: str | None = None
        self.sock = sock
        self.person = person  # a dashboard session's member (None for a key): commands follow their role
        self.still_valid = session_check(root, person)
        self.root = root
        self.tenant_id = tenant_id
        self.ref = ref
        self.subscriber = subscriber
        self.high = high
        self.last = last
        self.filter = flt
        self.heartbeat = root.settings.sse_heartbeat
        self.work = context.current()
        self.connection_id = self.work.correlation_id
        self.delivered = delivered
        self.sent = high if last is None else last  # the stream position the client has reached
        self.close_code: int | None = None  # what the server's close frame will say
        self.close_text = ""
        self.reason = "client_closed"  # for the disconnect metric
        self.ping_sent_at: float | None = None
        self.ops: dict[str, Callable[[dict], dict]] = {
            "ping": self._op_ping, "filter": self._op_filter, "send": self._op_send,
        }

    def run(self) -> None:
        reader = gevent.spawn(self._guard, self._read_loop)
        pump = gevent.spawn(self._guard, self._pump)
        subscribed = True
        try:
            gevent.wait([reader, pump], count=1)
            close_subscription(self.root, self.ref, self.reason)
            subscribed = False
            if not reader.dead:
                # The server ends it (cut off, shutting down, ping timeout): close, and let the reader
                # take the client's close frame.
                if not self.sock.broken:
                    self.sock.close(self.close_code or CLOSE_NORMAL, self.close_text)
                    if self.reason != "ping_timeout":  # a client that answers no ping answers no close
                        reader.join(CLOSE_WAIT)
            else:
                self._stop_pump(pump)
                if self.close_code is not None:
                    self.sock.close(self.close_code, self.close_text)  # answers the client's, if it closed
                    if self.reason != "client_closed":
                        self.sock.await_close()
        finally:
            reader.kill()
            pump.kill()
            if subscribed:
                close_subscription(self.root, self.ref, "closed")
            if self.sock.broken or self.reason == "ping_timeout":
                self.sock.abort()
            self.sock.ws.closed = True  # closed here, with a status code; not again by the library

    def _stop_pump(self, pump: gevent.Greenlet) -> None:
        """Kill the pump between frames when it can be had, so the close frame can still follow; one
        stuck on a client that does not read is killed mid-frame (and no close frame follows)."""
        held = self.sock.lock.acquire(timeout=CLOSE_WAIT)
        try:
            pump.kill()
        finally:
            if held:
                self.sock.lock.release()

    def _guard(self, loop: Callable[[], None]) -> None:
        context.set_current(self.work)
        try:
            loop()
        except Exception as exc:  # a bug: close with 1011, report it once
            log.exception("websocket connection failed", extra={"error": repr(exc)})
            self.root.metrics.errors.labels(type(exc).__name__, "ws").inc()
            sentry.capture(exc, where="ws")
            if self.close_code is None:
                self.close_code, self.close_text, self.reason = CLOSE_INTERNAL, "internal error", "error"

    # -- events to the client ------------------------------------------------------------------------

    def _pump(self) -> None:
        self.subscriber.bind_writer()
        try:
            self.sock.send({"type": "ready", "last_event_id": self.sent})
            if self.last is not None and self.last < self.high:
                for event in backlog(self.root.pool, self.tenant_id, self.filter, self.last, self.high):
                    self._event(event)
                self.sent = max(self.sent, self.high)
            while True:
                try:
                    item = self.subscriber.next(timeout=self.heartbeat)
                except gevent.queue.Empty:
                    if self.still_valid is not None and not self.still_valid():
                        self.sock.send({"type": "closed", "reason": "signed out", "last_event_id": self.sent})
                        self.close_code, self.close_text, self.reason = CLOSE_POLICY, "signed out", "signed_out"
                        return
                    if not self._heartbeat():
                        self.close_code, self.close_text = CLOSE_GOING_AWAY, "ping timeout"
                        self.reason = "ping_timeout"
                        return
                    continue
                if isinstance(item, Closing):
                    self._closing(item)
                    return
                if item.event.id > self.sent:
                    self._event(item.event, item.ws())
        except _Gone:
            self.reason = "client_gone"

    def _event(self, event: Any, payload: bytes | None = None) -> None:
        self.sent = event.id
        # The filter may have changed since the event was routed (or the backlog was read).
        if self.filter.matches(event.bot_id, event.type):
            if payload is None:
                self.sock.send({"type": "event", "event": event.as_json()})
            else:
                self.sock.write_frame(payload)  # framed once for every subscriber of this event
            self.delivered.inc()

    def _heartbeat(self) -> bool:
        """A JSON ping (for applications) and a WebSocket ping (answered by any client library, browsers
        included). False once a ping has gone unanswered for PING_GRACE heartbeats."""
        now = time.monotonic()
        if self.ping_sent_at is not None and self.sock.last_heard < self.ping_sent_at:
            if now - self.ping_sent_at >= PING_GRACE * self.heartbeat:
                return False
        else:
            self.ping_sent_at = now
        self.sock.write(TextMessage(data='{"type":"ping"}'), Ping())
        return True

    def _closing(self, item: Closing) -> None:
        if item.too_slow:
            self.sock.send(
                {"type": "error", "code": "too_slow", "message": item.reason, "id": None, "last_event_id": self.sent}
            )
            self.close_code, self.close_text, self.reason = CLOSE_POLICY, "too slow", "overflow"
        else:
            self.sock.send({"type": "closed", "reason": item.reason, "last_event_id": self.sent})
            self.close_code, self.close_text, self.reason = CLOSE_GOING_AWAY, item.reason[:100], "closed"

    # -- frames from the client ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        parts: list[str] = []  # the text message being received, fragment by fragment
        try:
            for event in self.sock.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        text, parts = "".join(parts), []
                        if self.sock.conn.state is ConnectionState.OPEN:  # none after a close frame
                            self._command(text)
                elif isinstance(event, BytesMessage):
                    if event.message_finished and self.sock.conn.state is ConnectionState.OPEN:
                        self._error("binary_not_supported", "commands are JSON text frames; binary frames are ignored")
                elif isinstance(event, Ping):
                    if self.sock.conn.state is ConnectionState.OPEN:
                        self.sock.write(event.response())
                elif isinstance(event, CloseConnection):
                    if not self.sock.from_client(event):
                        raise self._violation(event)
                    code = CLOSE_NORMAL if event.code == CloseReason.NO_STATUS_RCVD else int(event.code)
                    self.close_code, self.close_text, self.reason = code, "client closed", "client_closed"
                    return
            self.reason = "client_gone"  # the end of the stream without a close frame
        except _Violation as exc:
            log.info("websocket protocol violation", extra={"code": exc.code, "error": exc.message})
            try:
                self._error(exc.code, exc.message)
            except _Gone:
                pass
            self.close_code, self.close_text, self.reason = exc.close_code, exc.code, exc.code
        except _Gone:
            self.reason = "client_gone"
        except OSError:
            self.reason = "client_gone"  # a reset

    def _violation(self, refusal: CloseConnection) -> _Violation:
        """What wsproto refused (its close code says why), as the error frame and close code to send."""
        if refusal.code == CloseReason.MESSAGE_TOO_BIG:  # only ever from _MessageLimit
            limit = self.sock.limit
            return _Violation(
                CLOSE_TOO_BIG, "frame_too_large",
                f"messages are limited to {limit.limit} bytes (WS_MAX_FRAME); this one has {limit.refused_at} or more",
            )
        if refusal.code == CloseReason.INVALID_FRAME_PAYLOAD_DATA:
            return _Violation(CLOSE_INVALID_DATA, "invalid_utf8", f"text must be valid UTF-8 ({refusal.reason})")
        return _Violation(CLOSE_PROTOCOL_ERROR, "protocol_error", refusal.reason or "protocol error")

    def _error(self, code: str, message: str, cid: Any = None, **extra: Any) -> None:
        frame = {"type": "error", "code": code, "message": message, "id": cid}
        frame.update({key: value for key, value in extra.items() if value is not None})
        self.sock.send(frame)

    def _command(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            self._error("invalid_json", f"not JSON: {exc}")
            return
        if not isinstance(message, dict):
            self._error("invalid_message", 'a command is a JSON object like {"op": "ping"}')
            return
        cid = message.get("id")
        if cid is not None and not (
            (isinstance(cid, str) and len(cid) <= ID_MAX)
            or (isinstance(cid, int) and not isinstance(cid, bool) and abs(cid) < 2**53)
        ):
            self._error("invalid_input", f"id must be a string of at most {ID_MAX} characters or an integer",
                        field="id")
            return
        op = message.get("op")
        if op is None:
            self._error("invalid_input", "is required; one of " + ", ".join(self.ops), cid, field="op")
            return
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            self._error("unknown_op", f"unknown op {str(op)[:100]!r}; one of " + ", ".join(self.ops), cid)
            return
        started = time.perf_counter()
        outcome = "ok"
        with context.bound(correlation_id=context.new_correlation_id()):
            try:
                reply = handler(message)
            except ApiError as exc:
                outcome = exc.code
                self._error(exc.code, exc.message, cid, op=op, field=exc.field)
            except _Gone:
                raise
            except Exception as exc:  # a bug or the database is away; the connection stays
                outcome = "internal_error"
                log.exception("websocket command failed", extra={"op": op, "error": repr(exc)})
                self.root.metrics.errors.labels(type(exc).__name__, "ws").inc()
                sentry.capture(exc, where="ws", op=op)
                self._error("internal_error", "the command failed; try again", cid, op=op)
            else:
                reply["id"] = cid
                self.sock.send(reply)
            if op != "ping":
                log.info(
                    "websocket command",
                    extra={"op": op, "outcome": outcome, "connection": self.connection_id,
                           "duration_ms": round((time.perf_counter() - started) * 1000, 2)},
                )

    @staticmethod
    def _fields(message: dict, allowed: tuple[str, ...]) -> None:
        for key in message:
            if key not in allowed and key not in ("op", "id"):
                raise bad_request(str(key)[:100], "unknown field; allowed: " + ", ".join(allowed))

    def _op_ping(self, message: dict) -> dict:
        self._fields(message, ())
        return {"type": "pong"}

    def _op_filter(self, message: dict) -> dict:
        self._fields(message, ("bot", "type"))
        lists = {}
        for field in ("bot", "type"):
            value = message.get(field)
            if value is None:
                value = []
            elif isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise bad_request(field, "must be a list of strings")
            lists[field] = value
        flt = parse_filter(lists["bot"], lists["type"])
        try:
            if self.root.bus is None:
                raise RuntimeError("this process has no event bus")
            self.root.bus.ask(ChangeFilter(self.ref, flt), timeout=SUBSCRIBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the bus is stopping or stuck
            raise ApiError(503, "streams_unavailable", f"cannot change the filter right now: {exc}") from None
        self.filter = flt
        return {
            "type": "result", "op": "filter", "ok": True,
            "filter": {"bot": sorted(flt.bot_ids), "type": sorted(flt.types)},
        }

    def _audit(self, action: str, object_type: str, object_id: str, after: Any) -> None:
        """Record a change made over this connection (a failure to write is logged, never raised)."""
        if self.audit_actor is None:
            return
        try:
            audit_db.record_now(self.root.pool, self.tenant_id, self.audit_actor, action, object_type, object_id,
                                after=after, request_id=context.correlation_id(), address=self.address)
        except Exception:
            log.exception("audit row not written", extra={"action": action, "object_id": object_id})

    def _op_send(self, message: dict) -> dict:
        if self.person is not None and not self.person.can(roles.SEND):
            raise ApiError(403, "forbidden", f"your role ({self.person.role}) may not send messages")
        if self.scopes is not None and "send" not in self.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the scope 'send' (it has: {', '.join(self.scopes)})")
        self._fields(message, ("bot_id", "to", "text"))
        for field in ("bot_id", "to", "text"):
            if message.get(field) is None:
                raise bad_request(field, "is required")
        bot_id = message["bot_id"]
        if not isinstance(bot_id, str):
            raise bad_request("bot_id", "must be a bot id (a string)")
        try:
            to = outbox.to_jid(message["to"])
        except ValueError as exc:
            raise bad_request("to", str(exc)) from None
        try:
            text = outbox.check_text(message["text"])
        except ValueError as exc:
            raise bad_request("text", str(exc)) from None
        try:
            bot_id = str(uuid.UUID(bot_id))
        except ValueError:
            raise not_found("bot") from None
        try:
            outbox_id = outbox.enqueue_text(
                self.root.pool, self.tenant_id, bot_id, to, text, context.correlation_id()
            )
        except QuotaExceeded as exc:
            raise ApiError(429, "quota_exceeded", exc.message) from None
        if outbox_id is None:
            raise not_found("bot")
        self._audit("message.send", "outbox", outbox_id, {"bot_id": bot_id, "to": to, "kind": "text"})
        return {"type": "result", "op": "send", "ok": True, "outbox_id": outbox_id, "to": to}

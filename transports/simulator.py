"""A transport that reaches the network simulator (``simulator/``) over a real TCP socket.

One connection at a time, served by one reader greenlet that dials, says hello, then turns frames into
domain events for ``sink``. Everything that ends a connection ends in exactly one ``Disconnected``:
a server ``disconnect`` frame carries its kind; EOF, a socket error or a dial failure is ``NETWORK``;
unanswered pings are ``KEEPALIVE_TIMEOUT``; no answer to hello within ``connect_timeout`` is
``NETWORK`` too. There is no reconnect logic here: the session actor decides when to ``connect()``.

The device store (the credential the simulator issued at pairing) lives in
``DATA_DIR/devices/<bot_id>/simulator.json``, so a restarted bot process resumes without a QR code.

Options (``options`` dict): ``addr`` (default: settings.wa_simulator_addr), ``connect_timeout`` (10 s:
dial plus hello answer), ``request_timeout`` (10 s: send_text and other requests wait this long for
the network's answer), ``keepalive_interval`` (20 s of silence before a ping), ``keepalive_timeout``
(10 s for any answer to the ping).

Neither ``close()``, ``logout()`` nor ``request_pair_code()`` (which returns the code) produce
events: the caller knows what it did.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket as _stdlib_socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.lock
from gevent import socket

from core import context
from simulator import protocol
from simulator.protocol import FrameReader, ProtocolError
from transports.base import Sink, Transport, TransportError
from transports.events import (
    Connected,
    Disconnected,
    DisconnectKind,
    Event,
    MessageReceived,
    Paired,
    QrCode,
    Receipt,
)

log = logging.getLogger(__name__)

_DIALING, _QR, _ONLINE, _ENDED = "dialing", "qr", "online", "ended"


class _Conn:
    """One connection attempt and its life; a new one per ``connect()``. Its identity is the
    generation: the reader of an old connection can never reach the sink once it is replaced."""

    __slots__ = ("sock", "state", "quiet", "greenlet", "lock", "pending", "next_rid", "ready", "jid")

    def __init__(self) -> None:
        self.sock: Any = None
        self.state = _DIALING
        self.quiet = False  # set by close()/logout(): this connection reports nothing any more
        self.greenlet: Any = None
        self.lock = gevent.lock.Semaphore()  # writers: the actor (requests) and the reader (pings, acks)
        # rid -> the request's reply; read with the rid a reply frame names (any JSON value, or none)
        self.pending: dict[Any, gevent.event.AsyncResult[dict[str, Any]]] = {}
        self.next_rid = 1
        self.ready = gevent.event.Event()  # set once the server answered hello, or the connection ended
        self.jid: str | None = None


class _Ended(Exception):
    """Internal: the reader loop ends with this Disconnected."""

    def __init__(self, event: Disconnected) -> None:
        super().__init__(event.kind.value)
        self.event = event


class SimulatorTransport(Transport):
    kind = "simulator"

    def __init__(self, bot_id: str, sink: Sink, settings: Any, options: dict | None = None) -> None:
        super().__init__(bot_id, sink, settings, options)
        if not bot_id or os.path.basename(bot_id) != bot_id or bot_id in (".", ".."):
            raise ValueError(f"bot id {bot_id!r} cannot name a device store directory")
        opts = self.options
        self._addr = protocol.split_addr(opts.get("addr") or settings.wa_simulator_addr)
        self.connect_timeout = float(opts.get("connect_timeout", 10.0))
        self.request_timeout = float(opts.get("request_timeout", 10.0))
        self.keepalive_interval = float(opts.get("keepalive_interval", 20.0))
        self.keepalive_timeout = float(opts.get("keepalive_timeout", 10.0))
        self._store_path = os.path.join(settings.data_dir, "devices", bot_id, "simulator.json")
        self._store: dict | bool | None = False  # False: not read yet (read lazily, then cached)
        self._conn: _Conn | None = None

    # ------------------------------------------------------------------ Transport interface

    def connect(self) -> None:
        """Start a connection in a reader greenlet and return. A no-op while one is live."""
        conn = self._conn
        if conn is not None and conn.state != _ENDED:
            return
        conn = self._conn = _Conn()
        conn.greenlet = gevent.spawn(self._run, conn, context.current())

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.quiet = True
        greenlet = conn.greenlet
        if greenlet is not None and greenlet is not gevent.getcurrent():
            # kill() waits until the reader has run its cleanup, so nothing of it outlives close().
            greenlet.kill(block=True, timeout=5)
        self._drop(conn)

    def logout(self) -> None:
        """Unlink on the network (over the live login, or a short one-off login when there is none),
        then forget the device store. The store is forgotten even when the network cannot be reached;
        TransportError then says the unlink was not confirmed."""
        conn = self._conn
        store = self._load_store()
        error: Exception | None = None
        if conn is not None and conn.state == _ONLINE:
            conn.quiet = True  # the server ends the stream after unlinking: not news to report
            try:
                self._request(conn, {"t": "logout"})
            except TransportError as exc:
                error = exc
        elif store is not None:
            self.close()
            try:
                self._unlink_offline(store["cred"])
            except (OSError, EOFError, ProtocolError, TransportError) as exc:
                error = exc
        self.close()
        self._forget_store()
        if error is not None:
            raise TransportError(f"device store forgotten, but the network did not confirm the unlink: {error}")

    def _unlink_offline(self, cred: str) -> None:
        """Log in once, only to unlink; bounded by connect_timeout + request_timeout. No events."""
        sock = None
        deadline = gevent.Timeout.start_new(self.connect_timeout + self.request_timeout, TimeoutError)
        try:
            sock = socket.create_connection(self._addr)
            sock.sendall(protocol.encode({"t": "hello", "v": protocol.VERSION, "bot": self.bot_id, "cred": cred}))
            reader = FrameReader(sock)
            first = reader.read()
            if first["t"] == "disconnect" and first.get("kind") == DisconnectKind.LOGGED_OUT.value:
                return  # already unlinked on the network
            if first["t"] != "connected":
                raise TransportError(f"login for the unlink failed: {first.get('kind') or first['t']}")
            sock.sendall(protocol.encode({"t": "logout", "rid": 1}))
            while True:  # messages and receipts may come first; unacked, they stay with the network
                frame = reader.read()
                if frame["t"] == "reply" and frame.get("rid") == 1:
                    if not frame.get("ok"):
                        raise TransportError(frame.get("error") or "unlink refused")
                    return
                if frame["t"] == "disconnect":
                    raise TransportError(f"network ended the unlink login: {frame.get('kind')}")
        finally:
            deadline.close()
            if sock is not None:
                _close(sock)

    def request_pair_code(self, phone: str) -> str:
        try:
            digits = protocol.phone_digits(phone)
        except ValueError as exc:
            raise TransportError(str(exc)) from None
        conn = self._live()
        conn.ready.wait(self.connect_timeout)  # connect() may have been called just now
        if conn.state != _QR:
            raise TransportError("a pair code needs a connection that waits for pairing")
        # Returned, not reported as a PairCode event: the caller applies the code it asked for.
        return self._request(conn, {"t": "pair_code", "phone": digits})["code"]

    def send_text(self, to: str, text: str, message_id: str) -> None:
        """Send and wait for the network's ack; raises TransportError when not sure it arrived (then a
        resend with the same ``message_id`` is safe: the network keeps one copy)."""
        conn = self._live()
        if conn.state != _ONLINE:
            raise TransportError("not logged in")
        self._request(conn, {"t": "send", "to": to, "text": text, "id": message_id})

    @property
    def is_paired(self) -> bool:
        return self._load_store() is not None

    # ------------------------------------------------------------------ extras

    @property
    def jid(self) -> str | None:
        store = self._load_store()
        return store.get("jid") if store else None

    def send_media(self, to: str, kind: str, data: bytes, mime_type: str, caption: str, filename: str,
                   message_id: str) -> None:
        conn = self._live()
        if conn.state != _ONLINE:
            raise TransportError("not logged in")
        self._request(conn, {"t": "send", "to": to, "text": caption, "id": message_id, "kind": kind,
                             "mime": mime_type, "filename": filename, "data": base64.b64encode(data).decode()})

    def download_media(self, media_ref: str) -> bytes:
        conn = self._live()
        if conn.state != _ONLINE:
            raise TransportError("not logged in")
        reply = self._request(conn, {"t": "media", "ref": media_ref})
        return base64.b64decode(reply["data"])

    def ack(self, message_ids: list[str]) -> None:
        conn = self._conn
        if conn is None or conn.state != _ONLINE or not message_ids:
            return  # unacked messages come again at the next login; storing them is idempotent
        try:
            self._write(conn, {"t": "ack", "ids": list(message_ids)})
        except Exception:  # noqa: BLE001 - the connection is going; the next login redelivers
            pass

    def was_received(self, message_id: str) -> bool:
        """Whether the network holds a message the bot sent with this id (after a crash mid-send)."""
        conn = self._live()
        if conn.state != _ONLINE:
            raise TransportError("not logged in")
        return bool(self._request(conn, {"t": "query", "id": message_id})["received"])

    # ------------------------------------------------------------------ the reader

    def _run(self, conn: _Conn, ctx: context.WorkContext) -> None:
        context.set_current(ctx)  # logs and sink calls carry the tenant/bot of whoever connected
        ended = Disconnected(DisconnectKind.NETWORK, detail="connection ended")
        try:
            reader = self._dial(conn)
            self._loop(conn, reader)
        except _Ended as exc:
            ended = exc.event
        except (OSError, EOFError, ProtocolError) as exc:
            ended = Disconnected(DisconnectKind.NETWORK, detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a frame we could not make sense of: still exactly one Disconnected
            log.exception("simulator transport reader failed")
            ended = Disconnected(DisconnectKind.NETWORK, detail=f"{type(exc).__name__}: {exc}")
        finally:
            # Runs on GreenletExit too (close()), but then conn.quiet stops the report.
            self._drop(conn)
        if ended.kind is DisconnectKind.LOGGED_OUT:
            self._forget_store()  # as whatsmeow does: the device is gone, the next connect shows a QR
        self._emit(conn, ended)

    def _dial(self, conn: _Conn) -> FrameReader:
        """Dial, say hello and read the first answer, all within ``connect_timeout``."""
        store = self._load_store()
        deadline = gevent.Timeout.start_new(self.connect_timeout)
        try:
            sock = socket.create_connection(self._addr)
            conn.sock = sock
            sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
            hello = {"t": "hello", "v": protocol.VERSION, "bot": self.bot_id, "cred": store["cred"] if store else None}
            sock.sendall(protocol.encode(hello))
            reader = FrameReader(sock)
            self._handle(conn, reader.read())
            return reader
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            raise _Ended(Disconnected(DisconnectKind.NETWORK, detail="connect timeout")) from None
        finally:
            deadline.close()

    def _loop(self, conn: _Conn, reader: FrameReader) -> None:
        last_rx = time.monotonic()
        ping_sent: float | None = None
        while True:
            now = time.monotonic()
            if ping_sent is None:
                wait = last_rx + self.keepalive_interval - now
                if wait <= 0:
                    ping_sent = now
                    self._write(conn, {"t": "ping"})
                    continue
            else:
                wait = ping_sent + self.keepalive_timeout - now
                if wait <= 0:
                    raise _Ended(Disconnected(DisconnectKind.KEEPALIVE_TIMEOUT, detail="no answer to ping"))
            timer = gevent.Timeout.start_new(wait)
            try:
                frame = reader.read()
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                continue
            finally:
                timer.close()
            last_rx = time.monotonic()
            ping_sent = None  # anything from the server shows it is alive
            self._handle(conn, frame)

    def _handle(self, conn: _Conn, frame: dict) -> None:
        kind = frame["t"]
        if kind == "message":
            self._emit(
                conn,
                MessageReceived(
                    message_id=str(frame["id"]),
                    chat=str(frame.get("chat", "")),
                    sender=str(frame.get("sender", frame.get("chat", ""))),
                    timestamp=float(frame.get("ts") or time.time()),
                    text=str(frame.get("text", "")),
                    kind=str(frame.get("kind", "text")),
                    caption=str(frame.get("caption", "")),
                    mime_type=str(frame.get("mime", "")),
                    media_ref=frame.get("media"),
                    from_me=bool(frame.get("from_me", False)),
                ),
            )
            # Not acked here: the pipeline acks once the message is committed (ack()); until then the
            # network redelivers it at the next login, so a crash or a database outage loses nothing.
        elif kind == "receipt":
            self._emit(conn, Receipt(tuple(frame.get("ids") or ()), str(frame.get("chat", "")), str(frame["status"])))
        elif kind == "reply":
            result = conn.pending.get(frame.get("rid"))
            if result is not None:
                result.set(frame)
        elif kind == "qr":
            conn.state = _QR
            conn.ready.set()
            self._emit(conn, QrCode(tuple(frame.get("codes") or ())))
        elif kind == "connected":
            conn.state = _ONLINE
            conn.jid = frame.get("jid")
            conn.ready.set()
            self._emit(conn, Connected(conn.jid))
        elif kind == "paired":
            self._save_store({"bot": self.bot_id, "cred": frame["cred"], "jid": frame["jid"]})
            self._emit(conn, Paired(str(frame["jid"])))
        elif kind == "disconnect":
            try:
                reason = DisconnectKind(frame.get("kind"))
            except ValueError:
                reason = DisconnectKind.NETWORK
            expires = frame.get("expires_in")
            raise _Ended(
                Disconnected(
                    reason,
                    detail=str(frame.get("detail") or frame.get("kind")),
                    code=frame.get("code"),
                    expires_in=None if expires is None else float(expires),
                )
            )
        # "pong" and unknown frame types need nothing beyond resetting the keepalive clock.

    # ------------------------------------------------------------------ plumbing

    def _live(self) -> _Conn:
        conn = self._conn
        if conn is None or conn.state == _ENDED:
            raise TransportError("not connected")
        return conn

    def _emit(self, conn: _Conn, event: Event) -> None:
        # The generation check: only the current, not-closed connection may talk to the sink.
        if conn.quiet or self._conn is not conn:
            return
        try:
            self.sink(event)
        except Exception:  # a broken sink must not kill the connection it reports on
            log.exception("transport sink failed", extra={"event": type(event).__name__})

    def _request(self, conn: _Conn, frame: dict) -> dict:
        rid = conn.next_rid
        conn.next_rid += 1
        result: gevent.event.AsyncResult[dict[str, Any]] = gevent.event.AsyncResult()
        conn.pending[rid] = result
        try:
            self._write(conn, {**frame, "rid": rid})
            reply = result.get(timeout=self.request_timeout)
        except gevent.Timeout:
            raise TransportError(f"no answer from the network within {self.request_timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"connection failed: {exc}") from None
        finally:
            conn.pending.pop(rid, None)
        assert reply is not None  # only reply frames are set
        if not reply.get("ok"):
            error = reply.get("error") or "refused by the network"
            # "not logged in" is the link's state, not a verdict on the request.
            raise TransportError(error, permanent=error != "not logged in")
        return reply

    def _write(self, conn: _Conn, frame: dict) -> None:
        """Send one frame; on failure the socket is closed (so the reader reports the loss) and
        OSError raised. A half-written frame would corrupt the stream, hence close rather than retry."""
        sock = conn.sock
        if sock is None or conn.state == _ENDED:
            raise OSError("not connected")
        try:
            with conn.lock, gevent.Timeout(self.request_timeout, TimeoutError):
                sock.sendall(protocol.encode(frame))
        except OSError:
            _close(sock)
            raise

    def _drop(self, conn: _Conn) -> None:
        """Release the connection's socket and wake everyone waiting on it. Idempotent."""
        conn.state = _ENDED
        conn.ready.set()
        if conn.sock is not None:
            _close(conn.sock)
        for result in list(conn.pending.values()):
            if not result.ready():
                result.set_exception(OSError("connection lost"))
        conn.pending.clear()

    # ------------------------------------------------------------------ device store

    def _load_store(self) -> dict | None:
        if self._store is False:
            try:
                with open(self._store_path, encoding="utf-8") as fh:
                    data = json.load(fh)
                self._store = data if isinstance(data, dict) and data.get("cred") else None
            except FileNotFoundError:
                self._store = None
            except (OSError, ValueError):
                log.warning("unreadable simulator device store, treating the bot as unpaired",
                            extra={"path": self._store_path})
                self._store = None
        return self._store  # type: ignore[return-value]

    def _save_store(self, data: dict) -> None:
        os.makedirs(os.path.dirname(self._store_path), exist_ok=True)
        tmp = self._store_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, self._store_path)  # atomic: a crash leaves the old store or the new one
        self._store = data

    def _forget_store(self) -> None:
        try:
            os.remove(self._store_path)
        except FileNotFoundError:
            pass
        self._store = None


def _close(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass

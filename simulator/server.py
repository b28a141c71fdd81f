"""The simulated WhatsApp network: a gevent ``StreamServer`` speaking ``simulator.protocol`` to bots,
plus the Python control API that tests, demos and the HTTP control app (``simulator.control``) use.

Model, kept just rich enough to exercise a session's life cycle:

* A bot is known by its id. Without a device credential it is shown rotating QR codes; it can also
  ask for a pair code for a phone number. A QR "scan" or pair code "entry" (control API) issues a
  credential, sends ``paired`` and then, as WhatsApp does, ends the stream with a stream restart.
* With a valid credential a login is answered with ``connected`` followed by everything that waited
  while the bot was away: inbound messages it has not acknowledged, and receipts.
* Outbound texts are recorded per bot with their client-fixed id (a resend of the same id is no second
  copy) and later receive ``delivered`` and ``read`` receipts.
* The owner can write to a customer from the paired phone (``phone_send``): the customer gets it (it
  is in the bot's outbox) and the bot is told, as WhatsApp tells linked devices, by a ``message``
  frame with ``from_me``.
* Faults can be injected for one bot or all: each ``DisconnectKind``, a hang, a full outage.

Everything runs on greenlets of the hub that ``start()`` is called in: one handler greenlet per
connection (it also rotates that connection's QR codes, so an idle connection costs no timer), and
short-lived greenlets for receipts. The Python API must be called from greenlets of that same hub.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import struct
import time
import zlib
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.lock
import gevent.pool
from gevent.server import StreamServer

from simulator import protocol
from simulator.protocol import FrameReader, ProtocolError

log = logging.getLogger(__name__)

_PAIR_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"  # WhatsApp's pair codes avoid 0/O and I/1 look-alikes

# Connection states on the server side.
_HELLO, _QR, _ONLINE, _SILENT, _ENDING, _CLOSED = "hello", "qr", "online", "silent", "ending", "closed"


class SimulatorError(Exception):
    """A control request cannot be carried out; ``status`` is the HTTP status the control API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Conn:
    """One accepted socket. Small on purpose: thousands of these live in one process."""

    __slots__ = ("sock", "bot", "state", "lock", "greenlet", "due")

    def __init__(self, sock: Any, greenlet: Any) -> None:
        self.sock = sock
        self.bot: _Bot | None = None
        self.state = _HELLO
        self.lock = gevent.lock.Semaphore()  # one writer at a time: handler, control calls, receipts
        self.greenlet = greenlet
        self.due: float | None = None  # monotonic time of the next timed step (hello timeout, QR, linger)


class _Bot:
    """What the network knows about one bot, for the simulator's lifetime."""

    __slots__ = (
        "bot_id", "cred", "jid", "conn", "qr", "pair_phone", "pair_code", "pending", "receipts", "outbox",
        "fail_kind", "fail_code", "fail_times", "ban_until", "ban_code", "hang", "media", "refuse_sends",
        "refuse_error",
    )  # fmt: skip

    def __init__(self, bot_id: str) -> None:
        self.bot_id = bot_id
        self.cred: str | None = None
        self.jid: str | None = None
        self.conn: _Conn | None = None  # the connection that logged in last (or shows the QR)
        self.qr: str | None = None
        self.pair_phone: str | None = None
        self.pair_code: str | None = None
        self.pending: dict[str, dict] = {}  # inbound messages sent or waiting, until the bot acks them
        self.receipts: list[dict] = []  # receipts that fell due while the bot was away
        self.outbox: dict[str, dict] = {}  # message id -> {id, to, text, ts, status}
        self.media: dict[str, bytes] = {}  # media ref -> bytes of inbound media, until downloaded and acked
        self.fail_kind: str | None = None
        self.fail_code: int | None = None
        self.fail_times = 0
        self.ban_until = 0.0
        self.ban_code: int | None = None
        self.hang = False
        self.refuse_sends = 0  # the next this many send requests are refused (see refuse_sends())
        self.refuse_error = ""


def _receipt_delays(value: Any) -> tuple[float | None, float | None]:
    """``None`` → no receipts; ``d`` → delivered after d, read d later; ``(d, r)`` → r after delivered."""
    if value is None:
        return None, None
    if isinstance(value, (int, float)):
        return float(value), float(value)
    delivered, read = value
    return (None if delivered is None else float(delivered)), (None if read is None else float(read))


class Simulator:
    """The network simulator. ``port=0`` / ``control_port=0`` pick free ports; ``control_port=None``
    means the port after ``port`` (or a free one when ``port`` is 0); ``control_port=False`` serves
    no HTTP control API (the Python API still works)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7300,
        control_port: int | bool | None = None,
        *,
        qr_rotate: float = 20.0,
        receipt_delay: Any = (1.0, 2.0),
        state_file: str | None = None,
        hello_timeout: float = 30.0,
        send_timeout: float = 10.0,
        linger: float = 2.0,
        outbox_limit: int = 1000,
    ) -> None:
        self.host = host
        self._port = port
        self._control_port = (port + 1 if port else 0) if control_port is None else control_port
        self.qr_rotate = float(qr_rotate)
        self.receipt_delay = _receipt_delays(receipt_delay)
        self.state_file = state_file
        self.hello_timeout = hello_timeout  # a socket that never says hello is dropped after this
        self.send_timeout = send_timeout  # a peer that does not read is dropped rather than block us
        self.linger = linger  # after a closing frame, how long the peer has to hang up before we do
        # Per bot, the newest sent messages kept (and so recognised as resends); a long benchmark
        # must not grow the simulator without bound.
        self.outbox_limit = outbox_limit
        self._bots: dict[str, _Bot] = {}
        self._conns: set[_Conn] = set()
        self._timers = gevent.pool.Group()  # receipt and linger greenlets, killed by stop()
        self._server: StreamServer | None = None
        self._control: Any = None
        self._outage = False
        self._hang = False
        self._started = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Simulator:
        self._load_state()
        self._listen()
        if self._control_port is not False:
            from gevent.pywsgi import WSGIServer

            from simulator.control import create_app

            self._control = WSGIServer((self.host, self._control_port), create_app(self), log=None)
            self._control.start()
            self._control_port = self._control.server_port
        self._started = True
        log.info("simulator listening", extra={"address": self.address, "control_url": self.control_url})
        return self

    def stop(self) -> None:
        """Close both listeners, every connection and every pending timer. Idempotent."""
        self._started = False
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._control is not None:
            self._control.stop(timeout=1)
            self._control = None
        for conn in list(self._conns):
            self._abort(conn)
        handlers = [conn.greenlet for conn in list(self._conns)]
        gevent.killall(handlers, timeout=2)
        self._timers.kill(timeout=2)

    def _listen(self) -> None:
        # A fixed port is reused across outages, so clients find the network again on recovery.
        self._server = StreamServer((self.host, self._port), self._handle)
        self._server.start()
        port = self._server.server_port
        assert port is not None  # it listens
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` of the transport socket, in the form WA_SIMULATOR_ADDR takes."""
        return f"{self.host}:{self._port}"

    @property
    def control_port(self) -> int | None:
        return None if self._control_port is False else self._control_port

    @property
    def control_url(self) -> str | None:
        return None if self._control_port is False else f"http://{self.host}:{self._control_port}"

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ the network side

    def _handle(self, sock: Any, _peer: Any) -> None:
        conn = _Conn(sock, gevent.getcurrent())
        self._conns.add(conn)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._hang:
                conn.state = _SILENT  # accept but never answer
            else:
                conn.due = time.monotonic() + self.hello_timeout
            reader = FrameReader(sock)
            while True:
                frame = self._read(conn, reader)
                if frame is None or conn.state in (_SILENT, _ENDING, _CLOSED):
                    continue  # a timed step ran, or we only wait for the peer to hang up
                self._dispatch(conn, frame)
        except (OSError, EOFError, ProtocolError):
            pass  # the peer went away or spoke garbage: either way this connection is over
        finally:
            conn.state = _CLOSED
            self._conns.discard(conn)
            bot = conn.bot
            if bot is not None and bot.conn is conn:
                bot.conn = None
                bot.qr = None
                bot.pair_code = None
            _close_socket(sock)

    def _read(self, conn: _Conn, reader: FrameReader) -> dict | None:
        """The next frame, or None after a timed step (QR rotation); raises EOFError to end."""
        due = conn.due
        if due is None:
            return reader.read()
        wait = due - time.monotonic()
        if wait > 0:
            timer = gevent.Timeout.start_new(wait)
            try:
                return reader.read()
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
            finally:
                timer.close()
            if conn.due is None or conn.due > time.monotonic():
                return None  # another greenlet moved the step (pairing ended the QR phase, ...)
        # The step fell due.
        if conn.state == _QR:
            self._show_qr(conn)
            return None
        raise EOFError("no hello in time" if conn.state == _HELLO else "peer did not hang up")

    def _dispatch(self, conn: _Conn, frame: dict) -> None:
        kind = frame["t"]
        rid = frame.get("rid")
        if conn.state == _HELLO:
            if kind != "hello":
                raise ProtocolError("the first frame must be hello")
            conn.due = None
            self._login(conn, frame)
            return
        bot = conn.bot
        assert bot is not None
        if kind == "ping":
            self._send(conn, {"t": "pong"})
        elif kind == "ack":
            if conn.state == _ONLINE:
                for message_id in frame.get("ids") or ():
                    bot.pending.pop(message_id, None)
        elif kind == "send":
            if conn.state != _ONLINE:
                self._reply(conn, rid, error="not logged in")
                return
            if bot.refuse_sends > 0:
                bot.refuse_sends -= 1
                self._reply(conn, rid, error=bot.refuse_error)
                return
            self._reply(conn, rid, **self._record_outbound(bot, frame))
        elif kind == "media":
            data = bot.media.get(str(frame.get("ref"))) if conn.state == _ONLINE else None
            if data is None:
                self._reply(conn, rid, error="no such media")
            else:
                self._reply(conn, rid, data=base64.b64encode(data).decode())
        elif kind == "query":
            record = bot.outbox.get(str(frame.get("id"))) if conn.state == _ONLINE else None
            self._reply(conn, rid, received=record is not None, status=record and record["status"])
        elif kind == "pair_code":
            if conn.state != _QR:
                self._reply(conn, rid, error="not waiting for pairing")
                return
            try:
                phone = protocol.phone_digits(frame.get("phone", ""))
            except ValueError as exc:
                self._reply(conn, rid, error=str(exc))
                return
            bot.pair_phone = phone
            bot.pair_code = "".join(secrets.choice(_PAIR_ALPHABET) for _ in range(8))
            code = f"{bot.pair_code[:4]}-{bot.pair_code[4:]}"
            log.info("pair code issued", extra={"bot_id": bot.bot_id, "phone": phone})
            self._reply(conn, rid, code=code)
        elif kind == "logout":
            if conn.state != _ONLINE:
                self._reply(conn, rid, error="not logged in")
                return
            log.info("device unlinked by the bot", extra={"bot_id": bot.bot_id})
            bot.cred = None
            bot.jid = None
            self._save_state()
            self._reply(conn, rid)
            self._end(conn, None)
        elif rid is not None:
            self._reply(conn, rid, error=f"unknown frame type {kind!r}")
        # Frames of unknown types without a request id are ignored: room for newer clients.

    def _login(self, conn: _Conn, hello: dict) -> None:
        bot_id = hello.get("bot")
        if not isinstance(bot_id, str) or not 0 < len(bot_id) <= 128:
            raise ProtocolError("hello needs a bot id")
        bot = self._bots.get(bot_id)
        if bot is None:
            bot = self._bots[bot_id] = _Bot(bot_id)
        conn.bot = bot
        if bot.hang:
            conn.state = _SILENT
            return
        remaining = bot.ban_until - time.monotonic()
        if remaining > 0:
            self._end(conn, "temporary_ban", code=bot.ban_code, expires_in=round(remaining, 3))
            return
        if bot.fail_times > 0:
            bot.fail_times -= 1
            self._end(conn, bot.fail_kind, code=bot.fail_code)
            return
        cred = hello.get("cred")
        if cred is not None and (bot.cred is None or not secrets.compare_digest(str(cred), bot.cred)):
            self._end(conn, "logged_out", code=401, detail="device credential unknown or revoked")
            return
        self._take_over(bot, conn)
        if cred is None:
            conn.state = _QR
            self._show_qr(conn)
            return
        # Held across the flush so a message arriving meanwhile queues behind what waited.
        with conn.lock:
            conn.state = _ONLINE
            frames = [{"t": "connected", "jid": bot.jid}, *bot.pending.values(), *bot.receipts]
            bot.receipts = []
            self._write(conn, b"".join(protocol.encode(f) for f in frames))

    def _take_over(self, bot: _Bot, conn: _Conn) -> None:
        """The newest connection wins, as on WhatsApp: the previous one gets a stream:error conflict."""
        old = bot.conn
        bot.conn = conn
        bot.qr = None
        bot.pair_code = None
        if old is not None and old is not conn and old.state in (_QR, _ONLINE, _SILENT):
            self._end(old, "replaced")

    def _show_qr(self, conn: _Conn) -> None:
        bot = conn.bot
        assert bot is not None
        bot.qr = f"2@{secrets.token_urlsafe(24)},{secrets.token_urlsafe(8)},{bot.bot_id}"
        conn.due = time.monotonic() + self.qr_rotate
        self._send(conn, {"t": "qr", "codes": [bot.qr]})

    def _record_outbound(self, bot: _Bot, frame: dict) -> dict:
        message_id = frame.get("id")
        text = frame.get("text")
        if not isinstance(message_id, str) or not message_id or not isinstance(text, str):
            return {"error": "send needs a string id and text"}
        try:
            to = protocol.user_jid(frame.get("to", ""))
        except ValueError as exc:
            return {"error": str(exc)}
        if message_id in bot.outbox:
            return {"dup": True}  # the network has it already: a resend after a lost ack is no copy
        record = {"id": message_id, "to": to, "text": text, "ts": time.time(), "status": "sent"}
        if frame.get("kind") in protocol.MEDIA_KINDS:
            try:
                data = base64.b64decode(frame.get("data") or "", validate=True)
            except ValueError:
                return {"error": "media data must be base64"}
            if not data:
                return {"error": "media needs data"}
            # Customers see the media's type, size and name; the bytes themselves are not kept.
            record.update(kind=frame["kind"], mime=str(frame.get("mime") or ""), size=len(data),
                          filename=str(frame.get("filename") or ""))
        bot.outbox[message_id] = record
        if len(bot.outbox) > self.outbox_limit:
            del bot.outbox[next(iter(bot.outbox))]  # dicts keep insertion order: the oldest goes
        if self.receipt_delay[0] is not None:
            self._timers.spawn(self._receipts, bot, record)
        return {"dup": False}

    def _receipts(self, bot: _Bot, record: dict) -> None:
        delivered, read = self.receipt_delay
        gevent.sleep(delivered or 0)
        self._receipt(bot, record, "delivered")
        if read is not None:
            gevent.sleep(read)
            self._receipt(bot, record, "read")

    def _receipt(self, bot: _Bot, record: dict, status: str) -> None:
        record["status"] = status
        frame = {"t": "receipt", "ids": [record["id"]], "chat": record["to"], "status": status}
        conn = bot.conn
        if conn is None or conn.state != _ONLINE or not self._send(conn, frame):
            bot.receipts.append(frame)  # delivered at the next login
            if len(bot.receipts) > 2 * self.outbox_limit:
                del bot.receipts[0]

    # ------------------------------------------------------------------ writing and ending

    def _reply(self, conn: _Conn, rid: Any, error: str | None = None, **fields: Any) -> None:
        if rid is None:
            return
        frame = {"t": "reply", "rid": rid, "ok": error is None}
        if error is not None:
            frame["error"] = error
        frame.update(fields)
        self._send(conn, frame)

    def _send(self, conn: _Conn, frame: dict, force: bool = False) -> bool:
        if conn.state == _CLOSED or (conn.state in (_SILENT, _ENDING) and not force):
            return False
        with conn.lock:
            return self._write(conn, protocol.encode(frame))

    def _write(self, conn: _Conn, data: bytes) -> bool:
        """Caller holds ``conn.lock``. A peer that does not read within send_timeout is dropped."""
        try:
            with gevent.Timeout(self.send_timeout, TimeoutError):
                conn.sock.sendall(data)
            return True
        except OSError:
            self._abort(conn)
            return False

    def _end(self, conn: _Conn, kind: str | None, code: int | None = None, expires_in: float | None = None,
             detail: str = "") -> None:
        """End a connection the orderly way: a ``disconnect`` frame (unless ``kind`` is None), then FIN.

        The socket is not closed at once: closing with unread input would send an RST that can
        overtake our frame. The peer hangs up on seeing the frame; ``linger`` seconds bound the wait.
        """
        if conn.state in (_ENDING, _CLOSED):
            return
        if kind is not None:
            frame: dict[str, Any] = {"t": "disconnect", "kind": kind}
            if code is not None:
                frame["code"] = code
            if expires_in is not None:
                frame["expires_in"] = expires_in
            if detail:
                frame["detail"] = detail
            self._send(conn, frame, force=True)  # a silenced connection may still be told off
        if conn.state == _CLOSED:
            return
        conn.state = _ENDING
        conn.due = time.monotonic() + self.linger
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if gevent.getcurrent() is not conn.greenlet:
            # The handler may sit in a recv without a timeout; make sure the linger bound holds.
            self._timers.add(gevent.spawn_later(self.linger, self._abort, conn))

    def _abort(self, conn: _Conn) -> None:
        """Drop a connection abruptly (RST): what a network failure looks like to the peer."""
        if conn.state == _CLOSED:
            return
        conn.state = _CLOSED
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        _close_socket(conn.sock)  # wakes the handler's recv, which then cleans up

    # ------------------------------------------------------------------ the control API

    def _known(self, bot_id: str) -> _Bot:
        bot = self._bots.get(bot_id)
        if bot is None:
            raise SimulatorError(404, f"no bot {bot_id!r} has connected to the simulator")
        return bot

    def scan(self, bot_id: str, code: str | None = None, phone: str | None = None) -> str:
        """The phone scans the bot's QR code (the current one, or ``code`` if given): returns the jid."""
        bot = self._known(bot_id)
        conn = bot.conn
        if conn is None or conn.state != _QR or bot.qr is None:
            raise SimulatorError(409, "the bot is not showing a QR code")
        if code is not None and code != bot.qr:
            raise SimulatorError(409, "that QR code is not the current one (expired?)")
        phone = protocol.phone_digits(phone) if phone else "1555" + f"{zlib.crc32(bot_id.encode()) % 10**7:07d}"
        return self._pair(bot, conn, phone)

    def enter_pair_code(self, bot_id: str, code: str | None = None) -> str:
        """The phone's user types the bot's pair code (any pending one, or checks ``code``): the jid."""
        bot = self._known(bot_id)
        conn = bot.conn
        if conn is None or conn.state != _QR or bot.pair_code is None or bot.pair_phone is None:
            raise SimulatorError(409, "the bot has not requested a pair code")
        if code is not None and code.replace("-", "").upper() != bot.pair_code:
            raise SimulatorError(409, "wrong pair code")
        return self._pair(bot, conn, bot.pair_phone)

    def _pair(self, bot: _Bot, conn: _Conn, phone: str) -> str:
        bot.cred = secrets.token_urlsafe(24)
        bot.jid = f"{phone}@{protocol.USER_SERVER}"
        bot.qr = None
        bot.pair_code = None
        bot.pair_phone = None
        conn.due = None  # stop rotating QR codes
        self._save_state()
        log.info("bot paired", extra={"bot_id": bot.bot_id, "jid": bot.jid})
        self._send(conn, {"t": "paired", "jid": bot.jid, "cred": bot.cred})
        self._end(conn, "stream_restart")  # like WhatsApp: log in again, now with the credential
        return bot.jid

    def inbound(self, bot_id: str, sender: str, text: str, message_id: str | None = None,
                media: dict | None = None) -> str:
        """Customer ``sender`` (digits or jid) sends ``text`` to the bot; returns the message id.

        ``media`` (``{"kind": "image"|"audio"|"video"|"document"|"sticker", "mime": ..., "data": bytes}``)
        makes it a media message with ``text`` as its caption; the bot downloads the bytes with a
        ``media`` request. Delivered at once if the bot is online, else at its next login;
        redelivered until acked."""
        bot = self._known(bot_id)
        jid = protocol.user_jid(sender)
        message_id = message_id or "3EB0" + secrets.token_hex(8).upper()
        frame = {"t": "message", "id": message_id, "chat": jid, "sender": jid, "ts": time.time(), "text": str(text)}
        if media is not None:
            kind = str(media.get("kind", "image"))
            if kind not in protocol.MEDIA_KINDS:
                raise SimulatorError(400, f"media kind must be one of {', '.join(protocol.MEDIA_KINDS)}")
            data = media.get("data")
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise SimulatorError(400, "media needs non-empty data")
            ref = "m-" + secrets.token_hex(8)
            bot.media[ref] = bytes(data)
            frame.update(kind=kind, mime=str(media.get("mime") or "application/octet-stream"), media=ref,
                         text="", caption=str(text))
        bot.pending[message_id] = frame
        conn = bot.conn
        if conn is not None and conn.state == _ONLINE:
            self._send(conn, frame)
        return message_id

    def phone_send(self, bot_id: str, to: str, text: str, message_id: str | None = None) -> str:
        """The owner sends ``text`` to customer ``to`` from the bot's paired phone; returns the id.

        The customer receives it: it is recorded in the bot's outbox with ``from_phone`` (status
        'sent'; a phone's own message gets no receipts here). The bot, as a linked device, is told
        by a ``message`` frame with ``from_me`` (chat: the customer, sender: the bot's own jid),
        delivered like an inbound message: pending until acked, redelivered at each login.
        ``message_id`` of a message the bot itself sent makes this the echo of that message: the
        customer already has it, only the bot is told."""
        bot = self._known(bot_id)
        if bot.cred is None or bot.jid is None:
            raise SimulatorError(409, "the bot is not paired: there is no phone to send from")
        jid = protocol.user_jid(to)
        message_id = message_id or "3EB0" + secrets.token_hex(8).upper()
        now = time.time()
        if message_id not in bot.outbox:
            bot.outbox[message_id] = {"id": message_id, "to": jid, "text": str(text), "ts": now, "status": "sent",
                                      "from_phone": True}
            if len(bot.outbox) > self.outbox_limit:
                del bot.outbox[next(iter(bot.outbox))]
        frame = {"t": "message", "id": message_id, "chat": jid, "sender": bot.jid, "ts": now, "text": str(text),
                 "from_me": True}
        bot.pending[message_id] = frame
        conn = bot.conn
        if conn is not None and conn.state == _ONLINE:
            self._send(conn, frame)
        return message_id

    def refuse_sends(self, bot_id: str, times: int = 1, error: str = "recipient refused by the network") -> None:
        """The bot's next ``times`` send requests are answered with ``error``: a refusal of the
        request itself, which the bot takes as permanent (its pipeline dead-letters the row), so
        tests can make dead letters. ``recover()`` forgets what is left of it."""
        bot = self._known(bot_id)
        if not error:
            raise SimulatorError(400, "a refusal needs an error text")
        bot.refuse_sends = max(int(times), 0)
        bot.refuse_error = str(error)

    def inject(self, bot_id: str | None, kind: str, code: int | None = None, expires_in: float | None = None,
               times: int = 1) -> None:
        """Inject a fault into one bot's network (``bot_id``) or every bot the simulator knows (None).

        ``stream_restart``, ``network``, ``keepalive_timeout``, ``replaced``: act on the live connection.
        ``connect_failure``, ``client_outdated``: the next ``times`` logins fail with ``code`` (a live
        connection is ended with it, counting as one). ``logged_out``: the credential is revoked.
        ``temporary_ban``: logins are refused for ``expires_in`` seconds. ``hang``: the live connection
        and later logins get no answer until ``recover()``.
        """
        if kind not in protocol.FAULT_KINDS:
            raise SimulatorError(400, f"unknown fault kind {kind!r}; one of {', '.join(protocol.FAULT_KINDS)}")
        bots: Iterable[_Bot] = list(self._bots.values()) if bot_id is None else [self._known(bot_id)]
        for bot in bots:
            self._inject(bot, kind, code, expires_in, int(times), strict=bot_id is not None)

    def _inject(self, bot: _Bot, kind: str, code: int | None, expires_in: float | None, times: int,
                strict: bool) -> None:
        conn = bot.conn if bot.conn is not None and bot.conn.state in (_QR, _ONLINE, _SILENT) else None
        code = protocol.DEFAULT_CODES.get(kind) if code is None else int(code)
        log.info("fault injected", extra={"bot_id": bot.bot_id, "kind": kind, "code": code})
        if kind in ("stream_restart", "network", "keepalive_timeout", "replaced"):
            if conn is None:
                if strict:
                    raise SimulatorError(409, "the bot is not connected")
                return
            if kind == "network":
                self._abort(conn)
            elif kind == "keepalive_timeout":
                conn.state = _SILENT  # the bot's pings go unanswered; it notices by itself
            else:
                self._end(conn, kind, code=None if kind == "stream_restart" else code)
        elif kind in ("connect_failure", "client_outdated"):
            bot.fail_kind, bot.fail_code, bot.fail_times = kind, code, max(times, 0)
            if conn is not None and bot.fail_times > 0:
                bot.fail_times -= 1
                self._end(conn, kind, code=code)
        elif kind == "logged_out":
            bot.cred = None
            bot.jid = None
            self._save_state()
            if conn is not None:
                self._end(conn, kind, code=code, detail="device unlinked from the phone")
        elif kind == "temporary_ban":
            seconds = 60.0 if expires_in is None else float(expires_in)
            bot.ban_until = time.monotonic() + seconds
            bot.ban_code = code
            if conn is not None:
                self._end(conn, kind, code=code, expires_in=seconds)
        elif kind == "hang":
            bot.hang = True
            if conn is not None:
                conn.state = _SILENT

    def outage(self) -> None:
        """The whole network goes away: every connection drops and new ones are refused (the
        listening socket is closed, so a dial gets ECONNREFUSED) until ``recover()``."""
        log.info("outage")
        self._outage = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            self._abort(conn)

    def recover(self) -> None:
        """End an outage and every hang; forget pending connect failures, bans and send refusals.
        Revoked credentials stay revoked."""
        log.info("recover")
        self._outage = False
        self._hang = False
        for bot in self._bots.values():
            bot.hang = False
            bot.fail_times = 0
            bot.ban_until = 0.0
            bot.refuse_sends = 0
        if self._server is None and self._started:
            self._listen()

    def hang(self, on: bool = True) -> None:
        """While on, new connections are accepted but never answered (a black-holed server)."""
        self._hang = bool(on)

    def configure(self, qr_rotate: float | None = None, receipt_delay: Any = ...) -> None:
        if qr_rotate is not None:
            self.qr_rotate = float(qr_rotate)
        if receipt_delay is not ...:
            self.receipt_delay = _receipt_delays(receipt_delay)

    def outbox(self, bot_id: str, to: str | None = None) -> list[dict]:
        """What the bot sent, oldest first, with receipt state; only to customer ``to`` if given."""
        bot = self._known(bot_id)
        jid = protocol.user_jid(to) if to else None
        return [dict(r) for r in bot.outbox.values() if jid is None or r["to"] == jid]

    def received(self, bot_id: str, message_id: str) -> bool:
        bot = self._bots.get(bot_id)
        return bot is not None and message_id in bot.outbox

    def bot_state(self, bot_id: str) -> dict:
        bot = self._known(bot_id)
        conn = bot.conn
        state = "offline" if conn is None or conn.state in (_ENDING, _CLOSED) else conn.state
        return {
            "bot": bot.bot_id,
            "paired": bot.cred is not None,
            "jid": bot.jid,
            "connected": state == _ONLINE,
            "state": state,
            "qr": bot.qr if state == _QR else None,
            "pair_code_pending": bot.pair_code is not None,
            "pending_inbound": len(bot.pending),
            "outbox": len(bot.outbox),
            "banned_for": max(0.0, round(bot.ban_until - time.monotonic(), 3)),
            "hang": bot.hang,
        }

    def bots(self) -> list[dict]:
        return [self.bot_state(bot_id) for bot_id in list(self._bots)]

    def health(self) -> dict:
        return {"ok": True, "outage": self._outage, "hang": self._hang, "connections": len(self._conns),
                "bots": len(self._bots)}

    # ------------------------------------------------------------------ persistence

    def _load_state(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file, encoding="utf-8") as fh:
            data = json.load(fh)
        for bot_id, saved in (data.get("bots") or {}).items():
            bot = self._bots.setdefault(bot_id, _Bot(bot_id))
            bot.cred = saved.get("cred")
            bot.jid = saved.get("jid")

    def _save_state(self) -> None:
        if not self.state_file:
            return
        data = {"bots": {b.bot_id: {"cred": b.cred, "jid": b.jid} for b in self._bots.values() if b.cred}}
        _write_json(self.state_file, data)


def _write_json(path: str, data: Any) -> None:
    """Atomically: a crash mid-write leaves the old file, never half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _close_socket(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass

"""``GET /api/v1/ws`` over real TCP on 127.0.0.1 with a raw-socket WebSocket client (handshake,
masking, fragments, bad frames on purpose): events live and resumed, heartbeats, commands (ping,
filter, send to the outbox) and their errors on a connection that stays open, size limits, tenant
isolation, authentication, and the clean-up of every way a connection can end.

The client frames by hand on purpose: it is an implementation independent of the server's (wsproto),
and it must be able to send what no library sends (unmasked frames, reserved bits, lying lengths)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import struct
import time
import uuid
from urllib.parse import urlencode, urlsplit

import pykka
import pytest
import requests
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage

from actors.base import actor_of
from actors.subscriber import Subscriber
from core import config
from db import bots as bots_db
from db import events as events_db
from db import tenants
from tests.waiting import wait_until
from web.ws import CLOSE_WAIT, _MessageLimit

TIMEOUT = 5
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class WS:
    """A minimal RFC 6455 client. ``status`` is the handshake's HTTP status; for anything but 101,
    ``body`` is the response body."""

    def __init__(self, url, key=None, params=None, headers=None, path="/api/v1/ws", upgrade=True, rcvbuf=None):
        parts = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so the advertised window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((parts.hostname, parts.port))
        self.buf = bytearray()
        query = dict(params or {})
        lines = [f"GET {path}{'?' + urlencode(query, doseq=True) if query else ''} HTTP/1.1",
                 f"Host: {parts.hostname}:{parts.port}"]
        nonce = base64.b64encode(os.urandom(16)).decode()
        if upgrade:
            lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {nonce}",
                      "Sec-WebSocket-Version: 13"]
        if key is not None:
            lines.append(f"Authorization: Bearer {key}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        self.body = b""
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1((nonce + GUID).encode()).digest()).decode()
            assert self.headers["sec-websocket-accept"] == expected
        elif "content-length" in self.headers:
            self.body = self._exact(int(self.headers["content-length"]))

    # bytes

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    # frames

    def send_frame(self, opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
        """One frame; ``length`` claims a payload length other than the one sent (for limit tests)."""
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | rsv | opcode])
        bit = 0x80 if mask else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        if mask:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def send(self, message):
        self.send_frame(TEXT, (message if isinstance(message, str) else json.dumps(message)).encode())

    def frame(self):
        first, second = self._exact(2)
        assert not second & 0x80, "server frames are never masked"
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exact(8))[0]
        return first & 0x0F, self._exact(n)

    def recv(self, pings=False, answer=True):
        """The next JSON text frame; WebSocket pings are answered, JSON pings skipped unless ``pings``."""
        while True:
            opcode, payload = self.frame()
            if opcode == PING:
                if answer:
                    self.send_frame(PONG, payload)
                continue
            if opcode == CLOSE:
                raise AssertionError(f"closed: {close_code(payload)} {payload[2:]!r}")
            assert opcode == TEXT, opcode
            message = json.loads(payload)
            if message["type"] == "ping" and not pings:
                continue
            return message

    def ready(self):
        message = self.recv()
        assert message["type"] == "ready", message
        return message

    def event(self):
        message = self.recv()
        assert message["type"] == "event", message
        return message["event"]

    def command(self, **command):
        self.send(command)
        return self.recv()

    def expect_close(self, answer=True):
        """Frames up to the server's close frame: (close code, JSON frames before it); then the socket ends."""
        seen = []
        while True:
            opcode, payload = self.frame()
            if opcode == CLOSE:
                if answer:
                    self.send_frame(CLOSE, payload[:2])
                with pytest.raises((EOFError, ConnectionResetError)):
                    while True:
                        self._fill()
                return close_code(payload), seen
            if opcode == TEXT:
                seen.append(json.loads(payload))

    def close(self):
        self.sock.close()


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# -- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture
def tenant(pool):
    """A fresh tenant: (tenant id, API key, a bot id)."""
    tenant_id, key = tenants.create_tenant(pool, f"ws-{uuid.uuid4().hex[:8]}")
    bot = bots_db.create(pool, tenant_id, f"bot-{uuid.uuid4().hex[:6]}", {})["id"]
    return tenant_id, key, bot


def tune(web, **changes):
    """Settings are read per connection from the root, so a test can change them on the running app."""
    web.settings = config.replace(web.settings, **changes)


def entries(web, tenant_id):
    return [e for e in list(actor_of(web.bus).entries.values()) if e.tenant_id == tenant_id]


def subscribers(web, tenant_id):
    """The Subscriber actors of a tenant's connections (their actors, not only their bus entries)."""
    return [actor_of(entry.ref) for entry in entries(web, tenant_id)]


def alive(urn):
    return urn in {ref.actor_urn for ref in pykka.ActorRegistry.get_by_class(Subscriber)}


def connect(web, key, **params):
    ws = WS(web.url, key, params)
    assert ws.status == 101, ws.body
    ws.ready()
    return ws


def burst(pool, tenant_id, bot_id, count, size=0):
    """``count`` events committed in one transaction: the bus reads them as one batch."""

    def work(unit):
        unit.execute("SELECT pg_advisory_xact_lock(%s)", (events_db._LOCK,))
        unit.execute(
            "INSERT INTO events (bot_id, type, payload)"
            " SELECT %s, 'test.burst', jsonb_build_object('n', n, 'pad', repeat('x', %s))"
            " FROM generate_series(1, %s) n",
            (bot_id, size, count),
        )
        unit.execute("SELECT pg_notify(%s, '')", (events_db.CHANNEL,))

    pool.run(tenant_id, work, repeatable=False)


def outbox_rows(pool, tenant_id):
    return pool.query(
        tenant_id,
        "SELECT id, bot_id, to_jid, wa_message_id, kind, body, state, attempts, correlation_id FROM outbox"
        " ORDER BY created_at",
    )


# -- events -------------------------------------------------------------------------------------------


def test_events_arrive_live_as_json_text_frames(web, tenant):
    tenant_id, key, bot = tenant
    ws = connect(web, key)
    event_id = web.publish(tenant_id, bot, "bot.state", {"state": "connected"})
    event = ws.event()
    assert event["id"] == event_id
    assert event["type"] == "bot.state" and event["bot_id"] == bot
    assert event["payload"] == {"state": "connected"}
    assert event["created_at"]
    assert len(entries(web, tenant_id)) == 1 and entries(web, tenant_id)[0].kind == "ws"
    ws.close()


def test_the_key_may_come_as_a_token_query_parameter(web, tenant):
    tenant_id, key, bot = tenant
    ws = connect(web, None, token=key)
    web.publish(tenant_id, bot, "bot.qr", {})
    assert ws.event()["type"] == "bot.qr"
    ws.close()


def test_a_resumed_connection_gets_the_missed_events_then_live_ones_without_gap_or_duplicate(web, tenant):
    tenant_id, key, bot = tenant
    first = web.publish(tenant_id, bot, "m.one", {})
    second = web.publish(tenant_id, bot, "m.two", {})
    third = web.publish(tenant_id, None, "m.three", {})
    ws = WS(web.url, key, {"last_event_id": first})
    assert ws.ready()["last_event_id"] == first
    assert [ws.event()["id"] for _ in range(2)] == [second, third]
    live = web.publish(tenant_id, bot, "m.four", {})
    assert ws.event()["id"] == live
    ws.close()


def test_query_filters_apply_to_the_backlog_and_live_events(web, tenant, pool):
    tenant_id, key, bot = tenant
    other_bot = bots_db.create(pool, tenant_id, "other", {})["id"]
    start = web.publish(tenant_id, bot, "x.start", {})
    web.publish(tenant_id, other_bot, "msg.in", {})
    wanted = web.publish(tenant_id, bot, "msg.in", {})
    web.publish(tenant_id, bot, "bot.state", {})
    ws = connect(web, key, last_event_id=start, bot=bot, type="msg.*")
    assert ws.event()["id"] == wanted
    web.publish(tenant_id, other_bot, "msg.in", {})
    live = web.publish(tenant_id, bot, "msg.out", {})
    assert ws.event()["id"] == live
    ws.close()


def test_another_tenants_events_never_arrive(web, tenant, make_tenant, pool):
    tenant_id, key, bot = tenant
    other_id, other_key = make_tenant()
    other_bot = bots_db.create(pool, other_id, "theirs", {})["id"]
    start = web.publish(tenant_id, bot, "mine.start", {})
    web.publish(other_id, other_bot, "theirs.before", {})
    ws = connect(web, key, last_event_id=start)
    web.publish(other_id, other_bot, "theirs.live", {})
    web.publish(other_id, None, "theirs.tenant", {})
    mine = web.publish(tenant_id, bot, "mine.live", {})
    # Delivery is in id order: had any of theirs come through, it would arrive before mine.
    assert ws.event()["id"] == mine
    # Naming their bot in a filter does not reach across either.
    assert ws.command(op="filter", bot=[other_bot])["ok"] is True
    theirs = web.publish(other_id, other_bot, "theirs.again", {})
    wait_until(lambda: actor_of(web.bus).high >= theirs, TIMEOUT, "the bus to route their event")
    # Back to everything: had theirs been routed to this connection, it would arrive before mine.
    assert ws.command(op="filter")["ok"] is True
    mine = web.publish(tenant_id, bot, "mine.again", {})
    assert ws.event()["id"] == mine
    ws.close()


def test_an_idle_stream_gets_json_and_websocket_pings(web, tenant):
    _, key, _ = tenant
    tune(web, sse_heartbeat=0.2)
    ws = connect(web, key)
    started = time.monotonic()
    opcodes = [ws.frame()[0] for _ in range(2)]
    assert opcodes == [TEXT, PING]
    assert time.monotonic() - started < 1.5
    assert ws.recv(pings=True) == {"type": "ping"}  # pongs answered: the connection stays
    ws.close()


def test_a_client_that_answers_no_ping_is_dropped(web, tenant):
    tenant_id, key, _ = tenant
    tune(web, sse_heartbeat=0.15)
    ws = connect(web, key)
    started = time.monotonic()
    # Takes pings and answers none: after two heartbeats a close 1001, and the connection is reset
    # (a gone client cannot take data; the kernel need not keep any for it), which may overtake it.
    with pytest.raises(ConnectionResetError):
        while True:
            opcode, payload = ws.frame()
            assert opcode in (TEXT, PING) or (opcode == CLOSE and close_code(payload) == 1001)
    assert time.monotonic() - started < 2
    wait_until(lambda: not entries(web, tenant_id), TIMEOUT, "the subscriber to be unregistered")


# -- commands -----------------------------------------------------------------------------------------


def test_ping_gets_a_pong_that_echoes_the_id(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    assert ws.command(op="ping", id="a-1") == {"type": "pong", "id": "a-1"}
    assert ws.command(op="ping", id=7) == {"type": "pong", "id": 7}
    assert ws.command(op="ping") == {"type": "pong", "id": None}
    ws.close()


def test_a_filter_command_changes_what_arrives(web, tenant, pool):
    tenant_id, key, bot = tenant
    other_bot = bots_db.create(pool, tenant_id, "other", {})["id"]
    ws = connect(web, key)
    result = ws.command(op="filter", id=1, bot=[bot], type=["msg.*"])
    assert result == {"type": "result", "op": "filter", "ok": True, "filter": {"bot": [bot], "type": ["msg.*"]},
                      "id": 1}
    web.publish(tenant_id, other_bot, "msg.in", {})
    web.publish(tenant_id, bot, "bot.state", {})
    wanted = web.publish(tenant_id, bot, "msg.in", {})
    assert ws.event()["id"] == wanted
    # Back to everything: no lists means no filter.
    assert ws.command(op="filter")["filter"] == {"bot": [], "type": []}
    everything = web.publish(tenant_id, other_bot, "bot.state", {})
    assert ws.event()["id"] == everything
    ws.close()


def test_a_bad_filter_is_an_error_frame_and_the_old_filter_stays(web, tenant):
    tenant_id, key, bot = tenant
    ws = connect(web, key, bot=bot)
    error = ws.command(op="filter", id="f", bot=["not-a-uuid"])
    assert error["type"] == "error" and error["code"] == "invalid_input" and error["field"] == "bot"
    assert error["id"] == "f" and error["op"] == "filter"
    assert ws.command(op="filter", type=[3])["field"] == "type"
    assert ws.command(op="filter", bots=[bot])["field"] == "bots"
    web.publish(tenant_id, None, "tenant.wide", {})
    mine = web.publish(tenant_id, bot, "bot.state", {})
    assert ws.event()["id"] == mine
    ws.close()


def test_send_queues_a_pending_outbox_row_for_the_tenants_bot(web, tenant, pool):
    tenant_id, key, bot = tenant
    ws = connect(web, key)
    result = ws.command(op="send", id="s1", bot_id=bot, to="+49 151 1234-5678", text="Hallo 👋")
    assert result["type"] == "result" and result["op"] == "send" and result["ok"] is True
    assert result["id"] == "s1" and result["to"] == "4915112345678@s.whatsapp.net"
    again = ws.command(op="send", bot_id=bot, to="4915112345678@S.WhatsApp.net", text="x" * 4096)
    assert again["ok"] is True and again["to"] == "4915112345678@s.whatsapp.net"
    rows = outbox_rows(pool, tenant_id)
    assert [str(r[0]) for r in rows] == [result["outbox_id"], again["outbox_id"]]
    oid, row_bot, to_jid, wa_id, kind, body, state, attempts, correlation = rows[0]
    assert str(row_bot) == bot and to_jid == "4915112345678@s.whatsapp.net"
    assert re.fullmatch(r"3EB0[0-9A-F]{16}", wa_id) and wa_id != rows[1][3]
    assert (kind, body, state, attempts) == ("text", "Hallo 👋", "pending", 0)
    assert correlation and correlation != rows[1][8]  # one per command, logged with it
    # Queued like an HTTP send: the outgoing message is in the conversation, waiting for delivery.
    messages = pool.query(
        tenant_id, "SELECT direction, status, body FROM messages WHERE outbox_id = %s", (result["outbox_id"],)
    )
    assert messages == [("out", "pending", "Hallo 👋")]
    ws.close()


def test_a_send_over_the_websocket_is_in_the_audit_log_as_the_key(web, tenant, pool):
    from db import audit as audit_db

    tenant_id, key, bot = tenant
    ws = connect(web, key)
    result = ws.command(op="send", bot_id=bot, to="4915112345678", text="hi")
    ws.close()
    (entry,) = audit_db.entries(pool, tenant_id, audit_db.Filters(action="message.send"), 10)
    assert entry["object_id"] == result["outbox_id"] and entry["actor"]["kind"] == "api_key"
    assert entry["actor"]["label"] == key[:10] and entry["client_address"] == "127.0.0.1"


def test_a_send_past_the_daily_quota_is_an_error_frame_and_the_connection_stays(web, tenant, pool):
    from db import quotas
    from sansio import quotas as q

    tenant_id, key, bot = tenant
    quotas.set_limits(pool, tenant_id, {q.MESSAGES_PER_DAY: 1})
    ws = connect(web, key)
    assert ws.command(op="send", bot_id=bot, to="4915112345678", text="one")["ok"] is True
    refused = ws.command(op="send", bot_id=bot, to="4915112345678", text="two")
    assert refused["type"] == "error" and refused["code"] == "quota_exceeded"
    assert ws.command(op="ping")["type"] == "pong"
    assert len(outbox_rows(pool, tenant_id)) == 1
    ws.close()


def test_send_to_another_tenants_bot_is_not_found_and_queues_nothing(web, tenant, make_tenant, pool):
    tenant_id, key, _ = tenant
    other_id, _ = make_tenant()
    their_bot = bots_db.create(pool, other_id, "theirs", {})["id"]
    ws = connect(web, key)
    for bot_id in (their_bot, str(uuid.uuid4()), "not-a-uuid"):
        error = ws.command(op="send", id="x", bot_id=bot_id, to="4915112345678", text="hi")
        assert (error["type"], error["code"], error["id"], error["op"]) == ("error", "not_found", "x", "send")
    assert outbox_rows(pool, tenant_id) == [] and outbox_rows(pool, other_id) == []
    assert ws.command(op="ping")["type"] == "pong"  # still open
    ws.close()


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"to": "4915112345678", "text": "hi"}, "bot_id"),
        ({"bot_id": "BOT", "text": "hi"}, "to"),
        ({"bot_id": "BOT", "to": "4915112345678"}, "text"),
        ({"bot_id": "BOT", "to": "4915112345678", "text": "x" * 4097}, "text"),
        ({"bot_id": "BOT", "to": "4915112345678", "text": "   "}, "text"),
        ({"bot_id": "BOT", "to": "12ab", "text": "hi"}, "to"),
        ({"bot_id": "BOT", "to": "123@example.com", "text": "hi"}, "to"),
        ({"bot_id": "BOT", "to": "120363012345678901@g.us", "text": "hi"}, "to"),
        ({"bot_id": "BOT", "to": "4915112345678", "text": "a\x00b"}, "text"),
        ({"bot_id": 5, "to": "4915112345678", "text": "hi"}, "bot_id"),
        ({"bot_id": "BOT", "to": "4915112345678", "text": "hi", "media": "x"}, "media"),
    ],
)
def test_send_with_a_missing_or_bad_field_names_it_and_the_connection_stays(web, tenant, pool, fields, field):
    tenant_id, key, bot = tenant
    ws = connect(web, key)
    fields = {k: (bot if v == "BOT" else v) for k, v in fields.items()}
    error = ws.command(op="send", id=9, **fields)
    assert (error["type"], error["code"], error["field"], error["id"]) == ("error", "invalid_input", field, 9)
    assert outbox_rows(pool, tenant_id) == []
    assert ws.command(op="ping")["type"] == "pong"
    ws.close()


def test_malformed_frames_get_error_frames_and_the_connection_stays_open(web, tenant):
    tenant_id, key, bot = tenant
    ws = connect(web, key)
    ws.send("{not json")
    assert ws.recv()["code"] == "invalid_json"
    ws.send("[1, 2]")
    assert ws.recv()["code"] == "invalid_message"
    ws.send('"ping"')
    assert ws.recv()["code"] == "invalid_message"
    assert ws.command(op="subscribe", id="u") == {
        "type": "error", "code": "unknown_op", "id": "u",
        "message": "unknown op 'subscribe'; one of ping, filter, send",
    }
    missing = ws.command(id="m")
    assert (missing["code"], missing["field"], missing["id"]) == ("invalid_input", "op", "m")
    assert ws.command(op=["ping"])["code"] == "unknown_op"
    assert ws.command(op="ping", id={"x": 1})["field"] == "id"
    ws.send_frame(BINARY, b"\x00\x01binary")
    assert ws.recv()["code"] == "binary_not_supported"
    # A message in fragments, with a ping between them, is one command.
    ws.send_frame(TEXT, b'{"op": "pi', fin=False)
    ws.send_frame(PING, b"hb")
    assert ws.frame() == (PONG, b"hb")
    ws.send_frame(0x0, b'ng", "id": "frag"}')
    assert ws.recv() == {"type": "pong", "id": "frag"}
    live = web.publish(tenant_id, bot, "still.open", {})
    assert ws.event()["id"] == live
    ws.close()


def test_a_text_message_in_fragments_is_one_command(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(TEXT, b'{"op": ', fin=False)
    ws.send_frame(0x0, b'"ping", "id": ', fin=False)
    ws.send_frame(0x0, b'"three parts"}')
    assert ws.recv() == {"type": "pong", "id": "three parts"}
    ws.close()


def test_a_character_split_between_fragments_arrives_whole(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    encoded = '{"op": "ping", "id": "é"}'.encode()
    split = encoded.index(b"\xc3") + 1  # between the two bytes of "é"
    ws.send_frame(TEXT, encoded[:split], fin=False)
    ws.send_frame(0x0, encoded[split:])
    assert ws.recv() == {"type": "pong", "id": "é"}
    ws.close()


def test_a_binary_message_in_fragments_gets_one_error(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(BINARY, b"\x00\x01", fin=False)
    ws.send_frame(0x0, b"\x02\x03")
    assert ws.recv()["code"] == "binary_not_supported"
    assert ws.command(op="ping", id="after") == {"type": "pong", "id": "after"}  # and no second error first
    ws.close()


def test_a_websocket_ping_gets_a_pong_with_its_payload(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(PING, b"are you there")
    assert ws.frame() == (PONG, b"are you there")
    ws.close()


# -- limits and protocol errors -----------------------------------------------------------------------


def test_an_oversized_frame_is_refused_with_frame_too_large_and_close_1009(web, tenant):
    tenant_id, key, _ = tenant
    tune(web, ws_max_frame=1024)
    ws = connect(web, key)
    assert ws.command(op="send", text="x" * 900)["code"] == "invalid_input"  # under the limit: read
    ws.send_frame(TEXT, json.dumps({"op": "ping", "pad": "x" * 2000}).encode())
    code, frames = ws.expect_close()
    assert code == 1009
    assert [f["code"] for f in frames] == ["frame_too_large"]
    wait_until(lambda: not entries(web, tenant_id), TIMEOUT, "the subscriber to be unregistered")


def test_a_frame_header_claiming_gigabytes_is_refused_before_any_payload_is_read(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(TEXT, b"", length=8 << 30)  # the header only; no payload follows
    code, frames = ws.expect_close()
    assert code == 1009 and frames[0]["code"] == "frame_too_large"


def test_fragments_count_together_against_the_limit(web, tenant):
    _, key, _ = tenant
    tune(web, ws_max_frame=1024)
    ws = connect(web, key)
    for _ in range(3):
        ws.send_frame(TEXT if _ == 0 else 0x0, b"x" * 400, fin=False)
    code, frames = ws.expect_close()
    assert code == 1009 and frames[0]["code"] == "frame_too_large"


@pytest.mark.parametrize(
    "frame, code, error",
    [
        (dict(opcode=TEXT, payload=b'{"op":"ping"}', mask=False), 1002, "protocol_error"),
        (dict(opcode=TEXT, payload=b'{"op":"ping"}', rsv=0x40), 1002, "protocol_error"),
        (dict(opcode=0x0, payload=b"stray"), 1002, "protocol_error"),
        (dict(opcode=TEXT, payload=b"\xff\xfe not utf-8"), 1007, "invalid_utf8"),
        (dict(opcode=0x3, payload=b"reserved opcode"), 1002, "protocol_error"),
        (dict(opcode=PING, payload=b"in parts", fin=False), 1002, "protocol_error"),
        (dict(opcode=PING, payload=b"x" * 126), 1002, "protocol_error"),
        (dict(opcode=CLOSE, payload=b"\x03"), 1002, "protocol_error"),
        (dict(opcode=CLOSE, payload=struct.pack("!H", 1005)), 1002, "protocol_error"),
        (dict(opcode=CLOSE, payload=struct.pack("!H", 999)), 1002, "protocol_error"),
        (dict(opcode=CLOSE, payload=struct.pack("!H", 1000) + b"\xff bye"), 1007, "invalid_utf8"),
    ],
)
def test_protocol_violations_get_an_error_frame_then_the_right_close_code(web, tenant, frame, code, error):
    tenant_id, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(**frame)
    got, frames = ws.expect_close()
    assert got == code and [f["code"] for f in frames] == [error]
    wait_until(lambda: not entries(web, tenant_id), TIMEOUT, "the subscriber to be unregistered")


def test_a_new_message_before_the_last_one_ended_is_a_protocol_error(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(TEXT, b'{"op": "pi', fin=False)
    ws.send_frame(TEXT, b'{"op": "ping"}')
    code, frames = ws.expect_close()
    assert code == 1002 and [f["code"] for f in frames] == ["protocol_error"]


def test_invalid_utf8_is_refused_in_its_fragment_before_the_message_ends(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(TEXT, b'{"op": "\xff', fin=False)  # the rest never comes
    code, frames = ws.expect_close()
    assert code == 1007 and [f["code"] for f in frames] == ["invalid_utf8"]


def test_after_a_protocol_error_the_server_ends_its_stream_without_waiting_for_the_client(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(TEXT, b'{"op":"ping"}', mask=False)
    started = time.monotonic()
    opcode, payload = ws.frame()
    while opcode != CLOSE:
        opcode, payload = ws.frame()
    assert close_code(payload) == 1002
    # No close frame from the client: the server's end of the stream follows its close frame at once
    # (a FIN, not a reset that could cost the client those frames), not after CLOSE_WAIT.
    with pytest.raises(EOFError):
        while True:
            ws._fill()
    assert time.monotonic() - started < CLOSE_WAIT
    ws.close()


def client_frames(*events):
    """What a client sends for these wsproto events: masked frames, by wsproto's client side."""
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(event) for event in events)


def server_events(data, limit, step=None):
    """The events a server connection with the message limit makes of ``data``, fed ``step`` bytes at a time."""
    server = Connection(ConnectionType.SERVER, [_MessageLimit(limit)])
    step = step or len(data)
    events = []
    for start in range(0, len(data), step):
        server.receive_data(data[start:start + step])
        events.extend(server.events())
    return events


def refusals(events):
    return [event.code for event in events if isinstance(event, CloseConnection)]


def test_the_message_limit_counts_fragments_together_and_refuses_from_a_header():
    data = client_frames(TextMessage(data="a" * 600, message_finished=False), TextMessage(data="b" * 600))
    first = 2 + 2 + 4 + 600  # header, 16-bit length, mask key, payload
    # The first fragment and the next one's header with its length (no mask key, no payload yet).
    assert refusals(server_events(data[:first + 4], limit=1024)) == [1009]


def test_the_message_limit_counts_a_header_that_arrives_byte_by_byte_once():
    data = client_frames(TextMessage(data="a" * 600, message_finished=False), TextMessage(data="b" * 400))
    events = server_events(data, limit=1024, step=1)  # wsproto parses an incomplete header again
    assert refusals(events) == []
    assert "".join(event.data for event in events) == "a" * 600 + "b" * 400


def test_the_message_limit_starts_again_with_each_message():
    data = client_frames(TextMessage(data="a" * 1000), TextMessage(data="b" * 1000))
    events = server_events(data, limit=1024)
    assert refusals(events) == [] and sum(event.message_finished for event in events) == 2


def test_a_ping_between_fragments_does_not_reset_the_message_limit():
    data = client_frames(TextMessage(data="a" * 600, message_finished=False), Ping(b"hb"), TextMessage(data="b" * 600))
    assert refusals(server_events(data, limit=1024)) == [1009]


# -- ends -----------------------------------------------------------------------------------------------


def test_a_client_close_is_answered_and_the_subscriber_goes_at_once(web, tenant):
    tenant_id, key, _ = tenant
    ws = connect(web, key)
    urn = entries(web, tenant_id)[0].ref.actor_urn
    ws.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    opcode, payload = ws.frame()
    assert opcode == CLOSE and close_code(payload) == 1000
    wait_until(lambda: not entries(web, tenant_id), 1, "the subscriber to be unregistered")
    wait_until(lambda: not alive(urn), 1, "the subscriber actor to end")


def test_a_client_close_without_a_code_is_answered_with_1000(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(CLOSE)
    opcode, payload = ws.frame()
    assert opcode == CLOSE and close_code(payload) == 1000
    ws.close()


def test_a_client_close_code_is_echoed(web, tenant):
    _, key, _ = tenant
    ws = connect(web, key)
    ws.send_frame(CLOSE, struct.pack("!H", 4001) + b"app done")
    opcode, payload = ws.frame()
    assert opcode == CLOSE and close_code(payload) == 4001
    ws.close()


def test_a_dropped_tcp_connection_is_cleaned_up_at_once(web, tenant):
    tenant_id, key, _ = tenant
    ws = connect(web, key)
    ws.sock.shutdown(socket.SHUT_RDWR)
    ws.close()
    wait_until(lambda: not entries(web, tenant_id), 1, "the subscriber to be unregistered")


def test_a_subscriber_cut_off_as_too_slow_gets_too_slow_then_close_and_can_resume(web, tenant, pool):
    tenant_id, key, bot = tenant
    tune(web, sse_buffer=2)
    ws = WS(web.url, key)
    position = ws.ready()["last_event_id"]
    burst(pool, tenant_id, bot, 20)
    code, frames = ws.expect_close()
    assert code == 1008
    too_slow = [f for f in frames if f["type"] == "error"]
    assert [f["code"] for f in too_slow] == ["too_slow"]
    resume_at = too_slow[0]["last_event_id"]
    assert resume_at >= position
    delivered = [f["event"]["id"] for f in frames if f["type"] == "event"]
    assert not entries(web, tenant_id)
    tune(web, sse_buffer=1000)
    again = connect(web, key, last_event_id=resume_at)
    resumed = [again.event()["payload"]["n"] for _ in range(20 - len(delivered))]
    assert resumed == list(range(len(delivered) + 1, 21))
    again.close()


def test_a_cut_off_is_too_slow_by_its_field_whatever_its_reason_says(web, tenant):
    tenant_id, key, _ = tenant
    ws = connect(web, key)
    subscribers(web, tenant_id)[0].close_stream("the mailbox overflowed", too_slow=True)
    code, frames = ws.expect_close()
    assert code == 1008
    assert [(f["type"], f["code"], f["message"]) for f in frames] == [("error", "too_slow", "the mailbox overflowed")]


def test_a_closing_reason_that_merely_reads_too_slow_is_an_ordinary_close(web, tenant):
    tenant_id, key, _ = tenant
    ws = WS(web.url, key)
    position = ws.ready()["last_event_id"]
    subscribers(web, tenant_id)[0].close_stream("too slow: says the text, not the field")
    code, frames = ws.expect_close()
    assert code == 1001
    assert frames == [{"type": "closed", "reason": "too slow: says the text, not the field", "last_event_id": position}]


def test_a_client_that_stops_reading_is_cut_off_alone_and_its_connection_reset(web, tenant, make_tenant, pool):
    tenant_id, key, bot = tenant
    tune(web, sse_buffer=4)
    other_id, other_key = make_tenant()
    bystander = connect(web, other_key)
    stalled = WS(web.url, key, rcvbuf=4096)
    stalled.ready()
    subscriber = subscribers(web, tenant_id)[0]
    urn = entries(web, tenant_id)[0].ref.actor_urn
    subscriber.grace = 0.2  # the writer is killed this long after the cut-off
    # One event larger than the socket buffers can hold (4 MB at most here): the writer blocks for good
    # in the first, and the second waits in the mailbox.
    burst(pool, tenant_id, bot, 2, size=6 << 20)
    wait_until(lambda: subscriber.mailbox_depth == 1, TIMEOUT, "the writer to be stuck in the first big event")
    assert entries(web, tenant_id)
    # Bursts that fit a mailbox being emptied; together they overflow one whose writer is stuck.
    burst(pool, tenant_id, bot, 3)
    wait_until(lambda: subscriber.mailbox_depth == 4, TIMEOUT, "three more events queued behind the stuck one")
    assert entries(web, tenant_id)  # a full mailbox, not an overflowing one
    burst(pool, tenant_id, bot, 3)
    wait_until(lambda: not entries(web, tenant_id), TIMEOUT, "the subscriber to be unregistered")
    event_id = web.publish(other_id, None, "still.flowing", {})
    assert bystander.event()["id"] == event_id
    # Once the grace is over the writer is killed (its subscriber ends with it), and the stuck connection
    # is reset, not left holding what the client never read.
    wait_until(lambda: not alive(urn), TIMEOUT, "the stuck writer to be killed after the grace")
    with pytest.raises(ConnectionResetError):
        while True:
            stalled._fill()
            del stalled.buf[:]
    bystander.close()


def test_a_stopping_server_says_why_and_closes_with_1001(web, tenant):
    tenant_id, key, _ = tenant
    ws = connect(web, key)
    web.bus.stop(timeout=5)
    code, frames = ws.expect_close()
    assert code == 1001
    assert frames[-1]["type"] == "closed" and frames[-1]["reason"] == "server shutting down"


# -- authentication and plain HTTP ----------------------------------------------------------------------


def test_plain_http_without_a_key_or_with_a_bad_one_is_401_json(web):
    for kwargs in ({}, {"headers": {"Authorization": "Bearer wbk_nope"}}, {"params": {"token": "wbk_nope"}},
                   {"headers": {"Authorization": "Basic abc"}}):
        response = requests.get(web.url + "/api/v1/ws", timeout=TIMEOUT, **kwargs)
        assert response.status_code == 401, kwargs
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_plain_http_with_a_good_key_is_400_json(web, tenant):
    _, key, _ = tenant
    for kwargs in ({"headers": {"Authorization": f"Bearer {key}"}}, {"params": {"token": key}}):
        response = requests.get(web.url + "/api/v1/ws", timeout=TIMEOUT, **kwargs)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "websocket_required"


def test_an_upgrade_with_a_bad_or_missing_key_never_subscribes(web, tenant):
    before = len(actor_of(web.bus).entries)
    for key, params in ((None, {}), ("wbk_nope", {}), (None, {"token": "wbk_nope"})):
        ws = WS(web.url, key, params)
        assert ws.status == 401 and json.loads(ws.body)["error"]["code"] == "unauthorized"
        assert len(actor_of(web.bus).entries) == before


def test_bad_query_parameters_are_refused_after_authentication(web, tenant):
    _, key, _ = tenant
    for params, field in (({"last_event_id": "-1"}, "last_event_id"), ({"last_event_id": "²"}, "last_event_id"),
                          ({"bot": "nope"}, "bot"), ({"type": "a b"}, "type")):
        ws = WS(web.url, key, params)
        code, frames = ws.expect_close()
        assert code == 1008 and frames[0]["code"] == "invalid_input" and frames[0]["field"] == field


def test_the_served_app_answers_a_bad_key_with_401_before_upgrading(web):
    ws = WS(web.url, "wbk_nope")
    assert ws.status == 401


def test_a_bad_key_gets_401_json_before_any_upgrade(web, tenant):
    for key, params in ((None, {}), ("wbk_nope", {}), (None, {"token": "wbk_nope"})):
        ws = WS(web.url, key, params)
        assert ws.status == 401
        assert json.loads(ws.body)["error"]["code"] == "unauthorized"
        assert "upgrade" not in ws.headers.get("connection", "").lower()


def test_a_good_key_upgrades_and_other_paths_never_do(web, tenant):
    tenant_id, key, bot = tenant
    ws = WS(web.url, None, {"token": key})
    assert ws.status == 101
    ws.ready()
    event_id = web.publish(tenant_id, bot, "gated", {})
    assert ws.event()["id"] == event_id
    ws.close()
    other = WS(web.url, key, path="/api/v1/bots")
    # Answered as plain HTTP (werkzeug refuses an upgrade request on a route that is not a WebSocket).
    assert other.status != 101 and "error" in json.loads(other.body)
    other.close()

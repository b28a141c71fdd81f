"""The network simulator and the simulator transport, over real sockets on 127.0.0.1.

Each test starts its own simulator on free ports with short timings (QR rotation, receipts, linger),
and waits on the events a transport hands its sink, always with a timeout.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket as stdlib_socket
import subprocess
import sys
import time

import gevent
import gevent.queue
import greenlet
import pytest
import requests

from core import config
from simulator import Simulator, protocol
from simulator.server import SimulatorError
from tests.waiting import wait_until
from transports.base import TransportError
from transports.events import (
    Connected,
    Disconnected,
    DisconnectKind,
    MessageReceived,
    Paired,
    QrCode,
    Receipt,
)
from transports.simulator import SimulatorTransport

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"connect_timeout": 2.0, "request_timeout": 2.0, "keepalive_interval": 5.0, "keepalive_timeout": 1.0}


class Events:
    """A sink that records events and lets a test wait for the next one of a kind."""

    def __init__(self) -> None:
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        self.seen: list = []

    def __call__(self, event) -> None:
        self.seen.append(event)
        self.queue.put(event)

    def expect(self, cls, timeout: float = 3.0, skip=(), **attrs):
        """The next event; it must be a ``cls`` with ``attrs`` (events of types in ``skip`` are passed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except gevent.queue.Empty:
                raise AssertionError(f"no {cls.__name__} within {timeout} s; seen: {self.seen}") from None
            if isinstance(event, tuple(skip)) and not isinstance(event, cls):
                continue
            assert isinstance(event, cls), f"expected {cls.__name__}, got {event!r}"
            for name, value in attrs.items():
                assert getattr(event, name) == value, f"{event!r}: {name} is not {value!r}"
            return event

    def after(self, event) -> list:
        """What arrived after ``event`` (one this sink received)."""
        index = next(i for i, seen in enumerate(self.seen) if seen is event)
        return self.seen[index + 1:]


def receipts_of(events: Events, message_id: str) -> list[str]:
    return [e.status for e in events.seen if isinstance(e, Receipt) and message_id in e.message_ids]


def settle(transport, events: Events, marker: str = "MARK") -> list[Receipt]:
    """Send one more message and wait for its read receipt; the receipts it got. The simulator gives
    every message the same receipt delays from when it is sent, so once the marker is read any
    receipt of an earlier message, however wrong, has arrived too: absences are checked after this."""
    transport.send_text("15551230000", "marker", marker)
    wait_until(lambda: "read" in receipts_of(events, marker), 3, "the marker's read receipt")
    chat = "15551230000@s.whatsapp.net"
    return [Receipt((marker,), chat, "delivered"), Receipt((marker,), chat, "read")]


@pytest.fixture
def sim():
    simulator = Simulator("127.0.0.1", 0, 0, qr_rotate=0.3, receipt_delay=(0.05, 0.05), linger=0.5)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def make(sim, tmp_path):
    """make(bot_id, **options) -> (transport, events); every transport is closed after the test."""
    made = []
    settings = config.load({}, data_dir=str(tmp_path), wa_simulator_addr=sim.address)

    def factory(bot_id: str = "bot-1", **options):
        events = Events()
        transport = SimulatorTransport(bot_id, events, settings, {**FAST, **options})
        made.append(transport)
        return transport, events

    yield factory
    for transport in made:
        transport.close()


def pair(sim, make, bot_id="bot-1", **options):
    """A transport that went through QR pairing and is logged in; the events so far consumed."""
    transport, events = make(bot_id, **options)
    transport.connect()
    events.expect(QrCode)
    sim.scan(bot_id)
    events.expect(Paired, skip=[QrCode])
    events.expect(Disconnected, kind=DisconnectKind.STREAM_RESTART)
    transport.connect()
    events.expect(Connected)
    return transport, events


def transport_greenlets():
    """Live greenlets running a method of some SimulatorTransport."""
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and not obj.dead:
            owner = getattr(getattr(obj, "_run", None), "__self__", None)
            if isinstance(owner, SimulatorTransport):
                found.append(obj)
    return found


# ---------------------------------------------------------------------- pairing


def test_an_unpaired_bot_is_shown_a_new_qr_code_every_rotation(sim, make):
    transport, events = make()
    assert not transport.is_paired
    transport.connect()
    first = events.expect(QrCode)
    second = events.expect(QrCode, timeout=2)
    assert first.codes and second.codes and first.codes != second.codes
    assert sim.bot_state("bot-1")["qr"] == second.codes[0]


def test_scanning_the_qr_pairs_the_bot_then_restarts_the_stream_then_the_credential_logs_in(sim, make, tmp_path):
    transport, events = make()
    transport.connect()
    qr = events.expect(QrCode)
    jid = sim.scan("bot-1", code=qr.codes[0], phone="+1 555 010 2000")
    assert jid == "15550102000@s.whatsapp.net"
    assert events.expect(Paired).jid == jid
    events.expect(Disconnected, kind=DisconnectKind.STREAM_RESTART)
    assert transport.is_paired
    store = json.loads((tmp_path / "devices" / "bot-1" / "simulator.json").read_text())
    assert store["jid"] == jid and store["cred"]

    transport.connect()
    assert events.expect(Connected).jid == jid
    assert sim.bot_state("bot-1")["connected"]


def test_scanning_an_expired_qr_code_is_refused(sim, make):
    transport, events = make()
    transport.connect()
    old = events.expect(QrCode)
    events.expect(QrCode, timeout=2)
    with pytest.raises(SimulatorError) as info:
        sim.scan("bot-1", code=old.codes[0])
    assert info.value.status == 409


def test_a_pair_code_entered_on_the_phone_pairs_the_bot(sim, make):
    transport, events = make()
    transport.connect()
    code = transport.request_pair_code("+44 7700 900123")
    assert len(code) == 9 and code[4] == "-"
    jid = sim.enter_pair_code("bot-1", code)
    assert jid == "447700900123@s.whatsapp.net"
    assert events.expect(Paired, skip=[QrCode]).jid == jid
    events.expect(Disconnected, kind=DisconnectKind.STREAM_RESTART)
    transport.connect()
    assert events.expect(Connected).jid == jid


def test_a_pair_code_for_a_malformed_phone_number_is_refused(sim, make):
    transport, events = make()
    transport.connect()
    events.expect(QrCode)
    with pytest.raises(TransportError):
        transport.request_pair_code("call me")


def test_a_new_transport_for_the_same_bot_resumes_without_a_qr_code(sim, make):
    first, _ = pair(sim, make)
    first.close()
    second, events = make()  # a restarted bot process: same DATA_DIR, new transport
    assert second.is_paired
    second.connect()
    assert events.expect(Connected).jid == sim.bot_state("bot-1")["jid"]


def test_a_restarted_simulator_with_a_state_file_still_knows_the_credential(tmp_path):
    state_file = str(tmp_path / "sim" / "state.json")
    settings_dir = str(tmp_path / "bot")
    with Simulator("127.0.0.1", 0, False, qr_rotate=5, state_file=state_file) as first:
        events = Events()
        settings = config.load({}, data_dir=settings_dir, wa_simulator_addr=first.address)
        transport = SimulatorTransport("bot-1", events, settings, FAST)
        transport.connect()
        events.expect(QrCode)
        jid = first.scan("bot-1")
        events.expect(Disconnected, skip=[Paired], kind=DisconnectKind.STREAM_RESTART)
        transport.close()
    with Simulator("127.0.0.1", 0, False, state_file=state_file) as second:
        events = Events()
        settings = config.load({}, data_dir=settings_dir, wa_simulator_addr=second.address)
        transport = SimulatorTransport("bot-1", events, settings, FAST)
        transport.connect()
        try:
            assert events.expect(Connected).jid == jid
        finally:
            transport.close()


# ---------------------------------------------------------------------- messages


def test_an_inbound_message_reaches_the_sink_and_the_ack_clears_it(sim, make):
    transport, events = pair(sim, make)
    message_id = sim.inbound("bot-1", "+1 555 123 0000", "hello bot")
    message = events.expect(MessageReceived)
    assert message.message_id == message_id
    assert message.text == "hello bot"
    assert message.chat == message.sender == "15551230000@s.whatsapp.net"
    assert message.timestamp == pytest.approx(time.time(), abs=5)
    # Held by the network until the bot says it is stored.
    assert sim.bot_state("bot-1")["pending_inbound"] == 1
    transport.ack([message.message_id])
    wait_until(lambda: sim.bot_state("bot-1")["pending_inbound"] == 0, 3, "the ack to clear the message")


def test_messages_sent_while_the_bot_was_away_arrive_after_its_next_login(sim, make):
    transport, events = pair(sim, make)
    transport.close()
    sim.inbound("bot-1", "15551230000", "one", message_id="A1")
    sim.inbound("bot-1", "15551230000", "two", message_id="A2")
    transport.connect()
    events.expect(Connected)
    assert events.expect(MessageReceived).message_id == "A1"
    assert events.expect(MessageReceived).message_id == "A2"


def test_an_inbound_message_the_bot_did_not_ack_is_delivered_again(sim, make):
    pair(sim, make)[0].close()
    cred = sim._bots["bot-1"].cred

    def login() -> tuple:
        sock = stdlib_socket.create_connection(("127.0.0.1", sim.port), timeout=3)
        sock.sendall(protocol.encode({"t": "hello", "bot": "bot-1", "cred": cred}))
        reader = protocol.FrameReader(sock)
        assert reader.read()["t"] == "connected"
        return sock, reader

    sock, reader = login()
    sim.inbound("bot-1", "15551230000", "are you there?", message_id="M1")
    assert reader.read()["id"] == "M1"
    sock.close()  # crashed before acking
    sock, reader = login()
    assert reader.read()["id"] == "M1"
    sock.sendall(protocol.encode({"t": "ack", "ids": ["M1"]}))
    wait_until(lambda: sim.bot_state("bot-1")["pending_inbound"] == 0, 3, "the ack to clear the message")
    sock.close()


def test_send_text_is_idempotent_by_message_id_and_delivery_then_read_receipts_arrive(sim, make):
    transport, events = pair(sim, make)
    transport.send_text("15551230000", "hi there", "OUT-1")
    transport.send_text("15551230000@s.whatsapp.net", "hi there", "OUT-1")  # a resend after a lost ack
    outbox = sim.outbox("bot-1")
    assert [m["id"] for m in outbox] == ["OUT-1"]
    assert outbox[0]["to"] == "15551230000@s.whatsapp.net" and outbox[0]["text"] == "hi there"
    delivered = events.expect(Receipt, status="delivered")
    assert delivered.message_ids == ("OUT-1",) and delivered.chat == "15551230000@s.whatsapp.net"
    read = events.expect(Receipt, status="read")
    assert sim.outbox("bot-1", to="15551230000")[0]["status"] == "read"
    marker = settle(transport, events)
    assert events.after(read) == marker  # one message, so one pair of receipts


def test_was_received_tells_whether_the_network_holds_a_message_id(sim, make):
    transport, _ = pair(sim, make)
    transport.send_text("15551230000", "hi", "OUT-2")
    assert transport.was_received("OUT-2")
    assert not transport.was_received("never-sent")
    assert sim.received("bot-1", "OUT-2")


def test_receipts_that_fall_due_while_the_bot_is_away_arrive_after_its_next_login(sim, make):
    sim.configure(receipt_delay=(0.2, None))
    transport, events = pair(sim, make)
    transport.send_text("15551230000", "hi", "OUT-3")
    transport.close()
    wait_until(lambda: sim.outbox("bot-1")[0]["status"] == "delivered", 3, "the delivered receipt to fall due")
    transport.connect()
    events.expect(Connected)
    assert events.expect(Receipt).message_ids == ("OUT-3",)


def test_send_text_without_a_login_raises_transport_error(sim, make):
    transport, events = make()
    with pytest.raises(TransportError):
        transport.send_text("15551230000", "hi", "X")
    transport.connect()
    events.expect(QrCode)
    with pytest.raises(TransportError):
        transport.send_text("15551230000", "hi", "X")


def test_send_text_raises_transport_error_when_the_network_does_not_answer(sim, make):
    transport, _ = pair(sim, make, request_timeout=0.3)
    sim.inject("bot-1", "hang")
    started = time.monotonic()
    with pytest.raises(TransportError):
        transport.send_text("15551230000", "hi", "X")
    assert time.monotonic() - started < 2


def test_the_simulator_keeps_only_the_newest_sent_messages_per_bot(sim, make):
    sim.outbox_limit = 2
    transport, _ = pair(sim, make)
    for n in range(3):
        transport.send_text("15551230000", f"text {n}", f"OUT-L{n}")
    assert [m["id"] for m in sim.outbox("bot-1")] == ["OUT-L1", "OUT-L2"]


def test_a_message_the_owner_sends_from_the_phone_reaches_the_customer_and_is_told_to_the_bot(sim, make):
    transport, events = pair(sim, make)
    own_jid = sim.bot_state("bot-1")["jid"]
    message_id = sim.phone_send("bot-1", "+1 555 123 0000", "I'll call you")
    sent = sim.outbox("bot-1", to="15551230000")
    assert [(m["id"], m["text"], m["status"], m["from_phone"]) for m in sent] == [
        (message_id, "I'll call you", "sent", True)]
    told = events.expect(MessageReceived)
    assert (told.message_id, told.text, told.from_me) == (message_id, "I'll call you", True)
    assert (told.chat, told.sender) == ("15551230000@s.whatsapp.net", own_jid)
    # Like an inbound message: kept until acked, redelivered at the next login.
    assert sim.bot_state("bot-1")["pending_inbound"] == 1
    transport.close()
    transport.connect()
    events.expect(Connected)
    again = events.expect(MessageReceived)
    assert again.message_id == message_id
    transport.ack([message_id])
    wait_until(lambda: sim.bot_state("bot-1")["pending_inbound"] == 0, 3, "the ack to clear the message")
    marker = settle(transport, events)
    assert events.after(again) == marker  # no receipts for the phone's own message


def test_an_inbound_message_is_not_from_me_and_a_phone_send_needs_a_paired_bot(sim, make):
    transport, events = make()
    transport.connect()
    events.expect(QrCode)
    with pytest.raises(SimulatorError) as info:
        sim.phone_send("bot-1", "15551230000", "hello?")
    assert info.value.status == 409
    sim.scan("bot-1")
    events.expect(Disconnected, skip=[QrCode, Paired], kind=DisconnectKind.STREAM_RESTART)
    transport.connect()
    events.expect(Connected)
    sim.inbound("bot-1", "15551230000", "hi")
    assert events.expect(MessageReceived).from_me is False


def test_the_echo_of_a_message_the_bot_sent_is_told_to_the_bot_without_a_second_copy(sim, make):
    transport, events = pair(sim, make)
    transport.send_text("15551230000", "from the bot", "OUT-E1")
    assert sim.phone_send("bot-1", "15551230000", "from the bot", message_id="OUT-E1") == "OUT-E1"
    echo = events.expect(MessageReceived, skip=[Receipt])
    assert (echo.message_id, echo.from_me) == ("OUT-E1", True)
    assert [(m["id"], "from_phone" in m) for m in sim.outbox("bot-1")] == [("OUT-E1", False)]


def test_refused_sends_fail_as_permanent_as_often_as_asked_until_recover(sim, make):
    transport, _ = pair(sim, make)
    sim.refuse_sends("bot-1", times=2, error="no such recipient")
    for n in range(2):
        with pytest.raises(TransportError) as info:
            transport.send_text("15551230000", "hi", f"OUT-R{n}")
        assert info.value.permanent and "no such recipient" in str(info.value)
    transport.send_text("15551230000", "hi", "OUT-R2")
    assert [m["id"] for m in sim.outbox("bot-1")] == ["OUT-R2"]
    sim.refuse_sends("bot-1", times=5)
    with pytest.raises(TransportError, match="recipient refused by the network"):
        transport.send_text("15551230000", "hi", "OUT-R3")
    sim.recover()
    transport.send_text("15551230000", "hi", "OUT-R4")
    assert [m["id"] for m in sim.outbox("bot-1")] == ["OUT-R2", "OUT-R4"]


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        ("stream_restart", {}, {}),
        ("network", {}, {}),
        ("keepalive_timeout", {}, {}),
        ("connect_failure", {"code": 503}, {"code": 503}),
        ("logged_out", {}, {"code": 401}),
        ("replaced", {}, {}),
        ("client_outdated", {}, {"code": 405}),
        ("temporary_ban", {"expires_in": 30}, {"code": 402, "expires_in": 30.0}),
    ],
)
def test_each_injected_fault_arrives_as_the_matching_disconnect(sim, make, kind, extra, expected):
    transport, events = pair(sim, make, keepalive_interval=0.2, keepalive_timeout=0.2)
    sim.inject("bot-1", kind, **extra)
    event = events.expect(Disconnected, timeout=3, kind=DisconnectKind(kind), **expected)
    assert event.kind is DisconnectKind(kind)


def test_a_fault_injected_for_all_reaches_every_connected_bot(sim, make):
    one, events_one = pair(sim, make, "bot-1")
    two, events_two = pair(sim, make, "bot-2")
    sim.inject(None, "stream_restart")
    events_one.expect(Disconnected, kind=DisconnectKind.STREAM_RESTART)
    events_two.expect(Disconnected, kind=DisconnectKind.STREAM_RESTART)


def test_a_revoked_credential_fails_the_next_login_as_logged_out_and_forgets_the_store(sim, make):
    transport, events = pair(sim, make)
    transport.close()
    sim.inject("bot-1", "logged_out")
    transport.connect()
    events.expect(Disconnected, kind=DisconnectKind.LOGGED_OUT, code=401)
    assert not transport.is_paired
    transport.connect()
    events.expect(QrCode)  # a new pairing is needed


def test_a_temporary_ban_refuses_logins_until_it_expires(sim, make):
    transport, events = pair(sim, make)
    sim.inject("bot-1", "temporary_ban", expires_in=0.6)
    events.expect(Disconnected, kind=DisconnectKind.TEMPORARY_BAN)
    transport.connect()
    refused = events.expect(Disconnected, kind=DisconnectKind.TEMPORARY_BAN)
    assert 0 < refused.expires_in <= 0.6
    gevent.sleep(refused.expires_in)  # the network said when; waiting for exactly that is not hoping
    transport.connect()
    events.expect(Connected)


def test_a_connect_failure_refuses_as_many_logins_as_asked_with_its_code(sim, make):
    transport, events = pair(sim, make)
    sim.inject("bot-1", "connect_failure", code=503, times=2)
    events.expect(Disconnected, kind=DisconnectKind.CONNECT_FAILURE, code=503)
    transport.connect()
    events.expect(Disconnected, kind=DisconnectKind.CONNECT_FAILURE, code=503)
    transport.connect()
    events.expect(Connected)


def test_a_second_login_for_the_same_bot_replaces_the_first(sim, make):
    first, first_events = pair(sim, make)
    second, second_events = make()
    second.connect()
    second_events.expect(Connected)
    first_events.expect(Disconnected, kind=DisconnectKind.REPLACED)


def test_an_outage_drops_every_connection_and_refuses_new_ones_until_recovery(sim, make):
    one, events_one = pair(sim, make, "bot-1")
    two, events_two = pair(sim, make, "bot-2")
    sim.outage()
    events_one.expect(Disconnected, kind=DisconnectKind.NETWORK)
    events_two.expect(Disconnected, kind=DisconnectKind.NETWORK)
    one.connect()
    refused = events_one.expect(Disconnected, kind=DisconnectKind.NETWORK, timeout=1)
    assert "refused" in refused.detail.lower()
    sim.recover()
    one.connect()
    events_one.expect(Connected)
    two.connect()
    events_two.expect(Connected)


def test_a_hanging_server_becomes_a_network_disconnect_after_the_connect_timeout(sim, make):
    sim.hang()
    transport, events = make(connect_timeout=0.4)
    started = time.monotonic()
    transport.connect()
    events.expect(Disconnected, kind=DisconnectKind.NETWORK, detail="connect timeout")
    assert 0.3 < time.monotonic() - started < 1.5
    sim.recover()
    transport.connect()
    events.expect(QrCode)


def test_a_bot_hung_by_fault_injection_times_out_on_its_next_login_too(sim, make):
    transport, events = pair(sim, make, connect_timeout=0.4, keepalive_interval=0.2, keepalive_timeout=0.2)
    sim.inject("bot-1", "hang")
    events.expect(Disconnected, kind=DisconnectKind.KEEPALIVE_TIMEOUT)
    transport.connect()
    events.expect(Disconnected, kind=DisconnectKind.NETWORK, detail="connect timeout")


def test_logout_unlinks_the_device_on_the_network_without_reporting_events(sim, make):
    transport, events = pair(sim, make)
    reported = len(events.seen)
    transport.logout()
    assert not transport.is_paired
    assert not sim.bot_state("bot-1")["paired"]
    # Only the connection's reader reports events: once it is gone, nothing more can come.
    wait_until(lambda: transport_greenlets() == [], 3, "the reader to end")
    assert events.seen[reported:] == []


def test_logout_on_a_transport_that_never_connected_still_unlinks_the_device(sim, make):
    pair(sim, make)[0].close()
    fresh, events = make()  # as a stopped session does: a new transport only to log out
    assert fresh.is_paired
    fresh.logout()
    assert not fresh.is_paired
    assert not sim.bot_state("bot-1")["paired"]
    assert events.seen == []


def test_logout_during_an_outage_forgets_the_store_and_says_the_unlink_was_not_confirmed(sim, make):
    pair(sim, make)[0].close()
    sim.outage()
    fresh, _ = make()
    with pytest.raises(TransportError):
        fresh.logout()
    assert not fresh.is_paired


@pytest.mark.parametrize("answer", [b"not json\n", b'{"t":"receipt"}\n'], ids=["garbage", "malformed-frame"])
def test_a_server_speaking_nonsense_ends_in_one_network_disconnect(tmp_path, answer):
    from gevent.server import StreamServer

    def handle(sock, _peer):
        sock.recv(4096)
        sock.sendall(b'{"t":"connected","jid":"1@s.whatsapp.net"}\n' + answer)
        gevent.sleep(5)  # keep the socket open: the transport must end it by itself

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    events = Events()
    settings = config.load({}, data_dir=str(tmp_path), wa_simulator_addr=f"127.0.0.1:{server.server_port}")
    transport = SimulatorTransport("bot-1", events, settings, FAST)
    try:
        transport.connect()
        events.expect(Connected)
        ended = events.expect(Disconnected, kind=DisconnectKind.NETWORK)
        # Only the connection's reader reports events: once it is gone, nothing more can come.
        wait_until(lambda: transport_greenlets() == [], 3, "the reader to end")
        assert events.after(ended) == []
    finally:
        transport.close()
        server.stop(timeout=0.1)


# ---------------------------------------------------------------------- close


def test_close_leaves_no_greenlet_behind_and_no_sink_call_after_it(sim, make):
    transport, events = pair(sim, make)
    assert transport_greenlets()
    transport.send_text("15551230000", "hi", "OUT-4")  # its receipts fall due after close
    sim.inbound("bot-1", "15551230000", "racing the close")
    transport.close()
    transport.close()  # idempotent
    calls_at_close = len(events.seen)
    gc.collect()
    assert transport_greenlets() == []
    sim.inbound("bot-1", "15551230000", "after close")
    # The network has done all it would tell the bot: the receipts fell due (kept for its next login)
    # and both messages wait for it. A stray call would have come with them.
    wait_until(lambda: sim.outbox("bot-1")[0]["status"] == "read", 3, "OUT-4's receipts to fall due")
    assert sim.bot_state("bot-1")["pending_inbound"] == 2
    assert len(events.seen) == calls_at_close


def test_close_returns_promptly_in_the_middle_of_a_dial(sim, make):
    sim.hang()
    transport, events = make(connect_timeout=5)
    transport.connect()
    wait_until(lambda: sim.health()["connections"] == 1, 3, "the dial to reach the hanging network")
    started = time.monotonic()
    transport.close()
    assert time.monotonic() - started < 0.5
    gc.collect()
    assert transport_greenlets() == []
    assert events.seen == []


# ---------------------------------------------------------------------- control API and process


def test_the_http_control_api_drives_the_simulator(sim, make):
    url = sim.control_url
    assert requests.get(f"{url}/healthz", timeout=3).json()["ok"] is True
    assert requests.get(f"{url}/bots/nobody", timeout=3).status_code == 404

    transport, events = make()
    transport.connect()
    events.expect(QrCode)
    state = requests.get(f"{url}/bots/bot-1", timeout=3).json()
    assert state["state"] == "qr" and state["qr"]
    assert requests.get(f"{url}/bots/bot-1/qr.svg", timeout=3).headers["content-type"].startswith("image/svg")
    jid = requests.post(f"{url}/bots/bot-1/scan", json={"phone": "15550001111"}, timeout=3).json()["jid"]
    assert jid == "15550001111@s.whatsapp.net"
    events.expect(Disconnected, skip=[QrCode, Paired], kind=DisconnectKind.STREAM_RESTART)
    transport.connect()
    events.expect(Connected)

    inbound = {"from": "15551230000", "text": "hi", "id": "IN-1"}
    reply = requests.post(f"{url}/bots/bot-1/inbound", json=inbound, timeout=3)
    assert reply.json() == {"id": "IN-1"}
    assert events.expect(MessageReceived).text == "hi"

    transport.send_text("15551230000", "hello", "OUT-5")
    messages = requests.get(f"{url}/bots/bot-1/outbox", timeout=3).json()["messages"]
    assert [m["id"] for m in messages] == ["OUT-5"]
    assert requests.get(f"{url}/bots/bot-1/outbox/OUT-5", timeout=3).json()["text"] == "hello"

    phone = requests.post(f"{url}/bots/bot-1/phone-send", json={"to": "15551230000", "text": "me here"}, timeout=3)
    phone_id = phone.json()["id"]
    assert events.expect(MessageReceived, skip=[Receipt]).from_me is True
    assert requests.get(f"{url}/bots/bot-1/outbox/{phone_id}", timeout=3).json()["from_phone"] is True
    assert requests.post(f"{url}/bots/nobody/phone-send", json={"to": "1555", "text": "x"},
                         timeout=3).status_code == 404
    refuse = {"times": 1, "error": "blocked"}
    requests.post(f"{url}/bots/bot-1/refuse-sends", json=refuse, timeout=3).raise_for_status()
    with pytest.raises(TransportError, match="blocked"):
        transport.send_text("15551230000", "again", "OUT-6")

    bad = requests.post(f"{url}/bots/bot-1/inject", json={"kind": "meteor"}, timeout=3)
    assert bad.status_code == 400
    fault = {"kind": "connect_failure", "code": 500}
    requests.post(f"{url}/bots/bot-1/inject", json=fault, timeout=3).raise_for_status()
    events.expect(Disconnected, skip=[Receipt], kind=DisconnectKind.CONNECT_FAILURE, code=500)

    requests.post(f"{url}/outage", timeout=3).raise_for_status()
    assert requests.get(f"{url}/healthz", timeout=3).json()["outage"] is True
    requests.post(f"{url}/recover", timeout=3).raise_for_status()
    transport.connect()
    events.expect(Connected, skip=[Receipt])


def _two_free_ports() -> int:
    for _ in range(50):
        with stdlib_socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with stdlib_socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two adjacent free ports")


def test_serve_runs_as_its_own_process_until_sigterm(tmp_path):
    port = _two_free_ports()
    env = {**os.environ, "WA_SIMULATOR_ADDR": f"127.0.0.1:{port}", "DATA_DIR": str(tmp_path), "LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "simulator.main"], cwd=ROOT, env=env)
    try:
        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port + 1}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_until(up, 10, "the simulator process to come up", interval=0.05)
        with stdlib_socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(protocol.encode({"t": "hello", "bot": "bot-9", "cred": None}))
            assert protocol.FrameReader(sock).read()["t"] == "qr"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""NeonizeTransport against the real neonize 0.5.2 library, offline.

There is no internet here: the real client's dial fails (a real network fault), and a local TCP
listener that accepts and never answers, used as neonize's proxy, makes a dial hang. Go callbacks are
exercised by calling the process's ctypes callbacks from raw OS threads, as Go does.
"""

from __future__ import annotations

import ctypes
import logging
import sqlite3
import time
import weakref

import gevent
import gevent.event
import pytest
from gevent import monkey, socket
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa

from core import config
from tests.waiting import wait_until
from transports import neonize_transport as nt
from transports.base import TransportError
from transports.events import Connected, Disconnected, DisconnectKind, MessageReceived

_start_new_thread = monkey.get_original("_thread", "start_new_thread")


class Recorder:
    """A sink that records events, when they came, and whether it ran inside the hub itself."""

    def __init__(self) -> None:
        self.events: list = []
        self.times: list[float] = []
        self.in_hub: list[bool] = []

    def __call__(self, event) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        self.in_hub.append(gevent.getcurrent() is gevent.get_hub())

    def wait_for(self, count: int, timeout: float) -> None:
        """Wait until ``count`` events were recorded; fails the test otherwise."""
        wait_until(lambda: len(self.events) >= count, timeout, f"{count} events",
                   detail=lambda: f"recorded: {self.events}")


class Ticker:
    """A greenlet that ticks every 10 ms and records the longest gap the hub made it wait."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    def wait_ticks(self, count: int, timeout: float = 2.0) -> None:
        """Wait until ``count`` more ticks happened (so the measurement covers what came before)."""
        target = self.ticks + count
        wait_until(lambda: self.ticks >= target, timeout, f"{count} more ticks of the hub")

    def stop(self) -> None:
        self._greenlet.kill()


class SilentProxy:
    """127.0.0.1 on a random port: accepts connections, reads nothing, answers nothing."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.accepted = gevent.event.Event()
        self.conns: list = []
        self._greenlet = gevent.spawn(self._accept)

    def _accept(self) -> None:
        while True:
            conn, _ = self.server.accept()
            self.conns.append(conn)
            self.accepted.set()

    def drop_connections(self) -> None:
        """Ends the hang: the dial sees EOF and fails at once."""
        for conn in self.conns:
            conn.close()

    def close(self) -> None:
        self._greenlet.kill()
        self.drop_connections()
        self.server.close()


@pytest.fixture
def settings(tmp_path):
    return config.load({}, data_dir=str(tmp_path))


@pytest.fixture
def counters():
    return nt.NeonizeCounters()


@pytest.fixture
def ticker():
    ticker = Ticker()
    yield ticker
    ticker.stop()


@pytest.fixture
def transports(settings, counters):
    made: list[nt.NeonizeTransport] = []

    def make(bot_id: str = "bot-a", sink=None, **options) -> nt.NeonizeTransport:
        transport = nt.NeonizeTransport(bot_id, sink or Recorder(), settings, options, counters=counters)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()
    for transport in made:
        transport.join_threads(15)


def test_connect_returns_at_once_and_an_offline_dial_arrives_as_a_network_disconnect_while_the_hub_ticks(
    transports, ticker, counters
):
    sink = Recorder()
    transport = transports(sink=sink)
    ticker.wait_ticks(1)
    started = time.monotonic()
    transport.connect()
    assert time.monotonic() - started < 0.1
    sink.wait_for(1, timeout=5)
    [event] = sink.events
    assert isinstance(event, Disconnected) and event.kind is DisconnectKind.NETWORK
    assert "failed to dial" in event.detail
    assert sink.in_hub == [False]
    assert transport.join_threads(5)
    ticker.wait_ticks(3)
    assert ticker.max_gap < 0.5
    assert counters.threads_running == 0 and counters.threads_started == 1


def test_a_hanging_dial_never_blocks_the_hub_and_close_returns_promptly_with_the_sink_silent_after(
    transports, ticker, counters
):
    proxy = SilentProxy()
    sink = Recorder()
    try:
        transport = transports(sink=sink, proxy=f"http://127.0.0.1:{proxy.port}")
        ticker.wait_ticks(1)
        transport.connect()
        assert proxy.accepted.wait(5), "neonize did not dial through the configured proxy"
        # Hanging: nothing to report yet (and nothing later either: checked once its thread ended).
        assert sink.events == []
        started = time.monotonic()
        transport.close()
        closed_at = time.monotonic()
        assert closed_at - started < 2.0
        assert counters.threads_lingering == 1 and counters.threads_outlived_close == 1
        assert counters.live_transports == 0

        proxy.drop_connections()  # the Go dial now fails; its thread reports back and ends
        assert transport.join_threads(10)
        assert counters.threads_running == 0 and counters.threads_lingering == 0
        assert sink.events == []
        ticker.wait_ticks(3)
        assert ticker.max_gap < 0.5
    finally:
        proxy.close()


def test_events_handed_over_from_foreign_os_threads_reach_the_sink_in_order_from_a_greenlet(transports):
    """What Go does, done from a raw OS thread through the process's ctypes callbacks."""
    sink = Recorder()
    transport = transports(sink=sink)
    uuid = b"bot-a#test"
    bridge = nt._get_bridge()
    transport._uuid, transport._dialing = uuid, True
    bridge.routes[uuid] = weakref.ref(transport)

    def jid(user, device=0):
        return npb.JID(User=user, Server="s.whatsapp.net", Device=device, RawAgent=0, Integrator=0, IsEmpty=False)

    def source():
        empty = npb.JID(User="", Server="", Device=0, RawAgent=0, Integrator=0, IsEmpty=True)
        return npb.MessageSource(Chat=jid("4915"), Sender=jid("4915"), IsFromMe=False, IsGroup=False,
                                 SenderAlt=empty, RecipientAlt=empty, BroadcastListOwner=empty)

    def message(n):
        info = npb.MessageInfo(MessageSource=source(), ID=f"M{n}", ServerID=0, Type="text", Pushname="",
                               Timestamp=1_700_000_000_000 + n, Category="", Multicast=False, MediaType="", Edit="")
        return npb.Message(Info=info, Message=wa.Message(conversation=f"text {n}"), IsEphemeral=False,
                           IsViewOnce=False, IsViewOnceV2=False, IsViewOnceV2Extension=False,
                           IsDocumentWithCaption=False, IsLottieSticker=False, IsEdit=False,
                           UnavailableRequestID="", RetryCount=0)

    device = npb.Device(JID=jid("4911", device=4), Platform="", BussinessName="", PushName="", Initialized=True)
    frames = [(0, device), (3, npb.Connected(status=True))] + [(17, message(n)) for n in range(50)]
    done = gevent.event.Event()
    hub = gevent.get_hub()

    def go_thread(frames) -> None:  # no gevent in here, as on a Go thread
        for code, native in frames:
            data = native.SerializeToString()
            buf = ctypes.create_string_buffer(data, len(data))
            bridge.event(uuid, ctypes.addressof(buf), len(data), code)
        hub.loop.run_callback_threadsafe(done.set)

    _start_new_thread(go_thread, (frames,))
    assert done.wait(5)
    sink.wait_for(51, timeout=5)
    assert sink.events[0] == Connected(jid="4911@s.whatsapp.net")
    assert [e.message_id for e in sink.events[1:]] == [f"M{n}" for n in range(50)]
    assert all(isinstance(e, MessageReceived) for e in sink.events[1:])
    assert not any(sink.in_hub)

    transport.close()
    done.clear()
    _start_new_thread(go_thread, ([(17, message(99))],))
    assert done.wait(5)
    # done.set was queued on the hub after the frame's callback, so that has run; a delivery it
    # (wrongly) scheduled is the transport's drainer greenlet, which must have ended too.
    wait_until(lambda: transport._drainer is None, 5, "the transport's drainer to be idle")
    assert len(sink.events) == 51
    bridge.routes.pop(uuid, None)


def test_the_device_store_lives_under_data_dir_per_bot_and_a_fresh_bot_is_not_paired(transports, tmp_path):
    first, second = transports("bot-a"), transports("bot-b")
    assert first.store_path == tmp_path / "devices" / "bot-a" / "neonize.sqlite3"
    assert second.store_path == tmp_path / "devices" / "bot-b" / "neonize.sqlite3"
    assert not first.is_paired
    first.connect()
    first.sink.wait_for(1, timeout=5)
    assert first.store_path.is_file()  # neonize created its whatsmeow schema there
    assert not first.is_paired
    assert not second.store_path.exists()


def test_is_paired_reports_a_device_held_in_the_store(transports):
    transport = transports()
    transport.store_path.parent.mkdir(parents=True)
    with sqlite3.connect(transport.store_path) as db:
        db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
        db.execute("INSERT INTO whatsmeow_device VALUES ('4911:4@s.whatsapp.net')")
    assert transport.is_paired


def test_logout_tries_to_unlink_then_forgets_the_store_and_says_the_network_did_not_confirm(transports, counters):
    sink = Recorder()
    transport = transports(sink=sink)
    transport.store_path.parent.mkdir(parents=True)
    with sqlite3.connect(transport.store_path) as db:
        db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
        db.execute("INSERT INTO whatsmeow_device VALUES ('4911:4@s.whatsapp.net')")
    started = time.monotonic()
    with pytest.raises(TransportError, match="did not confirm"):
        transport.logout()
    assert time.monotonic() - started < 5
    assert counters.threads_started == 1  # it did try to log in, only to unlink
    assert not transport.store_path.exists()
    assert not transport.is_paired
    assert sink.events == []


def test_logout_of_a_bot_without_a_device_only_closes(transports, counters):
    transport = transports()
    transport.logout()
    assert counters.threads_started == 0 and counters.live_transports == 0


def test_sending_and_pair_codes_are_refused_without_a_connection(transports):
    transport = transports()
    with pytest.raises(TransportError):
        transport.send_text("4915112345678", "hi", "id-1")
    with pytest.raises(TransportError):
        transport.request_pair_code("4915112345678")


def test_close_is_idempotent_and_a_closed_transport_does_not_connect_again(transports, counters):
    transport = transports()
    assert counters.live_transports == 1
    transport.close()
    transport.close()
    assert counters.live_transports == 0
    with pytest.raises(TransportError):
        transport.connect()


def test_whatsmeow_log_lines_reach_python_logging_on_the_hub(transports):
    seen = gevent.event.Event()
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record)
            seen.set()

    handler = Catch(logging.DEBUG)
    logger = logging.getLogger("whatsmeow")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        transports(log_level="DEBUG").connect()
        assert seen.wait(5)
        assert any(r.name.startswith("whatsmeow.Client") and "Dialing" in r.getMessage() for r in records)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def test_options_that_cannot_work_are_refused_up_front(settings):
    with pytest.raises(ValueError):
        nt.NeonizeTransport("../escape", Recorder(), settings)
    with pytest.raises(ValueError):
        nt.NeonizeTransport("bot-a", Recorder(), settings, {"proxy": "127.0.0.1:8080"})
    with pytest.raises(ValueError):
        nt.NeonizeTransport("bot-a", Recorder(), settings, {"log_level": "chatty"})
    assert nt.proxy_settings({"address": "socks5://127.0.0.1:1080", "no_media": True}).no_media

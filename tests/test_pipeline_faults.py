"""The pipeline through real faults: the database stopped while customers write, and the supervisor
process killed (SIGKILL) with outgoing messages pending."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import gevent
import pytest

from db import bots as bots_db
from db import conversations as conv
from simulator.server import Simulator
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHO_RULE = [{"match": "regex", "pattern": ".", "reply": "got it"}]


def _wait(predicate, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the database may still be coming back
        return None


def _pair(sim, events, pool, tenant, rules=()):
    bot = new_bot(pool, tenant, running=False)
    pool.execute(tenant, "UPDATE bots SET rules = %s WHERE id = %s", (json.dumps(list(rules)), bot))
    bots_db.set_desired(pool, tenant, bot, "running")
    events.wait_state(bot, "pairing")
    events.wait_for(lambda: sim.bot_state(bot)["qr"], what="a QR")
    sim.scan(bot)
    events.wait_state(bot, "connected")
    return bot


def test_with_the_database_stopped_for_ten_seconds_500_messages_are_each_stored_once_and_answered_once(
    pg, tmp_path, pool
):
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=None) as sim:
        settings = session_settings(pg, str(tmp_path), sim.address, BOT_SEND_RATE="0", WA_LEASE_TTL="60",
                                    DATABASE_ACQUIRE_TIMEOUT="2")
        events = EventLog()
        tenant = new_tenant(pool)
        with supervision(settings, pool, events):
            bot = _pair(sim, events, pool, tenant, ECHO_RULE)
            pg.stop_server()
            stopped = time.monotonic()
            customers = [f"1555000{n:04d}" for n in range(25)]
            sent_ids = []
            for i in range(500):
                sent_ids.append(sim.inbound(bot, customers[i % 25], f"message {i}"))
                if i % 50 == 49:
                    gevent.sleep(0.5)  # customers keep writing through the outage
            gevent.sleep(max(0.0, 10 - (time.monotonic() - stopped)))  # the outage lasts ten seconds
            assert len(sim.outbox(bot)) == 0  # nothing could be stored, so nothing was answered
            pg.start_server()
            _wait(lambda: len(sim.outbox(bot)) >= 500, 90, "500 answers", interval=0.5)
            _wait(lambda: sim.bot_state(bot)["pending_inbound"] == 0, 30, "every message acked")
            rows = _wait(lambda: _safe(lambda: pool.query(
                tenant, "SELECT wa_message_id, status FROM messages WHERE bot_id = %s AND direction = 'in'", (bot,))),
                10, "the stored messages")
        assert sorted(r[0] for r in rows) == sorted(sent_ids)  # each stored, once
        assert {r[1] for r in rows} == {"answered"}
        answers = sim.outbox(bot)
        assert len(answers) == 500 and {a["text"] for a in answers} == {"got it"}
        per_customer = {}
        for answer in answers:
            per_customer[answer["to"]] = per_customer.get(answer["to"], 0) + 1
        assert set(per_customer.values()) == {20}  # each customer's 20 messages, each answered once
        outbox = pool.query(tenant, "SELECT state, count(*) FROM outbox WHERE bot_id = %s GROUP BY state", (bot,))
        assert outbox == [("sent", 500)]


class _Retries(logging.Handler):
    """Counts the pipeline's "will retry" warnings: a store that failed while the database was away."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if record.getMessage() == "inbound not stored yet; will retry":
            self.count += 1


def test_a_message_from_the_phone_while_the_database_is_away_is_stored_after_it_comes_back_in_order(pg, tmp_path,
                                                                                                    pool):
    # The customer's first message waits for the AI (a debounce longer than the test) when the
    # database goes away; the owner's message and the customer's next one come during the outage.
    # What each customer message ends as shows the order they were stored in.
    from tests.openai_server import OpenAiServer

    retries = _Retries()
    logging.getLogger("actors.pipeline").addHandler(retries)
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=None) as sim, OpenAiServer() as ai_server:
        settings = session_settings(pg, str(tmp_path), sim.address, BOT_SEND_RATE="0", WA_LEASE_TTL="60",
                                    DATABASE_ACQUIRE_TIMEOUT="2", AI_BASE_URL=ai_server.base_url + "/v1",
                                    AI_API_KEY="k", AI_DEBOUNCE="60", BOT_PHONE_TAKEOVER="1800")
        events = EventLog()
        tenant = new_tenant(pool)
        try:
            with supervision(settings, pool, events):
                bot = _pair(sim, events, pool, tenant)
                pool.execute(tenant, "UPDATE bots SET ai = %s WHERE id = %s", (json.dumps({"enabled": True}), bot))
                sim.inbound(bot, "15550001111", "before the owner", message_id="IN-1")
                _wait(lambda: sim.bot_state(bot)["pending_inbound"] == 0, 10, "the first message stored")
                pg.stop_server()
                try:
                    phone_id = sim.phone_send(bot, "15550001111", "the owner writes")
                    sim.inbound(bot, "15550001111", "after the owner", message_id="IN-2")
                    _wait(lambda: retries.count, 60, "the owner's message to fail to be stored")
                    assert sim.bot_state(bot)["pending_inbound"] == 2  # nothing acked meanwhile
                finally:
                    pg.start_server()
                _wait(lambda: sim.bot_state(bot)["pending_inbound"] == 0, 60, "both stored and acked")
                rows = _wait(lambda: _safe(lambda: pool.query(
                    tenant, "SELECT wa_message_id, direction, status, payload->>'ignored', payload->>'source'"
                            " FROM messages WHERE bot_id = %s ORDER BY created_at, id", (bot,))), 10, "the messages")
        finally:
            logging.getLogger("actors.pipeline").removeHandler(retries)
        assert [tuple(r) for r in rows] == [
            ("IN-1", "in", "ignored", conv.ANSWERED_FROM_PHONE, None),
            (phone_id, "out", "sent", None, "phone"),
            ("IN-2", "in", "ignored", conv.OWNER_ON_PHONE, None),
        ]
        assert ai_server.calls == []


def _supervisor(pg, data_dir, sim_address, log_path, **extra):
    env = dict(os.environ)
    env.update(DATABASE_URL=pg.app_url, DATABASE_OWNER_URL=pg.owner_url, DATA_DIR=data_dir, WA_TRANSPORT="simulator",
               WA_SIMULATOR_ADDR=sim_address, WA_LEASE_TTL="3", BOT_SEND_RATE="0", LOG_LEVEL="warning", **extra)
    return subprocess.Popen([sys.executable, "run.py", "supervisor"], cwd=ROOT, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def test_after_a_sigkill_with_pending_outbox_rows_each_is_delivered_exactly_once(pg, tmp_path, pool):
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=None) as sim:
        settings = session_settings(pg, str(tmp_path), sim.address)
        events = EventLog()
        tenant = new_tenant(pool)
        with supervision(settings, pool, events):
            bot = _pair(sim, events, pool, tenant)
        first = _supervisor(pg, str(tmp_path), sim.address, tmp_path / "first.log")
        try:
            _wait(lambda: sim.bot_state(bot)["connected"], 30, "the first process to connect the bot")
            ids = [conv.enqueue(pool, tenant, bot, "15550009999", f"order update {i}", None) for i in range(200)]
            # Kill it in the middle of delivering.
            _wait(lambda: len(sim.outbox(bot)) >= 20, 30, "delivery to start", interval=0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            delivered_before = len(sim.outbox(bot))
            assert delivered_before < 200, "the kill came too late to test anything"
        finally:
            if first.poll() is None:
                first.kill()
        second = _supervisor(pg, str(tmp_path), sim.address, tmp_path / "second.log")
        try:
            _wait(lambda: len(sim.outbox(bot)) >= 200, 60, "every message after the restart", interval=0.2)
            _wait(lambda: {s for (s,) in pool.query(tenant, "SELECT state FROM outbox WHERE id = ANY(%s::uuid[])",
                                                     (ids,))} == {"sent"}, 30, "every row marked sent")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        texts = [m["text"] for m in sim.outbox(bot)]
        assert len(texts) == 200 and sorted(texts) == sorted(f"order update {i}" for i in range(200))
        assert len({m["id"] for m in sim.outbox(bot)}) == 200

"""Bot sessions over the real neonize client, offline: a failed dial is a network fault that backs
off, and a dial that hangs never blocks the process and does not hold up a stop."""

import time

import pytest

from db import bots as bots_db
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision
from tests.test_neonize_transport import SilentProxy, Ticker


@pytest.fixture
def neonize_settings(pg, tmp_path):
    # The hanging proxy listens on 127.0.0.1: the operator allows private addresses here.
    return session_settings(pg, str(tmp_path), "127.0.0.1:1", WA_TRANSPORT="neonize", OUTBOUND_ALLOW_PRIVATE="true")


def test_an_offline_neonize_dial_is_classified_as_a_network_error_and_backs_off(neonize_settings, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(neonize_settings, pool, events):
        bot = new_bot(pool, tenant)
        events.wait_state(bot, "backing_off", timeout=15)
        row = bots_db.get(pool, tenant, bot)
        assert row["reason"].startswith("network")
        assert row["attempt"] >= 1 and row["next_retry_at"] is not None


def test_a_hanging_neonize_dial_never_blocks_the_hub_and_stopping_the_bot_returns_promptly(
    neonize_settings, pool
):
    events = EventLog()
    proxy = SilentProxy()
    ticker = Ticker()
    tenant = new_tenant(pool)
    try:
        with supervision(neonize_settings, pool, events) as sup:
            bot = new_bot(pool, tenant, proxy=f"socks5://127.0.0.1:{proxy.port}")
            events.wait_state(bot, "starting", timeout=10)
            assert proxy.accepted.wait(10), "the dial never reached the proxy"
            ticker.wait_ticks(20)
            started = time.monotonic()
            bots_db.set_desired(pool, tenant, bot, "stopped")
            events.wait_state(bot, "stopped", timeout=5)
            events.wait_for(lambda: sup.session_ref(bot) is None, timeout=5, what="the session to end")
            assert time.monotonic() - started < 3
            ticker.wait_ticks(10)
            assert ticker.max_gap < 0.5, f"the hub froze for {ticker.max_gap:.2f}s"
    finally:
        proxy.close()  # lets the abandoned Go dial finish instead of lingering for a minute
        ticker.stop()

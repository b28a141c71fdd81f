"""Bot sessions end to end over the simulator's real socket, supervised, with leases in PostgreSQL."""

import pytest

from actors.base import actor_of
from actors.session import GetState
from db import bots as bots_db
from simulator.server import Simulator
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision


@pytest.fixture
def sim():
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=0) as simulator:
        yield simulator


@pytest.fixture
def events():
    return EventLog()


@pytest.fixture
def env(pg, tmp_path, sim, pool, events):
    settings = session_settings(pg, str(tmp_path), sim.address)
    with supervision(settings, pool, events) as sup:
        yield sup


def _row(pool, tenant_id, bot_id):
    return bots_db.get(pool, tenant_id, bot_id)


def _pair(sim, events, pool, tenant_id, bot_id):
    events.wait_state(bot_id, "pairing")
    events.wait_for(lambda: _row(pool, tenant_id, bot_id)["has_qr"], what="the QR in the bot's row")
    sim.scan(bot_id)
    events.wait_state(bot_id, "connected")


def _session_view(env, bot_id):
    ref = env.session_ref(bot_id)
    return ref.ask(GetState(), timeout=5) if ref is not None else None


def test_a_new_bot_shows_a_qr_code_and_connects_after_the_scan(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    row = _row(pool, tenant, bot)
    assert row["state"] == "connected"
    assert row["paired"] is True and row["jid"].endswith("@s.whatsapp.net")
    assert row["has_qr"] is False
    assert row["supervisor"] == env.owner
    assert any(t == "bot.paired" for _, b, t, _ in events.events if b == bot)


def test_session_metrics_report_states_attempts_and_live_transports(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    text = env.system.metrics.render().decode()
    assert 'bot_sessions{state="connected"} 1.0' in text
    assert 'bot_connect_attempts_total{reason="start"}' in text
    assert 'bot_connect_attempts_total{reason="stream_restart"}' in text
    assert "bot_transports_live 1.0" in text


def test_an_outage_backs_off_and_the_session_recovers_when_the_network_returns(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    mark = len(events.states(bot))
    sim.outage()
    events.wait_state(bot, "backing_off", after=mark)
    row = events.wait_for(lambda: (r := _row(pool, tenant, bot))["attempt"] >= 1 and r, what="an attempt count")
    assert row["next_retry_at"] is not None
    sim.recover()
    events.wait_state(bot, "connected", timeout=15, after=mark)


def test_a_logged_out_session_does_not_reconnect(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    sim.inject(bot, "logged_out")
    events.wait_state(bot, "logged_out")
    view = _session_view(env, bot)
    assert view["state"] == "logged_out"
    assert view["transport"] is False and view["next_retry_at"] is None
    assert _row(pool, tenant, bot)["paired"] is False


def test_a_replaced_session_stops_and_waits_for_the_user(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    sim.inject(bot, "replaced")
    events.wait_state(bot, "replaced")
    view = _session_view(env, bot)
    assert view["transport"] is False and view["next_retry_at"] is None
    # The user restarts it: it comes back.
    mark = len(events.states(bot))
    bots_db.set_desired(pool, tenant, bot, "running", command="restart")
    events.wait_state(bot, "connected", after=mark)


def test_a_temporary_ban_waits_for_its_expiry_then_resumes(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    mark = len(events.states(bot))
    sim.inject(bot, "temporary_ban", expires_in=1.0)
    events.wait_state(bot, "temporarily_banned", after=mark)
    assert _row(pool, tenant, bot)["banned_until"] is not None
    events.wait_state(bot, "connected", timeout=10, after=mark + 1)


def test_a_connect_failure_with_a_5xx_code_backs_off_but_a_4xx_code_waits_for_the_user(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    mark = len(events.states(bot))
    sim.inject(bot, "connect_failure", code=503, times=1)
    events.wait_state(bot, "backing_off", after=mark)
    events.wait_state(bot, "connected", after=mark + 1)
    sim.inject(bot, "client_outdated", times=1)
    events.wait_state(bot, "client_outdated")


def test_attempts_exhausted_mark_the_session_failed_and_a_restart_revives_it(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    sim.outage()
    events.wait_state(bot, "failed", timeout=20)
    row = _row(pool, tenant, bot)
    assert "gave up after" in row["reason"]
    sim.recover()
    mark = len(events.states(bot))
    bots_db.set_desired(pool, tenant, bot, "running", command="restart")
    events.wait_state(bot, "connected", after=mark)


def test_stop_and_start_from_the_row_reach_the_session(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    mark = len(events.states(bot))
    bots_db.set_desired(pool, tenant, bot, "stopped")
    events.wait_state(bot, "stopped", after=mark)
    events.wait_for(lambda: env.session_ref(bot) is None, what="the session to go")
    events.wait_for(lambda: _row(pool, tenant, bot)["supervisor"] is None, what="the lease to be released")
    bots_db.set_desired(pool, tenant, bot, "running")
    events.wait_state(bot, "connected", after=mark + 1)


def test_a_pair_code_request_is_answered_through_the_row(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    events.wait_state(bot, "pairing")
    seq = bots_db.request_pair_code(pool, tenant, bot, "15551234567")
    result = events.wait_for(lambda: bots_db.pair_result(pool, tenant, bot, seq), what="a pair code")
    code, error = result
    assert error is None and code
    sim.enter_pair_code(bot)
    events.wait_state(bot, "connected")


def test_a_restarted_process_resumes_a_paired_session_without_a_qr_code(pg, tmp_path, sim, pool):
    settings = session_settings(pg, str(tmp_path), sim.address)
    first = EventLog()
    tenant = new_tenant(pool)
    with supervision(settings, pool, first):
        bot = new_bot(pool, tenant)
        _pair(sim, first, pool, tenant, bot)
    assert _row(pool, tenant, bot)["supervisor"] is None  # released on a clean stop
    second = EventLog()
    with supervision(settings, pool, second):
        second.wait_state(bot, "connected")
    assert "pairing" not in second.states(bot)
    assert not any(t == "bot.qr" for _, b, t, _ in second.events if b == bot)


def test_a_crashing_session_is_restarted_alone(env, sim, events, pool):
    tenant = new_tenant(pool)
    bot_a = new_bot(pool, tenant)
    bot_b = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot_a)
    _pair(sim, events, pool, tenant, bot_b)
    victim = env.session_ref(bot_a)
    other = env.session_ref(bot_b)
    mark = len(events.states(bot_a))
    actor_of(victim).kill()
    events.wait_for(lambda: env.session_ref(bot_a) not in (None, victim), timeout=10, what="a new incarnation")
    assert env.session_ref(bot_b) is other and other.is_alive()
    events.wait_state(bot_a, "connected", after=mark)


def test_a_restarted_lease_keeper_adopts_the_running_sessions(env, sim, events, pool):
    from actors.supervisor import children_of

    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    _pair(sim, events, pool, tenant, bot)
    session = env.session_ref(bot)
    keeper = children_of(env.top_ref).ref_of("leases")
    actor_of(keeper).kill()
    events.wait_for(lambda: children_of(env.top_ref).ref_of("leases") not in (None, keeper),
                    what="a new lease keeper")
    # The session was neither restarted nor duplicated, and the new keeper acts on it.
    assert env.session_ref(bot) is session and session.is_alive()
    mark = len(events.states(bot))
    bots_db.set_desired(pool, tenant, bot, "stopped")
    events.wait_state(bot, "stopped", after=mark)
    events.wait_for(lambda: env.session_ref(bot) is None, what="the session to go")

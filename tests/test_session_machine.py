"""The bot session state machine: each transition, its effects, and the events it ignores."""

import random

import pytest

from sansio.backoff import BackoffPolicy
from sansio.session_machine import (
    BanExpired,
    CancelRetry,
    CloseTransport,
    Connect,
    Logout,
    LogoutTransport,
    Persist,
    Publish,
    Restart,
    RetryDue,
    ScheduleRetry,
    SessionState,
    Start,
    State,
    Stop,
    transition,
)
from transports.events import (
    Connected,
    Disconnected,
    MessageReceived,
    PairCode,
    Paired,
    QrCode,
)
from transports.events import (
    DisconnectKind as K,
)

POLICY = BackoffPolicy(base=5, cap=300, max_attempts=3, stable_after=60)
NOW = 1_000_000.0


def rng():
    return random.Random(42)


def run(session, *events, now=NOW):
    """Feed events in order; return the final session and the last step's effects."""
    effects = []
    for event in events:
        session, effects = transition(session, event, now, rng())
    return session, effects


def stopped():
    return SessionState.initial(POLICY)


def starting():
    return run(stopped(), Start())[0]


def connected(at=NOW):
    return run(starting(), Connected("1@s.whatsapp.net"), now=at)[0]


def backing_off():
    return run(connected(), Disconnected(K.NETWORK))[0]


def banned():
    return run(connected(), Disconnected(K.TEMPORARY_BAN, expires_in=600))[0]


def failed():
    session = starting()
    while session.state is not State.FAILED:
        session, _ = run(session, Disconnected(K.NETWORK))
        if session.state is State.BACKING_OFF:
            session, _ = run(session, RetryDue(session.next_retry_at))
    return session


def in_state(state):
    if state is State.PAIRING:
        return run(starting(), QrCode(("qr1",)))[0]
    if state in (State.LOGGED_OUT, State.REPLACED, State.CLIENT_OUTDATED):
        kind = {State.LOGGED_OUT: K.LOGGED_OUT, State.REPLACED: K.REPLACED, State.CLIENT_OUTDATED: K.CLIENT_OUTDATED}
        return run(connected(), Disconnected(kind[state]))[0]
    return {
        State.STOPPED: stopped,
        State.STARTING: starting,
        State.CONNECTED: connected,
        State.BACKING_OFF: backing_off,
        State.TEMPORARILY_BANNED: banned,
        State.FAILED: failed,
    }[state]()


def kinds(effects):
    return [type(e) for e in effects]


def test_helpers_reach_every_state():
    assert {in_state(s).state for s in State} == set(State)


def test_start_from_stopped_connects():
    session, effects = run(stopped(), Start())
    assert session.state is State.STARTING
    assert kinds(effects) == [Persist, Publish, Connect]


@pytest.mark.parametrize("state", [State.FAILED, State.LOGGED_OUT, State.REPLACED, State.CLIENT_OUTDATED])
def test_start_from_a_resting_state_connects_with_a_fresh_attempt_count(state):
    session, effects = run(in_state(state), Start())
    assert session.state is State.STARTING
    assert session.attempt == 0
    assert effects[-1] == Connect()


@pytest.mark.parametrize(
    "state", [State.STARTING, State.PAIRING, State.CONNECTED, State.BACKING_OFF, State.TEMPORARILY_BANNED]
)
def test_start_is_ignored_while_running_or_waiting_on_a_timer(state):
    session = in_state(state)
    assert run(session, Start()) == (session, [])


def test_qr_code_while_starting_moves_to_pairing_and_publishes_the_code():
    session, effects = run(starting(), QrCode(("qr1", "qr2")))
    assert session.state is State.PAIRING
    assert effects[-1] == Publish("bot.qr", {"codes": ["qr1", "qr2"]})


def test_a_rotated_qr_code_only_publishes_the_new_code():
    session, effects = run(in_state(State.PAIRING), QrCode(("qr3",)))
    assert session.state is State.PAIRING
    assert effects == [Publish("bot.qr", {"codes": ["qr3"]})]


def test_pair_code_while_starting_moves_to_pairing_and_publishes_the_code():
    session, effects = run(starting(), PairCode("ABCD-EFGH"))
    assert session.state is State.PAIRING
    assert effects[-1] == Publish("bot.pair_code", {"code": "ABCD-EFGH"})


def test_paired_returns_to_starting_and_the_stream_restart_reconnects_at_once():
    session, effects = run(in_state(State.PAIRING), Paired("1@s.whatsapp.net"))
    assert session.state is State.STARTING
    assert Publish("bot.paired", {"jid": "1@s.whatsapp.net"}) in effects
    session, effects = run(session, Disconnected(K.STREAM_RESTART))
    assert session.state is State.STARTING
    assert effects[-1] == Connect()
    assert CloseTransport() not in effects


def test_connected_records_when_the_connection_came_up():
    session, effects = run(starting(), Connected("1@s.whatsapp.net"), now=NOW + 3)
    assert session.state is State.CONNECTED
    assert session.connected_since == NOW + 3
    assert kinds(effects) == [Persist, Publish]


def test_connected_does_not_reset_the_attempt_count_by_itself():
    waiting = backing_off()
    session = run(waiting, RetryDue(waiting.next_retry_at), Connected())[0]
    assert session.state is State.CONNECTED
    assert session.attempt == 1


def test_a_network_drop_backs_off_with_a_delay_within_the_first_bounds():
    session, effects = run(connected(), Disconnected(K.NETWORK), now=NOW + 10)
    lo, hi = POLICY.bounds(1)
    assert session.state is State.BACKING_OFF
    assert session.attempt == 1
    assert NOW + 10 + lo <= session.next_retry_at <= NOW + 10 + hi
    assert effects[0] == CloseTransport()
    assert effects[-1] == ScheduleRetry(session.next_retry_at, RetryDue(session.next_retry_at))


def test_a_5xx_connect_failure_backs_off():
    session, _ = run(starting(), Disconnected(K.CONNECT_FAILURE, code=503))
    assert session.state is State.BACKING_OFF


def test_retry_due_in_backing_off_connects():
    session = backing_off()
    session, effects = run(session, RetryDue(session.next_retry_at))
    assert session.state is State.STARTING
    assert session.next_retry_at is None
    assert effects[-1] == Connect()


def test_a_stale_retry_due_for_another_time_is_ignored():
    session = backing_off()
    assert run(session, RetryDue(session.next_retry_at - 1)) == (session, [])


@pytest.mark.parametrize("state", [State.STOPPED, State.STARTING, State.CONNECTED, State.FAILED])
def test_retry_due_outside_backing_off_is_ignored(state):
    session = in_state(state)
    assert run(session, RetryDue(NOW)) == (session, [])


def test_the_attempt_count_resets_after_a_connection_stable_for_the_whole_period():
    waiting = backing_off()
    session = run(waiting, RetryDue(waiting.next_retry_at))[0]
    session = run(session, Connected(), now=NOW + 100)[0]
    session, _ = run(session, Disconnected(K.NETWORK), now=NOW + 160)
    assert session.attempt == 1  # counted afresh: this drop is the first retry again


def test_the_attempt_count_keeps_growing_when_the_connection_drops_before_the_stable_period():
    waiting = backing_off()
    session = run(waiting, RetryDue(waiting.next_retry_at))[0]
    session = run(session, Connected(), now=NOW + 100)[0]
    session, _ = run(session, Disconnected(K.NETWORK), now=NOW + 159)
    assert session.attempt == 2


def test_a_stream_restart_reconnects_at_once_without_counting_an_attempt():
    session, effects = run(connected(), Disconnected(K.STREAM_RESTART))
    assert session.state is State.STARTING
    assert session.attempt == 0
    assert effects[-1] == Connect()
    assert ScheduleRetry not in kinds(effects)


def test_exhausted_attempts_mark_the_session_failed_without_scheduling_a_retry():
    session = starting()
    for _ in range(POLICY.max_attempts):
        session = run(session, Disconnected(K.NETWORK))[0]
        session = run(session, RetryDue(session.next_retry_at))[0]
    session, effects = run(session, Disconnected(K.NETWORK))
    assert session.state is State.FAILED
    assert "gave up after 3 reconnect attempts" in session.reason
    assert kinds(effects) == [CloseTransport, Persist, Publish]


def test_failed_is_restartable_by_start():
    session, effects = run(failed(), Start())
    assert (session.state, session.attempt) == (State.STARTING, 0)
    assert effects[-1] == Connect()


def test_failed_is_restartable_by_restart():
    session, effects = run(failed(), Restart())
    assert (session.state, session.attempt) == (State.STARTING, 0)
    assert effects[-1] == Connect()


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (Disconnected(K.LOGGED_OUT), State.LOGGED_OUT),
        (Disconnected(K.CONNECT_FAILURE, code=401), State.LOGGED_OUT),
        (Disconnected(K.REPLACED), State.REPLACED),
        (Disconnected(K.CLIENT_OUTDATED), State.CLIENT_OUTDATED),
        (Disconnected(K.CONNECT_FAILURE, code=405), State.CLIENT_OUTDATED),
        (Disconnected(K.CONNECT_FAILURE, code=409), State.FAILED),
    ],
)
def test_a_refusal_closes_the_transport_and_waits_for_the_user(event, state):
    session, effects = run(connected(), event)
    assert session.state is state
    assert session.next_retry_at is None
    assert kinds(effects) == [CloseTransport, Persist, Publish]


def test_a_temporary_ban_waits_until_its_expiry():
    session, effects = run(connected(), Disconnected(K.TEMPORARY_BAN, code=101, expires_in=600))
    assert session.state is State.TEMPORARILY_BANNED
    assert session.banned_until == session.next_retry_at == NOW + 600
    assert effects[-1] == ScheduleRetry(NOW + 600, BanExpired(NOW + 600))


def test_ban_expired_connects():
    session, effects = run(banned(), BanExpired(NOW + 600), now=NOW + 600)
    assert session.state is State.STARTING
    assert session.banned_until is None
    assert effects[-1] == Connect()


def test_a_stale_ban_expired_is_ignored():
    session = banned()
    assert run(session, BanExpired(NOW + 1)) == (session, [])


def test_a_disconnect_we_caused_ourselves_is_ignored():
    session = connected()
    assert run(session, Disconnected(K.CLOSED)) == (session, [])


@pytest.mark.parametrize("state", [State.STOPPED, State.BACKING_OFF, State.LOGGED_OUT, State.FAILED])
def test_a_disconnect_outside_a_live_connection_is_ignored(state):
    session = in_state(state)
    assert run(session, Disconnected(K.NETWORK)) == (session, [])


@pytest.mark.parametrize("state", [s for s in State if s is not State.STOPPED])
def test_stop_from_any_state_closes_the_transport_and_cancels_the_timer(state):
    session, effects = run(in_state(state), Stop())
    assert session.state is State.STOPPED
    assert session.next_retry_at is None
    assert effects[:2] == [CancelRetry(), CloseTransport()]


def test_stop_when_stopped_is_ignored():
    session = stopped()
    assert run(session, Stop()) == (session, [])


def test_logout_unlinks_the_device():
    session, effects = run(connected(), Logout())
    assert session.state is State.LOGGED_OUT
    assert kinds(effects) == [CancelRetry, LogoutTransport, CloseTransport, Persist, Publish]


def test_restart_closes_before_connecting_with_a_fresh_attempt_count():
    session, effects = run(backing_off(), Restart())
    assert (session.state, session.attempt, session.next_retry_at) == (State.STARTING, 0, None)
    assert kinds(effects) == [CancelRetry, CloseTransport, Persist, Publish, Connect]


def test_every_state_change_persists_and_publishes_the_stored_view():
    session, effects = run(connected(), Disconnected(K.NETWORK))
    view = {
        "state": "backing_off",
        "reason": "network",
        "attempt": 1,
        "next_retry_at": session.next_retry_at,
        "banned_until": None,
    }
    assert Persist(session) in effects
    assert Publish("bot.state", view) in effects


@pytest.mark.parametrize("event", [MessageReceived("m1", "c", "s", NOW), object()])
def test_events_the_machine_does_not_know_are_ignored(event):
    session = connected()
    assert run(session, event) == (session, [])


@pytest.mark.parametrize("event", [QrCode(("qr",)), PairCode("X"), Paired("1@s"), Connected()])
def test_pairing_and_connection_events_when_connected_are_ignored(event):
    session = connected()
    assert run(session, event) == (session, [])

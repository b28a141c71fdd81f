"""The state machine of one bot's WhatsApp session: what state it is in and what to do next.

``transition(session, event, now, rng)`` returns the next ``SessionState`` and a list of effects, data
the session actor executes in the order given. Inputs are user commands (``Start``, ``Stop``,
``Logout``, ``Restart``), transport events (``transports.events``) and timer events (``RetryDue``,
``BanExpired``, each delivered by the actor when a ``ScheduleRetry`` comes due).

States::

    stopped ──Start──> starting ──QrCode/PairCode──> pairing ──Paired──> starting
    starting/pairing ──Connected──> connected
    starting/pairing/connected ──Disconnected──> see sansio.disconnects:
        stream restart -> starting (+Connect at once), transient -> backing_off (or failed once
        attempts are exhausted), refusals -> logged_out / replaced / client_outdated / failed,
        temporary ban -> temporarily_banned
    backing_off ──RetryDue──> starting;  temporarily_banned ──BanExpired──> starting
    failed / logged_out / replaced / client_outdated ──Start──> starting (fresh attempt count)
    any ──Stop──> stopped;  any ──Logout──> logged_out;  any ──Restart──> starting (fresh count)

An event that does not apply in the current state is ignored: the session is returned unchanged with
no effects. That covers commands that would change nothing (``Start`` while already running or
waiting on a timer, ``Stop`` when stopped), transport events after we stopped listening (a late
``Disconnected`` once backing off), and timer events that are stale: ``RetryDue``/``BanExpired`` carry
the time they were scheduled for and only the one matching the current ``next_retry_at`` counts, so a
timer that fired after a cancel cannot cut a later wait short.

Every change to what is stored (state, reason, attempt, next retry, ban end) yields ``Persist`` and
``Publish("bot.state", session.view())``. Effects come in the order: clean-up (cancel timer, close or
log out the transport), then ``Persist``/``Publish``, then new work (``Connect``, ``ScheduleRetry``),
so the stored state never lags behind a connection being started.

Pure: no I/O; time and randomness are passed in.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

from sansio.backoff import Backoff, BackoffPolicy, Rng
from sansio.disconnects import Action, classify
from transports import events as tev


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    PAIRING = "pairing"  # showing a QR or pair code; waiting for the user's phone
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    LOGGED_OUT = "logged_out"  # device unlinked: needs a new pairing
    REPLACED = "replaced"  # another client took the session
    CLIENT_OUTDATED = "client_outdated"
    TEMPORARILY_BANNED = "temporarily_banned"  # until banned_until
    FAILED = "failed"  # attempts exhausted or refused; needs the user


# Where the transport is live and its events mean something.
LIVE = frozenset({State.STARTING, State.PAIRING, State.CONNECTED})
# Resting states a plain Start leaves; the others are running or already waiting on a timer.
STARTABLE = frozenset({State.STOPPED, State.FAILED, State.LOGGED_OUT, State.REPLACED, State.CLIENT_OUTDATED})


# User commands


@dataclasses.dataclass(frozen=True)
class Start:
    pass


@dataclasses.dataclass(frozen=True)
class Stop:
    pass


@dataclasses.dataclass(frozen=True)
class Logout:
    pass


@dataclasses.dataclass(frozen=True)
class Restart:
    pass


# Timer events


@dataclasses.dataclass(frozen=True)
class RetryDue:
    at: float  # the ScheduleRetry.at it answers


@dataclasses.dataclass(frozen=True)
class BanExpired:
    at: float


# Effects


@dataclasses.dataclass(frozen=True)
class Connect:
    """Dial the transport (through the process-wide connect rate limit)."""


@dataclasses.dataclass(frozen=True)
class CloseTransport:
    """Close the transport; idempotent."""


@dataclasses.dataclass(frozen=True)
class LogoutTransport:
    """Unlink the device and forget its store."""


@dataclasses.dataclass(frozen=True)
class ScheduleRetry:
    """At ``at`` (epoch seconds), feed ``event`` back into ``transition``; replaces any pending timer."""

    at: float
    event: RetryDue | BanExpired


@dataclasses.dataclass(frozen=True)
class CancelRetry:
    """Drop the pending timer, if any."""


@dataclasses.dataclass(frozen=True)
class Persist:
    """Write ``session.view()`` to the bot's row."""

    session: SessionState


@dataclasses.dataclass(frozen=True)
class Publish:
    event_type: str
    payload: dict


Effect = Connect | CloseTransport | LogoutTransport | ScheduleRetry | CancelRetry | Persist | Publish


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionState:
    backoff: Backoff
    state: State = State.STOPPED
    reason: str = ""
    next_retry_at: float | None = None  # epoch seconds of the pending RetryDue / BanExpired
    banned_until: float | None = None

    @classmethod
    def initial(cls, policy: BackoffPolicy) -> SessionState:
        return cls(backoff=Backoff(policy))

    @property
    def attempt(self) -> int:
        return self.backoff.attempt

    @property
    def connected_since(self) -> float | None:
        return self.backoff.connected_since

    def view(self) -> dict[str, Any]:
        """What is stored on the bot's row and shown to its users."""
        return {
            "state": self.state.value,
            "reason": self.reason,
            "attempt": self.attempt,
            "next_retry_at": self.next_retry_at,
            "banned_until": self.banned_until,
        }


Result = tuple[SessionState, list[Effect]]
IGNORED = None


def transition(session: SessionState, event: Any, now: float, rng: Rng) -> Result:
    handler = _HANDLERS.get(type(event))
    result = handler(session, event, now, rng) if handler else IGNORED
    return (session, []) if result is IGNORED else result


def _move(old: SessionState, new: SessionState, cleanup: Sequence[Effect] = (), then: Sequence[Effect] = ()) -> Result:
    record: list[Effect] = []
    if new.view() != old.view():
        record = [Persist(new), Publish("bot.state", new.view())]
    return new, [*cleanup, *record, *then]


def _starting(backoff: Backoff, reason: str) -> SessionState:
    return SessionState(backoff=backoff, state=State.STARTING, reason=reason)


def _start(s: SessionState, e: Start, now: float, rng: Rng) -> Result | None:
    if s.state not in STARTABLE:
        return IGNORED
    return _move(s, _starting(s.backoff.reset(), "started"), then=[Connect()])


def _restart(s: SessionState, e: Restart, now: float, rng: Rng) -> Result:
    return _move(s, _starting(s.backoff.reset(), "restarted"), [CancelRetry(), CloseTransport()], [Connect()])


def _stop(s: SessionState, e: Stop, now: float, rng: Rng) -> Result | None:
    if s.state is State.STOPPED:
        return IGNORED
    new = SessionState(backoff=s.backoff.reset(), state=State.STOPPED, reason="stopped")
    return _move(s, new, [CancelRetry(), CloseTransport()])


def _logout(s: SessionState, e: Logout, now: float, rng: Rng) -> Result | None:
    if s.state is State.LOGGED_OUT:
        return IGNORED
    new = SessionState(backoff=s.backoff.reset(), state=State.LOGGED_OUT, reason="logged out by user")
    return _move(s, new, [CancelRetry(), LogoutTransport(), CloseTransport()])


def _qr_code(s: SessionState, e: tev.QrCode, now: float, rng: Rng) -> Result | None:
    if s.state not in (State.STARTING, State.PAIRING):
        return IGNORED
    new = dataclasses.replace(s, state=State.PAIRING, reason="waiting for the QR code to be scanned")
    return _move(s, new, then=[Publish("bot.qr", {"codes": list(e.codes)})])


def _pair_code(s: SessionState, e: tev.PairCode, now: float, rng: Rng) -> Result | None:
    if s.state not in (State.STARTING, State.PAIRING):
        return IGNORED
    new = dataclasses.replace(s, state=State.PAIRING, reason="waiting for the pair code to be entered")
    return _move(s, new, then=[Publish("bot.pair_code", {"code": e.code})])


def _paired(s: SessionState, e: tev.Paired, now: float, rng: Rng) -> Result | None:
    # whatsmeow follows a pairing with a stream restart; the session connects after that.
    if s.state not in (State.STARTING, State.PAIRING):
        return IGNORED
    return _move(s, _starting(s.backoff, "paired"), then=[Publish("bot.paired", {"jid": e.jid})])


def _connected(s: SessionState, e: tev.Connected, now: float, rng: Rng) -> Result | None:
    if s.state not in (State.STARTING, State.PAIRING):
        return IGNORED
    # The attempt count stays until the link proves stable (Backoff.on_disconnected decides).
    new = SessionState(backoff=s.backoff.on_connected(now), state=State.CONNECTED)
    return _move(s, new)


def _disconnected(s: SessionState, e: tev.Disconnected, now: float, rng: Rng) -> Result | None:
    if s.state not in LIVE:
        return IGNORED
    decision = classify(e)
    backoff = s.backoff.on_disconnected(now)
    if decision.action is Action.NONE:
        return IGNORED
    if decision.action is Action.RECONNECT_NOW:
        return _move(s, _starting(backoff, decision.reason), then=[Connect()])
    if decision.action is Action.BACK_OFF:
        delay, backoff = backoff.next_delay(rng)
        if delay is None:
            reason = f"gave up after {backoff.attempt} reconnect attempts; last: {decision.reason}"
            return _move(s, SessionState(backoff=backoff, state=State.FAILED, reason=reason), [CloseTransport()])
        at = now + delay
        new = SessionState(backoff=backoff, state=State.BACKING_OFF, reason=decision.reason, next_retry_at=at)
        return _move(s, new, [CloseTransport()], [ScheduleRetry(at, RetryDue(at))])
    if decision.action is Action.WAIT_UNTIL:
        assert decision.resume_in is not None  # a WAIT_UNTIL decision always says when
        until = now + decision.resume_in
        new = SessionState(
            backoff=backoff,
            state=State.TEMPORARILY_BANNED,
            reason=decision.reason,
            next_retry_at=until,
            banned_until=until,
        )
        return _move(s, new, [CloseTransport()], [ScheduleRetry(until, BanExpired(until))])
    new = SessionState(backoff=backoff, state=State(decision.state), reason=decision.reason)
    return _move(s, new, [CloseTransport()])


def _retry_due(s: SessionState, e: RetryDue, now: float, rng: Rng) -> Result | None:
    if s.state is not State.BACKING_OFF or e.at != s.next_retry_at:
        return IGNORED
    reason = f"reconnect attempt {s.attempt} of {s.backoff.policy.max_attempts}"
    return _move(s, _starting(s.backoff, reason), then=[Connect()])


def _ban_expired(s: SessionState, e: BanExpired, now: float, rng: Rng) -> Result | None:
    if s.state is not State.TEMPORARILY_BANNED or e.at != s.banned_until:
        return IGNORED
    return _move(s, _starting(s.backoff, "temporary ban expired"), then=[Connect()])


_HANDLERS: dict[type, Callable[..., Result | None]] = {
    Start: _start,
    Stop: _stop,
    Logout: _logout,
    Restart: _restart,
    tev.QrCode: _qr_code,
    tev.PairCode: _pair_code,
    tev.Paired: _paired,
    tev.Connected: _connected,
    tev.Disconnected: _disconnected,
    RetryDue: _retry_due,
    BanExpired: _ban_expired,
}

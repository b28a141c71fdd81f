"""One bot's WhatsApp session as an actor: a thin shell around ``sansio.session_machine``.

The actor owns the session's state, its current transport, and its one retry timer. Everything it
learns (a user command, a transport event, a timer firing) goes through ``transition``, and it
executes the effects that come back: dial (through the process-wide connect rate limit), close or log
out the transport, schedule or cancel the timer, write the state to the bot's row (fenced by the
lease), publish events.

Teardown is the point of this module: each dial gets a fresh transport and a new generation number;
events from an older generation are dropped, the old transport is closed before a new one exists,
and stopping the actor — normally or by a crash or kill — closes the transport and cancels its timers,
so nothing of a session outlives it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent

from actors.base import Actor, actor_of
from actors.pipeline import (
    Ack,
    BotPipeline,
    DownloadMedia,
    Inbound,
    LinkUp,
    ReceiptIn,
    SendMedia,
    SendText,
    Wake,
    WasReceived,
)
from core import context, outbound, sentry
from core.root import Publisher
from db import bots as bots_db
from sansio import session_machine as sm
from sansio.backoff import BackoffPolicy
from sansio.outbound_address import AddressRefused
from transports import events as tev
from transports.base import Transport, TransportError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SessionDeps:
    """What every session of a supervisor process shares (owned by the process's supervision root)."""

    settings: Any
    pool: Any
    owner: str  # this supervisor's lease owner id
    transport_factory: Callable[..., Transport]
    reserve_connect: Callable[[float], float]  # the process-wide connect rate limit: now -> when
    publish: Publisher  # (tenant, bot, type, payload)
    admit_connect: Callable[[], float] = lambda: 0.0  # at dial time: 0 to go, else seconds to wait
    clock: Callable[[], float] = time.time
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    on_attempt: Callable[[str], None] | None = None  # reason -> metrics
    pipeline: Any = None  # actors.pipeline.PipelineDeps: the bot's message work; None runs none


# -- messages ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    command: sm.Start | sm.Stop | sm.Logout | sm.Restart


@dataclasses.dataclass(frozen=True)
class Refresh:
    """Re-read the bot's row: the user may have asked for something (start, stop, restart, pair code)."""


@dataclasses.dataclass(frozen=True)
class _TransportEvent:
    generation: int
    event: tev.Event


@dataclasses.dataclass(frozen=True)
class _Timer:
    event: sm.RetryDue | sm.BanExpired


@dataclasses.dataclass(frozen=True)
class _Dial:
    generation: int


class GetState:
    pass


class _FirstRefresh:
    pass


@dataclasses.dataclass(frozen=True)
class _PipelineFailed:
    reason: str


class BotSession(Actor):
    def __init__(self, bot_id: str, tenant_id: str, deps: SessionDeps) -> None:
        super().__init__()
        self.bot_id = bot_id
        self.tenant_id = tenant_id
        self.deps = deps
        self.session = sm.SessionState.initial(BackoffPolicy.from_settings(deps.settings))
        self.transport: Transport | None = None
        self.generation = 0
        self.options: dict[str, Any] = {}
        self._timer: gevent.Greenlet | None = None
        self._dial_timer: gevent.Greenlet | None = None
        self._command_done = 0
        self._pair_done = 0
        self._last_disconnect = "start"  # why the next dial happens, for the attempts metric
        self.pipeline: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        # Reading the row happens as the first message, so the supervisor's start_child returns at
        # once (it waits for on_start) and thousands of sessions start without queueing on it.
        self._count("sessions_started")
        with context.bound(tenant_id=self.tenant_id, bot_id=self.bot_id):
            if self.deps.pipeline is not None:
                self.pipeline = BotPipeline.start(self.bot_id, self.tenant_id, self.actor_ref, self.deps.pipeline)
                # The pipeline lives and dies with its session: if it fails, the session fails too and
                # the supervisor restarts both.
                actor_of(self.pipeline).watch(self._pipeline_ended)
            self.actor_ref.tell(_FirstRefresh())

    def on_stop(self) -> None:
        self._teardown()
        # A normal stop (the user's, or the supervisor giving the bot up) is recorded as stopped.
        if self.session.state is not sm.State.STOPPED:
            self._apply(sm.Stop())

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        for timer in (self._timer, self._dial_timer):
            if timer is not None:
                timer.kill(block=False)
        self._timer = self._dial_timer = None
        self._close_transport()
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None and pipeline.is_alive():
            try:
                pipeline.stop(timeout=5)
            except Exception:  # noqa: BLE001 - stuck: end it
                actor_of(pipeline).kill()

    def _pipeline_ended(self, ref: Any, reason: BaseException | None) -> None:
        if reason is not None and self.pipeline is ref:
            _tell_quietly(self.actor_ref, _PipelineFailed(repr(reason)))

    # -- messages ----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        # Timer and transport messages arrive without a work context; logs must still name the bot.
        with context.bound(tenant_id=self.tenant_id, bot_id=self.bot_id):
            return self._receive(message)

    def _receive(self, message: Any) -> Any:
        if isinstance(message, _TransportEvent):
            if message.generation != self.generation:
                return None  # from a transport we already closed
            event = message.event
            if isinstance(event, (tev.MessageReceived, tev.Receipt)):
                return self._to_pipeline(event)
            self._on_transport_event(event)
            return self._apply(event)
        if isinstance(message, (SendText, SendMedia, WasReceived, Ack, DownloadMedia)):
            return self._network(message)
        if isinstance(message, _PipelineFailed):
            raise RuntimeError(f"the bot's pipeline failed: {message.reason}")
        if isinstance(message, _Timer):
            return self._apply(message.event)
        if isinstance(message, _Dial):
            if message.generation == self.generation and self._dial_timer is not None:
                self._dial_timer = None
                self._dial()
            return None
        if isinstance(message, Command):
            return self._apply(message.command)
        if isinstance(message, Refresh):
            if self.pipeline is not None:
                _tell_quietly(self.pipeline, Wake())
            return self._refresh()
        if isinstance(message, _FirstRefresh):
            return self._refresh(first=True)
        if isinstance(message, GetState):
            return {**self.session.view(), "generation": self.generation, "transport": self.transport is not None}
        return super().on_receive(message)

    def _refresh(self, first: bool = False) -> None:
        row = bots_db.load_for_session(self.deps.pool, self.tenant_id, self.bot_id)
        if row is None:
            self.actor_ref.stop(block=False)  # deleted
            return
        self.options = dict(row["transport_options"] or {})
        if first:
            # Commands issued before this process took the bot are history, except a pending one.
            self._command_done = row["command_done"]
            self._pair_done = row["pair_done"]
        if row["command_seq"] > self._command_done:
            self._command_done = row["command_seq"]
            command = sm.Restart() if row["command"] == "restart" else sm.Logout()
            self._apply(command)
            bots_db.write_fields(
                self.deps.pool, self.tenant_id, self.bot_id, self.deps.owner, command_done=row["command_seq"]
            )
        if row["desired_state"] == "running":
            self._apply(sm.Start())
        else:
            self._apply(sm.Stop())
        if row["pair_seq"] > self._pair_done and row["pair_phone"]:
            self._pair(row["pair_seq"], row["pair_phone"])

    # -- the state machine and its effects ----------------------------------------------------------

    def _apply(self, event: Any) -> None:
        old = self.session.state
        if isinstance(event, tev.Disconnected):
            self._last_disconnect = event.kind.value
        elif isinstance(event, (sm.Start, sm.Restart)):
            self._last_disconnect = "start"
        self.session, effects = sm.transition(self.session, event, self.deps.clock(), self.deps.rng)
        for effect in effects:
            self._execute(effect)
        if (old is sm.State.CONNECTED) != (self.session.state is sm.State.CONNECTED) and self.pipeline is not None:
            _tell_quietly(self.pipeline, LinkUp(self.session.state is sm.State.CONNECTED))
        if old is sm.State.PAIRING and self.session.state is not sm.State.PAIRING:
            # A QR code is only worth showing while the session waits for a scan.
            bots_db.write_fields(self.deps.pool, self.tenant_id, self.bot_id, self.deps.owner, qr_code=None)
        if self.session.state is not old:
            log.info(
                "session state",
                extra={"from": old.value, "to": self.session.state.value, "why": self.session.reason,
                       "attempt": self.session.attempt},
            )

    def _execute(self, effect: Any) -> None:
        if isinstance(effect, sm.Connect):
            self._schedule_dial()
        elif isinstance(effect, sm.CloseTransport):
            self._close_transport()
        elif isinstance(effect, sm.LogoutTransport):
            self._logout_transport()
        elif isinstance(effect, sm.ScheduleRetry):
            self._schedule_timer(effect.at, effect.event)
        elif isinstance(effect, sm.CancelRetry):
            if self._timer is not None:
                self._timer.kill(block=False)
                self._timer = None
        elif isinstance(effect, sm.Persist):
            self._persist(effect.session)
        elif isinstance(effect, sm.Publish):
            self.deps.publish(self.tenant_id, self.bot_id, effect.event_type, effect.payload)

    def _persist(self, session: sm.SessionState) -> None:
        held = bots_db.write_state(self.deps.pool, self.tenant_id, self.bot_id, self.deps.owner, session.view())
        if not held:
            # Another supervisor holds the bot now: stop at once so two never drive one number.
            log.warning("lease lost; stopping session")
            self._teardown()
            self.actor_ref.stop(block=False)

    # -- transport ----------------------------------------------------------------------------------

    def _schedule_dial(self) -> None:
        self._close_transport()
        now = self.deps.clock()
        at = self.deps.reserve_connect(now)
        if at <= now:
            self._dial()
            return
        generation = self.generation
        ref = self.actor_ref
        self._dial_timer = gevent.spawn_later(at - now, _tell_quietly, ref, _Dial(generation))

    def _dial(self) -> None:
        wait = self.deps.admit_connect()
        if wait > 0:
            self._dial_timer = gevent.spawn_later(wait, _tell_quietly, self.actor_ref, _Dial(self.generation))
            return
        self.generation += 1
        generation = self.generation
        ref = self.actor_ref
        tenant_id, bot_id = self.tenant_id, self.bot_id

        def sink(event: tev.Event) -> None:
            # Each inbound WhatsApp event starts its own line of work with a fresh correlation id.
            with context.bound(correlation_id=context.new_correlation_id(), tenant_id=tenant_id, bot_id=bot_id):
                _tell_quietly(ref, _TransportEvent(generation, event))

        self._count("connect_attempts")
        if self.deps.on_attempt is not None:
            self.deps.on_attempt(self._last_disconnect)
        options = self._checked_options(generation)
        if options is None:
            return
        transport = self.deps.transport_factory(self.bot_id, sink, self.deps.settings, options)
        self.transport = transport
        self._count("transports_created")
        try:
            transport.connect()
        except Exception as exc:  # noqa: BLE001 - a failed dial is a network fault like any other
            _tell_quietly(ref, _TransportEvent(generation, tev.Disconnected(tev.DisconnectKind.NETWORK, str(exc))))

    def _checked_options(self, generation: int) -> dict[str, Any] | None:
        """The transport options with the proxy's address checked by the outbound policy, after DNS,
        and pinned (``core.outbound``); None when refused, the refusal told to the session as a
        disconnect (a name that does not resolve is a network fault, retried; a refused address fails
        the session with the reason)."""
        proxy = self.options.get("proxy")
        if not proxy:
            return self.options
        allow = bool(getattr(self.deps.settings, "allow_private_addresses", False))
        kind = tev.DisconnectKind.ADDRESS_REFUSED
        try:
            return {**self.options, "proxy": outbound.checked_proxy(proxy, allow_private=allow)}
        except outbound.Unresolved as exc:
            kind, reason = tev.DisconnectKind.NETWORK, f"proxy {exc}"
        except AddressRefused as exc:
            reason = f"proxy {exc}"
        log.warning("proxy refused", extra={"reason": reason})
        _tell_quietly(self.actor_ref, _TransportEvent(generation, tev.Disconnected(kind, reason)))
        return None

    def _close_transport(self) -> None:
        if self._dial_timer is not None:
            self._dial_timer.kill(block=False)
            self._dial_timer = None
        transport, self.transport = self.transport, None
        self.generation += 1  # whatever the old transport still says is now stale
        if transport is not None:
            try:
                transport.close()
            except Exception as exc:  # noqa: BLE001 - closing must not stop the session
                log.warning("transport close failed", extra={"error": repr(exc)})
            self._count("transports_closed")

    def _logout_transport(self) -> None:
        transport = self.transport or self.deps.transport_factory(
            self.bot_id, lambda event: None, self.deps.settings, self.options
        )
        try:
            transport.logout()
        except Exception as exc:  # noqa: BLE001 - the local store is forgotten regardless
            log.warning("logout failed", extra={"error": repr(exc)})
        finally:
            if transport is not self.transport:
                transport.close()
        bots_db.write_fields(self.deps.pool, self.tenant_id, self.bot_id, self.deps.owner, paired=False,
                             qr_code=None)

    def _to_pipeline(self, event: tev.MessageReceived | tev.Receipt) -> None:
        if self.pipeline is None:
            return  # nothing to store it with; unacked, the network keeps it
        if isinstance(event, tev.MessageReceived):
            _tell_quietly(self.pipeline, Inbound(event))
        else:
            _tell_quietly(self.pipeline, ReceiptIn(event))

    def _network(self, message: Any) -> Any:
        """The pipeline's requests that need the transport (asks, except Ack)."""
        transport = self.transport
        if isinstance(message, Ack):
            if transport is not None:
                transport.ack(list(message.message_ids))
            return None
        if transport is None or self.session.state is not sm.State.CONNECTED:
            raise TransportError(f"not connected ({self.session.state.value})")
        if isinstance(message, SendText):
            return transport.send_text(message.to, message.text, message.message_id)
        if isinstance(message, SendMedia):
            return transport.send_media(message.to, message.kind, message.data, message.mime_type, message.caption,
                                        message.filename, message.message_id)
        if isinstance(message, WasReceived):
            return transport.was_received(message.message_id)
        return transport.download_media(message.media_ref)

    def _on_transport_event(self, event: tev.Event) -> None:
        """Side records the state machine does not keep: the QR to show, the paired number."""
        pool, owner = self.deps.pool, self.deps.owner
        if isinstance(event, tev.QrCode) and event.codes:
            bots_db.write_fields(pool, self.tenant_id, self.bot_id, owner, qr_code=event.codes[0],
                                 qr_updated_at=datetime.datetime.now(datetime.UTC))
        elif isinstance(event, tev.Paired):
            bots_db.write_fields(pool, self.tenant_id, self.bot_id, owner, jid=event.jid, paired=True, qr_code=None)
        elif isinstance(event, tev.Connected):
            fields: dict[str, Any] = {"qr_code": None, "paired": True}
            if event.jid:
                fields["jid"] = event.jid
            bots_db.write_fields(pool, self.tenant_id, self.bot_id, owner, **fields)
        elif isinstance(event, tev.Disconnected) and event.kind is tev.DisconnectKind.LOGGED_OUT:
            bots_db.write_fields(pool, self.tenant_id, self.bot_id, owner, paired=False, qr_code=None)

    def _pair(self, seq: int, phone: str) -> None:
        self._pair_done = seq
        code = error = None
        if self.transport is None or self.session.state not in (sm.State.STARTING, sm.State.PAIRING):
            error = f"bot is {self.session.state.value}; start it and wait for pairing before asking for a code"
        else:
            try:
                code = self.transport.request_pair_code(phone)
            except Exception as exc:  # noqa: BLE001 - reported to the user through the row
                error = str(exc) or type(exc).__name__
                sentry.capture(exc, where="pair_code")
        bots_db.write_fields(self.deps.pool, self.tenant_id, self.bot_id, self.deps.owner,
                             pair_code=code, pair_error=error, pair_done=seq)
        if code is not None:
            self._apply(tev.PairCode(code))

    def _schedule_timer(self, at: float, event: sm.RetryDue | sm.BanExpired) -> None:
        if self._timer is not None:
            self._timer.kill(block=False)
        delay = max(0.0, at - self.deps.clock())
        self._timer = gevent.spawn_later(delay, _tell_quietly, self.actor_ref, _Timer(event))

    def _count(self, key: str) -> None:
        self.deps.counters[key] = self.deps.counters.get(key, 0) + 1


def _tell_quietly(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the session ended; the message has no one to matter to
        pass

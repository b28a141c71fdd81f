"""One bot's work as an actor: store what customers send, answer it, deliver what the bot sends.

Started and owned by the bot's session actor (which keeps the transport); the two talk by messages.

- **Inbound.** Messages are stored in arrival order, one statement each (contact upsert + message
  insert, idempotent by WhatsApp message id), and only then acked to the network. If the database is
  away, they wait in order and are retried with backoff; unacked, the network would redeliver them
  anyway, so neither a database outage nor a crash loses one, and a replay is stored once.
- **Answers.** Rules first (first match wins, answered at once). Otherwise, if the bot has AI on, the
  conversation is debounced for AI_DEBOUNCE so several messages get one answer; the AI call runs in
  its own greenlet so one slow provider call never holds up storing or delivering. Without debounce
  the store reads the conversation for the AI in the same statement (used only if nothing answered
  the customer since that statement started). An answer claims its inbound messages and writes the
  outbox row in one transaction, in the background (the actor goes on meanwhile; the customer gets no
  new AI call until it is done): a message is answered once.
  While the provider is down (breaker open, errors) the bot's fallback reply is sent, if it has one.
  Paused conversations (human takeover) are stored and never answered.
- **The owner on the phone.** A message the owner wrote to a customer from the paired phone
  (``from_me``) waits in the same queue as the customers' messages and is stored, alone, as an
  outgoing message of that conversation (acked and retried as they are). If it is new (not the echo
  of a message the platform sent), the conversation is held for BOT_PHONE_TAKEOVER seconds: the
  customer's waiting messages are marked ignored (the owner answered them), and messages stored
  during the hold are ignored too.
- **Outbox.** Due rows are sent in order while the session is connected, at most BOT_SEND_RATE per
  minute after a burst. Each attempt is recorded before the send; the message id was fixed when the
  row was written, so after a crash mid-send the network is asked whether it already has it before
  resending. Failures retry with capped exponential backoff; after OUTBOX_MAX_ATTEMPTS, or a
  permanent refusal, the row becomes a dead letter (visible and retryable through the API).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import random
import time
from typing import Any, Callable

import gevent

from actors.base import Actor
from core import context, sentry
import media
from db import conversations as conv
from db import media as media_db
from db.pipeline_store import PipelineStore
from sansio import rules as rules_mod
from sansio.prompt import build_messages
from sansio.retry_rules import is_transient
from sansio.token_bucket import TokenBucket
from transports import events as tev
from transports.base import TransportError

log = logging.getLogger(__name__)

MAX_WAITING_INBOUND = 10_000
STORE_BATCH = 100
DELIVERY_BATCH = 50


@dataclasses.dataclass
class PipelineDeps:
    settings: Any
    pool: Any
    publish: Callable[[str, str | None, str, dict], Any]
    ai: Any = None  # core.ai.AiClient, shared per process (its breakers are per provider)
    media: Any = None  # media store; None: media is not downloaded
    metrics: Any = None  # PipelineMetrics
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    store: Any = None  # db.pipeline_store.PipelineStore, shared per process so calls batch together

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = PipelineStore(self.pool)


# -- messages (from the session) ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inbound:
    event: tev.MessageReceived


@dataclasses.dataclass(frozen=True)
class ReceiptIn:
    event: tev.Receipt


@dataclasses.dataclass(frozen=True)
class LinkUp:
    up: bool


class Wake:
    """Something may be due: a new outbox row, changed rules, a resumed conversation."""


# -- messages (to the session): its transport does the network part -------------------------------


@dataclasses.dataclass(frozen=True)
class SendText:
    to: str
    text: str
    message_id: str


@dataclasses.dataclass(frozen=True)
class SendMedia:
    to: str
    kind: str
    data: bytes
    mime_type: str
    caption: str
    filename: str
    message_id: str


@dataclasses.dataclass(frozen=True)
class WasReceived:
    message_id: str


@dataclasses.dataclass(frozen=True)
class Ack:
    message_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DownloadMedia:
    media_ref: str


# -- internal ------------------------------------------------------------------------------------


class _StoreRetry:
    pass


@dataclasses.dataclass(frozen=True)
class _StoreDone:
    """The store of the first ``count`` waiting messages finished: ``stored`` or ``error``."""

    count: int
    stored: list | None
    error: Exception | None
    epoch: int = 0  # the pipeline's change count when the store started (see ``_changed_at``)
    phone: bool = False  # the store of one message the owner wrote from the phone (``stored``: [PhoneStored])


@dataclasses.dataclass(frozen=True)
class _Debounced:
    contact_id: str
    correlation_id: str | None  # the latest message's: the answer continues its line of work


@dataclasses.dataclass(frozen=True)
class _AiDone:
    contact_id: str
    message_ids: tuple[str, ...]
    text: str | None
    error: str | None
    source: str  # "ai"; "none": nothing was left to answer; "retry": the conversation could not be read


class BotPipeline(Actor):
    def __init__(self, bot_id: str, tenant_id: str, session_ref: Any, deps: PipelineDeps) -> None:
        super().__init__()
        self.bot_id = bot_id
        self.tenant_id = tenant_id
        self.session = session_ref
        self.deps = deps
        s = deps.settings
        self.bucket = TokenBucket(s.bot_send_rate / 60.0, s.bot_send_burst, deps.clock())
        self.waiting: collections.deque[tuple[tev.MessageReceived, context.WorkContext]] = collections.deque()
        self._store_delay = 0.0
        self._store_timer: gevent.Greenlet | None = None
        self._storing = False  # the store of the head of ``waiting`` is in flight
        self._store_alone = 0  # after a batch failed on bad data: store that many one by one
        self._phone_waiting = 0  # of ``waiting``, messages the owner wrote from the phone
        self._debounce: dict[str, gevent.Greenlet] = {}
        self._thinking: dict[str, gevent.Greenlet] = {}
        self._again: set[str] = set()
        # Prompt inputs read by the store are current only if nothing answered or ignored the
        # contact's messages after that statement started: every such change gets the next epoch.
        self._epoch = 0
        self._changed_at: dict[str, int] = {}
        self._store_epoch = 0  # the epoch when the store in flight (or the last one) started
        self._deliver_timer: gevent.Greenlet | None = None
        self._answering: dict[str, int] = {}  # contact -> answers written in the background, not yet done
        self._answers_now = 0  # of those, answers written already claimed for sending at once
        self._deliver_deferred = False  # a delivery waits for those to be done
        self._deliver_due_at = 0.0
        self._delivering = False
        self._maybe_due = True  # outbox rows may be due that no claim has seen yet (after start: maybe)
        self._recording: set[str] = set()  # outbox ids sent, their 'sent' record not yet committed
        self.connected = False
        self._config: tuple[list[rules_mod.Rule], rules_mod.AiConfig] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        self.actor_ref.tell(_Recover())

    def on_stop(self) -> None:
        self._teardown()

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        timers = [self._store_timer, self._deliver_timer, *self._debounce.values(),
                  *self._thinking.values()]
        for greenlet in timers:
            if greenlet is not None:
                greenlet.kill(block=False)
        self._debounce.clear()
        self._thinking.clear()

    # -- messages ----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        with context.bound(tenant_id=self.tenant_id, bot_id=self.bot_id):
            return self._receive(message)

    def _receive(self, message: Any) -> Any:
        if isinstance(message, Inbound):
            if len(self.waiting) >= MAX_WAITING_INBOUND:
                # Not acked: the network delivers it again after the next login.
                log.warning("inbound backlog full; message left to the network", extra={"wa_id": message.event.message_id})
                return None
            self.waiting.append((message.event, context.current()))
            if message.event.from_me:
                self._phone_waiting += 1
            if self._store_timer is None:
                self._store_next()
            return None
        if isinstance(message, _StoreRetry):
            self._store_timer = None
            return self._store_next()
        if isinstance(message, _StoreDone):
            return self._store_done(message)
        if isinstance(message, ReceiptIn):
            return self._receipt(message.event)
        if isinstance(message, LinkUp):
            self.connected = message.up
            self._maybe_due = True
            if message.up:
                self._deliver()
            return None
        if isinstance(message, Wake):
            self._maybe_due = True  # an API message, a retried dead letter, a resumed conversation
            self._config = None  # rules or AI settings may have changed
            return self._deliver()
        if isinstance(message, _Recover):
            return self._recover()
        if isinstance(message, _Debounced):
            self._debounce.pop(message.contact_id, None)
            if message.contact_id in self._answering:  # a rule's answer is being written: after it
                self._again.add(message.contact_id)
                return None
            with context.bound(correlation_id=message.correlation_id):
                return self._think(message.contact_id)
        if isinstance(message, _AiDone):
            return self._ai_done(message)
        if isinstance(message, _Answered):
            return self._answered(message)
        if isinstance(message, _DeliverMore):
            return self._deliver()
        if isinstance(message, _Recorded):
            self._recording.difference_update(message.outbox_ids)
            if not message.ok:  # still 'sending': a claim asks the network about them
                self._maybe_due = True
                self._deliver_later(1.0, only_if_sooner=True)
            return None
        if isinstance(message, _DeliverDue):
            self._deliver_timer = None
            self._maybe_due = True
            return self._deliver()
        return super().on_receive(message)

    # -- inbound -----------------------------------------------------------------------------------

    def _store_next(self) -> None:
        """Store the head of ``waiting`` in the background: the actor goes on answering and delivering
        meanwhile, and what arrives in the meantime goes in the next batch. One store in flight per
        bot, so messages are stored (and acked, and answered) in arrival order."""
        if self._storing or not self.waiting:
            return
        batch = list(itertools.islice(self.waiting, 1 if self._store_alone else STORE_BATCH))
        if self._phone_waiting:
            # The owner's messages are stored one at a time by a statement of their own; the batch
            # ends before the first, so everything stays in arrival order.
            if batch[0][0].from_me:
                return self._store_from_phone(*batch[0])
            batch = list(itertools.takewhile(lambda item: not item[0].from_me, batch))
        if len(self._changed_at) > 1024:  # only changes since the last store started still matter
            self._changed_at = {c: e for c, e in self._changed_at.items() if e > self._store_epoch}
        self._store_epoch = self._epoch
        self._storing = True
        count, epoch, ref = len(batch), self._epoch, self.actor_ref

        def done(stored: list | None, error: Exception | None) -> None:  # from the statement's greenlet
            _tell_quietly(ref, _StoreDone(count, stored, error, epoch))

        try:
            self.deps.store.store_later(self.tenant_id, self.bot_id,
                                        [(event, ctx.correlation_id) for event, ctx in batch],
                                        self._prompt_wants(batch), done)
        except Exception as exc:  # noqa: BLE001 - not queued (too much waiting, stopping): retried later
            done(None, RuntimeError(f"inbound not queued for storing: {exc!r}"))

    def _store_from_phone(self, event: tev.MessageReceived, ctx: context.WorkContext) -> None:
        """Store the owner's message at the head of ``waiting`` in a greenlet of its own (it is rare,
        so it needs no batching); the outcome comes back as ``_StoreDone`` like any store's, so it is
        acked, retried and dropped exactly as an inbound message is."""
        self._storing = True
        ref, pool, tenant, bot = self.actor_ref, self.deps.pool, self.tenant_id, self.bot_id
        hold = self.deps.settings.bot_phone_takeover
        work_ctx = ctx._replace(tenant_id=tenant, bot_id=bot)

        def store() -> None:
            context.set_current(work_ctx)
            try:
                stored = conv.store_from_phone(pool, tenant, bot, event, ctx.correlation_id, hold)
            except Exception as exc:  # noqa: BLE001 - classified by _store_done
                _tell_quietly(ref, _StoreDone(1, None, exc, phone=True))
                return
            _tell_quietly(ref, _StoreDone(1, [stored], None, phone=True))

        gevent.spawn(store)

    def _prompt_wants(self, batch: list[tuple[tev.MessageReceived, context.WorkContext]]) -> list[int] | None:
        """Per message, the history to read with it when it will go straight to the AI (no rule
        matches, AI on, no debounce), else -1: the store then reads the prompt inputs in the same
        statement and the AI call needs no read of its own. None: nothing to read (or the reply
        settings are not loaded, and the store must not wait for them)."""
        if self._config is None or self.deps.settings.ai_debounce > 0 or self.deps.ai is None or not self.deps.ai.enabled:
            return None
        rules, ai = self._config
        if not ai.enabled:
            return None
        return [ai.history if event.kind in conv.ANSWERABLE_KINDS
                and rules_mod.first_match(rules, event.text or event.caption or "") is None else -1
                for event, _ in batch]

    def _store_done(self, done: "_StoreDone") -> None:
        self._storing = False
        batch = list(itertools.islice(self.waiting, done.count))
        exc = done.error
        if exc is not None:
            if is_transient(exc) or isinstance(exc, RuntimeError):
                self._store_delay = min(max(self._store_delay * 2, 0.2), 3.0)
                log.warning("inbound not stored yet; will retry",
                            extra={"error": repr(exc), "waiting": len(self.waiting), "retry_in": self._store_delay})
                self._store_timer = gevent.spawn_later(self._store_delay, _tell_quietly, self.actor_ref, _StoreRetry())
                return
            if len(batch) > 1:
                self._store_alone = len(batch)
            else:
                # Not a fault that time fixes (bad data): report it and leave the message unacked
                # with the network rather than loop on it.
                event, ctx = batch[0]
                with context.bound(correlation_id=ctx.correlation_id):
                    log.error("inbound message could not be stored", extra={"error": repr(exc), "wa_id": event.message_id})
                    sentry.capture(exc, where="store_inbound")
                self.waiting.popleft()
                self._phone_waiting -= done.phone
                self._store_alone = max(0, self._store_alone - 1)
            self._store_next()
            return
        self._store_alone = max(0, self._store_alone - len(batch))
        for _ in batch:
            self.waiting.popleft()
        self._phone_waiting -= done.phone
        self._store_delay = 0.0
        self._store_next()  # the next batch goes while this one is answered
        _tell_quietly(self.session, Ack(tuple(event.message_id for event, _ in batch)))
        if done.phone:
            event, ctx = batch[0]
            with context.bound(correlation_id=ctx.correlation_id):
                return self._from_phone(done.stored[0], event)
        # Rules first for the whole batch, then one AI call per customer: a rule answer to a later
        # message of the same customer is then already out of the prompt.
        thinks: dict[str, tuple[Any, context.WorkContext]] = {}
        for (event, ctx), one in zip(batch, done.stored):
            if one.message_id is not None:  # None: a replay, stored and handled before
                with context.bound(correlation_id=ctx.correlation_id):
                    if self._stored(one, event, ctx):
                        earlier = thinks.get(one.contact_id)
                        # The latest message's correlation id: the answer continues its line of work.
                        thinks[one.contact_id] = (one.prompt or (earlier[0] if earlier else None), ctx)
        for contact_id, (prompt, ctx) in thinks.items():
            if prompt is not None and self._changed_at.get(contact_id, -1) > done.epoch:
                prompt = None  # answered or ignored since the store started: read it again
            with context.bound(correlation_id=ctx.correlation_id):
                self._schedule_think(contact_id, prompt)

    def _stored(self, stored: conv.Stored, event: tev.MessageReceived, ctx: context.WorkContext) -> bool:
        """Publish and consider a newly stored message; True when the AI is to answer it."""
        self._count("in")
        log.info("message stored", extra={"message_id": stored.message_id, "wa_message_id": event.message_id})
        self.deps.publish(self.tenant_id, self.bot_id, "message.in", {
            "message_id": stored.message_id, "contact_id": stored.contact_id, "from": event.sender,
            "kind": event.kind, "text": event.text or event.caption, "wa_message_id": event.message_id,
            "correlation_id": ctx.correlation_id,
        })
        if event.media_ref and self.deps.media is not None:
            gevent.spawn(self._fetch_media, stored.message_id, event, ctx)
        return self._consider(stored, event)

    def _consider(self, stored: conv.Stored, event: tev.MessageReceived) -> bool:
        if event.kind not in conv.ANSWERABLE_KINDS:
            return False  # stored as ignored
        if stored.paused:
            self._ignore(stored.contact_id, [stored.message_id], "conversation paused")
            return False
        if stored.held:
            self._ignore(stored.contact_id, [stored.message_id], conv.OWNER_ON_PHONE)
            return False
        rules, ai = self._reply_config()
        rule = rules_mod.first_match(rules, event.text or event.caption or "")
        if rule is not None:
            self._answer(stored.contact_id, [stored.message_id], rule.reply, "rule")
            return False
        if ai.enabled and self.deps.ai is not None and self.deps.ai.enabled:
            return True
        self._ignore(stored.contact_id, [stored.message_id], "no rule matched and AI is off")
        return False

    def _from_phone(self, stored: conv.PhoneStored, event: tev.MessageReceived) -> None:
        """The owner's message is committed: announce it and, if it holds the conversation, stop
        whatever answer was coming for that customer."""
        if stored.message_id is None:
            # The echo of a message the platform sent (same WhatsApp id), or a redelivery: stored
            # before, it changes nothing.
            log.info("message from the phone already stored", extra={"wa_message_id": event.message_id})
            return
        log.info("message from the phone stored", extra={
            "message_id": stored.message_id, "wa_message_id": event.message_id, "ignored": len(stored.ignored),
            "hold_until": _iso(stored.phone_hold_until)})
        contact_id = stored.contact_id
        if self.deps.settings.bot_phone_takeover > 0:
            # The waiting messages are ignored now: a prompt read before does not stand, a debounce
            # for them has nothing to answer, and a call in flight finds nothing to claim.
            self._changed(contact_id)
            timer = self._debounce.pop(contact_id, None)
            if timer is not None:
                timer.kill(block=False)
            self._again.discard(contact_id)
        self.deps.publish(self.tenant_id, self.bot_id, "message.out", {
            "message_id": stored.message_id, "contact_id": contact_id, "to": event.chat,
            "text": event.text or event.caption, "wa_message_id": event.message_id, "source": "phone",
        })
        self.deps.publish(self.tenant_id, self.bot_id, "conversation.state", {
            "contact_id": contact_id, "jid": stored.jid, "paused": stored.paused, "paused_by": stored.paused_by,
            "paused_at": _iso(stored.paused_at), "phone_hold_until": _iso(stored.phone_hold_until),
        })

    def _ignore(self, contact_id: str, message_ids: list[str], reason: str) -> None:
        self._changed(contact_id)
        conv.ignore(self.deps.pool, self.tenant_id, message_ids, reason)

    def _changed(self, contact_id: str) -> None:
        """The contact's unanswered messages or history change now (see ``_store_done``)."""
        self._epoch += 1
        self._changed_at[contact_id] = self._epoch

    def _reply_config(self) -> tuple[list[rules_mod.Rule], rules_mod.AiConfig]:
        if self._config is None:
            row = conv.bot_reply_config(self.deps.pool, self.tenant_id, self.bot_id)
            raw_rules, raw_ai = row if row is not None else ([], {})
            try:
                rules = rules_mod.validate_rules(raw_rules)
            except rules_mod.RuleError as exc:
                log.error("stored rules are invalid; answering without them", extra={"error": str(exc)})
                rules = []
            try:
                ai = rules_mod.validate_ai_config(raw_ai)
            except rules_mod.RuleError as exc:
                log.error("stored AI settings are invalid; AI off", extra={"error": str(exc)})
                ai = rules_mod.AiConfig()
            self._config = (rules, ai)
        return self._config

    def _fetch_media(self, message_id: str, event: tev.MessageReceived, ctx: context.WorkContext) -> None:
        context.set_current(ctx._replace(tenant_id=self.tenant_id, bot_id=self.bot_id))
        delay = 0.5
        for attempt in range(5):
            try:
                data = self.session.ask(DownloadMedia(event.media_ref), timeout=60)
                media_id, stored = media.save(self.deps.pool, self.deps.media, self.tenant_id, self.bot_id, data,
                                              event.mime_type or "application/octet-stream")
                conv.set_media(self.deps.pool, self.tenant_id, message_id, media_id, stored.key)
                return
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                log.warning("media download failed", extra={"error": repr(exc), "attempt": attempt + 1})
                gevent.sleep(delay)
                delay = min(delay * 2, 10.0)
        sentry.capture(RuntimeError(f"media of message {message_id} not stored"), where="media")

    # -- answering ---------------------------------------------------------------------------------

    def _schedule_think(self, contact_id: str, prompt: Any = None) -> None:
        """``prompt``: the contact's prompt inputs if already read and current (used only when the
        call starts now)."""
        if contact_id in self._thinking or contact_id in self._answering:
            self._again.add(contact_id)  # answered again once the call or answer in flight is done
            return
        timer = self._debounce.pop(contact_id, None)
        if timer is not None:
            timer.kill(block=False)
        if self.deps.settings.ai_debounce <= 0:
            self._think(contact_id, prompt)  # nothing to wait for: no timer, no extra message
            return
        self._debounce[contact_id] = gevent.spawn_later(
            self.deps.settings.ai_debounce, _tell_quietly, self.actor_ref,
            _Debounced(contact_id, context.correlation_id()),
        )

    def _think(self, contact_id: str, prompt: Any = None) -> None:
        # Reading the conversation (unless the store already did) and asking the AI both happen in
        # the call's own greenlet, so the actor goes on storing and delivering meanwhile; one call
        # per customer at a time.
        _, ai = self._reply_config()
        self._thinking[contact_id] = gevent.spawn(self._call_ai, contact_id, ai, context.current(), prompt)

    def _call_ai(self, contact_id: str, ai: rules_mod.AiConfig, ctx: context.WorkContext, prompt: Any = None) -> None:
        context.set_current(ctx)
        if prompt is not None:
            pending, history = prompt
        else:
            try:
                pending, history = self.deps.store.prompt_inputs(self.tenant_id, self.bot_id, contact_id, ai.history)
            except Exception as exc:  # noqa: BLE001 - the database's fault: think again later
                log.warning("conversation not read for the AI; will retry", extra={"error": repr(exc)})
                _tell_quietly(self.actor_ref, _AiDone(contact_id, (), None, None, "retry"))
                return
        if not pending:
            _tell_quietly(self.actor_ref, _AiDone(contact_id, (), None, None, "none"))
            return
        ids = tuple(m[0] for m in pending)
        prompt = build_messages(ai, history, [m[2] for m in pending])
        try:
            text = self.deps.ai.reply(prompt, model=ai.model, temperature=ai.temperature)
            result = _AiDone(contact_id, ids, text.strip() or None, None if text.strip() else "empty answer", "ai")
        except Exception as exc:  # noqa: BLE001 - the provider's fault is the customer's fallback
            result = _AiDone(contact_id, ids, None, str(exc) or type(exc).__name__, "ai")
        _tell_quietly(self.actor_ref, result)

    def _ai_done(self, done: _AiDone) -> None:
        self._thinking.pop(done.contact_id, None)
        if done.source == "retry":
            self._again.discard(done.contact_id)
            timer = self._debounce.pop(done.contact_id, None)
            if timer is not None:
                timer.kill(block=False)
            self._debounce[done.contact_id] = gevent.spawn_later(
                max(self.deps.settings.ai_debounce, 1.0), _tell_quietly, self.actor_ref,
                _Debounced(done.contact_id, context.correlation_id()))
            return
        if done.source == "none":
            pass  # answered meanwhile (a rule, or an earlier call took them)
        elif done.text is not None:
            log.info("AI answered", extra={"contact_id": done.contact_id, "messages": len(done.message_ids)})
            self._answer(done.contact_id, list(done.message_ids), done.text, "ai")
        else:
            _, ai = self._reply_config()
            log.warning("AI answer failed", extra={"error": done.error, "fallback": bool(ai.fallback_reply)})
            self.deps.publish(self.tenant_id, self.bot_id, "ai.error", {
                "contact_id": done.contact_id, "error": done.error, "fallback": bool(ai.fallback_reply),
            })
            if ai.fallback_reply:
                self._answer(done.contact_id, list(done.message_ids), ai.fallback_reply, "fallback")
            else:
                self._ignore(done.contact_id, list(done.message_ids), "AI unavailable")
        if done.contact_id in self._again:
            self._again.discard(done.contact_id)
            self._schedule_think(done.contact_id)

    def _answer(self, contact_id: str, message_ids: list[str], text: str, source: str) -> None:
        """Write the answer in the background: the actor goes on storing, answering and delivering
        while the statement runs, and ``_answered`` takes the outcome. Until then the customer gets
        no new AI call (it would see the messages being answered as unanswered)."""
        # With nothing older waiting to go, the answer is written already claimed and sent once
        # committed: no separate claim statement, one update less per message.
        send_now = self._may_send_directly()
        self._changed(contact_id)
        self._answering[contact_id] = self._answering.get(contact_id, 0) + 1
        if send_now:
            self._answers_now += 1
        ref, ctx = self.actor_ref, context.current()

        def done(result: tuple[str, conv.Outgoing | None] | None, error: Exception | None) -> None:
            _tell_quietly(ref, _Answered(contact_id, send_now, result, error, ctx))  # from the statement's greenlet

        try:
            self.deps.store.answer_later(self.tenant_id, self.bot_id, contact_id, message_ids, text, source,
                                         context.correlation_id(), send_now, done)
        except Exception as exc:  # noqa: BLE001 - not even queued: the same as failed
            done(None, exc)

    def _answered(self, answered: "_Answered") -> None:
        contact_id = answered.contact_id
        left = self._answering.get(contact_id, 1) - 1
        if left > 0:
            self._answering[contact_id] = left
        else:
            self._answering.pop(contact_id, None)
        if answered.send_now:
            self._answers_now -= 1
        if answered.error is not None:
            # As when the answer was written in line: the actor fails, and its restart answers what
            # is still unanswered and asks the network about a row that may be 'sending'.
            raise answered.error
        with context.bound(correlation_id=answered.ctx.correlation_id):
            row = answered.result[1] if answered.result is not None else None
            if answered.result is not None and row is None:
                self._deliver()
            elif row is not None and not self._delivering:
                self._delivering = True
                try:
                    self._send_rows([row])
                finally:
                    self._delivering = False
            elif row is not None:  # cannot happen while the actor handles one message at a time
                self.deps.store.release(self.tenant_id, [row])
                self._maybe_due = True
            if self._deliver_deferred and not self._answers_now:
                self._deliver_deferred = False
                self._deliver()
            if contact_id in self._again and contact_id not in self._answering and contact_id not in self._thinking:
                self._again.discard(contact_id)
                self._schedule_think(contact_id)

    def _may_send_directly(self) -> bool:
        if not self.connected or self._delivering or self._maybe_due:
            return False
        return not self.bucket.rate or self.bucket.available(self.deps.clock()) >= 1 + self._answers_now

    def _recover(self) -> None:
        """After a restart: answer what was stored but not answered, deliver what is due. Messages of
        paused or held conversations are ignored at store time, but a crash can come between the store
        and that: they are ignored here, never answered."""
        for contact_id, paused, held in conv.contacts_with_unanswered(self.deps.pool, self.tenant_id, self.bot_id):
            pending = conv.unanswered(self.deps.pool, self.tenant_id, contact_id)
            if paused or held:
                self._ignore(contact_id, [message_id for message_id, _, _ in pending],
                             "conversation paused" if paused else conv.OWNER_ON_PHONE)
                continue
            rules, ai = self._reply_config()
            for message_id, kind, text in pending:
                rule = rules_mod.first_match(rules, text)
                if rule is not None:
                    self._answer(contact_id, [message_id], rule.reply, "rule")
            if ai.enabled and self.deps.ai is not None and self.deps.ai.enabled:
                self._schedule_think(contact_id)
        # Retries left waiting by the previous incarnation.
        due_in = conv.next_due_in(self.deps.pool, self.tenant_id, self.bot_id)
        if due_in is not None:
            self._deliver_later(due_in)
        self._deliver()

    # -- outbox ------------------------------------------------------------------------------------

    def _deliver(self) -> None:
        if not self.connected or self._delivering:
            return
        if self._answers_now:
            # Rows written for sending at once may be committed already: a claim now could take
            # them too and send them twice. Delivery goes on once they are sent; until that claim,
            # rows may be due that it has not seen, so no later answer may overtake them.
            self._deliver_deferred = True
            self._maybe_due = True
            return
        self._delivering = True
        try:
            self._deliver_batch()
        finally:
            self._delivering = False

    def _deliver_batch(self) -> None:
        limit = DELIVERY_BATCH
        if self.bucket.rate:
            wait = self.bucket.wait_time(self.deps.clock())
            if wait > 0:
                self._maybe_due = True
                self._deliver_later(wait)
                return
            limit = max(1, min(limit, self.bucket.available(self.deps.clock())))
        # Rows sent a moment ago are still 'sending' until their record commits: not due again.
        rows = self.deps.store.claim_due(self.tenant_id, self.bot_id, limit, self._recording)
        self._maybe_due = False
        self._send_rows(rows)
        if len(rows) == limit:
            self._maybe_due = True
            _tell_quietly(self.actor_ref, _DeliverMore())
        # Rows due later (retries) are timed when they fail, and new rows wake the pipeline, so
        # there is nothing to look up after a batch.

    def _send_rows(self, rows: list[conv.Outgoing]) -> None:
        """Send claimed rows in order; those not tried (the link went down) go back unclaimed, so no
        attempt is counted against them."""
        sent: list[tuple[conv.Outgoing, str | None]] = []
        try:
            for index, row in enumerate(rows):
                if not self.connected:
                    self._release(rows[index:])
                    return
                with context.bound(correlation_id=row.correlation_id or context.correlation_id()):
                    if not self._send(row, sent):
                        self._release(rows[index + 1:])
                        return
        finally:
            if sent:
                # The network has them: record that in one statement, in the background, so the next
                # message need not wait for it. Until it commits (or if it fails, or the process dies)
                # the rows stay 'sending', and the network is asked about them before any resend.
                self._recording.update(row.id for row, _ in sent)
                self._mark_sent([(row.id, network_id) for row, network_id in sent])
                for row, _ in sent:
                    with context.bound(correlation_id=row.correlation_id or context.correlation_id()):
                        self._sent(row)

    def _mark_sent(self, sent: list[tuple[str, str | None]]) -> None:
        ids = tuple(outbox_id for outbox_id, _ in sent)
        ctx, ref = context.current(), self.actor_ref

        def recorded(error: Exception | None) -> None:  # runs in the statement's greenlet
            if error is not None:  # the rows stay 'sending'; a later claim asks the network about them
                with context.bound(**ctx._asdict()):
                    log.warning("sent messages not recorded yet; will check with the network",
                                extra={"error": repr(error), "messages": len(sent)})
            _tell_quietly(ref, _Recorded(ids, error is None))

        try:
            self.deps.store.mark_sent_later(self.tenant_id, sent, recorded)
        except Exception as exc:  # noqa: BLE001 - not even queued (overflow, stopped): same as failed
            recorded(exc)

    def _release(self, rows: list[conv.Outgoing]) -> None:
        self._maybe_due = True
        self.deps.store.release(self.tenant_id, rows)

    def _send(self, row: conv.Outgoing, sent: list[tuple[conv.Outgoing, str | None]]) -> bool:
        """One attempt (the claim recorded it); False when delivery should pause (link down)."""
        pool, tenant = self.deps.pool, self.tenant_id
        if row.state == "sending":
            # The last attempt's outcome is unknown (a crash or timeout mid-send): ask before resending.
            try:
                if self.session.ask(WasReceived(row.wa_message_id), timeout=15) is True:
                    sent.append((row, None))
                    return True
            except Exception:  # noqa: BLE001 - cannot tell; the resend carries the same id
                pass
        self.bucket.take(self.deps.clock())
        try:
            network_id = self.session.ask(self._request_for(row), timeout=60)
        except Exception as exc:  # noqa: BLE001 - classified below
            attempts = row.attempts + 1
            permanent = bool(getattr(exc, "permanent", False))
            if permanent or attempts >= self.deps.settings.outbox_max_attempts:
                conv.mark_failed(pool, tenant, row.id, str(exc) or type(exc).__name__, None)
                self._count("dead")
                self.deps.publish(tenant, self.bot_id, "outbox.dead", {
                    "outbox_id": row.id, "to": row.to_jid, "error": str(exc), "attempts": attempts})
                log.error("outgoing message is a dead letter", extra={"outbox_id": row.id, "error": repr(exc)})
            else:
                base = self.deps.settings.outbox_retry_base
                delay = min(300.0, base * 2 ** (attempts - 1)) * (0.5 + self.deps.rng.random() / 2)
                conv.mark_failed(pool, tenant, row.id, str(exc) or type(exc).__name__, delay)
                self._deliver_later(delay, only_if_sooner=True)
                log.warning("send failed; will retry", extra={"outbox_id": row.id, "retry_in": round(delay, 2),
                                                               "error": repr(exc)})
            return self.connected
        sent.append((row, network_id if isinstance(network_id, str) else None))
        return True

    def _request_for(self, row: conv.Outgoing) -> SendText | SendMedia:
        if row.media_id is None:
            return SendText(row.to_jid, row.body, row.wa_message_id)
        if self.deps.media is None:
            raise TransportError("media storage is not configured in this process", permanent=True)
        record = media_db.get(self.deps.pool, self.tenant_id, row.media_id)
        if record is None:
            raise TransportError("the media to send no longer exists", permanent=True)
        data = self.deps.media.get(record["backend"], record["object_key"])
        return SendMedia(row.to_jid, row.kind if row.kind in ("image", "document") else "document", data,
                         record["mime_type"], row.body, record["filename"], row.wa_message_id)

    def _sent(self, row: conv.Outgoing) -> None:
        self._count("out")
        log.info("message sent", extra={"outbox_id": row.id, "wa_message_id": row.wa_message_id})
        self.deps.publish(self.tenant_id, self.bot_id, "message.out", {
            "outbox_id": row.id, "to": row.to_jid, "text": row.body, "wa_message_id": row.wa_message_id,
            "correlation_id": row.correlation_id,
        })

    def _deliver_later(self, delay: float, only_if_sooner: bool = False) -> None:
        due_at = self.deps.clock() + delay
        if self._deliver_timer is not None:
            if only_if_sooner and self._deliver_due_at <= due_at:
                return
            self._deliver_timer.kill(block=False)
        self._deliver_due_at = due_at
        self._deliver_timer = gevent.spawn_later(delay, _tell_quietly, self.actor_ref, _DeliverDue())

    # -- receipts ----------------------------------------------------------------------------------

    def _receipt(self, event: tev.Receipt) -> None:
        changed = conv.record_receipt(self.deps.pool, self.tenant_id, self.bot_id, list(event.message_ids), event.status)
        for message_id, outbox_id, correlation_id in changed:
            # The receipt belongs to the work that caused the message: log and publish under its id.
            with context.bound(correlation_id=correlation_id or context.correlation_id()):
                log.info("message status", extra={"message_id": message_id, "status": event.status})
                self.deps.publish(self.tenant_id, self.bot_id, "message.status", {
                    "message_id": message_id, "outbox_id": outbox_id, "status": event.status,
                    "correlation_id": correlation_id})

    def _count(self, what: str) -> None:
        if self.deps.metrics is not None:
            self.deps.metrics.count(what, self.bot_id)


class _Recover:
    pass


@dataclasses.dataclass(frozen=True)
class _Answered:
    """An answer written in the background is committed (``result``: its item of ``answer_many``)
    or failed (``error``)."""

    contact_id: str
    send_now: bool
    result: Any
    error: Exception | None
    ctx: context.WorkContext


class _DeliverDue:
    pass


@dataclasses.dataclass(frozen=True)
class _Recorded:
    """The background record of sent rows finished; if not ``ok`` they are still 'sending'."""

    outbox_ids: tuple[str, ...]
    ok: bool


class _DeliverMore:
    """The last claim was full: there may be more due now."""


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _tell_quietly(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - stopped
        pass

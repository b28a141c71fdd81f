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

How it is built: every decision is ``sansio.pipeline_machine.transition`` (pure, on fake time in its
tests); this actor only feeds it what happens (messages, timer firings, the outcomes of statements,
sends and AI calls) and executes the effects it returns, in order. An effect whose outcome the
machine needs at once (a claim, a send, a read) is run and its outcome fed straight back before the
next effect, so the actor still does one thing at a time exactly as before. Timers come from
``deps.timers`` (``actors.timers``: real ones in production, ``ManualTimers`` in tests). Every
greenlet it starts (AI calls, media downloads, the owner's messages being stored) is tracked and
ended when the actor stops or fails, and gevent's ``GreenletExit``/``Timeout`` inside one are
contained: it reports an outcome like any failure, or ends quietly when it was being stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool

import media
from actors.base import Actor
from actors.timers import GeventTimers, TimerHandle
from core import context, sentry
from db import conversations as conv
from db import media as media_db
from db.pipeline_store import PipelineStore
from sansio import pipeline_machine as pm
from sansio.prompt import build_messages
from transports import events as tev
from transports.base import TransportError

log = logging.getLogger(__name__)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# What a greenlet of the pipeline treats as the failure of its work (gevent's Timeout is a
# BaseException); GreenletExit is the pipeline stopping it, and ends it quietly.
_FAILURES = (Exception, gevent.Timeout)


@dataclasses.dataclass
class PipelineDeps:
    settings: Any
    pool: Any
    publish: Callable[[str, str | None, str, dict], Any]
    ai: Any = None  # core.ai.AiClient, shared per process (its breakers are per provider)
    media: Any = None  # media store; None: media is not downloaded
    metrics: Any = None  # PipelineMetrics
    clock: Callable[[], float] = time.monotonic  # the clock of ``timers``
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    store: Any = None  # db.pipeline_store.PipelineStore, shared per process so calls batch together
    timers: Any = dataclasses.field(default_factory=GeventTimers)  # actors.timers.Timers

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


class BotPipeline(Actor):
    def __init__(self, bot_id: str, tenant_id: str, session_ref: Any, deps: PipelineDeps) -> None:
        super().__init__()
        self.bot_id = bot_id
        self.tenant_id = tenant_id
        self.session = session_ref
        self.deps = deps
        self.settings = pm.Settings.from_settings(
            deps.settings, fetch_media=deps.media is not None, answerable_kinds=conv.ANSWERABLE_KINDS,
            held_reason=conv.OWNER_ON_PHONE)
        self.state = pm.PipelineState.initial(self.settings, deps.clock())
        self._timers: dict[Any, TimerHandle] = {}
        # Every greenlet this pipeline starts (AI calls, media downloads, the owner's messages being
        # stored), until it ends: the group forgets each one as it finishes, and kills the rest at teardown.
        self._tasks = gevent.pool.Group()
        self._run: dict[type, Callable[[Any], Any]] = {
            pm.StoreBatch: self._store_batch, pm.StorePhone: self._store_phone, pm.Ack: self._ack,
            pm.FetchMedia: self._fetch_media, pm.LoadConfig: self._load_config, pm.Recover: self._recover,
            pm.StartAi: self._start_ai, pm.WriteAnswer: self._write_answer, pm.Ignore: self._ignore,
            pm.Claim: self._claim, pm.CheckReceived: self._check_received, pm.Send: self._send,
            pm.Release: self._release, pm.MarkSent: self._mark_sent, pm.MarkFailed: self._mark_failed,
            pm.RecordReceipt: self._record_receipt, pm.Publish: self._publish, pm.Log: self._log,
            pm.Capture: self._capture, pm.ScheduleTimer: self._schedule_timer,
            pm.CancelTimer: self._cancel_timer, pm.Later: self._later, pm.Fail: self._fail,
        }

    @property
    def connected(self) -> bool:
        return self.state.connected

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        self.actor_ref.tell(pm.Start())

    def on_stop(self) -> None:
        self._teardown()

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        timers, self._timers = self._timers, {}
        for handle in timers.values():
            handle.cancel()
        self._tasks.kill(block=False)

    # -- messages ----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        # Logs must name the bot: most messages already carry its ids (the session's, the AI call's);
        # those from a statement's greenlet get them here.
        ctx = context.current()
        if ctx.bot_id == self.bot_id and ctx.tenant_id == self.tenant_id:
            return self._receive(message)
        token = context.set_current(context.WorkContext(ctx.correlation_id, self.tenant_id, self.bot_id))
        try:
            return self._receive(message)
        finally:
            context.reset(token)

    def _bind(self, correlation_id: str | None) -> Any:
        """Work under ``correlation_id`` (if given) until ``context.reset`` of the returned token."""
        return context.set_current(context.WorkContext(correlation_id or context.correlation_id(), self.tenant_id,
                                                       self.bot_id))

    def _receive(self, message: Any) -> Any:
        kind = type(message)
        if kind in pm.INPUTS:  # outcomes, timers, and what the pipeline mails itself
            return self._apply(message)
        if kind is Inbound:
            return self._apply(pm.Inbound(message.event, context.correlation_id()))
        if kind is ReceiptIn:
            return self._apply(pm.Receipt(tuple(message.event.message_ids), message.event.status))
        if kind is LinkUp:
            return self._apply(pm.LinkUp(message.up))
        if kind is Wake:
            return self._apply(pm.Wake())
        return super().on_receive(message)

    def _apply(self, event: Any) -> None:
        """Feed ``event`` to the machine and execute its effects in order; an effect's outcome that
        the machine takes at once is fed back before the next effect runs (depth first: a claim's rows
        are sent one after the other, at most DELIVERY_BATCH levels deep)."""
        self.state, effects = pm.transition(self.state, event, self.deps.clock(), self.deps.rng)
        run = self._run
        for effect in effects:
            outcome = run[type(effect)](effect)
            if outcome is not None:
                self._apply(outcome)

    def _tracked(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` in a greenlet of its own, ended at teardown."""
        self._tasks.spawn(fn, *args)

    # -- inbound -----------------------------------------------------------------------------------

    def _store_batch(self, effect: pm.StoreBatch) -> None:
        ref = self.actor_ref

        def done(stored: list | None, error: Exception | None) -> None:  # from the statement's greenlet
            _tell_quietly(ref, pm.StoreDone(stored, error))

        try:
            self.deps.store.store_later(self.tenant_id, self.bot_id, effect.items, effect.wants, done)
        except Exception as exc:  # noqa: BLE001 - not queued (too much waiting, stopping): retried later
            done(None, RuntimeError(f"inbound not queued for storing: {exc!r}"))

    def _store_phone(self, effect: pm.StorePhone) -> None:
        """The owner's message is rare, so it needs no batching: a greenlet of its own stores it, and
        the outcome comes back as ``StoreDone`` like any store's."""
        ref, pool, tenant, bot = self.actor_ref, self.deps.pool, self.tenant_id, self.bot_id
        work_ctx = context.WorkContext(effect.cid, tenant, bot)

        def store() -> None:
            context.set_current(work_ctx)
            try:
                stored = conv.store_from_phone(pool, tenant, bot, effect.event, effect.cid, effect.hold)
            except Exception as exc:  # noqa: BLE001 - classified by the machine
                _tell_quietly(ref, pm.StoreDone(None, exc))
                return
            except gevent.Timeout as exc:  # not the data's fault: retried like an outage
                _tell_quietly(ref, pm.StoreDone(None, RuntimeError(f"store from the phone cut short: {exc!r}")))
                return
            _tell_quietly(ref, pm.StoreDone([stored], None))

        self._tracked(store)

    def _ack(self, effect: pm.Ack) -> None:
        _tell_quietly(self.session, Ack(effect.message_ids))

    def _fetch_media(self, effect: pm.FetchMedia) -> None:
        self._tracked(self._download, effect.message_id, effect.event,
                      context.WorkContext(effect.cid, self.tenant_id, self.bot_id))

    def _download(self, message_id: str, event: tev.MessageReceived, ctx: context.WorkContext) -> None:
        context.set_current(ctx)
        attempts, policy = self.settings.media_attempts, self.settings.media_retry
        assert event.media_ref is not None  # FetchMedia comes only for a message with media
        for attempt in range(1, attempts + 1):
            try:
                data = self.session.ask(DownloadMedia(event.media_ref), timeout=60)
                media_id, stored = media.save(self.deps.pool, self.deps.media, self.tenant_id, self.bot_id, data,
                                              event.mime_type or "application/octet-stream")
                conv.set_media(self.deps.pool, self.tenant_id, message_id, media_id, stored.key)
                return
            except _FAILURES as exc:
                log.warning("media download failed", extra={"error": repr(exc), "attempt": attempt})
            if attempt < attempts:
                gevent.sleep(policy.delay(attempt, self.deps.rng))
        sentry.capture(RuntimeError(f"media of message {message_id} not stored"), where="media")

    def _load_config(self, effect: pm.LoadConfig) -> pm.ConfigLoaded:
        row = conv.bot_reply_config(self.deps.pool, self.tenant_id, self.bot_id)
        raw_rules, raw_ai = row if row is not None else ([], {})
        ai = self.deps.ai
        return pm.ConfigLoaded(raw_rules, raw_ai, ai is not None and ai.enabled)

    def _recover(self, effect: pm.Recover) -> pm.Recovered:
        pool, tenant = self.deps.pool, self.tenant_id
        contacts = tuple((contact_id, paused, held, tuple(conv.unanswered(pool, tenant, contact_id)))
                         for contact_id, paused, held in conv.contacts_with_unanswered(pool, tenant, self.bot_id))
        return pm.Recovered(contacts, conv.next_due_in(pool, tenant, self.bot_id))

    def _ignore(self, effect: pm.Ignore) -> None:
        conv.ignore(self.deps.pool, self.tenant_id, list(effect.message_ids), effect.reason)

    # -- answering ---------------------------------------------------------------------------------

    def _start_ai(self, effect: pm.StartAi) -> None:
        # Reading the conversation (unless the store already did) and asking the AI both happen in the
        # call's own greenlet, so the actor goes on storing and delivering meanwhile.
        self._tracked(self._call_ai, effect.contact_id, effect.ai,
                      context.WorkContext(effect.cid, self.tenant_id, self.bot_id), effect.prompt)

    def _call_ai(self, contact_id: str, ai: Any, ctx: context.WorkContext, prompt: Any) -> None:
        context.set_current(ctx)
        ref, cid = self.actor_ref, ctx.correlation_id
        if prompt is not None:
            pending, history = prompt
        else:
            try:
                pending, history = self.deps.store.prompt_inputs(self.tenant_id, self.bot_id, contact_id, ai.history)
            except _FAILURES as exc:  # the database's fault: think again later
                log.warning("conversation not read for the AI; will retry", extra={"error": repr(exc)})
                _tell_quietly(ref, pm.AiDone(contact_id, (), None, None, "retry", cid))
                return
        if not pending:
            _tell_quietly(ref, pm.AiDone(contact_id, (), None, None, "none", cid))
            return
        ids = tuple(m[0] for m in pending)
        messages = build_messages(ai, history, [m[2] for m in pending])
        try:
            text = self.deps.ai.reply(messages, model=ai.model, temperature=ai.temperature).strip()
            result = pm.AiDone(contact_id, ids, text or None, None if text else "empty answer", "ai", cid)
        except _FAILURES as exc:  # the provider's fault is the customer's fallback
            result = pm.AiDone(contact_id, ids, None, str(exc) or type(exc).__name__, "ai", cid)
        _tell_quietly(ref, result)

    def _write_answer(self, effect: pm.WriteAnswer) -> None:
        ref, contact_id, send_now, cid = self.actor_ref, effect.contact_id, effect.send_now, effect.cid
        if effect.source == "ai" and log.isEnabledFor(logging.INFO):
            with context.bound(correlation_id=cid):
                log.info("AI answered", extra={"contact_id": contact_id, "messages": len(effect.message_ids)})

        def done(result: Any, error: Exception | None) -> None:  # from the statement's greenlet
            _tell_quietly(ref, pm.Answered(contact_id, send_now, result, error, cid))

        try:
            self.deps.store.answer_later(self.tenant_id, self.bot_id, contact_id, list(effect.message_ids),
                                         effect.text, effect.source, cid, send_now, done)
        except Exception as exc:  # noqa: BLE001 - not even queued: the same as failed
            done(None, exc)

    # -- outbox ------------------------------------------------------------------------------------

    def _claim(self, effect: pm.Claim) -> pm.Claimed:
        rows = self.deps.store.claim_due(self.tenant_id, self.bot_id, effect.limit, effect.leave_out)
        # db.pipeline_store.ClaimedRows: with when held answers may go (None: nothing is held) and when
        # the next retry is due (None: none waits)
        return pm.Claimed(tuple(rows), getattr(rows, "held_for", None), getattr(rows, "due_in", None))

    def _check_received(self, effect: pm.CheckReceived) -> pm.Received:
        row = effect.row
        token = self._bind(row.correlation_id)
        try:
            received = self.session.ask(WasReceived(row.wa_message_id), timeout=15) is True
        except Exception:  # noqa: BLE001 - cannot tell; the resend carries the same id
            received = False
        finally:
            context.reset(token)
        return pm.Received(row, received)

    def _send(self, effect: pm.Send) -> pm.SendOk | pm.SendFailed:
        row = effect.row
        token = self._bind(row.correlation_id)
        try:
            network_id = self.session.ask(self._request_for(row), timeout=60)
        except Exception as exc:  # noqa: BLE001 - classified by the machine
            return pm.SendFailed(row, exc)
        finally:
            context.reset(token)
        return pm.SendOk(row, network_id if isinstance(network_id, str) else None)

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

    def _release(self, effect: pm.Release) -> None:
        self.deps.store.release(self.tenant_id, list(effect.rows))

    def _mark_sent(self, effect: pm.MarkSent) -> None:
        ids = tuple(outbox_id for outbox_id, _ in effect.items)
        ctx, ref, count = context.current(), self.actor_ref, len(effect.items)

        def recorded(error: Exception | None) -> None:  # runs in the statement's greenlet
            if error is not None:  # the rows stay 'sending'; a later claim asks the network about them
                with context.bound(**ctx._asdict()):
                    log.warning("sent messages not recorded yet; will check with the network",
                                extra={"error": repr(error), "messages": count})
            _tell_quietly(ref, pm.Recorded(ids, error is None))

        try:
            self.deps.store.mark_sent_later(self.tenant_id, list(effect.items), recorded)
        except Exception as exc:  # noqa: BLE001 - not even queued (overflow, stopped): same as failed
            recorded(exc)

    def _mark_failed(self, effect: pm.MarkFailed) -> None:
        conv.mark_failed(self.deps.pool, self.tenant_id, effect.outbox_id, effect.error, effect.retry_in)

    # -- receipts, notices, logs, timers ---------------------------------------------------------------

    def _record_receipt(self, effect: pm.RecordReceipt) -> pm.ReceiptsRecorded:
        changed = conv.record_receipt(self.deps.pool, self.tenant_id, self.bot_id, list(effect.message_ids),
                                      effect.status)
        return pm.ReceiptsRecorded(effect.status, tuple(changed))

    def _publish(self, effect: pm.Publish) -> None:
        if effect.metric is not None:
            if self.deps.metrics is not None:
                self.deps.metrics.count(effect.metric, self.bot_id)
            if effect.metric != "dead" and log.isEnabledFor(logging.INFO):
                payload = effect.payload
                what = "message stored" if effect.metric == "in" else "message sent"
                extra = ({"message_id": payload["message_id"], "wa_message_id": payload["wa_message_id"]}
                         if effect.metric == "in" else
                         {"outbox_id": payload["outbox_id"], "wa_message_id": payload["wa_message_id"]})
                with context.bound(correlation_id=payload["correlation_id"] or context.correlation_id()):
                    log.info(what, extra=extra)
        self.deps.publish(self.tenant_id, self.bot_id, effect.event_type, effect.payload)

    def _log(self, effect: pm.Log) -> None:
        level = _LEVELS[effect.level]
        if not log.isEnabledFor(level):
            return
        if effect.cid is None or effect.cid == context.correlation_id():
            log.log(level, effect.message, extra=effect.extra)
            return
        with context.bound(correlation_id=effect.cid):
            log.log(level, effect.message, extra=effect.extra)

    def _capture(self, effect: pm.Capture) -> None:
        with context.bound(correlation_id=effect.cid or context.correlation_id()):
            sentry.capture(effect.error, where=effect.where)

    def _schedule_timer(self, effect: pm.ScheduleTimer) -> None:
        key, event, ref, timers = effect.key, effect.event, self.actor_ref, self._timers
        previous = timers.pop(key, None)
        if previous is not None:
            previous.cancel()

        def fire() -> None:  # on the hub's schedule (or in ManualTimers.advance): quick, never blocks
            if timers.get(key) is handle:
                del timers[key]
            _tell_quietly(ref, event)

        handle = self.deps.timers.schedule(max(0.0, effect.at - self.deps.clock()), fire)
        timers[key] = handle

    def _cancel_timer(self, effect: pm.CancelTimer) -> None:
        handle = self._timers.pop(effect.key, None)
        if handle is not None:
            handle.cancel()

    def _later(self, effect: pm.Later) -> None:
        _tell_quietly(self.actor_ref, effect.event)

    def _fail(self, effect: pm.Fail) -> None:
        # As when the statement ran in the handler: the actor fails, and its restart answers what is
        # still unanswered and asks the network about a row that may be 'sending'.
        raise effect.error


def _tell_quietly(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - stopped
        pass

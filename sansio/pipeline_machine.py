"""The decisions of one bot's message pipeline: what to store, answer, send, retry and wait for next.

``transition(state, event, now, rng)`` returns the next ``PipelineState`` and a list of effects, data
the pipeline actor (``actors/pipeline.py``) executes in the order given. ``now`` is the monotonic
clock of the actor's timers; ``rng`` draws the jitter of send retries. Pure: no I/O, no gevent.

State (one record per bot, rebuilt on every change, never mutated):

- **inbound**: the messages waiting to be stored, in arrival order (``waiting``, of which
  ``phone_waiting`` are the owner's from the phone); the batch in flight (``storing``: at most one,
  so messages are stored, acked and answered in arrival order); after a batch failed on bad data,
  ``store_alone`` messages are stored one by one; after an outage, ``store_attempt`` retries so far
  and the retry timer (``store_retry_at``).
- **contacts**: per customer with work in progress (a missing contact is *idle*): *debouncing* until
  ``debounce_at``, *thinking* (an AI call in flight), *answering* (``answering`` answers being
  written), and ``again``: think again once the call or answer in flight is done. ``changed``: the
  customers whose unanswered messages changed (an answer or an ignore) while the store in flight
  runs, whose prompt inputs read by that store are therefore not used.
- **delivery**: ``phase`` *idle*, *claiming* (a claim statement runs) or *sending* (claimed rows
  are tried one at a time); ``deferred``: a delivery waits for the answers written for sending at
  once (``answers_now``) to be done, since a claim now could take their rows too; ``maybe_due``:
  rows may be due that no claim has seen, so no answer may be sent at once ahead of them;
  ``answers_later``: answers in flight written to wait in the outbox, which commit before any
  answer written after them, so none of those is sent at once either (a bot's outgoing order is
  its commit order); ``recording``: rows sent whose 'sent' record has not committed (a claim leaves them out); the
  token bucket of the send rate (``bucket``, ``sansio.token_bucket``); ``deliver_at``: every time a claim
  is to run (a retry comes due by this clock, or by the database's as each claim reports; the next
  token), earliest first, the delivery timer running for the first (one timer replaced by a sooner
  one would forget the later time).
- **config**: the bot's rules and AI settings, loaded when first needed (``LoadConfig``) and
  dropped by ``Wake``; an input that needs them while they are not loaded waits in
  ``awaiting_config`` and is handled again, from the same state, once ``ConfigLoaded`` arrives.

Inputs: from the session (``Inbound``, ``Receipt``, ``LinkUp``, ``Wake``), the actor's start
(``Start``), timers (``StoreRetryDue``, ``DebounceDue``, ``DeliverDue``, ``HeldDue`` — the next UTC
day while answers are held by the tenant's daily message quota — and ``DeliverMore`` that
the actor mails to itself), and the outcomes of effects: asynchronous ones (``StoreDone``,
``AiDone``, ``Answered``, ``Recorded``) and those the actor runs at once and reports straight back
(``ConfigLoaded``, ``Recovered``, ``Claimed``, ``Received``, ``SendOk``, ``SendFailed``,
``ReceiptsRecorded``). Timer inputs carry the deadline they were scheduled for, and only the one
matching the state's counts: a timer that fired after it was replaced changes nothing.

Effects: ``StoreBatch``, ``StorePhone``, ``Ack``, ``FetchMedia``, ``LoadConfig``, ``Recover``,
``StartAi``, ``WriteAnswer``, ``Ignore``, ``Claim``, ``CheckReceived``, ``Send``, ``Release``,
``MarkSent``, ``MarkFailed``, ``RecordReceipt``, ``Publish``, ``Log``, ``Capture``,
``ScheduleTimer`` (replaces the timer of the same key), ``CancelTimer``, ``Later`` (mail an input
to the actor itself, behind what is already waiting) and ``Fail`` (end the actor; its restart
recovers). Effects whose outcome is an input are marked in their docstrings.

State records are ``NamedTuple``s: immutable like the session machine's dataclasses, and built by
position, which on this hot path (a few transitions per message) costs a tenth of
``dataclasses.replace``. A transition works on a private draft (``_Step``) and freezes it once.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from sansio import rules as rules_mod
from sansio.backoff import BackoffPolicy, Rng
from sansio.retry_rules import is_transient
from sansio.token_bucket import Bucket

STORE_TIMER = "store"
DELIVER_TIMER = "deliver"
HELD_TIMER = "held"  # the next UTC day, while answers are held by the daily message quota
HELD_MARGIN = 1.0  # seconds after the day begins (clocks differ a little)
SAME_DEADLINE = 0.001  # seconds: a claim this soon after another deadline is the same claim
DUE_SLACK = 0.05  # seconds: a claim timed this much after the database's next due time serves for it

PAUSED = "conversation paused"
NO_ANSWER = "no rule matched and AI is off"
AI_UNAVAILABLE = "AI unavailable"


def debounce_timer(contact_id: str) -> tuple[str, str]:
    return ("debounce", contact_id)


# -- settings --------------------------------------------------------------------------------------

# The retry loops' policies (sansio.backoff), as the pipeline has always spaced them.
SEND_RETRY = BackoffPolicy(base=2.0, cap=300.0, jitter="equal")  # base: OUTBOX_RETRY_BASE
STORE_RETRY = BackoffPolicy(base=0.2, cap=3.0, jitter="none")
MEDIA_RETRY = BackoffPolicy(base=0.5, cap=10.0, jitter="none")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    ai_debounce: float = 0.0  # seconds; 0: think at once, the store reads the prompt inputs
    phone_takeover: float = 0.0  # seconds the owner's message from the phone holds a conversation
    send_rate: float = 0.0  # tokens per second; 0: unlimited
    send_burst: int = 5
    outbox_max_attempts: int = 8
    send_retry: BackoffPolicy = SEND_RETRY
    store_retry: BackoffPolicy = STORE_RETRY
    media_retry: BackoffPolicy = MEDIA_RETRY
    media_attempts: int = 5
    recorded_retry: float = 1.0  # a failed 'sent' record: a claim within this asks the network
    ai_retry: float = 1.0  # least wait before thinking again when the conversation could not be read
    fetch_media: bool = False  # a media store is configured
    answerable_kinds: frozenset[str] = frozenset({"text", "image", "video", "document", "audio", "sticker"})
    held_reason: str = "the owner is answering from the phone"
    store_batch: int = 100
    delivery_batch: int = 50
    max_waiting: int = 10_000

    @classmethod
    def from_settings(cls, settings: Any, **extra: Any) -> Settings:
        """The documented settings (``core.config``): send retries start at OUTBOX_RETRY_BASE and
        double up to 5 minutes, each delay drawn from its upper half."""
        return cls(
            ai_debounce=settings.ai_debounce,
            phone_takeover=settings.bot_phone_takeover,
            send_rate=settings.bot_send_rate / 60.0,
            send_burst=settings.bot_send_burst,
            outbox_max_attempts=settings.outbox_max_attempts,
            send_retry=BackoffPolicy(base=settings.outbox_retry_base, cap=300.0, jitter="equal"),
            **extra,
        )


# -- state -----------------------------------------------------------------------------------------


class Phase(str, enum.Enum):
    IDLE = "idle"
    CLAIMING = "claiming"
    SENDING = "sending"


class Fifo:
    """A persistent first-in-first-out queue: ``append`` and ``drop`` return a new queue and leave
    this one as it was, in O(1) (amortised): an outage's backlog of thousands of messages costs no
    copy per message."""

    __slots__ = ("_front", "_start", "_back", "_size")

    def __init__(self, front: tuple = (), start: int = 0, back: tuple | None = None, size: int = 0) -> None:
        self._front = front  # oldest first, from _start
        self._start = start
        self._back = back  # newest first, as nested pairs (item, rest)
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Any:
        return iter(self._flat())

    def __repr__(self) -> str:
        return f"Fifo({list(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fifo) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal by content, never used as a key

    def append(self, item: Any) -> Fifo:
        return Fifo(self._front, self._start, (item, self._back), self._size + 1)

    def _flat(self) -> tuple:
        """Every item, oldest first."""
        front = self._front[self._start:]
        if self._back is None:
            return front
        items = []
        node = self._back
        while node is not None:
            items.append(node[0])
            node = node[1]
        items.reverse()
        return front + tuple(items)

    def normal(self) -> Fifo:
        """The same queue with everything in the front part (what ``head`` and ``drop`` read)."""
        if self._back is None:
            return self
        return Fifo(self._flat(), 0, None, self._size)

    def head(self, n: int) -> tuple:
        """The oldest ``n`` items (fewer if there are not as many); cheapest on a ``normal()`` queue."""
        if self._back is not None and len(self._front) - self._start < n:
            return self._flat()[:n]
        return self._front[self._start:self._start + n]

    def drop(self, n: int) -> Fifo:
        if len(self._front) - self._start >= n:
            return Fifo(self._front, self._start + n, self._back, self._size - n)
        items = self._flat()
        n = min(n, len(items))
        return Fifo(items, n, None, len(items) - n)

    def prepend(self, items: tuple) -> Fifo:
        """``items`` back at the head, in their order (a batch whose store failed)."""
        return Fifo(items + self._front[self._start:], 0, self._back, self._size + len(items))


EMPTY = Fifo()
NO_CONTACTS: Mapping[str, Contact] = MappingProxyType({})


class Contact(NamedTuple):
    """A customer with work in progress; one with none is not kept (*idle*)."""

    debounce_at: float | None = None  # debouncing: the DebounceDue timer's deadline
    debounce_cid: str | None = None  # the latest message's correlation id: the answer continues it
    thinking: bool = False  # an AI call is in flight
    answering: int = 0  # answers written in the background, not yet done
    again: bool = False  # think again once the call or answer in flight is done

    @property
    def state(self) -> str:
        if self.answering:
            return "answering"
        if self.thinking:
            return "thinking"
        if self.debounce_at is not None:
            return "debouncing"
        return "idle"


IDLE = Contact()


class Storing(NamedTuple):
    """The store in flight: a batch of messages, or the owner's one message (``phone``)."""

    items: tuple  # (event, correlation id), in arrival order
    phone: bool


class Config(NamedTuple):
    rules: tuple[rules_mod.Rule, ...]
    ai: rules_mod.AiConfig
    ai_on: bool  # the bot has AI on and this process has an AI client


class Sending(NamedTuple):
    """Rows in hand (claimed, or one answer written claimed), tried in order."""

    rows: tuple
    tried: int  # the index of the row being tried
    sent: tuple  # (row, network id or None) of the rows the network has
    claimed: int | None  # the claim's limit; None: an answer sent at once
    asked: bool = False  # the network was asked whether it has rows[index] and said no


class PipelineState(NamedTuple):
    settings: Settings
    connected: bool = False
    # inbound
    waiting: Fifo = EMPTY  # (MessageReceived, correlation id) in arrival order, not yet in a store
    phone_waiting: int = 0  # the owner's messages waiting or in the store in flight
    storing: Storing | None = None
    store_alone: int = 0
    store_attempt: int = 0
    store_retry_at: float | None = None
    # answers
    config: Config | None = None
    awaiting_config: tuple = ()
    contacts: Mapping[str, Contact] = NO_CONTACTS
    changed: frozenset = frozenset()
    answers_now: int = 0  # answers in flight written already claimed for sending at once
    answers_later: int = 0  # answers in flight written to wait in the outbox ('pending')
    # delivery
    phase: Phase = Phase.IDLE
    deferred: bool = False
    maybe_due: bool = True  # after a start: maybe
    deliver_at: tuple[float, ...] = ()  # sorted; the delivery timer is at the first
    recording: frozenset = frozenset()
    sending: Sending | None = None
    claim_limit: int = 0
    bucket: Bucket = Bucket(0.0, 0.0)

    @classmethod
    def initial(cls, settings: Settings, now: float) -> PipelineState:
        return cls(settings=settings, bucket=Bucket.full(settings.send_burst, now))

    def contact(self, contact_id: str) -> Contact:
        return self.contacts.get(contact_id, IDLE)

    @property
    def delivery(self) -> str:
        """``idle``, ``deferred``, ``claiming`` or ``sending``."""
        if self.phase is Phase.IDLE and self.deferred:
            return "deferred"
        return self.phase.value


_FIELDS = PipelineState._fields


# -- inputs ----------------------------------------------------------------------------------------


def _same_type_eq(self: tuple, other: object) -> bool:
    return type(other) is type(self) and tuple.__eq__(self, other)


def _same_type_ne(self: tuple, other: object) -> bool:
    return not _same_type_eq(self, other)


def _same_type_hash(self: tuple) -> int:
    return hash((type(self), tuple.__hash__(self)))


def _record(cls: Any) -> Any:
    """Inputs and effects are ``NamedTuple``s (immutable, half the cost of a frozen dataclass to
    build, and there are several per message); this makes two of them equal only when they are of
    the same type, as dataclasses are (``Ack(ids) == Release(ids)`` must not hold)."""
    cls.__eq__, cls.__ne__, cls.__hash__ = _same_type_eq, _same_type_ne, _same_type_hash
    return cls


_input = _effect = _record


@_input
class Start(NamedTuple):
    """The actor started: answer what a previous incarnation left, deliver what is due."""


@_input
class Inbound(NamedTuple):
    event: Any  # transports.events.MessageReceived
    cid: str | None  # its correlation id


@_input
class Receipt(NamedTuple):
    message_ids: tuple[str, ...]
    status: str


@_input
class LinkUp(NamedTuple):
    up: bool


@_input
class Wake(NamedTuple):
    """Something may be due (a new outbox row, a retried dead letter, a resumed conversation) and
    the rules or AI settings may have changed."""


@_input
class StoreRetryDue(NamedTuple):
    at: float


@_input
class DebounceDue(NamedTuple):
    contact_id: str
    at: float
    cid: str | None


@_input
class DeliverDue(NamedTuple):
    at: float


@_input
class DeliverMore(NamedTuple):
    """The last claim was full: there may be more due now."""


@_input
class StoreDone(NamedTuple):
    """The store in flight finished: ``stored`` (one ``db.conversations.Stored`` per message, or
    ``[PhoneStored]``) or ``error``."""

    stored: Any
    error: BaseException | None = None


@_input
class ConfigLoaded(NamedTuple):
    rules: Any  # as stored: validated here
    ai: Any
    ai_available: bool  # this process has an AI client


@_input
class Recovered(NamedTuple):
    """What a previous incarnation left: per contact with unanswered messages ``(contact id, paused,
    held, ((message id, kind, text), ...))``; seconds until the next outbox row is due, or None."""

    contacts: tuple
    due_in: float | None


@_input
class AiDone(NamedTuple):
    contact_id: str
    message_ids: tuple[str, ...]
    text: str | None
    error: str | None
    source: str  # "ai"; "none": nothing was left to answer; "retry": the conversation could not be read
    cid: str | None = None


@_input
class Answered(NamedTuple):
    """An answer written in the background is committed (``result``: ``(outbox id, row to send at
    once or None)``, or None when its messages were all answered or ignored meanwhile) or failed."""

    contact_id: str
    send_now: bool
    result: Any
    error: BaseException | None
    cid: str | None = None


@_input
class Claimed(NamedTuple):
    rows: tuple
    held_for: float | None = None  # answers held by the daily message quota: seconds until the next UTC day
    # Seconds, by the database's clock, until the bot's next row waiting for its retry is due (None:
    # none waits). The pipeline's own timer for a retry can fire before the row is due in the
    # database's eyes (``next_attempt_at`` is set from the database's now, a moment after the timer's
    # time was taken): a claim that came early must not be the last one.
    due_in: float | None = None


@_input
class HeldDue(NamedTuple):
    """A new UTC day began since answers were held by the daily message quota: a claim releases
    what the quota allows now."""

    at: float


@_input
class Received(NamedTuple):
    row: Any
    received: bool


@_input
class SendOk(NamedTuple):
    row: Any
    network_id: str | None


@_input
class SendFailed(NamedTuple):
    row: Any
    error: BaseException


@_input
class Recorded(NamedTuple):
    """The background 'sent' record of these rows finished; if not ``ok`` they are still 'sending'."""

    outbox_ids: tuple[str, ...]
    ok: bool


@_input
class ReceiptsRecorded(NamedTuple):
    status: str
    changed: tuple  # (message id, outbox id, correlation id) of the rows that moved


# -- effects ---------------------------------------------------------------------------------------


@_effect
class StoreBatch(NamedTuple):
    """Store these waiting messages in the background; the outcome is ``StoreDone``."""

    items: tuple  # (event, correlation id)
    wants: tuple | None  # per message the history to read with it for the AI (-1: none); None: none at all


@_effect
class StorePhone(NamedTuple):
    """Store the owner's message from the phone (holding the conversation ``hold`` seconds if it is
    new) in the background; the outcome is ``StoreDone``."""

    event: Any
    cid: str | None
    hold: float


@_effect
class Ack(NamedTuple):
    message_ids: tuple[str, ...]


@_effect
class FetchMedia(NamedTuple):
    message_id: str
    event: Any
    cid: str | None


@_effect
class LoadConfig(NamedTuple):
    """Read the bot's rules and AI settings; the outcome is ``ConfigLoaded``, at once."""


@_effect
class Recover(NamedTuple):
    """Read what a previous incarnation left; the outcome is ``Recovered``, at once."""


@_effect
class StartAi(NamedTuple):
    """Ask the AI for the contact's unanswered messages, reading them first unless ``prompt`` has
    them; the outcome is ``AiDone``."""

    contact_id: str
    ai: rules_mod.AiConfig
    prompt: Any
    cid: str | None


@_effect
class WriteAnswer(NamedTuple):
    """Claim the messages still unanswered and write the outbox row, in the background (already
    claimed for sending if ``send_now``); the outcome is ``Answered``."""

    contact_id: str
    message_ids: tuple[str, ...]
    text: str
    source: str
    cid: str | None
    send_now: bool


@_effect
class Ignore(NamedTuple):
    message_ids: tuple[str, ...]
    reason: str


@_effect
class Claim(NamedTuple):
    """Claim up to ``limit`` due rows, oldest first, leaving out ``leave_out``; the outcome is
    ``Claimed``, at once."""

    limit: int
    leave_out: frozenset


@_effect
class CheckReceived(NamedTuple):
    """Ask the network whether it has the row (an earlier attempt's outcome is unknown); the outcome
    is ``Received``, at once."""

    row: Any


@_effect
class Send(NamedTuple):
    """One attempt, already counted; the outcome is ``SendOk`` or ``SendFailed``, at once."""

    row: Any


@_effect
class Release(NamedTuple):
    """Claimed rows not tried: back to their state, the attempt uncounted."""

    rows: tuple


@_effect
class MarkSent(NamedTuple):
    """Record rows as sent in the background; the outcome is ``Recorded``."""

    items: tuple  # (outbox id, network id or None)


@_effect
class MarkFailed(NamedTuple):
    outbox_id: str
    error: str
    retry_in: float | None  # None: a dead letter


@_effect
class RecordReceipt(NamedTuple):
    """Move outgoing messages forward; the outcome is ``ReceiptsRecorded``, at once."""

    message_ids: tuple[str, ...]
    status: str


@_effect
class Publish(NamedTuple):
    """Publish a notice; ``metric``: the pipeline metric the message counts under ("in", "out",
    "dead"), whose messages in and out the actor also logs."""

    event_type: str
    payload: dict
    metric: str | None = None


@_effect
class Log(NamedTuple):
    level: str  # "info", "warning", "error"
    message: str
    extra: dict
    cid: str | None = None


@_effect
class Capture(NamedTuple):
    """Report to Sentry."""

    error: BaseException
    where: str
    cid: str | None = None


@_effect
class ScheduleTimer(NamedTuple):
    """At ``at`` (the clock ``transition`` is given), feed ``event`` back; replaces the timer ``key``."""

    key: Any
    at: float
    event: Any


@_effect
class CancelTimer(NamedTuple):
    key: Any


@_effect
class Later(NamedTuple):
    """Mail ``event`` to the actor itself, behind what already waits in its mailbox."""

    event: Any


@_effect
class Fail(NamedTuple):
    """End the actor with ``error``; its restart answers what is still unanswered."""

    error: BaseException


# -- the transition --------------------------------------------------------------------------------


class _NeedConfig(Exception):
    """Raised inside a handler that needs the reply settings while they are not loaded."""


Result = tuple[PipelineState, list]


def transition(state: PipelineState, event: Any, now: float, rng: Rng) -> Result:
    handler = _HANDLERS.get(type(event))
    if handler is None:
        return state, []
    step = _Step(state, now, rng)
    try:
        handler(step, event)
    except _NeedConfig:
        # Handled again, from this same state, once the settings are loaded.
        effects: list = [] if state.awaiting_config else [LoadConfig()]
        return state._replace(awaiting_config=(*state.awaiting_config, event)), effects
    new = step.freeze()
    if type(event) is ConfigLoaded and new.awaiting_config:
        waiting, new = new.awaiting_config, new._replace(awaiting_config=())
        effects = step.effects
        for later in waiting:
            new, more = transition(new, later, now, rng)
            effects.extend(more)
        return new, effects
    return new, step.effects


class _Step:
    """A transition's draft of the next state: the fields of ``PipelineState`` as attributes, the
    contacts and changes copied before the first write, and the effects so far."""

    __slots__ = (*_FIELDS, "now", "rng", "effects", "_own_contacts")

    def __init__(self, s: PipelineState, now: float, rng: Rng) -> None:
        (self.settings, self.connected, self.waiting, self.phone_waiting, self.storing, self.store_alone,
         self.store_attempt, self.store_retry_at, self.config, self.awaiting_config,
         self.contacts, self.changed, self.answers_now, self.answers_later, self.phase, self.deferred,
         self.maybe_due, self.deliver_at, self.recording, self.sending, self.claim_limit,
         self.bucket) = s
        self.now = now
        self.rng = rng
        self.effects: list = []
        self._own_contacts = False

    def freeze(self) -> PipelineState:
        contacts = self.contacts
        if self._own_contacts:
            contacts = MappingProxyType(contacts)
        return PipelineState(
            self.settings, self.connected, self.waiting, self.phone_waiting, self.storing, self.store_alone,
            self.store_attempt, self.store_retry_at, self.config, self.awaiting_config,
            contacts, self.changed, self.answers_now, self.answers_later, self.phase, self.deferred, self.maybe_due,
            self.deliver_at, self.recording, self.sending, self.claim_limit, self.bucket)

    # -- contacts ------------------------------------------------------------------------------------

    def contact(self, contact_id: str) -> Contact:
        return self.contacts.get(contact_id, IDLE)

    def put(self, contact_id: str, contact: Contact) -> None:
        if not self._own_contacts:
            self.contacts = dict(self.contacts)
            self._own_contacts = True
        if contact == IDLE:
            self.contacts.pop(contact_id, None)  # type: ignore[attr-defined]
        else:
            self.contacts[contact_id] = contact  # type: ignore[index]

    def change(self, contact_id: str) -> None:
        """The contact's unanswered messages or history change now: prompt inputs read by the store in
        flight do not stand (see ``_store_done``); changes matter only while a store is in flight."""
        storing = self.storing
        if storing is not None and not storing.phone and contact_id not in self.changed:
            self.changed = self.changed.union((contact_id,))

    def reply_config(self) -> Config:
        if self.config is None:
            raise _NeedConfig
        return self.config

    # -- the token bucket ----------------------------------------------------------------------------

    def _refill(self) -> Bucket:
        settings = self.settings
        self.bucket = bucket = self.bucket.refilled(settings.send_rate, settings.send_burst, self.now)
        return bucket

    def tokens_available(self) -> int:
        return self._refill().available(self.settings.send_rate, self.settings.send_burst)

    def token_wait(self) -> float:
        return self._refill().wait_time(self.settings.send_rate)

    def take_token(self) -> None:
        self.bucket = self._refill().taken(self.settings.send_rate)


# -- inbound ---------------------------------------------------------------------------------------


def _inbound(s: _Step, e: Inbound) -> None:
    storing = s.storing
    if len(s.waiting) + (len(storing.items) if storing is not None else 0) >= s.settings.max_waiting:
        # Not acked: the network delivers it again after the next login.
        s.effects.append(Log("warning", "inbound backlog full; message left to the network",
                             {"wa_id": e.event.message_id}, e.cid))
        return
    item = (e.event, e.cid)
    if e.event.from_me:
        s.phone_waiting += 1
    elif storing is None and s.store_retry_at is None and not s.waiting:
        _start_store(s, (item,))  # nothing before it: no queue to go through
        return
    s.waiting = s.waiting.append(item)
    if s.store_retry_at is None:
        _store_next(s)


def _store_retry_due(s: _Step, e: StoreRetryDue) -> None:
    if e.at != s.store_retry_at:
        return
    s.store_retry_at = None
    _store_next(s)


def _store_next(s: _Step) -> None:
    """Store the head of ``waiting`` in the background; what arrives meanwhile goes in the next
    batch. One store in flight, so messages are stored (and acked, and answered) in arrival order."""
    if s.storing is not None or not s.waiting:
        return
    waiting = s.waiting.normal()
    batch = waiting.head(1 if s.store_alone else s.settings.store_batch)
    if s.phone_waiting:
        # The owner's messages are stored one at a time by a statement of their own; the batch ends
        # before the first, so everything stays in arrival order.
        if batch[0][0].from_me:
            s.waiting = waiting.drop(1)
            s.storing = Storing(batch[:1], True)
            s.effects.append(StorePhone(batch[0][0], batch[0][1], s.settings.phone_takeover))
            return
        batch = tuple(itertools.takewhile(lambda item: not item[0].from_me, batch))
    s.waiting = waiting.drop(len(batch))
    _start_store(s, batch)


def _start_store(s: _Step, batch: tuple) -> None:
    if s.changed:
        s.changed = frozenset()  # only changes while this store runs will matter to it
    s.storing = Storing(batch, False)
    s.effects.append(StoreBatch(batch, _prompt_wants(s, batch)))


def _prompt_wants(s: _Step, batch: tuple) -> tuple | None:
    """Per message, the history to read with it when it will go straight to the AI (no rule
    matches, AI on, no debounce), else -1: the store then reads the prompt inputs in the same
    statement and the AI call needs no read of its own. None: nothing to read (or the reply settings
    are not loaded, and the store must not wait for them)."""
    config = s.config
    if config is None or s.settings.ai_debounce > 0 or not config.ai_on:
        return None
    answerable, rules, history = s.settings.answerable_kinds, config.rules, config.ai.history
    if not rules:
        return tuple([history if event.kind in answerable else -1 for event, _ in batch])
    return tuple([history if event.kind in answerable
                  and rules_mod.first_match(rules, event.text or event.caption or "") is None else -1
                  for event, _ in batch])


def _store_done(s: _Step, e: StoreDone) -> None:
    storing = s.storing
    if storing is None:
        return  # not ours (cannot happen: one store in flight)
    s.storing = None
    batch, changed = storing.items, s.changed
    exc = e.error
    if exc is not None:
        if is_transient(exc) or isinstance(exc, RuntimeError):
            s.waiting = s.waiting.prepend(batch)
            s.store_attempt += 1
            delay = s.settings.store_retry.delay(s.store_attempt, s.rng)
            s.effects.append(Log("warning", "inbound not stored yet; will retry",
                                 {"error": repr(exc), "waiting": len(s.waiting), "retry_in": delay}))
            s.store_retry_at = s.now + delay
            s.effects.append(ScheduleTimer(STORE_TIMER, s.store_retry_at, StoreRetryDue(s.store_retry_at)))
            return
        if len(batch) > 1:
            s.waiting = s.waiting.prepend(batch)
            s.store_alone = len(batch)
        else:
            # Not a fault that time fixes (bad data): report it and leave the message unacked with the
            # network rather than loop on it.
            event, cid = batch[0]
            s.effects.append(Log("error", "inbound message could not be stored",
                                 {"error": repr(exc), "wa_id": event.message_id}, cid))
            s.effects.append(Capture(exc, "store_inbound", cid))
            s.phone_waiting -= storing.phone
            s.store_alone = max(0, s.store_alone - 1)
        _store_next(s)
        return
    if s.store_alone:
        s.store_alone = max(0, s.store_alone - len(batch))
    s.phone_waiting -= storing.phone
    s.store_attempt = 0
    _store_next(s)  # the next batch goes while this one is answered
    s.effects.append(Ack(tuple([event.message_id for event, _ in batch])))
    if storing.phone:
        event, cid = batch[0]
        _from_phone(s, e.stored[0], event, cid)
        return
    # Rules first for the whole batch, then one AI call per customer: a rule answer to a later
    # message of the same customer is then already out of the prompt.
    thinks: dict[str, tuple[Any, str | None]] = {}
    for (event, cid), one in zip(batch, e.stored):
        # message_id None: a replay, stored and handled before
        if one.message_id is not None and _stored(s, one, event, cid):
            earlier = thinks.get(one.contact_id)
            # The latest message's correlation id: the answer continues its line of work.
            thinks[one.contact_id] = (one.prompt or (earlier[0] if earlier else None), cid)
    for contact_id, (prompt, cid) in thinks.items():
        if prompt is not None and contact_id in changed:
            prompt = None  # answered or ignored since the store started: read it again
        _schedule_think(s, contact_id, prompt, cid)


def _stored(s: _Step, stored: Any, event: Any, cid: str | None) -> bool:
    """Announce and consider a newly stored message; True when the AI is to answer it."""
    s.effects.append(Publish("message.in", {
        "message_id": stored.message_id, "contact_id": stored.contact_id, "from": event.sender,
        "kind": event.kind, "text": event.text or event.caption, "wa_message_id": event.message_id,
        "correlation_id": cid,
    }, "in"))
    if event.media_ref and s.settings.fetch_media:
        s.effects.append(FetchMedia(stored.message_id, event, cid))
    if event.kind not in s.settings.answerable_kinds:
        return False  # stored as ignored
    if stored.paused:
        _ignore(s, stored.contact_id, (stored.message_id,), PAUSED)
        return False
    if stored.held:
        _ignore(s, stored.contact_id, (stored.message_id,), s.settings.held_reason)
        return False
    config = s.reply_config()
    rule = rules_mod.first_match(config.rules, event.text or event.caption or "")
    if rule is not None:
        _answer(s, stored.contact_id, (stored.message_id,), rule.reply, "rule", cid)
        return False
    if config.ai_on:
        return True
    _ignore(s, stored.contact_id, (stored.message_id,), NO_ANSWER)
    return False


def _from_phone(s: _Step, stored: Any, event: Any, cid: str | None) -> None:
    """The owner's message is committed: announce it and, if it holds the conversation, stop whatever
    answer was coming for that customer."""
    if stored.message_id is None:
        # The echo of a message the platform sent (same WhatsApp id), or a redelivery: stored
        # before, it changes nothing.
        s.effects.append(Log("info", "message from the phone already stored", {"wa_message_id": event.message_id},
                             cid))
        return
    s.effects.append(Log("info", "message from the phone stored", {
        "message_id": stored.message_id, "wa_message_id": event.message_id, "ignored": len(stored.ignored),
        "hold_until": _iso(stored.phone_hold_until)}, cid))
    contact_id = stored.contact_id
    if s.settings.phone_takeover > 0:
        # The waiting messages are ignored now: a prompt read before does not stand, a debounce for
        # them has nothing to answer, and a call in flight finds nothing to claim.
        s.change(contact_id)
        contact = s.contact(contact_id)
        if contact.debounce_at is not None:
            s.effects.append(CancelTimer(debounce_timer(contact_id)))
        s.put(contact_id, contact._replace(debounce_at=None, debounce_cid=None, again=False))
    s.effects.append(Publish("message.out", {
        "message_id": stored.message_id, "contact_id": contact_id, "to": event.chat,
        "text": event.text or event.caption, "wa_message_id": event.message_id, "source": "phone",
    }))
    s.effects.append(Publish("conversation.state", {
        "contact_id": contact_id, "jid": stored.jid, "paused": stored.paused, "paused_by": stored.paused_by,
        "paused_at": _iso(stored.paused_at), "phone_hold_until": _iso(stored.phone_hold_until),
    }))


def _ignore(s: _Step, contact_id: str, message_ids: tuple, reason: str) -> None:
    s.change(contact_id)
    s.effects.append(Ignore(message_ids, reason))


def _config_loaded(s: _Step, e: ConfigLoaded) -> None:
    try:
        rules = tuple(rules_mod.validate_rules(e.rules or []))
    except rules_mod.RuleError as exc:
        s.effects.append(Log("error", "stored rules are invalid; answering without them", {"error": str(exc)}))
        rules = ()
    try:
        ai = rules_mod.validate_ai_config(e.ai or {})
    except rules_mod.RuleError as exc:
        s.effects.append(Log("error", "stored AI settings are invalid; AI off", {"error": str(exc)}))
        ai = rules_mod.AiConfig()
    s.config = Config(rules, ai, ai.enabled and e.ai_available)


# -- answering -------------------------------------------------------------------------------------


def _schedule_think(s: _Step, contact_id: str, prompt: Any, cid: str | None) -> None:
    """``prompt``: the contact's prompt inputs if already read and current (used only when the call
    starts now)."""
    contact = s.contact(contact_id)
    if contact.thinking or contact.answering:
        if not contact.again:
            s.put(contact_id, contact._replace(again=True))  # once the call or answer in flight is done
        return
    if s.settings.ai_debounce <= 0:
        if contact.debounce_at is not None:
            s.effects.append(CancelTimer(debounce_timer(contact_id)))
            contact = contact._replace(debounce_at=None, debounce_cid=None)
        _think(s, contact_id, contact, prompt, cid)  # nothing to wait for: no timer, no extra message
        return
    at = s.now + s.settings.ai_debounce
    s.put(contact_id, contact._replace(debounce_at=at, debounce_cid=cid))
    s.effects.append(ScheduleTimer(debounce_timer(contact_id), at, DebounceDue(contact_id, at, cid)))


def _think(s: _Step, contact_id: str, contact: Contact, prompt: Any, cid: str | None) -> None:
    # The call reads the conversation (unless the store already did) and asks the AI in its own
    # greenlet, so the actor goes on storing and delivering meanwhile; one call per customer at a time.
    config = s.reply_config()
    s.put(contact_id, Contact(None, None, True, contact.answering, contact.again))
    s.effects.append(StartAi(contact_id, config.ai, prompt, cid))


def _debounce_due(s: _Step, e: DebounceDue) -> None:
    contact = s.contact(e.contact_id)
    if contact.debounce_at is None or contact.debounce_at != e.at:
        return  # replaced or dropped since
    contact = contact._replace(debounce_at=None, debounce_cid=None)
    if contact.answering or contact.thinking:  # a rule's answer is being written: after it
        s.put(e.contact_id, contact._replace(again=True))
        return
    _think(s, e.contact_id, contact, None, e.cid)


def _ai_done(s: _Step, e: AiDone) -> None:
    contact = s.contact(e.contact_id)
    if e.source == "retry":
        # The conversation could not be read: think again after a while (what asked again meanwhile
        # is covered by that).
        at = s.now + max(s.settings.ai_debounce, s.settings.ai_retry)
        s.put(e.contact_id, Contact(at, e.cid, False, contact.answering, False))
        s.effects.append(ScheduleTimer(debounce_timer(e.contact_id), at, DebounceDue(e.contact_id, at, e.cid)))
        return
    again = contact.again
    s.put(e.contact_id, Contact(contact.debounce_at, contact.debounce_cid, False, contact.answering, False))
    if e.source == "none":
        pass  # answered meanwhile (a rule, or an earlier call took them)
    elif e.text is not None:
        _answer(s, e.contact_id, e.message_ids, e.text, "ai", e.cid)
    else:
        ai = s.reply_config().ai
        s.effects.append(Log("warning", "AI answer failed", {"error": e.error, "fallback": bool(ai.fallback_reply)},
                             e.cid))
        s.effects.append(Publish("ai.error", {
            "contact_id": e.contact_id, "error": e.error, "fallback": bool(ai.fallback_reply),
        }))
        if ai.fallback_reply:
            _answer(s, e.contact_id, e.message_ids, ai.fallback_reply, "fallback", e.cid)
        else:
            _ignore(s, e.contact_id, e.message_ids, AI_UNAVAILABLE)
    if again:
        _schedule_think(s, e.contact_id, None, e.cid)


def _answer(s: _Step, contact_id: str, message_ids: tuple, text: str, source: str, cid: str | None) -> None:
    """Write the answer in the background; ``Answered`` takes the outcome. Until then the customer
    gets no new AI call (it would see the messages being answered as unanswered)."""
    # With nothing older waiting to go, the answer is written already claimed and sent once
    # committed: no separate claim statement, one update less per message.
    send_now = _may_send_directly(s)
    s.change(contact_id)
    contact = s.contact(contact_id)
    s.put(contact_id, Contact(contact.debounce_at, contact.debounce_cid, contact.thinking, contact.answering + 1,
                              contact.again))
    if send_now:
        s.answers_now += 1
    else:
        s.answers_later += 1
    s.effects.append(WriteAnswer(contact_id, message_ids, text, source, cid, send_now))


def _may_send_directly(s: _Step) -> bool:
    # An answer written to wait commits before this one (answers commit in the order written) and
    # goes out through a claim: sending this one at once would overtake it.
    if not s.connected or s.phase is not Phase.IDLE or s.maybe_due or s.answers_later:
        return False
    return not s.settings.send_rate or s.tokens_available() >= 1 + s.answers_now


def _answered(s: _Step, e: Answered) -> None:
    contact = s.contact(e.contact_id)
    contact = Contact(contact.debounce_at, contact.debounce_cid, contact.thinking, max(0, contact.answering - 1),
                      contact.again)
    if e.send_now:
        s.answers_now -= 1
    else:
        s.answers_later -= 1
    if e.error is not None:
        # As when the answer was written in line: the actor fails, and its restart answers what is
        # still unanswered and asks the network about a row that may be 'sending'.
        s.put(e.contact_id, contact)
        s.effects.append(Fail(e.error))
        return
    again = contact.again and not contact.answering and not contact.thinking
    s.put(e.contact_id, contact._replace(again=False) if again else contact)
    row = e.result[1] if e.result is not None else None
    if e.result is not None and row is None:
        s.maybe_due = True  # committed 'pending': due, and no claim has seen it
        _deliver(s)
    elif row is not None and s.phase is Phase.IDLE and not s.maybe_due:
        _start_sending(s, (row,), None)
    elif row is not None:
        # Rows became due while it was being written (an API message, a retry, the link back) and
        # may have committed before it: it goes back and out through a claim, oldest first, rather
        # than overtake them. (A claiming or sending phase cannot happen here while the actor
        # handles one input at a time.)
        _release(s, (row,))
        _deliver(s)
    if s.deferred and not s.answers_now and s.phase is Phase.IDLE:
        _deliver(s)
    if again:
        _schedule_think(s, e.contact_id, None, e.cid)


def _recovered(s: _Step, e: Recovered) -> None:
    """After a restart: answer what was stored but not answered, deliver what is due. Messages of
    paused or held conversations, and those no rule matches while the AI is off, are ignored at store
    time, but a crash can come between the store and that: they are ignored here, never answered."""
    for contact_id, paused, held, pending in e.contacts:
        if paused or held:
            _ignore(s, contact_id, tuple(message_id for message_id, _, _ in pending),
                    PAUSED if paused else s.settings.held_reason)
            continue
        config = s.reply_config()
        unmatched = []
        for message_id, _kind, text in pending:
            rule = rules_mod.first_match(config.rules, text)
            if rule is not None:
                _answer(s, contact_id, (message_id,), rule.reply, "rule", None)
            else:
                unmatched.append(message_id)
        if config.ai_on:
            _schedule_think(s, contact_id, None, None)
        elif unmatched:  # as at store time: nothing else would ever settle them
            _ignore(s, contact_id, tuple(unmatched), NO_ANSWER)
    if e.due_in is not None:  # retries left waiting by the previous incarnation
        _deliver_later(s, e.due_in)
    _deliver(s)


def _start(s: _Step, e: Start) -> None:
    s.effects.append(Recover())


# -- outbox ----------------------------------------------------------------------------------------


def _deliver(s: _Step) -> None:
    if not s.connected or s.phase is not Phase.IDLE:
        return
    if s.answers_now:
        # Rows written for sending at once may be committed already: a claim now could take them too
        # and send them twice. Delivery goes on once they are sent; until that claim, rows may be due
        # that it has not seen, so no later answer may overtake them.
        s.deferred = True
        s.maybe_due = True
        return
    s.deferred = False
    limit = s.settings.delivery_batch
    if s.settings.send_rate:
        wait = s.token_wait()
        if wait > 0:
            s.maybe_due = True
            _deliver_later(s, wait)
            return
        limit = max(1, min(limit, s.tokens_available()))
    # Rows sent a moment ago are still 'sending' until their record commits: not due again.
    s.phase = Phase.CLAIMING
    s.claim_limit = limit
    s.effects.append(Claim(limit, s.recording))


def _claimed(s: _Step, e: Claimed) -> None:
    if s.phase is not Phase.CLAIMING:
        _release(s, tuple(e.rows))  # cannot happen: a claim is answered at once
        return
    s.maybe_due = False
    if e.held_for is not None:
        # Held answers are released by a claim once the quota allows: the operator raising it wakes
        # the pipeline; a new day needs a timer (one, replaced by each claim that still finds some).
        at = s.now + e.held_for + HELD_MARGIN
        s.effects.append(ScheduleTimer(HELD_TIMER, at, HeldDue(at)))
    if e.due_in is not None:
        # Rows due later (retries) are timed when they fail, by this clock; the database, whose clock
        # decides, says when the next one is due: timed too, so a retry whose claim came a moment
        # early is not left until something else wakes the pipeline (found by the soak).
        _deliver_later(s, max(e.due_in, SAME_DEADLINE), DUE_SLACK)
    _start_sending(s, tuple(e.rows), s.claim_limit)


def _start_sending(s: _Step, rows: tuple, claimed: int | None) -> None:
    s.phase = Phase.SENDING
    s.sending = Sending(rows, 0, (), claimed)
    _next_row(s)


def _next_row(s: _Step) -> None:
    """Try the next row in hand; those not tried (the link went down) go back unclaimed, so no
    attempt is counted against them."""
    sending = s.sending
    assert sending is not None  # called only with rows in hand
    rows, index = sending.rows, sending.tried
    if index >= len(rows):
        _finish_sending(s)
        return
    if not s.connected:
        _release(s, rows[index:])
        _finish_sending(s)
        return
    row = rows[index]
    if row.state == "sending" and not sending.asked:
        # The last attempt's outcome is unknown (a crash or timeout mid-send): ask before resending.
        s.effects.append(CheckReceived(row))
        return
    s.take_token()
    s.effects.append(Send(row))


def _received(s: _Step, e: Received) -> None:
    sending = s.sending
    if sending is None or sending.rows[sending.tried] is not e.row:
        return
    if e.received:
        s.sending = Sending(sending.rows, sending.tried + 1, (*sending.sent, (e.row, None)), sending.claimed)
        _next_row(s)
        return
    s.sending = sending._replace(asked=True)
    s.take_token()
    s.effects.append(Send(e.row))


def _send_ok(s: _Step, e: SendOk) -> None:
    sending = s.sending
    if sending is None or sending.rows[sending.tried] is not e.row:
        return
    network_id = e.network_id if isinstance(e.network_id, str) else None
    s.sending = Sending(sending.rows, sending.tried + 1, (*sending.sent, (e.row, network_id)), sending.claimed)
    _next_row(s)


def _send_failed(s: _Step, e: SendFailed) -> None:
    sending = s.sending
    if sending is None or sending.rows[sending.tried] is not e.row:
        return
    row, exc = e.row, e.error
    attempts = row.attempts + 1
    error = str(exc) or type(exc).__name__
    if getattr(exc, "permanent", False) or attempts >= s.settings.outbox_max_attempts:
        s.effects.append(MarkFailed(row.id, error, None))
        s.effects.append(Publish("outbox.dead", {
            "outbox_id": row.id, "to": row.to_jid, "error": str(exc), "attempts": attempts}, "dead"))
        s.effects.append(Log("error", "outgoing message is a dead letter", {"outbox_id": row.id, "error": repr(exc)},
                             row.correlation_id))
    else:
        delay = s.settings.send_retry.delay(attempts, s.rng)
        s.effects.append(MarkFailed(row.id, error, delay))
        _deliver_later(s, delay)
        s.effects.append(Log("warning", "send failed; will retry", {
            "outbox_id": row.id, "retry_in": round(delay, 2), "error": repr(exc)}, row.correlation_id))
        # The customer's later messages in hand wait for this one (sent now, they would arrive before
        # it); a claim passes them over until it is sent or dead (db/pipeline_store.py).
        later = sending.rows[sending.tried + 1:]
        held = tuple(r for r in later if r.to_jid == row.to_jid)
        if held:
            _release(s, held)
            sending = sending._replace(rows=sending.rows[:sending.tried + 1]
                                       + tuple(r for r in later if r.to_jid != row.to_jid))
    s.sending = Sending(sending.rows, sending.tried + 1, sending.sent, sending.claimed)
    _next_row(s)


def _finish_sending(s: _Step) -> None:
    sending = s.sending
    assert sending is not None  # called only with rows in hand
    s.phase = Phase.IDLE
    s.sending = None
    if sending.sent:
        # The network has them: record that in one statement, in the background, so the next message
        # need not wait for it. Until it commits (or if it fails, or the process dies) the rows stay
        # 'sending': a claim leaves them out meanwhile, and later asks the network before any resend.
        s.recording = s.recording.union([row.id for row, _ in sending.sent])
        s.effects.append(MarkSent(tuple([(row.id, network_id) for row, network_id in sending.sent])))
        for row, _ in sending.sent:
            s.effects.append(Publish("message.out", {
                "outbox_id": row.id, "to": row.to_jid, "text": row.body, "wa_message_id": row.wa_message_id,
                "correlation_id": row.correlation_id,
            }, "out"))
    if sending.claimed is not None and len(sending.rows) == sending.claimed:
        s.maybe_due = True
        s.effects.append(Later(DeliverMore()))
    elif s.deferred and not s.answers_now:
        _deliver(s)


def _release(s: _Step, rows: tuple) -> None:
    s.maybe_due = True
    if rows:
        s.effects.append(Release(rows))


def _deliver_later(s: _Step, delay: float, slack: float = SAME_DEADLINE) -> None:
    """A claim is to run ``delay`` seconds from now (a retry comes due, the next token). Every such
    time is kept until it has passed: a single timer moved to a sooner time would forget the later
    one, and that row would wait for something else to wake the pipeline. A claim already timed at
    most ``slack`` later serves too."""
    at = s.now + delay
    times = s.deliver_at
    i = bisect.bisect_left(times, at)
    if i < len(times) and times[i] - at <= slack:
        return  # a claim that soon after is already timed
    s.deliver_at = (*times[:i], at, *times[i:])
    if i == 0:  # the timer moves to the new first time
        s.effects.append(ScheduleTimer(DELIVER_TIMER, at, DeliverDue(at)))


def _deliver_due(s: _Step, e: DeliverDue) -> None:
    times = s.deliver_at
    if not times or e.at != times[0]:
        return  # replaced by a sooner time, which has moved the timer on
    rest = times[max(1, bisect.bisect_right(times, s.now)):]  # one claim for every time passed
    s.deliver_at = rest
    if rest:
        s.effects.append(ScheduleTimer(DELIVER_TIMER, rest[0], DeliverDue(rest[0])))
    s.maybe_due = True
    _deliver(s)


def _deliver_more(s: _Step, e: DeliverMore) -> None:
    _deliver(s)


def _held_due(s: _Step, e: HeldDue) -> None:
    s.maybe_due = True
    _deliver(s)


def _recorded(s: _Step, e: Recorded) -> None:
    s.recording = s.recording.difference(e.outbox_ids)
    if not e.ok:  # still 'sending': a claim asks the network about them
        s.maybe_due = True
        _deliver_later(s, s.settings.recorded_retry)


def _link_up(s: _Step, e: LinkUp) -> None:
    s.connected = e.up
    s.maybe_due = True
    if e.up:
        _deliver(s)


def _wake(s: _Step, e: Wake) -> None:
    s.maybe_due = True  # an API message, a retried dead letter, a resumed conversation
    s.config = None  # rules or AI settings may have changed
    _deliver(s)


# -- receipts --------------------------------------------------------------------------------------


def _receipt(s: _Step, e: Receipt) -> None:
    s.effects.append(RecordReceipt(tuple(e.message_ids), e.status))


def _receipts_recorded(s: _Step, e: ReceiptsRecorded) -> None:
    for message_id, outbox_id, correlation_id in e.changed:
        # The receipt belongs to the work that caused the message: logged and published under its id.
        s.effects.append(Log("info", "message status", {"message_id": message_id, "status": e.status},
                             correlation_id))
        s.effects.append(Publish("message.status", {
            "message_id": message_id, "outbox_id": outbox_id, "status": e.status, "correlation_id": correlation_id}))


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


_HANDLERS: dict[type, Callable[[_Step, Any], None]] = {
    Start: _start,
    Inbound: _inbound,
    StoreRetryDue: _store_retry_due,
    StoreDone: _store_done,
    ConfigLoaded: _config_loaded,
    Recovered: _recovered,
    DebounceDue: _debounce_due,
    AiDone: _ai_done,
    Answered: _answered,
    Claimed: _claimed,
    Received: _received,
    SendOk: _send_ok,
    SendFailed: _send_failed,
    Recorded: _recorded,
    DeliverDue: _deliver_due,
    DeliverMore: _deliver_more,
    HeldDue: _held_due,
    LinkUp: _link_up,
    Wake: _wake,
    Receipt: _receipt,
    ReceiptsRecorded: _receipts_recorded,
}

INPUTS = frozenset(_HANDLERS)  # what ``transition`` takes; anything else it returns unchanged

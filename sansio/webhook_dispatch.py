"""A supervisor process's webhook dispatcher, as a pure machine: when to claim due deliveries, how
many, and when to record outcomes. ``actors/webhooks.py`` executes the effects.

- **Claims** (``Claim(limit)``) run one at a time. A wake (a new delivery was committed, a poll timer,
  a request finished) during a claim is remembered and answered by one more claim after it, so a
  burst of wakes costs one or two queries, not one each. ``limit`` is the room left under the
  process's bound on requests in flight (``concurrency``); the database keeps the per-endpoint bound
  across processes. A full claim (as many rows as asked) means more may be due: claim again.
- **Posts** (``Post(row)``) run concurrently; each ends in ``Posted(row, outcome)``.
- **Records** (``Record(results)``) also run one at a time and take every outcome waiting, so at
  1,000 deliveries a second a record is one statement for many. A record that fails is tried again
  after ``retry`` seconds with the same outcomes and any that came since (until the leases expire,
  the rows stay leased to this process; after that another process may try them again: at least
  once).
- **Spacing**: claims start at least ``gap`` seconds apart (a finished request asks for one, and at
  1,000 a second that would be a query per request); a claim asked for sooner waits on a timer.
- **Retention**: every ``prune_every`` seconds, deliveries older than the retention go
  (``Prune``; several processes pruning at once is harmless).
- **Polls**: every ``poll`` seconds a claim runs even without a wake (retries that came due, leases
  of a process that died), and after a failed claim sooner.

Time is passed in; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

POLL_TIMER = "poll"
RECORD_TIMER = "record"
CLAIM_TIMER = "claim"
PRUNE_TIMER = "prune"


# -- inputs ------------------------------------------------------------------------------------------


class Start(NamedTuple):
    pass


class Wake(NamedTuple):
    """Something may be due: a notification, the poll timer."""


class Claimed(NamedTuple):
    rows: tuple[Any, ...]
    limit: int


class ClaimFailed(NamedTuple):
    error: str


class Posted(NamedTuple):
    row: Any
    result: Any  # what the record needs: opaque here


class Recorded(NamedTuple):
    recorded: int
    disabled: tuple[Any, ...]  # (endpoint id, tenant id, reason) of endpoints disabled just now


class RecordFailed(NamedTuple):
    results: tuple[Any, ...]
    error: str


class RecordDue(NamedTuple):
    pass


# -- effects -----------------------------------------------------------------------------------------


class Claim(NamedTuple):
    limit: int


class Post(NamedTuple):
    row: Any


class Record(NamedTuple):
    results: tuple[Any, ...]


class Prune(NamedTuple):
    pass


class EndpointDisabled(NamedTuple):
    endpoint_id: str
    tenant_id: str
    reason: str


class ScheduleTimer(NamedTuple):
    name: str
    at: float
    input: Any


class Log(NamedTuple):
    level: str
    message: str
    fields: dict


@dataclasses.dataclass(frozen=True)
class Settings:
    concurrency: int = 500  # requests in flight in this process, every endpoint together
    poll: float = 1.0  # seconds between claims without a wake
    retry: float = 1.0  # seconds before a failed claim or record is tried again
    batch: int = 200  # at most this many rows per claim
    gap: float = 0.005  # seconds between the starts of two claims
    prune_every: float = 600.0  # seconds between two prunings of old deliveries


@dataclasses.dataclass
class State:
    settings: Settings
    claiming: bool = False
    again: bool = False  # a wake came during the claim
    in_flight: int = 0
    recording: bool = False
    waiting: tuple[Any, ...] = ()  # outcomes not yet handed to a record
    record_retry_due: bool = False
    last_claim_at: float = float("-inf")
    claim_timer: bool = False  # a spaced-out claim is waiting on its timer


def transition(state: State, now: float, event: Any) -> list[Any]:
    """Apply ``event`` at ``now``; the effects to run, in order."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"unknown input {type(event).__name__}")
    effects: list[Any] = []
    handler(state, now, event, effects)
    return effects


def _start(s: State, now: float, e: Start, out: list) -> None:
    _poll_later(s, now, s.settings.poll, out)
    out.append(ScheduleTimer(PRUNE_TIMER, now + s.settings.prune_every, PruneDue()))
    _claim(s, now, out)


def _wake(s: State, now: float, e: Wake, out: list) -> None:
    _claim(s, now, out)


def _poll(s: State, now: float, e: Any, out: list) -> None:
    _poll_later(s, now, s.settings.poll, out)
    _claim(s, now, out)


def _claimed(s: State, now: float, e: Claimed, out: list) -> None:
    s.claiming = False
    for row in e.rows:
        out.append(Post(row))
    s.in_flight += len(e.rows)
    if s.again or (e.rows and len(e.rows) >= e.limit):
        _claim(s, now, out)


def _claim_failed(s: State, now: float, e: ClaimFailed, out: list) -> None:
    s.claiming = False
    s.again = False
    out.append(Log("warning", "claiming webhook deliveries failed; trying again", {"error": e.error}))
    _poll_later(s, now, s.settings.retry, out)


def _posted(s: State, now: float, e: Posted, out: list) -> None:
    s.in_flight -= 1
    s.waiting = (*s.waiting, e.result)
    _record(s, out)
    # A slot is free: whatever waited for room (or for this endpoint's slot) may go now.
    _claim(s, now, out)


def _recorded(s: State, now: float, e: Recorded, out: list) -> None:
    s.recording = False
    for endpoint_id, tenant_id, reason in e.disabled:
        out.append(EndpointDisabled(str(endpoint_id), str(tenant_id), reason))
    _record(s, out)


def _record_failed(s: State, now: float, e: RecordFailed, out: list) -> None:
    s.recording = False
    s.waiting = (*e.results, *s.waiting)
    out.append(Log("warning", "recording webhook outcomes failed; trying again",
                   {"error": e.error, "outcomes": len(s.waiting)}))
    if not s.record_retry_due:
        s.record_retry_due = True
        out.append(ScheduleTimer(RECORD_TIMER, now + s.settings.retry, RecordDue()))


def _record_due(s: State, now: float, e: RecordDue, out: list) -> None:
    s.record_retry_due = False
    _record(s, out)


def _claim(s: State, now: float, out: list) -> None:
    if s.claiming:
        s.again = True
        return
    room = min(s.settings.concurrency - s.in_flight, s.settings.batch)
    if room <= 0:
        return  # a finished request claims again
    if now < s.last_claim_at + s.settings.gap:  # the timer below fires at exactly that sum
        if not s.claim_timer:
            s.claim_timer = True
            out.append(ScheduleTimer(CLAIM_TIMER, s.last_claim_at + s.settings.gap, ClaimDue()))
        return
    s.claiming = True
    s.again = False
    s.last_claim_at = now
    out.append(Claim(room))


def _prune_due(s: State, now: float, e: Any, out: list) -> None:
    out.append(Prune())
    out.append(ScheduleTimer(PRUNE_TIMER, now + s.settings.prune_every, PruneDue()))


def _claim_due(s: State, now: float, e: Any, out: list) -> None:
    s.claim_timer = False
    _claim(s, now, out)


def _record(s: State, out: list) -> None:
    if s.recording or s.record_retry_due or not s.waiting:
        return
    s.recording = True
    results, s.waiting = s.waiting, ()
    out.append(Record(results))


def _poll_later(s: State, now: float, delay: float, out: list) -> None:
    out.append(ScheduleTimer(POLL_TIMER, now + delay, PollDue()))


class PollDue(NamedTuple):
    pass


class ClaimDue(NamedTuple):
    pass


class PruneDue(NamedTuple):
    pass


_HANDLERS: dict[type, Any] = {
    Start: _start,
    Wake: _wake,
    PollDue: _poll,
    ClaimDue: _claim_due,
    PruneDue: _prune_due,
    Claimed: _claimed,
    ClaimFailed: _claim_failed,
    Posted: _posted,
    Recorded: _recorded,
    RecordFailed: _record_failed,
    RecordDue: _record_due,
}

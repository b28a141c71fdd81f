"""The soak's history checker (issue 15): what every party recorded, checked against the platform's
promises after the run. Pure: it takes plain records (read from the simulator, the database, the
stream subscribers and the webhook receivers by the soak) and returns the violations by invariant;
the goal is none.

Invariants (the names are the keys of ``Report.violations``):

- ``inbound_stored_once``: every inbound message the simulator handed over is stored, once (by its
  WhatsApp id per bot).
- ``inbound_settled``: every stored inbound message ends answered, or ignored for a documented reason.
- ``no_double_answer``: no inbound message caused two outgoing messages, the customer's phone got
  nothing from a bot that the database does not know (an answer lost and written again), and got no
  outgoing message twice (the same platform message under two network ids, or an answer to an
  answered message).
- ``conversation_order``: per conversation, the customer got the platform's messages in the order
  they were committed (the outbox's order), through retries and resends. (A rule answers at once while
  the AI still thinks about an earlier message of the same customer, so a rule's answer may come
  before an earlier question's AI answer: by design, docs/decisions.md.)
- ``stream_exactly_once``: each SSE/WebSocket subscriber saw every event of its tenant between the
  first and the last it saw exactly once, across its resumes, in id order.
- ``stream_tenant``: no subscriber saw another tenant's event.

Events a subscriber saw that the event log no longer has (tenant None) are counted in
``Report.notes["stream_notices_lost"]``, not judged: the log is a notice stream, written without
waiting for the flush, so a PostgreSQL crash (an immediate stop) can lose the last notices after
their live delivery (docs/reliability.md).
- ``send_delivered``: every message the API accepted (202, an outbox row) reached the customer's phone.
- ``webhook_at_least_once``: every committed fact has its delivery, every delivery reached its
  endpoint's receiver at least once, and none ended ``failed``. A delivery still pending with its next
  attempt scheduled (state ``retrying`` here) is counted in ``notes["webhook_retries_scheduled"]``.
- ``webhook_tenant``: no receiver got a delivery of an endpoint it does not serve.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from db.conversations import OWNER_ON_PHONE
from sansio import pipeline_machine as pm

# Why a stored message may end unanswered: the pipeline's reasons (kept in the row's payload as
# ``ignored``), or none for a kind no bot answers (stored as ignored at once).
IGNORED_REASONS = frozenset({pm.PAUSED, pm.NO_ANSWER, pm.AI_UNAVAILABLE, OWNER_ON_PHONE, None})


@dataclasses.dataclass(frozen=True)
class Handed:
    """An inbound message the simulator handed to a bot."""

    bot_id: str
    wa_message_id: str
    customer: str


@dataclasses.dataclass(frozen=True)
class Stored:
    """An inbound row in ``messages``."""

    bot_id: str
    wa_message_id: str
    message_id: str
    customer: str
    status: str  # stored | answered | ignored
    reason: str | None = None  # why ignored
    created_seq: int = 0  # its position in the conversation (created_at order)


@dataclasses.dataclass(frozen=True)
class Sent:
    """An outgoing message as the customer's phone got it (the simulator's outbox), with what the
    database says it answers (``cause``: the inbound message id, None for an API or phone message)."""

    bot_id: str
    network_id: str
    customer: str
    arrived: float
    outbox_id: str | None
    cause: str | None
    committed: int = 0  # its outbox row's position in the conversation (created_at order); 0: none


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A send the API accepted: 202 with this outbox row."""

    bot_id: str
    outbox_id: str


@dataclasses.dataclass(frozen=True)
class StreamLog:
    subscriber: str
    tenant_id: str
    seen: tuple[tuple[int, str | None], ...]  # (event id, its tenant; None: not in the log) in arrival order


@dataclasses.dataclass(frozen=True)
class WebhookLog:
    endpoint_id: str
    received: frozenset[str]  # webhook-ids the endpoint's receiver got


@dataclasses.dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    state: str


@dataclasses.dataclass
class Report:
    violations: dict[str, list[str]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    checked: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    notes: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))

    def add(self, invariant: str, what: str) -> None:
        self.violations[invariant].append(what)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self) -> dict[str, tuple[int, int]]:
        """invariant -> (cases checked, violations)."""
        names = set(self.checked) | set(self.violations)
        return {n: (self.checked.get(n, 0), len(self.violations.get(n, []))) for n in sorted(names)}


def check(handed: Iterable[Handed], stored: Iterable[Stored], sent: Iterable[Sent],
          events: dict[str, Sequence[int]], streams: Iterable[StreamLog],
          deliveries: Iterable[Delivery], webhooks: Iterable[WebhookLog], *,
          accepted: Iterable[Accepted] = (), outbox: Mapping[str, tuple[str, str | None]] | None = None,
          facts_without_delivery: Iterable[tuple[str, str]] = ()) -> Report:
    """``events``: every event id of each tenant in the event log, ascending. ``outbox``: each row's
    (state, last error), to say why an accepted send did not arrive. ``facts_without_delivery``:
    (tenant, event key) of committed facts for which no delivery row exists."""
    report = Report()
    stored = list(stored)
    sent = list(sent)
    _inbound(report, list(handed), stored)
    _outgoing(report, stored, sent)
    _sends(report, list(accepted), sent, outbox or {})
    _streams(report, events, list(streams))
    _webhooks(report, list(deliveries), list(webhooks))
    for tenant, key in facts_without_delivery:
        report.checked["webhook_at_least_once"] += 1
        report.add("webhook_at_least_once", f"{key} of tenant {tenant} has no delivery")
    return report


def _sends(report: Report, accepted: list[Accepted], sent: list[Sent],
           outbox: Mapping[str, tuple[str, str | None]]) -> None:
    arrived = {s.outbox_id for s in sent if s.outbox_id is not None}
    for a in accepted:
        report.checked["send_delivered"] += 1
        if a.outbox_id not in arrived:
            state, error = outbox.get(a.outbox_id, ("missing", None))
            report.add("send_delivered", f"outbox row {a.outbox_id} of bot {a.bot_id} never arrived"
                       f" ({state}{': ' + error if error else ''})")


def _inbound(report: Report, handed: list[Handed], stored: list[Stored]) -> None:
    rows = collections.Counter((s.bot_id, s.wa_message_id) for s in stored)
    for h in handed:
        report.checked["inbound_stored_once"] += 1
        n = rows.get((h.bot_id, h.wa_message_id), 0)
        if n != 1:
            report.add("inbound_stored_once", f"{h.wa_message_id} of bot {h.bot_id} stored {n} times")
    for s in stored:
        report.checked["inbound_settled"] += 1
        if s.status == "stored":
            report.add("inbound_settled", f"{s.message_id} never answered or ignored")
        elif s.status == "ignored" and s.reason not in IGNORED_REASONS:
            report.add("inbound_settled", f"{s.message_id} ignored for an undocumented reason {s.reason!r}")


def _outgoing(report: Report, stored: list[Stored], sent: list[Sent]) -> None:
    by_cause: dict[str, list[Sent]] = collections.defaultdict(list)
    by_outbox: dict[str, list[Sent]] = collections.defaultdict(list)
    for s in sent:
        report.checked["no_double_answer"] += 1
        if s.cause is not None:
            by_cause[s.cause].append(s)
        if s.outbox_id is not None:
            by_outbox[s.outbox_id].append(s)
    for s in sent:
        if s.outbox_id is None:
            report.add("no_double_answer", f"{s.network_id} reached {s.customer} from bot {s.bot_id} but the"
                       " database has no such outgoing message (an answer lost and written again?)")
    for cause, answers in by_cause.items():
        if len(answers) > 1:
            report.add("no_double_answer", f"{cause} answered {len(answers)} times: "
                       + ", ".join(a.network_id for a in answers))
    for outbox_id, copies in by_outbox.items():
        if len(copies) > 1:
            report.add("no_double_answer", f"outbox row {outbox_id} reached the customer {len(copies)} times")
    conversations: dict[tuple[str, str], list[tuple[float, int, str]]] = collections.defaultdict(list)
    for s in sent:
        if s.committed:
            conversations[(s.bot_id, s.customer)].append((s.arrived, s.committed, s.network_id))
    for (bot, customer), messages in conversations.items():
        report.checked["conversation_order"] += 1
        messages.sort()
        seqs = [seq for _, seq, _ in messages]
        if seqs != sorted(seqs):
            report.add("conversation_order", f"bot {bot} to {customer}: messages committed as {sorted(seqs)}"
                       f" arrived as {seqs}")


def _streams(report: Report, events: dict[str, Sequence[int]], streams: list[StreamLog]) -> None:
    for log in streams:
        report.checked["stream_exactly_once"] += 1
        report.checked["stream_tenant"] += 1
        report.notes["stream_notices_lost"] += sum(1 for _, tenant in log.seen if tenant is None)
        foreign = [i for i, tenant in log.seen if tenant is not None and tenant != log.tenant_id]
        if foreign:
            report.add("stream_tenant", f"{log.subscriber} saw another tenant's events {foreign[:5]}")
        ids = [i for i, tenant in log.seen if tenant == log.tenant_id]
        if not ids:
            continue
        counts = collections.Counter(ids)
        twice = sorted(i for i, n in counts.items() if n > 1)
        if twice:
            report.add("stream_exactly_once", f"{log.subscriber} saw {len(twice)} events twice, e.g. {twice[:5]}")
        if ids != sorted(ids):
            report.add("stream_exactly_once", f"{log.subscriber} saw events out of order")
        lo, hi = min(ids), max(ids)
        expected = [i for i in events.get(log.tenant_id, ()) if lo <= i <= hi]
        missing = sorted(set(expected) - set(ids))
        if missing:
            report.add("stream_exactly_once", f"{log.subscriber} missed {len(missing)} events, e.g. {missing[:5]}")


def _webhooks(report: Report, deliveries: list[Delivery], webhooks: list[WebhookLog]) -> None:
    received = {w.endpoint_id: w.received for w in webhooks}
    mine = collections.defaultdict(set)
    for d in deliveries:
        mine[d.endpoint_id].add(d.id)
        report.checked["webhook_at_least_once"] += 1
        if d.state == "retrying" and d.id not in received.get(d.endpoint_id, frozenset()):
            report.notes["webhook_retries_scheduled"] += 1  # pending, its next attempt scheduled: not lost
        elif d.state == "failed":
            report.add("webhook_at_least_once", f"delivery {d.id} of endpoint {d.endpoint_id} failed")
        elif d.id not in received.get(d.endpoint_id, frozenset()):
            report.add("webhook_at_least_once", f"delivery {d.id} ({d.state}) never reached {d.endpoint_id}")
    for w in webhooks:
        report.checked["webhook_tenant"] += 1
        strangers = w.received - mine.get(w.endpoint_id, set())
        if strangers:
            report.add("webhook_tenant", f"{w.endpoint_id} got {len(strangers)} deliveries not its own")

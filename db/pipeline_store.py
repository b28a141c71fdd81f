"""The message pipeline's hot statements, each able to serve many bots' calls in one round trip.

``PipelineStore`` is what a bot pipeline calls for the work every message does: store it, read what
the AI needs, queue the answer, claim due outbox rows, mark them sent. Each operation is a multi-row
statement behind a ``db.batch.Coalescer``: calls from all pipelines of the process that arrive while the
previous statement of that kind is in flight (for the same tenant) run together. A call still returns
only after its own rows are committed, with its own results, so the pipeline's guarantees are
unchanged: a message is acked only after it is stored, answered at most once (the answer claims only
rows still ``stored``), and an outbox row records the attempt before it is sent.

The single-row operations and everything off the hot path stay in ``db.conversations``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from db.batch import Coalescer
from db.conversations import ANSWERABLE_KINDS, Outgoing, Stored, new_message_id
from transports.events import MessageReceived

# -- inbound ---------------------------------------------------------------------------------------

_STORE = """
WITH i AS (
    SELECT * FROM unnest(%(bots)s::uuid[], %(jids)s::text[], %(was)s::text[], %(kinds)s::text[],
                         %(bodies)s::text[], %(payloads)s::jsonb[], %(statuses)s::text[], %(quoted)s::text[],
                         %(cids)s::text[], %(ts)s::float8[], %(wants)s::int[])
         WITH ORDINALITY AS i(bot, jid, wa, kind, body, payload, status, quoted, cid, ts, want, n)
), c AS (
    INSERT INTO contacts (bot_id, jid, last_message_at)
    SELECT DISTINCT bot, jid, now() FROM i
    ON CONFLICT (bot_id, jid) DO UPDATE SET last_message_at = now()
    RETURNING id, bot_id, jid, paused, coalesce(phone_hold_until > now(), false) AS held
), m AS (
    INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, payload, status,
                          quoted_wa_id, correlation_id, created_at)
    SELECT i.bot, c.id, 'in', i.wa, i.kind, i.body, i.payload, i.status, i.quoted, i.cid, to_timestamp(i.ts)
      FROM i JOIN c ON c.bot_id = i.bot AND c.jid = i.jid
     ORDER BY i.n
    ON CONFLICT (bot_id, wa_message_id) DO NOTHING
    RETURNING id, bot_id, wa_message_id, contact_id, kind, body, status, created_at
)/*prompt inputs*/
SELECT i.n, c.id, c.paused, m.id, c.held/*their columns*/
  FROM i JOIN c ON c.bot_id = i.bot AND c.jid = i.jid
  LEFT JOIN m ON m.bot_id = i.bot AND m.wa_message_id = i.wa/*their join*/
 ORDER BY i.n
"""

# Only when some item asks (want >= 0): what the AI needs for its contact, read in the same statement
# so an answer needs no separate read. The statement's snapshot does not see its own inserts, so the
# unanswered messages are those already stored plus the ones just inserted (from ``m``); the history
# (answered or sent messages) cannot include anything this statement wrote. Same rows, same order as
# ``_PROMPT_INPUTS`` after the commit.
_PROMPT_CTE = """, asked AS (
    SELECT c.id AS contact, max(i.want) AS lim
      FROM i JOIN c ON c.bot_id = i.bot AND c.jid = i.jid
     WHERE i.want >= 0
     GROUP BY c.id
), p AS MATERIALIZED (  -- once per statement, not once per row joined to it
    SELECT a.contact, pe.ids, pe.kinds, pe.bodies, hi.dirs, hi.texts
      FROM asked a
      CROSS JOIN LATERAL (
           SELECT array_agg(x.id::text ORDER BY x.created_at, x.id) AS ids,
                  array_agg(x.kind ORDER BY x.created_at, x.id) AS kinds,
                  array_agg(x.body ORDER BY x.created_at, x.id) AS bodies
             FROM (SELECT id, kind, body, created_at FROM messages
                    WHERE contact_id = a.contact AND direction = 'in' AND status = 'stored'
                   UNION ALL
                   SELECT id, kind, body, created_at FROM m
                    WHERE m.contact_id = a.contact AND m.status = 'stored') x) pe
      CROSS JOIN LATERAL (
           SELECT array_agg(h.direction ORDER BY h.created_at DESC, h.id DESC) AS dirs,
                  array_agg(h.body ORDER BY h.created_at DESC, h.id DESC) AS texts
             FROM (SELECT id, direction, body, created_at FROM messages
                    WHERE contact_id = a.contact AND body <> '' AND NOT (direction = 'in' AND status = 'stored')
                    ORDER BY created_at DESC, id DESC LIMIT a.lim) h) hi
)"""
_STORE_AND_PROMPT = (_STORE.replace("/*prompt inputs*/", _PROMPT_CTE)
                     .replace("/*their columns*/", ", i.want >= 0, p.ids, p.kinds, p.bodies, p.dirs, p.texts")
                     .replace("/*their join*/", "\n  LEFT JOIN p ON p.contact = c.id"))

# (bot id, event, correlation id) or (bot id, event, correlation id, history wanted: -1 for none)
StoreItem = tuple


def store_many(pool: Any, tenant_id: str, items: list[StoreItem]) -> list[Stored]:
    """Store inbound messages ``(bot id, event, correlation id[, want])``: contacts upserted, messages
    inserted idempotently by (bot, WhatsApp message id). A replay — already stored, or a second copy
    in the same batch — comes back with ``message_id`` None. An item with ``want`` >= 0 also gets its
    contact's prompt inputs (``Stored.prompt``, with ``want`` messages of history) as of the commit.
    ``Stored.paused``/``held``: the conversation is paused, or on hold since the owner wrote from
    the phone (``db.conversations.store_from_phone``), as the upsert found the contact."""
    cols: dict[str, list[Any]] = {k: [] for k in ("bots", "jids", "was", "kinds", "bodies", "payloads", "statuses",
                                                  "quoted", "cids", "ts", "wants")}
    for item in items:
        bot_id, event, correlation_id = item[0], item[1], item[2]
        kind = event.kind if event.kind in ANSWERABLE_KINDS or event.kind == "reaction" else "unsupported"
        payload = {k: v for k, v in (("caption", event.caption), ("mime_type", event.mime_type),
                                      ("media_ref", event.media_ref), ("original_kind", event.kind)) if v}
        cols["bots"].append(bot_id)
        cols["jids"].append(event.chat)
        cols["was"].append(event.message_id)
        cols["kinds"].append(kind)
        cols["bodies"].append(event.text or event.caption or "")
        cols["payloads"].append(json.dumps(payload))
        cols["statuses"].append("stored" if kind in ANSWERABLE_KINDS else "ignored")
        cols["quoted"].append(event.quoted_id)
        cols["cids"].append(correlation_id)
        cols["ts"].append(event.timestamp)
        cols["wants"].append(item[3] if len(item) > 3 and item[3] is not None and item[3] >= 0 else -1)
    asked = any(want >= 0 for want in cols["wants"])
    rows = pool.query(tenant_id, _STORE_AND_PROMPT if asked else _STORE, cols, repeatable=True)
    if len(rows) != len(items):
        raise RuntimeError(f"store: {len(rows)} rows for {len(items)} messages")
    seen: set[str] = set()
    stored = []
    for row in rows:
        contact_id, paused, message_id, held = row[1], row[2], row[3], row[4]
        if message_id is not None:
            message_id = str(message_id)
            if message_id in seen:
                message_id = None  # the same delivery twice in one batch: the first one is the message
            else:
                seen.add(message_id)
        prompt = None
        if asked and row[5]:
            ids, kinds, bodies, dirs, texts = (value or [] for value in row[6:11])
            prompt = (list(zip(ids, kinds, bodies)), list(zip(reversed(dirs), reversed(texts))))
        stored.append(Stored(message_id, str(contact_id), bool(paused), prompt, bool(held)))
    return stored


# -- what the AI needs ---------------------------------------------------------------------------

_PROMPT_INPUTS = """
WITH x AS (
    SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::int[]) WITH ORDINALITY AS x(bot, contact, lim, n)
)
SELECT x.n, true, p.id, p.kind, p.direction, p.body
  FROM x CROSS JOIN LATERAL (
       SELECT id, kind, direction, body, created_at FROM messages
        WHERE contact_id = x.contact AND direction = 'in' AND status = 'stored'
        ORDER BY created_at, id) p
UNION ALL
SELECT x.n, false, h.id, h.kind, h.direction, h.body
  FROM x CROSS JOIN LATERAL (
       SELECT id, kind, direction, body, created_at FROM messages
        WHERE contact_id = x.contact AND body <> '' AND NOT (direction = 'in' AND status = 'stored')
        ORDER BY created_at DESC, id DESC LIMIT x.lim) h
"""

PromptInputs = tuple[list[tuple[str, str, str]], list[tuple[str, str]]]


def prompt_inputs_many(pool: Any, tenant_id: str, items: list[tuple[str, str, int]]) -> list[PromptInputs]:
    """For each ``(bot id, contact id, history)``: the contact's unanswered inbound messages, oldest
    first, as (id, kind, text); and the ``history`` messages before them with text, oldest first, as
    (direction, text). One snapshot, so a message is never both."""
    rows = pool.query(tenant_id, _PROMPT_INPUTS, ([i[0] for i in items], [i[1] for i in items],
                                                  [max(0, i[2]) for i in items]))
    pending: list[list[tuple[str, str, str]]] = [[] for _ in items]
    history: list[list[tuple[str, str]]] = [[] for _ in items]
    for n, is_pending, id_, kind, direction, body in rows:
        if is_pending:
            pending[n - 1].append((str(id_), kind, body))
        else:
            history[n - 1].append((direction, body))
    # Rows come back in each lateral's order: pending oldest first, history newest first.
    return [(pending[k], list(reversed(history[k]))) for k in range(len(items))]


# -- answers ---------------------------------------------------------------------------------------

# Two statements, one transaction. First the tenant's quota row is locked, as quota_take_messages()
# (migration 0018) would lock it, so the answer's own statement takes its snapshot only once every
# message write of the tenant that got there first has committed: an API send committed while this
# statement waited for the row would otherwise be invisible to its "an older message to the customer is
# unsent" check, and the answer sent at once would overtake it (found by the fifth 30-minute soak). A
# later API send waits for this transaction, so commit order and created_at order agree.
_ANSWER = """
INSERT INTO tenant_quotas AS t (tenant_id, messages_day) VALUES (current_tenant(), (now() AT TIME ZONE 'UTC')::date)
ON CONFLICT (tenant_id) DO UPDATE SET messages_day = t.messages_day;
WITH a AS (
    SELECT * FROM unnest(%(oids)s::uuid[], %(bots)s::uuid[], %(contacts)s::uuid[], %(was)s::text[],
                         %(texts)s::text[], %(sources)s::text[], %(cids)s::text[], %(causes)s::uuid[],
                         %(now)s::boolean[])
         WITH ORDINALITY AS a(oid, bot, contact, wa, body, source, cid, cause, now, n)
), claimed AS (
    UPDATE messages m SET status = 'answered', answered_at = now(), outbox_id = x.oid
      FROM unnest(%(mids)s::uuid[], %(moids)s::uuid[]) AS x(mid, oid)
     WHERE m.id = x.mid AND m.status = 'stored'
    RETURNING x.oid
), r AS (
    SELECT a.*, row_number() OVER (ORDER BY a.n) AS k FROM a WHERE a.oid IN (SELECT oid FROM claimed)
), g AS MATERIALIZED (
    -- The day's message quota (migration 0018): the answers past it are written 'held'.
    SELECT quota_take_messages((SELECT count(*) FROM r)::int) AS granted
), o AS (
    INSERT INTO outbox (id, bot_id, contact_id, to_jid, wa_message_id, kind, body, source, correlation_id,
                        cause_message_id, created_at, state, attempts, last_error)
    SELECT r.oid, r.bot, c.id, c.jid, r.wa, 'text', r.body, r.source, r.cid, r.cause, clock_timestamp(),
           CASE WHEN r.k > g.granted THEN 'held' WHEN r.now AND NOT u.unsent THEN 'sending' ELSE 'pending' END,
           CASE WHEN r.k <= g.granted AND r.now AND NOT u.unsent THEN 1 ELSE 0 END,
           CASE WHEN r.k > g.granted THEN %(held)s END
      FROM r CROSS JOIN g JOIN contacts c ON c.id = r.contact
           -- An older message to the customer not yet sent (waiting for a retry, or held by the quota,
           -- say): this one may not overtake it, so it waits in the outbox and goes out through a claim,
           -- after it.
           CROSS JOIN LATERAL (SELECT EXISTS (
               SELECT 1 FROM outbox p WHERE p.bot_id = r.bot AND p.to_jid = c.jid
                  AND p.state IN ('pending', 'sending')) OR EXISTS (
               SELECT 1 FROM outbox p WHERE p.bot_id = r.bot AND p.to_jid = c.jid AND p.state = 'held') AS unsent) u
     ORDER BY r.n
    RETURNING id, bot_id, contact_id, to_jid, wa_message_id, body, source, correlation_id, state
), m AS (
    INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, status, correlation_id,
                          outbox_id, payload)
    SELECT o.bot_id, o.contact_id, 'out', o.wa_message_id, 'text', o.body, 'pending', o.correlation_id, o.id,
           jsonb_build_object('source', o.source)
      FROM o
    RETURNING outbox_id
)
SELECT o.id, o.state, o.to_jid, o.wa_message_id, o.body, o.correlation_id
  FROM o JOIN m ON m.outbox_id = o.id
"""

# Why an answer waits in the outbox as 'held' (its last_error until a claim releases it).
HELD_REASON = "held: the tenant's daily message quota is used up; sent when the quota allows"

# bot, contact, message ids, text, source, correlation id, and whether the caller sends it at once
Answer = tuple[str, str, list[str], str, str, str | None, bool]


def answer_many(pool: Any, tenant_id: str, items: list[Answer]) -> list[tuple[str, Outgoing | None] | None]:
    """Queue each text as the answer to its messages: the messages still unanswered are claimed and
    the outbox row (with its message id fixed now) and its outgoing message are written, all in one
    statement. Per item ``(outbox id, row)``, or None when every one of its messages was already
    answered or ignored (then nothing is queued for it).

    An item asked to be sent at once is written already claimed for sending, with the attempt
    counted — as ``claim_many`` would have done — and comes back as the ``Outgoing`` row to send
    (its ``state``/``attempts`` those before the claim, as from ``claim_many``); otherwise row is
    None and the row waits in the outbox as 'pending' — or as 'held' when the tenant's daily message
    quota is used up (migration 0018): then no claim takes it until ``claim_many`` releases it."""
    oids = [str(uuid.uuid4()) for _ in items]
    params: dict[str, Any] = {"oids": oids, "bots": [], "contacts": [], "was": [], "texts": [], "sources": [],
                              "cids": [], "causes": [], "now": [], "mids": [], "moids": [], "held": HELD_REASON}
    for oid, (bot_id, contact_id, message_ids, text, source, cid, send_now) in zip(oids, items):
        params["bots"].append(bot_id)
        params["contacts"].append(contact_id)
        params["was"].append(new_message_id())
        params["texts"].append(text)
        params["sources"].append(source)
        params["cids"].append(cid)
        params["causes"].append(message_ids[-1])
        params["now"].append(bool(send_now))
        params["mids"].extend(message_ids)
        params["moids"].extend([oid] * len(message_ids))
    written = {}
    for oid, state, to_jid, wa_id, body, cid in pool.query(tenant_id, _ANSWER, params, repeatable=True):
        oid = str(oid)
        row = Outgoing(oid, to_jid, wa_id, "text", body, "pending", 0, cid, None) if state == "sending" else None
        written[oid] = (oid, row)
    return [written.get(oid) for oid in oids]


# -- delivery --------------------------------------------------------------------------------------

# Two statements, one transaction: held rows the day's quota now allows are released first (the
# claim's own snapshot would not see them released within one statement), then the claim; a row per
# bot that still has held rows or rows waiting for a retry says, in its last two columns, when the
# next UTC day begins (NULL: none held) and in how many seconds, by this server's clock, the next
# retry is due (NULL: none waits).
_CLAIM = """
SELECT quota_release_held(%(bots)s::uuid[]);
WITH w AS (
    SELECT * FROM unnest(%(bots)s::uuid[], %(lims)s::int[]) AS w(bot, lim)
), d AS (
    SELECT o.id, o.state AS was FROM w CROSS JOIN LATERAL (
           SELECT id, state FROM outbox x
            WHERE bot_id = w.bot AND state IN ('pending', 'sending') AND next_attempt_at <= now()
              AND NOT (id = ANY(%(out)s::uuid[]))
              -- Per customer in commit order: not while an older message to them waits for a retry
              -- or is held by the quota.
              AND NOT EXISTS (
                  SELECT 1 FROM outbox p
                   WHERE p.bot_id = w.bot AND p.state IN ('pending', 'sending') AND p.next_attempt_at > now()
                     AND p.to_jid = x.to_jid AND (p.created_at, p.id) < (x.created_at, x.id))
              AND NOT EXISTS (
                  SELECT 1 FROM outbox p
                   WHERE p.bot_id = w.bot AND p.state = 'held'
                     AND p.to_jid = x.to_jid AND (p.created_at, p.id) < (x.created_at, x.id))
            ORDER BY created_at, id LIMIT w.lim) o
), c AS (
    UPDATE outbox SET state = 'sending', attempts = outbox.attempts + 1
      FROM d WHERE outbox.id = d.id AND outbox.state IN ('pending', 'sending')
    RETURNING outbox.bot_id, outbox.created_at, outbox.id, to_jid, wa_message_id, kind, body, d.was,
              outbox.attempts - 1 AS attempts, correlation_id, media_id
)
SELECT c.*, NULL::float8, NULL::float8 FROM c
UNION ALL
SELECT w.bot, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, q.held_for, q.due_in
  FROM w CROSS JOIN LATERAL (
       SELECT CASE WHEN EXISTS (SELECT 1 FROM outbox h WHERE h.bot_id = w.bot AND h.state = 'held')
                   THEN extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day'
                                           - (now() AT TIME ZONE 'UTC'))::float8 END AS held_for,
              (SELECT extract(epoch FROM min(r.next_attempt_at) - now())::float8 FROM outbox r
                WHERE r.bot_id = w.bot AND r.state IN ('pending', 'sending') AND r.next_attempt_at > now()) AS due_in
       ) q
 WHERE q.held_for IS NOT NULL OR q.due_in IS NOT NULL
"""


class ClaimedRows(list):
    """The rows a claim took for one bot, oldest first; ``held_for``: when the bot still has answers
    held by the daily message quota, the seconds until the next UTC day (when the quota allows
    again), else None; ``due_in``: when rows wait for their retry, the seconds until the first is
    due by the database's clock (which decides: ``next_attempt_at`` was set from its now()), else None."""

    held_for: float | None = None
    due_in: float | None = None


def claim_many(pool: Any, tenant_id: str, items: list[tuple[str, int, Sequence[str]]]) -> list[list[Outgoing]]:
    """For each ``(bot id, limit, ids to leave out)``: up to ``limit`` due outbox rows, oldest first,
    other than the ones left out (sent, their record still being written) and those to a customer
    whose older message waits for its retry (they go after it: a conversation's order is its commit
    order), now marked as being
    sent with the attempt counted — recorded before the send, so a crash mid-send leaves a row that
    says so. The state is checked again in the UPDATE itself: a row recorded as sent while the claim
    waited for its lock is re-read there and left alone (the CTE's check alone used the old snapshot
    and turned such a row back to 'sending'). ``Outgoing.state`` is the state before the claim:
    'sending' means an earlier attempt's outcome is unknown (ask the network before resending);
    ``attempts`` counts earlier attempts."""
    left_out = sorted({outbox_id for item in items for outbox_id in item[2]})
    rows = pool.query(tenant_id, _CLAIM, {"bots": [i[0] for i in items], "lims": [i[1] for i in items],
                                          "out": left_out},
                      repeatable=True, durable=False)  # lost in a crash, the attempt is redone under the same id
    by_bot: dict[str, ClaimedRows] = {}
    held: dict[str, float] = {}
    due: dict[str, float] = {}
    for row in sorted((r for r in rows if r[2] is not None), key=lambda r: (r[1], str(r[2]))):
        by_bot.setdefault(str(row[0]), ClaimedRows()).append(
            Outgoing(str(row[2]), row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                     None if row[10] is None else str(row[10])))
    for row in rows:
        if row[2] is None:
            if row[11] is not None:
                held[str(row[0])] = max(0.0, float(row[11]))
            if row[12] is not None:
                due[str(row[0])] = max(0.0, float(row[12]))
    # Two calls for one bot in a batch would split its rows arbitrarily: give them all to the first.
    results: list[list[Outgoing]] = []
    for item in items:
        bot = str(item[0])
        claimed = by_bot.pop(bot, None)
        if claimed is None:
            claimed = ClaimedRows()
        claimed.held_for = held.pop(bot, None)
        claimed.due_in = due.pop(bot, None)
        results.append(claimed)
    return results


_MARK_SENT = """
WITH x AS (SELECT * FROM unnest(%s::uuid[], %s::text[]) AS x(oid, nid)),
o AS (
    UPDATE outbox SET state = 'sent', sent_at = now(), last_error = NULL
      FROM x WHERE outbox.id = x.oid
    RETURNING outbox.id, x.nid
)
UPDATE messages m SET status = 'sent', wa_message_id = coalesce(o.nid, m.wa_message_id)
  FROM o WHERE m.outbox_id = o.id AND m.direction = 'out' AND m.status = 'pending'
"""


def mark_sent_many(pool: Any, tenant_id: str, items: list[tuple[str, str | None]]) -> list[None]:
    """Outbox rows ``(outbox id, id the network gave, if any)`` are sent. The outgoing message moves
    to 'sent' only from 'pending': a receipt may already have moved it further."""
    pool.execute(tenant_id, _MARK_SENT, ([i[0] for i in items], [i[1] for i in items]), repeatable=True,
                 durable=False)  # lost in a crash, the row is still 'sending': the network is asked first
    return [None] * len(items)


def release(pool: Any, tenant_id: str, rows: Sequence[Outgoing]) -> None:
    """Claimed rows that were not sent after all (the link went down): back to the state they had,
    with the attempt uncounted."""
    if rows:
        pool.execute(
            tenant_id,
            "UPDATE outbox SET state = x.was, attempts = greatest(outbox.attempts - 1, 0)"
            " FROM unnest(%s::uuid[], %s::text[]) AS x(oid, was) WHERE outbox.id = x.oid AND outbox.state = 'sending'",
            ([r.id for r in rows], [r.state for r in rows]),
            repeatable=True,
        )


# -- the shared front ------------------------------------------------------------------------------


def _store_items(bot_id: str, messages: list[tuple[MessageReceived, str | None]],
                 wants: Sequence[int] | None) -> list[StoreItem]:
    if wants is None:
        return [(bot_id, event, cid) for event, cid in messages]
    return [(bot_id, event, cid, want) for (event, cid), want in zip(messages, wants)]


MARK_SENT_GATHER = 0.02  # seconds a sent mark waits for others before its statement runs


class PipelineStore:
    """One per process, shared by every bot pipeline in it (see the module docstring)."""

    def __init__(self, pool: Any, *, max_batch: int = 200, observe: Callable[[str, int], None] | None = None) -> None:
        self.pool = pool

        def coalescer(name: str, run: Callable[[Any, str, list[Any]], Sequence[Any]], gather: float = 0.0) -> Coalescer:
            return Coalescer(name, lambda tenant, items: run(pool, tenant, items), max_batch=max_batch,
                             observe=observe, gather=gather)

        self._store = coalescer("store_inbound", store_many)
        self._prompt = coalescer("prompt_inputs", prompt_inputs_many)
        self._answer = coalescer("answer", answer_many)
        self._claim = coalescer("claim_due", claim_many)
        # Nobody waits for a sent mark (the row stays 'sending' meanwhile, which only means the network
        # is asked before any resend): it can wait a little for company.
        self._sent = coalescer("mark_sent", mark_sent_many, gather=MARK_SENT_GATHER)

    def store_inbound(self, tenant_id: str, bot_id: str, messages: list[tuple[MessageReceived, str | None]],
                      wants: Sequence[int] | None = None) -> list[Stored]:
        """``wants``: per message, how much history to read with it for the AI (-1: no prompt inputs)."""
        return self._store.call(tenant_id, _store_items(bot_id, messages, wants))

    def store_later(self, tenant_id: str, bot_id: str, messages: list[tuple[MessageReceived, str | None]],
                    wants: Sequence[int] | None,
                    on_done: Callable[[list[Stored] | None, Exception | None], None]) -> None:
        """``store_inbound`` without waiting: ``on_done(stored, None)`` once committed, or
        ``on_done(None, exception)``; called from the statement's greenlet (it must not block).
        Raises ``db.batch.Overflow`` when too much is already waiting (nothing was queued)."""
        self._store.submit(tenant_id, _store_items(bot_id, messages, wants), on_done, with_results=True)

    def prompt_inputs(self, tenant_id: str, bot_id: str, contact_id: str, history: int) -> PromptInputs:
        return self._prompt.one(tenant_id, (bot_id, contact_id, history))

    def answer_later(self, tenant_id: str, bot_id: str, contact_id: str, message_ids: list[str], text: str,
                     source: str, correlation_id: str | None, send_now: bool,
                     on_done: Callable[[tuple[str, Outgoing | None] | None, Exception | None], None]) -> None:
        """Queue the answer (see ``answer_many``, whose per-item result ``on_done`` gets): ``on_done(result,
        None)`` once committed, or
        ``on_done(None, exception)``; called from the statement's greenlet (it must not block).
        Raises ``db.batch.Overflow`` when too much is already waiting (nothing was queued)."""
        self._answer.submit(tenant_id, [(bot_id, contact_id, list(message_ids), text, source, correlation_id,
                                         send_now)],
                            lambda results, error: on_done(None if results is None else results[0], error),
                            with_results=True)

    def claim_due(self, tenant_id: str, bot_id: str, limit: int, leave_out: Sequence[str] = ()) -> list[Outgoing]:
        return self._claim.one(tenant_id, (bot_id, limit, tuple(leave_out)))

    def mark_sent_later(self, tenant_id: str, sent: list[tuple[str, str | None]],
                        on_done: Callable[[Exception | None], None]) -> None:
        """Record rows as sent (``mark_sent_many``) without waiting (and without a greenlet of the
        caller's): ``on_done(None or
        the exception)`` once the rows are recorded or not. Raises ``db.batch.Overflow`` when too much
        is already waiting (nothing was queued)."""
        self._sent.submit(tenant_id, sent, on_done=on_done)

    def release(self, tenant_id: str, rows: Sequence[Outgoing]) -> None:
        release(self.pool, tenant_id, rows)

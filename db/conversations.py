"""Data operations of the message pipeline off its hot path: recovery after a restart, ignoring,
queueing through the API, messages the owner wrote from the phone, failed sends, receipts, media
links, reply settings, outbox figures. Every function runs for one tenant under row-level security.

The statements every message goes through (store, read for the AI, answer, claim, mark sent) are
multi-row and batched in ``db.pipeline_store``; the types they share live here. Idempotency lives in
the schema: a message is unique per (bot, WhatsApp message id), so a replayed delivery inserts
nothing; an answer marks its inbound messages answered (only those still 'stored') in the same
statement as it writes the outbox row, so a message is answered at most once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
from typing import Any

from db import quotas
from db.bots import NOTIFY_CHANNEL

ANSWERABLE_KINDS = frozenset({"text", "image", "video", "document", "audio", "sticker"})

# Why a customer's message is not answered while the owner writes from the phone (``ignored`` reason).
ANSWERED_FROM_PHONE = "answered from the phone"  # it was waiting when the owner wrote
OWNER_ON_PHONE = "the owner is answering from the phone"  # it came during the hold


def new_message_id() -> str:
    """A WhatsApp-style message id, fixed before sending so a resend is recognisably the same."""
    return "3EB0" + secrets.token_hex(8).upper()


@dataclasses.dataclass(frozen=True)
class Stored:
    message_id: str | None  # None: a replayed delivery, already stored
    contact_id: str
    paused: bool
    # What the AI needs for this contact, read in the storing statement when the caller asked for it:
    # (unanswered inbound messages as (id, kind, text), oldest first; history as (direction, text),
    # oldest first) — as ``db.pipeline_store.prompt_inputs_many`` would return right after the commit.
    prompt: tuple[list[tuple[str, str, str]], list[tuple[str, str]]] | None = None
    held: bool = False  # the owner wrote from the phone: the bot holds off until phone_hold_until


def unanswered(pool: Any, tenant_id: str, contact_id: str) -> list[tuple[str, str, str]]:
    """(message id, kind, text) of the contact's inbound messages not yet answered, oldest first."""
    rows = pool.query(
        tenant_id,
        "SELECT id, kind, body FROM messages WHERE contact_id = %s AND direction = 'in' AND status = 'stored'"
        " ORDER BY created_at, id",
        (contact_id,),
    )
    return [(str(r[0]), r[1], r[2]) for r in rows]


def contacts_with_unanswered(pool: Any, tenant_id: str, bot_id: str) -> list[tuple[str, bool, bool]]:
    """(contact id, paused, on hold from the phone) of the bot's contacts with unanswered inbound
    messages: after a restart, those of paused or held conversations are not to be answered."""
    rows = pool.query(
        tenant_id,
        "SELECT c.id, c.paused, coalesce(c.phone_hold_until > now(), false) FROM contacts c WHERE c.bot_id = %s"
        " AND EXISTS (SELECT 1 FROM messages m WHERE m.contact_id = c.id AND m.direction = 'in'"
        " AND m.status = 'stored')",
        (bot_id,),
    )
    return [(str(r[0]), bool(r[1]), bool(r[2])) for r in rows]


def ignore(pool: Any, tenant_id: str, message_ids: list[str], reason: str) -> None:
    pool.execute(
        tenant_id,
        "UPDATE messages SET status = 'ignored', payload = payload || jsonb_build_object('ignored', %s)"
        " WHERE id = ANY(%s::uuid[]) AND status = 'stored'",
        (reason, message_ids),
        repeatable=True,
    )


@dataclasses.dataclass(frozen=True)
class PhoneStored:
    """A message the owner wrote from the phone, stored (``message_id`` None: it was stored before,
    e.g. the echo of a message the platform sent), and its conversation as the store left it."""

    message_id: str | None
    contact_id: str
    jid: str
    paused: bool
    paused_by: str | None
    paused_at: datetime.datetime | None
    phone_hold_until: datetime.datetime | None
    ignored: tuple[str, ...]  # the customer's waiting messages the owner's answer took off the bot


_PHONE_MESSAGE = """
WITH c AS (
    INSERT INTO contacts (bot_id, jid, last_message_at) VALUES (%(bot)s, %(jid)s, now())
    ON CONFLICT (bot_id, jid) DO UPDATE SET last_message_at = now()
    RETURNING id, jid, paused, paused_by, paused_at, phone_hold_until
), m AS (
    INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, payload, status,
                          quoted_wa_id, correlation_id, created_at)
    SELECT %(bot)s, c.id, 'out', %(wa)s, %(kind)s, %(body)s, %(payload)s, 'sent', %(quoted)s, %(cid)s,
           to_timestamp(%(ts)s)
      FROM c
    ON CONFLICT (bot_id, wa_message_id) DO NOTHING
    RETURNING id
)
SELECT c.id, c.jid, c.paused, c.paused_by, c.paused_at, c.phone_hold_until, (SELECT id FROM m) FROM c
"""

# In the same transaction, after the message was new: the contact row was already changed by the
# statement above, which is why this is a second statement (one statement cannot update a row twice).
_PHONE_HOLD = """
WITH h AS (
    UPDATE contacts SET phone_hold_until = now() + make_interval(secs => %(hold)s) WHERE id = %(contact)s
    RETURNING phone_hold_until
), ig AS (
    UPDATE messages SET status = 'ignored', payload = payload || jsonb_build_object('ignored', %(reason)s)
     WHERE contact_id = %(contact)s AND direction = 'in' AND status = 'stored'
    RETURNING id
)
SELECT (SELECT phone_hold_until FROM h), ARRAY(SELECT id::text FROM ig)
"""


def store_from_phone(pool: Any, tenant_id: str, bot_id: str, event: Any, correlation_id: str | None,
                     hold_seconds: float) -> PhoneStored:
    """Store what the owner wrote to a customer from the phone (``event``: a ``MessageReceived`` with
    ``from_me``, ``chat`` the customer) as an outgoing message of that conversation, status 'sent',
    payload ``{"source": "phone"}`` plus its media details as an inbound message has them. Idempotent
    by (bot, WhatsApp message id): the echo of a message the platform sent itself, or a redelivery,
    is stored once and changes nothing. When the message is new and ``hold_seconds`` > 0, the
    conversation is held for that long and the customer's messages still waiting for an answer are
    marked ignored (the owner answered them). One transaction."""
    kind = event.kind if event.kind in ANSWERABLE_KINDS or event.kind == "reaction" else "unsupported"
    payload = {k: v for k, v in (("source", "phone"), ("caption", event.caption), ("mime_type", event.mime_type),
                                  ("media_ref", event.media_ref), ("original_kind", event.kind)) if v}
    params = {"bot": bot_id, "jid": event.chat, "wa": event.message_id, "kind": kind,
              "body": event.text or event.caption or "", "payload": json.dumps(payload), "quoted": event.quoted_id,
              "cid": correlation_id, "ts": event.timestamp}

    def work(unit: Any) -> PhoneStored:
        contact_id, jid, paused, paused_by, paused_at, hold_until, message_id = unit.one(_PHONE_MESSAGE, params)
        ignored: list[str] = []
        if message_id is not None and hold_seconds > 0:
            hold_until, ignored = unit.one(_PHONE_HOLD, {"hold": hold_seconds, "contact": contact_id,
                                                         "reason": ANSWERED_FROM_PHONE})
        return PhoneStored(None if message_id is None else str(message_id), str(contact_id), jid, bool(paused),
                           paused_by, paused_at, hold_until, tuple(ignored))

    return pool.run(tenant_id, work, repeatable=True)


_ENQUEUE = (
    # One statement: the day's message quota (migration 0018: counted now, or nothing is written),
    # the contact (found or created by jid), the outbox row, its outgoing message row (status
    # pending, message id fixed now) and the notice that wakes the bot's pipeline.
    "WITH g AS MATERIALIZED (SELECT quota_take_messages(1) AS granted),"
    " c AS (INSERT INTO contacts (bot_id, jid) SELECT %(bot)s::uuid, %(to)s FROM g WHERE g.granted = 1"
    " ON CONFLICT (bot_id, jid) DO UPDATE SET jid = excluded.jid RETURNING id, jid),"
    " o AS (INSERT INTO outbox (bot_id, contact_id, to_jid, wa_message_id, kind, body, source, correlation_id,"
    " media_id) SELECT %(bot)s, c.id, c.jid, %(wa)s, %(kind)s, %(text)s, 'api', %(cid)s, %(media)s FROM c"
    " RETURNING id, contact_id),"
    " m AS (INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, status, correlation_id,"
    " outbox_id, payload) SELECT %(bot)s, o.contact_id, 'out', %(wa)s, %(kind)s, %(text)s, 'pending', %(cid)s,"
    " o.id, jsonb_strip_nulls(jsonb_build_object('source', 'api', 'sent_by', %(by)s::text)) FROM o RETURNING outbox_id)"
    " SELECT outbox_id, pg_notify(%(channel)s, %(bot)s::text) FROM m"
)


def enqueue(pool: Any, tenant_id: str, bot_id: str, to_jid: str, text: str, correlation_id: str | None,
            media_id: str | None = None, kind: str = "text", sent_by: str | None = None) -> str:
    """Queue a message sent through the API (to a contact by jid, created if new); the outbox id.
    ``sent_by`` names the dashboard member who wrote it (``member:<email>``), kept on the message.
    The notice wakes the pipeline of whichever supervisor process holds the bot. Raises
    ``db.quotas.QuotaExceeded`` (nothing written) when the tenant's daily message quota is used up."""
    rows = pool.query(
        tenant_id,
        _ENQUEUE,
        {"bot": bot_id, "to": to_jid, "wa": new_message_id(), "kind": kind, "text": text, "cid": correlation_id,
         "media": media_id, "channel": NOTIFY_CHANNEL, "by": sent_by},
        repeatable=False,
    )
    if not rows:
        raise quotas.messages_refused(pool, tenant_id)
    return str(rows[0][0])


@dataclasses.dataclass(frozen=True)
class Outgoing:
    id: str
    to_jid: str
    wa_message_id: str
    kind: str
    body: str
    state: str
    attempts: int
    correlation_id: str | None
    media_id: str | None


def next_due_in(pool: Any, tenant_id: str, bot_id: str) -> float | None:
    rows = pool.query(
        tenant_id,
        "SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM outbox"
        " WHERE bot_id = %s AND state IN ('pending', 'sending')",
        (bot_id,),
    )
    value = rows[0][0]
    return None if value is None else max(0.0, float(value))


def mark_failed(pool: Any, tenant_id: str, outbox_id: str, error: str, retry_in: float | None) -> None:
    """A failed attempt: pending again after ``retry_in`` seconds, or dead (``retry_in`` None)."""
    if retry_in is None:
        pool.execute(
            tenant_id,
            "WITH o AS (UPDATE outbox SET state = 'dead', last_error = %s WHERE id = %s RETURNING id)"
            " UPDATE messages SET status = 'failed' WHERE outbox_id IN (SELECT id FROM o) AND direction = 'out'",
            (error[:1000], outbox_id),
            repeatable=True,
        )
    else:
        pool.execute(
            tenant_id,
            "UPDATE outbox SET state = 'pending', last_error = %s,"
            " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
            (error[:1000], retry_in, outbox_id),
            repeatable=True,
        )


_STATUS_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3, "played": 3}


def record_receipt(
    pool: Any, tenant_id: str, bot_id: str, wa_ids: list[str], status: str
) -> list[tuple[str, str, str | None]]:
    """Move outgoing messages forward (never back: a late 'delivered' after 'read' changes nothing);
    returns (message id, outbox id, correlation id) of the rows that changed."""
    status = "read" if status == "played" else status
    if status not in _STATUS_RANK:
        return []
    lower = [s for s, rank in _STATUS_RANK.items() if rank < _STATUS_RANK[status]]
    rows = pool.query(
        tenant_id,
        "UPDATE messages SET status = %s WHERE bot_id = %s AND direction = 'out' AND wa_message_id = ANY(%s)"
        " AND status = ANY(%s) RETURNING id, outbox_id, correlation_id",
        (status, bot_id, wa_ids, lower),
        repeatable=True,
        durable=False,  # a receipt lost in a crash only leaves the status one step behind
    )
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


def set_media(pool: Any, tenant_id: str, message_id: str, media_id: str, key: str) -> None:
    pool.execute(
        tenant_id,
        "UPDATE messages SET media_key = %s, payload = payload || jsonb_build_object('media_id', %s) WHERE id = %s",
        (key, media_id, message_id),
        repeatable=True,
    )


def bot_reply_config(pool: Any, tenant_id: str, bot_id: str) -> tuple[list, dict] | None:
    rows = pool.query(tenant_id, "SELECT rules, ai FROM bots WHERE id = %s", (bot_id,))
    return (rows[0][0] or [], rows[0][1] or {}) if rows else None


def outbox_stats(pool: Any) -> dict[str, tuple[int, float]]:
    """state -> (messages, age of the oldest in seconds), across tenants (metrics only)."""
    return {r[0]: (int(r[1]), float(r[2])) for r in pool.query(None, "SELECT * FROM outbox_stats()")}

"""Data operations of the message pipeline: storing inbound messages, answering them exactly once,
the outbox's life cycle, receipts. Every function runs for one tenant under row-level security.

Idempotency lives in the schema: a message is unique per (bot, WhatsApp message id), so a replayed
delivery inserts nothing; an answer marks its inbound messages answered (only those still 'stored')
in the same transaction as it writes the outbox row, so a message is answered at most once whatever
crashes or retries happen around it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import uuid
from typing import Any

from db.bots import NOTIFY_CHANNEL
from transports.events import MessageReceived

ANSWERABLE_KINDS = frozenset({"text", "image", "video", "document", "audio", "sticker"})


def new_message_id() -> str:
    """A WhatsApp-style message id, fixed before sending so a resend is recognisably the same."""
    return "3EB0" + secrets.token_hex(8).upper()


@dataclasses.dataclass(frozen=True)
class Stored:
    message_id: str | None  # None: a replayed delivery, already stored
    contact_id: str
    paused: bool


_STORE = """
WITH c AS (
    INSERT INTO contacts (bot_id, jid, last_message_at) VALUES (%(bot)s, %(jid)s, now())
    ON CONFLICT (bot_id, jid) DO UPDATE SET last_message_at = now()
    RETURNING id, paused
), m AS (
    INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, payload, status,
                          quoted_wa_id, correlation_id, created_at)
    SELECT %(bot)s, c.id, 'in', %(wa)s, %(kind)s, %(body)s, %(payload)s, %(status)s, %(quoted)s, %(cid)s,
           to_timestamp(%(ts)s)
      FROM c
    ON CONFLICT (bot_id, wa_message_id) DO NOTHING
    RETURNING id
)
SELECT c.id, c.paused, (SELECT id FROM m) FROM c
"""


def store_inbound(pool: Any, tenant_id: str, bot_id: str, event: MessageReceived, correlation_id: str | None) -> Stored:
    """Upsert the contact and insert the message, in one statement (one round trip)."""
    kind = event.kind if event.kind in ANSWERABLE_KINDS or event.kind == "reaction" else "unsupported"
    status = "stored" if kind in ANSWERABLE_KINDS else "ignored"
    payload = {k: v for k, v in (("caption", event.caption), ("mime_type", event.mime_type),
                                  ("media_ref", event.media_ref), ("original_kind", event.kind)) if v}
    rows = pool.query(
        tenant_id,
        _STORE,
        {
            "bot": bot_id,
            "jid": event.chat,
            "wa": event.message_id,
            "kind": kind,
            "body": event.text or event.caption or "",
            "payload": json.dumps(payload),
            "status": status,
            "quoted": event.quoted_id,
            "cid": correlation_id,
            "ts": event.timestamp,
        },
        repeatable=True,
    )
    contact_id, paused, message_id = rows[0]
    return Stored(None if message_id is None else str(message_id), str(contact_id), bool(paused))


def unanswered(pool: Any, tenant_id: str, contact_id: str) -> list[tuple[str, str, str]]:
    """(message id, kind, text) of the contact's inbound messages not yet answered, oldest first."""
    rows = pool.query(
        tenant_id,
        "SELECT id, kind, body FROM messages WHERE contact_id = %s AND direction = 'in' AND status = 'stored'"
        " ORDER BY created_at, id",
        (contact_id,),
    )
    return [(str(r[0]), r[1], r[2]) for r in rows]


def contacts_with_unanswered(pool: Any, tenant_id: str, bot_id: str) -> list[str]:
    rows = pool.query(
        tenant_id,
        "SELECT DISTINCT contact_id FROM messages WHERE bot_id = %s AND direction = 'in' AND status = 'stored'",
        (bot_id,),
    )
    return [str(r[0]) for r in rows]


def history(pool: Any, tenant_id: str, contact_id: str, limit: int, before_ids: list[str]) -> list[tuple[str, str]]:
    """The conversation's last ``limit`` messages before the ones being answered: (direction, text)."""
    if limit <= 0:
        return []
    rows = pool.query(
        tenant_id,
        "SELECT direction, body FROM messages WHERE contact_id = %s AND NOT (id = ANY(%s::uuid[]))"
        " AND body <> '' ORDER BY created_at DESC, id DESC LIMIT %s",
        (contact_id, before_ids, limit),
    )
    return [(r[0], r[1]) for r in reversed(rows)]


_ANSWER = (
    # One statement: claim the messages still unanswered, and only if any were claimed write the
    # outbox row and its outgoing message (the outbox id is chosen here so the claim can point at it).
    "WITH claimed AS (UPDATE messages SET status = 'answered', answered_at = now(), outbox_id = %(outbox)s"
    " WHERE id = ANY(%(ids)s::uuid[]) AND status = 'stored' RETURNING id),"
    " c AS (SELECT id, jid FROM contacts WHERE id = %(contact)s AND EXISTS (SELECT 1 FROM claimed)),"
    " o AS (INSERT INTO outbox (id, bot_id, contact_id, to_jid, wa_message_id, kind, body, source, correlation_id,"
    " cause_message_id) SELECT %(outbox)s, %(bot)s, c.id, c.jid, %(wa)s, 'text', %(text)s, %(source)s, %(cid)s,"
    " %(cause)s FROM c RETURNING id, contact_id)"
    " INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, status, correlation_id,"
    " outbox_id, payload) SELECT %(bot)s, o.contact_id, 'out', %(wa)s, 'text', %(text)s, 'pending', %(cid)s, o.id,"
    " jsonb_build_object('source', %(source)s) FROM o RETURNING outbox_id"
)


def answer(
    pool: Any, tenant_id: str, bot_id: str, contact_id: str, message_ids: list[str], text: str, source: str,
    correlation_id: str | None,
) -> str | None:
    """Queue ``text`` as the answer to ``message_ids`` (one statement, one round trip); returns the
    outbox id, or None when every one of them was already answered (or ignored) — then nothing is
    queued."""
    rows = pool.query(
        tenant_id,
        _ANSWER,
        {"outbox": str(uuid.uuid4()), "ids": message_ids, "contact": contact_id, "bot": bot_id,
         "wa": new_message_id(), "text": text, "source": source, "cid": correlation_id, "cause": message_ids[-1]},
        repeatable=True,
    )
    return str(rows[0][0]) if rows else None


def ignore(pool: Any, tenant_id: str, message_ids: list[str], reason: str) -> None:
    pool.execute(
        tenant_id,
        "UPDATE messages SET status = 'ignored', payload = payload || jsonb_build_object('ignored', %s)"
        " WHERE id = ANY(%s::uuid[]) AND status = 'stored'",
        (reason, message_ids),
        repeatable=True,
    )


_ENQUEUE = (
    # One statement: the contact (found or created by jid), the outbox row, its outgoing message row
    # (status pending, message id fixed now) and the notice that wakes the bot's pipeline.
    "WITH c AS (INSERT INTO contacts (bot_id, jid) VALUES (%(bot)s, %(to)s)"
    " ON CONFLICT (bot_id, jid) DO UPDATE SET jid = excluded.jid RETURNING id, jid),"
    " o AS (INSERT INTO outbox (bot_id, contact_id, to_jid, wa_message_id, kind, body, source, correlation_id,"
    " media_id) SELECT %(bot)s, c.id, c.jid, %(wa)s, %(kind)s, %(text)s, 'api', %(cid)s, %(media)s FROM c"
    " RETURNING id, contact_id),"
    " m AS (INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, kind, body, status, correlation_id,"
    " outbox_id, payload) SELECT %(bot)s, o.contact_id, 'out', %(wa)s, %(kind)s, %(text)s, 'pending', %(cid)s,"
    " o.id, jsonb_build_object('source', 'api') FROM o RETURNING outbox_id)"
    " SELECT outbox_id, pg_notify(%(channel)s, %(bot)s::text) FROM m"
)


def enqueue(pool: Any, tenant_id: str, bot_id: str, to_jid: str, text: str, correlation_id: str | None,
            media_id: str | None = None, kind: str = "text") -> str:
    """Queue a message sent through the API (to a contact by jid, created if new); the outbox id.
    The notice wakes the pipeline of whichever supervisor process holds the bot."""
    rows = pool.query(
        tenant_id,
        _ENQUEUE,
        {"bot": bot_id, "to": to_jid, "wa": new_message_id(), "kind": kind, "text": text, "cid": correlation_id,
         "media": media_id, "channel": NOTIFY_CHANNEL},
        repeatable=False,
    )
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


def due(pool: Any, tenant_id: str, bot_id: str, limit: int = 50) -> list[Outgoing]:
    rows = pool.query(
        tenant_id,
        "SELECT id, to_jid, wa_message_id, kind, body, state, attempts, correlation_id, media_id FROM outbox"
        " WHERE bot_id = %s AND state IN ('pending', 'sending') AND next_attempt_at <= now()"
        " ORDER BY created_at, id LIMIT %s",
        (bot_id, limit),
    )
    return [Outgoing(str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], None if r[8] is None else str(r[8]))
            for r in rows]


def next_due_in(pool: Any, tenant_id: str, bot_id: str) -> float | None:
    rows = pool.query(
        tenant_id,
        "SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM outbox"
        " WHERE bot_id = %s AND state IN ('pending', 'sending')",
        (bot_id,),
    )
    value = rows[0][0]
    return None if value is None else max(0.0, float(value))


def mark_sending(pool: Any, tenant_id: str, outbox_id: str) -> bool:
    """Record the attempt before the send, so a crash mid-send leaves a row that says so."""
    return bool(pool.execute(
        tenant_id,
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE id = %s AND state IN ('pending', 'sending')",
        (outbox_id,),
        repeatable=True,
        durable=False,  # lost in a crash, the attempt is redone under the same message id
    ))


def mark_sent(pool: Any, tenant_id: str, outbox_id: str, network_id: str | None = None) -> None:
    pool.execute(
        tenant_id,
        "WITH o AS (UPDATE outbox SET state = 'sent', sent_at = now(), last_error = NULL WHERE id = %s"
        " RETURNING id) UPDATE messages SET status = 'sent',"
        " wa_message_id = coalesce(%s, wa_message_id) WHERE outbox_id IN (SELECT id FROM o) AND direction = 'out'",
        (outbox_id, network_id),
        repeatable=True,
        durable=False,  # lost in a crash, the row is still 'sending': the network is asked first
    )


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

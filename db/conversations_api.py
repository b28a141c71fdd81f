"""What the conversations API reads and records: conversation and message listings, taking a
conversation over (pause/resume), a bot's rules and AI settings, the outbox listing and the retry of a
dead-lettered message.

Writing an outgoing message stays in ``db.conversations.enqueue`` (the pipeline's own path); this
module only adds the API's queries. Every function takes the pool and a tenant id, so row-level
security scopes it: another tenant's ids read as missing. Every change the running pipeline must see
(a pause, new rules, a retried message) notifies ``bot_commands`` in the same transaction, so it is
picked up once committed.

Listings are keyset-paged, newest first: ``before`` is ``None``, ``(time, None)`` (strictly older than
the time) or ``(time, id)`` (after the row with that sort time and id, in the listing's order). Each
returns up to ``limit + 1`` rows, so the caller can tell whether another page follows.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from db.bots import NOTIFY_CHANNEL

Before = tuple[datetime.datetime, str | None] | None

PREVIEW_CHARS = 100

_NOTIFY = "SELECT pg_notify(%s, %s)"


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def _keyset(column: str, before: Before, id_column: str = "id") -> tuple[str, dict[str, Any]]:
    """The WHERE fragment that keeps rows after ``before`` in ``ORDER BY <column> DESC, <id> DESC``."""
    if before is None:
        return "", {}
    at, row_id = before
    if row_id is None:
        return f" AND {column} < %(before_at)s", {"before_at": at}
    return (f" AND ({column}, {id_column}) < (%(before_at)s, %(before_id)s::uuid)",
            {"before_at": at, "before_id": row_id})


# -- bots and media ------------------------------------------------------------------------------------


def bot_exists(pool: Any, tenant_id: str, bot_id: str) -> bool:
    return bool(pool.query(tenant_id, "SELECT 1 FROM bots WHERE id = %s", (bot_id,)))


def media_mime(pool: Any, tenant_id: str, media_id: str) -> str | None:
    """The MIME type of the tenant's media row, or None when there is no such row (or it is another
    tenant's)."""
    rows = pool.query(tenant_id, "SELECT mime_type FROM media WHERE id = %s", (media_id,))
    return rows[0][0] if rows else None


# -- conversations -------------------------------------------------------------------------------------

# A conversation's activity is its newest message, either direction (contacts.last_message_at only
# follows inbound ones); a contact without messages counts from when it was last written to or made.
_CONVERSATIONS = """
SELECT * FROM (
    SELECT c.id, c.jid, c.name, c.paused, c.paused_at, c.paused_by, c.created_at,
           coalesce(lm.created_at, c.last_message_at) AS last_message_at,
           lm.direction, lm.kind, left(lm.body, %(preview)s), lm.status,
           coalesce(lm.created_at, c.last_message_at, c.created_at) AS activity
      FROM contacts c
      LEFT JOIN LATERAL (
          SELECT m.direction, m.kind, m.body, m.status, m.created_at FROM messages m
           WHERE m.contact_id = c.id ORDER BY m.created_at DESC, m.id DESC LIMIT 1
      ) lm ON true
     WHERE c.bot_id = %(bot)s
) x WHERE true{keyset}
ORDER BY activity DESC, id DESC
LIMIT %(limit)s
"""


def list_conversations(pool: Any, tenant_id: str, bot_id: str, limit: int, before: Before) -> list[dict[str, Any]]:
    """The bot's conversations by latest activity, newest first; each with ``activity`` (the sort key)."""
    keyset, params = _keyset("activity", before)
    rows = pool.query(
        tenant_id,
        _CONVERSATIONS.format(keyset=keyset),
        {"bot": bot_id, "limit": limit + 1, "preview": PREVIEW_CHARS, **params},
    )
    result = []
    for r in rows:
        last = None
        if r[8] is not None:
            last = {"direction": r[8], "kind": r[9], "preview": r[10], "status": r[11]}
        result.append({
            "id": str(r[0]), "jid": r[1], "name": r[2], "paused": r[3], "paused_at": _iso(r[4]),
            "paused_by": r[5], "created_at": _iso(r[6]), "last_message_at": _iso(r[7]),
            "last_message": last, "activity": r[12],
        })
    return result


_CONTACT_COLUMNS = "id, jid, name, paused, paused_at, paused_by, last_message_at, created_at"


def _contact(row: Any) -> dict[str, Any]:
    contact = {"id": str(row[0]), "jid": row[1], "name": row[2], "paused": row[3], "paused_at": _iso(row[4]),
               "paused_by": row[5], "last_message_at": _iso(row[6]), "created_at": _iso(row[7])}
    if len(row) > 8:
        contact["phone_hold_until"] = _iso(row[8])
    return contact


def find_contact(pool: Any, tenant_id: str, bot_id: str, *, contact_id: str | None = None,
                 jid: str | None = None) -> dict[str, Any] | None:
    """The bot's contact by id or by jid, or None."""
    column, value = ("id", contact_id) if contact_id is not None else ("jid", jid)
    rows = pool.query(
        tenant_id,
        f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE bot_id = %s AND {column} = %s",
        (bot_id, value),
    )
    return _contact(rows[0]) if rows else None


def set_paused(pool: Any, tenant_id: str, bot_id: str, contact_id: str, paused: bool,
               key_hash: bytes | None, by: str | None = None) -> dict[str, Any] | None:
    """Pause (a human takes over: the bot stores but no longer answers) or resume the conversation;
    the contact, or None when it is not the bot's. Pausing a paused conversation keeps when and by whom
    it was first paused. ``paused_by`` is ``by`` (a dashboard member, ``member:<email>``) or names the
    API key (its prefix and name) that paused it. Resuming also ends a hold from the owner's phone."""

    def work(unit: Any) -> dict[str, Any] | None:
        if paused:
            row = unit.one(
                "UPDATE contacts SET paused = true,"
                " paused_at = CASE WHEN paused THEN paused_at ELSE now() END,"
                " paused_by = CASE WHEN paused THEN paused_by ELSE coalesce(%s,"
                "   (SELECT 'api-key:' || k.prefix || CASE WHEN k.name <> '' THEN ' (' || k.name || ')' ELSE '' END"
                "      FROM api_keys k WHERE k.key_hash = %s), 'api') END"
                f" WHERE id = %s AND bot_id = %s RETURNING {_CONTACT_COLUMNS}, phone_hold_until",
                (by, key_hash, contact_id, bot_id),
            )
        else:
            row = unit.one(
                "UPDATE contacts SET paused = false, paused_at = NULL, paused_by = NULL, phone_hold_until = NULL"
                f" WHERE id = %s AND bot_id = %s RETURNING {_CONTACT_COLUMNS}, phone_hold_until",
                (contact_id, bot_id),
            )
        if row is None:
            return None
        unit.execute(_NOTIFY, (NOTIFY_CHANNEL, bot_id))
        return _contact(row)

    return pool.run(tenant_id, work, repeatable=True)


def conversation_state(contact: dict[str, Any]) -> dict[str, Any]:
    """The ``conversation.state`` event's payload for a contact as ``set_paused`` returns it."""
    return {"contact_id": contact["id"], "jid": contact["jid"], "paused": contact["paused"],
            "paused_by": contact["paused_by"], "paused_at": contact["paused_at"],
            "phone_hold_until": contact.get("phone_hold_until")}


# -- messages ------------------------------------------------------------------------------------------

# An outgoing media message names its media on the outbox row; an inbound one in its payload.
_MESSAGES = """
SELECT m.id, m.direction, m.kind, m.body, m.status, m.wa_message_id, m.created_at,
       coalesce(m.payload->>'media_id', o.media_id::text), m.quoted_wa_id, m.outbox_id, m.answered_at
  FROM messages m
  LEFT JOIN outbox o ON o.id = m.outbox_id AND m.direction = 'out'
 WHERE m.contact_id = %(contact)s{keyset}
 ORDER BY m.created_at DESC, m.id DESC
 LIMIT %(limit)s
"""


def list_messages(pool: Any, tenant_id: str, contact_id: str, limit: int, before: Before) -> list[dict[str, Any]]:
    keyset, params = _keyset("m.created_at", before, "m.id")
    rows = pool.query(tenant_id, _MESSAGES.format(keyset=keyset), {"contact": contact_id, "limit": limit + 1, **params})
    return [
        {"id": str(r[0]), "direction": r[1], "kind": r[2], "text": r[3], "status": r[4], "wa_message_id": r[5],
         "created_at": _iso(r[6]), "media_id": r[7], "quoted_wa_id": r[8],
         "outbox_id": None if r[9] is None else str(r[9]), "answered_at": _iso(r[10]), "sort_at": r[6]}
        for r in rows
    ]


# -- rules and AI settings -----------------------------------------------------------------------------


def get_reply_settings(pool: Any, tenant_id: str, bot_id: str) -> tuple[Any, Any] | None:
    """(rules, ai) as stored, or None when the bot is not the tenant's."""
    rows = pool.query(tenant_id, "SELECT rules, ai FROM bots WHERE id = %s", (bot_id,))
    return (rows[0][0], rows[0][1]) if rows else None


def set_reply_setting(pool: Any, tenant_id: str, bot_id: str, column: str, value: Any,
                      audit: Callable[[Any, Any, Any], None] | None = None) -> bool:
    """Store ``rules`` or ``ai`` (already validated) and notify; False when the bot is not the tenant's.
    ``audit(unit, before, after)`` records the change in the same transaction (``web.audit``)."""
    if column not in ("rules", "ai"):
        raise ValueError(f"not a reply setting: {column!r}")

    def work(unit: Any) -> bool:
        # The value before comes back from the same statement (the row as it was, locked by the update).
        found = unit.one(
            f"WITH old AS (SELECT id, {column} AS value FROM bots WHERE id = %s FOR UPDATE)"
            f" UPDATE bots b SET {column} = %s::jsonb, updated_at = now() FROM old WHERE b.id = old.id"
            " RETURNING old.value, pg_notify(%s, b.id::text)",
            (bot_id, json.dumps(value), NOTIFY_CHANNEL))
        if found is None:
            return False
        if audit is not None:
            audit(unit, found[0], value)
        return True

    return pool.run(tenant_id, work, repeatable=True)


# -- the outbox ----------------------------------------------------------------------------------------

_OUTBOX_COLUMNS = (
    "id, bot_id, contact_id, to_jid, kind, body, media_id, state, attempts, next_attempt_at, last_error, source,"
    " wa_message_id, correlation_id, created_at, sent_at"
)


def _outbox(row: Any) -> dict[str, Any]:
    return {
        "id": str(row[0]), "bot_id": str(row[1]), "contact_id": None if row[2] is None else str(row[2]),
        "to": row[3], "kind": row[4], "text": row[5], "media_id": None if row[6] is None else str(row[6]),
        "state": row[7], "attempts": row[8], "next_attempt_at": _iso(row[9]), "last_error": row[10],
        "source": row[11], "wa_message_id": row[12], "correlation_id": row[13], "created_at": _iso(row[14]),
        "sent_at": _iso(row[15]), "sort_at": row[14],
    }


def list_outbox(pool: Any, tenant_id: str, state: str, bot_id: str | None, limit: int,
                before: Before) -> list[dict[str, Any]]:
    keyset, params = _keyset("created_at", before)
    bot_filter = " AND bot_id = %(bot)s" if bot_id is not None else ""
    rows = pool.query(
        tenant_id,
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = %(state)s{bot_filter}{keyset}"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        {"state": state, "bot": bot_id, "limit": limit + 1, **params},
    )
    return [_outbox(r) for r in rows]


def get_outbox(pool: Any, tenant_id: str, outbox_id: str) -> dict[str, Any] | None:
    rows = pool.query(tenant_id, f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = %s", (outbox_id,))
    return _outbox(rows[0]) if rows else None


def retry_dead(pool: Any, tenant_id: str, outbox_id: str) -> tuple[str, Any] | None:
    """Queue a dead-lettered message again: ("retried", row), ("conflict", its state) when it is not
    dead, or None when there is no such row. Due at once, attempts from zero; its outgoing message row
    goes back to 'pending'. The same message id is kept, so a recipient never sees it twice."""

    def work(unit: Any) -> tuple[str, Any] | None:
        row = unit.one(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL"
            f" WHERE id = %s AND state = 'dead' RETURNING {_OUTBOX_COLUMNS}",
            (outbox_id,),
        )
        if row is None:
            current = unit.one("SELECT state FROM outbox WHERE id = %s", (outbox_id,))
            return None if current is None else ("conflict", current[0])
        unit.execute(
            "UPDATE messages SET status = 'pending' WHERE outbox_id = %s AND direction = 'out'", (outbox_id,)
        )
        unit.execute(_NOTIFY, (NOTIFY_CHANNEL, str(row[1])))
        return "retried", _outbox(row)

    return pool.run(tenant_id, work, repeatable=True)

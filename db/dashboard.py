"""What the dashboard's pages read beyond the API's own queries: the inbox across a tenant's bots,
a conversation's messages with their media and quoted messages, one message (for a live update),
and retrying every dead letter of a bot. Every function runs for one tenant under row-level
security, so another tenant's ids read as missing.

Listings are keyset-paged like the API's (``db.conversations_api``): ``before`` is None or
``(time, id)`` and up to ``limit + 1`` rows come back so the caller can tell whether a page follows.
"""

from __future__ import annotations

from typing import Any

from db import events
from db.bots import NOTIFY_CHANNEL
from db.conversations_api import PREVIEW_CHARS, Before, _keyset

AWAITING_MAX = 99  # the badge counts up to this many ("99+")

# The page of conversations is chosen by activity (the newest message either way, as the API's
# listing) first; only the page's rows then count what awaits an answer: the customer's messages
# after the newest outgoing one.
_INBOX = """
WITH page AS (
    SELECT * FROM (
        SELECT c.id, c.bot_id, c.jid, c.name, c.paused, c.paused_at, c.paused_by, c.phone_hold_until,
               c.phone_hold_until > now() AS held, c.created_at,
               lm.direction, lm.kind, left(lm.body, %(preview)s) AS preview, lm.status,
               coalesce(lm.created_at, c.last_message_at, c.created_at) AS activity
          FROM contacts c
          LEFT JOIN LATERAL (
              SELECT m.direction, m.kind, m.body, m.status, m.created_at FROM messages m
               WHERE m.contact_id = c.id ORDER BY m.created_at DESC, m.id DESC LIMIT 1
          ) lm ON true
         WHERE {where}
    ) x WHERE true{keyset}
    ORDER BY activity DESC, id DESC
    LIMIT %(limit)s
)
SELECT p.*, b.name AS bot_name,
       (SELECT count(*) FROM (
            SELECT 1 FROM messages m
             WHERE m.contact_id = p.id AND m.direction = 'in'
               AND m.created_at > coalesce((SELECT max(o.created_at) FROM messages o
                                             WHERE o.contact_id = p.id AND o.direction = 'out'), '-infinity')
             LIMIT %(awaiting_max)s + 1) a) AS awaiting
  FROM page p JOIN bots b ON b.id = p.bot_id
 ORDER BY p.activity DESC, p.id DESC
"""


def _conversation(r: Any) -> dict[str, Any]:
    last = None if r["direction"] is None else {
        "direction": r["direction"], "kind": r["kind"], "preview": r["preview"], "status": r["status"]}
    return {"id": str(r["id"]), "bot_id": str(r["bot_id"]), "bot_name": r["bot_name"], "jid": r["jid"],
            "name": r["name"], "paused": r["paused"], "paused_at": r["paused_at"], "paused_by": r["paused_by"],
            "phone_hold_until": r["phone_hold_until"] if r["held"] else None, "created_at": r["created_at"],
            "last_message": last, "activity": r["activity"], "awaiting": int(r["awaiting"])}


def _rows(pool: Any, tenant_id: str, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows as dicts by column name (a read: repeated after a transient fault)."""

    def work(unit: Any) -> list[dict[str, Any]]:
        cur = unit.execute(sql, params)
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    return pool.run(tenant_id, work, repeatable=True)


def inbox(pool: Any, tenant_id: str, bot_id: str | None, limit: int, before: Before) -> list[dict[str, Any]]:
    """The tenant's conversations (or one bot's) by latest activity, newest first."""
    keyset, params = _keyset("activity", before)
    where = "c.bot_id = %(bot)s" if bot_id else "true"
    sql = _INBOX.format(where=where, keyset=keyset)
    rows = _rows(pool, tenant_id, sql, {"bot": bot_id, "limit": limit + 1, "preview": PREVIEW_CHARS,
                                        "awaiting_max": AWAITING_MAX, **params})
    return [_conversation(r) for r in rows]


def conversation(pool: Any, tenant_id: str, contact_id: str | None = None, *, bot_id: str | None = None,
                 jid: str | None = None) -> dict[str, Any] | None:
    """One conversation as the inbox lists it, by contact id or by (bot, jid); None if there is none."""
    where = "c.id = %(contact)s" if contact_id else "c.bot_id = %(bot)s AND c.jid = %(jid)s"
    rows = _rows(pool, tenant_id, _INBOX.format(where=where, keyset=""),
                 {"contact": contact_id, "bot": bot_id, "jid": jid, "limit": 1, "preview": PREVIEW_CHARS,
                  "awaiting_max": AWAITING_MAX})
    return _conversation(rows[0]) if rows else None


# A conversation's messages with what the page shows of each: the media's type, name and size (an
# inbound message names its media in its payload, an outgoing one on its outbox row), and the
# outbox's error for a failed send.
_MESSAGES = """
SELECT m.id, m.direction, m.kind, m.body, m.status, m.wa_message_id, m.created_at, m.quoted_wa_id,
       m.outbox_id, m.payload->>'source' AS source, m.payload->>'ignored' AS ignored_reason,
       m.payload->>'sent_by' AS sent_by,
       md.id AS media_id, md.mime_type, md.filename, md.size_bytes, o.last_error, o.state AS outbox_state,
       o.source AS outbox_source
  FROM messages m
  LEFT JOIN outbox o ON o.id = m.outbox_id AND m.direction = 'out'
  LEFT JOIN media md ON md.id = coalesce((m.payload->>'media_id')::uuid, o.media_id)
 WHERE m.contact_id = %(contact)s{where}
 ORDER BY m.created_at DESC, m.id DESC
 LIMIT %(limit)s
"""


def _message(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(r["id"]), "direction": r["direction"], "kind": r["kind"], "text": r["body"],
            "status": r["status"], "wa_message_id": r["wa_message_id"], "created_at": r["created_at"],
            "quoted_wa_id": r["quoted_wa_id"], "outbox_id": None if r["outbox_id"] is None else str(r["outbox_id"]),
            "source": r["outbox_source"] or r["source"], "ignored_reason": r["ignored_reason"],
            "sent_by": r["sent_by"],
            "media": None if r["media_id"] is None else {
                "id": str(r["media_id"]), "mime_type": r["mime_type"], "filename": r["filename"],
                "size_bytes": r["size_bytes"]},
            "last_error": r["last_error"], "outbox_state": r["outbox_state"]}


def messages(pool: Any, tenant_id: str, contact_id: str, limit: int, before: Before) -> list[dict[str, Any]]:
    """Newest first, up to ``limit + 1`` (the caller shows them oldest first)."""
    keyset, params = _keyset("m.created_at", before, "m.id")
    rows = _rows(pool, tenant_id, _MESSAGES.format(where=keyset), {"contact": contact_id, "limit": limit + 1, **params})
    return [_message(r) for r in rows]


def message(pool: Any, tenant_id: str, contact_id: str, *, message_id: str | None = None,
            outbox_id: str | None = None) -> dict[str, Any] | None:
    """One message of the conversation, by its id or by its outbox row's."""
    where = " AND m.id = %(mid)s" if message_id else " AND m.outbox_id = %(oid)s AND m.direction = 'out'"
    rows = _rows(pool, tenant_id, _MESSAGES.format(where=where),
                 {"contact": contact_id, "mid": message_id, "oid": outbox_id, "limit": 1})
    return _message(rows[0]) if rows else None


def quoted(pool: Any, tenant_id: str, bot_id: str, wa_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The messages quoted by others, by WhatsApp id: {wa id: {"direction", "text", "kind"}}."""
    if not wa_ids:
        return {}
    rows = pool.query(tenant_id, "SELECT wa_message_id, direction, body, kind FROM messages"
                                 " WHERE bot_id = %s AND wa_message_id = ANY(%s)", (bot_id, sorted(set(wa_ids))))
    return {r[0]: {"direction": r[1], "text": r[2], "kind": r[3]} for r in rows}


def event_high_water(pool: Any, tenant_id: str) -> int:
    """The tenant's newest event id: a page read after it reflects every event up to it, so its
    live stream resumes after it without a gap (ids commit in order)."""
    return int(pool.query(tenant_id, "SELECT coalesce(max(id), 0) FROM events")[0][0])


def recent_events(pool: Any, tenant_id: str, limit: int = 200) -> list[Any]:
    """The tenant's newest events, newest first (what the event monitor shows before live ones)."""
    return [events.row_to_event(r) for r in pool.query(
        tenant_id, "SELECT id, tenant_id, bot_id, type, payload, created_at FROM events ORDER BY id DESC LIMIT %s",
        (limit,))]


def bot_names(pool: Any, tenant_id: str) -> list[tuple[str, str]]:
    """(id, name) of the tenant's bots, oldest first (for filters and labels)."""
    return [(str(r[0]), r[1]) for r in pool.query(tenant_id, "SELECT id, name FROM bots ORDER BY created_at, id")]


def retry_all_dead(pool: Any, tenant_id: str, bot_id: str) -> int:
    """Queue every dead letter of the bot again, as ``retry_dead`` does one; how many."""

    def work(unit: Any) -> int:
        ids = [r[0] for r in unit.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL"
            " WHERE bot_id = %s AND state = 'dead' RETURNING id", (bot_id,)).fetchall()]
        if ids:
            unit.execute("UPDATE messages SET status = 'pending' WHERE outbox_id = ANY(%s::uuid[])"
                         " AND direction = 'out'", ([str(i) for i in ids],))
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, bot_id))
        return len(ids)

    return pool.run(tenant_id, work, repeatable=True)

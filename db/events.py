"""The event log: publishing (one round trip, in id-commit order) and reading it back.

``publish`` (one event) and ``publish_many`` (a tenant's events as one multi-row statement) insert
under the tenant's row-level security while holding a transaction-level advisory lock, and notify
``wabot_events`` with the highest new id in the same round trip; the lock makes ids commit in order, so
a reader that saw id N can never later find a smaller one. Each publish first calls
``event_ids_after_restart()`` (migration 0015): after a server restart the ids jump ahead, so an id a
crash lost (and a subscriber may have seen live) is never handed out again. ``after`` reads across tenants for a
process's dispatcher (owner function); ``for_tenant`` reads one tenant's backlog for resume
(RLS-scoped).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

CHANNEL = "wabot_events"
_LOCK = 7283903

# One event: a plain VALUES insert (the unnest form below costs ~25% more per single event).
_PUBLISH = (
    f"SELECT pg_advisory_xact_lock({_LOCK}), event_ids_after_restart(); "
    "WITH e AS (INSERT INTO events (bot_id, type, payload) VALUES (%s, %s, %s) RETURNING id) "
    f"SELECT id, pg_notify('{CHANNEL}', id::text) FROM e"
)

# Same lock and notification as _PUBLISH. Rows go in in ordinality order, so the serial ids follow
# the order the caller gave; RETURNING has no defined order of its own, hence the sort. One
# notification per statement is enough: listeners only take it as a cue to read what is new.
_PUBLISH_MANY = (
    f"SELECT pg_advisory_xact_lock({_LOCK}), event_ids_after_restart(); "
    "WITH e AS (INSERT INTO events (bot_id, type, payload)"
    " SELECT r.bot_id, r.type, r.payload"
    " FROM unnest(%s::uuid[], %s::text[], %s::jsonb[]) WITH ORDINALITY AS r (bot_id, type, payload, n)"
    " ORDER BY r.n RETURNING id), "
    "done AS (SELECT array_agg(id ORDER BY id) AS ids, max(id) AS high FROM e) "
    f"SELECT ids, pg_notify('{CHANNEL}', high::text) FROM done"
)


# json.dumps(payload, default=str) with the encoder made once: dumps builds a new encoder on every
# call that passes ``default``, and notices are encoded for every message in and out.
_encode = json.JSONEncoder(default=str).encode


class StoredEvent(NamedTuple):
    id: int
    tenant_id: str
    bot_id: str | None
    type: str
    payload: dict
    created_at: datetime.datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "bot_id": self.bot_id,
            "payload": self.payload,
            "created_at": self.created_at.isoformat(),
        }


def row_to_event(row: Any) -> StoredEvent:
    id_, tenant, bot, type_, payload, created = row
    return StoredEvent(int(id_), str(tenant), None if bot is None else str(bot), type_, payload, created)


def publish(pool: Any, tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> int:
    # Not waiting for the flush: see publish_many.
    rows = pool.query(tenant_id, _PUBLISH, (bot_id, event_type, _encode(payload)), repeatable=False,
                      durable=False)
    return int(rows[0][0])


def publish_many(pool: Any, tenant_id: str, rows: Sequence[tuple[str | None, str, dict]]) -> list[int]:
    """Insert ``rows`` of ``(bot_id, type, payload)`` as one statement; their ids, in the given order."""
    if not rows:
        return []
    bot_ids = [None if bot is None else str(bot) for bot, _, _ in rows]
    types = [event_type for _, event_type, _ in rows]
    payloads = [_encode(payload) for _, _, payload in rows]
    # Not waiting for the flush keeps the global ordering lock short; an event lost in a crash is a
    # notice missed, not data lost (the rows it describes are written durably). Not repeatable: a
    # statement whose outcome is unknown may have committed, and a repeat would publish twice.
    result = pool.query(tenant_id, _PUBLISH_MANY, (bot_ids, types, payloads), repeatable=False, durable=False)
    return [int(event_id) for event_id in result[0][0]]


def after(pool: Any, after_id: int, limit: int = 1000) -> list[StoredEvent]:
    return [row_to_event(r) for r in pool.query(None, "SELECT * FROM events_after(%s, %s)", (after_id, limit))]


def high_water(pool: Any) -> int:
    return int(pool.query(None, "SELECT events_high_water()")[0][0])


def for_tenant(
    pool: Any, tenant_id: str, after_id: int, up_to: int, bot_ids: frozenset | None, types: frozenset | None,
    limit: int = 1000,
) -> list[StoredEvent]:
    """One page of a tenant's events in (after_id, up_to]; narrowed by bot and exact types in SQL
    (the caller applies any prefix filter itself)."""
    sql = "SELECT id, tenant_id, bot_id, type, payload, created_at FROM events WHERE id > %s AND id <= %s"
    params: list[Any] = [after_id, up_to]
    if bot_ids:
        sql += " AND bot_id = ANY(%s::uuid[])"
        params.append(sorted(bot_ids))
    if types:
        sql += " AND type = ANY(%s)"
        params.append(sorted(types))
    sql += " ORDER BY id LIMIT %s"
    params.append(limit)
    return [row_to_event(r) for r in pool.query(tenant_id, sql, params)]


def prune(pool: Any, keep_seconds: float) -> int:
    return int(pool.query(None, "SELECT prune_events(%s)", (keep_seconds,), repeatable=False)[0][0])

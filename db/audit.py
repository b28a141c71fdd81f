"""The audit log: who changed what in a tenant (migration 0023). Append-only for the application role.

- ``record(cur, tenant_id, actor, action, object_type, object_id, before=None, after=None, ...)`` writes
  one row with whatever executes statements: a pool unit (``pool.run(tenant, work)``), so the row
  commits with the change it describes, or a psycopg2 cursor. ``before``/``after`` go through
  ``sansio.audit.clean`` (secrets redacted, large values replaced by a note).
- ``record_now(pool, ...)`` writes it in a transaction of its own, for a change already committed; its
  id is chosen here, so a retry after a lost answer writes it once.
- ``Actor`` says who: a member of the dashboard, an API key, or the operator (the CLI).

The web side (``web.audit``) fills in the actor, request id and client address of the current request.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

from sansio import audit as rules


@dataclasses.dataclass(frozen=True)
class Actor:
    kind: str  # member | api_key | operator
    id: str | None = None  # member: account id; api_key: key id; operator: None
    label: str = ""  # member: email; api_key: key prefix; operator: what ran it ("cli")
    name: str = ""  # member: display name; api_key: key name

    @classmethod
    def member(cls, account_id: str, email: str, display_name: str = "") -> Actor:
        return cls("member", str(account_id), email, display_name)

    @classmethod
    def api_key(cls, key_id: str, prefix: str, name: str = "") -> Actor:
        return cls("api_key", str(key_id), prefix, name)

    @classmethod
    def operator(cls, label: str = "cli") -> Actor:
        return cls("operator", None, label, "")


OPERATOR = Actor.operator()

_INSERT = (
    "INSERT INTO audit_log (id, tenant_id, actor_kind, actor_id, actor_label, actor_name, action, object_type,"
    " object_id, before, after, request_id, client_address)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s) ON CONFLICT (id) DO NOTHING"
)


def _json(value: Any) -> str | None:
    return rules.clean_json(value)


def _params(entry_id: str, tenant_id: str, actor: Actor, action: str, object_type: str, object_id: Any,
            before: Any, after: Any, request_id: str | None, address: str | None) -> tuple[Any, ...]:
    if actor.kind not in rules.ACTOR_KINDS:
        raise ValueError(f"unknown actor kind {actor.kind!r}")
    if not rules.valid_action(action):
        raise ValueError(f"not an audit action: {action!r} (object.verb)")
    if not rules.valid_object_type(object_type):
        raise ValueError(f"not an object type: {object_type!r}")
    return (entry_id, str(tenant_id), actor.kind, actor.id, actor.label[:320], actor.name[:200], action,
            object_type, None if object_id is None else str(object_id)[:200], _json(before), _json(after),
            None if request_id is None else request_id[:128], None if address is None else address[:100])


def record(cur: Any, tenant_id: str, actor: Actor, action: str, object_type: str, object_id: Any = None,
           before: Any = None, after: Any = None, *, request_id: str | None = None, address: str | None = None,
           entry_id: str | None = None) -> str:
    """Write one row through ``cur`` (a pool unit or a cursor, inside the change's transaction); its id."""
    entry_id = entry_id or str(uuid.uuid4())
    params = _params(entry_id, tenant_id, actor, action, object_type, object_id, before, after, request_id, address)
    cur.execute(_INSERT, params)  # checked before anything is sent
    return entry_id


def record_now(pool: Any, tenant_id: str, actor: Actor, action: str, object_type: str, object_id: Any = None,
               before: Any = None, after: Any = None, *, request_id: str | None = None,
               address: str | None = None) -> str:
    """Write one row in a transaction of its own (after the change committed); repeated safely."""
    entry_id = str(uuid.uuid4())
    params = _params(entry_id, tenant_id, actor, action, object_type, object_id, before, after, request_id, address)
    pool.execute(tenant_id, _INSERT, params, repeatable=True)  # the id makes a repeat a no-op
    return entry_id


def api_key_actor(pool: Any, tenant_id: str, key_hash: bytes) -> Actor | None:
    """The API key with this hash, as an actor (None when the tenant has no such key)."""
    rows = pool.query(tenant_id, "SELECT id, prefix, name FROM api_keys WHERE key_hash = %s", (key_hash,))
    return Actor.api_key(str(rows[0][0]), rows[0][1], rows[0][2]) if rows else None


# -- reading ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filters:
    action: str | None = None  # exact, or a prefix like "bot.*"
    actor: str | None = None  # an actor's id, email or key prefix
    object_type: str | None = None
    object_id: str | None = None
    since: datetime.datetime | None = None  # inclusive
    until: datetime.datetime | None = None  # exclusive


_COLUMNS = ("id, at, actor_kind, actor_id, actor_label, actor_name, action, object_type, object_id, before, after,"
            " request_id, client_address")

Before = tuple[datetime.datetime, str | None] | None


def _where(filters: Filters, before: Before) -> tuple[str, list[Any]]:
    clauses, params = ["true"], []
    if filters.action:
        if filters.action.endswith(".*"):
            clauses.append("left(action, %s) = %s")
            prefix = filters.action[:-1]
            params += [len(prefix), prefix]
        else:
            clauses.append("action = %s")
            params.append(filters.action)
    if filters.actor:
        clauses.append("(actor_id = %s OR lower(actor_label) = lower(%s))")
        params += [filters.actor, filters.actor]
    if filters.object_type:
        clauses.append("object_type = %s")
        params.append(filters.object_type)
    if filters.object_id:
        clauses.append("object_id = %s")
        params.append(filters.object_id)
    if filters.since is not None:
        clauses.append("at >= %s")
        params.append(filters.since)
    if filters.until is not None:
        clauses.append("at < %s")
        params.append(filters.until)
    if before is not None:
        at, row_id = before
        if row_id is None:
            clauses.append("at < %s")
            params.append(at)
        else:
            clauses.append("(at, id) < (%s, %s::uuid)")
            params += [at, row_id]
    return " AND ".join(clauses), params


def _entry(row: Any) -> dict[str, Any]:
    return {
        "id": str(row[0]), "at": row[1].isoformat(),
        "actor": {"kind": row[2], "id": row[3], "label": row[4], "name": row[5]},
        "action": row[6], "object_type": row[7], "object_id": row[8], "before": row[9], "after": row[10],
        "request_id": row[11], "client_address": row[12], "sort_at": row[1],
    }


def entries(pool: Any, tenant_id: str, filters: Filters, limit: int, before: Before = None) -> list[dict[str, Any]]:
    """Up to ``limit + 1`` rows, newest first (one more than a page says whether another follows)."""
    where, params = _where(filters, before)
    rows = pool.query(tenant_id, f"SELECT {_COLUMNS} FROM audit_log WHERE {where} ORDER BY at DESC, id DESC LIMIT %s",
                      (*params, limit + 1))
    return [_entry(row) for row in rows]


def prune(pool: Any) -> int:
    """Remove every tenant's rows older than the retention the owner stored (AUDIT_RETENTION)."""
    return int(pool.query(None, "SELECT prune_audit_log()", repeatable=False)[0][0])

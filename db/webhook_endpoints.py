"""Data access for a tenant's webhook endpoints and their delivery log: what the API and the dashboard
read and change. The delivery workers' side (claim, record, retention) is ``db.webhook_deliveries``.

Every function takes the pool and a tenant id, so row-level security scopes it: another tenant's
endpoint or delivery reads as missing (None), never as forbidden. Deliveries of facts are written by
the migration's triggers; this module writes only the test event and replays. Each of those notifies
``wabot_webhooks`` in its own transaction, so the workers look at once (they also poll).

A secret leaves this module only from ``create`` and ``rotate_secret``: the endpoint's view has no
secret in it.

Listings are newest first and keyset-paged like the API's others (``before``: None, ``(time, None)``
or ``(time, id)``), returning up to ``limit + 1`` rows so the caller can tell whether a page follows.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from sansio.webhooks import ROTATION_OVERLAP, new_secret

NOTIFY = "SELECT pg_notify('wabot_webhooks', '')"
TEST_MESSAGE = "a test event from the dashboard/API"
STATES = ("pending", "delivering", "delivered", "failed")

Before = tuple[datetime.datetime, str | None] | None

_ENDPOINT = (
    "e.id, e.url, e.description, e.event_types, e.bot_ids::text[], e.enabled, e.failing_since, e.disabled_at,"
    " e.disabled_reason, CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_until END,"
    " e.created_at, e.updated_at,"
    # One count per state, so each is answered from its partial index, never the endpoint's whole log.
    " (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'pending')"
    " + (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'delivering'),"
    " (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'failed')"
)
_ENDPOINT_KEYS = ("id", "url", "description", "event_types", "bot_ids", "enabled", "failing_since", "disabled_at",
                  "disabled_reason", "previous_secret_valid_until", "created_at", "updated_at",
                  "pending_deliveries", "failed_deliveries")

_DELIVERY = ("d.id, d.endpoint_id, d.type, d.bot_id, d.state, d.attempts, d.next_attempt_at, d.last_status,"
             " d.last_error, d.occurred_at, d.created_at, d.delivered_at")
_DELIVERY_KEYS = ("id", "endpoint_id", "type", "bot_id", "state", "attempts", "next_attempt_at", "last_status",
                  "last_error", "occurred_at", "created_at", "delivered_at")


class Conflict(Exception):
    """The change cannot be made in the row's present state; the message says why."""


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def _endpoint(row: Sequence[Any]) -> dict[str, Any]:
    data = {key: _iso(value) for key, value in zip(_ENDPOINT_KEYS, row)}
    data["id"] = str(data["id"])
    data["event_types"] = list(data["event_types"])
    data["bot_ids"] = None if data["bot_ids"] is None else [str(b) for b in data["bot_ids"]]
    return data


def _delivery(row: Sequence[Any]) -> dict[str, Any]:
    data = dict(zip(_DELIVERY_KEYS, row))
    data["sort_at"] = data["created_at"]  # the keyset's value, as the database has it
    for key in ("next_attempt_at", "occurred_at", "created_at", "delivered_at"):
        data[key] = _iso(data[key])
    for key in ("id", "endpoint_id", "bot_id"):
        data[key] = None if data[key] is None else str(data[key])
    if data["state"] != "pending":
        data["next_attempt_at"] = None  # only a pending delivery is due at some time
    return data


# -- endpoints ---------------------------------------------------------------------------------------


def missing_bots(pool: Any, tenant_id: str, bot_ids: Sequence[str]) -> list[int]:
    """The indexes in ``bot_ids`` that name none of the tenant's bots."""
    rows = pool.query(tenant_id, "SELECT id FROM bots WHERE id = ANY (%s::uuid[])", (list(bot_ids),))
    found = {str(r[0]) for r in rows}
    return [i for i, bot in enumerate(bot_ids) if bot not in found]


def create(pool: Any, tenant_id: str, url: str, description: str, event_types: Sequence[str],
           bot_ids: Sequence[str] | None, enabled: bool) -> tuple[dict[str, Any], str]:
    """A new endpoint and its secret (the one time it is handed out)."""
    secret = new_secret()
    rows = pool.query(
        tenant_id,
        "WITH e AS (INSERT INTO webhook_endpoints (url, description, event_types, bot_ids, enabled, secret)"
        " VALUES (%s, %s, %s, %s::uuid[], %s, %s) RETURNING *)"
        f" SELECT {_ENDPOINT} FROM e",
        (url, description, list(event_types), None if bot_ids is None else list(bot_ids), enabled, secret),
        repeatable=False,
    )
    return _endpoint(rows[0]), secret


def list_all(pool: Any, tenant_id: str) -> list[dict[str, Any]]:
    rows = pool.query(tenant_id, f"SELECT {_ENDPOINT} FROM webhook_endpoints e ORDER BY e.created_at, e.id")
    return [_endpoint(r) for r in rows]


def get(pool: Any, tenant_id: str, endpoint_id: str) -> dict[str, Any] | None:
    rows = pool.query(tenant_id, f"SELECT {_ENDPOINT} FROM webhook_endpoints e WHERE e.id = %s", (endpoint_id,))
    return _endpoint(rows[0]) if rows else None


def disabled(pool: Any, tenant_id: str) -> list[dict[str, Any]]:
    """Endpoints the platform turned off (410 Gone, or failing too long), for the dashboard's notice;
    one switched off by a person is not news."""
    rows = pool.query(tenant_id, f"SELECT {_ENDPOINT} FROM webhook_endpoints e"
                                 " WHERE NOT e.enabled AND e.disabled_at IS NOT NULL ORDER BY e.disabled_at DESC")
    return [_endpoint(r) for r in rows]


_UNSET: Any = object()


def update(pool: Any, tenant_id: str, endpoint_id: str, *, url: str | None = None, description: str | None = None,
           event_types: Sequence[str] | None = None, bot_ids: Sequence[str] | None = _UNSET,
           enabled: bool | None = None) -> dict[str, Any] | None:
    """Change what is given (``bot_ids=None`` means every bot; leave it out to keep it). Enabling an
    endpoint clears why and since when it was off and failing: it starts afresh, and what was
    pending is delivered. The endpoint, or None when it is not the tenant's."""
    sets: list[str] = ["updated_at = now()"]
    params: list[Any] = []
    for column, value in (("url", url), ("description", description)):
        if value is not None:
            sets.append(f"{column} = %s")
            params.append(value)
    if event_types is not None:
        sets.append("event_types = %s")
        params.append(list(event_types))
    if bot_ids is not _UNSET:
        sets.append("bot_ids = %s::uuid[]")
        params.append(None if bot_ids is None else list(bot_ids))
    if enabled is True:
        sets.append("enabled = true, disabled_at = NULL, disabled_reason = '', failing_since = NULL")
    elif enabled is False:
        sets.append("enabled = false")

    def work(unit: Any) -> dict[str, Any] | None:
        row = unit.one(
            f"WITH e AS (UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = %s RETURNING *)"
            f" SELECT {_ENDPOINT} FROM e",
            (*params, endpoint_id),
        )
        if row is not None and enabled:
            unit.execute(NOTIFY)  # pending deliveries are due again
        return None if row is None else _endpoint(row)

    return pool.run(tenant_id, work, repeatable=True)


def delete(pool: Any, tenant_id: str, endpoint_id: str) -> bool:
    """Remove the endpoint with its log (the deliveries and attempts cascade)."""
    return bool(pool.execute(tenant_id, "DELETE FROM webhook_endpoints WHERE id = %s", (endpoint_id,),
                             repeatable=True))


def rotate_secret(pool: Any, tenant_id: str, endpoint_id: str) -> tuple[dict[str, Any], str] | None:
    """A new secret; the current one becomes the previous and keeps signing for ``ROTATION_OVERLAP``
    seconds, so the receiver can switch without losing a request. (endpoint, new secret) or None."""
    secret = new_secret()
    rows = pool.query(
        tenant_id,
        "WITH e AS (UPDATE webhook_endpoints SET previous_secret = secret,"
        " previous_secret_until = now() + make_interval(secs => %s), secret = %s, updated_at = now()"
        f" WHERE id = %s RETURNING *) SELECT {_ENDPOINT} FROM e",
        (ROTATION_OVERLAP, secret, endpoint_id),
        repeatable=False,
    )
    return (_endpoint(rows[0]), secret) if rows else None


def send_test(pool: Any, tenant_id: str, endpoint_id: str) -> dict[str, Any] | None:
    """Queue a ``webhook.test`` delivery to the endpoint, whatever its event types; None when there is
    no such endpoint; Conflict when it is disabled (nothing would send it)."""

    def work(unit: Any) -> dict[str, Any] | None:
        found = unit.one("SELECT enabled FROM webhook_endpoints WHERE id = %s FOR SHARE", (endpoint_id,))
        if found is None:
            return None
        if not found[0]:
            raise Conflict("the endpoint is disabled: enable it to send a test event")
        row = unit.one(
            "INSERT INTO webhook_deliveries AS d (tenant_id, endpoint_id, event_key, type, data, next_attempt_at)"
            " VALUES (%s, %s, 'webhook.test:' || gen_random_uuid(), 'webhook.test', %s, now())"
            f" RETURNING {_DELIVERY}, d.data",
            (tenant_id, endpoint_id, json.dumps({"endpoint_id": endpoint_id, "message": TEST_MESSAGE})),
        )
        unit.execute(NOTIFY)
        return _with_data(row)

    return pool.run(tenant_id, work, repeatable=False)


# -- the delivery log --------------------------------------------------------------------------------


def list_deliveries(pool: Any, tenant_id: str, endpoint_id: str, *, state: str | None, type_pattern: str | None,
                    since: datetime.datetime | None, until: datetime.datetime | None, limit: int,
                    before: Before) -> list[dict[str, Any]] | None:
    """The endpoint's deliveries, newest first, each with its attempts (oldest first); None when there
    is no such endpoint. ``since`` is inclusive, ``until`` exclusive, both on ``created_at``;
    ``type_pattern`` is an exact type or ``prefix.*``."""
    where, params = ["d.endpoint_id = %(endpoint)s"], {"endpoint": endpoint_id, "limit": limit + 1}
    if state is not None:
        where.append("d.state = %(state)s")
        params["state"] = state
    if type_pattern is not None:
        where.append("webhook_type_matches(ARRAY[%(type)s], d.type)")
        params["type"] = type_pattern
    if since is not None:
        where.append("d.created_at >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("d.created_at < %(until)s")
        params["until"] = until
    if before is not None:
        at, row_id = before
        params["before_at"] = at
        if row_id is None:
            where.append("d.created_at < %(before_at)s")
        else:
            where.append("(d.created_at, d.id) < (%(before_at)s, %(before_id)s::uuid)")
            params["before_id"] = row_id

    def work(unit: Any) -> list[dict[str, Any]] | None:
        if unit.one("SELECT 1 FROM webhook_endpoints WHERE id = %s", (endpoint_id,)) is None:
            return None
        rows = [_delivery(r) for r in unit.all(
            f"SELECT {_DELIVERY} FROM webhook_deliveries d WHERE {' AND '.join(where)}"
            " ORDER BY d.created_at DESC, d.id DESC LIMIT %(limit)s", params)]
        attempts = _attempts(unit, [r["id"] for r in rows])
        for row in rows:
            row["attempt_log"] = attempts.get(row["id"], [])
        return rows

    return pool.run(tenant_id, work, repeatable=True)


def get_delivery(pool: Any, tenant_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any] | None:
    """One delivery with its data and attempts; None when it is not this endpoint's (or the tenant's)."""

    def work(unit: Any) -> dict[str, Any] | None:
        row = unit.one(f"SELECT {_DELIVERY}, d.data FROM webhook_deliveries d WHERE d.id = %s AND d.endpoint_id = %s",
                       (delivery_id, endpoint_id))
        if row is None:
            return None
        found = _with_data(row)
        found["attempt_log"] = _attempts(unit, [found["id"]]).get(found["id"], [])
        return found

    return pool.run(tenant_id, work, repeatable=True)


def _with_data(row: Sequence[Any]) -> dict[str, Any]:
    found = _delivery(row[:-1])
    found["data"] = row[-1]
    found.pop("sort_at")
    found["attempt_log"] = []
    return found


def _attempts(unit: Any, delivery_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not delivery_ids:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    for delivery, at, ms, status, error, head in unit.all(
            "SELECT delivery_id, attempted_at, duration_ms, status_code, error, response_head FROM webhook_attempts"
            " WHERE delivery_id = ANY (%s::uuid[]) ORDER BY delivery_id, id", (delivery_ids,)):
        found.setdefault(str(delivery), []).append({"attempted_at": _iso(at), "duration_ms": round(ms, 1),
                                                    "status_code": status, "error": error, "response_head": head})
    return found


def replay(pool: Any, tenant_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any] | None:
    """Send a delivery again (same webhook-id, attempts from zero, due now), whatever its outcome so
    far; None when there is no such delivery; Conflict while a request for it is in flight or the
    endpoint is disabled."""

    def work(unit: Any) -> dict[str, Any] | None:
        found = unit.one(
            "SELECT d.state, e.enabled FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " WHERE d.id = %s AND d.endpoint_id = %s FOR UPDATE OF d", (delivery_id, endpoint_id))
        if found is None:
            return None
        state, enabled = found
        if not enabled:
            raise Conflict("the endpoint is disabled: enable it first, then replay")
        if state == "delivering":
            raise Conflict("a request for this delivery is in flight right now; replay it once it has an outcome")
        row = unit.one(
            "UPDATE webhook_deliveries d SET state = 'pending', attempts = 0, next_attempt_at = now(),"
            f" last_error = NULL WHERE d.id = %s RETURNING {_DELIVERY}, d.data", (delivery_id,))
        unit.execute(NOTIFY)
        replayed = _with_data(row)
        replayed["attempt_log"] = _attempts(unit, [replayed["id"]]).get(replayed["id"], [])
        return replayed

    return pool.run(tenant_id, work, repeatable=True)


def replay_failed(pool: Any, tenant_id: str, endpoint_id: str, since: datetime.datetime | None,
                  until: datetime.datetime | None) -> int | None:
    """Replay every failed delivery of the endpoint created in [since, until); the count, None when
    there is no such endpoint, Conflict when it is disabled."""

    def work(unit: Any) -> int | None:
        found = unit.one("SELECT enabled FROM webhook_endpoints WHERE id = %s FOR SHARE", (endpoint_id,))
        if found is None:
            return None
        if not found[0]:
            raise Conflict("the endpoint is disabled: enable it first, then replay")
        count: int = unit.execute(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now(),"
            " last_error = NULL WHERE endpoint_id = %(endpoint)s AND state = 'failed'"
            " AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)"
            " AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)",
            {"endpoint": endpoint_id, "since": since, "until": until}).rowcount
        if count:
            unit.execute(NOTIFY)
        return count

    return pool.run(tenant_id, work, repeatable=True)

"""The delivery workers' side of webhooks: claim due deliveries, record outcomes, read queue figures,
prune. Across tenants, through the owner's functions of migration 0012 (the workers run for no
tenant); times come from the worker's clock, so its tests can run a day on a fake one.

Claims and records are separate short transactions: a request in flight holds a lease (a row in
state ``delivering`` with ``lease_expires_at``), never a transaction or a lock. A worker that dies
leaves leases that expire; the next claim anywhere makes those rows due again (at least once).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, NamedTuple

CHANNEL = "wabot_webhooks"


class Due(NamedTuple):
    """A claimed delivery with what the request needs."""

    id: str
    tenant_id: str
    endpoint_id: str
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_until: float | None
    failing_since: float | None
    type: str
    data: Any
    occurred_at: datetime.datetime
    attempts: int  # attempts made before this one
    created_at: datetime.datetime


class Result(NamedTuple):
    """One attempt's outcome, as ``record`` writes it."""

    delivery_id: str
    outcome: str  # delivered | retry | failed | gone
    next_at: float | None
    attempted_at: float
    duration_ms: float
    status: int | None
    error: str | None
    head: str
    disable_reason: str


def _epoch(value: datetime.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _stamp(value: float | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromtimestamp(value, datetime.UTC)


def claim(pool: Any, owner: str, at: float, lease_seconds: float, max_in_flight: int, limit: int) -> list[Due]:
    # Not waiting for the flush: a claim lost in a crash of the server leaves the rows due, as they were.
    rows = pool.query(None, "SELECT * FROM webhook_claim(%s, to_timestamp(%s), %s, %s, %s)",
                      (owner, at, lease_seconds, max_in_flight, limit), repeatable=False, durable=False)
    return [Due(str(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5], _epoch(r[6]), _epoch(r[7]), r[8], r[9], r[10],
                int(r[11]), r[12]) for r in rows]


def record(pool: Any, owner: str, results: Sequence[Result]) -> list[tuple[str, str, str]]:
    """Write ``results`` in one statement; the endpoints disabled by them just now, as
    ``(endpoint id, tenant id, reason)``."""
    if not results:
        return []
    cols: list[list[Any]] = [[] for _ in range(9)]
    for r in results:
        for i, value in enumerate((r.delivery_id, r.outcome, r.next_at, r.attempted_at, r.duration_ms, r.status,
                                   r.error, r.head, r.disable_reason)):
            cols[i].append(value)
    ids, outcomes, next_at, attempted, durations, statuses, errors, heads, reasons = cols
    rows = pool.query(
        None,
        "SELECT * FROM webhook_record(%s, %s::uuid[], %s::text[], %s::timestamptz[], %s::timestamptz[],"
        " %s::float8[], %s::int[], %s::text[], %s::text[], %s::text[])",
        (owner, ids, outcomes, [_stamp(x) for x in next_at], [_stamp(x) for x in attempted], durations, statuses,
         errors, heads, reasons),
        repeatable=False,
    )
    return [(str(e), str(t), why) for e, t, why in rows if why]


def queue_stats(pool: Any) -> list[tuple[str, str, int, float]]:
    """(endpoint id, state, deliveries, oldest in seconds) of pending and in-flight deliveries."""
    return [(str(e), s, int(n), float(age)) for e, _t, s, n, age in pool.query(None, "SELECT * FROM webhook_stats()")]


def disabled_endpoints(pool: Any) -> int:
    return int(pool.query(None, "SELECT webhook_endpoints_disabled()")[0][0])


def prune(pool: Any, keep_seconds: float) -> int:
    return int(pool.query(None, "SELECT prune_webhook_deliveries(%s)", (keep_seconds,), repeatable=False)[0][0])

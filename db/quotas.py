"""Tenant quotas (issue 16), the data: the operator's limits (``tenant_quotas``, migration 0018), the
tenant's usage, and the checks made inside the transactions that create bots, queue messages and
record media — each under the lock of the tenant's quota row, so two processes cannot both take the
last bot, message or byte. What the numbers mean is ``sansio.quotas``.

Every function runs for one tenant under row-level security.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sansio import quotas as q


class QuotaExceeded(Exception):
    """An action past one of the tenant's quotas; nothing was stored. ``retry_after``: seconds until
    the quota allows again by itself (the daily message quota), else None."""

    def __init__(self, quota: str, limit: int, used: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.used = used
        self.message = message
        self.retry_after = retry_after


_READ = """
SELECT t.max_bots, t.max_messages_per_day, t.max_media_bytes,
       CASE WHEN t.messages_day = d.today THEN t.messages_sent ELSE 0 END,
       (SELECT count(*) FROM bots), (SELECT coalesce(sum(size_bytes), 0) FROM media), d.today,
       extract(epoch FROM (d.today + 1)::timestamp - (now() AT TIME ZONE 'UTC')),
       (SELECT count(*) FROM outbox WHERE state = 'held')
  FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS today) d
  LEFT JOIN tenant_quotas t ON t.tenant_id = current_tenant()
"""


def read(pool: Any, tenant_id: str) -> tuple[q.Limits, q.Usage]:
    """The tenant's limits and usage: bots it has, messages admitted this UTC day, media bytes kept,
    answers held by the daily message quota."""
    row = pool.query(tenant_id, _READ)[0]
    return (q.Limits(row[0], row[1], None if row[2] is None else int(row[2])),
            q.Usage(int(row[4]), int(row[3]), int(row[5]), row[6], int(row[8])))


_COLUMN = {q.BOTS: "max_bots", q.MESSAGES_PER_DAY: "max_messages_per_day", q.MEDIA_BYTES: "max_media_bytes"}


def set_limits(pool: Any, tenant_id: str, changes: dict[str, int | None],
               audit: Callable[[Any, Any, Any], None] | None = None) -> tuple[q.Limits, q.Limits]:
    """Change the named limits (None: no limit), keep the others; (before, after). Every bot of the
    tenant is woken (``bot_commands``): answers held by the daily message quota go once it allows.
    ``audit(unit, before, after)`` records a change in the same transaction (``db.audit``)."""
    from db.bots import NOTIFY_CHANNEL  # db.bots imports this module

    unknown = set(changes) - set(_COLUMN)
    if unknown:
        raise ValueError(f"unknown quota {sorted(unknown)[0]!r}")

    def work(unit: Any) -> tuple[q.Limits, q.Limits]:
        unit.execute("INSERT INTO tenant_quotas DEFAULT VALUES ON CONFLICT (tenant_id) DO NOTHING")
        old = unit.one("SELECT max_bots, max_messages_per_day, max_media_bytes FROM tenant_quotas FOR UPDATE")
        before = q.Limits(old[0], old[1], old[2])
        if changes:
            sets = ", ".join(f"{_COLUMN[name]} = %({name})s" for name in changes)
            unit.execute(f"UPDATE tenant_quotas SET {sets}, updated_at = now()", changes)
            unit.execute("SELECT pg_notify(%s, id::text) FROM bots", (NOTIFY_CHANNEL,))
        new = unit.one("SELECT max_bots, max_messages_per_day, max_media_bytes FROM tenant_quotas")
        after = q.Limits(new[0], new[1], new[2])
        if changes and audit is not None:
            audit(unit, dataclasses.asdict(before), dataclasses.asdict(after))
        return before, after

    return pool.run(tenant_id, work, repeatable=True)


def check_bot(unit: Any) -> None:
    """In the transaction that creates a bot, before the insert: raise QuotaExceeded when the tenant
    has as many bots as its quota allows. Locks the tenant's quota row (when it has one) until the
    transaction ends, so a creation in another process waits and then counts this bot too."""
    row = unit.one("SELECT max_bots FROM tenant_quotas FOR UPDATE")
    if row is None or row[0] is None:
        return
    used = unit.one("SELECT count(*) FROM bots")[0]
    message = q.refusal(q.BOTS, row[0], used)
    if message is not None:
        raise QuotaExceeded(q.BOTS, row[0], used, message)


def check_media(unit: Any, size: int) -> None:
    """In the transaction that records an upload of ``size`` bytes: raise QuotaExceeded when the
    tenant's media would go past its quota (locked as for ``check_bot``)."""
    row = unit.one("SELECT max_media_bytes FROM tenant_quotas FOR UPDATE")
    if row is None or row[0] is None:
        return
    used = int(unit.one("SELECT coalesce(sum(size_bytes), 0) FROM media")[0])
    message = q.refusal(q.MEDIA_BYTES, int(row[0]), used, size)
    if message is not None:
        raise QuotaExceeded(q.MEDIA_BYTES, int(row[0]), used, message)


def media_room(pool: Any, tenant_id: str) -> tuple[int | None, int]:
    """(the media quota or None, bytes kept): for refusing an upload whose length is known before
    any of it is stored."""
    limits, usage = read(pool, tenant_id)
    return limits.media_bytes, usage.media_bytes


def messages_refused(pool: Any, tenant_id: str) -> QuotaExceeded:
    """The error for a message the daily quota did not admit (``quota_take_messages`` granted none)."""
    row = pool.query(tenant_id, _READ)[0]
    limit, used = row[1], int(row[3])
    if limit is None:  # raised meanwhile to no limit: say what happened anyway
        limit = used
    message = q.refusal(q.MESSAGES_PER_DAY, limit, used) or "the tenant's daily message quota is used up"
    return QuotaExceeded(q.MESSAGES_PER_DAY, limit, used, message, max(1.0, float(row[7])))

"""``python run.py tenant quota ID [--bots N] [--messages-per-day N] [--media-bytes N]``: the operator
shows or sets a tenant's quotas. No option: the quotas and the usage. ``0`` or ``none``: no limit.
Exit 0 done, 1 unknown tenant, 2 bad input (nothing changed)."""

from __future__ import annotations

import sys
import uuid
from typing import Any

from db import audit as audit_db
from db import quotas as quotas_db
from sansio import quotas as q


def main(system: Any, args: Any) -> int:
    try:
        tenant_id = str(uuid.UUID(args.tenant_id))
    except ValueError:
        print(f"not a tenant id: {args.tenant_id!r}", file=sys.stderr)
        return 2
    changes: dict[str, int | None] = {}
    for quota in q.QUOTAS:
        value = getattr(args, quota)
        if value is not None:
            try:
                changes[quota] = q.parse_limit(quota, value)
            except ValueError as exc:
                print(f"invalid quota: {exc}", file=sys.stderr)
                return 2
    pool = system.pool
    if not pool.query(tenant_id, "SELECT 1 FROM tenants WHERE id = %s", (tenant_id,)):
        print(f"no tenant {tenant_id}", file=sys.stderr)
        return 1
    if changes:
        def record(unit: Any, old: Any, new: Any) -> None:
            audit_db.record(unit, tenant_id, audit_db.OPERATOR, "tenant.quota", "tenant", tenant_id, old, new)

        before, after = quotas_db.set_limits(pool, tenant_id, changes, audit=record)
        for quota in changes:
            print(f"{quota.replace('_', '-')}: {q.describe(getattr(before, quota))} -> "
                  f"{q.describe(getattr(after, quota))}")
    limits, usage = quotas_db.read(pool, tenant_id)
    print(f"tenant {tenant_id}")
    print(f"  bots              {usage.bots} of {q.describe(limits.bots)}")
    print(f"  messages-per-day  {usage.messages_today} today (UTC) of {q.describe(limits.messages_per_day)}")
    print(f"  media-bytes       {usage.media_bytes} of {q.describe(limits.media_bytes)}")
    return 0

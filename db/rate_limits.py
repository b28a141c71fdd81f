"""Request limits in PostgreSQL: one statement per request (migration 0017's ``rate_limit_take``, the
arithmetic of ``sansio.rate_limit.take`` in SQL), so every web process shares the same state.

Keys and sessions are limited under their tenant's row-level security; sign-in attempts (no tenant
yet) through the owner's ``sign_in_limit_take``. The state is written without waiting for the WAL
flush: a crash may forget the last moments of a bucket, which only ever lets a few requests more
through. A transient fault repeats the statement: at worst one request counts twice.
"""

from __future__ import annotations

from typing import Any

from sansio import rate_limit as rl


def take(pool: Any, tenant_id: str, subject: str, policy: rl.Policy, clock: float | None = None) -> rl.Decision:
    """One request of ``subject`` (of ``tenant_id``) under ``policy``; ``clock`` None: the database's."""
    rows = pool.query(tenant_id, "SELECT * FROM rate_limit_take(%s, %s, %s, %s, %s)",
                      (subject, policy.name, policy.emission, policy.tolerance, clock), durable=False)
    allowed, tat, at = rows[0]
    return rl.observed(policy, bool(allowed), float(tat), float(at))


def take_sign_in(pool: Any, keys: list[str], policy: rl.Policy, clock: float | None = None) -> dict[str, rl.Decision]:
    """One sign-in attempt for each key (the email tried, the client address): {key: decision}."""
    rows = pool.query(None, "SELECT * FROM sign_in_limit_take(%s, %s, %s, %s)",
                      (keys, policy.emission, policy.tolerance, clock), durable=False)
    return {key: rl.observed(policy, bool(allowed), float(tat), float(at)) for key, allowed, tat, at in rows}


def prune(pool: Any, idle_seconds: float = rl.IDLE_AFTER) -> int:
    """Delete the rows (every tenant's, and the sign-in rows) whose bucket is full again."""
    return int(pool.query(None, "SELECT prune_rate_limits(%s)", (idle_seconds,), repeatable=True)[0][0])

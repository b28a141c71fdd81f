"""Tenants and their API keys.

An API key is shown once, at creation; only its SHA-256 hash is stored (keys are 256-bit random, so a
fast hash is enough — there is nothing to brute-force). ``authenticate`` maps a presented key to its
tenant through the owner-defined ``authenticate_api_key`` function, the one lookup across tenants the
app role may make.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import Any

KEY_PREFIX = "wbk_"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_tenant(pool: Any, name: str, key_name: str = "default") -> tuple[str, str]:
    """Create a tenant with one API key; return (tenant_id, key). The key is not stored in clear."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValueError("tenant name must be 1 to 200 characters")
    tenant_id = str(uuid.uuid4())
    key = new_key()

    def work(unit: Any) -> None:
        unit.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant_id, name))
        unit.execute(
            "INSERT INTO api_keys (name, prefix, key_hash) VALUES (%s, %s, %s)",
            (key_name, key[: len(KEY_PREFIX) + 6], hash_key(key)),
        )

    pool.run(tenant_id, work, repeatable=True)
    return tenant_id, key


def create_key(
    pool: Any, tenant_id: str, key_name: str = "", scopes: Sequence[str] | None = None
) -> tuple[str, str, str]:
    """Add an API key to the tenant, limited to ``scopes`` (None: full access); returns (key id,
    prefix, key). The key is not stored in clear."""
    key = new_key()
    prefix = key[: len(KEY_PREFIX) + 6]
    rows = pool.query(
        tenant_id,
        "INSERT INTO api_keys (name, prefix, key_hash, scopes) VALUES (%s, %s, %s, %s) RETURNING id",
        (key_name, prefix, hash_key(key), None if scopes is None else sorted(set(scopes))),
        repeatable=False,
    )
    return str(rows[0][0]), prefix, key


def revoke_key(pool: Any, tenant_id: str, key_id: str, audit: Callable[[Any, Any, Any], None] | None = None) -> bool:
    """Revoke the key at once; False when the tenant has no such unrevoked key. ``audit(unit, before,
    after)`` records it in the same transaction (``web.audit``)."""

    def work(unit: Any) -> bool:
        row = unit.one("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL"
                       " RETURNING name, prefix", (key_id,))
        if row is not None and audit is not None:
            audit(unit, {"name": row[0], "prefix": row[1]}, None)
        return row is not None

    return bool(pool.run(tenant_id, work, repeatable=False))


class TenantDisabled(Exception):
    """The key (or session) is the tenant's, and the operator disabled the tenant (migration 0024)."""

    MESSAGE = ("this organisation is disabled by the platform's operator; its data is kept."
               " Ask the operator to enable it")

    def __init__(self, tenant_id: str) -> None:
        super().__init__(self.MESSAGE)
        self.tenant_id = tenant_id


def authenticate_with_scopes(pool: Any, key: str) -> tuple[str, tuple[str, ...] | None] | None:
    """(tenant id, the key's scopes or None for full access), or None for an unknown or revoked key.
    Raises ``TenantDisabled`` for a key of a disabled tenant."""
    if not key or len(key) > 200:
        return None
    rows = pool.query(None, "SELECT * FROM authenticate_api_key_status(%s)", (hash_key(key),))
    if not rows:
        return None
    tenant, scopes, disabled = rows[0]
    if disabled:
        raise TenantDisabled(str(tenant))
    return str(tenant), None if scopes is None else tuple(scopes)


def authenticate_limited(pool: Any, key: str, policy: Any) -> tuple[str, tuple[str, ...] | None, Any, Any] | None:
    """As ``authenticate_with_scopes``, and the request counted against the key's limit in the same
    round trip (migration 0025): (tenant id, scopes, ``sansio.rate_limit.Decision`` or None when
    ``policy`` is None — nothing counted, and the key as a ``db.audit.Actor``)."""
    from db.audit import Actor
    from sansio import rate_limit as rl

    if not key or len(key) > 200:
        return None
    what, step, room = (None, None, None) if policy is None else (policy.name, policy.emission, policy.tolerance)
    rows = pool.query(None, "SELECT * FROM authenticate_api_key_limited(%s, %s, %s, %s)",
                      (hash_key(key), what, step, room), durable=False)  # as db.rate_limits.take
    if not rows:
        return None
    tenant, scopes, disabled, allowed, tat, at, key_id, prefix, name = rows[0]
    if disabled:
        raise TenantDisabled(str(tenant))
    decision = None if allowed is None else rl.observed(policy, bool(allowed), float(tat), float(at))
    return str(tenant), None if scopes is None else tuple(scopes), decision, Actor.api_key(str(key_id), prefix, name)


def authenticate(pool: Any, key: str) -> str | None:
    """The tenant id the key belongs to, or None for an unknown or revoked key. Raises
    ``TenantDisabled`` for a key of a disabled tenant."""
    found = authenticate_with_scopes(pool, key)
    return None if found is None else found[0]

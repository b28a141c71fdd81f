"""People and their access to the dashboard: accounts, memberships, sessions, one-time links, and
the counts behind sign-in throttling.

Accounts, sessions and throttle counts belong to no tenant, so the app role reaches them only through
the owner's SECURITY DEFINER functions (migration 0010); memberships (``users``) and links are
tenant-owned and read under the tenant's row-level security like everything else. Session and link
tokens are 256-bit random strings shown to the browser once; only their SHA-256 is stored, as for
API keys (nothing to brute-force, so a fast hash is enough).
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

SESSION_PREFIX = "wbs_"
LINK_PREFIX = "wbl_"


class Conflict(ValueError):
    """The change would break a rule (the last admin, an existing member); the message says which."""


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


# -- accounts ------------------------------------------------------------------------------------


def account_by_email(pool: Any, email: str) -> tuple[str, str, str] | None:
    """(account id, password hash, display name), or None when no account has this email."""
    rows = pool.query(None, "SELECT * FROM auth_account_by_email(%s)", (email,))
    return (str(rows[0][0]), rows[0][1], rows[0][2]) if rows else None


def memberships(pool: Any, account_id: str) -> list[dict[str, Any]]:
    rows = pool.query(None, "SELECT * FROM auth_memberships(%s)", (account_id,))
    return [{"tenant_id": str(r[0]), "name": r[1], "role": r[2]} for r in rows]


def tenant_count(pool: Any, account_id: str) -> int:
    return int(pool.query(None, "SELECT auth_account_tenants(%s)", (account_id,))[0][0])


def update_account(pool: Any, account_id: str, *, new_hash: str | None = None, new_name: str | None = None,
                   keep_token: str | None = None) -> None:
    """A new password (ends the person's other sessions, keeps ``keep_token``'s) and/or display name."""
    pool.query(None, "SELECT auth_account_update(%s, %s, %s, %s)",
               (account_id, new_hash, new_name, token_hash(keep_token) if keep_token else None), repeatable=False)


# -- sessions ------------------------------------------------------------------------------------


def open_session(pool: Any, account_id: str, tenant_id: str | None, max_age: float, user_agent: str,
                 client_addr: str) -> tuple[str, str]:
    """A new session; returns (cookie token, CSRF token). The tenant must be one of the person's."""
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    pool.query(None, "SELECT auth_session_open(%s, %s, %s, %s, %s, %s, %s)",
               (token_hash(token), account_id, tenant_id, csrf, max_age, user_agent or "", client_addr or ""),
               repeatable=False)
    return token, csrf


def session(pool: Any, token: str, idle: float) -> dict[str, Any] | None:
    """The live session behind a cookie token (see ``auth_session_get``), or None. ``role`` is None
    when the person is no longer a member of the session's tenant, or when the operator disabled
    that tenant (``tenant_disabled`` says so)."""
    if not token.startswith(SESSION_PREFIX) or len(token) > 100:
        return None
    rows = pool.query(None, "SELECT * FROM auth_session_get(%s, %s, %s)",
                      (token_hash(token), idle, min(60.0, idle / 4)), repeatable=True, durable=False)
    if not rows:
        return None
    r = rows[0]
    return {"session_id": str(r[0]), "account_id": str(r[1]), "email": r[2], "display_name": r[3],
            "tenant_id": None if r[4] is None else str(r[4]), "tenant_name": r[5], "role": r[6],
            "csrf": r[7], "created_at": r[8], "tenant_disabled": bool(r[9]),
            **({"role": None} if r[9] else {})}


def switch_tenant(pool: Any, token: str, tenant_id: str) -> bool:
    return bool(pool.query(None, "SELECT auth_session_switch(%s, %s)", (token_hash(token), tenant_id),
                           repeatable=True)[0][0])


def close_session(pool: Any, token: str) -> None:
    pool.query(None, "SELECT auth_session_close(%s)", (token_hash(token),), repeatable=True)


def close_all_sessions(pool: Any, account_id: str) -> int:
    return int(pool.query(None, "SELECT auth_sessions_close_all(%s)", (account_id,), repeatable=True)[0][0])


# -- one-time links ------------------------------------------------------------------------------


def create_link(pool: Any, tenant_id: str, user_id: str, purpose: str, ttl: float, created_by: str) -> str:
    """A new invite or reset link for the member; earlier unused links for them stop working."""
    token = LINK_PREFIX + secrets.token_urlsafe(32)

    def work(unit: Any) -> None:
        unit.execute("DELETE FROM auth_links WHERE user_id = %s AND used_at IS NULL", (user_id,))
        unit.execute(
            "INSERT INTO auth_links (token_hash, user_id, purpose, created_by, expires_at)"
            " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))",
            (token_hash(token), user_id, purpose, created_by[:300], ttl),
        )

    pool.run(tenant_id, work, repeatable=False)
    return token


def peek_link(pool: Any, token: str) -> dict[str, Any] | None:
    """What a link is for, or None for an unknown token. ``valid`` is False once used or expired."""
    if not token.startswith(LINK_PREFIX) or len(token) > 100:
        return None
    rows = pool.query(None, "SELECT *, now() FROM auth_link_peek(%s)", (token_hash(token),))
    if not rows:
        return None
    purpose, email, tenant_id, tenant_name, role, account_id, expires_at, used_at, now = rows[0]
    return {"purpose": purpose, "email": email, "tenant_id": str(tenant_id), "tenant_name": tenant_name,
            "role": role, "account_id": None if account_id is None else str(account_id),
            "expires_at": expires_at, "used": used_at is not None,
            "valid": used_at is None and expires_at > now}


def complete_link(pool: Any, token: str, *, new_hash: str | None, new_name: str = "",
                  verified_account: str | None = None) -> str | None:
    """Use the link (see ``auth_link_complete``); the account id, or None when it no longer works."""
    rows = pool.query(None, "SELECT auth_link_complete(%s, %s, %s, %s)",
                      (token_hash(token), new_hash, new_name, verified_account), repeatable=False)
    return None if rows[0][0] is None else str(rows[0][0])


# -- members -------------------------------------------------------------------------------------

_MEMBERS = """
SELECT u.id, u.email, u.display_name, u.role, u.created_at, u.account_id IS NOT NULL,
       l.purpose, l.expires_at, l.expires_at > now()
  FROM users u
  LEFT JOIN LATERAL (SELECT purpose, expires_at FROM auth_links
                      WHERE user_id = u.id AND used_at IS NULL ORDER BY created_at DESC LIMIT 1) l ON true
 ORDER BY lower(u.email), u.id
"""


def list_members(pool: Any, tenant_id: str) -> list[dict[str, Any]]:
    return [
        {"id": str(r[0]), "email": r[1], "display_name": r[2], "role": r[3], "created_at": r[4],
         "active": r[5], "link_purpose": r[6], "link_expires_at": r[7], "link_valid": bool(r[8])}
        for r in pool.query(tenant_id, _MEMBERS)
    ]


def member(pool: Any, tenant_id: str, user_id: str) -> dict[str, Any] | None:
    rows = pool.query(tenant_id, "SELECT id, email, display_name, role, account_id FROM users WHERE id = %s",
                      (user_id,))
    if not rows:
        return None
    r = rows[0]
    return {"id": str(r[0]), "email": r[1], "display_name": r[2], "role": r[3],
            "account_id": None if r[4] is None else str(r[4])}


def invite(pool: Any, tenant_id: str, email: str, role: str, display_name: str = "") -> str:
    """The membership row to send a link for: new, or the pending one of that email (its role
    updated). ``Conflict`` when the email is already an active member."""

    def work(unit: Any) -> str:
        row = unit.one("SELECT id, account_id FROM users WHERE email = %s FOR UPDATE", (email,))
        if row is not None:
            if row[1] is not None:
                raise Conflict(f"{email} is already a member")
            unit.execute("UPDATE users SET role = %s, display_name = coalesce(nullif(%s, ''), display_name)"
                         " WHERE id = %s", (role, display_name, row[0]))
            return str(row[0])
        return str(unit.one("INSERT INTO users (email, display_name, role) VALUES (%s, %s, %s) RETURNING id",
                            (email, display_name, role))[0])

    return pool.run(tenant_id, work, repeatable=True)


def add_member(pool: Any, tenant_id: str, email: str, role: str, account_id: str | None) -> str:
    """A membership for an existing account (linked at once) or a pending one (no account yet)."""
    rows = pool.query(
        tenant_id,
        "INSERT INTO users (email, role, account_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (tenant_id, email) DO UPDATE SET role = excluded.role,"
        " account_id = coalesce(users.account_id, excluded.account_id) RETURNING id",
        (email, role, account_id), repeatable=True,
    )
    return str(rows[0][0])


def _admins_left(unit: Any, without: str) -> int:
    # Row locks on the admins: two admins demoting each other at once cannot both pass the check.
    return len(unit.execute("SELECT id FROM users WHERE role = 'admin' AND account_id IS NOT NULL AND id <> %s"
                            " FOR UPDATE", (without,)).fetchall())


def set_role(pool: Any, tenant_id: str, user_id: str, role: str,
             audit: Callable[[Any, Any, Any], None] | None = None) -> bool:
    """False when there is no such member; ``Conflict`` when it would leave the tenant without an admin.
    ``audit(unit, before, after)`` records the change in the same transaction (``web.audit``)."""

    def work(unit: Any) -> bool:
        row = unit.one("SELECT role, account_id, email FROM users WHERE id = %s FOR UPDATE", (user_id,))
        if row is None:
            return False
        if row[0] == "admin" and role != "admin" and row[1] is not None and not _admins_left(unit, user_id):
            raise Conflict("the tenant must keep at least one admin who can sign in")
        unit.execute("UPDATE users SET role = %s WHERE id = %s", (role, user_id))
        if audit is not None:
            audit(unit, {"email": row[2], "role": row[0]}, {"email": row[2], "role": role})
        return True

    return pool.run(tenant_id, work, repeatable=True)


def remove_member(pool: Any, tenant_id: str, user_id: str,
                  audit: Callable[[Any, Any, Any], None] | None = None) -> bool:
    """Remove the membership (their sessions in this tenant end at once: a trigger revokes them).
    ``audit(unit, before, after)`` records it in the same transaction (``web.audit``)."""

    def work(unit: Any) -> bool:
        row = unit.one("SELECT role, account_id, email FROM users WHERE id = %s FOR UPDATE", (user_id,))
        if row is None:
            return False
        if row[0] == "admin" and row[1] is not None and not _admins_left(unit, user_id):
            raise Conflict("the tenant must keep at least one admin who can sign in")
        unit.execute("DELETE FROM users WHERE id = %s", (user_id,))
        if audit is not None:
            audit(unit, {"email": row[2], "role": row[0]}, None)
        return True

    return pool.run(tenant_id, work, repeatable=True)


# -- sign-in throttling --------------------------------------------------------------------------


def throttle_read(pool: Any, keys: list[str]) -> tuple[dict[str, tuple[int, float | None]], float]:
    """{key: (failures, last failure as epoch seconds)} and the database's now (all processes share it)."""
    rows = pool.query(None, "SELECT * FROM auth_throttle_read(%s)", (keys,))
    now = float(rows[0][4]) if rows else 0.0
    return {r[0]: (int(r[1]), None if r[3] is None else float(r[3])) for r in rows}, now


def throttle_fail(pool: Any, keys: list[str], window: float) -> None:
    pool.query(None, "SELECT auth_throttle_fail(%s, %s)", (keys, window), repeatable=False)


def throttle_clear(pool: Any, keys: list[str]) -> None:
    pool.query(None, "SELECT auth_throttle_clear(%s)", (keys,), repeatable=True)


# -- status --------------------------------------------------------------------------------------


def supervisors(pool: Any, tenant_id: str) -> list[dict[str, Any]]:
    rows = pool.query(None, "SELECT * FROM supervisors_for_tenant(%s)", (tenant_id,))
    return [{"owner": r[0], "started_at": r[1], "expires_at": r[2], "alive": r[3], "bots": int(r[4])} for r in rows]


# -- the operator's side (the CLI) ---------------------------------------------------------------


def add_admin(pool: Any, tenant_id: str, email: str, ttl: float) -> str | None:
    """Make ``email`` an admin of the tenant. An existing account is linked at once (None: they sign
    in with their password); otherwise the set-password link's token is returned."""
    found = account_by_email(pool, email)
    user_id = add_member(pool, tenant_id, email, "admin", found[0] if found else None)
    if found is not None:
        return None
    return create_link(pool, tenant_id, user_id, "invite", ttl, "operator")


def operator_reset(pool: Any, email: str, ttl: float) -> str:
    """A password-reset link's token for the account with ``email`` (``LookupError`` if none)."""
    found = account_by_email(pool, email)
    tenants = memberships(pool, found[0]) if found else []
    if not found or not tenants:
        raise LookupError(f"no dashboard account with a membership has the email {email!r}")
    tenant_id = tenants[0]["tenant_id"]
    rows = pool.query(tenant_id, "SELECT id FROM users WHERE account_id = %s", (found[0],))
    return create_link(pool, tenant_id, str(rows[0][0]), "reset", ttl, "operator")

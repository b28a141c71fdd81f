"""Data access for bots: what the API reads and records (intent), and what sessions write (state).

Every function takes the pool and a tenant id, so row-level security scopes it; supervisor-only,
cross-tenant operations (leases) go through the owner's SECURITY DEFINER functions. Session writes are
fenced by the lease: a supervisor that lost a bot's lease cannot overwrite its state.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

NOTIFY_CHANNEL = "bot_commands"

_COLUMNS = (
    "id, name, transport_options, desired_state, state, reason, attempt, next_retry_at, banned_until, jid,"
    " paired, qr_code, qr_updated_at, lease_owner, lease_expires_at, created_at, updated_at"
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def row_to_dict(row: Any) -> dict[str, Any]:
    keys = [c.strip() for c in _COLUMNS.split(",")]
    data = dict(zip(keys, row))
    data["id"] = str(data["id"])
    for key in ("next_retry_at", "banned_until", "qr_updated_at", "lease_expires_at", "created_at", "updated_at"):
        data[key] = _iso(data[key])
    data["has_qr"] = data.pop("qr_code") is not None
    data["supervisor"] = data.pop("lease_owner")
    return data


def create(pool: Any, tenant_id: str, name: str, transport_options: dict[str, Any]) -> dict[str, Any]:
    """A new bot; raises ``db.quotas.QuotaExceeded`` (nothing written) when the tenant has as many bots
    as its quota allows. The check and the insert are one transaction holding the tenant's quota row."""
    from db import quotas  # it imports NOTIFY_CHANNEL from here

    def work(unit: Any) -> dict[str, Any]:
        quotas.check_bot(unit)
        return row_to_dict(unit.one(f"INSERT INTO bots (name, transport_options) VALUES (%s, %s) RETURNING {_COLUMNS}",
                                    (name, json.dumps(transport_options))))

    return pool.run(tenant_id, work, repeatable=False)  # a repeat could make a second bot


def update(pool: Any, tenant_id: str, bot_id: str, name: str | None,
           transport_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Change the name and/or replace the transport options (None: unchanged); notifies, so a running
    session reads the options at its next dial. The bot, or None when it is not the tenant's."""

    def work(unit: Any) -> dict[str, Any] | None:
        row = unit.one(
            "UPDATE bots SET name = coalesce(%s, name), transport_options = coalesce(%s::jsonb, transport_options),"
            f" updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
            (name, None if transport_options is None else json.dumps(transport_options), bot_id),
        )
        if row is not None:
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, bot_id))
        return None if row is None else row_to_dict(row)

    return pool.run(tenant_id, work, repeatable=True)


def list_all(pool: Any, tenant_id: str) -> list[dict[str, Any]]:
    return [row_to_dict(r) for r in pool.query(tenant_id, f"SELECT {_COLUMNS} FROM bots ORDER BY created_at, id")]


def get(pool: Any, tenant_id: str, bot_id: str) -> dict[str, Any] | None:
    rows = pool.query(tenant_id, f"SELECT {_COLUMNS} FROM bots WHERE id = %s", (bot_id,))
    return row_to_dict(rows[0]) if rows else None


def delete(pool: Any, tenant_id: str, bot_id: str) -> bool:
    def work(unit: Any) -> bool:
        deleted = unit.execute("DELETE FROM bots WHERE id = %s", (bot_id,)).rowcount
        if deleted:
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, bot_id))
        return bool(deleted)

    return pool.run(tenant_id, work, repeatable=True)


def set_desired(pool: Any, tenant_id: str, bot_id: str, desired: str, command: str | None = None) -> bool:
    """Record the user's intent (running/stopped, optionally a restart or logout) and notify."""

    def work(unit: Any) -> bool:
        if command is None:
            cur = unit.execute(
                "UPDATE bots SET desired_state = %s, updated_at = now() WHERE id = %s", (desired, bot_id)
            )
        else:
            cur = unit.execute(
                "UPDATE bots SET desired_state = %s, command = %s, command_seq = command_seq + 1,"
                " updated_at = now() WHERE id = %s",
                (desired, command, bot_id),
            )
        if cur.rowcount:
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, bot_id))
        return bool(cur.rowcount)

    return pool.run(tenant_id, work, repeatable=True)


def request_pair_code(pool: Any, tenant_id: str, bot_id: str, phone: str) -> int | None:
    """Record a pair-code request; returns its sequence number (None if the bot does not exist)."""

    def work(unit: Any) -> int | None:
        row = unit.one(
            "UPDATE bots SET pair_phone = %s, pair_seq = pair_seq + 1, pair_code = NULL, pair_error = NULL"
            " WHERE id = %s RETURNING pair_seq",
            (phone, bot_id),
        )
        if row is not None:
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, bot_id))
        return None if row is None else row[0]

    return pool.run(tenant_id, work, repeatable=False)


def pair_result(pool: Any, tenant_id: str, bot_id: str, seq: int) -> tuple[str | None, str | None] | None:
    """(code, error) once the request ``seq`` has been handled, else None."""
    rows = pool.query(
        tenant_id, "SELECT pair_done, pair_code, pair_error FROM bots WHERE id = %s", (bot_id,)
    )
    if not rows or rows[0][0] < seq:
        return None
    return rows[0][1], rows[0][2]


def qr(pool: Any, tenant_id: str, bot_id: str) -> tuple[bool, str | None, Any]:
    """(exists, current QR payload or None, when it was issued)."""
    rows = pool.query(tenant_id, "SELECT qr_code, qr_updated_at FROM bots WHERE id = %s", (bot_id,))
    if not rows:
        return False, None, None
    return True, rows[0][0], rows[0][1]


# -- the supervisor's side ------------------------------------------------------------------------


def lease(pool: Any, owner: str, ttl: float, max_new: int) -> tuple[list[tuple[str, str, str]], int | None]:
    """Heartbeat, renew and claim leases (up to this supervisor's fair share).

    Returns ((bot_id, tenant_id, desired_state) for every bot held, the fair share or None if no bot
    is held)."""
    rows = pool.query(None, "SELECT * FROM lease_bots(%s, %s, %s)", (owner, ttl, max_new), repeatable=False)
    return [(str(b), str(t), d) for b, t, d, _ in rows], (rows[0][3] if rows else None)


def leave(pool: Any, owner: str) -> None:
    """Release every lease this supervisor holds and withdraw it from the fair-share count."""
    pool.query(None, "SELECT leave_supervision(%s)", (owner,))


def release(pool: Any, owner: str, bot_id: str) -> None:
    pool.query(None, "SELECT release_bot_lease(%s, %s)", (owner, bot_id))


def load_for_session(pool: Any, tenant_id: str, bot_id: str) -> dict[str, Any] | None:
    rows = pool.query(
        tenant_id,
        "SELECT transport_options, desired_state, command, command_seq, command_done, pair_phone, pair_seq,"
        " pair_done FROM bots WHERE id = %s",
        (bot_id,),
    )
    if not rows:
        return None
    keys = ("transport_options", "desired_state", "command", "command_seq", "command_done", "pair_phone",
            "pair_seq", "pair_done")
    return dict(zip(keys, rows[0]))


def write_state(pool: Any, tenant_id: str, bot_id: str, owner: str, view: dict[str, Any]) -> bool:
    """Write the session's state; False when this supervisor no longer holds the lease (fenced)."""
    count = pool.execute(
        tenant_id,
        "UPDATE bots SET state = %s, reason = %s, attempt = %s, next_retry_at = to_timestamp(%s),"
        " banned_until = to_timestamp(%s), updated_at = now()"
        " WHERE id = %s AND lease_owner = %s",
        (
            view["state"],
            view.get("reason") or "",
            view.get("attempt") or 0,
            view.get("next_retry_at"),
            view.get("banned_until"),
            bot_id,
            owner,
        ),
        repeatable=True,
    )
    return bool(count)


def write_fields(pool: Any, tenant_id: str, bot_id: str, owner: str, **fields: Any) -> bool:
    """Update session-owned columns (qr_code, jid, paired, pair_code, pair_error, pair_done, command_done)."""
    allowed = {"qr_code", "qr_updated_at", "jid", "paired", "pair_code", "pair_error", "pair_done", "command_done"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not session-owned: {sorted(unknown)}")
    assignments = ", ".join(f"{name} = %s" for name in fields)
    count = pool.execute(
        tenant_id,
        f"UPDATE bots SET {assignments} WHERE id = %s AND lease_owner = %s",
        (*fields.values(), bot_id, owner),
        repeatable=True,
    )
    return bool(count)

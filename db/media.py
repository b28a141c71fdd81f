"""Data access for media: the row that says what a stored object is, whose it is and where it lives.

Every function takes the pool and a tenant id, so row-level security scopes it: a tenant sees only
its own media, and another tenant's id reads as missing.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

_COLUMNS = "id, bot_id, backend, object_key, mime_type, size_bytes, sha256, filename, created_at"
_KEYS = tuple(c.strip() for c in _COLUMNS.split(","))


def _row(row: Any) -> dict[str, Any]:
    data = dict(zip(_KEYS, row))
    data["id"] = str(data["id"])
    data["bot_id"] = None if data["bot_id"] is None else str(data["bot_id"])
    if isinstance(data["created_at"], datetime.datetime):
        data["created_at"] = data["created_at"].isoformat()
    return data


def record(
    pool: Any, tenant_id: str, bot_id: str | None, stored: Any, mime_type: str, filename: str = "",
    *, check_quota: bool = False,
) -> str:
    """Record a stored object (a ``media.store.StoredObject``) as the tenant's; returns the media id.

    The id is made here, so the insert can be repeated after a lost connection without a second row.
    ``bot_id`` must be one of the tenant's bots (or None for uploads through the API).

    ``check_quota`` (uploads): raise ``db.quotas.QuotaExceeded``, nothing recorded, when the object
    would take the tenant's media past its quota. The check and the insert are one transaction holding
    the tenant's quota row, so two uploads at the edge cannot both pass.
    """
    from db import quotas

    media_id = str(uuid.uuid4())

    def work(unit: Any) -> str:
        # A repeat after a lost commit finds its own row: already counted, never refused for itself.
        if unit.one("SELECT 1 FROM media WHERE id = %s", (media_id,)) is not None:
            return media_id
        if check_quota:
            quotas.check_media(unit, stored.size)
        unit.execute(
            "INSERT INTO media (id, bot_id, backend, object_key, mime_type, size_bytes, sha256, filename)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (media_id, bot_id, stored.backend, stored.key, mime_type, stored.size, stored.sha256, filename),
        )
        return media_id

    return pool.run(tenant_id, work, repeatable=True)


def get(pool: Any, tenant_id: str, media_id: str) -> dict[str, Any] | None:
    """The row as a dict (id, bot_id, backend, object_key, mime_type, size_bytes, sha256, filename,
    created_at), or None when it does not exist or is another tenant's."""
    rows = pool.query(tenant_id, f"SELECT {_COLUMNS} FROM media WHERE id = %s", (media_id,))
    return _row(rows[0]) if rows else None

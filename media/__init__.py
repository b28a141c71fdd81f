"""Media: images, audio, video and documents that bots receive and send.

``media.store`` keeps the bytes (local disk or S3), ``db.media`` records what each object is and whose,
and ``save`` below does both for one incoming object — the one call the inbound pipeline and the upload
API make.
"""

from __future__ import annotations

from typing import Any

from db import media as media_db
from media.store import (
    EmptyMedia,
    MediaError,
    MediaStore,
    MediaTooLarge,
    ObjectMissing,
    StorageUnavailable,
    StoredObject,
    store_from_settings,
)

__all__ = [
    "EmptyMedia",
    "MediaError",
    "MediaStore",
    "MediaTooLarge",
    "ObjectMissing",
    "StorageUnavailable",
    "StoredObject",
    "save",
    "store_from_settings",
]


def save(
    pool: Any, store: MediaStore, tenant_id: str, bot_id: str | None, data: Any, mime_type: str, filename: str = "",
    *, check_quota: bool = False,
) -> tuple[str, StoredObject]:
    """Store the bytes and record them as the tenant's; returns (media id, stored object).

    If recording fails the object is deleted again, so storage holds no object that no row names.
    ``check_quota`` (uploads by the tenant; not media customers send, which are kept whatever the
    quota): ``db.quotas.QuotaExceeded`` when the object would take the tenant past its media quota,
    the object deleted again. The size is known only once stored, so the exact check comes after.
    """
    stored = store.put(tenant_id, data, mime_type, filename)
    try:
        media_id = media_db.record(pool, tenant_id, bot_id, stored, mime_type, filename, check_quota=check_quota)
    except BaseException:
        try:
            store.delete(stored.backend, stored.key)
        except Exception:  # noqa: BLE001 - the recording error is the one to report
            pass
        raise
    return media_id, stored

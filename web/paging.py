"""Keyset paging of the API's listings: newest first, ``limit`` rows a page, with ``next_before`` — an
opaque cursor naming the last row's sort time and id — to pass back as ``before``. ``before`` also
takes an ISO 8601 time: rows strictly older than it."""

from __future__ import annotations

import base64
import binascii
import datetime
import uuid
from typing import Any

from db import conversations_api as api_db

_CURSOR_PREFIX = "c1."
_PROBLEM = "must be the next_before cursor of a previous page or an ISO 8601 time"


def _parse_time(value: str) -> datetime.datetime | None:
    for candidate in (value, _plus_restored(value)):
        if candidate is None:
            continue
        try:
            at = datetime.datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return at if at.tzinfo is not None else at.replace(tzinfo=datetime.UTC)
    return None


def _plus_restored(value: str) -> str | None:
    """An unencoded '+' in a query string arrives as a space: '...T10:00:00 02:00' meant '+02:00'."""
    head, sep, tail = value.rpartition(" ")
    return head + "+" + tail if sep and "T" in head else None


def cursor(at: datetime.datetime, row_id: str) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_before(raw: str | None) -> api_db.Before:
    """``before`` as ``(time, id)`` (a cursor), ``(time, None)`` (a time) or None; ValueError otherwise."""
    if raw is None or raw == "":
        return None
    if raw.startswith(_CURSOR_PREFIX):
        encoded = raw[len(_CURSOR_PREFIX):]
        try:
            decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            time_part, _, id_part = decoded.partition("|")
            row_id = str(uuid.UUID(id_part))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError(_PROBLEM) from None
        at = _parse_time(time_part)
        if at is None:
            raise ValueError(_PROBLEM)
        return at, row_id
    at = _parse_time(raw) if len(raw) <= 64 else None
    if at is None:
        raise ValueError(_PROBLEM)
    return at, None


def page(rows: list[dict[str, Any]], limit: int, sort_key: str) -> tuple[list[dict[str, Any]], str | None]:
    """The page's rows without their internal sort key, and the cursor to the next page (if any)."""
    more = len(rows) > limit
    rows = rows[:limit]
    next_before = cursor(rows[-1][sort_key], rows[-1]["id"]) if more else None
    for row in rows:
        row.pop(sort_key, None)
    return rows, next_before

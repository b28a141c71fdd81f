"""Tenant quotas (issue 16), the decisions: what a limit the operator types means, whether an action
fits under a quota, what a refusal says, and when a tenant's day ends. Pure: no I/O, time injected.

Three quotas, each unset (no limit) by default: ``bots`` (bots the tenant may have), ``messages_per_day``
(messages it may send per UTC day: API sends and the bots' answers) and ``media_bytes`` (bytes of media
it may keep). What counts and when is in docs/decisions.md, "Tenant quotas (issue 16)".
"""

from __future__ import annotations

import dataclasses
import datetime

BOTS = "bots"
MESSAGES_PER_DAY = "messages_per_day"
MEDIA_BYTES = "media_bytes"
QUOTAS = (BOTS, MESSAGES_PER_DAY, MEDIA_BYTES)

# The columns' ranges: bots and messages are integers, media bytes a bigint.
MAXIMUM = {BOTS: 2**31 - 1, MESSAGES_PER_DAY: 2**31 - 1, MEDIA_BYTES: 2**63 - 1}
NO_LIMIT_WORDS = ("none", "0")


@dataclasses.dataclass(frozen=True)
class Limits:
    """None: no limit."""

    bots: int | None = None
    messages_per_day: int | None = None
    media_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Usage:
    bots: int = 0
    messages_today: int = 0  # admitted to the send queue this UTC day
    media_bytes: int = 0
    day: datetime.date | None = None  # the UTC day messages_today counts
    held: int = 0  # bots' answers waiting in the outbox for the daily message quota


def parse_limit(quota: str, value: str) -> int | None:
    """A limit as the operator typed it: a whole number of at least 1, or ``0`` / ``none`` for no
    limit (None). Raises ValueError saying what is wrong."""
    if quota not in MAXIMUM:
        raise ValueError(f"unknown quota {quota!r}; one of {', '.join(QUOTAS)}")
    text = value.strip().lower().replace("_", "")
    if text in NO_LIMIT_WORDS:
        return None
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{quota.replace('_', '-')}: {value!r} is not a whole number (0 or 'none': no limit)")
    number = int(text)
    if number == 0:
        return None
    if number > MAXIMUM[quota]:
        raise ValueError(f"{quota.replace('_', '-')}: {number} is more than the largest limit, {MAXIMUM[quota]}")
    return number


def refusal(quota: str, limit: int | None, used: int, wanted: int = 1) -> str | None:
    """Why ``wanted`` more (bots, messages, bytes) do not fit under ``limit`` when ``used`` are taken,
    or None when they fit: exactly at the limit is allowed, one past is refused."""
    if limit is None or used + wanted <= limit:
        return None
    if quota == BOTS:
        return (f"the tenant's quota of {_n(limit)} bot{'s' if limit != 1 else ''} is used up ({_n(used)} in use);"
                " the operator can raise it")
    if quota == MESSAGES_PER_DAY:
        return (f"the tenant's quota of {_n(limit)} messages per day is used up ({_n(used)} sent today, UTC);"
                " it allows more at 00:00 UTC, or when the operator raises it")
    if quota == MEDIA_BYTES:
        return (f"this upload of {_n(wanted)} bytes would take the tenant's media past its quota of {_n(limit)}"
                f" bytes ({_n(used)} stored); the operator can raise it")
    raise ValueError(f"unknown quota {quota!r}")


def describe(limit: int | None) -> str:
    return "no limit" if limit is None else _n(limit)


def _n(number: int) -> str:
    return f"{number:,}"

"""Webhook deliveries' decisions, pure: the request (body, Standard Webhooks headers), what an answer
means (delivered, retry when, failed, endpoint gone or failing too long), and the secrets.

Per the Standard Webhooks spec a request carries ``webhook-id`` (the delivery's id: the same on every
attempt and replay, so a receiver dedupes on it), ``webhook-timestamp`` (seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per active secret,
space-separated: for 24 h after a rotation both the new and the old secret sign). The signing is the
spec's reference library (``standardwebhooks``).

Only a 2xx is success. A redirect is not followed (the target could be anywhere) and counts as a
failure. 410 Gone disables the endpoint at once. 429 and 503 may say when to come back
(``Retry-After``, seconds or an HTTP date): the next attempt is no sooner than that, nor sooner than
the schedule says. The schedule (``SCHEDULE``): at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
10 h after each failure, each delay stretched or shrunk by up to ``JITTER`` so deliveries that
failed together do not all come back together; after the last, the delivery is ``failed``. An
endpoint failing on every attempt for ``disable_after`` seconds is disabled.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import secrets as secrets_mod
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from standardwebhooks import Webhook

from sansio.backoff import Rng

# Seconds before attempt n+1 (index n-1) after attempt n failed; attempt 1 goes at once.
SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
MAX_ATTEMPTS = len(SCHEDULE) + 1
JITTER = 0.1  # each delay uniform in [d * 0.9, d * 1.1]
RETRY_AFTER_CAP = 86400.0  # a Retry-After beyond a day is taken as a day
ROTATION_OVERLAP = 86400.0  # the old secret keeps signing this long after a rotation
RESPONSE_HEAD = 1024  # bytes of the response body kept in the log
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24

OutcomeKind = Literal["delivered", "retry", "failed", "gone"]


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets_mod.token_bytes(SECRET_BYTES)).decode()


def body(event_type: str, occurred_at: datetime.datetime, data: Any) -> str:
    """The request body: ``{"type", "timestamp", "data"}``, compact JSON, timestamp in UTC ISO 8601."""
    stamp = occurred_at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"),
                      ensure_ascii=False, default=str)


def active_secrets(secret: str, previous: str | None, previous_until: float | None, now: float) -> list[str]:
    """The secrets that sign a request sent at ``now``: the current one, and the previous one during
    the overlap after a rotation."""
    found = [secret]
    if previous and previous_until is not None and now < previous_until:
        found.append(previous)
    return found


def headers(delivery_id: str, now: float, payload: str, signing: Sequence[str]) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt sent at ``now``."""
    stamp = datetime.datetime.fromtimestamp(int(now), tz=datetime.UTC)
    signatures = " ".join(Webhook(secret).sign(delivery_id, stamp, payload) for secret in signing)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), capped at a day;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_CAP)


def schedule_delay(attempts: int, rng: Rng) -> float | None:
    """Seconds until the next attempt after ``attempts`` (from 1) have failed; None: no more."""
    if attempts < 1 or attempts > len(SCHEDULE):
        return None
    d = SCHEDULE[attempts - 1]
    return rng.uniform(d * (1 - JITTER), d * (1 + JITTER))


class Answer(NamedTuple):
    """What one attempt came back with: a status (None when no HTTP answer came: refused, timed out,
    address not allowed) and the error text, the ``Retry-After`` header."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None


class Outcome(NamedTuple):
    kind: OutcomeKind
    next_at: float | None  # when kind == 'retry'
    disable_reason: str  # non-empty: the endpoint is disabled now
    error: str | None  # what the log says went wrong (None on success)


def decide(answer: Answer, attempts: int, now: float, failing_since: float | None, disable_after: float,
           rng: Rng) -> Outcome:
    """The outcome of attempt number ``attempts`` (from 1) sent at ``now``; ``failing_since`` is the
    endpoint's first failure since its last success (None: it was not failing)."""
    status = answer.status
    if status is not None and 200 <= status < 300:
        return Outcome("delivered", None, "", None)
    error = answer.error or _status_error(status)
    if status == 410:
        return Outcome("gone", None, "the receiver answered 410 Gone", error)
    disable = ""
    since = failing_since if failing_since is not None else now
    if now - since >= disable_after:
        days = disable_after / 86400
        disable = f"every attempt failed for {days:g} day{'s' if days != 1 else ''} (last: {error})"
    delay = schedule_delay(attempts, rng)
    if delay is None:
        return Outcome("failed", None, disable, error)
    if status in (429, 503):
        wait = retry_after(answer.retry_after, now)
        if wait is not None:
            delay = max(delay, wait)
    return Outcome("retry", now + delay, disable, error)


def _status_error(status: int | None) -> str:
    if status is None:
        return "no answer"
    if 300 <= status < 400:
        return f"redirect ({status}) not followed"
    return f"HTTP {status}"


def response_head(raw: bytes) -> str:
    """The first ``RESPONSE_HEAD`` bytes of a response body as text for the log."""
    return raw[:RESPONSE_HEAD].decode("utf-8", errors="replace").replace("\x00", "\ufffd")

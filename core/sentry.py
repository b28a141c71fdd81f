"""Sentry set-up and the one function the rest of the code reports through.

``init`` turns the SDK on when ``SENTRY_DSN`` is set (environment, release, the Flask integration);
``capture`` reports an exception tagged with the current work context (tenant, bot, correlation id)
plus any extra tags. Without a DSN both are no-ops.

Stack frames carry local variables, and a request's locals include its ``Authorization`` header; every
event is scrubbed of API keys and URL passwords before it leaves the process.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sentry_sdk

from core import context

log = logging.getLogger(__name__)

# API keys as db.tenants.new_key makes them, and the password part of any scheme://user:password@ URL.
_API_KEY = re.compile(r"wbk_[A-Za-z0-9_-]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^/\s]+@")
FILTERED = "[Filtered]"


def scrub(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """``value`` (an event, or any part of one) with secrets replaced by ``[Filtered]``: API keys,
    URL passwords, and the configured provider secrets (``secrets``)."""
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(rf"\1:{FILTERED}@", _API_KEY.sub(FILTERED, value))
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        return value
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets) for item in value]
    return value


def init(settings: Any, release: str) -> bool:
    if not settings.sentry_dsn:
        return False
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    # Provider credentials can end up in an error's local variables; never send them.
    secrets = tuple(
        value for value in (settings.ai_api_key, settings.media_s3_secret_access_key) if value and len(value) >= 8
    )

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        release=settings.release or release,
        integrations=[FlaskIntegration(), LoggingIntegration(event_level=None)],
        # Errors are reported explicitly with their work context; no performance tracing by default.
        traces_sample_rate=0.0,
        before_send=lambda event, _hint: scrub(event, secrets),
        # No send_default_pii: off by default (no API keys, cookies or client IPs in events), and
        # naming it at all is deprecated in current SDKs (a warning on every start).
    )
    return True


def capture(exc: BaseException, **tags: str | None) -> None:
    if not sentry_sdk.get_client().is_active():
        return
    ctx = context.current()
    with sentry_sdk.new_scope() as scope:
        for key, value in (
            ("tenant_id", ctx.tenant_id),
            ("bot_id", ctx.bot_id),
            ("correlation_id", ctx.correlation_id),
            *tags.items(),
        ):
            if value is not None:
                scope.set_tag(key, str(value))
        sentry_sdk.capture_exception(exc)


def flush(timeout: float = 2.0) -> None:
    if sentry_sdk.get_client().is_active():
        sentry_sdk.flush(timeout=timeout)

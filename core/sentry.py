"""Sentry set-up and the one function the rest of the code reports through.

``init`` turns the SDK on when ``SENTRY_DSN`` is set (environment, release, the Flask integration);
``capture`` reports an exception tagged with the current work context (tenant, bot, correlation id)
plus any extra tags. Without a DSN both are no-ops.
"""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk

from core import context

log = logging.getLogger(__name__)


def init(settings: Any, release: str) -> bool:
    if not settings.sentry_dsn:
        return False
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        release=settings.release or release,
        integrations=[FlaskIntegration(), LoggingIntegration(event_level=None)],
        # Errors are reported explicitly with their work context; no performance tracing by default.
        traces_sample_rate=0.0,
        send_default_pii=False,
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

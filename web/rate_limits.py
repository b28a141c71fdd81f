"""Request limits for the web app: per API key and per signed-in dashboard session, reads (GET, HEAD)
and writes (every other method) apart, each a GCRA bucket (``sansio.rate_limit``) kept in PostgreSQL
(``db.rate_limits``) so that every web process counts against the same limit; sign-in attempts per
email and per client address on the same mechanism.

A request is counted once, when its caller is known: the API's before-request hook (``web.api``),
the WebSocket's upgrade (``web.ws``), the dashboard's ``@page`` (``web.dashboard.session``) and the
sign-in form. A live stream is one request, at connect. Health, metrics, static files and the API's
document are never counted. Every counted response carries ``RateLimit-Policy`` and ``RateLimit``; a
refusal is 429 with ``Retry-After`` too, counted in ``rate_limit_refusals_total{tenant, class}``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from flask import Flask, current_app, g, request

from db import rate_limits as store
from db import tenants
from sansio import rate_limit as rl

log = logging.getLogger(__name__)

READS = ("GET", "HEAD", "OPTIONS")


def key_subject(key: str) -> str:
    """The subject of an API key: its hash's first 128 bits (the key itself is never stored)."""
    return "key:" + tenants.hash_key(key).hex()[:32]


def session_subject(session_id: str) -> str:
    return f"session:{session_id}"


def policy(settings: Any, method: str) -> rl.Policy:
    if method.upper() in READS:
        return rl.Policy("reads", settings.rate_limit_reads, settings.rate_limit_reads_burst)
    return rl.Policy("writes", settings.rate_limit_writes, settings.rate_limit_writes_burst)


def sign_in_policy(settings: Any) -> rl.Policy:
    return rl.Policy("sign-in", settings.rate_limit_sign_in, settings.rate_limit_sign_in_burst)


def _root() -> Any:
    return current_app.extensions["wabot"]


def request_policy() -> rl.Policy | None:
    """The policy this request counts under; None when limits are off, its class is unlimited or it
    was counted already."""
    settings = _root().settings
    chosen = policy(settings, request.method)
    if not settings.rate_limit_enabled or chosen.unlimited or "rate_limit" in g:
        return None
    return chosen


def counted(tenant_id: str, chosen: rl.Policy, decision: rl.Decision) -> rl.Decision:
    """Keep a request's decision (the response's headers, ``check``), count a refusal, maybe prune."""
    root = _root()
    g.rate_limit = (chosen, decision)
    _maybe_prune(root)
    if not decision.allowed:
        root.metrics.rate_limit_refusals.labels(tenant_id, chosen.name).inc()
    return decision


def check(tenant_id: str, subject: str) -> rl.Decision | None:
    """Count this request for ``subject`` of ``tenant_id``: its decision (kept for the response's
    headers) — the one already made when the request was counted with its key's lookup
    (``db.tenants.authenticate_limited``) — or None when limits are off or the class is unlimited."""
    if "rate_limit" in g:
        return g.rate_limit[1]
    chosen = request_policy()
    if chosen is None:
        return None
    return counted(tenant_id, chosen, store.take(_root().pool, tenant_id, subject, chosen))


def refusal_message(decision: rl.Decision, who: str) -> str:
    chosen, _ = g.rate_limit
    return rl.refusal(chosen, decision, who)


def check_sign_in(keys: list[str]) -> float | None:
    """Count a sign-in attempt for each key (the email tried, the client address): the seconds to wait
    when any of them is past its limit, else None."""
    root = _root()
    settings = root.settings
    chosen = sign_in_policy(settings)
    if not settings.rate_limit_enabled or chosen.unlimited:
        return None
    decisions = store.take_sign_in(root.pool, keys, chosen)
    _maybe_prune(root)
    refused = [d for d in decisions.values() if not d.allowed]
    # The headers describe the tightest key: the refused one that waits longest, else the one with least left.
    shown = (max(refused, key=lambda d: d.retry_after) if refused
             else min(decisions.values(), key=lambda d: d.remaining, default=None))
    if shown is not None:
        g.rate_limit = (chosen, shown)
    if not refused or shown is None:
        return None
    root.metrics.rate_limit_refusals.labels("", chosen.name).inc()
    return max(1.0, shown.retry_after)


def _maybe_prune(root: Any) -> None:
    if not rl.prune_due(random.random()):  # a sampling decision, not a secret
        return
    try:
        gone = store.prune(root.pool)
    except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: the next draw tries again
        log.warning("pruning idle rate-limit rows failed", extra={"error": repr(exc)})
        return
    if gone:
        log.info("idle rate-limit rows pruned", extra={"rows": gone})


def install(app: Flask) -> None:
    @app.after_request
    def _rate_limit_headers(response: Any) -> Any:
        found = g.get("rate_limit")
        if found is not None:
            response.headers.update(rl.headers(*found))
        return response

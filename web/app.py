"""The Flask application factory: request context (correlation id, tenant), JSON errors, body limit,
request metrics, and the blueprints.

``create_app(system)`` takes the process's root (settings, pool, metrics, and whatever actors the
process runs) and keeps it in ``app.extensions['wabot']``; no module-level state.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, g, request
from flask_openapi3 import OpenAPI
from werkzeug.middleware.proxy_fix import ProxyFix

from core import context
from core.root import WebRoot
from web import errors, rate_limits

log = logging.getLogger("web.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Media uploads carry files up to MEDIA_MAX_BYTES (plus multipart framing), not JSON: the API's upload
# and the dashboard composer's attachments.
_MEDIA_UPLOAD = re.compile(r"^(/api/v1/media|/app/inbox/[0-9a-fA-F-]{36}/send)$")
_MULTIPART_SLACK = 64 * 1024
# Responses that set no policy of their own (JSON, health, metrics) may run or frame nothing.
_DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'"


def _body_limit(settings: Any, environ: dict) -> int:
    """HTTP_MAX_BODY for every request but a media upload."""
    if environ.get("REQUEST_METHOD") == "POST" and _MEDIA_UPLOAD.match(environ.get("PATH_INFO") or ""):
        return max(settings.http_max_body, settings.media_max_bytes + _MULTIPART_SLACK)
    return settings.http_max_body


class _ChunkedBodyLimit:
    """A chunked request body has no Content-Length to check up front, and werkzeug would cut it off
    silently at the limit (the app would then see broken JSON, not a too-large body). Read it here,
    at most limit + 1 bytes: over the limit the request is flagged for a 413, otherwise it continues
    with a known length."""

    def __init__(self, app: Any, limit: Callable[[dict], int]) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            stream = environ["wsgi.input"]
            limit = self.limit(environ)
            body = bytearray()  # grows in place: an upload of many MiB must not be copied per chunk
            while len(body) <= limit:
                chunk = stream.read(min(65536, limit + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
            if len(body) > limit:
                environ["wabot.body_too_large"] = True
                body = bytearray()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)


def create_app(system: WebRoot) -> Flask:
    from web import api, openapi

    # The dashboard blueprint serves its own static files; the API's document is served by web.openapi.
    app = OpenAPI("wabot", info=openapi.info(), security_schemes=api.SECURITY_SCHEME, validation_error_status=400,
                  validation_error_model=api.ErrorBody,
                  validation_error_callback=api.validation_error, doc_ui=False, static_folder=None)
    settings = system.settings
    app.config.update(MAX_CONTENT_LENGTH=settings.http_max_body, JSON_SORT_KEYS=False)
    app.extensions["wabot"] = system
    # Wrapping wsgi_app is how Flask documents adding WSGI middleware.
    app.wsgi_app = _ChunkedBodyLimit(app.wsgi_app, lambda environ: _body_limit(settings, environ))  # type: ignore[method-assign]
    if settings.proxy_hops:
        # The client's address, scheme and host as the trusted proxies saw them (sign-in throttling
        # counts per address; cookies and CSRF origin checks need the public scheme and host).
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)  # type: ignore[method-assign]
    metrics = system.metrics
    errors.install(app, metrics)
    rate_limits.install(app)

    @app.before_request
    def _begin() -> Any:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _REQUEST_ID.match(incoming) else context.new_correlation_id()
        g.request_id = rid
        g.started = time.perf_counter()
        g.context_token = context.set_current(context.WorkContext(correlation_id=rid))
        length = request.content_length
        limit = _body_limit(settings, request.environ)
        request.max_content_length = limit  # what werkzeug enforces while reading the body or a form
        if request.environ.get("wabot.body_too_large") or (length is not None and length > limit):
            raise errors.ApiError(413, "payload_too_large", f"request body over {limit} bytes")
        return None

    @app.after_request
    def _finish(response: Any) -> Any:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("Content-Security-Policy", _DEFAULT_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            elapsed = time.perf_counter() - g.started
            # Time the server spent on the response before its body streams (devtools show it).
            response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.1f}"
            metrics.http_latency.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={"method": request.method, "route": route, "status": response.status_code,
                       "duration_ms": round(elapsed * 1000, 2)},
            )
        return response

    @app.teardown_request
    def _teardown(_exc: Any) -> None:
        token = g.pop("context_token", None)
        if token is not None:
            try:
                context.reset(token)
            except ValueError:
                pass  # reset from another context (streamed responses): nothing to undo

    from web import audit, bots, conversations, health, media, streams, tenants, webhooks, ws
    from web.dashboard import blueprint as dashboard

    app.register_blueprint(health.blueprint)
    app.register_api(tenants.blueprint, url_prefix="/api/v1")
    app.register_api(bots.blueprint, url_prefix="/api/v1")
    app.register_api(conversations.blueprint, url_prefix="/api/v1")
    app.register_api(streams.blueprint, url_prefix="/api/v1")
    app.register_blueprint(ws.blueprint, url_prefix="/api/v1")
    app.register_api(media.blueprint, url_prefix="/api/v1")
    app.register_api(webhooks.blueprint, url_prefix="/api/v1")
    app.register_api(audit.blueprint, url_prefix="/api/v1")
    for extra in system.blueprints:
        app.register_blueprint(extra, url_prefix="/api/v1")
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(dashboard)

    @app.after_request
    def _docs_policy(response: Any) -> Any:
        # Swagger UI sets style attributes as it renders: the docs page (and only it) allows them.
        if request.blueprint == "openapi" and response.mimetype == "text/html":
            response.headers["Content-Security-Policy"] = (
                "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
                " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        return response

    return app

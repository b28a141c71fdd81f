"""JSON error bodies for every error the API can return — never an HTML page or a traceback.

Body shape: ``{"error": {"status": 404, "code": "not_found", "message": "...", "field": "..."}}``
(``field`` only for input errors) plus the request id, so a client report can be matched to logs.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from core import context, sentry
from db.quotas import QuotaExceeded
from db.tenants import TenantDisabled

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client can act on, raised anywhere in a request."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def bad_request(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_input", message, field=field)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def error_response(status: int, code: str, message: str, field: str | None = None) -> Any:
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if field is not None:
        body["field"] = field
    response = jsonify({"error": body, "request_id": context.correlation_id()})
    response.status_code = status
    return response


_MACHINE_PATHS = ("/api/", "/healthz", "/readyz", "/metrics")
_PAGE_PATHS = ("/app/", "/app", "/signin", "/signout", "/auth/", "/tenants", "/static/")


def _for_people() -> bool:
    """Errors are pages for the dashboard's paths, and for a browser asking for a page elsewhere;
    JSON for the API, health and metrics, and for any client that does not ask for HTML."""
    if request.path.startswith(_MACHINE_PATHS) or "dashboard" not in current_app.blueprints:
        return False
    if request.path.startswith(_PAGE_PATHS):
        return True
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) == "text/html" and accept["text/html"] > accept["*/*"]


def _page(status: int, title: str, message: str) -> Any:
    from web.dashboard import html_error

    return html_error(status, title, message)


def install(app: Flask, metrics: Any) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        response = error_response(exc.status, exc.code, exc.message, exc.field)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    @app.errorhandler(TenantDisabled)
    def _disabled(exc: TenantDisabled) -> Any:
        return error_response(403, "tenant_disabled", exc.MESSAGE)

    @app.errorhandler(QuotaExceeded)
    def _quota(exc: QuotaExceeded) -> Any:
        # The daily message quota allows again by itself (429, Retry-After); the others need the
        # operator or a deletion (403). Nothing was stored either way.
        status = 429 if exc.retry_after is not None else 403
        response = error_response(status, "quota_exceeded", exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if _for_people():
            return _page(exc.code or 500, exc.name or "Error", exc.description or "")
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        allowed = getattr(exc, "valid_methods", None)  # a MethodNotAllowed's
        if exc.code == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception) -> Any:
        # The view's tenant binding (web.auth) has been unwound by the time Flask calls this handler;
        # restore it so the log line and the Sentry event say whose request failed.
        with context.bound(tenant_id=g.get("tenant_id") or context.current().tenant_id):
            # Flask calls this inside its own except block: the traceback is there to log.
            log.exception("unhandled error in request", extra={"error": repr(exc)})  # noqa: LOG004
            metrics.errors.labels(type(exc).__name__, "http").inc()
            sentry.capture(exc, where="http")
            if _for_people():
                return _page(500, "Something went wrong", "The error was recorded. Try again in a moment.")
            return error_response(500, "internal_error", "internal server error")

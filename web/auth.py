"""Bearer API-key authentication for plain Flask views: ``Authorization: Bearer <key>`` sets the tenant
for everything the request does (``g.tenant_id`` and the work context's tenant, which logs and Sentry
carry). The ``/api/v1`` routes authenticate (and check scopes) in ``web.api`` before their models
validate; the live streams there also take the dashboard's session cookie."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import current_app, g, request

from core import context
from core.root import WebRoot
from db import tenants
from web.errors import ApiError


def system() -> WebRoot:
    """The process's root, as ``create_app`` was given it."""
    root: WebRoot = current_app.extensions["wabot"]
    return root


def require_tenant(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
        tenant_id = tenants.authenticate(system().pool, key.strip())
        if tenant_id is None:
            raise ApiError(401, "unauthorized", "invalid API key")
        g.tenant_id = tenant_id
        with context.bound(tenant_id=tenant_id):
            return view(*args, **kwargs)

    return wrapper


def session_check(root: WebRoot, person: Any) -> Callable[[], bool] | None:
    """For a stream opened with a session: whether that session still stands (not signed out,
    expired, or removed from the tenant). None for a key (a revoked key's open stream runs on, as
    before)."""
    if person is None:
        return None
    from db import accounts

    def still_valid() -> bool:
        try:
            found = accounts.session(root.pool, person.token, root.settings.session_idle_timeout)
        except Exception:  # noqa: BLE001 - the database is away: keep the stream; check again later
            return True
        return found is not None and found["tenant_id"] == person.tenant_id and found["role"] is not None

    return still_valid

"""Bearer API-key authentication: ``Authorization: Bearer <key>`` sets the tenant for everything the
request does (``g.tenant_id`` and the work context's tenant, which logs and Sentry carry).

The live streams also take the dashboard's session cookie (``require_tenant_or_session``): a browser's
EventSource cannot send headers. Only read streams do; every other API route takes keys alone, so
a cookie never authorises a state change through the API (no CSRF surface there)."""

from __future__ import annotations

import functools
from typing import Any, Callable

from flask import current_app, g, request

from core import context
from db import tenants
from web.errors import ApiError


def system() -> Any:
    return current_app.extensions["wabot"]


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


def require_tenant_or_session(view: Callable[..., Any]) -> Callable[..., Any]:
    """As ``require_tenant``, or a signed-in dashboard member of a tenant (``g.person`` is then set).
    A presented key decides alone, exactly as elsewhere."""
    keyed = require_tenant(view)

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("Authorization"):
            return keyed(*args, **kwargs)
        from web.dashboard import session  # the dashboard imports the API's modules: import late

        person = session.current()
        if person is None or person.tenant_id is None or person.role is None:
            raise ApiError(401, "unauthorized",
                           "missing API key: send 'Authorization: Bearer <key>' (or sign in to the dashboard)")
        g.tenant_id = person.tenant_id
        g.person = person
        with context.bound(tenant_id=person.tenant_id):
            return view(*args, **kwargs)

    return wrapper


def session_check(root: Any, person: Any) -> Callable[[], bool] | None:
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

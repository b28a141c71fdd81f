"""Bearer API-key authentication: ``Authorization: Bearer <key>`` sets the tenant for everything the
request does (``g.tenant_id`` and the work context's tenant, which logs and Sentry carry)."""

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

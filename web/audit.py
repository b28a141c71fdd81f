"""The audit log from the web side: recording the current request's changes, and reading the log.

Recording (``db.audit`` does the writing; this fills in who, the request id and the client address):

- ``note(action, object_type, object_id, before=..., after=...)``: right after the change committed, in
  a transaction of its own. For the routes whose data function runs its own transaction.
- ``in_transaction(action, object_type, object_id)``: a writer ``(unit, before, after)`` for a data
  function that takes one (``audit=``), so the row commits with the change and ``before`` is read in
  the same transaction (rules, AI settings, roles).

Either is called only once the change happened: a refused request (4xx) writes nothing. The actor is
the dashboard's signed-in member, or the API key of the request (looked up once per request).

Reading: ``GET /api/v1/audit`` (the ``manage`` scope), and the dashboard's admin page
(``web.dashboard.views_audit``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import g, jsonify, request

from db import audit as audit_db
from db import tenants
from web import paging
from web.api import api_blueprint, error_responses, operation
from web.auth import system
from web.schemas.audit import AuditList, AuditQuery

log = logging.getLogger(__name__)


def actor() -> audit_db.Actor:
    """Who makes the current request: the dashboard's signed-in member (a dashboard page), else the
    request's API key."""
    found: audit_db.Actor | None = g.get("audit_actor")
    if found is not None:
        return found
    person = g.get("person")  # set by web.dashboard.session.current(), which API keys never reach
    if person is not None and person.role is not None:
        found = audit_db.Actor.member(person.account_id, person.email, person.display_name)
    else:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            found = audit_db.api_key_actor(system().pool, g.tenant_id, tenants.hash_key(key.strip()))
    if found is None:
        raise RuntimeError("an audited change without a signed-in member or an API key")
    g.audit_actor = found
    return found


def actor_of(person: Any, key: str | None) -> audit_db.Actor | None:
    """The actor behind a connection authenticated with a session (``person``) or a key, looked up
    once (the WebSocket, whose key may come in the query)."""
    if person is not None:
        return audit_db.Actor.member(person.account_id, person.email, person.display_name)
    if key:
        return audit_db.api_key_actor(system().pool, g.tenant_id, tenants.hash_key(key))
    return None


def request_id() -> str | None:
    rid: str | None = g.get("request_id")
    return rid


def client_address() -> str | None:
    """The client's address (ProxyFix has already applied PROXY_HOPS' trusted X-Forwarded-For)."""
    return request.remote_addr


def note(action: str, object_type: str, object_id: Any = None, *, before: Any = None, after: Any = None,
         tenant_id: str | None = None) -> None:
    """Record a change that has committed. A failure to write is logged (the change stands; the request
    succeeded), never raised."""
    tenant = tenant_id or g.tenant_id
    try:
        audit_db.record_now(system().pool, tenant, actor(), action, object_type, object_id, before, after,
                            request_id=request_id(), address=client_address())
    except Exception:
        log.exception("audit row not written", extra={"action": action, "object_type": object_type,
                                                      "object_id": None if object_id is None else str(object_id)})


class Recorder:
    """Records one change of the current request inside a transaction: ``recorder(unit, before, after)``,
    with ``object_id=`` when the id is known only then (a row just inserted). The actor, request id and
    address are taken when it is made, before the transaction holds a connection."""

    def __init__(self, action: str, object_type: str, object_id: Any = None, tenant_id: str | None = None) -> None:
        self.action, self.object_type, self.object_id = action, object_type, object_id
        self.tenant_id: str = tenant_id or g.tenant_id
        self.actor, self.request_id, self.address = actor(), request_id(), client_address()

    def __call__(self, unit: Any, before: Any, after: Any, object_id: Any = None) -> None:
        audit_db.record(unit, self.tenant_id, self.actor, self.action, self.object_type,
                        self.object_id if object_id is None else object_id, before, after,
                        request_id=self.request_id, address=self.address)


def in_transaction(action: str, object_type: str, object_id: Any = None, tenant_id: str | None = None) -> Recorder:
    """A writer for a data function's ``audit=``: ``writer(unit, before, after)`` inside its transaction."""
    return Recorder(action, object_type, object_id, tenant_id)


# -- the API ---------------------------------------------------------------------------------------

blueprint = api_blueprint("audit", __name__, "Audit log",
                          "Who changed what in the tenant, when and from where: every change by a member of the"
                          " dashboard, an API key or the operator. Append-only; kept for AUDIT_RETENTION.")


def filters_of(query: AuditQuery) -> audit_db.Filters:
    return audit_db.Filters(action=query.action, actor=query.actor, object_type=query.object_type,
                            object_id=query.object_id, since=query.since_at, until=query.until_at)


@operation(blueprint, "get", "/audit", scope="manage", summary="The tenant's audit log, newest first",
           description="Every change by a member, an API key or the operator: who (`actor`), what (`action`,"
                       " `object_type`, `object_id`), the value before and after where it is small (rules, AI"
                       " settings, roles; never a secret), when, the request id and the client's address. Filter"
                       " by action (or a prefix like `bot.*`), actor, object and time; keyset-paged. Reading it"
                       " needs the manage scope.",
           operation_id="listAudit", responses={200: AuditList, **error_responses(400)})
def list_audit(query: AuditQuery) -> Any:
    rows = audit_db.entries(system().pool, g.tenant_id, filters_of(query), query.limit,
                            paging.parse_before(query.before))
    rows, cursor = paging.page(rows, query.limit, "sort_at")
    return jsonify({"entries": rows, "next_before": cursor})

"""The audit log page (admins only): who changed what, newest first, with filters and paging.

The filters are the API's (``GET /api/v1/audit``, ``web.schemas.audit.AuditQuery``) checked by the same
model; the times are ``datetime-local`` inputs in the viewer's time zone.
"""

from __future__ import annotations

import datetime
from typing import Any

from flask import abort, render_template, request
from pydantic import ValidationError

from db import audit as audit_db
from sansio import audit as audit_rules
from sansio import roles
from web import api, paging
from web.audit import filters_of
from web.dashboard import blueprint, session, viewer_zone
from web.dashboard.session import Member
from web.schemas.audit import AuditQuery

PAGE = 50
FIELDS = ("action", "actor", "object_type", "object_id", "since", "until")
LABELS = {"action": "Action", "actor": "Who", "object_type": "Object type", "object_id": "Object id",
          "since": "From", "until": "Until"}
# What the action filter offers: every action, and each object's prefix.
SUGGESTIONS = sorted({*audit_rules.ACTIONS, *(action.split(".")[0] + ".*" for action in audit_rules.ACTIONS)})


def _local_time(raw: str, field: str) -> str | None:
    """A ``datetime-local`` value (the viewer's wall time) as an ISO 8601 time with its offset."""
    if not raw:
        return None
    try:
        at = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise _Refused(field, "enter a date and time") from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=viewer_zone())).isoformat()


class _Refused(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _query(form: dict[str, str]) -> AuditQuery:
    values: dict[str, Any] = {key: form[key] or None for key in ("action", "actor", "object_type", "object_id")}
    values["since"] = _local_time(form["since"], "since")
    values["until"] = _local_time(form["until"], "until")
    values["limit"] = PAGE
    values["before"] = request.args.get("before") or None
    try:
        return AuditQuery.model_validate(values)
    except ValidationError as exc:
        field, message = api.first_problem(exc, AuditQuery)
        if field == "before":
            abort(400, description="That page link is not valid any more; start from the first page.")
        raise _Refused(field, message) from None


@blueprint.get("/app/admin/audit")
@session.page(roles.ADMIN)
def audit_log(person: Member) -> Any:
    form = {key: request.args.get(key, "").strip()[:320] for key in FIELDS}
    context: dict[str, Any] = dict(form=form, rows=[], next_before=None, error=None, field=None,
                                   suggestions=SUGGESTIONS, labels=LABELS,
                                   filtered={key: value for key, value in form.items() if value})
    try:
        query = _query(form)
    except _Refused as exc:
        label = LABELS.get(exc.field or "", "")
        context.update(error=f"{label}: {exc.message}" if label else exc.message, field=exc.field)
        return render_template("audit.html", **context), 400
    rows = audit_db.entries(session.root().pool, person.tenant_id, filters_of(query), PAGE,
                            paging.parse_before(query.before))
    rows, next_before = paging.page(rows, PAGE, "sort_at")
    context.update(rows=rows, next_before=next_before)
    return render_template("audit.html", **context)

"""Webhooks in the dashboard: the tenant's endpoints with their state, adding and changing one,
switching it off and on, rotating its secret, sending a test event, deleting it; per endpoint the
delivery log (each attempt's status, duration, error and the start of the answer) with replays.

Admins manage (``roles.ADMIN``: an endpoint receives the tenant's messages, as an API key reads
them); everyone else reads. The checks are the API's (``web.webhooks``): the URL's form and
addresses, event types, the tenant's bots. A secret is on the page only in the answer to adding an
endpoint or rotating its secret, never on a later visit.
"""

from __future__ import annotations

import datetime
from typing import Any

from flask import abort, redirect, render_template, request, url_for

from db import dashboard
from db import webhook_endpoints as db
from sansio import roles
from sansio import webhook_endpoints as rules
from web import audit, paging
from web import validation as v
from web import webhooks as api
from web.dashboard import blueprint, session, viewer_zone
from web.dashboard.session import Member
from web.errors import ApiError

LOG_PAGE = 50
LOG_STATES = {"": "All", "failed": "Failed", "pending": "Waiting", "delivering": "Sending", "delivered": "Delivered"}
EVENT_TYPES = [t for t in rules.EVENT_TYPES if t != "webhook.test"]
LABELS = {"url": "URL", "description": "Description", "event_types": "Event types", "bot_ids": "Bots",
          "since": "From", "until": "Until"}


def _endpoint(person: Member, webhook_id: str) -> dict[str, Any]:
    found = db.get(session.root().pool, person.tenant_id, session.path_id(webhook_id, "webhook"))
    if found is None:
        abort(404, description="There is no such webhook.")
    return found


def _form() -> dict[str, Any]:
    return {"url": request.form.get("url", "").strip(), "description": request.form.get("description", ""),
            "event_types": request.form.get("event_types", ""), "bot_ids": request.form.getlist("bot_ids")}


def _settings(form: dict[str, Any], bots: list[tuple[str, str]]) -> dict[str, Any]:
    """The endpoint's settings from the form, checked as the API checks them; ApiError names the field
    and says what is wrong with it."""
    try:
        return _checked(form, bots)
    except ApiError as exc:
        label = LABELS.get(exc.field or "", "")
        raise ApiError(400, exc.code, f"{label}: {exc.message}" if label else exc.message, exc.field) from None


def _checked(form: dict[str, Any], bots: list[tuple[str, str]]) -> dict[str, Any]:
    url = api.check_url(v.text(form, "url", max_len=2000))
    description = v.text(form, "description", required=False, max_len=500)
    types = [part.strip() for part in form["event_types"].replace("\n", ",").split(",") if part.strip()]
    try:
        event_types = rules.check_event_types(types)
    except rules.PatternRefused as exc:
        raise ApiError(400, "invalid_input", exc.reason, field="event_types") from None
    known = {bot_id for bot_id, _ in bots}
    chosen = [b for b in form["bot_ids"] if b]
    if any(b not in known for b in chosen):
        raise ApiError(400, "invalid_input", "choose among your bots", field="bot_ids")
    return {"url": url, "description": description, "event_types": event_types, "bot_ids": chosen or None}


def _list_page(person: Member, *, status: int = 200, **extra: Any) -> Any:
    pool = session.root().pool
    context: dict[str, Any] = {
        "endpoints": db.list_all(pool, person.tenant_id), "bots": dashboard.bot_names(pool, person.tenant_id),
        "form": {}, "error": None, "field": None, "created": None, "secret": None, "event_types": EVENT_TYPES,
    }
    context.update(extra)
    return render_template("webhooks.html", **context), status


@blueprint.get("/app/webhooks")
@session.page(roles.READ)
def webhooks(person: Member) -> Any:
    return _list_page(person)


@blueprint.post("/app/webhooks")
@session.page(roles.ADMIN)
def create_webhook(person: Member) -> Any:
    form = _form()
    pool = session.root().pool
    try:
        chosen = _settings(form, dashboard.bot_names(pool, person.tenant_id))
    except ApiError as exc:
        return _list_page(person, status=400, form=form, error=exc.message, field=exc.field)
    endpoint, secret = db.create(pool, person.tenant_id, enabled=True, **chosen)
    audit.note("webhook_endpoint.create", "webhook_endpoint", endpoint["id"], after=api.audit_view(endpoint))
    return _list_page(person, created=endpoint, secret=secret)


# -- one endpoint ------------------------------------------------------------------------------------


def _time_field(name: str) -> datetime.datetime | None:
    """A ``datetime-local`` input (the viewer's wall time) as an aware time; None when left empty."""
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    try:
        at = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, "invalid_input", "Enter a date and time.", field=name) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=viewer_zone())


def _detail_page(person: Member, endpoint: dict[str, Any], *, status: int = 200, **extra: Any) -> Any:
    pool = session.root().pool
    state = request.args.get("state", "")
    if state not in LOG_STATES:
        state = ""
    try:
        before = paging.parse_before(request.args.get("before"))
    except ValueError:
        abort(400, description="That page link is not valid any more; start from the first page.")
    rows = db.list_deliveries(pool, person.tenant_id, endpoint["id"], state=state or None, type_pattern=None,
                              since=None, until=None, limit=LOG_PAGE, before=before) or []
    more = len(rows) > LOG_PAGE
    rows = rows[:LOG_PAGE]
    bots = dashboard.bot_names(pool, person.tenant_id)
    context: dict[str, Any] = {
        "endpoint": endpoint, "deliveries": rows, "state": state, "states": LOG_STATES, "bots": bots,
        "names": dict(bots), "first_page": before is None,
        "next_before": paging.cursor(rows[-1]["sort_at"], rows[-1]["id"]) if more else None,
        "form": {"url": endpoint["url"], "description": endpoint["description"],
                 "event_types": ", ".join(endpoint["event_types"]), "bot_ids": endpoint["bot_ids"] or []},
        "error": None, "field": None, "secret": None, "event_types": EVENT_TYPES,
        "notice": {"tested": "A test event is on its way; its outcome shows below.",
                   "replayed": "The delivery is queued again.", "saved": "Saved."}.get(request.args.get("done", "")),
        "replayed_count": request.args.get("replayed"),
    }
    context.update(extra)
    return render_template("webhook.html", **context), status


@blueprint.get("/app/webhooks/<webhook_id>")
@session.page(roles.READ)
def webhook(person: Member, webhook_id: str) -> Any:
    return _detail_page(person, _endpoint(person, webhook_id))


@blueprint.post("/app/webhooks/<webhook_id>")
@session.page(roles.ADMIN)
def update_webhook(person: Member, webhook_id: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    form = _form()
    pool = session.root().pool
    try:
        chosen = _settings(form, dashboard.bot_names(pool, person.tenant_id))
    except ApiError as exc:
        return _detail_page(person, endpoint, status=400, form=form, error=exc.message, field=exc.field)
    if db.update(pool, person.tenant_id, endpoint["id"], **chosen) is not None:
        audit.note("webhook_endpoint.update", "webhook_endpoint", endpoint["id"], after=chosen)
    return redirect(url_for("dashboard.webhook", webhook_id=endpoint["id"], done="saved"), code=303)


@blueprint.post("/app/webhooks/<webhook_id>/<any(enable, disable):action>")
@session.page(roles.ADMIN)
def switch_webhook(person: Member, webhook_id: str, action: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    if db.update(session.root().pool, person.tenant_id, endpoint["id"], enabled=action == "enable") is not None:
        audit.note("webhook_endpoint.update", "webhook_endpoint", endpoint["id"], after={"enabled": action == "enable"})
    return redirect(url_for("dashboard.webhook", webhook_id=endpoint["id"]), code=303)


@blueprint.post("/app/webhooks/<webhook_id>/rotate")
@session.page(roles.ADMIN)
def rotate_webhook_secret(person: Member, webhook_id: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    if request.form.get("confirm") != "yes":
        return render_template("confirm.html", message=(
            "Give this endpoint a new secret? For 24 hours requests are signed with both the old and the new one;"
            " after that only the new one verifies."), action=request.path,
            back=url_for("dashboard.webhook", webhook_id=endpoint["id"]))
    found = db.rotate_secret(session.root().pool, person.tenant_id, endpoint["id"])
    if found is None:
        abort(404, description="There is no such webhook.")
    endpoint, secret = found
    audit.note("webhook_endpoint.rotate_secret", "webhook_endpoint", endpoint["id"])  # never the secret
    return _detail_page(person, endpoint, secret=secret)


@blueprint.post("/app/webhooks/<webhook_id>/test")
@session.page(roles.ADMIN)
def webhook_test_event(person: Member, webhook_id: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    try:
        delivery = db.send_test(session.root().pool, person.tenant_id, endpoint["id"])
    except db.Conflict as exc:
        return _detail_page(person, endpoint, status=409, error=str(exc)[:1].upper() + str(exc)[1:] + ".")
    if delivery is not None:
        audit.note("webhook_endpoint.test", "webhook_endpoint", endpoint["id"], after={"delivery_id": delivery["id"]})
    return redirect(url_for("dashboard.webhook", webhook_id=endpoint["id"], done="tested"), code=303)


@blueprint.post("/app/webhooks/<webhook_id>/delete")
@session.page(roles.ADMIN)
def delete_webhook(person: Member, webhook_id: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    if request.form.get("confirm") != "yes":
        return render_template("confirm.html", message=(
            f"Delete the webhook to {endpoint['url']}? Its delivery log goes with it and nothing more is sent."),
            action=request.path, back=url_for("dashboard.webhook", webhook_id=endpoint["id"]))
    if db.delete(session.root().pool, person.tenant_id, endpoint["id"]):
        audit.note("webhook_endpoint.delete", "webhook_endpoint", endpoint["id"], before={"url": endpoint["url"]})
    return redirect(url_for("dashboard.webhooks"), code=303)


@blueprint.post("/app/webhooks/<webhook_id>/deliveries/<delivery_id>/replay")
@session.page(roles.ADMIN)
def replay_webhook_delivery(person: Member, webhook_id: str, delivery_id: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    try:
        found = db.replay(session.root().pool, person.tenant_id, endpoint["id"],
                          session.path_id(delivery_id, "delivery"))
    except db.Conflict as exc:
        return _detail_page(person, endpoint, status=409, error=str(exc)[:1].upper() + str(exc)[1:] + ".")
    if found is None:
        abort(404, description="There is no such delivery.")
    audit.note("webhook_delivery.replay", "webhook_delivery", found["id"], after={"webhook_id": endpoint["id"]})
    return redirect(url_for("dashboard.webhook", webhook_id=endpoint["id"], done="replayed"), code=303)


@blueprint.post("/app/webhooks/<webhook_id>/replay-failed")
@session.page(roles.ADMIN)
def replay_failed_webhook_deliveries(person: Member, webhook_id: str) -> Any:
    endpoint = _endpoint(person, webhook_id)
    try:
        since, until = _time_field("since"), _time_field("until")
        if since is not None and until is not None and until <= since:
            raise ApiError(400, "invalid_input", "“Until” must be later than “from”.", field="until")
        count = db.replay_failed(session.root().pool, person.tenant_id, endpoint["id"], since, until)
    except ApiError as exc:
        return _detail_page(person, endpoint, status=400, error=exc.message, field=exc.field)
    except db.Conflict as exc:
        return _detail_page(person, endpoint, status=409, error=str(exc)[:1].upper() + str(exc)[1:] + ".")
    if count is not None:
        audit.note("webhook_endpoint.replay_failed", "webhook_endpoint", endpoint["id"],
                   after={"replayed": count, "since": since, "until": until})
    return redirect(url_for("dashboard.webhook", webhook_id=endpoint["id"], replayed=count or 0), code=303)

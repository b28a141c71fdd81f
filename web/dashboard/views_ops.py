"""The outbox (dead letters and the other states, retry one or all of a bot's), the live event
monitor, and the admin pages: members (invite, role, remove, reset link), API keys, status."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import gevent
from flask import abort, redirect, render_template, request, url_for

from db import accounts, dashboard, quotas, tenants
from db import conversations_api as api_db
from sansio import roles
from web import api, audit, links, paging
from web import validation as v
from web.dashboard import blueprint, session
from web.dashboard.session import Member
from web.errors import ApiError
from web.streams import parse_filter

OUTBOX_PAGE = 50
STATES = {"dead": "Failed", "pending": "Waiting", "sending": "Sending", "sent": "Sent", "held": "Held by the quota"}


def link_url(token: str) -> str:
    return links.link_url(session.root().settings, token, request.host_url)


# -- outbox --------------------------------------------------------------------------------------


@blueprint.get("/app/outbox")
@session.page(roles.READ)
def outbox(person: Member) -> Any:
    pool = session.root().pool
    bots = dashboard.bot_names(pool, person.tenant_id)
    state = request.args.get("state", "dead")
    if state not in STATES:
        state = "dead"
    bot_id = request.args.get("bot") or None
    if bot_id not in {b for b, _ in bots}:
        bot_id = None
    try:
        before = paging.parse_before(request.args.get("before"))
    except ValueError:
        abort(400, description="That page link is not valid any more; start from the first page.")
    rows = api_db.list_outbox(pool, person.tenant_id, state, bot_id, OUTBOX_PAGE, before)
    more = len(rows) > OUTBOX_PAGE
    rows = rows[:OUTBOX_PAGE]
    names = dict(bots)
    return render_template("outbox.html", rows=rows, bots=bots, names=names, bot_id=bot_id, state=state, states=STATES,
                           next_before=paging.cursor(rows[-1]["sort_at"], rows[-1]["id"]) if more else None,
                           retried=request.args.get("retried"))


@blueprint.post("/app/outbox/retry-all")
@session.page(roles.RETRY)
def retry_all(person: Member) -> Any:
    bot_id = session.path_id(request.form.get("bot", ""), "bot")
    count = dashboard.retry_all_dead(session.root().pool, person.tenant_id, bot_id)
    if count:
        audit.note("outbox.retry_all", "bot", bot_id, after={"count": count})
    return redirect(url_for("dashboard.outbox", bot=bot_id, retried=count), code=303)


# -- events --------------------------------------------------------------------------------------


KNOWN_TYPES = ("bot.state", "bot.qr", "bot.pair_code", "bot.paired", "message.in", "message.out", "message.status",
               "outbox.dead", "ai.error", "conversation.state")


@blueprint.get("/app/events")
@session.page(roles.READ)
def events(person: Member) -> Any:
    pool = session.root().pool
    bots = dashboard.bot_names(pool, person.tenant_id)
    names = dict(bots)
    bot_id = request.args.get("bot") or None
    if bot_id not in names:
        bot_id = None
    type_filter = request.args.get("type", "").strip()[:200]
    filter_error = None
    try:
        flt = parse_filter([bot_id] if bot_id else [], [type_filter] if type_filter else [])
    except ApiError as exc:
        filter_error, type_filter = f"Type: {exc.message}.", ""
        flt = parse_filter([bot_id] if bot_id else [], [])
    recent = [e for e in dashboard.recent_events(pool, person.tenant_id) if flt.matches(e.bot_id, e.type)][:50]
    query = urlencode([(k, v) for k, v in (("bot", bot_id), ("type", type_filter)) if v])
    return render_template("events.html", bots=bots, names=names, bot_id=bot_id, type_filter=type_filter,
                           filter_query=query, filter_error=filter_error, recent=recent, known_types=KNOWN_TYPES)


# -- members -------------------------------------------------------------------------------------


def _members_page(person: Member, *, status: int = 200, **extra: Any) -> Any:
    members = accounts.list_members(session.root().pool, person.tenant_id)
    context: dict[str, Any] = dict(members=members, link=None, link_for=None, error=None, field=None, form={},
                                   role_names=roles.ROLES)
    context.update(extra)
    return render_template("members.html", **context), status


@blueprint.get("/app/admin/members")
@session.page(roles.ADMIN)
def members(person: Member) -> Any:
    return _members_page(person)


@blueprint.post("/app/admin/members")
@session.page(roles.ADMIN)
def invite(person: Member) -> Any:
    form = {"email": request.form.get("email", ""), "role": request.form.get("role", "agent"),
            "display_name": request.form.get("display_name", "")}
    try:
        email = v.email(form, "email")
        role = v.choice(form, "role", roles.ROLES, "agent")
        name = v.text(form, "display_name", required=False, max_len=200)
    except ApiError as exc:
        return _members_page(person, status=400, error=exc.message, field=exc.field, form=form)
    pool, settings = session.root().pool, session.root().settings
    try:
        user_id = accounts.invite(pool, person.tenant_id, email, role, name)
    except accounts.Conflict as exc:
        return _members_page(person, status=409, error=str(exc), field="email", form=form)
    token = accounts.create_link(pool, person.tenant_id, user_id, "invite", settings.auth_link_ttl, person.held_by)
    audit.note("member.invite", "member", user_id, after={"email": email, "role": role})  # never the link
    return _members_page(person, link=link_url(token), link_for=email, link_kind="invite")


@blueprint.post("/app/admin/members/<user_id>/role")
@session.page(roles.ADMIN)
def member_role(person: Member, user_id: str) -> Any:
    role = request.form.get("role", "")
    if role not in roles.ROLES:
        return _members_page(person, status=400, error="Choose admin, agent or viewer.")
    user_id = session.path_id(user_id, "member")
    try:
        if not accounts.set_role(session.root().pool, person.tenant_id, user_id, role,
                                 audit=audit.in_transaction("member.role", "member", user_id)):
            abort(404, description="There is no such member.")
    except accounts.Conflict as exc:
        return _members_page(person, status=409, error=str(exc)[:1].upper() + str(exc)[1:] + ".")
    return redirect(url_for("dashboard.members"), code=303)


@blueprint.post("/app/admin/members/<user_id>/remove")
@session.page(roles.ADMIN)
def member_remove(person: Member, user_id: str) -> Any:
    user_id = session.path_id(user_id, "member")
    found = accounts.member(session.root().pool, person.tenant_id, user_id)
    if found is None:
        abort(404, description="There is no such member.")
    if request.form.get("confirm") != "yes":
        return render_template("confirm.html", message=f"Remove {found['email']}? They are signed out at once.",
                               action=request.path, back=url_for("dashboard.members"))
    try:
        accounts.remove_member(session.root().pool, person.tenant_id, user_id,
                               audit=audit.in_transaction("member.remove", "member", user_id))
    except accounts.Conflict as exc:
        return _members_page(person, status=409, error=str(exc)[:1].upper() + str(exc)[1:] + ".")
    if found["account_id"] == person.account_id:
        return redirect(url_for("dashboard.tenants"), code=303)
    return redirect(url_for("dashboard.members"), code=303)


@blueprint.post("/app/admin/members/<user_id>/link")
@session.page(roles.ADMIN)
def member_link(person: Member, user_id: str) -> Any:
    """A new invite link (not signed up yet) or a password-reset link (an active member)."""
    pool, settings = session.root().pool, session.root().settings
    found = accounts.member(pool, person.tenant_id, session.path_id(user_id, "member"))
    if found is None:
        abort(404, description="There is no such member.")
    purpose = "reset" if found["account_id"] else "invite"
    if purpose == "reset" and accounts.tenant_count(pool, found["account_id"]) > 1:
        # Their account opens other organisations too: an admin of one must not be able to take it over.
        return _members_page(person, status=409, error=(
            f"{found['email']} is also a member of another organisation, so only they (from their account page)"
            " or the operator (python run.py reset-password EMAIL) can change their password."))
    token = accounts.create_link(pool, person.tenant_id, found["id"], purpose, settings.auth_link_ttl, person.held_by)
    audit.note("member.link", "member", found["id"], after={"email": found["email"], "purpose": purpose})
    return _members_page(person, link=link_url(token), link_for=found["email"], link_kind=purpose)


# -- API keys ------------------------------------------------------------------------------------


def _keys_page(person: Member, *, status: int = 200, **extra: Any) -> Any:
    rows = session.root().pool.query(
        person.tenant_id,
        "SELECT id, name, prefix, created_at, last_used_at, revoked_at, scopes FROM api_keys"
        " ORDER BY revoked_at IS NOT NULL, created_at DESC, id")
    keys = [{"id": str(r[0]), "name": r[1], "prefix": r[2], "created_at": r[3], "last_used_at": r[4],
             "revoked_at": r[5], "scopes": r[6]} for r in rows]
    context = dict(keys=keys, new_key=None, error=None, scope_meanings=api.SCOPE_MEANING)
    context.update(extra)
    return render_template("keys.html", **context), status


@blueprint.get("/app/admin/keys")
@session.page(roles.ADMIN)
def keys(person: Member) -> Any:
    return _keys_page(person)


@blueprint.post("/app/admin/keys")
@session.page(roles.ADMIN)
def create_key(person: Member) -> Any:
    try:
        name = v.text({"name": request.form.get("name", "")}, "name", required=False, max_len=200)
    except ApiError as exc:
        return _keys_page(person, status=400, error=exc.message)
    scopes = [s for s in api.SCOPES if s in request.form.getlist("scopes")] or None
    key_id, prefix, key = tenants.create_key(session.root().pool, person.tenant_id, name, scopes)
    audit.note("key.create", "key", key_id, after={"name": name, "prefix": prefix, "scopes": scopes})  # not the key
    return _keys_page(person, new_key=key, new_key_name=name)


@blueprint.post("/app/admin/keys/<key_id>/revoke")
@session.page(roles.ADMIN)
def revoke_key(person: Member, key_id: str) -> Any:
    key_id = session.path_id(key_id, "API key")
    if request.form.get("confirm") != "yes":
        return render_template("confirm.html", message="Revoke this key? Programs using it stop working at once.",
                               action=request.path, back=url_for("dashboard.keys"))
    tenants.revoke_key(session.root().pool, person.tenant_id, key_id,
                       audit=audit.in_transaction("key.revoke", "key", key_id))
    return redirect(url_for("dashboard.keys"), code=303)


# -- status --------------------------------------------------------------------------------------


@blueprint.get("/app/admin/status")
@session.page(roles.ADMIN)
def status(person: Member) -> Any:
    root = session.root()
    started = time.perf_counter()
    database: dict[str, Any] = {"ok": True, "error": None}
    try:
        root.pool.ping(2.0)
        database["ms"] = round((time.perf_counter() - started) * 1000, 1)
    except BaseException as exc:  # any failure is the answer; Timeout is a BaseException
        if isinstance(exc, gevent.GreenletExit):
            raise
        database = {"ok": False, "error": " ".join(str(exc).split()) or type(exc).__name__}
    supervisors = accounts.supervisors(root.pool, person.tenant_id) if database["ok"] else []
    limits, usage = quotas.read(root.pool, person.tenant_id) if database["ok"] else (None, None)
    bus = root.bus
    return render_template("status.html", database=database, pool=root.pool.stats(), supervisors=supervisors,
                           limits=limits, usage=usage,
                           streams=bus is not None and bus.is_alive(),
                           ai_configured=bool(root.settings.ai_api_key), ai_base_url=root.settings.ai_base_url)

"""Bots: the list with live state, creating one, start/stop/restart/log out/delete, pairing (QR code
or pair code), and each bot's reply rules and AI settings.

Input is checked by the same functions as the API (``web.bots``, ``sansio.rules``), so a form shows
the API's field errors next to the field they name.
"""

from __future__ import annotations

from typing import Any

import segno
from flask import abort, current_app, redirect, render_template, request, url_for
from pydantic import ValidationError

from core.ai import AiClient, AiError
from db import bots as bots_db
from db import conversations_api as api_db
from db import quotas
from db.quotas import QuotaExceeded
from sansio import roles
from sansio import rules as rules_mod
from sansio.prompt import build_messages
from web import api, audit
from web import bots as bots_api
from web import validation as v
from web.dashboard import blueprint, session
from web.dashboard.session import Member
from web.errors import ApiError
from web.schemas import bots as schemas_bots
from web.schemas.bots import TransportOptions

# Actions and the permission each needs (agents operate and pair; admins also manage).
ACTIONS = {"start": roles.OPERATE, "stop": roles.OPERATE, "restart": roles.OPERATE, "logout": roles.MANAGE_BOTS}
CONFIRM = {"logout": "Log the bot out? The number is unlinked and must be paired again.",
           "delete": "Delete the bot? Its conversations, messages and outbox go with it."}


def _bot(person: Member, bot_id: str) -> dict[str, Any]:
    bot = bots_db.get(session.root().pool, person.tenant_id, session.path_id(bot_id, "bot"))
    if bot is None:
        abort(404, description="There is no such bot.")
    return bot


def _pairing(person: Member, bot: dict[str, Any]) -> dict[str, Any]:
    """What the pairing panel shows: connected, a QR code, or why there is none."""
    if bot["paired"]:
        return {"kind": "paired"}
    if bot["desired_state"] != "running":
        return {"kind": "stopped"}
    pool = session.root().pool
    _exists, payload, issued_at = bots_db.qr(pool, person.tenant_id, bot["id"])
    if payload is None:
        return {"kind": "waiting", "reason": bots_api.no_qr_reason(bot)}
    if not person.can(roles.PAIR):  # whoever scans the code takes the number over: not for viewers
        return {"kind": "waiting", "reason": "the bot is waiting to be paired; an agent or admin sees its QR code here"}
    # A pair code asked for earlier stays on screen while the QR code rotates around it.
    rows = pool.query(person.tenant_id, "SELECT pair_code, pair_phone FROM bots WHERE id = %s AND pair_done = pair_seq",
                      (bot["id"],))
    code, code_phone = rows[0] if rows else (None, None)
    # Without width/height but with a viewBox, so the page's style decides the size.
    svg = segno.make(payload, micro=False).svg_inline(scale=4, omitsize=True)
    return {"kind": "qr", "svg": svg, "issued_at": issued_at,
            "pair_code": code, "pair_phone": code_phone}


def _done(fragment: str, target: str, **context: Any) -> Any:
    """After an action: the updated fragment for htmx, a redirect (Post/Redirect/Get) without it."""
    if session.wants_fragment():
        return render_template(fragment, **context)
    return redirect(target, code=303)


# -- the list ------------------------------------------------------------------------------------


@blueprint.get("/app/bots")
@session.page(roles.READ)
def bots(person: Member) -> Any:
    pool = session.root().pool
    found = bots_db.list_all(pool, person.tenant_id)
    limits, usage = quotas.read(pool, person.tenant_id)  # the header's quota and held answers
    return render_template("bots.html", bots=found, form={}, error=None, field=None, confirm=CONFIRM,
                           limits=limits, usage=usage)


@blueprint.post("/app/bots")
@session.page(roles.MANAGE_BOTS)
def create_bot(person: Member) -> Any:
    form: dict[str, Any] = {key: request.form.get(key, "") for key in ("name", "phone", "proxy")}
    form["auto_start"] = request.form.get("auto_start") == "on"
    options: dict[str, Any] = {"auto_start": form["auto_start"]}
    for key in ("phone", "proxy"):
        if form[key].strip():
            options[key] = form[key].strip()
    pool = session.root().pool
    try:
        name = v.text({"name": form["name"]}, "name", max_len=200)
        options = TransportOptions.model_validate(options).stored()
        bots_api.check_proxy(options, field="proxy")
    except (ApiError, ValidationError) as exc:
        field, message = ((exc.field, exc.message) if isinstance(exc, ApiError)
                          else api.first_problem(exc, TransportOptions))
        found = bots_db.list_all(pool, person.tenant_id)
        return render_template("bots.html", bots=found, form=form, error=message, field=field, confirm=CONFIRM), 400
    try:
        bot = bots_db.create(pool, person.tenant_id, name, options)
    except QuotaExceeded as exc:
        found = bots_db.list_all(pool, person.tenant_id)
        message = exc.message[:1].upper() + exc.message[1:] + "."
        return render_template("bots.html", bots=found, form=form, error=message, field="name", confirm=CONFIRM), 403
    if options.get("auto_start"):
        bots_db.set_desired(pool, person.tenant_id, bot["id"], "running")
    audit.note("bot.create", "bot", bot["id"], after={"name": name, "transport_options": options})
    return redirect(url_for("dashboard.bot", bot_id=bot["id"]), code=303)


@blueprint.get("/app/bots/<bot_id>/row")
@session.page(roles.READ)
def bot_row(person: Member, bot_id: str) -> Any:
    return render_template("_bot_row.html", bot=_bot(person, bot_id), confirm=CONFIRM)


# -- one bot -------------------------------------------------------------------------------------


@blueprint.get("/app/bots/<bot_id>")
@session.page(roles.READ)
def bot(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    return render_template("bot.html", bot=found, pairing=_pairing(person, found), confirm=CONFIRM,
                           pair_code=None, pair_error=None)


@blueprint.get("/app/bots/<bot_id>/panel")
@session.page(roles.READ)
def bot_panel(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    return render_template("_bot_panel.html", bot=found, pairing=_pairing(person, found), confirm=CONFIRM,
                           pair_code=None, pair_error=None)


@blueprint.post("/app/bots/<bot_id>/<any(start, stop, restart, logout):action>")
@session.page(roles.OPERATE)
def bot_action(person: Member, bot_id: str, action: str) -> Any:
    if not person.can(ACTIONS[action]):
        abort(403, description="Your role does not allow this.")
    found = _bot(person, bot_id)
    if action in CONFIRM and request.form.get("confirm") != "yes":
        return render_template("confirm.html", message=CONFIRM[action], action=request.path,
                               back=url_for("dashboard.bot", bot_id=found["id"]))
    desired, command = bots_api.ACTIONS[action]
    if bots_db.set_desired(session.root().pool, person.tenant_id, found["id"], desired, command):
        audit.note(f"bot.{action}", "bot", found["id"])
    found = _bot(person, found["id"])
    back = request.form.get("back") == "list"
    return _done("_bot_row.html" if back else "_bot_panel.html",
                 url_for("dashboard.bots") if back else url_for("dashboard.bot", bot_id=found["id"]),
                 bot=found, pairing=_pairing(person, found), confirm=CONFIRM, pair_code=None, pair_error=None)


@blueprint.post("/app/bots/<bot_id>/delete")
@session.page(roles.MANAGE_BOTS)
def delete_bot(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    if request.form.get("confirm") != "yes":
        return render_template("confirm.html", message=CONFIRM["delete"], action=request.path,
                               back=url_for("dashboard.bot", bot_id=found["id"]))
    if bots_db.delete(session.root().pool, person.tenant_id, found["id"]):
        audit.note("bot.delete", "bot", found["id"], before={"name": found["name"]})
    if session.wants_fragment():
        response = current_app.response_class("", status=200)
        response.headers["HX-Redirect"] = url_for("dashboard.bots")
        return response
    return redirect(url_for("dashboard.bots"), code=303)


@blueprint.post("/app/bots/<bot_id>/pair-code")
@session.page(roles.PAIR)
def bot_pair_code(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    code, error = None, None
    try:
        phone = schemas_bots.phone_digits(request.form.get("phone", ""))
        timeout = float(current_app.config.get("PAIR_CODE_TIMEOUT", bots_api.PAIR_CODE_TIMEOUT))
        code = bots_api.request_pair_code(session.root().pool, person.tenant_id, found["id"], phone, timeout)
        audit.note("bot.pair_code", "bot", found["id"])
    except ValueError as exc:
        error = str(exc)
    except ApiError as exc:
        error = exc.message
    found = _bot(person, found["id"])
    context = dict(bot=found, pairing=_pairing(person, found), confirm=CONFIRM, pair_code=code, pair_error=error)
    status = 200 if error is None else 400
    if session.wants_fragment():
        return session.form_fragment(render_template("_bot_panel.html", **context), status)
    return render_template("bot.html", **context), status


# -- rules ---------------------------------------------------------------------------------------


def _stored_rules(person: Member, bot_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stored = api_db.get_reply_settings(session.root().pool, person.tenant_id, bot_id)
    if stored is None:
        abort(404, description="There is no such bot.")
    rules, ai = stored
    return [dict(rule, enabled=rule.get("enabled", True)) for rule in (rules or [])], ai or {}


def _form_rules() -> list[dict[str, Any]]:
    try:
        count = min(int(request.form.get("count", "0")), rules_mod.MAX_RULES + 1)
    except ValueError:
        count = 0
    return [{"match": request.form.get(f"rules-{i}-match", "keyword"),
             "pattern": request.form.get(f"rules-{i}-pattern", ""),
             "reply": request.form.get(f"rules-{i}-reply", ""),
             "enabled": request.form.get(f"rules-{i}-enabled") == "on"} for i in range(max(0, count))]


def _edit(rules: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    """Add, remove or move a rule in the form (nothing is saved until "Save")."""
    verb, _, index = action.partition("-")
    if verb == "add":
        return rules + [{"match": "keyword", "pattern": "", "reply": "", "enabled": True}]
    if not index.isdigit() or int(index) >= len(rules):
        return rules
    i = int(index)
    if verb == "remove":
        return rules[:i] + rules[i + 1:]
    j = i - 1 if verb == "up" else i + 1 if verb == "down" else i
    if 0 <= j < len(rules) and j != i:
        rules = list(rules)
        rules[i], rules[j] = rules[j], rules[i]
    return rules


def _error_index(field: str | None) -> tuple[int | None, str | None]:
    """``rules[2].pattern`` → (2, "pattern")."""
    if not field or not field.startswith("rules["):
        return None, field
    index, _, rest = field[len("rules["):].partition("]")
    return (int(index) if index.isdigit() else None), rest.lstrip(".") or None


def _render_rules(person: Member, bot: dict[str, Any], rules: list[dict[str, Any]], *, status: int = 200,
                  **extra: Any) -> Any:
    context = dict(bot=bot, rules=rules, error=None, error_index=None, error_field=None, saved=False,
                   dirty=False, test_text="", test_result=None, max_rules=rules_mod.MAX_RULES)
    context.update(extra)
    if session.wants_fragment():
        return session.form_fragment(render_template("_rules_form.html", **context), status)
    return render_template("rules.html", **context), status


@blueprint.get("/app/bots/<bot_id>/rules")
@session.page(roles.READ)
def rules(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    return _render_rules(person, found, _stored_rules(person, found["id"])[0])


@blueprint.post("/app/bots/<bot_id>/rules")
@session.page(roles.READ)  # testing changes nothing; saving and editing need CONFIGURE (below)
def rules_post(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    action = request.form.get("action", "save")
    rules = _form_rules()
    if action == "test":
        text = request.form.get("test_text", "")[:4096]
        try:
            checked = rules_mod.validate_rules(rules)
        except rules_mod.RuleError as exc:
            index, field = _error_index(exc.field)
            return _render_rules(person, found, rules, status=400, error=exc.reason, error_index=index,
                                 error_field=field, test_text=text, dirty=True)
        match = rules_mod.first_match(checked, text)
        result = {"index": None if match is None else checked.index(match), "reply": match.reply if match else None}
        return _render_rules(person, found, rules, test_text=text, test_result=result,
                             dirty=rules != _stored_rules(person, found["id"])[0])
    if not person.can(roles.CONFIGURE):
        abort(403, description="Your role does not allow changing rules.")
    if action != "save":
        return _render_rules(person, found, _edit(rules, action), dirty=True)
    try:
        valid = [rule.to_json() for rule in rules_mod.validate_rules(rules)]
    except rules_mod.RuleError as exc:
        index, field = _error_index(exc.field)
        return _render_rules(person, found, rules, status=400, error=exc.reason, error_index=index,
                             error_field=field, dirty=True)
    if not api_db.set_reply_setting(session.root().pool, person.tenant_id, found["id"], "rules", valid,
                                    audit=audit.in_transaction("rules.update", "bot", found["id"])):
        abort(404, description="There is no such bot.")
    return _render_rules(person, found, _stored_rules(person, found["id"])[0], saved=True)


# -- AI settings ---------------------------------------------------------------------------------


def _ai_form() -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the form shows again, the settings object to validate)."""
    form: dict[str, Any] = {key: request.form.get(key, "") for key in ("system_prompt", "temperature", "history",
                                                                      "model", "fallback_reply")}
    form["enabled"] = request.form.get("enabled") == "on"
    settings: dict[str, Any] = {"enabled": form["enabled"], "system_prompt": form["system_prompt"]}
    for key, kind in (("temperature", float), ("history", int)):
        raw = form[key].strip()
        if raw:
            try:
                settings[key] = kind(raw)
            except ValueError:
                settings[key] = raw  # the validator names the field and what it must be
    settings["model"] = form["model"].strip() or None
    settings["fallback_reply"] = form["fallback_reply"] if form["fallback_reply"].strip() else None
    return form, settings


def _ai_view(ai: Any) -> dict[str, Any]:
    try:
        effective = rules_mod.validate_ai_config(ai or {})
    except rules_mod.RuleError:
        effective = rules_mod.AiConfig()
    data = effective.to_json()
    return {key: ("" if value is None else value) for key, value in data.items()}


def ai_client() -> AiClient:
    """The process's AI client for "try it" (the root's when it has one, else one per app)."""
    found = getattr(session.root(), "ai", None) or current_app.extensions.get("wabot.ai")
    if found is None:
        found = current_app.extensions["wabot.ai"] = AiClient(session.root().settings)
    return found


def _sample(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """A sample conversation, one message a line (``customer: …`` or ``bot: …``; a line without a
    prefix is the customer's): (history, the customer's last messages)."""
    turns: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        who, sep, said = line.partition(":")
        if sep and who.strip().lower() in ("bot", "assistant", "me", "agent"):
            turns.append(("out", said.strip()))
        elif sep and who.strip().lower() in ("customer", "user", "client"):
            turns.append(("in", said.strip()))
        else:
            turns.append(("in", line))
    incoming: list[str] = []
    while turns and turns[-1][0] == "in":
        incoming.insert(0, turns.pop()[1])
    return turns, incoming


def _render_ai(found: dict[str, Any], form: dict[str, Any], *, status: int = 200, **extra: Any) -> Any:
    context = dict(bot=found, form=form, error=None, field=None, saved=False, sample="", answer=None,
                   try_error=None, provider_configured=bool(session.root().settings.ai_api_key),
                   default_model=session.root().settings.ai_model)
    context.update(extra)
    return render_template("ai.html", **context), status


@blueprint.get("/app/bots/<bot_id>/ai")
@session.page(roles.READ)
def ai_settings(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    return _render_ai(found, _ai_view(_stored_rules(person, found["id"])[1]),
                      sample="customer: Hello! Do you deliver on Saturdays?")


@blueprint.post("/app/bots/<bot_id>/ai")
@session.page(roles.CONFIGURE)
def ai_post(person: Member, bot_id: str) -> Any:
    found = _bot(person, bot_id)
    form, raw = _ai_form()
    sample = request.form.get("sample", "")[:8000]
    try:
        checked = rules_mod.validate_ai_config(raw)
    except rules_mod.RuleError as exc:
        return _render_ai(found, form, status=400, error=exc.reason, field=exc.field.removeprefix("ai."),
                          sample=sample)
    if request.form.get("action") == "try":
        history, incoming = _sample(sample)
        if not incoming:
            return _render_ai(found, form, status=400, sample=sample,
                              try_error="End the sample with a customer's message (a line starting with customer:).")
        try:
            answer = ai_client().reply(build_messages(checked, history, incoming), model=checked.model,
                                       temperature=checked.temperature)
        except AiError as exc:
            return _render_ai(found, form, sample=sample, try_error=str(exc))
        return _render_ai(found, form, sample=sample, answer=answer)
    if not api_db.set_reply_setting(session.root().pool, person.tenant_id, found["id"], "ai", checked.to_json(),
                                    audit=audit.in_transaction("ai.update", "bot", found["id"])):
        abort(404, description="There is no such bot.")
    return _render_ai(found, _ai_view(checked.to_json()), saved=True, sample=sample)

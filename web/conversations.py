"""Messages and conversations over the API: send a message (text or uploaded media) through a bot,
read a bot's conversations and their messages, take a conversation over from the bot (pause) and
hand it back (resume), edit the bot's reply rules and AI settings, and look after the outbox (list by
state, retry a dead-lettered message).

Like the rest of the API, the web process only records: a message is queued in the outbox, a pause,
new rules or a retry are written to the database and ``bot_commands`` is notified; the bot's pipeline,
wherever a supervisor runs it, picks the change up from there.

Listings are newest first and keyset-paged: a page of ``limit`` rows (1..100, default 50) comes with
``next_before``, an opaque cursor to pass as ``before`` for the next page (``null`` on the last one).
``before`` also takes an ISO 8601 time: rows strictly older than it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import uuid
from typing import Any

import psycopg2.errors
from flask import Blueprint, g, jsonify, request

from core import context
from db import conversations, conversations_api as api_db, tenants
from sansio import recipients
from sansio import rules as rules_mod
from web import validation as v
from web.auth import require_tenant, system
from web.errors import ApiError, bad_request, not_found

blueprint = Blueprint("conversations", __name__)

TEXT_MAX = recipients.TEXT_MAX
CAPTION_MAX = 1024
LIMIT_DEFAULT = 50
LIMIT_MAX = 100
OUTBOX_STATES = ("dead", "pending", "sending", "sent")

_SEND_FIELDS = ("to", "text", "media_id", "caption")
_JID_MAX = 300
_CURSOR_PREFIX = "c1."


# -- input ---------------------------------------------------------------------------------------------


def _recipient(value: Any, field: str = "to") -> str:
    try:
        return recipients.to_jid(value)
    except ValueError as exc:
        raise bad_request(field, str(exc)) from None


def _message_text(value: Any, field: str, max_len: int, *, required: bool) -> str:
    try:
        return recipients.check_text(value, max_len, required=required)
    except ValueError as exc:
        raise bad_request(field, str(exc)) from None


def _uuid_field(value: Any, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise bad_request(field, "must be a UUID") from None


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return LIMIT_DEFAULT
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request("limit", f"must be a whole number from 1 to {LIMIT_MAX}") from None
    if not 1 <= limit <= LIMIT_MAX:
        raise bad_request("limit", f"must be a whole number from 1 to {LIMIT_MAX}")
    return limit


def _parse_time(value: str) -> datetime.datetime | None:
    for candidate in (value, _plus_restored(value)):
        if candidate is None:
            continue
        try:
            at = datetime.datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return at if at.tzinfo is not None else at.replace(tzinfo=datetime.timezone.utc)
    return None


def _plus_restored(value: str) -> str | None:
    """An unencoded '+' in a query string arrives as a space: '...T10:00:00 02:00' meant '+02:00'."""
    head, sep, tail = value.rpartition(" ")
    return head + "+" + tail if sep and "T" in head else None


def page_cursor(at: datetime.datetime, row_id: str) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def before_arg() -> api_db.Before:
    """``before``: an opaque cursor from ``next_before`` or an ISO 8601 time; 400 otherwise."""
    raw = request.args.get("before")
    if raw is None or raw == "":
        return None
    problem = bad_request("before", "must be the next_before cursor of a previous page or an ISO 8601 time")
    if raw.startswith(_CURSOR_PREFIX):
        encoded = raw[len(_CURSOR_PREFIX):]
        try:
            decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            time_part, _, id_part = decoded.partition("|")
            row_id = str(uuid.UUID(id_part))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise problem from None
        at = _parse_time(time_part)
        if at is None:
            raise problem
        return at, row_id
    if len(raw) > 64:
        raise problem
    at = _parse_time(raw)
    if at is None:
        raise problem
    return at, None


def _page(rows: list[dict[str, Any]], limit: int, sort_key: str) -> tuple[list[dict[str, Any]], str | None]:
    """The page's rows without their internal sort key, and the cursor to the next page (if any)."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = page_cursor(rows[-1][sort_key], rows[-1]["id"]) if more else None
    for row in rows:
        row.pop(sort_key, None)
    return rows, cursor


def _bot_id(bot_id: str) -> str:
    return v.uuid_arg(bot_id, "bot")


def _require_bot(bot_id: str) -> str:
    bot_id = _bot_id(bot_id)
    if not api_db.bot_exists(system().pool, g.tenant_id, bot_id):
        raise not_found("bot")
    return bot_id


def _contact(bot_id: str, ref: str) -> dict[str, Any]:
    """The bot's contact named in the path by id, by phone digits or by jid; 404 when there is none."""
    pool, tenant_id = system().pool, g.tenant_id
    try:
        contact = api_db.find_contact(pool, tenant_id, bot_id, contact_id=str(uuid.UUID(ref)))
    except ValueError:
        jid = _contact_jid(ref)
        contact = None if jid is None else api_db.find_contact(pool, tenant_id, bot_id, jid=jid)
    if contact is None:
        if not api_db.bot_exists(pool, tenant_id, bot_id):
            raise not_found("bot")
        raise not_found("contact")
    return contact


def _contact_jid(ref: str) -> str | None:
    ref = ref.strip()
    if "@" in ref:
        return ref.lower() if len(ref) <= _JID_MAX and "\x00" not in ref else None
    return recipients.phone_jid(ref)


def _api_key_hash() -> bytes | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return tenants.hash_key(key.strip()) if key.strip() else None


def _only(body: dict[str, Any], allowed: tuple[str, ...], ignored: tuple[str, ...] = ()) -> None:
    for key in body:
        if key not in allowed and key not in ignored:
            raise bad_request(key[:100], "unknown field; allowed: " + ", ".join(allowed))


# -- sending -------------------------------------------------------------------------------------------


@blueprint.post("/bots/<bot_id>/messages")
@require_tenant
def send_message(bot_id: str) -> Any:
    bot_id = _bot_id(bot_id)
    body = v.json_body()
    _only(body, _SEND_FIELDS)
    if body.get("to") is None:
        raise bad_request("to", "is required")
    to_jid = _recipient(body["to"])
    media_id = body.get("media_id")
    if media_id is None:
        if body.get("caption") is not None:
            raise bad_request("caption", "only goes with media_id (a text message is all text)")
        text = _message_text(body.get("text"), "text", TEXT_MAX, required=True)
    else:
        if body.get("text") is not None:
            raise bad_request("text", "send either text or media_id (with an optional caption), not both")
        media_id = _uuid_field(media_id, "media_id")
        text = _message_text(body.get("caption"), "caption", CAPTION_MAX, required=False)

    pool, tenant_id = system().pool, g.tenant_id
    if not api_db.bot_exists(pool, tenant_id, bot_id):
        raise not_found("bot")
    kind = "text"
    if media_id is not None:
        mime = api_db.media_mime(pool, tenant_id, media_id)
        if mime is None:
            raise ApiError(404, "not_found", "media not found: upload it with POST /api/v1/media first",
                           field="media_id")
        kind = "image" if mime.lower().startswith("image/") else "document"
    try:
        outbox_id = conversations.enqueue(pool, tenant_id, bot_id, to_jid, text, context.correlation_id(),
                                          media_id=media_id, kind=kind)
    except psycopg2.errors.ForeignKeyViolation:
        raise not_found("bot") from None  # deleted in the meantime
    return jsonify({"outbox_id": outbox_id, "state": "pending", "to": to_jid, "kind": kind}), 202


# -- conversations ---------------------------------------------------------------------------------


@blueprint.get("/bots/<bot_id>/conversations")
@require_tenant
def list_conversations(bot_id: str) -> Any:
    bot_id = _bot_id(bot_id)
    limit, before = _limit(), before_arg()
    bot_id = _require_bot(bot_id)
    rows = api_db.list_conversations(system().pool, g.tenant_id, bot_id, limit, before)
    rows, cursor = _page(rows, limit, "activity")
    return jsonify({"conversations": rows, "next_before": cursor})


@blueprint.get("/bots/<bot_id>/conversations/<contact>/messages")
@require_tenant
def list_messages(bot_id: str, contact: str) -> Any:
    bot_id = _bot_id(bot_id)
    limit, before = _limit(), before_arg()
    found = _contact(bot_id, contact)
    rows = api_db.list_messages(system().pool, g.tenant_id, found["id"], limit, before)
    rows, cursor = _page(rows, limit, "sort_at")
    return jsonify({"contact": found, "messages": rows, "next_before": cursor})


@blueprint.post("/bots/<bot_id>/conversations/<contact>/<any(pause, resume):action>")
@require_tenant
def pause_or_resume(bot_id: str, contact: str, action: str) -> Any:
    bot_id = _bot_id(bot_id)
    found = _contact(bot_id, contact)
    updated = api_db.set_paused(system().pool, g.tenant_id, bot_id, found["id"], action == "pause", _api_key_hash())
    if updated is None:
        raise not_found("contact")  # deleted in the meantime
    system().publish(g.tenant_id, bot_id, "conversation.state", api_db.conversation_state(updated))
    updated.pop("phone_hold_until", None)  # the documented contact shape
    return jsonify(updated)


# -- rules and AI settings -----------------------------------------------------------------------------


def _reply_settings(bot_id: str) -> tuple[Any, Any]:
    stored = api_db.get_reply_settings(system().pool, g.tenant_id, bot_id)
    if stored is None:
        raise not_found("bot")
    return stored


@blueprint.get("/bots/<bot_id>/rules")
@require_tenant
def get_rules(bot_id: str) -> Any:
    rules, _ai = _reply_settings(_bot_id(bot_id))
    return jsonify({"rules": rules or []})


@blueprint.put("/bots/<bot_id>/rules")
@require_tenant
def put_rules(bot_id: str) -> Any:
    bot_id = _bot_id(bot_id)
    body = v.json_body()
    _only(body, ("rules",))
    if "rules" not in body:
        raise bad_request("rules", "is required: a list of rules (may be empty)")
    try:
        rules = [rule.to_json() for rule in rules_mod.validate_rules(body["rules"])]
    except rules_mod.RuleError as exc:
        raise bad_request(exc.field, exc.reason) from None
    if not api_db.set_reply_setting(system().pool, g.tenant_id, bot_id, "rules", rules):
        raise not_found("bot")
    return jsonify({"rules": rules})


def _ai_view(stored: Any) -> dict[str, Any]:
    """The settings the pipeline applies: the stored ones with defaults filled in (stored settings that
    no longer validate count as the defaults, as they do in the pipeline)."""
    try:
        effective = rules_mod.validate_ai_config(stored or {})
    except rules_mod.RuleError:
        effective = rules_mod.AiConfig()
    return {"ai": effective.to_json(), "provider_configured": bool(system().settings.ai_api_key)}


@blueprint.get("/bots/<bot_id>/ai")
@require_tenant
def get_ai(bot_id: str) -> Any:
    _rules, ai = _reply_settings(_bot_id(bot_id))
    return jsonify(_ai_view(ai))


@blueprint.put("/bots/<bot_id>/ai")
@require_tenant
def put_ai(bot_id: str) -> Any:
    bot_id = _bot_id(bot_id)
    body = v.json_body()
    _only(body, ("ai",), ignored=("provider_configured",))  # a GET body may be sent back as is
    if "ai" not in body:
        raise bad_request("ai", "is required: an object of AI settings ({} turns AI off)")
    try:
        ai = rules_mod.validate_ai_config(body["ai"]).to_json()
    except rules_mod.RuleError as exc:
        raise bad_request(exc.field, exc.reason) from None
    if not api_db.set_reply_setting(system().pool, g.tenant_id, bot_id, "ai", ai):
        raise not_found("bot")
    return jsonify(_ai_view(ai))


# -- the outbox ----------------------------------------------------------------------------------------


@blueprint.get("/outbox")
@require_tenant
def list_outbox() -> Any:
    state = request.args.get("state", "dead")
    if state not in OUTBOX_STATES:
        raise bad_request("state", "must be one of " + ", ".join(OUTBOX_STATES))
    bot_id = request.args.get("bot")
    if bot_id is not None:
        bot_id = _uuid_field(bot_id, "bot")
    limit, before = _limit(), before_arg()
    pool, tenant_id = system().pool, g.tenant_id
    if bot_id is not None and not api_db.bot_exists(pool, tenant_id, bot_id):
        raise not_found("bot")
    rows, cursor = _page(api_db.list_outbox(pool, tenant_id, state, bot_id, limit, before), limit, "sort_at")
    return jsonify({"outbox": rows, "next_before": cursor})


@blueprint.post("/outbox/<outbox_id>/retry")
@require_tenant
def retry_outbox(outbox_id: str) -> Any:
    outbox_id = v.uuid_arg(outbox_id, "outbox message")
    result = api_db.retry_dead(system().pool, g.tenant_id, outbox_id)
    if result is None:
        raise not_found("outbox message")
    outcome, value = result
    if outcome == "conflict":
        raise ApiError(409, "conflict", f"only a dead message can be retried; this one is {value}")
    value.pop("sort_at", None)
    return jsonify(value), 202

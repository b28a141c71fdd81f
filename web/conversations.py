"""Messages and conversations over the API: send a message (text or uploaded media) through a bot,
read a bot's conversations and their messages, take a conversation over from the bot (pause) and
hand it back (resume), edit the bot's reply rules and AI settings, and look after the outbox (list by
state, read one row, retry a dead-lettered message).

Like the rest of the API, the web process only records: a message is queued in the outbox, a pause,
new rules or a retry are written to the database and ``bot_commands`` is notified; the bot's pipeline,
wherever a supervisor runs it, picks the change up from there.

Listings are newest first and keyset-paged (``web.paging``).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg2.errors
from flask import g, jsonify, request

from core import context
from db import conversations, tenants
from db import conversations_api as api_db
from sansio import recipients
from sansio import rules as rules_mod
from web import audit, paging
from web import validation as v
from web.api import api_blueprint, error_responses, operation
from web.auth import system
from web.errors import ApiError, not_found
from web.schemas.common import BotPath, Paging
from web.schemas.conversations import (
    AiUpdate,
    AiView,
    Contact,
    ContactPath,
    ConversationList,
    MessageList,
    OutboxList,
    OutboxPath,
    OutboxQuery,
    OutboxRow,
    Queued,
    Rules,
    RulesUpdate,
    SendMessage,
)

blueprint = api_blueprint("conversations", __name__, "Conversations",
                          "Messages, conversations and taking them over, reply rules, AI settings, the outbox.")

TEXT_MAX = recipients.TEXT_MAX
_JID_MAX = 300


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


# -- sending -------------------------------------------------------------------------------------------


@operation(blueprint, "post", "/bots/<bot_id>/messages", scope="send", summary="Send a message through a bot",
           description="Queued in the outbox (202) and delivered by the bot's pipeline in order; the message id is"
                       " fixed now, so a resend after a fault is the same message. A paused conversation can still be"
                       " written to: that is how a human answers while the bot is held off.",
           operation_id="sendMessage", responses={202: Queued, **error_responses(400, 404)})
def send_message(path: BotPath, body: SendMessage) -> Any:
    bot_id = _bot_id(path.bot_id)
    pool, tenant_id = system().pool, g.tenant_id
    if not api_db.bot_exists(pool, tenant_id, bot_id):
        raise not_found("bot")
    kind, text = "text", body.text
    if body.media_id is not None:
        mime = api_db.media_mime(pool, tenant_id, body.media_id)
        if mime is None:
            raise ApiError(404, "not_found", "media not found: upload it with POST /api/v1/media first",
                           field="media_id")
        kind = "image" if mime.lower().startswith("image/") else "document"
        text = body.caption or ""
    assert text is not None  # SendMessage requires a text or a media_id
    try:
        outbox_id = conversations.enqueue(pool, tenant_id, bot_id, body.to, text, context.correlation_id(),
                                          media_id=body.media_id, kind=kind)
    except psycopg2.errors.ForeignKeyViolation:
        raise not_found("bot") from None  # deleted in the meantime
    audit.note("message.send", "outbox", outbox_id,
               after={"bot_id": bot_id, "to": body.to, "kind": kind, "media_id": body.media_id})
    return jsonify({"outbox_id": outbox_id, "state": "pending", "to": body.to, "kind": kind}), 202


# -- conversations ---------------------------------------------------------------------------------


@operation(blueprint, "get", "/bots/<bot_id>/conversations", scope="read", summary="A bot's conversations",
           description="By latest activity (the newest message either way), newest first, keyset-paged.",
           operation_id="listConversations", responses={200: ConversationList, **error_responses(400, 404)})
def list_conversations(path: BotPath, query: Paging) -> Any:
    bot_id = _require_bot(path.bot_id)
    rows = api_db.list_conversations(system().pool, g.tenant_id, bot_id, query.limit, paging.parse_before(query.before))
    rows, cursor = paging.page(rows, query.limit, "activity")
    return jsonify({"conversations": rows, "next_before": cursor})


@operation(blueprint, "get", "/bots/<bot_id>/conversations/<contact>/messages", scope="read",
           summary="A conversation's messages, newest first", operation_id="listMessages",
           responses={200: MessageList, **error_responses(400, 404)})
def list_messages(path: ContactPath, query: Paging) -> Any:
    found = _contact(_bot_id(path.bot_id), path.contact)
    rows = api_db.list_messages(system().pool, g.tenant_id, found["id"], query.limit, paging.parse_before(query.before))
    rows, cursor = paging.page(rows, query.limit, "sort_at")
    return jsonify({"contact": found, "messages": rows, "next_before": cursor})


def _hold(path: ContactPath, paused: bool) -> Any:
    bot_id = _bot_id(path.bot_id)
    found = _contact(bot_id, path.contact)
    updated = api_db.set_paused(system().pool, g.tenant_id, bot_id, found["id"], paused, _api_key_hash())
    if updated is None:
        raise not_found("contact")  # deleted in the meantime
    audit.note("conversation.takeover" if paused else "conversation.release", "contact", found["id"],
               after={"bot_id": bot_id, "jid": found.get("jid")})
    system().publish(g.tenant_id, bot_id, "conversation.state", api_db.conversation_state(updated))
    updated.pop("phone_hold_until", None)  # the documented contact shape
    return jsonify(updated)


@operation(blueprint, "post", "/bots/<bot_id>/conversations/<contact>/pause", scope="send",
           summary="Take a conversation over (the bot stops answering it)", operation_id="pauseConversation",
           responses={200: Contact, **error_responses(404)})
def pause_conversation(path: ContactPath) -> Any:
    return _hold(path, True)


@operation(blueprint, "post", "/bots/<bot_id>/conversations/<contact>/resume", scope="send",
           summary="Hand a conversation back to the bot", operation_id="resumeConversation",
           responses={200: Contact, **error_responses(404)})
def resume_conversation(path: ContactPath) -> Any:
    return _hold(path, False)


# -- rules and AI settings -----------------------------------------------------------------------------


def _reply_settings(bot_id: str) -> tuple[Any, Any]:
    stored = api_db.get_reply_settings(system().pool, g.tenant_id, bot_id)
    if stored is None:
        raise not_found("bot")
    return stored


@operation(blueprint, "get", "/bots/<bot_id>/rules", scope="read", summary="A bot's reply rules, in order",
           operation_id="getRules", responses={200: Rules, **error_responses(404)})
def get_rules(path: BotPath) -> Any:
    rules, _ai = _reply_settings(_bot_id(path.bot_id))
    return jsonify({"rules": rules or []})


@operation(blueprint, "put", "/bots/<bot_id>/rules", scope="manage", summary="Replace a bot's reply rules",
           operation_id="putRules", responses={200: Rules, **error_responses(400, 404)})
def put_rules(path: BotPath, body: RulesUpdate) -> Any:
    bot_id = _bot_id(path.bot_id)
    rules = [rule.model_dump() for rule in body.rules]
    if not api_db.set_reply_setting(system().pool, g.tenant_id, bot_id, "rules", rules,
                                    audit=audit.in_transaction("rules.update", "bot", bot_id)):
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


@operation(blueprint, "get", "/bots/<bot_id>/ai", scope="read", summary="A bot's AI settings (defaults filled in)",
           operation_id="getAi", responses={200: AiView, **error_responses(404)})
def get_ai(path: BotPath) -> Any:
    _rules, ai = _reply_settings(_bot_id(path.bot_id))
    return jsonify(_ai_view(ai))


@operation(blueprint, "put", "/bots/<bot_id>/ai", scope="manage", summary="Replace a bot's AI settings",
           operation_id="putAi", responses={200: AiView, **error_responses(400, 404)})
def put_ai(path: BotPath, body: AiUpdate) -> Any:
    bot_id = _bot_id(path.bot_id)
    ai = body.ai.model_dump()
    if not api_db.set_reply_setting(system().pool, g.tenant_id, bot_id, "ai", ai,
                                    audit=audit.in_transaction("ai.update", "bot", bot_id)):
        raise not_found("bot")
    return jsonify(_ai_view(ai))


# -- the outbox ----------------------------------------------------------------------------------------


def _row(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("sort_at", None)
    return row


@operation(blueprint, "get", "/outbox", scope="read", summary="Outgoing messages by state (dead letters first)",
           operation_id="listOutbox", responses={200: OutboxList, **error_responses(400, 404)})
def list_outbox(query: OutboxQuery) -> Any:
    pool, tenant_id = system().pool, g.tenant_id
    if query.bot is not None and not api_db.bot_exists(pool, tenant_id, query.bot):
        raise not_found("bot")
    rows = api_db.list_outbox(pool, tenant_id, query.state, query.bot, query.limit, paging.parse_before(query.before))
    rows, cursor = paging.page(rows, query.limit, "sort_at")
    return jsonify({"outbox": rows, "next_before": cursor})


@operation(blueprint, "get", "/outbox/<outbox_id>", scope="read", summary="One outbox row",
           operation_id="getOutboxRow", responses={200: OutboxRow, **error_responses(404)})
def get_outbox_row(path: OutboxPath) -> Any:
    row = api_db.get_outbox(system().pool, g.tenant_id, v.uuid_arg(path.outbox_id, "outbox message"))
    if row is None:
        raise not_found("outbox message")
    return jsonify(_row(row))


@operation(blueprint, "post", "/outbox/<outbox_id>/retry", scope="send", summary="Queue a dead letter again",
           description="Same message id, attempts from zero, due now. A row that is not dead: 409.",
           operation_id="retryOutbox", responses={202: OutboxRow, **error_responses(404, 409)})
def retry_outbox(path: OutboxPath) -> Any:
    outbox_id = v.uuid_arg(path.outbox_id, "outbox message")
    result = api_db.retry_dead(system().pool, g.tenant_id, outbox_id)
    if result is None:
        raise not_found("outbox message")
    outcome, value = result
    if outcome == "conflict":
        raise ApiError(409, "conflict", f"only a dead message can be retried; this one is {value}")
    audit.note("outbox.retry", "outbox", outbox_id)
    return jsonify(_row(value)), 202


"""Queueing an outgoing text message in one call: ``enqueue_text``.

The outbox and its delivery belong to the message pipeline (``db.conversations``, ``actors.pipeline``):
a queued message is an ``outbox`` row (``pending``, due now, with its WhatsApp message id fixed at
queue time so a retried delivery is recognisably the same message), its outgoing ``messages`` row and
the contact, written in one transaction that also wakes the supervisor's pipeline for the bot. This
module does not write the table itself: it checks the input and the bot, then queues through
``db.conversations.enqueue`` — so a message queued here is delivered, retried, listed and shown in
the conversation exactly like one sent with ``POST /api/v1/bots/<id>/messages``.

Every function takes the pool and a tenant id, so row-level security scopes it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg2.errors

from db import conversations
from db import conversations_api

TEXT_MAX = 4096
"""Longest text body, in characters (as for the HTTP send)."""

_PHONE_SEPARATORS = re.compile(r"[+\s-]")
_PHONE = re.compile(r"^[0-9]{8,15}$")
_USER_JID = re.compile(r"^[0-9]{8,15}@s\.whatsapp\.net$")


def to_jid(to: str) -> str:
    """The recipient as a JID, by the same rule as the HTTP send: a phone number (8–15 digits, country
    code first; ``+``, spaces and dashes are dropped) becomes ``<digits>@s.whatsapp.net``; such a JID
    is kept (lower-cased). Anything else raises ``ValueError`` with a message for the client."""
    if not isinstance(to, str):
        raise ValueError("must be a phone number (digits) or a jid ending @s.whatsapp.net")
    value = to.strip()
    if "@" in value:
        if not _USER_JID.match(value.lower()):
            raise ValueError("must be a jid like 4915112345678@s.whatsapp.net (8 to 15 digits)")
        return value.lower()
    digits = _PHONE_SEPARATORS.sub("", value)
    if not _PHONE.match(digits):
        raise ValueError("must be a phone number of 8 to 15 digits (country code first, no '+')")
    return digits + "@s.whatsapp.net"


def check_text(text: str) -> str:
    """The text as the recipient will see it (not trimmed): non-blank, at most ``TEXT_MAX`` characters,
    no NUL. Anything else raises ``ValueError`` with a message for the client."""
    if not isinstance(text, str):
        raise ValueError("must be a string")
    if not text.strip():
        raise ValueError("must not be empty")
    if len(text) > TEXT_MAX:
        raise ValueError(f"must be at most {TEXT_MAX} characters")
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def enqueue_text(
    pool: Any, tenant_id: str, bot_id: str, to: str, text: str, correlation_id: str | None = None
) -> str | None:
    """Queue a text message from the tenant's bot ``bot_id`` to ``to`` (a phone number or a user JID,
    see ``to_jid``); returns the new outbox row's id (a UUID string), or ``None`` when the tenant has no
    such bot — another tenant's bot, an unknown id or one that is not a UUID alike.

    Raises ``ValueError`` for a bad ``to`` or ``text`` (see ``check_text``) before touching the
    database. ``correlation_id`` is stored on the row so delivery logs lead back to the request.

    The bot is looked up under the tenant's row-level security first: a foreign-key check alone
    would accept another tenant's bot id.
    """
    jid = to_jid(to)
    body = check_text(text)
    try:
        bot_id = str(uuid.UUID(str(bot_id)))
    except ValueError:
        return None
    if not conversations_api.bot_exists(pool, tenant_id, bot_id):
        return None
    try:
        return conversations.enqueue(pool, tenant_id, bot_id, jid, body, correlation_id)
    except psycopg2.errors.ForeignKeyViolation:
        return None  # the bot was deleted in the meantime

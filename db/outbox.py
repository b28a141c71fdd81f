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

import uuid
from typing import Any

import psycopg2.errors

from db import conversations, conversations_api
from sansio.recipients import TEXT_MAX, check_text, to_jid  # noqa: F401 - part of this module's API


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

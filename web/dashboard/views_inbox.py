"""The inbox: conversations by latest activity across the tenant's bots, a conversation's messages,
the composer (text and attachments, through the outbox), taking a conversation over from the bot and
handing it back, retrying a failed send, and the conversation's media.

Live updates come from the tenant's event stream: app.js asks for one row or one message fragment
(by id) per event and replaces the element of that id, so a row can never appear twice.
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors
from flask import abort, redirect, render_template, request, url_for

import media
from core import context
from db import conversations, dashboard, webhook_endpoints
from db import conversations_api as api_db
from db.quotas import QuotaExceeded
from sansio import recipients, roles
from web import audit, paging
from web import media as media_api
from web.dashboard import blueprint, session
from web.dashboard.session import Member
from web.errors import ApiError
from web.schemas.conversations import CAPTION_MAX

PAGE = 30  # conversations per inbox page
MESSAGES = 40  # messages per conversation page


def _before() -> Any:
    try:
        return paging.parse_before(request.args.get("before"))
    except ValueError:
        abort(400, description="That page link is not valid any more; start from the first page.")


def _cursor(row: dict[str, Any], key: str) -> str:
    return paging.cursor(row[key], row["id"])


def _contact(person: Member, contact_id: str) -> dict[str, Any]:
    found = dashboard.conversation(session.root().pool, person.tenant_id, session.path_id(contact_id, "conversation"))
    if found is None:
        abort(404, description="There is no such conversation.")
    return found


# -- the inbox -----------------------------------------------------------------------------------


@blueprint.get("/app")
@blueprint.get("/app/inbox")
@session.page(roles.READ)
def inbox(person: Member) -> Any:
    pool = session.root().pool
    bot_names = dashboard.bot_names(pool, person.tenant_id)
    bot_id = request.args.get("bot") or None
    if bot_id is not None and bot_id not in {b for b, _ in bot_names}:
        bot_id = None  # an old or foreign filter shows everything rather than an error
    before = _before()
    rows = dashboard.inbox(pool, person.tenant_id, bot_id, PAGE, before)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    # The home page names every webhook the platform turned off: events are no longer sent to it.
    disabled = webhook_endpoints.disabled(pool, person.tenant_id) if before is None else []
    return render_template("inbox.html", conversations=rows, bots=bot_names, bot_id=bot_id, first_page=before is None,
                           next_before=_cursor(rows[-1], "activity") if more else None, disabled_webhooks=disabled)


@blueprint.get("/app/inbox/row")
@session.page(roles.READ)
def inbox_row(person: Member) -> Any:
    """One conversation's row, by ``contact`` or by ``bot`` and ``jid`` (a message to a new number)."""
    pool = session.root().pool
    if request.args.get("contact"):
        found = dashboard.conversation(pool, person.tenant_id, session.path_id(request.args["contact"], "conversation"))
    else:
        found = dashboard.conversation(pool, person.tenant_id,
                                       bot_id=session.path_id(request.args.get("bot", ""), "bot"),
                                       jid=request.args.get("jid", "")[:300])
    if found is None:
        return "", 204  # nothing to show (yet): the page keeps what it has
    return render_template("_conversation_row.html", c=found)


# -- a conversation ------------------------------------------------------------------------------


def _messages_view(person: Member, contact: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    quoted = dashboard.quoted(session.root().pool, person.tenant_id, contact["bot_id"],
                              [m["quoted_wa_id"] for m in rows if m["quoted_wa_id"]])
    for row in rows:
        row["quoted"] = quoted.get(row["quoted_wa_id"]) if row["quoted_wa_id"] else None
    return rows


@blueprint.get("/app/inbox/<contact_id>")
@session.page(roles.READ)
def conversation(person: Member, contact_id: str) -> Any:
    contact = _contact(person, contact_id)
    before = _before()
    rows = dashboard.messages(session.root().pool, person.tenant_id, contact["id"], MESSAGES, before)
    older = _cursor(rows[MESSAGES - 1], "created_at") if len(rows) > MESSAGES else None
    rows = _messages_view(person, contact, list(reversed(rows[:MESSAGES])))
    return render_template("conversation.html", c=contact, messages=rows, older=older, latest=before is None,
                           send_error=None, draft="")


@blueprint.get("/app/inbox/<contact_id>/head")
@session.page(roles.READ)
def conversation_head(person: Member, contact_id: str) -> Any:
    return render_template("_conversation_head.html", c=_contact(person, contact_id))


@blueprint.get("/app/inbox/<contact_id>/message")
@session.page(roles.READ)
def message_fragment(person: Member, contact_id: str) -> Any:
    """One message (``id`` or ``outbox``) for a live update; 204 when it is not this conversation's."""
    contact = _contact(person, contact_id)
    pool = session.root().pool
    if request.args.get("id"):
        found = dashboard.message(pool, person.tenant_id, contact["id"],
                                  message_id=session.path_id(request.args["id"], "message"))
    else:
        found = dashboard.message(pool, person.tenant_id, contact["id"],
                                  outbox_id=session.path_id(request.args.get("outbox", ""), "message"))
    if found is None:
        return "", 204
    return render_template("_message.html", m=_messages_view(person, contact, [found])[0], c=contact)


@blueprint.post("/app/inbox/<contact_id>/send")
@session.page(roles.SEND)
def send(person: Member, contact_id: str) -> Any:
    contact = _contact(person, contact_id)
    pool, tenant_id = session.root().pool, person.tenant_id
    text = request.form.get("text", "")
    part = request.files.get("file")
    media_id, kind = None, "text"
    try:
        if part is not None and part.filename:
            text = recipients.check_text(text, CAPTION_MAX, required=False)
            mime = media_api.mime_of(part.content_type, "file")
            try:
                media_id, _stored = media.save(pool, media_api.media_store(), tenant_id, contact["bot_id"], part.stream,
                                               mime, media.names.clean_filename(part.filename), check_quota=True)
            except QuotaExceeded as exc:  # the media quota: the operator raises it, or files are deleted
                raise ApiError(403, "quota_exceeded", exc.message) from None
            except media.MediaTooLarge as exc:
                raise ApiError(413, "payload_too_large", f"the file is over the limit of {exc.limit} bytes") from None
            except media.EmptyMedia:
                raise ApiError(400, "invalid_input", "the file is empty", field="file") from None
            except media.StorageUnavailable:
                raise ApiError(503, "storage_unavailable", "media storage is unavailable; try again later") from None
            kind = "image" if mime.startswith("image/") else "document"
        else:
            text = recipients.check_text(text, recipients.TEXT_MAX, required=True)
    except ValueError as exc:
        return _send_failed(person, contact, f"The message {exc}.", request.form.get("text", ""), 400)
    except ApiError as exc:
        return _send_failed(person, contact, exc.message[:1].upper() + exc.message[1:] + ".",
                            request.form.get("text", ""), exc.status)
    try:
        outbox_id = conversations.enqueue(pool, tenant_id, contact["bot_id"], contact["jid"], text or "",
                                          context.correlation_id(), media_id=media_id, kind=kind,
                                          sent_by=person.held_by)
    except psycopg2.errors.ForeignKeyViolation:
        abort(404, description="The bot was deleted.")
    except QuotaExceeded as exc:
        return _send_failed(person, contact, exc.message[:1].upper() + exc.message[1:] + ".",
                            request.form.get("text", ""), 429)
    audit.note("message.send", "outbox", outbox_id,
               after={"bot_id": contact["bot_id"], "to": contact["jid"], "kind": kind, "media_id": media_id})
    if session.wants_fragment():
        found = dashboard.message(pool, tenant_id, contact["id"], outbox_id=outbox_id)
        assert found is not None  # just written
        return render_template("_composer_result.html", m=_messages_view(person, contact, [found])[0], c=contact)
    return redirect(url_for("dashboard.conversation", contact_id=contact["id"]) + "#latest", code=303)


def _send_failed(person: Member, contact: dict[str, Any], error: str, draft: str, status: int) -> Any:
    if session.wants_fragment():
        composer = render_template("_composer.html", c=contact, send_error=error, draft=draft)
        return session.form_fragment(composer, status)
    rows = dashboard.messages(session.root().pool, person.tenant_id, contact["id"], MESSAGES, None)
    older = _cursor(rows[MESSAGES - 1], "created_at") if len(rows) > MESSAGES else None
    rows = _messages_view(person, contact, list(reversed(rows[:MESSAGES])))
    return render_template("conversation.html", c=contact, messages=rows, older=older, latest=True, send_error=error,
                           draft=draft), status


@blueprint.post("/app/inbox/<contact_id>/<any(takeover, release):action>")
@session.page(roles.TAKE_OVER)
def take_over(person: Member, contact_id: str, action: str) -> Any:
    contact = _contact(person, contact_id)
    root = session.root()
    updated = api_db.set_paused(root.pool, person.tenant_id, contact["bot_id"], contact["id"], action == "takeover",
                                None, by=person.held_by)
    if updated is None:
        abort(404, description="There is no such conversation.")
    audit.note("conversation.takeover" if action == "takeover" else "conversation.release", "contact", contact["id"],
               after={"bot_id": contact["bot_id"], "jid": contact["jid"]})
    root.publish(person.tenant_id, contact["bot_id"], "conversation.state", api_db.conversation_state(updated))
    if session.wants_fragment():
        return render_template("_conversation_head.html", c=_contact(person, contact["id"]))
    return redirect(url_for("dashboard.conversation", contact_id=contact["id"]), code=303)


@blueprint.post("/app/outbox/<outbox_id>/retry")
@session.page(roles.RETRY)
def retry(person: Member, outbox_id: str) -> Any:
    result = api_db.retry_dead(session.root().pool, person.tenant_id, session.path_id(outbox_id, "message"))
    if result is None:
        abort(404, description="There is no such message.")
    outcome, value = result
    if outcome == "conflict":
        abort(409, description=f"Only a failed message can be retried; this one is {value}.")
    audit.note("outbox.retry", "outbox", value["id"])
    back = request.form.get("back", "")
    if session.wants_fragment():
        contact_id = value["contact_id"]
        if request.form.get("view") == "conversation" and contact_id:
            contact = _contact(person, contact_id)
            found = dashboard.message(session.root().pool, person.tenant_id, contact_id, outbox_id=value["id"])
            if found is not None:
                return render_template("_message.html", m=_messages_view(person, contact, [found])[0], c=contact)
        return render_template("_outbox_retried.html", row=value)
    if back.startswith("/app/"):
        return redirect(back, code=303)
    return redirect(url_for("dashboard.outbox"), code=303)


@blueprint.get("/app/media/<media_id>")
@session.page(roles.READ)
def media_file(person: Member, media_id: str) -> Any:
    try:
        return media_api.media_response(session.root().pool, person.tenant_id, session.path_id(media_id, "file"))
    except ApiError as exc:
        abort(exc.status, description=exc.message)

"""Messages, conversations, taking over, reply rules, AI settings and the outbox."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from sansio import recipients
from sansio import rules as rules_mod
from web.api import FieldError, Model, PathModel, body_config, uuid_field
from web.schemas.common import Paging, Timestamp

CAPTION_MAX = 1024
OUTBOX_STATES = ("dead", "pending", "sending", "sent", "held")


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ValueError("must be a UUID") from None


# -- sending ---------------------------------------------------------------------------------------


class SendMessage(Model):
    """Either ``text``, or ``media_id`` (an uploaded media object) with an optional ``caption``."""

    model_config = body_config({"to": "+49 151 23456789", "text": "Your order is ready."},
                               {"to": "4915123456789", "media_id": "8d7c…", "caption": "the invoice"})

    to: str = Field(
        pattern=r"^\s*([0-9+ -]{8,60}|[0-9]{8,15}@[sS]\.[wW][hH][aA][tT][sS][aA][pP][pP]\.[nN][eE][tT])\s*$",
        description="the customer: 8–15 digits with the country code ('+', spaces and dashes dropped),"
                    " or a jid <digits>@s.whatsapp.net; groups are refused")
    text: str | None = Field(None, min_length=1, max_length=recipients.TEXT_MAX,
                             description="1–4096 characters, not blank, sent as written")
    media_id: str | None = uuid_field("a media object of this tenant (POST /api/v1/media)", default=None)
    caption: str | None = Field(None, max_length=CAPTION_MAX, description="with media_id only")

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, value: Any) -> str:
        return recipients.to_jid(value)

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return None if value is None else recipients.check_text(value, recipients.TEXT_MAX, required=True)

    @field_validator("media_id", mode="before")
    @classmethod
    def _media(cls, value: Any) -> Any:
        return None if value is None else _uuid(value)

    @field_validator("caption", mode="before")
    @classmethod
    def _caption(cls, value: Any) -> Any:
        return None if value is None else recipients.check_text(value, CAPTION_MAX, required=False)

    @model_validator(mode="after")
    def _one_kind(self) -> SendMessage:
        if self.media_id is None:
            if self.caption is not None:
                raise FieldError("caption", "only goes with media_id (a text message is all text)")
            if self.text is None:
                raise FieldError("text", "is required")
        elif self.text is not None:
            raise FieldError("text", "send either text or media_id (with an optional caption), not both")
        return self


class Queued(BaseModel):
    outbox_id: str = uuid_field("the outbox row")
    state: Literal["pending"]
    to: str = Field(description="the recipient's jid")
    kind: Literal["text", "image", "document"]


# -- conversations ---------------------------------------------------------------------------------


class ContactPath(PathModel):
    bot_id: str = uuid_field("the bot's id")
    contact: str = Field(description="the contact's id, the customer's number, or their jid")


class LastMessage(BaseModel):
    direction: Literal["in", "out"]
    kind: str
    preview: str = Field(description="the first 100 characters")
    status: str


class Conversation(BaseModel):
    id: str = uuid_field("the contact's id")
    jid: str
    name: str
    paused: bool = Field(description="a human holds it: the bot stores but does not answer")
    paused_at: Timestamp | None
    paused_by: str | None = Field(description="api-key:<prefix> (<name>) or member:<email>")
    created_at: Timestamp
    last_message_at: Timestamp | None
    last_message: LastMessage | None


class ConversationList(BaseModel):
    conversations: list[Conversation]
    next_before: str | None = Field(description="pass as before for the next page; null on the last")


class Contact(BaseModel):
    id: str = uuid_field("the contact's id")
    jid: str
    name: str
    paused: bool
    paused_at: Timestamp | None
    paused_by: str | None
    last_message_at: Timestamp | None
    created_at: Timestamp


class Message(BaseModel):
    id: str = uuid_field("the message's id")
    direction: Literal["in", "out"]
    kind: str
    text: str = Field(description="the body, or a media caption")
    status: str = Field(description="in: stored, answered, ignored; out: pending, sent, delivered, read, failed")
    wa_message_id: str
    created_at: Timestamp
    media_id: str | None
    quoted_wa_id: str | None
    outbox_id: str | None
    answered_at: Timestamp | None


class MessageList(BaseModel):
    contact: Contact
    messages: list[Message]
    next_before: str | None


# -- rules and AI settings -------------------------------------------------------------------------


class RuleModel(BaseModel):
    model_config = {"extra": "forbid"}

    match: Literal["keyword", "regex"] = Field(description="keyword: the pattern as a whole word or phrase,"
                                                           " ignoring case; regex: a Python regular expression")
    pattern: str = Field(min_length=1, max_length=rules_mod.MAX_PATTERN)
    reply: str = Field(min_length=1, max_length=rules_mod.MAX_REPLY)
    enabled: bool = True


class Rules(BaseModel):
    rules: list[RuleModel] = Field(max_length=rules_mod.MAX_RULES, description="tried in order; the first enabled"
                                   " rule that matches answers")


class RulesUpdate(Model):
    """The whole list (``[]`` removes every rule). Patterns that can take exponential time are refused."""

    model_config = body_config({"rules": [
        {"match": "keyword", "pattern": "opening hours", "reply": "9 to 5, Monday to Saturday"},
        {"match": "regex", "pattern": r"deliver(y|ies)?", "reply": "We deliver within the city.", "enabled": False}]})

    rules: list[RuleModel] = Field(max_length=rules_mod.MAX_RULES)

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any) -> Any:
        # The pipeline's own validator (sansio.rules) is the one authority; its errors name the field.
        if isinstance(data, dict):
            if "rules" not in data:
                raise FieldError("rules", "is required: a list of rules (may be empty)")
            rules_mod.validate_rules(data["rules"])
        return data


class AiSettings(BaseModel):
    model_config = {"extra": "forbid"}

    enabled: bool = Field(False, description="answer with AI when no rule matches")
    system_prompt: str = Field("", max_length=rules_mod.MAX_SYSTEM_PROMPT)
    temperature: float = Field(0.7, ge=0, le=2)
    history: int = Field(10, ge=0, le=rules_mod.MAX_HISTORY, description="past messages of the conversation sent")
    model: str | None = Field(None, min_length=1, max_length=rules_mod.MAX_MODEL,
                              description="null: the platform's AI_MODEL")
    fallback_reply: str | None = Field(None, min_length=1, max_length=rules_mod.MAX_REPLY,
                                       description="sent while the provider is unavailable; null: say nothing")


class AiView(BaseModel):
    ai: AiSettings
    provider_configured: bool = Field(description="whether the platform has an AI key (AI_API_KEY)")


class AiUpdate(Model):
    """Replaces the settings (``{}`` turns AI off); a GET body may be sent back as is."""

    model_config = body_config({"ai": {"enabled": True, "system_prompt": "You are the bakery's assistant.",
                                       "temperature": 0.3}})

    ai: AiSettings
    provider_configured: bool | None = Field(None, strict=True, description="ignored (a GET body sent back)")

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "ai" not in data:
                raise FieldError("ai", "is required: an object of AI settings ({} turns AI off)")
            rules_mod.validate_ai_config(data["ai"])
        return data


# -- the outbox ------------------------------------------------------------------------------------


class OutboxQuery(Paging):
    state: Literal["dead", "pending", "sending", "sent", "held"] = Field(
        "dead", description="dead: the dead letters; held: bots' answers waiting for the daily message quota")
    bot: str | None = uuid_field("only this bot's rows", default=None)

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> Any:
        if value not in OUTBOX_STATES:
            raise ValueError("must be one of " + ", ".join(OUTBOX_STATES))
        return value

    @field_validator("bot", mode="before")
    @classmethod
    def _bot(cls, value: Any) -> Any:
        return None if value is None else _uuid(value)


class OutboxRow(BaseModel):
    id: str = uuid_field("the outbox row's id")
    bot_id: str = uuid_field("the bot")
    contact_id: str | None
    to: str
    kind: str
    text: str
    media_id: str | None
    state: Literal["pending", "sending", "sent", "dead", "held"]
    attempts: int
    next_attempt_at: Timestamp | None
    last_error: str | None
    source: Literal["api", "rule", "ai", "fallback"]
    wa_message_id: str
    correlation_id: str | None
    created_at: Timestamp
    sent_at: Timestamp | None


class OutboxList(BaseModel):
    outbox: list[OutboxRow]
    next_before: str | None


class OutboxPath(PathModel):
    outbox_id: str = uuid_field("the outbox row's id")

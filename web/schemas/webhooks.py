"""Webhooks: an endpoint as the tenant sets it and sees it, its delivery log, replays.

The URL's form and address are checked in the view (``web.webhooks``): that needs the operator's
settings and a DNS lookup, which a model has neither of.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from sansio import webhook_endpoints as rules
from web.api import FieldError, Model, PathModel, body_config, uuid_field
from web.schemas.common import Paging, Text, Timestamp

URL_MAX = 2000
DESCRIPTION_MAX = 500
BOT_IDS_MAX = 100
DELIVERY_STATES = ("pending", "delivering", "delivered", "failed")

_EXAMPLE_URL = "https://hooks.example.com/wabot"


def _event_types(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("must be a list of event types (empty: every type)")
    try:
        return rules.check_event_types(value)
    except rules.PatternRefused as exc:
        raise FieldError(f"event_types[{exc.index}]", exc.reason) from None


def _bot_ids(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("must be a list of bot ids, or null for every bot")
    if not value:
        raise ValueError("must name at least one bot (null: every bot)")
    if len(value) > BOT_IDS_MAX:
        raise FieldError(f"bot_ids[{BOT_IDS_MAX}]", f"at most {BOT_IDS_MAX} bots (null: every bot)")
    found = []
    for index, item in enumerate(value):
        try:
            found.append(str(uuid.UUID(item)))
        except (ValueError, AttributeError, TypeError):
            raise FieldError(f"bot_ids[{index}]", "must be a bot's id (a UUID)") from None
    return list(dict.fromkeys(found))


def _url(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a URL (a string)")
    return value.strip()


_URL_DOC = ("https:// (plain http only when the operator allows it); it must resolve to public"
            " addresses only, checked now and before every request")
_TYPES_DOC = ("exact types (message.in, message.out, message.status, outbox.dead, bot.state) or a prefix like"
              " message.*; empty (the default): every type")


class WebhookCreate(Model):
    model_config = body_config({"url": _EXAMPLE_URL, "description": "order system",
                                "event_types": ["message.*", "outbox.dead"]})

    url: str = Field(max_length=URL_MAX, examples=[_EXAMPLE_URL], description=_URL_DOC)
    description: Text(DESCRIPTION_MAX, blank_ok=True) = ""  # type: ignore[valid-type]
    event_types: list[str] = Field(default_factory=list, max_length=rules.MAX_PATTERNS, description=_TYPES_DOC)
    bot_ids: list[str] | None = Field(None, max_length=BOT_IDS_MAX,
                                      description="only events of these bots; null (the default): every bot")
    enabled: bool = Field(True, strict=True)

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        return _url(value)

    @field_validator("event_types", mode="before")
    @classmethod
    def _check_types(cls, value: Any) -> Any:
        return _event_types(value)

    @field_validator("bot_ids", mode="before")
    @classmethod
    def _check_bots(cls, value: Any) -> Any:
        return _bot_ids(value)

    @model_validator(mode="before")
    @classmethod
    def _no_null_types(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event_types" in data and data["event_types"] is None:
            raise FieldError("event_types", "must be a list of event types (empty: every type)")
        return data


class WebhookUpdate(Model):
    """Only what is sent changes; ``bot_ids: null`` means every bot again."""

    model_config = body_config({"enabled": True}, {"event_types": ["message.in"], "bot_ids": None},
                               json_schema_extra={"minProperties": 1})

    url: str | None = Field(None, max_length=URL_MAX, examples=[_EXAMPLE_URL], description=_URL_DOC)
    description: Text(DESCRIPTION_MAX, blank_ok=True) | None = None  # type: ignore[valid-type]
    event_types: list[str] | None = Field(None, max_length=rules.MAX_PATTERNS, description=_TYPES_DOC)
    bot_ids: list[str] | None = Field(None, max_length=BOT_IDS_MAX, description="null: every bot")
    enabled: bool | None = Field(None, strict=True,
                                 description="true also clears why and since when it was disabled or failing")

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        return _url(value)

    @field_validator("event_types", mode="before")
    @classmethod
    def _check_types(cls, value: Any) -> Any:
        return _event_types(value)

    @field_validator("bot_ids", mode="before")
    @classmethod
    def _check_bots(cls, value: Any) -> Any:
        return _bot_ids(value)

    @model_validator(mode="before")
    @classmethod
    def _something(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data:
                raise ValueError("send at least one of url, description, event_types, bot_ids, enabled")
            for name in ("url", "description", "event_types", "enabled"):
                if name in data and data[name] is None:
                    raise FieldError(name, "must not be null (leave it out to keep it)")
        return data


class Webhook(BaseModel):
    id: str = uuid_field("the endpoint's id")
    url: str
    description: str
    event_types: list[str] = Field(description="empty: every type")
    bot_ids: list[str] | None = Field(description="null: every bot")
    enabled: bool
    failing_since: Timestamp | None = Field(description="the first failed attempt since the last success")
    disabled_at: Timestamp | None = Field(description="when the platform disabled it (410 Gone, or failing too long)")
    disabled_reason: str = Field(description="why the platform disabled it; empty otherwise")
    previous_secret_valid_until: Timestamp | None = Field(
        description="after a rotation: until when the previous secret also signs")
    created_at: Timestamp
    updated_at: Timestamp
    pending_deliveries: int = Field(description="deliveries not finished yet (pending or in flight)")
    failed_deliveries: int = Field(description="deliveries that failed every attempt (kept for WEBHOOK_RETENTION)")


class WebhookWithSecret(Webhook):
    secret: str = Field(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                        description="the signing secret (Standard Webhooks): shown this once, store it now")


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class WebhookPath(PathModel):
    webhook_id: str = uuid_field("the endpoint's id")


class DeliveryPath(PathModel):
    webhook_id: str = uuid_field("the endpoint's id")
    delivery_id: str = uuid_field("the delivery's id (its webhook-id header)")


def _time(value: Any, field: str) -> datetime.datetime | None:
    """An ISO 8601 time (naive: UTC), or None when none was given; FieldError otherwise."""
    if value is None:
        return None
    at: datetime.datetime | None = None
    if isinstance(value, datetime.datetime):
        at = value
    elif isinstance(value, str) and len(value) <= 64:
        head, sep, tail = value.rpartition(" ")
        # An unencoded '+' in a query string arrives as a space: '...T10:00:00 02:00' meant '+02:00'.
        for candidate in (value, head + "+" + tail if sep and "T" in head else None):
            if candidate is None:
                continue
            try:
                at = datetime.datetime.fromisoformat(candidate)
                break
            except ValueError:
                continue
    if at is None:
        raise FieldError(field, "must be an ISO 8601 time like 2026-12-01T10:00:00Z")
    return at if at.tzinfo is not None else at.replace(tzinfo=datetime.UTC)


def _range(since: datetime.datetime | None, until: datetime.datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise FieldError("until", "must be later than since")


class SinceUntil(BaseModel):
    """The checks of a query's ``since`` and ``until`` (ISO 8601 texts, declared by each query with its
    own descriptions): each a time, ``until`` later than ``since``; ``since_at``/``until_at`` parsed."""

    since: str | None
    until: str | None

    @field_validator("since", "until", mode="before")
    @classmethod
    def _times(cls, value: Any, info: Any) -> Any:
        if value is not None and not isinstance(value, str):  # a JSON body's value may be anything
            raise ValueError("must be an ISO 8601 time like 2026-12-01T10:00:00Z")
        _time(value, info.field_name)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> SinceUntil:
        _range(self.since_at, self.until_at)
        return self

    @property
    def since_at(self) -> datetime.datetime | None:
        return _time(self.since, "since")

    @property
    def until_at(self) -> datetime.datetime | None:
        return _time(self.until, "until")


class DeliveriesQuery(Paging, SinceUntil):
    state: Literal["pending", "delivering", "delivered", "failed"] | None = Field(None, description="only this state")
    type: str | None = Field(None, description="only this event type, or a prefix like message.*")
    since: str | None = Field(None, description="created at or after this ISO 8601 time (send '+' as %2B)")
    until: str | None = Field(None, description="created before this ISO 8601 time")

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> Any:
        if value is not None and value not in DELIVERY_STATES:
            raise ValueError("must be one of " + ", ".join(DELIVERY_STATES))
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        try:
            return rules.check_event_types([value])[0]
        except rules.PatternRefused as exc:
            raise ValueError(exc.reason) from None

class Attempt(BaseModel):
    attempted_at: Timestamp
    duration_ms: float
    status_code: int | None = Field(description="the receiver's HTTP status; null when no answer came")
    error: str | None = Field(description="what went wrong (timed out, connection refused, HTTP 500, …)")
    response_head: str = Field(description="the first KB of the receiver's answer")


class Delivery(BaseModel):
    id: str = uuid_field("the delivery's id: the webhook-id header of every attempt and replay")
    endpoint_id: str = uuid_field("the endpoint")
    type: str = Field(examples=["message.in"])
    bot_id: str | None
    state: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int = Field(description="attempts since it was created or last replayed")
    next_attempt_at: Timestamp | None = Field(description="when it is due (pending only)")
    last_status: int | None
    last_error: str | None
    occurred_at: Timestamp
    created_at: Timestamp
    delivered_at: Timestamp | None
    attempt_log: list[Attempt] = Field(description="every attempt kept, oldest first (replays included)")


class DeliveryDetail(Delivery):
    data: dict[str, Any] = Field(description="the event's data: the body's data field (docs/webhooks.md)")


class DeliveryList(BaseModel):
    deliveries: list[Delivery]
    next_before: str | None = Field(description="pass as before for the next page; null on the last")


class ReplayFailed(Model, SinceUntil):
    model_config = body_config({"since": "2026-12-01T00:00:00Z", "until": "2026-12-02T00:00:00Z"}, {})

    since: str | None = Field(None, description="failed deliveries created at or after this ISO 8601 time;"
                                                " left out: from the oldest kept")
    until: str | None = Field(None, description="… and before this time; left out: up to now")


class Replayed(BaseModel):
    replayed: int = Field(description="failed deliveries queued again")

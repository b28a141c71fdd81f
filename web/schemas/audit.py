"""The audit log as the API shows it, and its filters."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from web.schemas.common import Paging, Timestamp
from web.schemas.webhooks import SinceUntil

_ACTION_FILTER = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*(\.\*)?$")
_OBJECT_TYPE = re.compile(r"^[a-z][a-z_]*$")


class AuditActor(BaseModel):
    kind: Literal["member", "api_key", "operator"] = Field(
        description="member: a person in the dashboard; api_key: a program; operator: the platform's operator (CLI)")
    id: str | None = Field(description="member: the person's account id; api_key: the key's id; operator: null")
    label: str = Field(description="member: the email; api_key: the key's prefix (wbk_…); operator: 'cli'")
    name: str = Field(description="member: the display name; api_key: the key's name")


class AuditEntry(BaseModel):
    id: str = Field(json_schema_extra={"format": "uuid"})
    at: Timestamp = Field(description="when the server recorded it")
    actor: AuditActor
    action: str = Field(description="what was done, `<object>.<verb>`: bot.create, rules.update, member.role, …",
                        examples=["rules.update"])
    object_type: str = Field(description="what it was done to: bot, rules, ai, member, key, webhook_endpoint, …")
    object_id: str | None = Field(description="which one (a bot's id for rules and AI settings)")
    before: Any = Field(None, description="the value before, where it is small (rules, AI settings, a role);"
                                          " secrets are never recorded")
    after: Any = Field(None, description="the value after, likewise")
    request_id: str | None = Field(description="the request's X-Request-ID (null for the operator's commands)")
    client_address: str | None = Field(description="the client's address (after PROXY_HOPS trusted proxies)")


class AuditList(BaseModel):
    entries: list[AuditEntry]
    next_before: str | None = Field(description="pass as before for the next page; null on the last")


class AuditQuery(Paging, SinceUntil):
    action: str | None = Field(None, description="only this action, or a prefix like bot.*")
    actor: str | None = Field(None, max_length=320,
                              description="only this actor: an account or key id, an email, or a key prefix")
    object_type: str | None = Field(None, max_length=64, description="only objects of this type (bot, member, …)")
    object_id: str | None = Field(None, max_length=200, description="only this object (with or without object_type)")
    since: str | None = Field(None, description="at or after this ISO 8601 time (send '+' as %2B)")
    until: str | None = Field(None, description="before this ISO 8601 time")

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or len(value) > 64 or not _ACTION_FILTER.match(value):
            raise ValueError("must be an action like bot.create, or a prefix like bot.*")
        return value

    @field_validator("object_type", mode="before")
    @classmethod
    def _object_type(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not _OBJECT_TYPE.match(value):
            raise ValueError("must be an object type like bot or webhook_endpoint")
        return value

    @field_validator("actor", "object_id", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return None if value == "" else value


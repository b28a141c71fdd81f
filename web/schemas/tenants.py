"""The tenant, its users and its API keys."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from web.api import SCOPES, Model, PathModel, body_config, uuid_field
from web.schemas.common import Text, Timestamp

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
Role = Literal["admin", "agent", "viewer"]
Scope = Literal["read", "send", "manage"]


class TenantQuotas(BaseModel):
    """The operator's limits (``python run.py tenant quota``); null: no limit."""

    bots: int | None = Field(description="bots the tenant may have")
    messages_per_day: int | None = Field(description="messages it may send per UTC day (API sends and bot answers)")
    media_bytes: int | None = Field(description="bytes of media it may keep")


class TenantUsage(BaseModel):
    bots: int = Field(description="bots the tenant has")
    messages_today: int = Field(description="messages admitted to the send queue this UTC day")
    media_bytes: int = Field(description="bytes of media kept")
    held: int = Field(description="bots' answers waiting for the daily message quota; they go out when it allows")


class Tenant(BaseModel):
    id: str = uuid_field("the tenant's id")
    name: str
    created_at: Timestamp
    quotas: TenantQuotas
    usage: TenantUsage


class User(BaseModel):
    id: str = uuid_field("the user's id")
    email: str
    display_name: str
    role: Role
    created_at: Timestamp


class UserList(BaseModel):
    users: list[User]


class UserCreate(Model):
    model_config = body_config({"email": "ana@shop.example", "display_name": "Ana", "role": "agent"})

    email: str = Field(max_length=320, pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$",
                       description="an email address (stored lower-case)")
    display_name: Text(200, blank_ok=True) = ""  # type: ignore[valid-type]
    role: Role = Field("agent", description="admin (everything), agent (inbox and bots), viewer (read only)")

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, value: Any) -> str:
        if value is None:
            raise ValueError("is required")
        if not isinstance(value, str):
            raise ValueError("must be a string")
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if len(value) > 320 or not _EMAIL.match(value):
            raise ValueError("must be an email address")
        return value.lower()

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, value: Any) -> Any:
        if value not in ("admin", "agent", "viewer"):
            raise ValueError("must be one of admin, agent, viewer")
        return value


class UserPath(PathModel):
    user_id: str = uuid_field("the user's id")


class ApiKey(BaseModel):
    id: str = uuid_field("the key's id")
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    scopes: list[Scope] | None = Field(description="what the key may do; null: everything")
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class ApiKeyList(BaseModel):
    api_keys: list[ApiKey]


class ApiKeyCreate(Model):
    model_config = body_config({"name": "order system", "scopes": ["read", "send"]})

    name: Text(200, blank_ok=True) = ""  # type: ignore[valid-type]
    scopes: list[Scope] | None = Field(None, min_length=1, description="limit the key to these scopes: "
                                       + "; ".join(SCOPES) + ". Omitted or null: full access")

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list of scopes: " + ", ".join(SCOPES))
        for scope in value:
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {str(scope)[:50]!r}; one of " + ", ".join(SCOPES))
        return value


class ApiKeyCreated(BaseModel):
    id: str = uuid_field("the key's id")
    prefix: str
    key: str = Field(description="the key itself: shown this once, only its hash is kept")
    name: str
    scopes: list[Scope] | None
    note: str


class ApiKeyPath(PathModel):
    key_id: str = uuid_field("the key's id")

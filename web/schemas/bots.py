"""Bots: creating and changing one, what the API shows of it, pairing."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from web.api import Model, QueryModel, body_config, uuid_field
from web.schemas.common import Text, Timestamp

PROXY_SCHEMES = ("http", "https", "socks5")
PROXY_MAX = 500
_PHONE = re.compile(r"^[0-9]{8,15}$")
_PHONE_SEPARATORS = re.compile(r"[+\s-]")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")

BotState = Literal["stopped", "starting", "pairing", "connected", "backing_off", "logged_out", "replaced",
                   "client_outdated", "temporarily_banned", "failed"]


def phone_digits(value: Any) -> str:
    """Digits only, 8–15 of them (E.164 without '+'); '+', spaces and dashes are dropped first."""
    if value is None:
        raise ValueError("is required")
    if not isinstance(value, str):
        raise ValueError("must be a string of digits")
    digits = _PHONE_SEPARATORS.sub("", value)
    if not _PHONE.match(digits):
        raise ValueError("must be a phone number of 8 to 15 digits (country code first, no '+')")
    return digits


def proxy_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > PROXY_MAX:
        raise ValueError(f"must be at most {PROXY_MAX} characters")
    if _CONTROL.search(value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not 0–65535
    except ValueError:
        raise ValueError("must be a proxy URL like socks5://host:1080") from None
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise ValueError("scheme must be one of " + ", ".join(PROXY_SCHEMES))
    if not parts.hostname:
        raise ValueError("must name a host, like socks5://host:1080")
    if port == 0:
        raise ValueError("port must be 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be scheme://[user:password@]host[:port] with no path, query or fragment")
    return value


class TransportOptions(Model):
    """How the bot reaches WhatsApp. Only these keys; any other is an error."""

    proxy: str | None = Field(None, max_length=PROXY_MAX, examples=["socks5://user:secret@proxy.example:1080"],
                              description="http://, https:// or socks5:// [user:password@]host[:port]")
    phone: str | None = Field(None, examples=["4915123456789"],
                              description="the number, 8–15 digits with the country code ('+', spaces and dashes"
                                          " are dropped); pre-fills pairing by code")
    auto_start: bool | None = Field(None, strict=True, description="true also sets desired_state to running")

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy(cls, value: Any) -> Any:
        return None if value is None else proxy_url(value)

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: Any) -> Any:
        return None if value is None else phone_digits(value)

    @field_validator("auto_start", mode="before")
    @classmethod
    def _auto_start(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class BotCreate(Model):
    model_config = body_config({"name": "Front desk", "transport_options": {
        "phone": "+49 151 23456789", "auto_start": True}})

    name: Text(200, description="1–200 characters, surrounding spaces trimmed")  # type: ignore[valid-type]
    transport_options: TransportOptions | None = None


class BotUpdate(Model):
    """Only what is sent changes; ``transport_options`` replaces the stored options as a whole."""

    model_config = body_config({"name": "Front desk (main)"}, json_schema_extra={"minProperties": 1})

    name: Text(200) | None = None  # type: ignore[valid-type]
    transport_options: TransportOptions | None = None

    @model_validator(mode="after")
    def _something(self) -> BotUpdate:
        if self.name is None and self.transport_options is None:
            raise ValueError("send name and/or transport_options")
        return self


class Bot(BaseModel):
    id: str = uuid_field("the bot's id")
    name: str
    transport_options: dict[str, Any]
    desired_state: Literal["running", "stopped"]
    state: str = Field(description="what the session last reported: " + ", ".join(get_args(BotState)))
    reason: str
    attempt: int
    next_retry_at: Timestamp | None
    banned_until: Timestamp | None
    jid: str | None
    paired: bool
    has_qr: bool
    qr_updated_at: Timestamp | None
    supervisor: str | None = Field(description="the process holding the bot's lease; null when none runs it")
    lease_expires_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class BotList(BaseModel):
    bots: list[Bot]


class BotAccepted(BaseModel):
    bot: Bot
    accepted: Literal["start", "stop", "restart", "logout"]


class QrQuery(QueryModel):
    format: Literal["json", "svg", "text"] = Field("json", description="json (default), svg (an image) or text"
                                                                       " (the payload)")

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if value not in ("json", "svg", "text"):
            raise ValueError("must be one of json, svg, text")
        return value


class Qr(BaseModel):
    qr: str = Field(description="the QR code's payload")
    svg: str = Field(description="the QR code as an inline SVG element")
    issued_at: Timestamp | None


class PairCodeRequest(Model):
    model_config = body_config({"phone": "+49 151 23456789"})

    phone: str = Field(description="8–15 digits with the country code; '+', spaces and dashes are dropped")

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: Any) -> str:
        return phone_digits(value)


class PairCode(BaseModel):
    code: str = Field(examples=["ABCD-EFGH"], description="enter it in WhatsApp on the phone")

"""Pieces every model uses: trimmed text fields, ids, paging."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from web.api import PathModel, QueryModel, uuid_field
from web.paging import parse_before

LIMIT_DEFAULT = 50
LIMIT_MAX = 100


def _text_check(max_len: int, blank_ok: bool) -> Any:
    def check(value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str):
            raise ValueError("must be a string")
        value = value.strip()
        if not value and not blank_ok:
            raise ValueError("must not be empty")
        if len(value) > max_len:
            raise ValueError(f"must be at most {max_len} characters")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    return check


def Text(
    max_len: int = 200, *, blank_ok: bool = False, description: str = "", examples: list[Any] | None = None
) -> Any:
    """A string, surrounding spaces trimmed, 1..max_len characters (0.. with ``blank_ok``), no NUL."""
    return Annotated[str, BeforeValidator(_text_check(max_len, blank_ok)),
                     Field(min_length=0 if blank_ok else 1, max_length=max_len, description=description,
                           examples=examples)]


Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


def iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


class BotPath(PathModel):
    bot_id: str = uuid_field("the bot's id")


class Paging(QueryModel):
    limit: int = Field(LIMIT_DEFAULT, ge=1, le=LIMIT_MAX, description="rows a page")
    before: str | None = Field(None, description="the next_before cursor of the previous page, or an ISO 8601 time"
                                                 " (rows strictly older); send '+' as %2B")

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a whole number from 1 to {LIMIT_MAX}") from None
        if not 1 <= number <= LIMIT_MAX:
            raise ValueError(f"must be a whole number from 1 to {LIMIT_MAX}")
        return number

    @field_validator("before")
    @classmethod
    def _before(cls, value: str | None) -> str | None:
        parse_before(value)
        return value

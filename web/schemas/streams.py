"""The live event stream's inputs, and the media routes'."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from sansio import sse
from web.api import FieldError, HeaderModel, PathModel, QueryModel, uuid_field


def _resume(value: Any) -> Any:
    try:
        sse.resume_position(None, value)
    except sse.BadResume as exc:
        # Header or query, the API names it last_event_id (as the query parameter).
        raise FieldError("last_event_id", str(exc)) from None
    return value


class EventsQuery(QueryModel):
    last_event_id: str | None = Field(None, pattern=r"^[0-9]{1,19}$",
                                      description="resume after this event id (the Last-Event-ID header wins)")
    bot: list[str] = Field([], description="only these bots' events (repeat the parameter, or separate ids with"
                                           " commas); another tenant's bot matches nothing")
    type: list[str] = Field([], description="only these event types, exact or a prefix as message.*")

    @field_validator("last_event_id", mode="before")
    @classmethod
    def _last(cls, value: Any) -> Any:
        return _resume(value)

    @field_validator("bot", "type", mode="after")
    @classmethod
    def _filter(cls, value: list[str], info: Any) -> list[str]:
        from web.streams import parse_filter  # the filter's rules live with the stream (and the WebSocket's)

        parse_filter(value, []) if info.field_name == "bot" else parse_filter([], value)
        return value


class StreamHeaders(HeaderModel):
    last_event_id: str | None = Field(None, alias="Last-Event-ID",
                                      description="what a browser sends on reconnect: resume after this id")

    @field_validator("last_event_id", mode="before")
    @classmethod
    def _last(cls, value: Any) -> Any:
        return _resume(value)


class MediaPath(PathModel):
    media_id: str = uuid_field("the media object's id")


class MediaQuery(QueryModel):
    filename: str | None = Field(None, description="a display name for a raw-body upload (path components and"
                                                   " control characters dropped, at most 255 characters)")


class Media(BaseModel):
    id: str = uuid_field("the media object's id")
    mime_type: str
    size_bytes: int
    sha256: str
    filename: str

"""Reading and checking request input; every failure names the field and the reason (400)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import request

from web.errors import ApiError, bad_request

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def json_body() -> dict[str, Any]:
    if not request.data:
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return data


def text(body: dict[str, Any], field: str, *, required: bool = True, max_len: int = 200, default: str = "") -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise bad_request(field, "is required")
        return default
    if not isinstance(value, str):
        raise bad_request(field, "must be a string")
    value = value.strip()
    if required and not value:
        raise bad_request(field, "must not be empty")
    if len(value) > max_len:
        raise bad_request(field, f"must be at most {max_len} characters")
    if "\x00" in value:
        raise bad_request(field, "must not contain NUL characters")
    return value


def email(body: dict[str, Any], field: str = "email") -> str:
    value = text(body, field, max_len=320)
    if not _EMAIL.match(value):
        raise bad_request(field, "must be an email address")
    return value.lower()


def choice(body: dict[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(field, default)
    if value not in choices:
        raise bad_request(field, "must be one of " + ", ".join(choices))
    return value


def uuid_arg(value: str, what: str) -> str:
    """A path id that is not a UUID cannot name anything: 404, not 400, like any unknown id."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError):
        raise ApiError(404, "not_found", f"{what} not found") from None

"""Who and what an outgoing message may be, checked the same way wherever one is queued (HTTP API,
WebSocket command): pure functions raising ``ValueError`` with a message meant for the client."""

from __future__ import annotations

import re
from typing import Any

TEXT_MAX = 4096
"""Longest text body, in characters."""

_SEPARATORS = re.compile(r"[+\s-]")
_PHONE = re.compile(r"^[0-9]{8,15}$")
_USER_JID = re.compile(r"^[0-9]{8,15}@s\.whatsapp\.net$")


def phone_jid(value: str) -> str | None:
    """``<digits>@s.whatsapp.net`` for a phone number (8–15 digits; ``+``, spaces, dashes dropped)."""
    digits = _SEPARATORS.sub("", value.strip())
    return digits + "@s.whatsapp.net" if _PHONE.match(digits) else None


def to_jid(to: Any) -> str:
    """A phone number becomes ``<digits>@s.whatsapp.net``; such a user jid is kept (lower-cased).
    Groups and anything else are refused."""
    if not isinstance(to, str):
        raise ValueError("must be a phone number (digits) or a jid ending @s.whatsapp.net")
    value = to.strip()
    if "@" in value:
        if not _USER_JID.match(value.lower()):
            raise ValueError("must be a jid like 4915112345678@s.whatsapp.net (8 to 15 digits)")
        return value.lower()
    jid = phone_jid(value)
    if jid is None:
        raise ValueError("must be a phone number of 8 to 15 digits (country code first, no '+')")
    return jid


def check_text(text: Any, max_len: int = TEXT_MAX, *, required: bool = True) -> str:
    """The text as the recipient will see it (not trimmed): a string, non-blank when required, at most
    ``max_len`` characters, no NUL."""
    if text is None and not required:
        return ""
    if not isinstance(text, str):
        raise ValueError("must be a string" if text is not None else "is required")
    if required and not text.strip():
        raise ValueError("must not be empty")
    if len(text) > max_len:
        raise ValueError(f"must be at most {max_len} characters")
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text

"""Server-sent events framing per the HTML standard, and the subscription filter; pure.

A frame is ``id:``, ``event:`` and one ``data:`` line per line of the payload, ending in a blank line.
Comments (``:`` lines) keep idle connections alive through proxies; ``retry:`` tells the browser how
long to wait before reconnecting. Resume positions come from the ``Last-Event-ID`` header or a
``last_event_id`` query parameter and must be a non-negative integer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any


def frame(event_id: int | None, event_type: str | None, data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), default=str)
    lines = []
    if event_id is not None:
        lines.append(f"id: {int(event_id)}")
    if event_type:
        lines.append(f"event: {_one_line(event_type)}")
    # A bare CR or LF inside data would end the line early: every line gets its own data: field.
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        lines.append(f"data: {line}")
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str = "") -> bytes:
    return f": {_one_line(text)}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    return f"retry: {int(milliseconds)}\n\n".encode()


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


class BadResume(ValueError):
    pass


def resume_position(header: str | None, query: str | None) -> int | None:
    """The id to resume after: the header wins (that is what a browser sends on reconnect)."""
    for raw in (header, query):
        if raw is None or raw == "":
            continue
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
            raise BadResume("last event id must be a non-negative integer")
        return int(raw)
    return None


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which events a subscriber wants; empty sets mean all. Types match exactly, or by prefix when
    given as ``prefix.*`` (``bot.*`` matches ``bot.state`` and ``bot.qr``)."""

    bot_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, bot_id: str | None, event_type: str) -> bool:
        if self.bot_ids and bot_id not in self.bot_ids:
            return False
        if self.types and event_type not in self.types:
            return any(t.endswith(".*") and event_type.startswith(t[:-1]) for t in self.types)
        return True

    @property
    def exact_types(self) -> frozenset[str] | None:
        """Types a database query can filter on exactly (None when a prefix is involved or no filter)."""
        if not self.types or any(t.endswith(".*") for t in self.types):
            return None
        return self.types


def split_list(values: Iterable[str]) -> list[str]:
    """``?bot=a,b&bot=c`` → ``[a, b, c]``."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out

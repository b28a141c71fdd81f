"""What a tenant may set on a webhook endpoint, pure: the event types it subscribes to.

The syntax is the live streams' filter (``sansio.sse.Filter``): an exact type or ``prefix.*``; no
types means every type. An endpoint is stored once and then receives events for months, so a pattern
that can never match (a typo: ``mesage.in``, ``bots.*``) is refused when it is saved instead of
silently receiving nothing; the streams' filter, a query of the moment, lets such a pattern through.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Every type a webhook can receive (the triggers of db/migrations/0012_webhooks.sql, and the test
# event sent from the dashboard or the API).
EVENT_TYPES = ("message.in", "message.out", "message.status", "outbox.dead", "bot.state", "webhook.test")
MAX_PATTERNS = 20
PATTERN_MAX = 100


class PatternRefused(ValueError):
    """The pattern at ``index`` is refused; ``reason`` says why in the user's words."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"[{index}]: {reason}")
        self.index = index
        self.reason = reason


def matches(pattern: str, event_type: str) -> bool:
    """The streams' rule (and the database's ``webhook_type_matches``) for one pattern."""
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def check_event_types(patterns: Sequence[str], known: Iterable[str] = EVENT_TYPES) -> list[str]:
    """The patterns as stored (duplicates dropped, order kept); raises PatternRefused for the first
    one that is malformed or can match no event type."""
    known = tuple(known)
    if len(patterns) > MAX_PATTERNS:
        raise PatternRefused(MAX_PATTERNS, f"at most {MAX_PATTERNS} event types (none: every type)")
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise PatternRefused(index, "must be an event type like message.in, or a prefix like message.*")
        if len(pattern) > PATTERN_MAX or not all(c.isalnum() or c in "._-*" for c in pattern):
            raise PatternRefused(index, f"{pattern[:PATTERN_MAX]!r} is not an event type")
        if "*" in pattern[:-1] or (pattern.endswith("*") and not pattern.endswith(".*")) or pattern == ".*":
            raise PatternRefused(index, f"{pattern!r}: a pattern is an exact type or ends in '.*' (like message.*)")
        if not any(matches(pattern, event_type) for event_type in known):
            raise PatternRefused(index, f"{pattern!r} matches no event type; the types are " + ", ".join(known))
    return list(dict.fromkeys(patterns))

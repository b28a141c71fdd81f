"""What an audit log row may hold (no I/O): the actions, and the before/after values made safe to keep.

- **Secrets never reach the log.** ``clean`` replaces the value of every key that names a secret
  (``secret``, ``password``, ``token``, ``key`` and the like, at any depth) with ``"[redacted]"``, and
  the password of any URL with credentials (a bot's ``proxy``) with ``***``. Callers pass only what is
  worth keeping (rules, AI settings, roles, names), and this is the net under them.
- **Small values only.** A value whose JSON is over ``MAX_VALUE_BYTES`` is replaced by a note saying
  how large it was: the log records that a large thing changed, not the thing.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[redacted]"
MAX_VALUE_BYTES = 16 * 1024

# Actions the platform records (docs/api.md, "Audit log"); an action is `<object>.<verb>`.
ACTIONS = (
    "bot.create", "bot.update", "bot.delete", "bot.start", "bot.stop", "bot.restart", "bot.logout", "bot.pair_code",
    "rules.update", "ai.update",
    "message.send", "media.upload", "conversation.takeover", "conversation.release", "outbox.retry",
    "outbox.retry_all",
    "member.add", "member.invite", "member.role", "member.remove", "member.link",
    "key.create", "key.revoke",
    "webhook_endpoint.create", "webhook_endpoint.update", "webhook_endpoint.delete",
    "webhook_endpoint.rotate_secret", "webhook_endpoint.test", "webhook_delivery.replay",
    "webhook_endpoint.replay_failed",
    "tenant.quota", "tenant.disable", "tenant.enable",
)
ACTOR_KINDS = ("member", "api_key", "operator")

_ACTION = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")
_OBJECT_TYPE = re.compile(r"^[a-z][a-z_]*$")
# Key names that hold a secret, matched on the lower-cased name's words ("webhook_secret", "apiKey",
# "password_hash", "key"); "key_id", "prefix" and "has_secret" name no secret and stay.
_SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwd", "token", "tokens", "key", "hash",
                           "authorization", "credential", "credentials", "cookie", "csrf", "dsn"})
_SAFE_KEYS = frozenset({"key_id", "has_secret", "prefix", "secret_rotated", "previous_secret_until"})
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^/@\s]*@")
_WORD = re.compile(r"[a-z0-9]+")


def valid_action(action: str) -> bool:
    return len(action) <= 64 and bool(_ACTION.match(action))


def valid_object_type(object_type: str) -> bool:
    return len(object_type) <= 64 and bool(_OBJECT_TYPE.match(object_type))


def _words(key: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    return set(_WORD.findall(spaced))


def is_secret_key(key: str) -> bool:
    return key.lower() not in _SAFE_KEYS and bool(_words(key) & _SECRET_WORDS)


def redact(value: Any) -> Any:
    """``value`` with every secret-named key's value replaced and URL passwords masked, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\1:***@", value)
    return value


def clean(value: Any) -> Any:
    """What the log keeps of a before/after value: redacted, and a note instead when it is too large."""
    text = clean_json(value)
    return None if text is None else json.loads(text)


def clean_json(value: Any) -> str | None:
    """``clean(value)`` as the JSON text stored (one serialisation: the size is measured on it)."""
    if value is None:
        return None
    text = json.dumps(redact(value), default=str, separators=(",", ":"))
    size = len(text.encode())
    if size > MAX_VALUE_BYTES:
        return json.dumps({"omitted": "too large to keep in the audit log", "bytes": size})
    return text


def changed(before: Any, after: Any) -> tuple[Any, Any]:
    """For two flat objects: only the keys whose values differ, on both sides (a rename shows the name)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return before, after
    keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}

"""Who may do what in a tenant: each role's permissions, as data (no I/O).

Every dashboard page and action names the permission it needs and the server checks it on every
request (``web.dashboard.session``); the templates use the same table only to leave out what a
person may not use. A viewer's hand-made POST is refused the same way as a hidden button's would be.

- ``admin``: everything.
- ``agent``: the inbox (read, send, take over, retry a failed send) and the bots (view, start, stop,
  restart, pair); not creating, deleting or logging out a bot, its rules or AI settings, members or keys.
- ``viewer``: read only.
"""

from __future__ import annotations

ROLES = ("admin", "agent", "viewer")

READ = "read"  # bots, inbox, rules, AI settings, outbox, events (and the rule tester, which changes nothing)
SEND = "send"  # write to a customer from the composer
TAKE_OVER = "take_over"  # hold a conversation / return it to the bot
RETRY = "retry"  # send a dead letter again
OPERATE = "operate"  # start, stop, restart a bot
PAIR = "pair"  # show its QR code, ask for a pair code
MANAGE_BOTS = "manage_bots"  # create, delete, log out (unpair)
CONFIGURE = "configure"  # rules and AI settings (and trying the AI provider)
ADMIN = "admin"  # members, API keys, the status page

_AGENT = frozenset({READ, SEND, TAKE_OVER, RETRY, OPERATE, PAIR})
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "agent": _AGENT,
    "admin": _AGENT | {MANAGE_BOTS, CONFIGURE, ADMIN},
}


def allows(role: str | None, permission: str) -> bool:
    """True when ``role`` (None: not a member) has ``permission``."""
    return permission in PERMISSIONS.get(role or "", frozenset())

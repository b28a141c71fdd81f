"""What a session does after its connection ended, following whatsmeow's own rules.

- ``STREAM_RESTART``: the server asked for a fresh stream (it always does right after pairing);
  reconnect at once, and do not count it as a failed attempt.
- ``NETWORK``, ``KEEPALIVE_TIMEOUT``, ``CONNECT_FAILURE`` with a 5xx code: transient; back off.
- ``CONNECT_FAILURE`` with any other code: the server refused the login for a reason retrying will not
  change, and hammering it risks a ban; stop and wait for the user. 401/403/406 mean logged out,
  405 client outdated, the rest (402, 409, 413, a missing code...) failed.
- ``LOGGED_OUT``, ``REPLACED``, ``CLIENT_OUTDATED``: stop and wait for the user, each in its own state.
- ``TEMPORARY_BAN``: wait until it expires, then resume. Without a usable expiry there is nothing to
  wait for, so the session fails and waits for the user rather than reconnect into the ban.
- ``CLOSED``: we closed it ourselves; nothing to do.
- ``ADDRESS_REFUSED``: the platform's outbound address policy refused the address to dial (a bot's
  proxy resolving to loopback, a private range, the metadata service...). Retrying changes nothing
  until the tenant changes the proxy: the session fails with the reason and waits for the user.

Pure: a function of the event.
"""

from __future__ import annotations

import dataclasses
import enum

from transports.events import Disconnected, DisconnectKind


class Action(enum.Enum):
    RECONNECT_NOW = "reconnect_now"
    BACK_OFF = "back_off"
    WAIT_FOR_USER = "wait_for_user"
    WAIT_UNTIL = "wait_until"  # resume after ``Decision.resume_in`` seconds
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    state: str  # the session state it leads to (``sansio.session_machine.State`` values); "" for NONE
    reason: str  # short, human-readable; shown to the user and stored on the bot row
    resume_in: float | None = None  # seconds from the disconnect, for WAIT_UNTIL only


LOGGED_OUT_CODES = frozenset({401, 403, 406})
CLIENT_OUTDATED_CODE = 405

# whatsmeow's names for ConnectFailureReason, so reasons say more than a number.
_CODE_NAMES = {
    401: "logged out",
    402: "temporarily banned",
    403: "main device gone",
    405: "client outdated",
    406: "unknown logout",
    409: "bad user agent",
    413: "CAT expired",
    414: "CAT invalid",
    415: "not found",
    418: "client unknown",
    500: "internal server error",
    501: "experimental",
    503: "service unavailable",
}


def _describe(event: Disconnected, summary: str) -> str:
    if event.code is not None:
        name = _CODE_NAMES.get(event.code)
        summary = f"{summary} ({event.code} {name})" if name else f"{summary} ({event.code})"
    return f"{summary}: {event.detail}" if event.detail else summary


def classify(event: Disconnected) -> Decision:
    kind = event.kind
    if kind is DisconnectKind.STREAM_RESTART:
        return Decision(Action.RECONNECT_NOW, "starting", _describe(event, "stream restart"))
    if kind in (DisconnectKind.NETWORK, DisconnectKind.KEEPALIVE_TIMEOUT):
        return Decision(Action.BACK_OFF, "backing_off", _describe(event, kind.value.replace("_", " ")))
    if kind is DisconnectKind.CONNECT_FAILURE:
        return _connect_failure(event)
    if kind is DisconnectKind.LOGGED_OUT:
        return Decision(Action.WAIT_FOR_USER, "logged_out", _describe(event, "logged out"))
    if kind is DisconnectKind.REPLACED:
        return Decision(Action.WAIT_FOR_USER, "replaced", _describe(event, "replaced by another client"))
    if kind is DisconnectKind.CLIENT_OUTDATED:
        return Decision(Action.WAIT_FOR_USER, "client_outdated", _describe(event, "client outdated"))
    if kind is DisconnectKind.TEMPORARY_BAN:
        if event.expires_in is None or event.expires_in < 0:
            return Decision(Action.WAIT_FOR_USER, "failed", _describe(event, "temporarily banned, expiry unknown"))
        return Decision(
            Action.WAIT_UNTIL, "temporarily_banned", _describe(event, "temporarily banned"), event.expires_in
        )
    if kind is DisconnectKind.CLOSED:
        return Decision(Action.NONE, "", _describe(event, "closed"))
    if kind is DisconnectKind.ADDRESS_REFUSED:
        return Decision(Action.WAIT_FOR_USER, "failed", _describe(event, "refused by the outbound address policy"))
    raise ValueError(f"unknown disconnect kind {kind!r}")


def _connect_failure(event: Disconnected) -> Decision:
    code = event.code
    if code is not None and 500 <= code <= 599:
        return Decision(Action.BACK_OFF, "backing_off", _describe(event, "connect failure"))
    if code in LOGGED_OUT_CODES:
        return Decision(Action.WAIT_FOR_USER, "logged_out", _describe(event, "connect failure"))
    if code == CLIENT_OUTDATED_CODE:
        return Decision(Action.WAIT_FOR_USER, "client_outdated", _describe(event, "connect failure"))
    return Decision(Action.WAIT_FOR_USER, "failed", _describe(event, "connect failure"))

"""The project's own domain events, in which every transport reports what happened to a session.

Transports translate their native events (neonize protobufs, simulator frames) into these; nothing
above the transport layer sees a native event. All are immutable values.
"""

from __future__ import annotations

import dataclasses
import enum


class DisconnectKind(str, enum.Enum):
    """Why a connection ended, in whatsmeow's terms (see ``sansio.disconnects`` for what each means)."""

    STREAM_RESTART = "stream_restart"  # server asked for a reconnect, as right after pairing
    NETWORK = "network"  # dial failed, socket dropped, server went away
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    CONNECT_FAILURE = "connect_failure"  # server refused the login with a code (5xx transient, 4xx not)
    LOGGED_OUT = "logged_out"  # 401/403/406: the device was unlinked; needs a new pairing
    REPLACED = "replaced"  # another client took the session (stream:error conflict)
    CLIENT_OUTDATED = "client_outdated"
    TEMPORARY_BAN = "temporary_ban"  # with an expiry
    CLOSED = "closed"  # we closed it ourselves (stop, logout)
    ADDRESS_REFUSED = "address_refused"  # the platform's outbound policy refused where to dial (a proxy)


@dataclasses.dataclass(frozen=True)
class Connected:
    jid: str | None = None


@dataclasses.dataclass(frozen=True)
class Disconnected:
    kind: DisconnectKind
    detail: str = ""
    code: int | None = None  # ConnectFailure / ban / logout code where the network gave one
    expires_in: float | None = None  # seconds, for TEMPORARY_BAN


@dataclasses.dataclass(frozen=True)
class QrCode:
    codes: tuple[str, ...]  # the current QR payload first; rotated by the network


@dataclasses.dataclass(frozen=True)
class PairCode:
    code: str


@dataclasses.dataclass(frozen=True)
class Paired:
    jid: str


@dataclasses.dataclass(frozen=True)
class MessageReceived:
    message_id: str
    chat: str
    sender: str
    timestamp: float
    kind: str = "text"  # text, image, audio, video, document, sticker, reaction, unsupported
    text: str = ""
    caption: str = ""
    mime_type: str = ""
    quoted_id: str | None = None
    media_ref: str | None = None  # transport-specific handle to download the media
    # Written from the bot's own account on another device (the paired phone) to ``chat``, the
    # customer; ``sender`` is then our own jid. Kept last so positional construction stays valid.
    from_me: bool = False


@dataclasses.dataclass(frozen=True)
class Receipt:
    message_ids: tuple[str, ...]
    chat: str
    status: str  # delivered, read, played


Event = Connected | Disconnected | QrCode | PairCode | Paired | MessageReceived | Receipt

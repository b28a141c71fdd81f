"""The interface every transport implements; a session actor drives exactly one.

Threading contract: methods are called from the owning session actor's greenlet. Events are handed to
``sink(event)`` from a greenlet of the process's hub thread, never from a foreign OS thread and never
inside the hub itself; ``sink`` only queues (an actor ``tell``) and returns. After ``close()`` returns,
the transport holds no thread, timer, socket or callback, and ``sink`` is never called again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from transports.events import Event

Sink = Callable[[Event], None]


class TransportError(RuntimeError):
    """A transport operation failed (not connected, refused by the network, ...).

    ``permanent`` is true when the network refused the request itself (say, an invalid recipient):
    repeating it cannot succeed, so an outgoing message goes straight to the dead letters."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(abc.ABC):
    kind: str = "abstract"

    def __init__(self, bot_id: str, sink: Sink, settings: Any, options: dict | None = None) -> None:
        self.bot_id = bot_id
        self.sink = sink
        self.settings = settings
        self.options = dict(options or {})

    @abc.abstractmethod
    def connect(self) -> None:
        """Start connecting and return at once; the outcome arrives as events
        (``Connected``, ``QrCode`` when not paired, or ``Disconnected``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect and release everything; idempotent; returns promptly even mid-dial."""

    @abc.abstractmethod
    def logout(self) -> None:
        """Unlink the device on the network and forget the local device store."""

    @abc.abstractmethod
    def request_pair_code(self, phone: str) -> str:
        """Ask the network for a pair code for ``phone`` (digits, international form)."""

    @abc.abstractmethod
    def send_text(self, to: str, text: str, message_id: str) -> str | None:
        """Send a text with a message id fixed by the caller (idempotent where the network allows);
        the id the network assigned, where it reports one."""

    def send_media(self, to: str, kind: str, data: bytes, mime_type: str, caption: str, filename: str,
                   message_id: str) -> Any:
        """Send an image or document (``kind``) with an optional caption, under a fixed message id."""
        raise TransportError(f"{self.kind} transport cannot send media", permanent=True)

    def ack(self, message_ids: list[str]) -> None:  # noqa: B027 - optional: the default does nothing
        """Tell the network these inbound messages are safely stored. Networks that redeliver unacked
        messages (the simulator, at each login) then stop; the default does nothing."""

    def was_received(self, message_id: str) -> bool | None:
        """Whether the network already holds a message we sent with this id (after a crash mid-send);
        None when the network offers no way to check."""
        return None

    def download_media(self, media_ref: str) -> bytes:
        """The bytes of an inbound media message."""
        raise TransportError(f"{self.kind} transport cannot download media")

    @property
    @abc.abstractmethod
    def is_paired(self) -> bool:
        """Whether a device store with credentials exists, so ``connect`` resumes without a QR code."""

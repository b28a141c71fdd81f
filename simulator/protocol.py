"""The simulator's wire protocol: newline-delimited JSON objects over TCP, one frame per line.

Both ends use this module: the simulator server (``simulator.server``) and the bot side
(``transports.simulator``). Every frame is a JSON object with a ``t`` (type) field; the full list of
frames and what each means is in ``docs/simulator.md``. Kept deliberately small: no framing beyond the
newline, no compression, no encryption; the point is to exercise real sockets, not WhatsApp's crypto.
"""

from __future__ import annotations

import json
import re
from typing import Any

VERSION = 1

# A frame longer than this ends the connection: a peer sending unbounded lines is broken or hostile,
# and a cap keeps each connection's buffer small (2,000 sessions share one process).
MAX_FRAME = 256 * 1024
RECV_SIZE = 16 * 1024

USER_SERVER = "s.whatsapp.net"

# Fault kinds the simulator can inject, in the names of ``transports.events.DisconnectKind`` (all but
# ``closed``, which only the bot side produces), plus ``hang`` (accept but never answer).
FAULT_KINDS = (
    "stream_restart",
    "network",
    "keepalive_timeout",
    "connect_failure",
    "logged_out",
    "replaced",
    "client_outdated",
    "temporary_ban",
    "hang",
)

# Default codes, as WhatsApp gives them in a <failure reason=...> / <stream:error code=...>.
DEFAULT_CODES = {
    "connect_failure": 503,
    "logged_out": 401,
    "client_outdated": 405,
    "temporary_ban": 402,
}


class ProtocolError(ValueError):
    """The peer sent something that is not a frame (not JSON, not an object, too long)."""


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        frame = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise ProtocolError("a frame is a JSON object with a string 't'")
    return frame


class FrameReader:
    """Reads frames from a (gevent) socket. A timeout raised while waiting in ``recv`` loses nothing:
    bytes are only appended to the buffer after ``recv`` returned, so the caller may simply retry."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""

    def read(self) -> dict[str, Any]:
        """The next frame; ``EOFError`` when the peer closed, ``ProtocolError`` on garbage."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                if line.strip():
                    return decode(line)
                continue
            if len(self.buf) > MAX_FRAME:
                raise ProtocolError(f"frame longer than {MAX_FRAME} bytes")
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise EOFError("peer closed the connection")
            self.buf += data


_NON_DIGITS = re.compile(r"[\s+\-().]")


def phone_digits(phone: str) -> str:
    """``+1 (555) 010-2000`` → ``15550102000``; raises ValueError unless 7-15 digits remain (E.164)."""
    digits = _NON_DIGITS.sub("", str(phone))
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise ValueError(f"not a phone number in international form: {phone!r}")
    return digits


def user_jid(who: str) -> str:
    """A customer as a user jid: digits or a jid (device part dropped) → ``<digits>@s.whatsapp.net``."""
    who = str(who)
    if "@" in who:
        user, _, server = who.partition("@")
        user = user.split(":", 1)[0]
        if not user or not server:
            raise ValueError(f"not a jid: {who!r}")
        return f"{user}@{server}"
    return f"{phone_digits(who)}@{USER_SERVER}"


def split_addr(addr: str, default_port: int = 7300) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; ``[::1]:7300`` for IPv6."""
    addr = addr.strip()
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            host, port = addr, ""
    port_number = int(port) if port else default_port
    if not 0 <= port_number <= 65535:
        raise ValueError(f"bad port in {addr!r}")
    return host or "127.0.0.1", port_number


MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")

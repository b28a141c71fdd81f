"""Pure translation of neonize 0.5.x event protobufs into the project's domain events.

No I/O, no threads, no gevent: every function takes protobuf messages (or the raw strings goneonize
hands to its QR and login-status callbacks) and returns a value from ``transports.events`` or ``None``
when the native event means nothing to a session.

Facts this module relies on (read from neonize 0.5.2 and the goneonize/whatsmeow sources it wraps):

* neonize renumbers whatsmeow's enums. ``ConnectFailureReason`` is 1..10 in ``Neonize.proto``
  (GENERIC=1 ... SERVICE_UNAVAILABLE=10) where whatsmeow uses the HTTP-like codes 400..503. A
  whatsmeow reason goneonize has no name for (413 CAT expired, 414, 415, 418) leaves that proto2
  *required* field unset, so goneonize's marshal fails and ``Neonize()`` returns the error (the
  transport reports it as a network disconnect); parsed partially it maps to a code of None.
  ``TemporaryBan.TempBanReason`` is 1..5 where whatsmeow uses 101..104 and 106.
  ``TemporaryBan.Expire`` is whole seconds.
* whatsmeow reports the known failures as their own events (``LoggedOut`` for 401/403/406,
  ``TemporaryBan`` for 402, ``ClientOutdated`` for 405) and only the rest as ``ConnectFailure``; the
  table below still maps every code so a ``ConnectFailure`` carrying a known code is classified the
  same way.
* ``MessageInfo.Timestamp`` is milliseconds since the epoch; ``Receipt.Timestamp`` is seconds.
* goneonize's receipt encoder maps whatsmeow's ``played-self`` to ``SERVER_ERROR``: neither is a
  delivery status of one of our messages, so both are ignored.
"""

from __future__ import annotations

import base64

from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa

from transports.events import (
    Connected,
    Disconnected,
    DisconnectKind,
    Event,
    MessageReceived,
    Paired,
    QrCode,
    Receipt,
)

# -- connect failures ------------------------------------------------------------------------------

_CFR = npb.ConnectFailureReason
#: neonize's renumbered ConnectFailureReason -> whatsmeow's code.
CONNECT_FAILURE_CODES: dict[int, int] = {
    _CFR.Value("GENERIC"): 400,
    _CFR.Value("LOGGED_OUT"): 401,
    _CFR.Value("TEMP_BANNED"): 402,
    _CFR.Value("MAIN_DEVICE_GONE"): 403,
    _CFR.Value("CLIENT_OUTDATED"): 405,
    _CFR.Value("UNKNOWN_LOGOUT"): 406,
    _CFR.Value("BAD_USER_AGENT"): 409,
    _CFR.Value("INTERNAL_SERVER_ERROR"): 500,
    _CFR.Value("EXPERIMENTAL"): 501,
    _CFR.Value("SERVICE_UNAVAILABLE"): 503,
}
#: whatsmeow's ConnectFailureReason.IsLoggedOut(): the server dropped the device; the store is gone.
LOGGED_OUT_CODES = frozenset({401, 403, 406})
TEMP_BANNED_CODE = 402
CLIENT_OUTDATED_CODE = 405

_TBR = npb.TemporaryBan.TempBanReason
#: neonize's renumbered TempBanReason -> whatsmeow's code.
TEMP_BAN_CODES: dict[int, int] = {
    _TBR.Value("SEND_TO_TOO_MANY_PEOPLE"): 101,
    _TBR.Value("BLOCKED_BY_USERS"): 102,
    _TBR.Value("CREATED_TOO_MANY_GROUPS"): 103,
    _TBR.Value("SENT_TOO_MANY_SAME_MESSAGE"): 104,
    _TBR.Value("BROADCAST_LIST"): 106,
}


def connect_failure_code(reason_holder) -> int | None:
    """whatsmeow's code for the ``Reason`` of a ConnectFailure or LoggedOut message, None if unset."""
    if not reason_holder.HasField("Reason"):
        return None
    return CONNECT_FAILURE_CODES.get(reason_holder.Reason)


def _reason_name(reason_holder) -> str:
    if not reason_holder.HasField("Reason"):
        return "unknown reason"
    try:
        return _CFR.Name(reason_holder.Reason).lower()
    except ValueError:
        return f"reason {reason_holder.Reason}"


def _disconnect_for_code(code: int | None, detail: str) -> Disconnected:
    if code in LOGGED_OUT_CODES:
        return Disconnected(DisconnectKind.LOGGED_OUT, detail, code=code)
    if code == TEMP_BANNED_CODE:
        return Disconnected(DisconnectKind.TEMPORARY_BAN, detail, code=code)
    if code == CLIENT_OUTDATED_CODE:
        return Disconnected(DisconnectKind.CLIENT_OUTDATED, detail, code=code)
    return Disconnected(DisconnectKind.CONNECT_FAILURE, detail, code=code)


def translate_connect_failure(ev: npb.ConnectFailure) -> Disconnected:
    code = connect_failure_code(ev)
    detail = f"connect failure: {_reason_name(ev)}"
    if ev.Message:
        detail += f": {ev.Message}"
    return _disconnect_for_code(code, detail)


def translate_logged_out(ev: npb.LoggedOut) -> Disconnected:
    # whatsmeow only emits LoggedOut for 401/403/406; an unset reason is the stream-error variant
    # ("device_removed"), which whatsmeow reports as ConnectFailureLoggedOut.
    code = connect_failure_code(ev) or 401
    when = "on connect" if ev.OnConnect else "while connected"
    return Disconnected(DisconnectKind.LOGGED_OUT, f"logged out {when}: {_reason_name(ev)}", code=code)


def translate_temporary_ban(ev: npb.TemporaryBan) -> Disconnected:
    code = TEMP_BAN_CODES.get(ev.Code) if ev.HasField("Code") else None
    reason = _TBR.Name(ev.Code).lower() if ev.HasField("Code") and ev.Code in TEMP_BAN_CODES else "unknown"
    expires_in = float(ev.Expire) if ev.Expire > 0 else None
    return Disconnected(DisconnectKind.TEMPORARY_BAN, f"temporary ban: {reason}", code=code, expires_in=expires_in)


def translate_stream_error(ev: npb.StreamError) -> Disconnected:
    code = int(ev.Code) if ev.Code.isdigit() else None
    if ev.Code == "515":  # whatsmeow normally handles this itself (reconnect after pairing)
        return Disconnected(DisconnectKind.STREAM_RESTART, "stream error 515: restart required", code=515)
    return Disconnected(DisconnectKind.NETWORK, f"stream error {ev.Code or '?'}", code=code)


def translate_keepalive_timeout(ev: npb.KeepAliveTimeout) -> Disconnected:
    return Disconnected(
        DisconnectKind.KEEPALIVE_TIMEOUT,
        f"keepalive timeout: {ev.ErrorCount} failed pings, last success at {ev.LastSuccess}",
    )


def dial_failure(detail: str) -> Disconnected:
    """The client could not reach (or stay connected to) the server at all."""
    return Disconnected(DisconnectKind.NETWORK, detail or "connection ended")


#: goneonize calls its login-status callback with whatsmeow's QR-channel event names.
_LOGIN_STATUS: dict[str, Disconnected] = {
    "timeout": Disconnected(DisconnectKind.LOGGED_OUT, "pairing timed out: every QR code expired unscanned"),
    "err-client-outdated": Disconnected(
        DisconnectKind.CLIENT_OUTDATED, "pairing refused: client outdated", code=CLIENT_OUTDATED_CODE
    ),
    "err-scanned-without-multidevice": Disconnected(
        DisconnectKind.LOGGED_OUT, "pairing failed: QR scanned by a phone without multi-device"
    ),
}


def translate_login_status(status: bytes | str) -> Disconnected | None:
    """A QR-pairing outcome. ``success`` is reported by the PairStatus event, so it maps to None."""
    text = status.decode(errors="replace") if isinstance(status, bytes) else status
    if text == "success":
        return None
    return _LOGIN_STATUS.get(text) or Disconnected(DisconnectKind.NETWORK, f"pairing ended: {text}")


# -- JIDs ------------------------------------------------------------------------------------------


def jid_to_str(jid: npb.JID) -> str:
    """``user@server`` without the device part (the account, not one of its devices)."""
    if jid.User:
        return f"{jid.User}@{jid.Server}"
    return jid.Server


def parse_jid(text: str) -> npb.JID:
    """``4915112345678``, ``+49 151 12345678``, ``user@s.whatsapp.net``, ``user:3@s.whatsapp.net``,
    ``group@g.us`` -> neonize JID (device part dropped)."""
    text = text.strip()
    if "@" in text:
        user, server = text.rsplit("@", 1)
        user = user.split(":", 1)[0].split(".", 1)[0] if server in ("s.whatsapp.net", "lid") else user
    else:
        user, server = "".join(ch for ch in text if ch.isdigit()), "s.whatsapp.net"
    if not user or not server:
        raise ValueError(f"not a WhatsApp address: {text!r}")
    return npb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


# -- QR, pairing, connection -----------------------------------------------------------------------


def translate_qr_code(code: bytes | str) -> QrCode:
    """One code as goneonize's QR callback hands it over (the current code of the rotation)."""
    return QrCode((code.decode() if isinstance(code, bytes) else code,))


def translate_pair_status(ev: npb.PairStatus) -> Event:
    if ev.Status == npb.PairStatus.PStatus.Value("SUCCESS"):
        return Paired(jid_to_str(ev.ID))
    return Disconnected(DisconnectKind.LOGGED_OUT, f"pairing failed: {ev.Error or 'unknown error'}")


# -- messages --------------------------------------------------------------------------------------

_MEDIA_FIELDS = (
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
)
#: Fields that carry no user-visible content: key distribution, protocol (revokes, history-sync
#: notices, app-state keys), context. A message made only of these is not reported at all.
_SILENT_FIELDS = frozenset({"messageContextInfo", "senderKeyDistributionMessage", "protocolMessage",
                            "fastRatchetKeySenderKeyDistributionMessage"})
# ``deviceSentMessage`` wraps what another device of our own account (the phone) sent to a customer.
_WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
             "documentWithCaptionMessage", "deviceSentMessage")
_MEDIA_REF_PREFIX = "neonize:"


def _unwrap(msg: wa.Message) -> wa.Message:
    # whatsmeow already unwraps these; kept for messages that reach us wrapped anyway (e.g. Raw).
    for _ in range(4):
        wrapper = next((f for f in _WRAPPERS if msg.HasField(f) and getattr(msg, f).HasField("message")), None)
        if wrapper is None:
            break
        msg = getattr(msg, wrapper).message
    return msg


def _timestamp(value: int) -> float:
    # MessageInfo.Timestamp is UnixMilli in neonize 0.5; accept seconds too.
    return value / 1000.0 if value > 100_000_000_000 else float(value)


def media_ref(kind: str, media) -> str:
    """An opaque handle from which a download can be rebuilt (see ``media_message_from_ref``)."""
    slim = media.__class__()
    slim.CopyFrom(media)
    for heavy in ("JPEGThumbnail", "jpegThumbnail", "contextInfo", "waveform"):
        if heavy in slim.DESCRIPTOR.fields_by_name:
            slim.ClearField(heavy)
    payload = base64.urlsafe_b64encode(slim.SerializeToString()).decode().rstrip("=")
    return f"{_MEDIA_REF_PREFIX}{kind}:{payload}"


def media_message_from_ref(ref: str) -> wa.Message:
    """The ``waE2E.Message`` holding the media a ``media_ref`` points at (for neonize's download)."""
    if not ref.startswith(_MEDIA_REF_PREFIX):
        raise ValueError("not a neonize media reference")
    kind, _, payload = ref[len(_MEDIA_REF_PREFIX):].partition(":")
    field = {k: f for f, k in _MEDIA_FIELDS}.get(kind)
    if field is None:
        raise ValueError(f"unknown media kind {kind!r}")
    msg = wa.Message()
    getattr(msg, field).ParseFromString(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return msg


def _quoted_id(media_or_text) -> str | None:
    if media_or_text.HasField("contextInfo") and media_or_text.contextInfo.stanzaID:
        return media_or_text.contextInfo.stanzaID
    return None


def translate_message(ev: npb.Message, own_jid: str | None = None) -> MessageReceived | None:
    """A message in one of the account's chats; None for what means nothing to a bot or carries no
    content.

    A customer's message becomes ``MessageReceived``. A message this account wrote on another of its
    devices (the paired phone) to someone else becomes ``MessageReceived(from_me=True)`` with
    ``chat`` the customer and ``sender`` our own jid: the owner answering by hand, which the pipeline
    stores as an outgoing message and takes as a reason to hold off (the echo of a message the
    platform sent itself, if the network delivers one, has that message's id and is recognised
    there). Of our own messages only text and media count as writing to the customer; our
    reactions, edits, content kinds the platform does not model and notes in the chat with our own
    number ("message yourself", recognised by our jid or ``own_jid``) are dropped.

    Skipped for everyone: status broadcasts and messages made only of key-distribution/protocol
    parts. A customer's edits and content kinds not listed in ``MessageReceived.kind`` are reported
    as ``unsupported``.
    """
    info = ev.Info
    source = info.MessageSource
    chat = jid_to_str(source.Chat)
    if chat == "status@broadcast":
        return None
    sender = jid_to_str(source.Sender)
    if source.IsFromMe and chat in {sender, jid_to_str(source.SenderAlt), own_jid} - {""}:
        return None  # a note to ourselves: there is no customer in this chat
    msg = _unwrap(ev.Message if ev.HasField("Message") else ev.Raw)
    base = dict(
        message_id=info.ID,
        chat=chat,
        sender=sender,
        timestamp=_timestamp(info.Timestamp),
        from_me=bool(source.IsFromMe),
    )
    present = {field.name for field, _ in msg.ListFields()}
    if not present - _SILENT_FIELDS:
        return None
    if ev.IsEdit:
        return None if source.IsFromMe else MessageReceived(**base, kind="unsupported")
    content = _content(msg, base)
    if content is not None or source.IsFromMe:
        return content  # of our own messages only text and media: the owner writing to the customer
    if msg.HasField("reactionMessage"):
        reaction = msg.reactionMessage
        # An empty text means the sender removed their reaction.
        return MessageReceived(**base, kind="reaction", text=reaction.text, quoted_id=reaction.key.ID or None)
    return MessageReceived(**base, kind="unsupported")


def _content(msg: wa.Message, base: dict) -> MessageReceived | None:
    """Text or media, the kinds a person writes to be read; None for anything else."""
    if msg.conversation:
        return MessageReceived(**base, kind="text", text=msg.conversation)
    if msg.HasField("extendedTextMessage"):
        ext = msg.extendedTextMessage
        return MessageReceived(**base, kind="text", text=ext.text, quoted_id=_quoted_id(ext))
    for field, kind in _MEDIA_FIELDS:
        if msg.HasField(field):
            media = getattr(msg, field)
            caption = getattr(media, "caption", "") or ""
            return MessageReceived(
                **base,
                kind=kind,
                caption=caption,
                mime_type=media.mimetype,
                quoted_id=_quoted_id(media),
                media_ref=media_ref(kind, media),
            )
    return None


_RT = npb.Receipt.ReceiptType
_RECEIPT_STATUS: dict[int, str] = {
    _RT.Value("DELIVERED"): "delivered",
    _RT.Value("INACTIVE"): "delivered",  # delivered to a device that is not in the foreground
    _RT.Value("READ"): "read",
    _RT.Value("PLAYED"): "played",
}


def translate_receipt(ev: npb.Receipt) -> Receipt | None:
    """Receipts for messages we sent; own-device, retry, sender and history receipts are ignored."""
    status = _RECEIPT_STATUS.get(ev.Type) if ev.HasField("Type") else None
    if status is None or not ev.MessageIDs:
        return None
    return Receipt(message_ids=tuple(ev.MessageIDs), chat=jid_to_str(ev.MessageSource.Chat), status=status)


# -- dispatch --------------------------------------------------------------------------------------


def translate(ev, *, own_jid: str | None = None) -> Event | None:
    """Any neonize event protobuf -> domain event, or None when it means nothing to a session."""
    if isinstance(ev, npb.Message):
        return translate_message(ev, own_jid)
    if isinstance(ev, npb.Receipt):
        return translate_receipt(ev)
    if isinstance(ev, npb.Connected):
        return Connected(jid=own_jid)
    if isinstance(ev, npb.Disconnected):
        return dial_failure("websocket closed by the server")
    if isinstance(ev, npb.KeepAliveTimeout):
        return translate_keepalive_timeout(ev)
    if isinstance(ev, npb.ConnectFailure):
        return translate_connect_failure(ev)
    if isinstance(ev, npb.LoggedOut):
        return translate_logged_out(ev)
    if isinstance(ev, npb.StreamReplaced):
        return Disconnected(DisconnectKind.REPLACED, "stream replaced: another client took the session")
    if isinstance(ev, npb.TemporaryBan):
        return translate_temporary_ban(ev)
    if isinstance(ev, npb.ClientOutdated):
        return Disconnected(DisconnectKind.CLIENT_OUTDATED, "client outdated", code=CLIENT_OUTDATED_CODE)
    if isinstance(ev, npb.StreamError):
        return translate_stream_error(ev)
    if isinstance(ev, npb.QR):
        return QrCode(tuple(ev.Codes)) if ev.Codes else None
    if isinstance(ev, npb.PairStatus):
        return translate_pair_status(ev)
    return None  # KeepAliveRestored, presence, history sync, ... : nothing a session acts on

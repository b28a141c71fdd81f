"""neonize event protobufs (the real message types of the installed neonize) -> domain events.

Every native event goes through SerializeToString/FromString first, as it does on its way from Go.
"""

from __future__ import annotations

import pytest
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa

from transports import neonize_translate as tr
from transports.events import (
    Connected,
    Disconnected,
    DisconnectKind,
    MessageReceived,
    Paired,
    QrCode,
    Receipt,
)

CFR = npb.ConnectFailureReason
TBR = npb.TemporaryBan.TempBanReason
K = DisconnectKind


def wire(message):
    """As it arrives from Go: serialized (all of neonize's proto2 required fields set), parsed again."""
    return type(message).FromString(message.SerializeToString())


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> npb.JID:
    return npb.JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=not user)


NO_JID = jid("", "")


def node(tag: str) -> npb.Node:
    return npb.Node(Tag=tag)


def failure(reason: str, message: str = "") -> npb.ConnectFailure:
    return npb.ConnectFailure(Reason=CFR.Value(reason), Message=message, Raw=node("failure"))


def logged_out(reason: str, on_connect: bool) -> npb.LoggedOut:
    return npb.LoggedOut(OnConnect=on_connect, Reason=CFR.Value(reason))


def ban(reason: str, expire: int) -> npb.TemporaryBan:
    return npb.TemporaryBan(Code=TBR.Value(reason), Expire=expire)


def stream_error(code: str) -> npb.StreamError:
    return npb.StreamError(Code=code, Raw=node("stream:error"))


def source(chat: npb.JID, sender: npb.JID, from_me: bool = False) -> npb.MessageSource:
    return npb.MessageSource(
        Chat=chat, Sender=sender, IsFromMe=from_me, IsGroup=chat.Server == "g.us",
        SenderAlt=NO_JID, RecipientAlt=NO_JID, BroadcastListOwner=NO_JID,
    )


DISCONNECTS = [
    # (native event, kind, code, expires_in)
    (failure("GENERIC", "bad request"), K.CONNECT_FAILURE, 400, None),
    (failure("LOGGED_OUT"), K.LOGGED_OUT, 401, None),
    (failure("TEMP_BANNED"), K.TEMPORARY_BAN, 402, None),
    (failure("MAIN_DEVICE_GONE"), K.LOGGED_OUT, 403, None),
    (failure("CLIENT_OUTDATED"), K.CLIENT_OUTDATED, 405, None),
    (failure("UNKNOWN_LOGOUT"), K.LOGGED_OUT, 406, None),
    (failure("BAD_USER_AGENT"), K.CONNECT_FAILURE, 409, None),
    (failure("INTERNAL_SERVER_ERROR"), K.CONNECT_FAILURE, 500, None),
    (failure("EXPERIMENTAL"), K.CONNECT_FAILURE, 501, None),
    (failure("SERVICE_UNAVAILABLE"), K.CONNECT_FAILURE, 503, None),
    (logged_out("LOGGED_OUT", on_connect=True), K.LOGGED_OUT, 401, None),
    (logged_out("MAIN_DEVICE_GONE", on_connect=False), K.LOGGED_OUT, 403, None),
    (logged_out("UNKNOWN_LOGOUT", on_connect=True), K.LOGGED_OUT, 406, None),
    (ban("SEND_TO_TOO_MANY_PEOPLE", 3600), K.TEMPORARY_BAN, 101, 3600.0),
    (ban("BLOCKED_BY_USERS", 86400), K.TEMPORARY_BAN, 102, 86400.0),
    (ban("CREATED_TOO_MANY_GROUPS", 60), K.TEMPORARY_BAN, 103, 60.0),
    (ban("SENT_TOO_MANY_SAME_MESSAGE", 1), K.TEMPORARY_BAN, 104, 1.0),
    (ban("BROADCAST_LIST", 7200), K.TEMPORARY_BAN, 106, 7200.0),
    (ban("BLOCKED_BY_USERS", 0), K.TEMPORARY_BAN, 102, None),  # whatsmeow: 0 means no expiry given
    (npb.StreamReplaced(), K.REPLACED, None, None),
    (npb.ClientOutdated(), K.CLIENT_OUTDATED, 405, None),
    (npb.KeepAliveTimeout(ErrorCount=3, LastSuccess=1_700_000_000), K.KEEPALIVE_TIMEOUT, None, None),
    (npb.Disconnected(status=True), K.NETWORK, None, None),
    (stream_error("503"), K.NETWORK, 503, None),
    (stream_error("515"), K.STREAM_RESTART, 515, None),
    (stream_error("conflict"), K.NETWORK, None, None),
]


@pytest.mark.parametrize(
    "native, kind, code, expires_in",
    DISCONNECTS,
    ids=[f"{type(n).__name__}-{k.value}-{c}" for n, k, c, _ in DISCONNECTS],
)
def test_native_disconnect_events_are_classified_with_whatsmeow_codes(native, kind, code, expires_in):
    event = tr.translate(wire(native))
    assert isinstance(event, Disconnected)
    assert (event.kind, event.code, event.expires_in) == (kind, code, expires_in)
    assert event.detail


def test_a_failure_whose_reason_neonize_cannot_name_keeps_its_kind_without_a_code():
    # whatsmeow codes 413/414/415/418 have no neonize enum value; goneonize leaves the required field
    # unset (its marshal then fails and Neonize() returns that error). Parsed partially, it stays a
    # connect failure without a code, and a LoggedOut without reason is whatsmeow's 401.
    partial = npb.ConnectFailure(Message="cat expired", Raw=node("failure"))
    event = tr.translate(npb.ConnectFailure.FromString(partial.SerializePartialToString()))
    assert (event.kind, event.code) == (K.CONNECT_FAILURE, None)
    reasonless = tr.translate(npb.LoggedOut(OnConnect=False))
    assert (reasonless.kind, reasonless.code) == (K.LOGGED_OUT, 401)


def test_every_connect_failure_reason_of_the_installed_neonize_has_a_whatsmeow_code():
    assert set(tr.CONNECT_FAILURE_CODES) == set(CFR.values())
    assert set(tr.TEMP_BAN_CODES) == set(TBR.values())


def test_connected_carries_the_jid_of_the_own_device():
    assert tr.translate(wire(npb.Connected(status=True)), own_jid="4911@s.whatsapp.net") == Connected(
        jid="4911@s.whatsapp.net"
    )


def test_qr_codes_pair_status_and_login_status_become_pairing_events():
    assert tr.translate_qr_code(b"2@abc,def") == QrCode(("2@abc,def",))
    assert tr.translate(wire(npb.QR(Codes=["2@a", "2@b"]))) == QrCode(("2@a", "2@b"))
    status = npb.PairStatus.PStatus
    success = npb.PairStatus(ID=jid("4911", device=7), BusinessName="", Platform="android", Status=status.SUCCESS)
    assert tr.translate(wire(success)) == Paired("4911@s.whatsapp.net")
    error = npb.PairStatus(ID=NO_JID, BusinessName="", Platform="", Status=status.ERROR, Error="bad")
    failed = tr.translate(wire(error))
    assert isinstance(failed, Disconnected) and failed.kind is K.LOGGED_OUT and "bad" in failed.detail
    assert tr.translate_login_status(b"success") is None
    assert tr.translate_login_status(b"timeout").kind is K.LOGGED_OUT
    assert tr.translate_login_status(b"err-client-outdated").kind is K.CLIENT_OUTDATED
    assert tr.translate_login_status(b"err-unexpected-state").kind is K.NETWORK


def test_a_failed_dial_is_a_network_disconnect():
    event = tr.dial_failure("failed to dial whatsapp web websocket")
    assert event == Disconnected(K.NETWORK, "failed to dial whatsapp web websocket")


OWN = jid("4930555000111", device=0)  # the bot's own account (its paired phone is device 0)


def message_event(content: wa.Message, *, from_me=False, chat=None, edit=False, sender=None) -> npb.Message:
    info = npb.MessageInfo(
        MessageSource=source(chat or jid("4915112345678"), sender or jid("4915112345678", device=3), from_me),
        ID="3EB0ABC", ServerID=0, Type="text", Pushname="Ann", Timestamp=1_700_000_000_250,  # UnixMilli
        Category="", Multicast=False, MediaType="", Edit="",
    )
    return wire(npb.Message(
        Info=info, Message=content, IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False,
        IsViewOnceV2Extension=False, IsDocumentWithCaption=False, IsLottieSticker=False, IsEdit=edit,
        UnavailableRequestID="", RetryCount=0,
    ))


def test_a_text_message_becomes_message_received_with_seconds_timestamp():
    event = tr.translate(message_event(wa.Message(conversation="hello")))
    assert event == MessageReceived(
        message_id="3EB0ABC",
        chat="4915112345678@s.whatsapp.net",
        sender="4915112345678@s.whatsapp.net",
        timestamp=1_700_000_000.25,
        kind="text",
        text="hello",
    )


def test_a_reply_carries_the_quoted_message_id():
    content = wa.Message(
        extendedTextMessage=wa.ExtendedTextMessage(
            text="yes", contextInfo=wa.ContextInfo(stanzaID="3EB0QUOTED", participant="49@s.whatsapp.net")
        )
    )
    event = tr.translate(message_event(content))
    assert (event.kind, event.text, event.quoted_id) == ("text", "yes", "3EB0QUOTED")


def test_an_image_with_caption_carries_caption_mime_type_and_a_media_reference():
    image = wa.ImageMessage(
        caption="look", mimetype="image/jpeg", directPath="/v/t62/abc", mediaKey=b"k" * 32,
        JPEGThumbnail=b"\xff" * 2000, fileLength=12345,
    )
    event = tr.translate(message_event(wa.Message(imageMessage=image)))
    assert (event.kind, event.caption, event.mime_type, event.text) == ("image", "look", "image/jpeg", "")
    rebuilt = tr.media_message_from_ref(event.media_ref)
    assert rebuilt.imageMessage.directPath == "/v/t62/abc"
    assert rebuilt.imageMessage.mediaKey == b"k" * 32
    assert not rebuilt.imageMessage.JPEGThumbnail  # the thumbnail is not carried around


@pytest.mark.parametrize(
    "field, media, kind",
    [
        ("audioMessage", wa.AudioMessage(mimetype="audio/ogg; codecs=opus", PTT=True), "audio"),
        ("videoMessage", wa.VideoMessage(mimetype="video/mp4", caption="clip"), "video"),
        ("documentMessage", wa.DocumentMessage(mimetype="application/pdf", fileName="a.pdf", caption="doc"),
         "document"),
        ("stickerMessage", wa.StickerMessage(mimetype="image/webp"), "sticker"),
    ],
)
def test_other_media_kinds_keep_their_kind_and_mime_type(field, media, kind):
    event = tr.translate(message_event(wa.Message(**{field: media})))
    assert (event.kind, event.mime_type, event.caption) == (kind, media.mimetype, getattr(media, "caption", ""))
    assert event.media_ref.startswith(f"neonize:{kind}:")


def test_a_reaction_names_the_emoji_and_the_message_it_reacts_to():
    content = wa.Message(
        reactionMessage=wa.ReactionMessage(
            key=MessageKey(remoteJID="4915112345678@s.whatsapp.net", fromMe=True, ID="3EB0MINE"), text="👍"
        )
    )
    event = tr.translate(message_event(content))
    assert (event.kind, event.text, event.quoted_id) == ("reaction", "👍", "3EB0MINE")


def test_content_without_a_domain_kind_is_unsupported():
    content = wa.Message(locationMessage=wa.LocationMessage(degreesLatitude=52.5, degreesLongitude=13.4))
    assert tr.translate(message_event(content)).kind == "unsupported"
    assert tr.translate(message_event(wa.Message(conversation="fixed"), edit=True)).kind == "unsupported"


def test_status_broadcasts_and_protocol_only_messages_are_not_reported():
    status = message_event(wa.Message(conversation="story"), chat=jid("status", "broadcast"))
    assert tr.translate(status) is None
    protocol = wa.Message(protocolMessage=wa.ProtocolMessage(type=wa.ProtocolMessage.REVOKE))
    assert tr.translate(message_event(protocol)) is None


def own(content: wa.Message, **kwargs) -> npb.Message:
    """What the owner wrote on the paired phone, as it reaches the bot's linked device."""
    return message_event(content, from_me=True, sender=OWN, **kwargs)


def test_a_text_the_owner_wrote_to_a_customer_from_the_phone_is_reported_as_from_me():
    event = tr.translate(own(wa.Message(conversation="I'll call you at five")), own_jid="4930555000111@s.whatsapp.net")
    assert event == MessageReceived(
        message_id="3EB0ABC",
        chat="4915112345678@s.whatsapp.net",  # the customer
        sender="4930555000111@s.whatsapp.net",  # our own account
        timestamp=1_700_000_000.25,
        kind="text",
        text="I'll call you at five",
        from_me=True,
    )
    reply = wa.Message(extendedTextMessage=wa.ExtendedTextMessage(
        text="yes", contextInfo=wa.ContextInfo(stanzaID="3EB0QUOTED")))
    assert (tr.translate(own(reply)).text, tr.translate(own(reply)).quoted_id) == ("yes", "3EB0QUOTED")
    assert tr.translate(message_event(wa.Message(conversation="hi"))).from_me is False


def test_media_the_owner_sent_from_the_phone_keeps_its_kind_caption_and_reference():
    image = wa.ImageMessage(caption="our menu", mimetype="image/jpeg", directPath="/v/t62/x", mediaKey=b"k" * 32)
    event = tr.translate(own(wa.Message(imageMessage=image)))
    assert (event.kind, event.caption, event.mime_type, event.from_me) == ("image", "our menu", "image/jpeg", True)
    assert event.media_ref.startswith("neonize:image:")


def test_a_message_from_the_phone_still_wrapped_for_our_own_devices_is_unwrapped():
    # whatsmeow unwraps deviceSentMessage itself; a message that reaches us wrapped anyway is the same.
    wrapped = wa.Message(deviceSentMessage=wa.DeviceSentMessage(
        destinationJID="4915112345678@s.whatsapp.net", message=wa.Message(conversation="on my way")))
    event = tr.translate(own(wrapped))
    assert (event.kind, event.text, event.from_me) == ("text", "on my way", True)


def test_own_reactions_edits_other_content_and_notes_to_ourselves_are_not_reported():
    reaction = wa.Message(reactionMessage=wa.ReactionMessage(
        key=MessageKey(remoteJID="4915112345678@s.whatsapp.net", fromMe=False, ID="3EB0THEIRS"), text="👍"))
    assert tr.translate(own(reaction)) is None
    assert tr.translate(own(wa.Message(conversation="fixed"), edit=True)) is None
    location = wa.Message(locationMessage=wa.LocationMessage(degreesLatitude=52.5, degreesLongitude=13.4))
    assert tr.translate(own(location)) is None
    protocol = wa.Message(protocolMessage=wa.ProtocolMessage(type=wa.ProtocolMessage.REVOKE))
    assert tr.translate(own(protocol)) is None
    assert tr.translate(own(wa.Message(conversation="story"), chat=jid("status", "broadcast"))) is None
    # "Message yourself": the chat is our own number, from the phone or from another linked device.
    note = wa.Message(conversation="buy milk")
    assert tr.translate(own(note, chat=jid("4930555000111"))) is None
    other_device = message_event(note, from_me=True, chat=jid("4930555000111"), sender=jid("4930555000111", device=4))
    assert tr.translate(other_device) is None
    lid_sender = message_event(note, from_me=True, chat=jid("4930555000111"), sender=jid("98765", "lid"))
    assert tr.translate(lid_sender, own_jid="4930555000111@s.whatsapp.net") is None


def test_delivery_read_and_played_receipts_become_receipts_and_own_device_receipts_are_ignored():
    rt = npb.Receipt.ReceiptType
    chat = source(jid("4915112345678"), jid("4915112345678"))

    def receipt(name: str, ids=("A",)) -> npb.Receipt:
        return wire(npb.Receipt(MessageSource=chat, MessageIDs=list(ids), Timestamp=1_700_000_000, Type=rt.Value(name)))

    assert tr.translate(receipt("READ", ("A", "B"))) == Receipt(("A", "B"), "4915112345678@s.whatsapp.net", "read")
    assert tr.translate(receipt("DELIVERED")).status == "delivered"
    assert tr.translate(receipt("PLAYED")).status == "played"
    for name in ("READ_SELF", "SENDER", "RETRY", "SERVER_ERROR", "HISTORY_SYNC"):
        assert tr.translate(receipt(name)) is None


def test_addresses_parse_into_jids_without_device():
    assert tr.jid_to_str(tr.parse_jid("+49 151 1234-5678")) == "4915112345678@s.whatsapp.net"
    assert tr.jid_to_str(tr.parse_jid("4915112345678:12@s.whatsapp.net")) == "4915112345678@s.whatsapp.net"
    assert tr.jid_to_str(tr.parse_jid("120363012345@g.us")) == "120363012345@g.us"
    with pytest.raises(ValueError):
        tr.parse_jid("no digits here")


def test_events_a_session_does_not_act_on_translate_to_nothing():
    assert tr.translate(wire(npb.KeepAliveRestored())) is None

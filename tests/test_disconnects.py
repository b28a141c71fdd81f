"""How each way a connection can end is classified, table-driven over every DisconnectKind and codes."""

import pytest

from sansio.disconnects import Action, classify
from transports.events import Disconnected
from transports.events import DisconnectKind as K

# (kind, code, expires_in) -> (action, state, resume_in)
TABLE = [
    ((K.STREAM_RESTART, None, None), (Action.RECONNECT_NOW, "starting", None)),
    ((K.NETWORK, None, None), (Action.BACK_OFF, "backing_off", None)),
    ((K.KEEPALIVE_TIMEOUT, None, None), (Action.BACK_OFF, "backing_off", None)),
    ((K.CONNECT_FAILURE, 500, None), (Action.BACK_OFF, "backing_off", None)),
    ((K.CONNECT_FAILURE, 501, None), (Action.BACK_OFF, "backing_off", None)),
    ((K.CONNECT_FAILURE, 503, None), (Action.BACK_OFF, "backing_off", None)),
    ((K.CONNECT_FAILURE, 599, None), (Action.BACK_OFF, "backing_off", None)),
    ((K.CONNECT_FAILURE, 401, None), (Action.WAIT_FOR_USER, "logged_out", None)),
    ((K.CONNECT_FAILURE, 403, None), (Action.WAIT_FOR_USER, "logged_out", None)),
    ((K.CONNECT_FAILURE, 406, None), (Action.WAIT_FOR_USER, "logged_out", None)),
    ((K.CONNECT_FAILURE, 405, None), (Action.WAIT_FOR_USER, "client_outdated", None)),
    ((K.CONNECT_FAILURE, 402, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CONNECT_FAILURE, 409, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CONNECT_FAILURE, 413, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CONNECT_FAILURE, 418, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CONNECT_FAILURE, 499, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CONNECT_FAILURE, 600, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CONNECT_FAILURE, None, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.LOGGED_OUT, 401, None), (Action.WAIT_FOR_USER, "logged_out", None)),
    ((K.LOGGED_OUT, None, None), (Action.WAIT_FOR_USER, "logged_out", None)),
    ((K.REPLACED, None, None), (Action.WAIT_FOR_USER, "replaced", None)),
    ((K.CLIENT_OUTDATED, None, None), (Action.WAIT_FOR_USER, "client_outdated", None)),
    ((K.TEMPORARY_BAN, 101, 3600.0), (Action.WAIT_UNTIL, "temporarily_banned", 3600.0)),
    ((K.TEMPORARY_BAN, None, 0.0), (Action.WAIT_UNTIL, "temporarily_banned", 0.0)),
    ((K.TEMPORARY_BAN, 101, None), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.TEMPORARY_BAN, 101, -5.0), (Action.WAIT_FOR_USER, "failed", None)),
    ((K.CLOSED, None, None), (Action.NONE, "", None)),
    ((K.ADDRESS_REFUSED, None, None), (Action.WAIT_FOR_USER, "failed", None)),
]


def test_the_table_covers_every_disconnect_kind():
    assert {kind for (kind, _, _), _ in TABLE} == set(K)


@pytest.mark.parametrize(
    ("given", "expected"), TABLE, ids=[f"{k.value}-{c}-{e}" for (k, c, e), _ in TABLE]
)
def test_each_disconnect_is_classified_as_whatsmeow_defines_it(given, expected):
    kind, code, expires_in = given
    decision = classify(Disconnected(kind, code=code, expires_in=expires_in))
    assert (decision.action, decision.state, decision.resume_in) == expected


def test_the_reason_names_the_code_and_the_detail():
    decision = classify(Disconnected(K.CONNECT_FAILURE, detail="login refused", code=403))
    assert decision.reason == "connect failure (403 main device gone): login refused"


def test_the_reason_keeps_an_unnamed_code_as_a_number():
    assert classify(Disconnected(K.CONNECT_FAILURE, code=599)).reason == "connect failure (599)"

"""The bots API over HTTP, against the real embedded PostgreSQL: CRUD, validation, recorded intent,
tenant isolation, the pairing QR code and the pair-code round trip with a fake supervisor."""

import uuid
import xml.etree.ElementTree as ET

import gevent
import pytest
import requests

import web.bots as web_bots
from tests.waiting import wait_until

QR_PAYLOAD = "2@AbCdEfGhIjKlMnOp,QrStUvWxYz0123456789+/=,aGVsbG8gd29ybGQ=,ZmFrZS1rZXk="
INJECTIONS = ["'; DROP TABLE bots; --", "x' OR '1'='1", "1); DELETE FROM tenants; --", "\\'; SELECT pg_sleep(5); --"]




def _bot(client, name="support", **options):
    body = {"name": name}
    if options:
        body["transport_options"] = options
    response = client.post("/bots", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _row(pool, tenant_id, bot_id, columns):
    return pool.query(tenant_id, f"SELECT {columns} FROM bots WHERE id = %s", (bot_id,))[0]


def _error(response, status, field=None, code="invalid_input"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    return error


# -- create, list, get, delete ---------------------------------------------------------------------


def test_a_created_bot_is_returned_listed_and_readable_with_its_session_fields(alice):
    bot = _bot(alice, "Support", proxy="socks5://user:pw@93.184.215.14:1080", phone="+49 151-2345 6789")
    assert bot["name"] == "Support"
    assert bot["transport_options"] == {"proxy": "socks5://user:pw@93.184.215.14:1080", "phone": "4915123456789"}
    assert bot["desired_state"] == "stopped"
    uuid.UUID(bot["id"])

    listed = alice.get("/bots").json()["bots"]
    assert [b["id"] for b in listed] == [bot["id"]]

    got = alice.get(f"/bots/{bot['id']}")
    assert got.status_code == 200
    body = got.json()
    for key in ("state", "reason", "attempt", "next_retry_at", "banned_until", "desired_state", "paired", "jid",
                "has_qr", "supervisor"):
        assert key in body
    assert (body["state"], body["paired"], body["has_qr"], body["supervisor"]) == ("stopped", False, False, None)


def test_auto_start_creates_the_bot_with_desired_state_running(alice, pool):
    bot = _bot(alice, auto_start=True)
    assert bot["desired_state"] == "running"
    assert bot["transport_options"] == {"auto_start": True}
    assert _row(pool, alice.tenant_id, bot["id"], "desired_state")[0] == "running"


def test_deleting_a_bot_answers_204_and_then_it_is_gone(alice):
    bot = _bot(alice)
    assert alice.delete(f"/bots/{bot['id']}").status_code == 204
    assert alice.get(f"/bots/{bot['id']}").status_code == 404
    assert alice.delete(f"/bots/{bot['id']}").status_code == 404
    assert alice.get("/bots").json() == {"bots": []}


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field, reason",
    [
        ({}, "name", "required"),
        ({"name": ""}, "name", "empty"),
        ({"name": "   "}, "name", "empty"),
        ({"name": "x" * 201}, "name", "at most 200"),
        ({"name": 42}, "name", "string"),
        ({"name": ["a"]}, "name", "string"),
        ({"name": "ok", "nmae": "typo"}, "nmae", "unknown"),
        ({"name": "ok", "transport_options": "proxy"}, "transport_options", "object"),
        ({"name": "ok", "transport_options": {"socks": "x"}}, "transport_options.socks", "socks"),
        ({"name": "ok", "transport_options": {"proxy": 5}}, "transport_options.proxy", "string"),
        ({"name": "ok", "transport_options": {"proxy": "ftp://h:21"}}, "transport_options.proxy", "scheme"),
        ({"name": "ok", "transport_options": {"proxy": "93.184.215.14:1080"}}, "transport_options.proxy", ""),
        ({"name": "ok", "transport_options": {"proxy": "http://"}}, "transport_options.proxy", "host"),
        ({"name": "ok", "transport_options": {"proxy": "http://h:99999"}}, "transport_options.proxy", "proxy URL"),
        ({"name": "ok", "transport_options": {"proxy": "http://h/a b"}}, "transport_options.proxy", "spaces"),
        ({"name": "ok", "transport_options": {"proxy": "http://h:8080/path"}}, "transport_options.proxy", "path"),
        ({"name": "ok", "transport_options": {"proxy": "http://" + "h" * 500}}, "transport_options.proxy", "500"),
        ({"name": "ok", "transport_options": {"phone": "1234567"}}, "transport_options.phone", "8 to 15"),
        ({"name": "ok", "transport_options": {"phone": "1" * 16}}, "transport_options.phone", "8 to 15"),
        ({"name": "ok", "transport_options": {"phone": "4915x234567"}}, "transport_options.phone", "digits"),
        ({"name": "ok", "transport_options": {"phone": 4915123456789}}, "transport_options.phone", "string"),
        ({"name": "ok", "transport_options": {"auto_start": "yes"}}, "transport_options.auto_start", "true or false"),
        ({"name": "ok", "transport_options": {"auto_start": 1}}, "transport_options.auto_start", "true or false"),
    ],
)
def test_invalid_bot_input_is_rejected_with_400_naming_the_field_and_reason(alice, body, field, reason):
    error = _error(alice.post("/bots", json=body), 400, field)
    assert reason in error["message"]
    assert alice.get("/bots").json() == {"bots": []}


def test_a_body_that_is_not_a_json_object_is_rejected(alice):
    _error(alice.post("/bots", data="[1]", headers={"Content-Type": "application/json"}), 400, code="invalid_json")


# -- intent ----------------------------------------------------------------------------------------


def test_start_stop_restart_and_logout_record_desired_state_and_commands(alice, pool):
    bot_id = _bot(alice)["id"]

    def act(action):
        response = alice.post(f"/bots/{bot_id}/{action}")
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == action
        assert response.json()["bot"]["id"] == bot_id
        return response.json()["bot"], _row(pool, alice.tenant_id, bot_id, "desired_state, command, command_seq")

    bot, row = act("start")
    assert bot["desired_state"] == "running" and row == ("running", None, 0)
    bot, row = act("stop")
    assert bot["desired_state"] == "stopped" and row == ("stopped", None, 0)
    bot, row = act("restart")
    assert bot["desired_state"] == "running" and row == ("running", "restart", 1)
    bot, row = act("logout")
    assert bot["desired_state"] == "stopped" and row == ("stopped", "logout", 2)
    assert alice.post(f"/bots/{bot_id}/explode").status_code == 404


# -- isolation and ids -----------------------------------------------------------------------------


def _every_endpoint(bot_id):
    return [
        ("get", f"/bots/{bot_id}", None),
        ("delete", f"/bots/{bot_id}", None),
        ("post", f"/bots/{bot_id}/start", None),
        ("post", f"/bots/{bot_id}/stop", None),
        ("post", f"/bots/{bot_id}/restart", None),
        ("post", f"/bots/{bot_id}/logout", None),
        ("get", f"/bots/{bot_id}/qr", None),
        ("get", f"/bots/{bot_id}/qr?format=svg", None),
        ("post", f"/bots/{bot_id}/pair-code", {"phone": "4915123456789"}),
    ]


def test_another_tenant_gets_404_on_every_endpoint_and_changes_nothing(alice, mallory, pool, monkeypatch):
    monkeypatch.setattr(web_bots, "PAIR_CODE_TIMEOUT", 0.3)
    bot_id = _bot(alice)["id"]
    pool.execute(alice.tenant_id, "UPDATE bots SET qr_code = %s, qr_updated_at = now() WHERE id = %s",
                 (QR_PAYLOAD, bot_id))
    before = _row(pool, alice.tenant_id, bot_id, "desired_state, command_seq, pair_seq, pair_phone")
    for method, path, body in _every_endpoint(bot_id):
        response = getattr(mallory, method)(path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert mallory.get("/bots").json() == {"bots": []}
    assert _row(pool, alice.tenant_id, bot_id, "desired_state, command_seq, pair_seq, pair_phone") == before
    assert alice.get(f"/bots/{bot_id}").status_code == 200


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1", "' OR 1=1 --", str(uuid.uuid4())])
def test_a_malformed_or_unknown_bot_id_is_404_everywhere(alice, bad_id, monkeypatch):
    monkeypatch.setattr(web_bots, "PAIR_CODE_TIMEOUT", 0.3)
    for method, path, body in _every_endpoint(requests.utils.quote(bad_id, safe="")):
        response = getattr(alice, method)(path, json=body)
        assert response.status_code == 404, (method, path, response.text)


def test_requests_without_a_valid_api_key_are_401(web):
    assert requests.get(web.url + "/api/v1/bots", timeout=5).status_code == 401
    response = requests.post(web.url + "/api/v1/bots", json={"name": "x"}, timeout=5,
                             headers={"Authorization": "Bearer wbk_nope"})
    assert response.status_code == 401


# -- QR --------------------------------------------------------------------------------------------


def test_a_bot_without_a_qr_code_answers_404_no_qr_saying_why(alice, pool):
    bot_id = _bot(alice)["id"]
    error = _error(alice.get(f"/bots/{bot_id}/qr"), 404, code="no_qr")
    assert "not started" in error["message"]

    alice.post(f"/bots/{bot_id}/start")
    error = _error(alice.get(f"/bots/{bot_id}/qr"), 404, code="no_qr")
    assert "issued yet" in error["message"]
    assert "no supervisor" in error["message"]

    pool.execute(alice.tenant_id, "UPDATE bots SET paired = true, qr_code = %s WHERE id = %s", (QR_PAYLOAD, bot_id))
    error = _error(alice.get(f"/bots/{bot_id}/qr"), 404, code="no_qr")
    assert "already paired" in error["message"]


def test_a_current_qr_code_is_served_as_json_svg_and_text(alice, pool):
    bot_id = _bot(alice, auto_start=True)["id"]
    pool.execute(alice.tenant_id, "UPDATE bots SET qr_code = %s, qr_updated_at = now() WHERE id = %s",
                 (QR_PAYLOAD, bot_id))
    assert alice.get(f"/bots/{bot_id}").json()["has_qr"] is True

    as_json = alice.get(f"/bots/{bot_id}/qr")
    assert as_json.status_code == 200
    assert as_json.headers["Cache-Control"] == "no-store"
    body = as_json.json()
    assert body["qr"] == QR_PAYLOAD and body["issued_at"]
    assert ET.fromstring(body["svg"]).tag.endswith("svg")

    as_svg = alice.get(f"/bots/{bot_id}/qr?format=svg")
    assert as_svg.status_code == 200
    assert as_svg.headers["Content-Type"].startswith("image/svg+xml")
    assert ET.fromstring(as_svg.content).tag.endswith("svg")

    as_text = alice.get(f"/bots/{bot_id}/qr?format=text")
    assert as_text.status_code == 200
    assert as_text.headers["Content-Type"].startswith("text/plain")
    assert as_text.text == QR_PAYLOAD

    _error(alice.get(f"/bots/{bot_id}/qr?format=png"), 400, "format")


def test_the_qr_code_a_stopped_session_left_on_the_row_is_not_served(alice, pool):
    bot_id = _bot(alice, auto_start=True)["id"]
    pool.execute(alice.tenant_id, "UPDATE bots SET qr_code = %s, qr_updated_at = now() WHERE id = %s",
                 (QR_PAYLOAD, bot_id))
    assert alice.get(f"/bots/{bot_id}/qr").status_code == 200
    alice.post(f"/bots/{bot_id}/stop")
    error = _error(alice.get(f"/bots/{bot_id}/qr?format=text"), 404, code="no_qr")
    assert "not started" in error["message"]


# -- pair code -------------------------------------------------------------------------------------


def _answer_pair_request(pool, tenant_id, bot_id, **answer):
    """A fake supervisor: wait for a pending request, then answer it (pair_done = pair_seq)."""

    def answered():
        return pool.execute(
            tenant_id,
            "UPDATE bots SET pair_done = pair_seq, pair_code = %s, pair_error = %s"
            " WHERE id = %s AND pair_seq > pair_done AND pair_phone = %s",
            (answer.get("code"), answer.get("error"), bot_id, answer["phone"]),
        )

    # True once answered; raises (so ``.get()`` does too) if no request came within 5 s.
    return gevent.spawn(lambda: bool(wait_until(answered, 5, "a pending pair request", interval=0.05)))


def test_a_pair_code_without_a_supervisor_times_out_with_504(alice, pool, monkeypatch):
    monkeypatch.setattr(web_bots, "PAIR_CODE_TIMEOUT", 0.4)
    bot_id = _bot(alice)["id"]
    error = _error(alice.post(f"/bots/{bot_id}/pair-code", json={"phone": "+49 151 2345-6789"}), 504,
                   code="supervisor_timeout")
    assert "supervisor" in error["message"] and "running" in error["message"]
    assert _row(pool, alice.tenant_id, bot_id, "pair_phone, pair_seq") == ("4915123456789", 1)


def test_a_pair_code_answered_by_the_supervisor_is_returned(alice, pool, monkeypatch):
    monkeypatch.setattr(web_bots, "PAIR_CODE_TIMEOUT", 5)
    bot_id = _bot(alice)["id"]
    fake = _answer_pair_request(pool, alice.tenant_id, bot_id, phone="4915123456789", code="ABCD-EFGH")
    response = alice.post(f"/bots/{bot_id}/pair-code", json={"phone": "+49-151-23456789"})
    assert response.status_code == 200, response.text
    assert response.json() == {"code": "ABCD-EFGH"}
    assert fake.get(timeout=5) is True


def test_a_pair_code_error_from_the_session_is_409(alice, pool, monkeypatch):
    monkeypatch.setattr(web_bots, "PAIR_CODE_TIMEOUT", 5)
    bot_id = _bot(alice)["id"]
    fake = _answer_pair_request(pool, alice.tenant_id, bot_id, phone="4915123456789", error="rate-overlimit")
    error = _error(alice.post(f"/bots/{bot_id}/pair-code", json={"phone": "4915123456789"}), 409,
                   code="pair_code_failed")
    assert "rate-overlimit" in error["message"]
    assert fake.get(timeout=5) is True


@pytest.mark.parametrize(
    "body, reason", [({}, "required"), ({"phone": "123"}, "8 to 15"), ({"phone": 4915123456789}, "string"),
                     ({"phone": "49151'; DROP TABLE bots; --"}, "8 to 15")],
)
def test_an_invalid_pair_code_phone_is_400_and_records_nothing(alice, pool, body, reason):
    bot_id = _bot(alice)["id"]
    error = _error(alice.post(f"/bots/{bot_id}/pair-code", json=body), 400, "phone")
    assert reason in error["message"]
    assert _row(pool, alice.tenant_id, bot_id, "pair_seq")[0] == 0


# -- injection -------------------------------------------------------------------------------------


def test_sql_injection_strings_are_stored_verbatim_or_rejected_and_other_tenants_are_unaffected(alice, mallory, pool):
    theirs = _bot(mallory, "mallory's bot")
    for text in INJECTIONS:
        bot = _bot(alice, text)
        assert bot["name"] == text
        assert _row(pool, alice.tenant_id, bot["id"], "name")[0] == text

    proxy = "socks5://u:';DROP--TABLE@93.184.215.14:1080"
    assert _bot(alice, "proxied", proxy=proxy)["transport_options"]["proxy"] == proxy
    for bad in ("http://h/'; DROP TABLE bots; --", "http://h:1'--", "'; DROP TABLE bots; --"):
        _error(alice.post("/bots", json={"name": "p", "transport_options": {"proxy": bad}}), 400,
               "transport_options.proxy")
    _error(alice.post("/bots", json={"name": "p", "transport_options": {"phone": "1'; DROP TABLE bots; --"}}), 400,
           "transport_options.phone")

    assert len(alice.get("/bots").json()["bots"]) == len(INJECTIONS) + 1
    assert [b["id"] for b in mallory.get("/bots").json()["bots"]] == [theirs["id"]]
    assert mallory.get(f"/bots/{theirs['id']}").json()["name"] == "mallory's bot"

"""The webhook management API: endpoints (create, read, change, delete, rotate, test), the URL policy
when a URL is saved, the delivery log and replays, scopes, and tenant isolation (another tenant's ids
are 404). Deliveries of facts come from triggers (tests/test_webhook_*.py); here they are written
directly in the states a test needs."""

from __future__ import annotations

import base64
import datetime
import json
import uuid

import pytest

from db import tenants
from tests.conftest import ApiClient

PUBLIC = "https://93.184.215.14/hook"  # a literal public address: no DNS lookup needed
UTC = datetime.UTC


def _create(client, **body):
    response = client.post("/webhooks", json={"url": PUBLIC, **body})
    assert response.status_code == 201, response.text
    return response.json()


def _delivery(pool, tenant_id, endpoint_id, *, state="failed", type_="message.in", created_at=None, attempts=8):
    created_at = created_at or datetime.datetime.now(UTC)
    rows = pool.query(
        tenant_id,
        "INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_key, type, data, state, attempts, created_at,"
        " last_error, last_status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (tenant_id, endpoint_id, f"{type_}:{uuid.uuid4()}", type_, json.dumps({"text": "hi"}), state, attempts,
         created_at, "HTTP 500" if state == "failed" else None, 500 if state == "failed" else None),
        repeatable=False)
    return str(rows[0][0])


def _attempt(pool, tenant_id, delivery_id, status, error=None, head=""):
    pool.query(tenant_id, "INSERT INTO webhook_attempts (tenant_id, delivery_id, attempted_at, duration_ms,"
                          " status_code, error, response_head) VALUES (%s, %s, now(), 12.5, %s, %s, %s)",
               (tenant_id, delivery_id, status, error, head), repeatable=False)


# -- endpoints and their secret ----------------------------------------------------------------------


def test_create_answers_the_secret_once_in_standard_webhooks_format(alice):
    made = _create(alice, description="orders", event_types=["message.*", "outbox.dead"])
    assert made["secret"].startswith("whsec_")
    assert len(base64.b64decode(made["secret"].removeprefix("whsec_"))) == 24
    assert made["url"] == PUBLIC and made["description"] == "orders" and made["enabled"] is True
    assert made["event_types"] == ["message.*", "outbox.dead"] and made["bot_ids"] is None
    assert made["pending_deliveries"] == 0 and made["failed_deliveries"] == 0


def test_list_and_get_never_show_a_secret(alice):
    made = _create(alice)
    listed = alice.get("/webhooks").json()["webhooks"]
    got = alice.get(f"/webhooks/{made['id']}").json()
    assert [w["id"] for w in listed] == [made["id"]]
    for shown in (listed[0], got):
        assert "secret" not in shown and made["secret"] not in json.dumps(shown)


def test_update_changes_only_what_is_sent(alice):
    made = _create(alice, description="old")
    bot = alice.post("/bots", json={"name": "front"}).json()["id"]
    changed = alice.patch(f"/webhooks/{made['id']}", json={"event_types": ["bot.state"], "bot_ids": [bot]}).json()
    assert changed["event_types"] == ["bot.state"] and changed["bot_ids"] == [bot]
    assert changed["description"] == "old" and changed["url"] == PUBLIC
    again = alice.patch(f"/webhooks/{made['id']}", json={"bot_ids": None}).json()
    assert again["bot_ids"] is None and again["event_types"] == ["bot.state"]


def test_re_enabling_clears_why_and_since_when_it_was_off(alice, web):
    made = _create(alice)
    web.pool.query(alice.tenant_id, "UPDATE webhook_endpoints SET enabled = false, disabled_at = now(),"
                                    " disabled_reason = 'the receiver answered 410 Gone', failing_since = now()"
                                    " WHERE id = %s", (made["id"],), repeatable=False)
    shown = alice.get(f"/webhooks/{made['id']}").json()
    assert shown["enabled"] is False and shown["disabled_reason"] == "the receiver answered 410 Gone"
    enabled = alice.patch(f"/webhooks/{made['id']}", json={"enabled": True}).json()
    assert enabled["enabled"] is True
    assert (enabled["disabled_at"], enabled["disabled_reason"], enabled["failing_since"]) == (None, "", None)


def test_delete_removes_the_endpoint(alice):
    made = _create(alice)
    assert alice.delete(f"/webhooks/{made['id']}").status_code == 204
    assert alice.get(f"/webhooks/{made['id']}").status_code == 404


def test_rotating_gives_a_new_secret_and_keeps_the_old_one_valid_for_24_hours(alice, web):
    made = _create(alice)
    before = datetime.datetime.now(UTC)
    rotated = alice.post(f"/webhooks/{made['id']}/rotate-secret")
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != made["secret"]
    until = datetime.datetime.fromisoformat(body["previous_secret_valid_until"])
    assert datetime.timedelta(hours=23, minutes=59) < until - before < datetime.timedelta(hours=24, minutes=1)
    stored = web.pool.query(alice.tenant_id, "SELECT secret, previous_secret FROM webhook_endpoints WHERE id = %s",
                            (made["id"],))[0]
    assert stored == (body["secret"], made["secret"])
    assert alice.get(f"/webhooks/{made['id']}").json()["previous_secret_valid_until"] == body[
        "previous_secret_valid_until"]


# -- what is refused when saved ----------------------------------------------------------------------


def test_a_plain_http_url_is_refused_when_http_is_not_allowed(alice):
    response = alice.post("/webhooks", json={"url": "http://93.184.215.14/hook"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "url" and "https://" in error["message"]


@pytest.mark.parametrize("url, why", [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://10.0.0.1/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "metadata"),
    ("https://[::1]/hook", "loopback"),
])
def test_an_address_that_is_not_public_is_refused_naming_the_url(alice, url, why):
    response = alice.post("/webhooks", json={"url": url})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "url" and why in error["message"]


def test_a_private_address_is_refused_on_update_too(alice):
    made = _create(alice)
    response = alice.patch(f"/webhooks/{made['id']}", json={"url": "https://10.0.0.1/hook"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "url"
    assert alice.get(f"/webhooks/{made['id']}").json()["url"] == PUBLIC


def test_a_name_that_does_not_resolve_is_refused_naming_the_url(alice):
    response = alice.post("/webhooks", json={"url": f"https://{uuid.uuid4().hex}.invalid/hook"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "url"


def test_loopback_and_http_are_allowed_when_the_operator_allows_them(serve_root, make_tenant):
    root = serve_root(webhooks_allow_private=True, webhooks_allow_http=True)
    tenant_id, key = make_tenant()
    client = ApiClient(root.url, key, tenant_id)
    for url in ("https://127.0.0.1:9/hook", "http://10.0.0.1/hook", "https://[::1]/hook"):
        assert client.post("/webhooks", json={"url": url}).status_code == 201, url


def test_an_event_type_that_matches_nothing_is_refused_naming_its_index(alice):
    response = alice.post("/webhooks", json={"url": PUBLIC, "event_types": ["message.in", "mesage.out"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "event_types[1]" and "matches no event type" in error["message"]


def test_a_bot_of_another_tenant_is_refused_naming_its_index(alice, mallory):
    own = alice.post("/bots", json={"name": "mine"}).json()["id"]
    foreign = mallory.post("/bots", json={"name": "theirs"}).json()["id"]
    response = alice.post("/webhooks", json={"url": PUBLIC, "bot_ids": [own, foreign]})
    assert response.status_code == 400
    assert response.json()["error"] == {"status": 400, "code": "invalid_input", "message": "is not one of your bots",
                                        "field": "bot_ids[1]"}


def test_a_read_only_key_may_list_but_not_create(alice, web):
    _id, _prefix, read = tenants.create_key(web.pool, alice.tenant_id, "reader", ["read"])
    reader = ApiClient(web.url, read, alice.tenant_id)
    assert reader.get("/webhooks").status_code == 200
    response = reader.post("/webhooks", json={"url": PUBLIC})
    assert response.status_code == 403 and "'manage'" in response.json()["error"]["message"]


# -- tenant isolation --------------------------------------------------------------------------------


@pytest.mark.parametrize("method, suffix, body", [
    ("get", "", None), ("patch", "", {"description": "mine now"}), ("delete", "", None),
    ("post", "/test", None), ("post", "/rotate-secret", None), ("get", "/deliveries", None),
    ("post", "/replay-failed", {}), ("get", "/deliveries/{delivery}", None),
    ("post", "/deliveries/{delivery}/replay", None),
])
def test_another_tenants_endpoint_and_deliveries_are_not_found(alice, mallory, web, method, suffix, body):
    theirs = _create(mallory)
    delivery = _delivery(web.pool, mallory.tenant_id, theirs["id"])
    path = f"/webhooks/{theirs['id']}{suffix.format(delivery=delivery)}"
    response = getattr(alice, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == 404, response.text
    assert mallory.get(f"/webhooks/{theirs['id']}").json()["description"] == ""
    assert web.pool.query(mallory.tenant_id, "SELECT state FROM webhook_deliveries WHERE id = %s",
                          (delivery,)) == [("failed",)]


def test_a_delivery_of_another_endpoint_of_the_same_tenant_is_not_found_under_this_one(alice, web):
    one, other = _create(alice), _create(alice)
    delivery = _delivery(web.pool, alice.tenant_id, other["id"])
    assert alice.get(f"/webhooks/{one['id']}/deliveries/{delivery}").status_code == 404


# -- test events -------------------------------------------------------------------------------------


def test_a_test_event_is_queued_as_a_webhook_test_delivery(alice, web):
    made = _create(alice, event_types=["message.in"])
    response = alice.post(f"/webhooks/{made['id']}/test")
    assert response.status_code == 202
    delivery = response.json()
    assert delivery["type"] == "webhook.test" and delivery["state"] == "pending" and delivery["attempts"] == 0
    assert delivery["data"] == {"endpoint_id": made["id"], "message": "a test event from the dashboard/API"}
    assert alice.get(f"/webhooks/{made['id']}/deliveries/{delivery['id']}").json()["type"] == "webhook.test"


def test_a_test_event_to_a_disabled_endpoint_is_a_conflict(alice):
    made = _create(alice, enabled=False)
    response = alice.post(f"/webhooks/{made['id']}/test")
    assert response.status_code == 409 and "disabled" in response.json()["error"]["message"]


# -- the delivery log --------------------------------------------------------------------------------


def test_the_log_filters_by_state_newest_first_with_each_attempt(alice, web):
    made = _create(alice)
    pool, tenant = web.pool, alice.tenant_id
    now = datetime.datetime.now(UTC)
    old_failed = _delivery(pool, tenant, made["id"], created_at=now - datetime.timedelta(minutes=2))
    _delivery(pool, tenant, made["id"], state="delivered", attempts=1)
    new_failed = _delivery(pool, tenant, made["id"], created_at=now - datetime.timedelta(minutes=1))
    _attempt(pool, tenant, new_failed, 500, "HTTP 500", "oops")
    _attempt(pool, tenant, new_failed, None, "connection refused")
    rows = alice.get(f"/webhooks/{made['id']}/deliveries", params={"state": "failed"}).json()["deliveries"]
    assert [r["id"] for r in rows] == [new_failed, old_failed]
    log = rows[0]["attempt_log"]
    assert [(a["status_code"], a["error"], a["response_head"]) for a in log] == [
        (500, "HTTP 500", "oops"), (None, "connection refused", "")]
    assert log[0]["duration_ms"] == 12.5 and "data" not in rows[0]


def test_the_log_filters_by_time_range_and_type(alice, web):
    made = _create(alice)
    pool, tenant = web.pool, alice.tenant_id
    day = datetime.datetime(2026, 11, 30, tzinfo=UTC)
    early = _delivery(pool, tenant, made["id"], created_at=day)
    inside = _delivery(pool, tenant, made["id"], created_at=day + datetime.timedelta(hours=12), type_="bot.state")
    _delivery(pool, tenant, made["id"], created_at=day + datetime.timedelta(days=1))
    window = {"since": day.isoformat(), "until": (day + datetime.timedelta(days=1)).isoformat()}
    rows = alice.get(f"/webhooks/{made['id']}/deliveries", params=window).json()["deliveries"]
    assert [r["id"] for r in rows] == [inside, early]
    typed = alice.get(f"/webhooks/{made['id']}/deliveries", params={**window, "type": "bot.*"}).json()["deliveries"]
    assert [r["id"] for r in typed] == [inside]


def test_the_log_pages_with_next_before(alice, web):
    made = _create(alice)
    now = datetime.datetime.now(UTC)
    ids = [_delivery(web.pool, alice.tenant_id, made["id"], created_at=now - datetime.timedelta(seconds=i))
           for i in range(3)]
    first = alice.get(f"/webhooks/{made['id']}/deliveries", params={"limit": 2}).json()
    second = alice.get(f"/webhooks/{made['id']}/deliveries",
                       params={"limit": 2, "before": first["next_before"]}).json()
    assert [r["id"] for r in first["deliveries"] + second["deliveries"]] == ids
    assert second["next_before"] is None


def test_an_until_not_after_since_is_refused_naming_until(alice):
    made = _create(alice)
    response = alice.get(f"/webhooks/{made['id']}/deliveries",
                         params={"since": "2026-12-01T10:00:00Z", "until": "2026-12-01T09:00:00Z"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "until"


def test_one_delivery_shows_its_data(alice, web):
    made = _create(alice)
    delivery = _delivery(web.pool, alice.tenant_id, made["id"])
    shown = alice.get(f"/webhooks/{made['id']}/deliveries/{delivery}").json()
    assert shown["data"] == {"text": "hi"} and shown["state"] == "failed"


# -- replays -----------------------------------------------------------------------------------------


def test_replay_moves_a_failed_delivery_back_to_pending_with_attempts_zero(alice, web):
    made = _create(alice)
    delivery = _delivery(web.pool, alice.tenant_id, made["id"])
    response = alice.post(f"/webhooks/{made['id']}/deliveries/{delivery}/replay")
    assert response.status_code == 202
    replayed = response.json()
    assert (replayed["state"], replayed["attempts"], replayed["last_error"]) == ("pending", 0, None)
    assert alice.get(f"/webhooks/{made['id']}").json()["pending_deliveries"] == 1


def test_replay_of_a_delivery_in_flight_is_a_conflict(alice, web):
    made = _create(alice)
    delivery = _delivery(web.pool, alice.tenant_id, made["id"], state="delivering", attempts=1)
    response = alice.post(f"/webhooks/{made['id']}/deliveries/{delivery}/replay")
    assert response.status_code == 409 and "in flight" in response.json()["error"]["message"]


def test_replay_failed_counts_only_the_failed_deliveries_in_the_range(alice, web):
    made = _create(alice)
    pool, tenant = web.pool, alice.tenant_id
    day = datetime.datetime(2026, 11, 30, tzinfo=UTC)
    for hours in (1, 2):
        _delivery(pool, tenant, made["id"], created_at=day + datetime.timedelta(hours=hours))
    _delivery(pool, tenant, made["id"], created_at=day + datetime.timedelta(days=2))  # outside
    _delivery(pool, tenant, made["id"], state="delivered", created_at=day + datetime.timedelta(hours=3))
    response = alice.post(f"/webhooks/{made['id']}/replay-failed",
                          json={"since": day.isoformat(), "until": (day + datetime.timedelta(days=1)).isoformat()})
    assert response.json() == {"replayed": 2}
    shown = alice.get(f"/webhooks/{made['id']}").json()
    assert (shown["pending_deliveries"], shown["failed_deliveries"]) == (2, 1)


def test_replay_failed_of_a_disabled_endpoint_is_a_conflict(alice, web):
    made = _create(alice, enabled=False)
    _delivery(web.pool, alice.tenant_id, made["id"])
    assert alice.post(f"/webhooks/{made['id']}/replay-failed", json={}).status_code == 409

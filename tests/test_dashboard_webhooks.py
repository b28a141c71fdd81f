"""The dashboard's webhook pages as members use them, over real HTTP: adding an endpoint (its secret
shown once), the URL policy's refusals in the form, the state and the disabled notice (here and on
the home page), the delivery log with its attempts, replays, rotation, and roles: only admins change
anything (the whole role x route matrix is tests/test_dashboard_roles.py)."""

from __future__ import annotations

import json
import re
import uuid

from tests.conftest import ApiClient

PUBLIC = "https://93.184.215.14/hook"  # a literal public address: no DNS lookup; no worker runs here


def _add(shop, **body):
    made = shop.api.post("/webhooks", json={"url": PUBLIC, **body})
    assert made.status_code == 201, made.text
    return made.json()


def _failed_delivery(pool, tenant_id, endpoint_id, error="HTTP 500", head="upstream exploded"):
    rows = pool.query(
        tenant_id,
        "INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_key, type, data, state, attempts, last_error)"
        " VALUES (%s, %s, %s, 'message.in', %s, 'failed', 8, %s) RETURNING id",
        (tenant_id, endpoint_id, f"message.in:{uuid.uuid4()}", json.dumps({"text": "hi"}), error), repeatable=False)
    delivery = str(rows[0][0])
    pool.query(tenant_id, "INSERT INTO webhook_attempts (tenant_id, delivery_id, attempted_at, duration_ms,"
                          " status_code, error, response_head) VALUES (%s, %s, now(), 231.4, 500, %s, %s)",
               (tenant_id, delivery, error, head), repeatable=False)
    return delivery


def _disable(pool, tenant_id, endpoint_id, reason):
    pool.query(tenant_id, "UPDATE webhook_endpoints SET enabled = false, disabled_at = now(), disabled_reason = %s"
                          " WHERE id = %s", (reason, endpoint_id), repeatable=False)


def test_the_navigation_names_the_webhooks_page_for_every_role(shop):
    for member in (shop.admin, shop.agent, shop.viewer):
        page = member.get("/app/inbox")
        assert 'href="/app/webhooks"' in page.text, member.role
        assert member.get("/app/webhooks").status_code == 200


def test_adding_a_webhook_shows_its_secret_once(shop):
    page = shop.admin.post("/app/webhooks", {"url": PUBLIC, "description": "order system",
                                              "event_types": "message.*, outbox.dead"})
    assert page.status_code == 200
    secret = re.search(r'id="webhook-secret" value="(whsec_[^"]+)"', page.text).group(1)
    (endpoint,) = shop.api.get("/webhooks").json()["webhooks"]
    assert endpoint["description"] == "order system" and endpoint["event_types"] == ["message.*", "outbox.dead"]
    assert 'data-copy="webhook-secret"' in page.text
    for later in (shop.admin.get("/app/webhooks"), shop.admin.get(f"/app/webhooks/{endpoint['id']}")):
        assert secret not in later.text and "webhook-secret" not in later.text


def test_a_refused_url_is_named_in_the_form_and_nothing_is_added(shop):
    page = shop.admin.post("/app/webhooks", {"url": "https://169.254.169.254/latest", "description": "kept"})
    assert page.status_code == 400
    assert "metadata address" in page.text and 'aria-invalid="true" aria-describedby="url-error"' in page.text
    assert 'value="kept"' in page.text  # what was typed stays
    assert shop.api.get("/webhooks").json()["webhooks"] == []


def test_an_event_type_that_matches_nothing_is_refused_in_the_form(shop):
    page = shop.admin.post("/app/webhooks", {"url": PUBLIC, "event_types": "message.in, mesage.out"})
    assert page.status_code == 400 and "matches no event type" in page.text


def test_a_viewer_may_read_the_log_but_its_post_is_refused_and_changes_nothing(shop, web):
    endpoint = _add(shop)
    delivery = _failed_delivery(web.pool, shop.tenant_id, endpoint["id"])
    page = shop.viewer.get(f"/app/webhooks/{endpoint['id']}")
    assert page.status_code == 200 and "upstream exploded" in page.text
    assert "Replay" not in page.text and "Rotate secret" not in page.text and "Add a webhook" not in page.text
    for path, data in ((f"/app/webhooks/{endpoint['id']}/deliveries/{delivery}/replay", {}),
                       (f"/app/webhooks/{endpoint['id']}/rotate", {"confirm": "yes"}),
                       ("/app/webhooks", {"url": PUBLIC})):
        refused = shop.viewer.post(path, data)
        assert refused.status_code == 403 and "Your role does not allow" in refused.text
    assert shop.api.get(f"/webhooks/{endpoint['id']}/deliveries/{delivery}").json()["state"] == "failed"
    assert len(shop.api.get("/webhooks").json()["webhooks"]) == 1


def test_an_agent_may_not_turn_a_webhook_off(shop):
    endpoint = _add(shop)
    assert shop.agent.post(f"/app/webhooks/{endpoint['id']}/disable").status_code == 403
    assert shop.api.get(f"/webhooks/{endpoint['id']}").json()["enabled"] is True


def test_the_log_shows_each_attempt_with_status_duration_error_and_answer(shop, web):
    endpoint = _add(shop)
    _failed_delivery(web.pool, shop.tenant_id, endpoint["id"], error="HTTP 500", head="<h1>boom</h1>")
    page = shop.admin.get(f"/app/webhooks/{endpoint['id']}?state=failed").text
    assert ">500<" in page and "231 ms" in page and "HTTP 500" in page
    assert "&lt;h1&gt;boom&lt;/h1&gt;" in page and "<h1>boom</h1>" not in page  # the receiver's answer, escaped


def test_replay_from_the_log_queues_the_delivery_again(shop, web):
    endpoint = _add(shop)
    delivery = _failed_delivery(web.pool, shop.tenant_id, endpoint["id"])
    done = shop.admin.post(f"/app/webhooks/{endpoint['id']}/deliveries/{delivery}/replay")
    assert done.status_code == 303
    found = shop.api.get(f"/webhooks/{endpoint['id']}/deliveries/{delivery}").json()
    assert (found["state"], found["attempts"]) == ("pending", 0)


def test_replay_failed_in_a_range_says_how_many_were_queued(shop, web):
    endpoint = _add(shop)
    for _ in range(2):
        _failed_delivery(web.pool, shop.tenant_id, endpoint["id"])
    done = shop.admin.post(f"/app/webhooks/{endpoint['id']}/replay-failed", {"since": "2020-01-01T00:00", "until": ""})
    assert done.status_code == 303
    page = shop.admin.get(done.headers["Location"]).text
    assert "2 failed deliveries queued again" in page


def test_rotating_shows_the_new_secret_once(shop, web):
    endpoint = _add(shop)
    page = shop.admin.post(f"/app/webhooks/{endpoint['id']}/rotate", {"confirm": "yes"})
    assert page.status_code == 200
    secret = re.search(r'id="webhook-secret" value="(whsec_[^"]+)"', page.text).group(1)
    assert secret != endpoint["secret"] and "The previous secret also signs until" in page.text
    assert secret not in shop.admin.get(f"/app/webhooks/{endpoint['id']}").text


def test_a_disabled_webhook_shows_its_reason_and_is_named_on_the_home_page(shop, web):
    endpoint = _add(shop, description="order system")
    _disable(web.pool, shop.tenant_id, endpoint["id"], "the receiver answered 410 Gone")
    detail = shop.viewer.get(f"/app/webhooks/{endpoint['id']}").text
    assert 'role="alert"' in detail and "the receiver answered 410 Gone" in detail
    home = shop.viewer.get("/app/inbox").text
    assert "order system" in home and "the receiver answered 410 Gone" in home
    assert f'href="/app/webhooks/{endpoint["id"]}"' in home


def test_turning_a_disabled_webhook_on_clears_the_notice(shop, web):
    endpoint = _add(shop, description="order system")
    _disable(web.pool, shop.tenant_id, endpoint["id"], "the receiver answered 410 Gone")
    assert shop.admin.post(f"/app/webhooks/{endpoint['id']}/enable").status_code == 303
    assert "410 Gone" not in shop.admin.get("/app/inbox").text
    assert shop.api.get(f"/webhooks/{endpoint['id']}").json()["disabled_reason"] == ""


def test_a_test_event_from_the_page_is_queued(shop):
    endpoint = _add(shop)
    done = shop.admin.post(f"/app/webhooks/{endpoint['id']}/test")
    assert done.status_code == 303
    (delivery,) = shop.api.get(f"/webhooks/{endpoint['id']}/deliveries").json()["deliveries"]
    assert delivery["type"] == "webhook.test"
    assert "A test event is on its way" in shop.admin.get(done.headers["Location"]).text


def test_deleting_asks_first_then_removes_the_webhook(shop):
    endpoint = _add(shop)
    asked = shop.admin.post(f"/app/webhooks/{endpoint['id']}/delete")
    assert asked.status_code == 200 and "Please confirm" in asked.text
    assert shop.api.get(f"/webhooks/{endpoint['id']}").status_code == 200
    assert shop.admin.post(f"/app/webhooks/{endpoint['id']}/delete", {"confirm": "yes"}).status_code == 303
    assert shop.api.get(f"/webhooks/{endpoint['id']}").status_code == 404


def test_another_tenants_webhook_is_not_found(shop, web, make_tenant):
    tenant_id, key = make_tenant()
    theirs = ApiClient(web.url, key, tenant_id).post("/webhooks", json={"url": PUBLIC}).json()
    assert shop.admin.get(f"/app/webhooks/{theirs['id']}").status_code == 404
    assert shop.admin.post(f"/app/webhooks/{theirs['id']}/disable").status_code == 404

"""The web app as a client sees it, over real HTTP on 127.0.0.1: request ids, JSON errors, health and
metrics, API keys, users, tenant isolation, and hostile input through every field that reaches a query."""

from __future__ import annotations

import gc
import re
import uuid
import weakref
from urllib.parse import quote

import pytest
import requests
from flask import Blueprint, jsonify
from prometheus_client.parser import text_string_to_metric_families

from web import validation

TIMEOUT = 5
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

blueprint = Blueprint("web_basics_test", __name__)


@blueprint.get("/web-test/boom")
def _boom():
    raise RuntimeError("secret internal detail")


@blueprint.post("/web-test/echo")
def _echo():
    return jsonify({"keys": sorted(validation.json_body())})


@pytest.fixture
def serve(serve_root):
    """Start a dedicated app (with a test blueprint) on 127.0.0.1, optionally with changed settings."""
    return lambda **changes: serve_root(blueprints=[blueprint], **changes)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_json_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    assert "<html" not in response.text.lower() and "traceback" not in response.text.lower()
    body = response.json()
    assert body["error"]["status"] == status
    if code is not None:
        assert body["error"]["code"] == code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body["error"]


# -- X-Request-ID ----------------------------------------------------------------------------------


def test_a_given_request_id_is_echoed_back(web):
    response = requests.get(f"{web.url}/healthz", headers={"X-Request-ID": "abc-123.x:y_z"}, timeout=TIMEOUT)
    assert response.headers["X-Request-ID"] == "abc-123.x:y_z"


def test_a_request_id_of_exactly_128_characters_is_kept(web):
    rid = "r" * 128
    response = requests.get(f"{web.url}/healthz", headers={"X-Request-ID": rid}, timeout=TIMEOUT)
    assert response.headers["X-Request-ID"] == rid


def test_a_missing_request_id_is_generated_fresh_for_each_request(web):
    first = requests.get(f"{web.url}/healthz", timeout=TIMEOUT).headers["X-Request-ID"]
    second = requests.get(f"{web.url}/healthz", timeout=TIMEOUT).headers["X-Request-ID"]
    assert REQUEST_ID.match(first) and REQUEST_ID.match(second)
    assert first != second


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "r" * 129, "semi;colon", "'; DROP TABLE users; --", "slash/es", "quote\"d", "é"],
    ids=["empty", "space", "oversized", "semicolon", "sql", "slash", "quote", "non-ascii"],
)
def test_an_invalid_or_oversized_request_id_is_replaced_by_a_generated_one(web, bad):
    response = requests.get(f"{web.url}/healthz", headers={"X-Request-ID": bad.encode()}, timeout=TIMEOUT)
    assert response.status_code == 200
    replaced = response.headers["X-Request-ID"]
    assert replaced != bad and REQUEST_ID.match(replaced)


def test_an_error_body_carries_the_request_id(web):
    response = requests.get(f"{web.url}/no-such-page", headers={"X-Request-ID": "trace-me-1"}, timeout=TIMEOUT)
    assert_json_error(response, 404, "not_found")
    assert response.json()["request_id"] == "trace-me-1"


# -- JSON errors -----------------------------------------------------------------------------------


def test_invalid_json_gets_a_json_400(web, make_tenant):
    _tenant, key = make_tenant()
    response = requests.post(
        f"{web.url}/api/v1/users",
        data=b"{not json",
        headers={**bearer(key), "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_json_error(response, 400, "invalid_json")


def test_a_json_body_that_is_not_an_object_gets_a_json_400(web, make_tenant):
    _tenant, key = make_tenant()
    response = requests.post(f"{web.url}/api/v1/users", json=["a@b.c"], headers=bearer(key), timeout=TIMEOUT)
    assert_json_error(response, 400, "invalid_json")


def test_an_invalid_field_gets_a_json_400_naming_the_field(web, make_tenant):
    _tenant, key = make_tenant()
    response = requests.post(f"{web.url}/api/v1/users", json={"email": "nope"}, headers=bearer(key), timeout=TIMEOUT)
    assert assert_json_error(response, 400, "invalid_input")["field"] == "email"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wbk_not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "wbk_without_a_scheme"},
        {"Authorization": "Token wbk_abc"},
    ],
    ids=["missing", "wrong-key", "basic", "bearer-no-key", "bearer-blank", "no-scheme", "other-scheme"],
)
def test_a_missing_wrong_or_malformed_api_key_gets_a_json_401(web, headers):
    response = requests.get(f"{web.url}/api/v1/users", headers=headers, timeout=TIMEOUT)
    assert_json_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/no-such-page", "/api/v1/no-such-thing", "/api/v2/users"])
def test_an_unknown_route_gets_a_json_404(web, path):
    assert_json_error(requests.get(f"{web.url}{path}", timeout=TIMEOUT), 404, "not_found")


def test_an_unknown_user_id_gets_a_json_404(web, make_tenant):
    _tenant, key = make_tenant()
    response = requests.get(f"{web.url}/api/v1/users/{uuid.uuid4()}", headers=bearer(key), timeout=TIMEOUT)
    assert_json_error(response, 404, "not_found")


def test_a_user_id_that_is_not_a_uuid_gets_a_json_404(web, make_tenant):
    _tenant, key = make_tenant()
    response = requests.get(f"{web.url}/api/v1/users/not-a-uuid", headers=bearer(key), timeout=TIMEOUT)
    assert_json_error(response, 404, "not_found")


def test_a_method_the_route_does_not_allow_gets_a_json_405_with_an_allow_header(web):
    response = requests.delete(f"{web.url}/api/v1/users", timeout=TIMEOUT)
    assert_json_error(response, 405, "method_not_allowed")
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed and "DELETE" not in allowed


def test_a_body_over_the_limit_gets_a_json_413(serve):
    app = serve(http_max_body=64)
    response = requests.post(
        f"{app.url}/api/v1/web-test/echo",
        data=b'{"x": "' + b"a" * 500 + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_json_error(response, 413, "payload_too_large")


def test_a_body_over_the_limit_gets_a_413_before_authentication(serve):
    app = serve(http_max_body=64)
    response = requests.post(
        f"{app.url}/api/v1/users", data=b"x" * 500, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert_json_error(response, 413)


def test_a_chunked_body_over_the_limit_gets_a_json_413(serve):
    # Werkzeug enforces MAX_CONTENT_LENGTH on a chunked body by cutting it short, not with a 413, so
    # the app has to check bodies that come without a Content-Length itself.
    app = serve(http_max_body=64)

    def chunks():  # no Content-Length: the body arrives chunked
        yield b'{"x": "'
        for _ in range(10):
            yield b"a" * 50
        yield b'"}'

    response = requests.post(
        f"{app.url}/api/v1/web-test/echo", data=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert_json_error(response, 413)


def test_a_chunked_body_within_the_limit_is_read_whole(serve):
    app = serve(http_max_body=64)

    def chunks():
        yield b'{"a": 1, '
        yield b'"b": 2}'

    response = requests.post(
        f"{app.url}/api/v1/web-test/echo", data=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"keys": ["a", "b"]}


def test_a_body_within_the_limit_is_accepted(serve):
    app = serve(http_max_body=64)
    response = requests.post(f"{app.url}/api/v1/web-test/echo", json={"a": 1, "b": 2}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"keys": ["a", "b"]}


def test_an_unhandled_error_gets_a_json_500_without_internal_details(serve):
    app = serve()
    response = requests.get(f"{app.url}/api/v1/web-test/boom", timeout=TIMEOUT)
    error = assert_json_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.text
    assert error["message"] == "internal server error"


# -- health and metrics ----------------------------------------------------------------------------


def test_healthz_answers_200(web):
    response = requests.get(f"{web.url}/healthz", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_200_when_the_database_answers(web):
    response = requests.get(f"{web.url}/readyz", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def _metrics(url: str) -> dict[str, list]:
    response = requests.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_metrics_expose_the_pool_gauges(web):
    samples = _metrics(web.url)
    for gauge in ("db_pool_size", "db_pool_in_use", "db_pool_idle", "db_pool_waiting", "db_pool_connecting"):
        assert gauge in samples, gauge
    assert samples["db_pool_size"][0].value == web.pool.config.size


def test_metrics_answer_200_while_a_dead_weak_proxy_is_somewhere_in_the_heap(web, caplog):
    # Libraries keep weakref.proxy objects (Flask's JSON provider holds one to its app); once the
    # referent is gone, touching the proxy raises ReferenceError. Scraping must not trip over them.
    class Referent:
        pass

    referent = Referent()
    proxies = [weakref.proxy(referent)]
    del referent
    gc.collect()
    try:
        response = requests.get(f"{web.url}/metrics", timeout=TIMEOUT)
    finally:
        # Even on failure, later tests must not inherit the dead proxy: a logged traceback would hold it.
        proxies.clear()
        for record in caplog.get_records("call"):
            record.exc_info = None
    assert response.status_code == 200, response.text


def test_metrics_count_requests_by_route_method_and_status(web, make_tenant):
    _tenant, key = make_tenant()
    requests.get(f"{web.url}/healthz", timeout=TIMEOUT)
    requests.get(f"{web.url}/healthz", timeout=TIMEOUT)
    requests.get(f"{web.url}/api/v1/users/{uuid.uuid4()}", headers=bearer(key), timeout=TIMEOUT)
    requests.get(f"{web.url}/definitely/not/here", timeout=TIMEOUT)
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in _metrics(web.url)["http_requests_total"]
    }
    assert counts[("/healthz", "GET", "200")] == 2
    assert counts[("/api/v1/users/<user_id>", "GET", "404")] == 1
    assert counts[("unmatched", "GET", "404")] == 1
    assert not any("definitely" in route for route, _m, _s in counts), "raw paths must not become labels"


def test_metrics_have_a_latency_histogram_by_route(web):
    requests.get(f"{web.url}/healthz", timeout=TIMEOUT)
    samples = _metrics(web.url)
    buckets = [s for s in samples["http_request_duration_seconds_bucket"] if s.labels["route"] == "/healthz"]
    assert buckets and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value >= 1
    (count,) = [s for s in samples["http_request_duration_seconds_count"] if s.labels["route"] == "/healthz"]
    assert count.value >= 1


# -- API keys --------------------------------------------------------------------------------------


def _key_id(url: str, admin_key: str, key: str) -> str:
    listed = requests.get(f"{url}/api/v1/api-keys", headers=bearer(admin_key), timeout=TIMEOUT).json()["api_keys"]
    (match,) = [k for k in listed if key.startswith(k["prefix"])]
    return match["id"]


def test_the_key_from_tenant_creation_works_as_a_bearer_key(web, make_tenant):
    tenant_id, key = make_tenant("key-check")
    response = requests.get(f"{web.url}/api/v1/tenant", headers=bearer(key), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["id"] == tenant_id and response.json()["name"] == "key-check"


def test_a_second_key_from_the_api_works_and_is_shown_only_once(web, make_tenant):
    tenant_id, key = make_tenant()
    created = requests.post(f"{web.url}/api/v1/api-keys", json={"name": "ci"}, headers=bearer(key), timeout=TIMEOUT)
    assert created.status_code == 201
    second = created.json()["key"]
    assert second != key and second.startswith("wbk_")
    whoami = requests.get(f"{web.url}/api/v1/tenant", headers=bearer(second), timeout=TIMEOUT)
    assert whoami.status_code == 200 and whoami.json()["id"] == tenant_id
    listing = requests.get(f"{web.url}/api/v1/api-keys", headers=bearer(key), timeout=TIMEOUT)
    assert second not in listing.text and key not in listing.text
    assert sorted(k["name"] for k in listing.json()["api_keys"]) == ["ci", "default"]


def test_a_revoked_key_gets_401_and_the_other_keys_keep_working(web, make_tenant):
    _tenant, key = make_tenant()
    second = requests.post(f"{web.url}/api/v1/api-keys", json={}, headers=bearer(key), timeout=TIMEOUT).json()["key"]
    key_id = _key_id(web.url, key, second)
    response = requests.delete(f"{web.url}/api/v1/api-keys/{key_id}", headers=bearer(key), timeout=TIMEOUT)
    assert response.status_code == 204
    assert_json_error(requests.get(f"{web.url}/api/v1/tenant", headers=bearer(second), timeout=TIMEOUT), 401)
    assert requests.get(f"{web.url}/api/v1/tenant", headers=bearer(key), timeout=TIMEOUT).status_code == 200
    again = requests.delete(f"{web.url}/api/v1/api-keys/{key_id}", headers=bearer(key), timeout=TIMEOUT)
    assert_json_error(again, 404)


def test_a_tenant_cannot_revoke_another_tenants_key(web, make_tenant):
    _a, key_a = make_tenant()
    _b, key_b = make_tenant()
    key_a_id = _key_id(web.url, key_a, key_a)
    response = requests.delete(f"{web.url}/api/v1/api-keys/{key_a_id}", headers=bearer(key_b), timeout=TIMEOUT)
    assert_json_error(response, 404)
    assert requests.get(f"{web.url}/api/v1/tenant", headers=bearer(key_a), timeout=TIMEOUT).status_code == 200


# -- users -----------------------------------------------------------------------------------------


def test_users_can_be_created_listed_read_and_deleted(web, make_tenant):
    _tenant, key = make_tenant()
    url = f"{web.url}/api/v1/users"
    created = requests.post(
        url, json={"email": "Ann@Example.COM", "display_name": "  Ann  ", "role": "viewer"}, headers=bearer(key),
        timeout=TIMEOUT,
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["email"], user["display_name"], user["role"]) == ("ann@example.com", "Ann", "viewer")
    uuid.UUID(user["id"])

    default_role = requests.post(url, json={"email": "bob@example.com"}, headers=bearer(key), timeout=TIMEOUT)
    assert default_role.status_code == 201 and default_role.json()["role"] == "agent"

    listed = requests.get(url, headers=bearer(key), timeout=TIMEOUT).json()["users"]
    assert [u["email"] for u in listed] == ["ann@example.com", "bob@example.com"]
    assert requests.get(f"{url}/{user['id']}", headers=bearer(key), timeout=TIMEOUT).json() == user

    assert requests.delete(f"{url}/{user['id']}", headers=bearer(key), timeout=TIMEOUT).status_code == 204
    assert_json_error(requests.get(f"{url}/{user['id']}", headers=bearer(key), timeout=TIMEOUT), 404)
    assert_json_error(requests.delete(f"{url}/{user['id']}", headers=bearer(key), timeout=TIMEOUT), 404)
    assert [u["email"] for u in requests.get(url, headers=bearer(key), timeout=TIMEOUT).json()["users"]] == [
        "bob@example.com"
    ]


def test_a_duplicate_email_gets_409_whatever_its_case(web, make_tenant):
    _tenant, key = make_tenant()
    url = f"{web.url}/api/v1/users"
    first = requests.post(url, json={"email": "dup@example.com"}, headers=bearer(key), timeout=TIMEOUT)
    assert first.status_code == 201
    again = requests.post(url, json={"email": "DUP@example.com"}, headers=bearer(key), timeout=TIMEOUT)
    assert assert_json_error(again, 409, "conflict")["field"] == "email"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "email"),
        ({"email": ""}, "email"),
        ({"email": 42}, "email"),
        ({"email": {"$ne": None}}, "email"),
        ({"email": "a@b.c", "role": "owner"}, "role"),
        ({"email": "a@b.c", "role": ["admin"]}, "role"),
        ({"email": "a@b.c", "display_name": 5}, "display_name"),
        ({"email": "a@b.c", "display_name": "x" * 201}, "display_name"),
        ({"email": "a\x00b@c.d"}, "email"),
        ({"email": "a@b.c", "display_name": "nul\x00byte"}, "display_name"),
    ],
    ids=["missing", "empty", "number", "object", "bad-role", "list-role", "number-name", "long-name", "nul-email",
         "nul-name"],
)
def test_an_invalid_user_field_gets_400_naming_it(web, make_tenant, body, field):
    _tenant, key = make_tenant()
    response = requests.post(f"{web.url}/api/v1/users", json=body, headers=bearer(key), timeout=TIMEOUT)
    assert assert_json_error(response, 400, "invalid_input")["field"] == field


def test_a_second_tenant_can_neither_see_nor_delete_the_first_tenants_users(web, make_tenant):
    _a, key_a = make_tenant()
    _b, key_b = make_tenant()
    url = f"{web.url}/api/v1/users"
    user = requests.post(url, json={"email": "private@a.example"}, headers=bearer(key_a), timeout=TIMEOUT).json()

    assert requests.get(url, headers=bearer(key_b), timeout=TIMEOUT).json() == {"users": []}
    assert_json_error(requests.get(f"{url}/{user['id']}", headers=bearer(key_b), timeout=TIMEOUT), 404)
    assert_json_error(requests.delete(f"{url}/{user['id']}", headers=bearer(key_b), timeout=TIMEOUT), 404)

    assert requests.get(f"{url}/{user['id']}", headers=bearer(key_a), timeout=TIMEOUT).json() == user
    # The same email is free for another tenant: uniqueness is per tenant.
    same_email = requests.post(url, json={"email": "private@a.example"}, headers=bearer(key_b), timeout=TIMEOUT)
    assert same_email.status_code == 201


# -- hostile input ---------------------------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE users; --",
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    "1; DELETE FROM users",
    "'); DELETE FROM api_keys; --",
    "%' OR 1=1 --",
    "\\'; DROP TABLE tenants; --",
    "$$; DROP TABLE users; $$",
    "admin'--",
    "' UNION SELECT id, email, display_name, role, created_at FROM users --",
    "'; SELECT set_config('app.current_tenant', NULL, false); --",
    "x'::uuid; TRUNCATE tenants CASCADE; --",
    "Robert'); DROP TABLE students;--",
    "é' OR 'ü'='ü",
]
LONG = "'; DROP TABLE users; --" * 400  # 9,200 characters


def _as_email(text: str) -> str:
    return re.sub(r"\s", "", text).lower() + "@inject.example"


@pytest.fixture
def victim(web, make_tenant, pool):
    """Another tenant with users and a key; returns a snapshot function of everything it owns."""
    tenant_id, key = make_tenant("victim")
    for n in range(3):
        response = requests.post(
            f"{web.url}/api/v1/users", json={"email": f"v{n}@victim.example", "role": "admin"}, headers=bearer(key),
            timeout=TIMEOUT,
        )
        assert response.status_code == 201

    def snapshot():
        return (
            pool.query(tenant_id, "SELECT id, name FROM tenants"),
            pool.query(tenant_id, "SELECT id, email, display_name, role, created_at FROM users ORDER BY id"),
            pool.query(tenant_id, "SELECT id, name, key_hash, revoked_at FROM api_keys ORDER BY id"),
        )

    return tenant_id, key, snapshot


def _assert_schema_intact(pool) -> None:
    (row,) = pool.query(
        None,
        "SELECT to_regclass('public.tenants'), to_regclass('public.users'), to_regclass('public.api_keys'),"
        " to_regclass('public.bots')",
    )
    assert all(row), f"a table is gone: {row}"


def test_injection_strings_in_user_fields_are_stored_verbatim_or_rejected(web, make_tenant, victim, pool):
    victim_id, victim_key, snapshot = victim
    before = snapshot()
    _tenant, key = make_tenant()
    url = f"{web.url}/api/v1/users"
    stored = 0
    for n, text in enumerate([*INJECTIONS, LONG]):
        # display_name
        response = requests.post(
            url, json={"email": f"dn{n}@inject.example", "display_name": text}, headers=bearer(key), timeout=TIMEOUT
        )
        if len(text) > 200:
            assert_json_error(response, 400)
        else:
            assert response.status_code == 201, response.text
            user = response.json()
            assert user["display_name"] == text
            assert requests.get(f"{url}/{user['id']}", headers=bearer(key), timeout=TIMEOUT).json() == user
            stored += 1
        # email, raw and squeezed into an address
        for candidate in (text, _as_email(text)):
            response = requests.post(url, json={"email": candidate}, headers=bearer(key), timeout=TIMEOUT)
            if response.status_code == 201:
                assert response.json()["email"] == candidate.lower()
                stored += 1
            else:
                assert_json_error(response, 400)
        # role
        response = requests.post(
            url, json={"email": f"role{n}@inject.example", "role": text}, headers=bearer(key), timeout=TIMEOUT
        )
        assert assert_json_error(response, 400)["field"] == "role"
    listed = requests.get(url, headers=bearer(key), timeout=TIMEOUT).json()["users"]
    assert len(listed) == stored
    _assert_schema_intact(pool)
    assert snapshot() == before


def test_injection_strings_as_api_key_names_are_stored_verbatim_or_rejected(web, make_tenant, victim, pool):
    _victim_id, _victim_key, snapshot = victim
    before = snapshot()
    _tenant, key = make_tenant()
    url = f"{web.url}/api/v1/api-keys"
    names = []
    for text in [*INJECTIONS, LONG]:
        response = requests.post(url, json={"name": text}, headers=bearer(key), timeout=TIMEOUT)
        if len(text) > 200:
            assert_json_error(response, 400)
        else:
            assert response.status_code == 201, response.text
            assert response.json()["name"] == text
            names.append(text)
    listed = requests.get(url, headers=bearer(key), timeout=TIMEOUT).json()["api_keys"]
    assert sorted(k["name"] for k in listed) == sorted(["default", *names])
    _assert_schema_intact(pool)
    assert snapshot() == before


def test_injection_strings_as_path_ids_get_404(web, make_tenant, victim, pool):
    _victim_id, _victim_key, snapshot = victim
    before = snapshot()
    _tenant, key = make_tenant()
    for text in [*INJECTIONS, LONG[:2000]]:
        quoted = quote(text, safe="")
        for method, path in (
            ("GET", f"/api/v1/users/{quoted}"),
            ("DELETE", f"/api/v1/users/{quoted}"),
            ("DELETE", f"/api/v1/api-keys/{quoted}"),
        ):
            response = requests.request(method, f"{web.url}{path}", headers=bearer(key), timeout=TIMEOUT)
            assert_json_error(response, 404)
    _assert_schema_intact(pool)
    assert snapshot() == before


def test_injection_strings_as_the_bearer_key_get_401(web, victim, pool):
    _victim_id, victim_key, snapshot = victim
    before = snapshot()
    for text in [*INJECTIONS, LONG[:5000], f"{victim_key}' OR '1'='1", f"{victim_key}--"]:
        header = f"Bearer {text}".encode()
        response = requests.get(f"{web.url}/api/v1/users", headers={"Authorization": header}, timeout=TIMEOUT)
        assert_json_error(response, 401)
    _assert_schema_intact(pool)
    assert snapshot() == before
    assert requests.get(f"{web.url}/api/v1/users", headers=bearer(victim_key), timeout=TIMEOUT).status_code == 200


def test_injection_strings_as_the_request_id_are_replaced_and_harm_nothing(web, make_tenant, victim, pool):
    _victim_id, _victim_key, snapshot = victim
    before = snapshot()
    _tenant, key = make_tenant()
    for text in [*INJECTIONS, LONG[:5000]]:
        response = requests.get(
            f"{web.url}/api/v1/users", headers={**bearer(key), "X-Request-ID": text.encode()}, timeout=TIMEOUT
        )
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] != text and REQUEST_ID.match(response.headers["X-Request-ID"])
    _assert_schema_intact(pool)
    assert snapshot() == before

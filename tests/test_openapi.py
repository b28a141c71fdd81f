"""The API's contract: the OpenAPI document against the app's routes, every documented error example
against the request it names, scoped keys against every operation, and the offline API docs."""

from __future__ import annotations

import re
import uuid

import pytest
import requests
from openapi_spec_validator import validate

from core import config
from db import tenants
from tests.fakes import FakeRoot
from web.app import create_app
from web.openapi import error_examples

TIMEOUT = 10
_PATH_PARAM = re.compile(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>")


@pytest.fixture(scope="module")
def document():
    app = create_app(FakeRoot(config.load({}), None))
    with app.test_client() as client:
        doc = client.get("/api/v1/openapi.json").get_json()
    return app, doc


def _operations(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


# -- the document ----------------------------------------------------------------------------------


def test_the_document_is_a_valid_openapi_3_1_document_with_the_bearer_scheme(document):
    _app, doc = document
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "wbk_…", "description": doc["components"][
            "securitySchemes"]["bearer"]["description"]}


def test_every_api_route_of_the_app_is_in_the_document_and_the_document_names_no_other(document):
    app, doc = document
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((method.lower(), _PATH_PARAM.sub(r"{\1}", rule.rule)))
    documented = {(method, path) for path, method, _op in _operations(doc)}
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "the document names routes the app does not have"


def test_every_operation_names_its_scope_and_documents_its_errors(document):
    _app, doc = document
    for path, method, op in _operations(doc):
        if op["operationId"] == "getOpenApi":
            assert op["security"] == []
            continue
        (requirement,) = op["security"]
        assert set(requirement) == {"bearer"} and len(requirement["bearer"]) == 1, (path, method)
        assert requirement["bearer"][0] in ("read", "send", "manage")
        assert "401" in op["responses"], (path, method)


def test_the_event_stream_is_described_as_text_event_stream_with_its_types_and_resume(document):
    _app, doc = document
    op = doc["paths"]["/api/v1/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    for word in ("Last-Event-ID", "message.in", "bot.state", "stream.closed"):
        assert word in op["description"]
    assert "frame_too_large" in doc["paths"]["/api/v1/ws"]["get"]["description"]


def test_request_bodies_have_examples_and_links_join_create_bot_to_its_bot(document):
    _app, doc = document
    for _path, _method, op in _operations(doc):
        if "requestBody" in op and "application/json" in op["requestBody"]["content"]:
            assert op["requestBody"]["content"]["application/json"].get("examples"), op["operationId"]
    links = doc["paths"]["/api/v1/bots"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} >= {"getBot", "updateBot", "deleteBot"}
    sent = doc["paths"]["/api/v1/bots/{bot_id}/messages"]["post"]["responses"]["202"]["links"]
    assert {link["operationId"] for link in sent.values()} >= {"getOutboxRow"}


# -- error examples, produced by real requests ----------------------------------------------------


@pytest.fixture
def keys(web, make_tenant):
    tenant_id, full = make_tenant()
    _id, _prefix, read = tenants.create_key(web.pool, tenant_id, "read only", ["read"])
    return tenant_id, {"full": full, "read": read, None: None}


def _examples():
    for operation_id, statuses in error_examples().items():
        for status, examples in statuses.items():
            for name, request, error in examples:
                yield pytest.param(operation_id, status, request, error, id=f"{operation_id}-{status}-{name}")


@pytest.mark.parametrize("operation_id, status, example, error", list(_examples()))
def test_every_documented_error_example_is_what_its_request_produces(web, document, keys, operation_id, status,
                                                                      example, error):
    _app, doc = document
    tenant_id, by_name = keys
    path, method = next((p, m) for p, m, op in _operations(doc) if op["operationId"] == operation_id)
    full = {"Authorization": f"Bearer {by_name['full']}"}
    bot = requests.post(f"{web.url}/api/v1/bots", json={"name": "example"}, headers=full, timeout=TIMEOUT).json()["id"]
    queued = requests.post(f"{web.url}/api/v1/bots/{bot}/messages", json={"to": "4915123456789", "text": "hi"},
                           headers=full, timeout=TIMEOUT).json()["outbox_id"]
    values = {"bot": bot, "missing": str(uuid.uuid4()), "queued": queued}
    for name, value in example.get("path", {}).items():
        path = path.replace("{" + name + "}", value.format(**values))
    headers = {} if example["key"] is None else {"Authorization": f"Bearer {by_name[example['key']]}"}
    kwargs = {"params": example.get("query"), "headers": headers, "timeout": TIMEOUT}
    if "raw" in example:
        kwargs["data"] = example["raw"]
        headers["Content-Type"] = "application/json"
    elif "body" in example:
        kwargs["json"] = example["body"]
    response = requests.request(method.upper(), web.url + path, **kwargs)
    assert response.status_code == status, response.text
    got = response.json()["error"]
    assert {key: got.get(key) for key in error} == error
    assert got["status"] == status


# -- scopes ----------------------------------------------------------------------------------------


@pytest.fixture
def scoped(web, make_tenant):
    """A tenant with one key per scope, a bot, a queued message, a media object and a user."""
    tenant_id, full = make_tenant()
    keys = {scope: tenants.create_key(web.pool, tenant_id, scope, [scope])[2] for scope in ("read", "send", "manage")}
    auth = {"Authorization": f"Bearer {full}"}
    bot = requests.post(f"{web.url}/api/v1/bots", json={"name": "scoped"}, headers=auth, timeout=TIMEOUT).json()["id"]
    queued = requests.post(f"{web.url}/api/v1/bots/{bot}/messages", json={"to": "4915123456789", "text": "hi"},
                           headers=auth, timeout=TIMEOUT).json()
    media = requests.post(f"{web.url}/api/v1/media", data=b"bytes", headers={**auth, "Content-Type": "text/plain"},
                          timeout=TIMEOUT).json()["id"]
    user = requests.post(f"{web.url}/api/v1/users", json={"email": f"u-{uuid.uuid4().hex[:6]}@example.test"},
                         headers=auth, timeout=TIMEOUT).json()["id"]
    key_id = tenants.create_key(web.pool, tenant_id, "to revoke")[0]
    values = {"bot_id": bot, "outbox_id": queued["outbox_id"], "media_id": media, "user_id": user, "key_id": key_id,
              "contact": "4915123456789"}
    return keys, values


_BODIES = {
    "createBot": {"name": "x"}, "updateBot": {"name": "y"}, "sendMessage": {"to": "4915123456789", "text": "hi"},
    "putRules": {"rules": []}, "putAi": {"ai": {}}, "createApiKey": {"name": "k"}, "requestPairCode": {"phone": "1"},
    "createUser": {"email": "someone@example.test"},
}


def _scoped_operations():
    with create_app(FakeRoot(config.load({}), None)).test_client() as client:
        doc = client.get("/api/v1/openapi.json").get_json()
    for path, method, op in _operations(doc):
        if op["security"] and op["operationId"] not in ("openWebSocket",):
            yield path, method, op["operationId"], op["security"][0]["bearer"][0]


@pytest.mark.parametrize("key_scope", ["read", "send", "manage"])
@pytest.mark.parametrize("path, method, operation_id, needed", list(_scoped_operations()),
                         ids=[f"{o[2]}" for o in _scoped_operations()])
def test_each_scope_may_call_exactly_the_operations_that_name_it(web, scoped, key_scope, path, method, operation_id,
                                                                 needed):
    keys, values = scoped
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    headers = {"Authorization": f"Bearer {keys[key_scope]}"}
    kwargs = {"headers": headers, "timeout": TIMEOUT, "stream": True}
    if operation_id == "uploadMedia":
        kwargs.update(data=b"file", headers={**headers, "Content-Type": "text/plain"})
    elif operation_id in _BODIES:
        kwargs["json"] = _BODIES[operation_id]
    with requests.request(method.upper(), web.url + path, **kwargs) as response:
        if key_scope == needed:
            assert response.status_code != 403, (operation_id, response.status_code)
        else:
            assert response.status_code == 403, (operation_id, response.status_code)
            assert response.json()["error"]["message"] == f"this key lacks the scope {needed!r} (it has: {key_scope})"


def test_a_key_made_with_scopes_lists_them_and_a_key_made_without_has_full_access(web, make_tenant):
    tenant_id, full = make_tenant()
    auth = {"Authorization": f"Bearer {full}"}
    made = requests.post(f"{web.url}/api/v1/api-keys", json={"name": "crm", "scopes": ["send", "read", "send"]},
                         headers=auth, timeout=TIMEOUT).json()
    assert made["scopes"] == ["read", "send"]
    listed = {k["name"]: k["scopes"] for k in requests.get(f"{web.url}/api/v1/api-keys", headers=auth,
                                                           timeout=TIMEOUT).json()["api_keys"]}
    assert listed == {"default": None, "crm": ["read", "send"]}
    crm = {"Authorization": f"Bearer {made['key']}"}
    assert requests.post(f"{web.url}/api/v1/bots", json={"name": "x"}, headers=crm, timeout=TIMEOUT).status_code == 403
    assert requests.post(f"{web.url}/api/v1/bots", json={"name": "x"}, headers=auth, timeout=TIMEOUT).status_code == 201


# -- the docs page ---------------------------------------------------------------------------------


def test_the_api_docs_are_served_from_files_in_the_package(web):
    page = requests.get(f"{web.url}/api/docs", timeout=TIMEOUT)
    assert page.status_code == 200 and page.url.endswith("/api/docs/")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    for source in sources:
        assert requests.get(web.url + source, timeout=TIMEOUT).status_code == 200, source
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_the_dashboard_links_to_the_api_docs(web, shop):
    assert 'href="/api/docs/"' in shop.admin.get("/app/admin/keys").text

"""Errors reach Sentry with the work context as tags: the real sentry-sdk, configured through
``core.sentry.init``, sends to a local ingest server (tests/sentry_ingest.py) on 127.0.0.1."""

from __future__ import annotations

import json
import uuid

import gevent.event
import pytest
import requests
import sentry_sdk
from flask import Blueprint

from actors.base import Actor
from core import config, context, sentry
from tests.fakes import FakeRoot
from tests.sentry_ingest import SentryIngest
from web.auth import require_tenant

blueprint = Blueprint("sentry_test", __name__)


class Boom(RuntimeError):
    pass


@blueprint.get("/sentry-test/boom")
@require_tenant
def _boom():
    raise Boom("boom in a request")


@pytest.fixture
def ingest():
    with SentryIngest() as server:
        yield server


@pytest.fixture
def sentry_on(settings, ingest):
    """Sentry initialised through core.sentry.init at the ingest server; shut down afterwards."""
    settings = config.replace(settings, sentry_dsn=ingest.dsn, environment="sentry-test-env", release="")
    assert sentry.init(settings, "9.8.7") is True
    yield settings
    _shut_down_sentry()


def _shut_down_sentry() -> None:
    """Close the client and forget everything the scopes collected, so later tests see no Sentry."""
    sentry_sdk.get_client().close(timeout=2)
    for scope in (sentry_sdk.get_current_scope(), sentry_sdk.get_isolation_scope(), sentry_sdk.get_global_scope()):
        scope.clear()
    sentry_sdk.get_global_scope().set_client(None)
    assert not sentry_sdk.get_client().is_active()


def _serve(settings, pool):
    return FakeRoot(settings, pool, blueprints=[blueprint]).serve()


def _exception_types(event):
    return [value.get("type") for value in (event.get("exception") or {}).get("values", [])]


def _failing_request(settings, pool, ingest, key, request_id):
    """Send one authenticated request to a route that raises; return the Sentry event it produced."""
    root = _serve(settings, pool)
    try:
        response = requests.get(
            f"{root.url}/api/v1/sentry-test/boom",
            headers={"Authorization": f"Bearer {key}", "X-Request-ID": request_id},
            timeout=5,
        )
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        return ingest.event_where(lambda e: "Boom" in _exception_types(e))
    finally:
        root.close()


def test_an_unhandled_error_in_a_request_reaches_sentry_with_tenant_id_correlation_id_environment_and_release(
    sentry_on, ingest, pool, make_tenant
):
    tenant_id, key = make_tenant()
    request_id = f"req-{uuid.uuid4().hex}"
    event = _failing_request(sentry_on, pool, ingest, key, request_id)
    tags = event.get("tags") or {}
    assert tags.get("correlation_id") == request_id
    assert tags.get("tenant_id") == tenant_id
    assert tags.get("where") == "http"
    assert event.get("environment") == "sentry-test-env"
    assert event.get("release") == "9.8.7"


def test_the_api_key_of_a_failing_request_is_not_sent_to_sentry(sentry_on, ingest, pool, make_tenant):
    _tenant_id, key = make_tenant()
    event = _failing_request(sentry_on, pool, ingest, key, uuid.uuid4().hex)
    assert event["request"]["url"].endswith("/api/v1/sentry-test/boom")
    assert key not in json.dumps(event)


def test_the_release_setting_overrides_the_code_version_in_sentry_events(settings, ingest):
    settings = config.replace(settings, sentry_dsn=ingest.dsn, release="custom-release-1")
    try:
        assert sentry.init(settings, "9.8.7") is True
        with context.bound(correlation_id="release-check"):
            try:
                raise Boom("release check")
            except Boom as exc:
                sentry.capture(exc)
        event = ingest.event_where(lambda e: "Boom" in _exception_types(e))
    finally:
        _shut_down_sentry()
    assert event.get("release") == "custom-release-1"
    assert event["tags"]["correlation_id"] == "release-check"


class Exploder(Actor):
    def __init__(self, handled: gevent.event.Event) -> None:
        super().__init__()
        self.handled = handled

    def on_receive(self, message):
        self.handled.set()
        raise Boom(f"actor failed on {message!r}")


def test_an_unhandled_exception_in_an_actor_reaches_sentry_tagged_with_tenant_bot_and_correlation_id(
    sentry_on, ingest
):
    handled = gevent.event.Event()
    ref = Exploder.start(handled)
    tenant_id, bot_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    with context.bound(correlation_id=correlation_id, tenant_id=tenant_id, bot_id=bot_id):
        ref.tell("explode")
    assert handled.wait(5), "the actor never handled the message"
    event = ingest.event_where(lambda e: "Boom" in _exception_types(e))
    tags = event.get("tags") or {}
    assert tags.get("tenant_id") == tenant_id
    assert tags.get("bot_id") == bot_id
    assert tags.get("correlation_id") == correlation_id
    assert tags.get("actor") == "Exploder"
    assert event.get("environment") == "sentry-test-env"


def test_without_a_dsn_sentry_stays_off_and_capture_is_a_no_op(settings, ingest):
    assert settings.sentry_dsn is None
    assert sentry.init(settings, "1.0") is False
    assert not sentry_sdk.get_client().is_active()
    try:
        raise Boom("nobody hears this")
    except Boom as exc:
        sentry.capture(exc)
    sentry.flush(1)
    assert ingest.envelopes == []


def test_a_database_password_in_an_error_message_is_not_sent_to_sentry(sentry_on, ingest):
    password = f"pw-{uuid.uuid4().hex}"
    try:
        raise Boom(f"cannot connect to postgresql://wabot:{password}@db.internal:5432/wabot")
    except Boom as exc:
        sentry.capture(exc)
    event = ingest.event_where(lambda e: "Boom" in _exception_types(e))
    text = json.dumps(event)
    assert password not in text
    assert "postgresql://wabot:[Filtered]@db.internal:5432/wabot" in text

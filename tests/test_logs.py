"""JSON log lines carry the work context (correlation, tenant and bot ids), so one request or one event
can be followed across actors and through a request with a single filter on ``correlation_id``."""

from __future__ import annotations

import io
import json
import logging
import uuid

import gevent.event
import pytest
import requests
from flask import Blueprint, jsonify

from actors.base import Actor
from core import context, logs
from core.logs import JsonFormatter
from web.auth import require_tenant

log = logging.getLogger("tests.logs")

blueprint = Blueprint("logs_test", __name__)


@blueprint.get("/logs-test/hello")
@require_tenant
def _hello():
    log.info("saying hello")
    log.warning("still saying hello")
    return jsonify({"hello": "world"})


@blueprint.get("/logs-test/boom")
@require_tenant
def _boom():
    log.info("about to fail")
    raise RuntimeError("boom for the logs")


class Collect(logging.Handler):
    """Formats each record with core.logs.JsonFormatter, as the real stderr handler does."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.raw.append(self.format(record))

    @property
    def lines(self) -> list[dict]:
        return [json.loads(text) for text in self.raw]

    def with_msg(self, msg: str) -> list[dict]:
        return [line for line in self.lines if line["msg"] == msg]


@pytest.fixture
def captured():
    handler = Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


# -- lines and the work context ------------------------------------------------------------------


def test_a_log_line_is_one_json_object_with_the_correlation_tenant_and_bot_ids_of_the_work_context(captured):
    with context.bound(correlation_id="corr-1", tenant_id="tenant-1", bot_id="bot-1"):
        log.info("inside the context")
    (line,) = captured.with_msg("inside the context")
    assert line["correlation_id"] == "corr-1"
    assert line["tenant_id"] == "tenant-1"
    assert line["bot_id"] == "bot-1"
    assert line["level"] == "info"
    assert line["logger"] == "tests.logs"
    assert "ts" in line


def test_ids_missing_from_the_work_context_are_left_out_of_the_line(captured):
    with context.bound(correlation_id="corr-only"):
        log.info("partial context")
    log.info("no context")
    (partial,) = captured.with_msg("partial context")
    (bare,) = captured.with_msg("no context")
    assert partial["correlation_id"] == "corr-only"
    assert "tenant_id" not in partial and "bot_id" not in partial
    assert not {"correlation_id", "tenant_id", "bot_id"} & set(bare)


def test_extra_fields_are_in_the_line_and_an_exception_keeps_it_on_one_line(captured):
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed with\na newline", extra={"order": 42, "who": object()})
    (text,) = [raw for raw in captured.raw if "failed with" in raw]
    assert "\n" not in text
    line = json.loads(text)
    assert line["msg"] == "failed with\na newline"
    assert line["order"] == 42
    assert line["who"].startswith("<object object")
    assert "ValueError: bad" in line["exc"]
    assert line["level"] == "error"


def test_an_extra_field_named_like_a_core_field_does_not_replace_it(captured):
    log.warning("real message", extra={"level": "not-a-level", "ts": "yesterday", "logger": "fake"})
    (line,) = captured.with_msg("real message")
    assert (line["level"], line["logger"]) == ("warning", "tests.logs")
    assert line["ts"] != "yesterday"
    assert (line["extra_level"], line["extra_ts"], line["extra_logger"]) == ("not-a-level", "yesterday", "fake")


# -- across actors -------------------------------------------------------------------------------


class Second(Actor):
    def __init__(self, done: gevent.event.Event) -> None:
        super().__init__()
        self.done = done

    def on_receive(self, message):
        log.info("second handled", extra={"item": message})
        if message == "last":
            self.done.set()


class First(Actor):
    def __init__(self, second) -> None:
        super().__init__()
        self.second = second

    def on_receive(self, message):
        log.info("first handled", extra={"item": message})
        self.second.tell(message)


@pytest.fixture
def two_actors():
    done = gevent.event.Event()
    second = Second.start(done)
    first = First.start(second)
    yield first, done
    first.stop(timeout=2)
    second.stop(timeout=2)


def test_one_correlation_id_can_be_followed_across_two_actors(captured, two_actors):
    first, done = two_actors
    correlation_id, tenant_id, bot_id = uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    with context.bound(correlation_id=correlation_id, tenant_id=tenant_id, bot_id=bot_id):
        first.tell("last")
    assert done.wait(5), "the second actor never handled the message"
    followed = [line for line in captured.lines if line.get("correlation_id") == correlation_id]
    assert [line["msg"] for line in followed] == ["first handled", "second handled"]
    for line in followed:
        assert line["tenant_id"] == tenant_id and line["bot_id"] == bot_id


def test_each_message_keeps_the_context_it_was_sent_with_and_none_leaks_into_the_next(captured, two_actors):
    first, done = two_actors
    with context.bound(correlation_id="corr-a", tenant_id="tenant-a"):
        first.tell("a")
    with context.bound(correlation_id="corr-b", bot_id="bot-b"):
        first.tell("b")
    first.tell("last")  # sent with an empty context
    assert done.wait(5)
    by_item = {(line["msg"], line["item"]): line for line in captured.lines if "item" in line}
    for who in ("first handled", "second handled"):
        a, b, last = by_item[(who, "a")], by_item[(who, "b")], by_item[(who, "last")]
        assert (a["correlation_id"], a["tenant_id"]) == ("corr-a", "tenant-a") and "bot_id" not in a
        assert (b["correlation_id"], b["bot_id"]) == ("corr-b", "bot-b") and "tenant_id" not in b
        assert not {"correlation_id", "tenant_id", "bot_id"} & set(last)


# -- through a request ---------------------------------------------------------------------------


@pytest.fixture
def app_url(serve_root):
    return serve_root(blueprints=[blueprint]).url


def test_a_requests_x_request_id_is_the_correlation_id_of_its_log_lines(captured, app_url, make_tenant):
    tenant_id, key = make_tenant()
    request_id = f"logs-{uuid.uuid4().hex}"
    response = requests.get(
        f"{app_url}/api/v1/logs-test/hello",
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": request_id},
        timeout=5,
    )
    assert response.status_code == 200
    lines = captured.with_msg("saying hello") + captured.with_msg("still saying hello")
    assert len(lines) == 2
    for line in lines:
        assert line["correlation_id"] == request_id
        assert line["tenant_id"] == tenant_id


def test_a_request_without_an_id_logs_under_the_id_it_returns(captured, app_url, make_tenant):
    _tenant_id, key = make_tenant()
    response = requests.get(f"{app_url}/api/v1/logs-test/hello", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert response.status_code == 200
    generated = response.headers["X-Request-ID"]
    assert generated
    (line,) = captured.with_msg("saying hello")
    assert line["correlation_id"] == generated


def test_an_unhandled_error_is_logged_with_the_request_id_tenant_and_traceback(captured, app_url, make_tenant):
    tenant_id, key = make_tenant()
    request_id = f"logs-{uuid.uuid4().hex}"
    response = requests.get(
        f"{app_url}/api/v1/logs-test/boom",
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": request_id},
        timeout=5,
    )
    assert response.status_code == 500
    assert response.json()["request_id"] == request_id
    (before,) = captured.with_msg("about to fail")
    (error,) = captured.with_msg("unhandled error in request")
    for line in (before, error):
        assert line["correlation_id"] == request_id
        assert line["tenant_id"] == tenant_id
    assert error["level"] == "error"
    assert "RuntimeError: boom for the logs" in error["exc"]


def test_requests_served_on_one_keep_alive_connection_do_not_share_ids(captured, app_url, make_tenant):
    _tenant_id, key = make_tenant()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {key}"
        first = session.get(f"{app_url}/api/v1/logs-test/hello", headers={"X-Request-ID": "first-id"}, timeout=5)
        second = session.get(f"{app_url}/api/v1/logs-test/hello", timeout=5)
    assert first.headers["X-Request-ID"] == "first-id"
    assert second.headers["X-Request-ID"] not in ("", "first-id")
    ids = [line["correlation_id"] for line in captured.with_msg("saying hello")]
    assert ids == ["first-id", second.headers["X-Request-ID"]]


# -- set-up --------------------------------------------------------------------------------------


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pykka_level = logging.getLogger("pykka").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("pykka").setLevel(pykka_level)


def test_setup_writes_one_json_object_per_line_at_or_above_the_level(restore_root_logging):
    stream = io.StringIO()
    logs.setup("warning", stream)
    with context.bound(correlation_id="setup-check"):
        log.info("too quiet")
        log.warning("loud enough")
        log.error("louder")
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [(line["level"], line["msg"]) for line in lines] == [("warning", "loud enough"), ("error", "louder")]
    assert all(line["correlation_id"] == "setup-check" for line in lines)

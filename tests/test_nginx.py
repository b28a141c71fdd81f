"""The web app behind a real nginx, configured with the blocks docs/operations.md documents, balancing
over two web servers: the API, SSE streams unbuffered and resumed across the two, WebSockets."""

import json
import urllib.request

import pytest

from bench._nginx import Nginx
from db import events as events_db
from tests.sse_client import SSEClient
from tests.test_ws import WS


@pytest.fixture
def proxied(serve_root):
    webs = [serve_root(bus=True, proxy_hops=1) for _ in range(2)]
    proxy = Nginx([w.url.removeprefix("http://") for w in webs])
    yield proxy
    proxy.stop()


def _get(url, key):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def test_the_api_answers_through_the_documented_nginx(proxied, make_tenant):
    tenant_id, key = make_tenant()
    for _ in range(4):  # both upstreams in turn
        status, body = _get(proxied.url + "/api/v1/tenant", key)
        assert status == 200 and body["id"] == tenant_id


def test_an_sse_stream_through_nginx_gets_each_event_at_once(proxied, make_tenant, pool):
    tenant_id, key = make_tenant()
    with SSEClient(proxied.url, key=key) as stream:
        assert stream.status == 200
        stream.wait_comment("connected")
        for n in range(3):
            event_id = events_db.publish(pool, tenant_id, None, "test.proxy", {"n": n})
            stream.wait_event(lambda e, i=event_id: e.id == str(i), 5, f"event {event_id} through nginx")


def test_a_stream_resumed_through_nginx_on_the_other_process_misses_nothing(proxied, make_tenant, pool):
    tenant_id, key = make_tenant()
    with SSEClient(proxied.url, key=key) as first:
        first.wait_comment("connected")
        seen = events_db.publish(pool, tenant_id, None, "test.proxy", {"n": 0})
        first.wait_event(lambda e: e.id == str(seen), 5, "the first event")
    missed = [events_db.publish(pool, tenant_id, None, "test.proxy", {"n": n}) for n in range(1, 4)]
    with SSEClient(proxied.url, key=key, last_event_id=seen) as second:  # round robin: most likely the other upstream
        second.wait_ids(missed, 5, "the missed events, in order")
        live = events_db.publish(pool, tenant_id, None, "test.proxy", {"n": 4})
        second.wait_ids([*missed, live], 5, "then the live one")


def test_a_websocket_through_nginx_upgrades_and_gets_events(proxied, make_tenant, pool):
    tenant_id, key = make_tenant()
    ws = WS(proxied.url, key)
    try:
        assert ws.status == 101, ws.body
        ws.ready()
        event_id = events_db.publish(pool, tenant_id, None, "test.proxy", {"n": 1})
        event = ws.event()
        assert event["id"] == event_id and event["type"] == "test.proxy"
    finally:
        ws.close()

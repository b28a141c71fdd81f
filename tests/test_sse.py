"""``GET /api/v1/events`` over real HTTP on 127.0.0.1, read by a raw-socket SSE client
(tests/sse_client.py): response headers and first bytes, bad input, tenant isolation through every
filter and resume, heartbeats and the clean-up of closed clients, a stalled reader cut off alone,
and a database restart under a live stream."""

from __future__ import annotations

import itertools
import logging
import time
import uuid

import pykka
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from actors.base import actor_of
from actors.subscriber import Subscriber
from db import bots as bots_db
from db import events as events_db
from db import tenants
from tests.sse_client import SSEClient
from tests.waiting import wait_until

TIMEOUT = 5


@pytest.fixture
def make_web(serve_root):
    """Like conftest's ``web``, with changed settings: ``make_web(sse_heartbeat=0.3)``."""
    return lambda **changes: serve_root(bus=True, **changes)


@pytest.fixture
def tenant(pool):
    """A fresh tenant: (tenant id, API key, a bot id)."""
    tenant_id, key = tenants.create_tenant(pool, f"sse-{uuid.uuid4().hex[:8]}")
    bot = bots_db.create(pool, tenant_id, f"bot-{uuid.uuid4().hex[:6]}", {})["id"]
    return tenant_id, key, bot


def bus_entries(web) -> dict:
    return dict(actor_of(web.bus).entries)


def subscriber_urns() -> set[str]:
    return {ref.actor_urn for ref in pykka.ActorRegistry.get_by_class(Subscriber)}


def connect(web, key, **kwargs) -> tuple[SSEClient, str]:
    """Open a stream and return it with its subscriber's actor urn (the bus entry it added)."""
    before = set(bus_entries(web))
    client = SSEClient(web.url, key=key, **kwargs)
    assert client.status == 200, bytes(client.body)
    (urn,) = set(bus_entries(web)) - before
    return client, urn


def metric(web, name: str, **labels: str) -> float | None:
    text = requests.get(web.url + "/metrics", timeout=TIMEOUT).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


# -- the response ------------------------------------------------------------------------------------


def test_a_stream_is_served_as_uncached_unbuffered_event_stream_starting_with_retry(web, tenant):
    _, key, _ = tenant
    with SSEClient(web.url, key=key) as client:
        assert client.status == 200
        assert client.headers["content-type"].split(";")[0].strip() == "text/event-stream"
        assert client.headers["cache-control"] == "no-cache"
        assert client.headers["x-accel-buffering"] == "no"
        client.wait_comment("connected")
        assert bytes(client.body).startswith(f"retry: {web.settings.sse_retry}\n".encode())
        assert client.retries[0].milliseconds == web.settings.sse_retry


# -- bad input ---------------------------------------------------------------------------------------


def error_of(web, key=None, params=None, headers=None, status=400, field=None) -> dict:
    """The JSON error a stream request gets (read with the raw client: a stream that wrongly opens
    fails the status check at once instead of hanging a body read)."""
    with SSEClient(web.url, key=key, params=params, headers=headers) as client:
        assert client.status == status, bytes(client.body[:300])
        assert client.headers["content-type"].startswith("application/json"), client.headers
        body = client.json_body()
    error = body["error"]
    assert error["status"] == status
    if field is not None:
        assert error.get("field") == field, error
    assert client.headers["x-request-id"] == body["request_id"]
    return error


# Header values go out as latin-1 bytes: "\u00b2" is the single byte 0xB2, which the server reads as "²".
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "0x1f", "9" * 20, "\u00b2"])
def test_a_last_event_id_header_that_is_not_an_integer_is_a_400_naming_last_event_id(web, tenant, value):
    _, key, _ = tenant
    error = error_of(web, key, headers={"Last-Event-ID": value}, field="last_event_id")
    assert error["code"] == "invalid_input"


@pytest.mark.parametrize("value", ["abc", "-1", "\u00b2", "\u0661"])
def test_a_last_event_id_query_parameter_that_is_not_an_integer_is_a_400_naming_last_event_id(web, tenant, value):
    _, key, _ = tenant
    error_of(web, key, params={"last_event_id": value}, field="last_event_id")


@pytest.mark.parametrize("bot", ["not-a-uuid", "1", "'; DROP TABLE events; --"])
def test_a_bot_filter_that_is_not_a_bot_id_is_a_400_naming_bot(web, tenant, bot):
    _, key, real_bot = tenant
    error_of(web, key, params=[("bot", f"{real_bot},{bot}")], field="bot")


def test_a_type_filter_with_forbidden_characters_is_a_400_naming_type(web, tenant):
    _, key, _ = tenant
    error_of(web, key, params={"type": "bot.state\nx"}, field="type")


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Basic abc", "Bearer wrong-key"])
def test_a_stream_without_a_valid_api_key_is_a_401_json_error_and_subscribes_nothing(web, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    before = bus_entries(web)
    with SSEClient(web.url, headers=headers) as client:
        assert client.status == 401
        assert client.headers["content-type"].startswith("application/json")
        assert client.headers["www-authenticate"].startswith("Bearer")
        error = client.json_body()["error"]
    assert error["code"] == "unauthorized" and error["status"] == 401
    assert bus_entries(web) == before


# -- tenant isolation --------------------------------------------------------------------------------


def test_a_second_tenant_sees_none_of_the_first_tenants_events_through_any_filter_or_resume(web, pool, tenant):
    a_tenant, a_key, a_bot = tenant
    b_tenant, b_key = tenants.create_tenant(pool, f"sse-b-{uuid.uuid4().hex[:8]}")
    b_bot = bots_db.create(pool, b_tenant, "b-bot", {})["id"]
    filters = {
        "all": [],
        "bot": [("bot", f"{a_bot},{b_bot}")],  # the first tenant's bot named explicitly
        "bot-a-only": [("bot", a_bot)],
        "type": [("type", "bot.state")],
        "prefix": [("type", "bot.*")],
        "type-and-bot": [("type", "bot.*"), ("bot", a_bot)],
    }

    def wanted(flt, bot, type_):
        params = dict(filters[flt])
        if "bot" in params and bot not in params["bot"].split(","):
            return False
        if "type" in params:
            t = params["type"]
            return type_ == t or (t.endswith(".*") and type_.startswith(t[:-1]))
        return True

    live = {name: SSEClient(web.url, key=b_key, params=params) for name, params in filters.items()}
    a_client = SSEClient(web.url, key=a_key)
    clients = list(live.values()) + [a_client]
    try:
        assert all(c.status == 200 for c in clients)
        published = []  # (id, tenant, bot, type)
        plan = [
            (a_tenant, a_bot, "bot.state"),
            (b_tenant, b_bot, "bot.qr"),
            (a_tenant, a_bot, "bot.qr"),
            (a_tenant, None, "bot.state"),
            (b_tenant, None, "tenant.note"),
            (a_tenant, a_bot, "message.in"),
            (b_tenant, b_bot, "message.in"),
            (a_tenant, a_bot, "bot.state"),
            (b_tenant, b_bot, "bot.state"),  # last, and wanted by every filter that wants anything
        ]
        for i, (t, bot, type_) in enumerate(plan):
            event_id = web.publish(t, bot, type_, {"n": i, "tenant": t})
            assert event_id is not None
            published.append((event_id, t, bot, type_))
        last = published[-1][0]

        resumed = {}
        for name, params in filters.items():
            resumed[f"{name}/header"] = SSEClient(web.url, key=b_key, params=params, last_event_id=0)
            resumed[f"{name}/query"] = SSEClient(web.url, key=b_key, params=params + [("last_event_id", "0")])
        clients += list(resumed.values())

        a_ids = [i for i, t, _, _ in published if t == a_tenant]
        a_client.wait_ids(a_ids, what="the first tenant's own events")

        everyone = list(live.items()) + list(resumed.items())
        expected = {
            name: [i for i, t, bot, type_ in published if t == b_tenant and wanted(name.split("/")[0], bot, type_)]
            for name, _ in everyone
        }
        for name, client in everyone:
            if expected[name]:
                client.wait_for(lambda c=client: last in c.ids(), what=f"the last event on {name}")
        # Every event has been dispatched and written by now; streams whose filter only the first
        # tenant's events could pass are checked last.
        for name, client in sorted(everyone, key=lambda item: not expected[item[0]]):
            assert client.ids() == expected[name], name
            assert all(e.json()["bot_id"] in (b_bot, None) for e in client.events), name
            assert all(e.json()["payload"]["tenant"] == b_tenant for e in client.events), name
            assert not client.ended, name
    finally:
        for client in clients:
            client.close()


# -- heartbeats and closed clients -------------------------------------------------------------------


@pytest.mark.slow
def test_heartbeats_arrive_every_sse_heartbeat_on_an_idle_stream(make_web, tenant):
    heartbeat = 0.3
    web = make_web(sse_heartbeat=heartbeat)
    _, key, _ = tenant
    with SSEClient(web.url, key=key) as client:
        client.wait_comment("keepalive", count=6, timeout=6 * heartbeat + 3)
        times = [c.at for c in client.comments if c.text in ("connected", "keepalive")][:7]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(heartbeat * 0.8 <= gap <= heartbeat + 0.25 for gap in gaps), gaps
    assert abs(sum(gaps) / len(gaps) - heartbeat) < 0.08, gaps


@pytest.mark.slow
def test_a_closed_clients_subscriber_and_bus_registration_are_gone_within_two_heartbeats(make_web, tenant):
    heartbeat = 0.3
    web = make_web(sse_heartbeat=heartbeat)
    _, key, _ = tenant
    client, urn = connect(web, key)
    client.wait_comment("keepalive")
    assert urn in subscriber_urns()
    client.close()
    closed_at = time.monotonic()
    wait_until(
        lambda: urn not in bus_entries(web) and urn not in subscriber_urns(),
        2 * heartbeat + 2,
        "the subscriber to go",
    )
    gone_after = time.monotonic() - closed_at
    assert gone_after <= 2 * heartbeat + 0.2, gone_after
    assert metric(web, "stream_disconnects_total", kind="sse", reason="client_closed") == 1
    assert metric(web, "stream_subscribers", kind="sse") == 0


# -- a stalled reader --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stalled_reader_is_cut_off_when_its_mailbox_fills_while_others_get_every_event(make_web, tenant):
    buffer = 20
    web = make_web(sse_buffer=buffer)
    tenant_id, key, bot = tenant
    reader, reader_urn = connect(web, key)
    stalled, stalled_urn = connect(web, key, rcvbuf=2048, read=False)
    blob = "x" * 32768  # a few events fill the kernel's buffers of a connection nobody reads
    published = []
    try:
        for n in range(400):
            event_id = web.publish(tenant_id, bot, "message.in", {"n": n, "blob": blob})
            assert event_id is not None
            published.append(event_id)
            # Let the bus dispatch as we go: a single burst could overflow a mailbox before its
            # writer ever got a chance to block.
            reader.wait_for(lambda: published[-1] in reader.ids(), what=f"event {n} on the reading client")
            if stalled_urn not in bus_entries(web):
                break
        else:
            raise AssertionError("the stalled subscriber was never cut off")
        overflowed_at = len(published)
        assert overflowed_at > buffer, overflowed_at
        for n in range(5):  # the others go on receiving
            published.append(web.publish(tenant_id, bot, "message.in", {"n": n, "after": True}))
        reader.wait_ids(published, what="every event on the reading client")
        assert reader_urn in bus_entries(web)
        assert metric(web, "stream_disconnects_total", kind="sse", reason="overflow") == 1
        assert metric(web, "stream_subscribers", kind="sse") == 1

        # Never reading, it cannot even take the closing notice: its connection goes after the grace.
        grace = actor_of(pykka.ActorRegistry.get_by_urn(stalled_urn)).grace
        wait_until(lambda: stalled_urn not in subscriber_urns(), grace + 3, "the stalled subscriber actor to end")
        stalled.start_reading()
        stalled.wait_ended(timeout=5)
        ids = stalled.ids()
        assert ids == published[: len(ids)], "what the stalled client got is a gapless prefix it can resume after"
        assert len(ids) < overflowed_at
        assert reader_urn in bus_entries(web)
    finally:
        reader.close()
        stalled.close()


# -- a database restart ------------------------------------------------------------------------------


def superuser_scalar(pg, sql: str):
    import psycopg2

    conn = psycopg2.connect(pg.superuser_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def listening_connections(pg) -> int:
    return superuser_scalar(
        pg, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wabot-listen-{events_db.CHANNEL}'"
    )


@pytest.mark.slow
def test_after_a_database_restart_the_stream_catches_up_with_every_event_once_in_order(web, pg, tenant, caplog):
    caplog.set_level(logging.WARNING, logger="db.listen")
    tenant_id, key, bot = tenant
    with SSEClient(web.url, key=key) as client:
        before = [web.publish(tenant_id, bot, "bot.state", {"n": n}) for n in range(5)]
        assert None not in before
        client.wait_ids(before, what="the events before the restart")

        started = superuser_scalar(pg, "SELECT pg_postmaster_start_time()")
        pg.stop_server()
        # Start the server again while the bus's listener waits out a long backoff, so events get
        # published with nobody listening: their notifications are lost, and only the catch-up
        # after the listener reconnects can deliver them.
        wait_until(
            lambda: any(
                getattr(r, "channel", None) == events_db.CHANNEL and getattr(r, "retry_in", 0) >= 1.6
                for r in caplog.records
            ),
            15,
            "the listener to back off for 1.6 s",
        )
        pg.start_server()
        assert superuser_scalar(pg, "SELECT pg_postmaster_start_time()") > started
        after = []
        unheard = 0
        for n in range(5):
            # The pool replaces its broken connections on its own; until then, publishing fails.
            event_id = wait_until(
                lambda n=n: web.publish(tenant_id, bot, "bot.state", {"n": 5 + n}), 20, "a publish after the restart",
                interval=0.05,
            )
            after.append(event_id)
            unheard += listening_connections(pg) == 0
        # The restart ended every earlier backend: a listening connection now can only be this bus's.
        assert unheard, "no event was published while the listener was away: the catch-up went untested"
        client.wait_ids(before + after, timeout=20, what="every event once, in order")
        assert listening_connections(pg) == 1
        assert not client.ended
        # And live delivery goes on as usual.
        more = web.publish(tenant_id, bot, "bot.state", {"n": 10})
        client.wait_ids(before + after + [more], what="a live event after the catch-up")

"""Request limits over real HTTP and the real database: a key past its burst gets 429 while another
tenant is served, reads and writes apart, the burst then the steady rate, one limit shared by two
web apps, a dashboard session, sign-in attempts, the refusal metric, and the SQL deciding exactly as
sansio.rate_limit on the same clock."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from db import accounts
from db import rate_limits as store
from sansio import rate_limit as rl
from tests.conftest import PASSWORD, ApiClient
from tests.dbadmin import superuser_sql
from tests.waiting import wait_until
from web.openapi import RATE_LIMITED_EXAMPLE

TIMEOUT = 10
FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
# A burst of 2 writes, then one a second; reads far apart (their own burst of 3).
LIMITED = {"rate_limit_writes": 60, "rate_limit_writes_burst": 2, "rate_limit_reads": 60, "rate_limit_reads_burst": 3}


def refusals(root, tenant_id, kind):
    return root.metrics.registry.get_sample_value("rate_limit_refusals_total",
                                                  {"tenant": tenant_id, "class": kind}) or 0.0


def create_bot(client):
    return client.post("/bots", json={"name": f"bot-{uuid.uuid4().hex[:6]}"})


@pytest.fixture
def limited(serve_root):
    return serve_root(**LIMITED)


def test_a_key_past_its_burst_gets_429_with_retry_after_while_another_tenants_key_is_served(limited, make_tenant):
    alice, bob = (ApiClient(limited.url, key, tenant) for tenant, key in (make_tenant(), make_tenant()))
    first, second, third = (create_bot(alice) for _ in range(3))
    assert first.status_code == second.status_code == 201
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "1"
    assert third.headers["RateLimit-Policy"] == '"writes";q=60;w=60;wabot-burst=2'
    assert third.headers["RateLimit"] == '"writes";r=0;t=1'
    assert third.json()["error"] == RATE_LIMITED_EXAMPLE  # the example the OpenAPI document shows
    served = create_bot(bob)
    assert served.status_code == 201 and served.headers["RateLimit"].startswith('"writes";r=1;')


def test_a_served_request_carries_the_rate_limit_fields(limited, make_tenant):
    tenant, key = make_tenant()
    answer = ApiClient(limited.url, key, tenant).get("/bots")
    assert answer.status_code == 200
    assert answer.headers["RateLimit-Policy"] == '"reads";q=60;w=60;wabot-burst=3'
    assert answer.headers["RateLimit"] == '"reads";r=2;t=1'
    assert "Retry-After" not in answer.headers


def test_reads_and_writes_are_limited_apart(limited, make_tenant):
    tenant, key = make_tenant()
    client = ApiClient(limited.url, key, tenant)
    assert [create_bot(client).status_code for _ in range(3)] == [201, 201, 429]
    assert [client.get("/bots").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_after_the_burst_requests_pass_at_the_steady_rate(limited, make_tenant):
    tenant, key = make_tenant()
    client = ApiClient(limited.url, key, tenant)
    assert [client.get("/tenant").status_code for _ in range(4)] == [200, 200, 200, 429]
    # Refused requests take nothing: polling finds the next one allowed about a second later ...
    wait_until(lambda: client.get("/tenant").status_code == 200, 5, "the next read at the steady rate",
               interval=0.1)
    # ... and that one took the only token the second gave back.
    assert client.get("/tenant").status_code == 429


def test_two_web_apps_over_one_database_share_one_limit(serve_root, make_tenant):
    one, two = serve_root(**LIMITED), serve_root(**LIMITED)
    tenant, key = make_tenant()
    via_one, via_two = ApiClient(one.url, key, tenant), ApiClient(two.url, key, tenant)
    assert create_bot(via_one).status_code == 201
    assert create_bot(via_two).status_code == 201
    assert create_bot(via_one).status_code == 429
    assert create_bot(via_two).status_code == 429
    assert refusals(one, tenant, "writes") == 1 and refusals(two, tenant, "writes") == 1


def test_the_refusal_metric_counts_for_the_tenant_refused_and_its_class_only(limited, make_tenant):
    (alice_id, alice_key), (bob_id, bob_key) = make_tenant(), make_tenant()
    alice, bob = ApiClient(limited.url, alice_key, alice_id), ApiClient(limited.url, bob_key, bob_id)
    for _ in range(4):
        create_bot(alice)
    create_bot(bob)
    assert refusals(limited, alice_id, "writes") == 2
    assert refusals(limited, alice_id, "reads") == 0
    assert refusals(limited, bob_id, "writes") == 0
    scraped = requests.get(limited.url + "/metrics", timeout=TIMEOUT).text
    assert f'rate_limit_refusals_total{{class="writes",tenant="{alice_id}"}} 2.0' in scraped


def test_a_live_stream_counts_once_when_it_connects(serve_root, make_tenant):
    limited = serve_root(bus=True, **LIMITED)
    tenant, key = make_tenant()
    client = ApiClient(limited.url, key, tenant)
    with client.session.get(limited.url + "/api/v1/events", stream=True, timeout=TIMEOUT) as stream:
        assert stream.status_code == 200 and stream.headers["RateLimit"].startswith('"reads";r=2;')
        assert [client.get("/bots").status_code for _ in range(3)] == [200, 200, 429]


def test_a_websocket_request_past_the_limit_is_refused_before_it_upgrades(limited, make_tenant):
    tenant, key = make_tenant()
    client = ApiClient(limited.url, key, tenant)
    assert client.get("/ws").json()["error"]["code"] == "websocket_required"  # counted: one read
    assert [client.get("/bots").status_code for _ in range(2)] == [200, 200]
    refused = client.get("/ws")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"


def test_health_metrics_and_the_api_document_are_never_limited(limited):
    for _ in range(5):
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
            answer = requests.get(limited.url + path, timeout=TIMEOUT)
            assert answer.status_code == 200 and "RateLimit" not in answer.headers, path


def test_limits_off_send_no_fields_and_refuse_nothing(serve_root, make_tenant):
    off = serve_root(**LIMITED, rate_limit_enabled=False)
    tenant, key = make_tenant()
    client = ApiClient(off.url, key, tenant)
    answers = [create_bot(client) for _ in range(4)]
    assert [a.status_code for a in answers] == [201] * 4
    assert "RateLimit" not in answers[-1].headers


def test_a_dashboard_session_is_limited_and_told_how_long_to_wait(limited, shop):
    member = shop.viewer
    member.base = limited.url
    assert [member.get("/app/inbox").status_code for _ in range(3)] == [200, 200, 200]
    page = member.get("/app/inbox")
    assert page.status_code == 429 and page.headers["Retry-After"] == "1"
    assert "wait 1 second and try again" in page.text
    # What app.js shows a notice for (tests/browser/test_request_limits.py sees it in Chromium).
    fragment = member.get("/app/bots", headers={"HX-Request": "true"})
    assert fragment.status_code == 429 and fragment.headers["Retry-After"] == "1"
    other = shop.admin  # another session of the same tenant has its own limit
    other.base = limited.url
    assert other.get("/app/inbox").status_code == 200


# -- sign-in ---------------------------------------------------------------------------------------


class Visitor:
    def __init__(self, base):
        self.base = base
        self.http = requests.Session()

    def sign_in(self, email, password=PASSWORD):
        page = self.http.get(self.base + "/signin", timeout=TIMEOUT)
        token = FORM_TOKEN.search(page.text).group(1)
        return self.http.post(self.base + "/signin", data={"csrf_token": token, "email": email, "password": password},
                              timeout=TIMEOUT, allow_redirects=False, headers={"Origin": self.base})


@pytest.fixture
def sign_in_limited(serve_root, pg):
    superuser_sql(pg, "DELETE FROM sign_in_limits WHERE key = 'addr:127.0.0.1'")
    yield serve_root(rate_limit_sign_in=60, rate_limit_sign_in_burst=2)
    superuser_sql(pg, "DELETE FROM sign_in_limits WHERE key = 'addr:127.0.0.1'")


def test_sign_in_attempts_past_the_limit_are_refused_even_with_the_right_password(sign_in_limited, shop):
    visitor = Visitor(sign_in_limited.url)
    assert visitor.sign_in(shop.agent.email, "wrong").status_code == 401
    assert visitor.sign_in(shop.agent.email, "wrong again").status_code == 401
    refused = visitor.sign_in(shop.agent.email)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "Too many sign-in attempts. Try again in 1 second." in refused.text
    assert "wabot_session" not in refused.headers.get("Set-Cookie", "")
    assert refusals(sign_in_limited, "", "sign-in") == 1


def test_the_address_limit_refuses_every_email_from_it(sign_in_limited, shop):
    visitor = Visitor(sign_in_limited.url)
    for _ in range(2):
        assert visitor.sign_in(f"nobody-{uuid.uuid4().hex[:6]}@example.test", "guess").status_code == 401
    assert visitor.sign_in(shop.admin.email).status_code == 429


def test_failed_sign_ins_are_still_slowed_under_the_limit(web, shop, pg):
    visitor = Visitor(web.url)
    for _ in range(3):
        assert visitor.sign_in(shop.viewer.email, "wrong password").status_code == 401
    assert "Too many failed sign-ins. Try again in 2 seconds." in visitor.sign_in(shop.viewer.email, "wrong").text
    key = "email:" + accounts.token_hash(shop.viewer.email).hex()
    assert superuser_sql(pg, "SELECT count(*) FROM sign_in_limits WHERE key = %s", (key,)) == [(1,)]


# -- the statement ---------------------------------------------------------------------------------


def test_the_database_decides_exactly_as_the_pure_decision_on_the_same_clock(pool, make_tenant):
    tenant, _key = make_tenant()
    policy = rl.Policy("writes", 7, 3)  # an interval that is no round float
    step = 60 / 7
    now = 1_800_000_000.0
    times = [now, now, now, now, now + step, now + step, now + 2.5 * step, now + 3600, now + 3600, now + 3600,
             now + 3600, now + 3600]
    tat, pure, stored = None, [], []
    for t in times:
        decision = rl.take(policy, tat, t)
        tat = decision.tat
        pure.append(decision)
        stored.append(store.take(pool, tenant, "key:clock-test", policy, clock=t))
    assert [d.allowed for d in stored] == [True, True, True, False, True, False, True, True, True, True, False, False]
    for mine, theirs in zip(pure, stored):
        assert theirs.allowed == mine.allowed and theirs.remaining == mine.remaining
        assert theirs.tat == pytest.approx(mine.tat, abs=1e-6)
        assert theirs.retry_after == pytest.approx(mine.retry_after, abs=1e-6)


@pytest.fixture(scope="module")
def bouncer(pg):
    from bench._pgbouncer import PgBouncer
    from db import embedded

    server = PgBouncer(pg.app_url, (embedded.APP_ROLE,), pool_size=2)
    yield server
    server.stop()


def test_concurrent_requests_through_pgbouncer_in_transaction_mode_take_exactly_the_burst(bouncer, make_tenant):
    import gevent

    from actors.pool import Pool, PoolConfig
    from db import embedded

    through = Pool(PoolConfig(dsn=bouncer.url(embedded.APP_ROLE), size=8, pooled=True))
    try:
        assert through.wait_ready(10), through.stats()["last_connect_error"]
        (alice, _), (bob, _) = make_tenant(), make_tenant()
        policy = rl.Policy("writes", 1, 10)  # a token a minute: nothing refills during the test
        jobs = [gevent.spawn(store.take, through, alice if i % 2 else bob, "key:concurrent", policy)
                for i in range(60)]
        gevent.joinall(jobs, raise_error=True)
        for tenant in (alice, bob):
            allowed = [job.value.allowed for i, job in enumerate(jobs) if (alice if i % 2 else bob) == tenant]
            assert allowed.count(True) == 10 and len(allowed) == 30
    finally:
        through.stop()


def test_a_tenant_sees_and_changes_only_its_own_limit_rows(pool, make_tenant):
    (alice, _), (bob, _) = make_tenant(), make_tenant()
    policy = rl.Policy("reads", 60, 1)
    store.take(pool, alice, "key:shared-name", policy)
    assert store.take(pool, bob, "key:shared-name", policy).allowed  # bob's bucket is his own
    assert pool.query(bob, "SELECT count(*) FROM rate_limits WHERE subject = 'key:shared-name'")[0][0] == 1


def test_idle_rows_are_pruned_and_busy_ones_kept(pool, make_tenant, pg):
    tenant, _ = make_tenant()
    policy = rl.Policy("reads", 60, 5)
    store.take(pool, tenant, "key:idle", policy, clock=1_000_000.0)  # full again long ago
    store.take(pool, tenant, "key:busy", policy)
    store.prune(pool)
    left = superuser_sql(pg, "SELECT subject FROM rate_limits WHERE tenant_id = %s ORDER BY subject", (tenant,))
    assert left == [("key:busy",)]

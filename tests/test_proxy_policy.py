"""The outbound address policy for bot proxies and webhook URLs (issue 16, point 1): refused when saved (API and
dashboard: 400 naming the field and the reason) and again at every connection attempt, after DNS, so
an existing bot with a refused proxy fails to connect with the reason on its row; the operator's
OUTBOUND_ALLOW_PRIVATE allows them all."""

import random
import re

import pytest

from core import outbound
from db import bots as bots_db
from sansio import session_machine as sm
from sansio.backoff import Backoff, BackoffPolicy
from sansio.disconnects import Action, classify
from sansio.outbound_address import AddressRefused, pin_proxy, proxy_target
from simulator.server import Simulator
from tests.conftest import ApiClient
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision
from transports.events import Disconnected, DisconnectKind

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("[::1]", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("[fd12::1]", "private"),
    ("169.254.169.254", "metadata"), ("[fd00:ec2::254]", "metadata"), ("169.254.10.10", "link-local"),
    ("[fe80::1]", "link-local"), ("100.64.0.1", "CGNAT"), ("224.0.0.1", "multicast"), ("[ff02::1]", "multicast"),
    ("0.0.0.0", "unspecified"), ("[::]", "unspecified"), ("[::ffff:127.0.0.1]", "loopback"),
    ("[::ffff:10.1.2.3]", "private"), ("[::ffff:169.254.169.254]", "metadata"), ("240.0.0.1", "reserved"),
]
PUBLIC_PROXY = "socks5://user:secret@93.184.215.14:1080"


# -- the pure parts ------------------------------------------------------------------------------


def test_a_proxy_url_is_pinned_to_the_checked_address_keeping_its_credentials_and_port():
    assert pin_proxy("socks5://u:p@proxy.example", "93.184.215.14") == "socks5://u:p@93.184.215.14:1080"
    assert pin_proxy("http://proxy.example:3128", "2606:4700::1") == "http://[2606:4700::1]:3128"


def test_a_proxy_target_names_its_default_port_per_scheme():
    assert proxy_target("socks5://h") == ("socks5", "h", 1080)
    assert proxy_target("http://h") == ("http", "h", 80)
    assert proxy_target("https://[::1]:8443") == ("https", "::1", 8443)


def test_a_refused_address_fails_the_session_and_waits_for_the_user():
    decision = classify(Disconnected(DisconnectKind.ADDRESS_REFUSED, "proxy 127.0.0.1 is a loopback address"))
    assert decision.action is Action.WAIT_FOR_USER and decision.state == "failed"
    assert "outbound address policy" in decision.reason and "loopback" in decision.reason


def test_a_session_dialing_a_refused_proxy_goes_to_failed_and_schedules_no_retry():
    policy = BackoffPolicy(base=1, cap=10, max_attempts=5, stable_after=5)
    starting = sm.SessionState(backoff=Backoff(policy), state=sm.State.STARTING)
    new, effects = sm.transition(starting, Disconnected(DisconnectKind.ADDRESS_REFUSED, "proxy refused"), 0.0,
                                 random.Random(1))
    assert new.state is sm.State.FAILED and "proxy refused" in new.reason
    assert not [e for e in effects if isinstance(e, (sm.ScheduleRetry, sm.Connect))]


# -- after DNS -----------------------------------------------------------------------------------


def test_a_hostname_that_resolves_to_a_refused_address_is_refused():
    with pytest.raises(AddressRefused, match=r"localhost resolves to .* loopback"):
        outbound.checked_proxy("socks5://localhost:1080", allow_private=False)


def test_a_hostname_that_does_not_resolve_is_unresolved_not_judged():
    with pytest.raises(outbound.Unresolved, match="could not be resolved"):
        outbound.checked_proxy("socks5://nothing-here.invalid:1080", allow_private=False)


def test_with_the_operators_allowance_a_private_proxy_is_pinned_and_allowed():
    assert outbound.checked_proxy("socks5://localhost:1080", allow_private=True) in (
        "socks5://127.0.0.1:1080", "socks5://[::1]:1080")
    assert outbound.checked_proxy({"address": "http://10.0.0.1:3128", "no_media": True}, allow_private=True) == {
        "address": "http://10.0.0.1:3128", "no_media": True}


# -- when saved ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host, why", REFUSED)
def test_creating_a_bot_with_a_proxy_in_a_refused_range_is_a_400_naming_the_field_and_the_reason(alice, host, why):
    response = alice.post("/bots", json={"name": "p", "transport_options": {"proxy": f"socks5://{host}:5432"}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "transport_options.proxy" and why in error["message"]
    assert alice.get("/bots").json()["bots"] == []


@pytest.mark.parametrize("host, why", REFUSED)
def test_a_webhook_url_in_a_refused_range_is_a_400_naming_the_url_by_the_same_policy(alice, host, why):
    response = alice.post("/webhooks", json={"url": f"https://{host}:8443/hook"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "url" and why in error["message"]


def test_a_webhook_url_whose_name_resolves_to_loopback_is_refused(alice):
    response = alice.post("/webhooks", json={"url": "https://localhost/hook"})
    assert response.status_code == 400 and "loopback" in response.json()["error"]["message"]


def test_a_proxy_whose_name_resolves_to_loopback_is_refused(alice):
    response = alice.post("/bots", json={"name": "p", "transport_options": {"proxy": "http://localhost:5432"}})
    assert response.status_code == 400 and "loopback" in response.json()["error"]["message"]


def test_changing_a_bots_proxy_to_the_metadata_service_is_refused_and_keeps_the_old_one(alice):
    bot = alice.post("/bots", json={"name": "p", "transport_options": {"proxy": PUBLIC_PROXY}}).json()
    response = alice.patch(f"/bots/{bot['id']}", json={"transport_options": {"proxy": "http://169.254.169.254:80"}})
    assert response.status_code == 400 and "metadata" in response.json()["error"]["message"]
    assert alice.get(f"/bots/{bot['id']}").json()["transport_options"]["proxy"] == PUBLIC_PROXY


def test_a_public_proxy_is_accepted(alice):
    response = alice.post("/bots", json={"name": "p", "transport_options": {"proxy": PUBLIC_PROXY}})
    assert response.status_code == 201


def test_with_the_operators_allowance_a_private_proxy_and_webhook_are_accepted(serve_root, make_tenant):
    root = serve_root(outbound_allow_private=True, webhooks_allow_http=True)
    tenant_id, key = make_tenant()
    client = ApiClient(root.url, key, tenant_id)
    created = client.post("/bots", json={"name": "p", "transport_options": {"proxy": "socks5://127.0.0.1:5432"}})
    assert created.status_code == 201, created.text
    assert client.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"}).status_code == 201


def test_the_dashboard_shows_a_refused_proxy_next_to_its_field_and_creates_nothing(shop):
    response = shop.admin.post("/app/bots", {"name": "p", "proxy": "socks5://169.254.169.254:1080"})
    assert response.status_code == 400
    assert "proxy 169.254.169.254 is a cloud metadata address" in response.text
    assert re.search(r'class="field invalid">\s*<label for="bot-proxy"', response.text)
    assert shop.api.get("/bots").json()["bots"] == []


# -- when connecting -----------------------------------------------------------------------------


@pytest.fixture
def sim():
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=0) as simulator:
        yield simulator


def test_an_existing_bot_with_a_refused_proxy_fails_to_connect_with_the_reason_on_its_row(pg, tmp_path, sim, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(session_settings(pg, str(tmp_path), sim.address), pool, events):
        bot = new_bot(pool, tenant, proxy="socks5://127.0.0.1:5432")  # saved before the policy existed
        events.wait_state(bot, "failed")
        row = bots_db.get(pool, tenant, bot)
        assert row["state"] == "failed" and "127.0.0.1 is a loopback address" in row["reason"]
        assert row["next_retry_at"] is None


def test_a_proxy_name_that_does_not_resolve_when_connecting_backs_off_as_a_network_fault(pg, tmp_path, sim, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    with supervision(session_settings(pg, str(tmp_path), sim.address), pool, events):
        bot = new_bot(pool, tenant, proxy="socks5://nothing-here.invalid:1080")
        events.wait_state(bot, "backing_off")
        assert "could not be resolved" in bots_db.get(pool, tenant, bot)["reason"]


def test_with_the_operators_allowance_an_existing_bot_with_a_private_proxy_connects(pg, tmp_path, sim, pool):
    events = EventLog()
    tenant = new_tenant(pool)
    settings = session_settings(pg, str(tmp_path), sim.address, OUTBOUND_ALLOW_PRIVATE="true")
    with supervision(settings, pool, events):
        bot = new_bot(pool, tenant, proxy="socks5://127.0.0.1:5432")  # the simulator's transport dials no proxy
        events.wait_state(bot, "pairing")

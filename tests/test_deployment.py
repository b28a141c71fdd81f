"""The whole deployment an operator runs, each part a real server on 127.0.0.1 (bench/_deploy.py):
PostgreSQL, PgBouncer in transaction mode, two web and two supervisor processes over it, nginx in
front, the simulator. A bot is created, paired and answers a customer, and the tenant's stream and
webhook see it, all through nginx and the pooler."""

import json
import signal
import urllib.error
import urllib.request

import pytest

from bench._deploy import Deployment, wait_for
from tests.sse_client import SSEClient
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow


def _call(method, url, key=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        raw = answer.read()
        return json.loads(raw) if raw else None


def _ready(port):
    try:
        return _call("GET", f"http://127.0.0.1:{port}/readyz") is not None
    except OSError:
        return False


def _sim_qr(control_url, bot):
    try:
        return _call("GET", f"{control_url}/bots/{bot}").get("qr")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # the bot has not dialled the simulator yet
            return None
        raise


def test_a_bot_answers_through_nginx_pgbouncer_and_four_processes(tmp_path):
    receiver = Receiver()
    with Deployment(directory=str(tmp_path / "deploy")) as d:
        try:
            tenant, key = d.create_tenant("Corner Bakery")
            api = d.url + "/api/v1"
            bot = _call("POST", api + "/bots", key, {"name": "shop"})["id"]
            _call("PUT", f"{api}/bots/{bot}/rules", key, {"rules": [
                {"match": "keyword", "pattern": "hello", "reply": "Hi there!"}]})
            _call("POST", api + "/webhooks", key, {"url": receiver.url(), "event_types": ["message.*"]})
            with SSEClient(d.url, key=key, params={"type": "message.*"}) as stream:
                stream.wait_comment("connected")
                _call("POST", f"{api}/bots/{bot}/start", key)
                wait_for(lambda: _sim_qr(d.control_url, bot), 30, "a QR on the simulator")
                _call("POST", f"{d.control_url}/bots/{bot}/scan", body={})
                wait_for(lambda: _call("GET", f"{api}/bots/{bot}", key)["state"] == "connected", 30, "connected")
                _call("POST", f"{d.control_url}/bots/{bot}/inbound", body={"from": "4915100000003", "text": "hello"})
                outbox = wait_for(lambda: _call("GET", f"{d.control_url}/bots/{bot}/outbox")["messages"], 30,
                                  "the answer")
                assert [m["text"] for m in outbox] == ["Hi there!"]
                stream.wait_event(lambda e: e.event == "message.out", 15, "message.out on the stream")
                assert [e.event for e in stream.events if e.event.startswith("message.")][:1] == ["message.in"]
            wait_for(lambda: {r.json()["type"] for r in receiver.done} >= {"message.in", "message.out"}, 30,
                     "both webhooks")
            # One web process stopped: nginx sends every request to the other; started again, it serves.
            assert d.signal("web0", signal.SIGTERM) == 0
            for _ in range(4):
                assert _call("GET", api + "/tenant", key)["id"] == tenant
            d.restart("web0")
            wait_for(lambda: _ready(d.web_ports[0]), 30, "web0 ready again")
        except BaseException:
            for name in d.procs:
                print(f"--- {name}\n{d.log(name)[-3000:]}")
            raise
        finally:
            receiver.stop()

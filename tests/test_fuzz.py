"""The API fuzzed with schemathesis (v4) from its own OpenAPI document: every phase, stateful included
(following the document's links: create a bot, then read, change and delete it; send a message, then
read its outbox row; add a webhook endpoint, then test it and replay the test delivery), as tenant A
while tenant B's objects exist, with paths naming A's, B's and made-up ids. No 5xx, no response outside
its own schema, no invalid request accepted, and nothing of tenant B's in any answer
(tests/fuzz_hooks.py).

The streams are left out (they never end; tests/test_sse.py and tests/test_ws.py cover them), and so is
the pair-code request: its answer comes from a running session, and without one it is the documented
504 after the wait (tests/test_bots_api.py covers every outcome).
Bounded for CI: a fixed seed and few examples; docs/operations.md has the command for a long run.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import requests

from db import tenants

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection,no_other_tenants_data")
SEED = "20261202"
MAX_EXAMPLES = "12"


@pytest.fixture
def fuzzed(serve_root):
    """A web app of its own, with an event bus (the stream routes exist, though not fuzzed). The request
    limits count (their fields are checked against the document) but are far from every run's volume."""
    return serve_root(bus=True, rate_limit_reads=1_000_000, rate_limit_reads_burst=100_000,
                      rate_limit_writes=1_000_000, rate_limit_writes_burst=100_000)


def _objects(url: str, key: str, name: str) -> dict[str, str]:
    """A tenant's objects, one of each kind a path can name."""
    auth = {"Authorization": f"Bearer {key}"}
    bot = requests.post(f"{url}/api/v1/bots", json={"name": name}, headers=auth, timeout=10).json()
    sent = requests.post(f"{url}/api/v1/bots/{bot['id']}/messages", json={"to": "4917799887766", "text": "b"},
                         headers=auth, timeout=10).json()
    media = requests.post(f"{url}/api/v1/media", data=b"tenant b", headers={**auth, "Content-Type": "text/plain"},
                          timeout=10).json()
    user = requests.post(f"{url}/api/v1/users", json={"email": f"{name}@example.test"}, headers=auth,
                         timeout=10).json()
    contact = requests.get(f"{url}/api/v1/bots/{bot['id']}/conversations", headers=auth,
                           timeout=10).json()["conversations"][0]["id"]
    # A literal public address: saved without a DNS lookup; no delivery worker runs here to call it.
    webhook = requests.post(f"{url}/api/v1/webhooks", json={"url": "https://93.184.215.14/hook"}, headers=auth,
                            timeout=10).json()
    delivery = requests.post(f"{url}/api/v1/webhooks/{webhook['id']}/test", headers=auth, timeout=10).json()
    return {"bot_id": bot["id"], "outbox_id": sent["outbox_id"], "media_id": media["id"], "user_id": user["id"],
            "contact": contact, "name": bot["name"], "webhook_id": webhook["id"], "delivery_id": delivery["id"]}


def test_schemathesis_finds_no_server_error_schema_break_or_cross_tenant_read(fuzzed, make_tenant, tmp_path):
    a_tenant, key_a = make_tenant()
    b_tenant, key_b = make_tenant()
    own = _objects(fuzzed.url, key_a, "tenant-a-bot")
    own["key_id"] = tenants.create_key(fuzzed.pool, a_tenant, "a's other key")[0]
    foreign = _objects(fuzzed.url, key_b, "tenant-b-secret-bot")
    foreign["key_id"] = tenants.create_key(fuzzed.pool, b_tenant, "b's key")[0]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "WABOT_FUZZ_FOREIGN": json.dumps(foreign),
           "WABOT_FUZZ_OWN": json.dumps(own), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{fuzzed.url}/api/v1/openapi.json",
         "-H", f"Authorization: Bearer {key_a}", "--checks", CHECKS,
         "--phases", "examples,coverage,fuzzing,stateful", "-n", MAX_EXAMPLES, "--seed", SEED,
         "--generation-database", "none", "--exclude-path-regex", "(/events|/ws|/pair-code)$", "--workers", "1",
         "--request-timeout", "20", "--no-color", "--report", "junit", "--report-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,  # its own files go there
    )
    assert done.returncode == 0, done.stdout[-15000:] + done.stderr[-3000:]
    assert "passed" in done.stdout and "Stateful" in done.stdout

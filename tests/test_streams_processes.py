"""Live streams across processes: a client resumes with ``Last-Event-ID`` (or ``last_event_id``) on a
restarted ``python run.py web`` with no gap and no duplicate, and an event published by a
``python run.py supervisor`` process reaches an SSE client of another process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid

import gevent
import pytest

from db import bots as bots_db
from db import events as events_db
from db import tenants
from simulator.server import Simulator
from tests.sse_client import SSEClient

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"listening on (http://\S+)")


class Process:
    """``python run.py <command>`` with its log in a file; ``url`` once a web process listens."""

    def __init__(self, command: str, env: dict[str, str], log_path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - the process's stdout, closed when it is stopped
        full_env = dict(os.environ)
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", command],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE if command in ("web", "all") else self.log,
            stderr=self.log,
        )
        self.url: str | None = None

    def wait_listening(self, timeout: float = 30) -> str:
        with gevent.Timeout(timeout, AssertionError(f"no 'listening on' within {timeout}s: {self.log_tail()}")):
            while True:
                line = self.proc.stdout.readline().decode()
                if not line:
                    raise AssertionError(f"exited before listening ({self.proc.poll()}): {self.log_tail()}")
                match = LISTENING.search(line)
                if match:
                    self.url = match.group(1)
                    return self.url

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode

    def log_tail(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]


def database_env(pg, tmp_path) -> dict[str, str]:
    return {
        "DATABASE_URL": pg.app_url,
        "DATABASE_OWNER_URL": pg.owner_url,
        "DATA_DIR": str(tmp_path),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LOG_LEVEL": "info",
        "SHUTDOWN_TIMEOUT": "5",
    }


def test_a_client_resumes_on_a_restarted_web_process_with_no_gap_and_no_duplicate(pg, pool, tmp_path):
    tenant_id, key = tenants.create_tenant(pool, f"resume-{uuid.uuid4().hex[:8]}")
    bot = bots_db.create(pool, tenant_id, "resume-bot", {})["id"]

    def publish(n: int) -> list[int]:
        return [events_db.publish(pool, tenant_id, bot, "bot.state", {"n": i}) for i in range(n)]

    first = Process("web", database_env(pg, tmp_path), tmp_path / "web1.log")
    try:
        url = first.wait_listening()
        with SSEClient(url, key=key) as client:
            seen = publish(5)
            client.wait_ids(seen, what="the first events")
            assert first.stop() == 0, first.log_tail()
            # A stopping server ends its streams with a last event that says why and where to resume.
            closing = client.wait_event(lambda e: e.event == "stream.closed", what="the closing event")
            assert closing.id is None
            assert closing.json() == {"reason": "server shutting down", "last_event_id": seen[-1]}
            client.wait_ended()
            assert client.ids() == seen
    finally:
        first.stop()

    missed = publish(4)  # while no web process runs
    second = Process("web", database_env(pg, tmp_path), tmp_path / "web2.log")
    try:
        url = second.wait_listening()
        by_header = SSEClient(url, key=key, last_event_id=seen[-1])
        by_query = SSEClient(url, key=key, params={"last_event_id": str(seen[-1])})
        with by_header, by_query:
            assert by_header.status == by_query.status == 200
            live = publish(3)
            for client in (by_header, by_query):
                client.wait_ids(missed + live, what="the missed, then the live events")
                assert [e.json()["payload"]["n"] for e in client.events] == [0, 1, 2, 3, 0, 1, 2]
        assert second.stop() == 0, second.log_tail()
    finally:
        second.stop()


def test_an_event_published_by_a_supervisor_process_reaches_an_sse_client_of_another_process(pg, pool, web, tmp_path):
    tenant_id, key = tenants.create_tenant(pool, f"sup-{uuid.uuid4().hex[:8]}")
    bot = bots_db.create(pool, tenant_id, "sup-bot", {})["id"]
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=0) as sim:
        env = database_env(pg, tmp_path)
        env.update(
            WA_TRANSPORT="simulator",
            WA_SIMULATOR_ADDR=sim.address,
            WA_LEASE_TTL="3",
            WA_RECONNECT_BASE_DELAY="0.2",
            WA_RECONNECT_MAX_DELAY="1",
        )
        supervisor = Process("supervisor", env, tmp_path / "supervisor.log")
        try:
            with SSEClient(web.url, key=key, params=[("bot", bot), ("type", "bot.*")]) as client:
                assert client.status == 200
                bots_db.set_desired(pool, tenant_id, bot, "running")

                def states() -> list[str]:
                    return [e.json()["payload"]["state"] for e in client.events if e.event == "bot.state"]

                client.wait_for(lambda: "pairing" in states(), timeout=20, what=f"pairing; {supervisor.log_tail()}")
                client.wait_for(lambda: sim.bot_state(bot)["qr"], what="a QR on the simulator")
                sim.scan(bot)
                client.wait_for(lambda: "connected" in states(), timeout=15, what="connected")
                assert all(e.json()["bot_id"] == bot for e in client.events)
                ids = client.ids()
                assert ids == sorted(set(ids)), "each event once, in order"
                assert bots_db.get(pool, tenant_id, bot)["supervisor"], "run by the supervisor process"
        finally:
            returncode = supervisor.stop()
    assert returncode == 0, supervisor.log_tail()

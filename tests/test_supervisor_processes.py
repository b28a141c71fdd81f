"""Two supervisor processes (``python run.py supervisor``) on one database: every bot runs exactly
once, and when one process dies the other takes its bots over within WA_LEASE_TTL."""

import datetime
import os
import signal
import subprocess
import sys
import time

import pytest

from db import bots as bots_db
from simulator.server import Simulator
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE_TTL = 3.0


def _lease_end(row) -> datetime.datetime:
    return datetime.datetime.fromisoformat(row["lease_expires_at"])


def _supervisor_process(pg, data_dir, sim_address, log_path):
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg.app_url,
        DATABASE_OWNER_URL=pg.owner_url,
        DATA_DIR=data_dir,
        WA_TRANSPORT="simulator",
        WA_SIMULATOR_ADDR=sim_address,
        WA_LEASE_TTL=str(LEASE_TTL),
        WA_RECONNECT_BASE_DELAY="0.2",
        WA_RECONNECT_MAX_DELAY="1",
        LOG_LEVEL="info",
    )
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child as its stdout and stderr
    return subprocess.Popen([sys.executable, "run.py", "supervisor"], cwd=ROOT, env=env, stdout=log, stderr=log)


def test_two_supervisor_processes_run_every_bot_once_and_take_over_a_dead_ones_bots(pg, tmp_path, pool):
    with Simulator("127.0.0.1", 0, False, qr_rotate=0.5, receipt_delay=0) as sim:
        settings = session_settings(pg, str(tmp_path), sim.address)
        tenant = new_tenant(pool)
        events = EventLog()
        # Pair the bots once in this process, then hand them to the two supervisor processes.
        with supervision(settings, pool, events):
            bot_ids = [new_bot(pool, tenant) for _ in range(8)]
            for bot in bot_ids:
                events.wait_state(bot, "pairing")
                events.wait_for(lambda b=bot: sim.bot_state(b)["qr"], what="a QR on the simulator")
                sim.scan(bot)
            for bot in bot_ids:
                events.wait_state(bot, "connected")

        def rows():
            return {b: bots_db.get(pool, tenant, b) for b in bot_ids}

        procs = [
            _supervisor_process(pg, str(tmp_path), sim.address, tmp_path / f"sup{i}.log") for i in range(2)
        ]
        try:
            wait_until(
                lambda: all(r["state"] == "connected" and r["supervisor"] for r in rows().values()),
                30,
                "every bot connected under a supervisor process",
                interval=0.1,
            )
            # The first process may have claimed everything before the second joined; it hands the
            # excess back within a few lease rounds.
            def balanced():
                current = rows().values()
                owners = {r["supervisor"] for r in current}
                return owners if len(owners) == 2 and all(r["state"] == "connected" for r in current) else None

            owners = wait_until(balanced, 30, "both processes to hold bots", interval=0.1)
            # Exactly once: a second driver of one number would be seen by the network as a
            # replacement and end the first; over several lease rounds nothing is replaced. Leases
            # are renewed every sixth of the TTL: once every lease ends a TTL later than it did, a
            # TTL of rounds has passed (about six).
            first_ends = {b: _lease_end(r) for b, r in rows().items()}
            wait_until(
                lambda: all(_lease_end(r) >= first_ends[b] + datetime.timedelta(seconds=LEASE_TTL)
                            for b, r in rows().items() if r["lease_expires_at"]),
                LEASE_TTL + 10, "a TTL's worth of lease rounds", interval=0.1,
            )
            snapshot = rows()
            assert all(r["state"] == "connected" for r in snapshot.values())
            assert all(sim.bot_state(b)["connected"] for b in bot_ids)
            assert {r["supervisor"] for r in snapshot.values()} == owners

            victim_owner = next(iter(owners))
            victim = next(p for p in procs if f":{p.pid}:" in victim_owner)
            survivor_owner = (owners - {victim_owner}).pop()
            victims_bots = [b for b, r in snapshot.items() if r["supervisor"] == victim_owner]
            assert victims_bots
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed_at = time.monotonic()
            wait_until(
                lambda: all(r["supervisor"] == survivor_owner for r in rows().values()),
                LEASE_TTL + 2,
                "the survivor to hold every bot",
                interval=0.1,
            )
            taken_over_after = time.monotonic() - killed_at
            assert taken_over_after <= LEASE_TTL + 0.5, taken_over_after
            wait_until(
                lambda: all(r["state"] == "connected" for r in rows().values())
                and all(sim.bot_state(b)["connected"] for b in bot_ids),
                15,
                "the taken-over bots to reconnect without a new pairing",
                interval=0.1,
            )
            assert not any(sim.bot_state(b)["qr"] for b in victims_bots)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        survivor = next(p for p in procs if p is not victim)
        assert survivor.returncode == 0, (tmp_path / "sup0.log").read_text()[-3000:]
        # A clean stop releases its leases at once.
        assert all(r["supervisor"] is None for r in rows().values())


def test_a_supervisor_process_with_a_health_port_serves_health_and_metrics_and_nothing_else(pg, tmp_path):
    import requests

    from bench._servers import free_port

    port = free_port()
    env = dict(os.environ, DATABASE_URL=pg.app_url, DATABASE_OWNER_URL=pg.owner_url, DATA_DIR=str(tmp_path),
               WA_TRANSPORT="simulator", WA_SIMULATOR_ADDR="127.0.0.1:9", HEALTH_PORT=str(port))
    with open(tmp_path / "sup.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "run.py", "supervisor"], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        try:
            return requests.get(base + path, timeout=2)
        except requests.ConnectionError:
            return None

    try:
        wait_until(lambda: get("/healthz") is not None, 30, "the health port", interval=0.1)
        assert get("/healthz").json() == {"status": "ok"}
        assert get("/readyz").json() == {"status": "ready"}
        metrics = get("/metrics").text
        assert "process_greenlets " in metrics and "process_os_threads " in metrics and "db_pool_size " in metrics
        assert get("/api/v1/bots").status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (tmp_path / "sup.log").read_text()

"""Webhooks across real supervisor processes (``python run.py supervisor``): a delivery survives a
SIGKILL of the process sending it, and two processes share the work without sending a delivery twice
at once."""

import os
import signal
import subprocess
import sys

import pytest

from tests.waiting import wait_until
from tests.webhook_harness import clear_webhooks, deliveries, inbound, new_bot, new_endpoint, new_tenant
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_other_endpoints(pg):
    clear_webhooks(pg.owner_url)
    yield
    clear_webhooks(pg.owner_url)


def _supervisor(pg, data_dir, log_path, **env_changes):
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg.app_url,
        DATABASE_OWNER_URL=pg.owner_url,
        DATA_DIR=data_dir,
        WA_TRANSPORT="simulator",
        WA_SIMULATOR_ADDR="127.0.0.1:1",  # no bots run here: only the webhook dispatcher works
        WEBHOOKS_ALLOW_HTTP="true",
        WEBHOOKS_ALLOW_PRIVATE="true",
        LOG_LEVEL="info",
    )
    env["WEBHOOK_TIMEOUT"] = "1"
    env.update(env_changes)
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child as its stdout and stderr
    return subprocess.Popen([sys.executable, "run.py", "supervisor"], cwd=ROOT, env=env, stdout=log, stderr=log)


def _end(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_delivery_in_flight_when_its_process_is_killed_reaches_the_receiver_after_a_restart(pg, pool, tmp_path):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receiver = Receiver()
    receiver.hang = True  # the first request is held until the process that sent it is dead
    endpoint, _ = new_endpoint(pool, tenant, receiver.url())
    # A timeout well above the moments between the request's arrival and the kill: the attempt is in
    # flight when the process dies (its lease, 2 x 3 + 2 s, then expires for the second process).
    first = _supervisor(pg, str(tmp_path), tmp_path / "first.log", WEBHOOK_TIMEOUT="3")
    try:
        message = inbound(pool, tenant, bot)
        wait_until(lambda: receiver.requests, 30, "the first attempt at the receiver")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        _end(first)
    receiver.release()
    [row] = deliveries(pool, tenant, endpoint)
    assert row["state"] == "delivering"  # leased by the dead process, nothing recorded
    second = _supervisor(pg, str(tmp_path), tmp_path / "second.log", WEBHOOK_TIMEOUT="3")
    try:
        wait_until(lambda: deliveries(pool, tenant, endpoint)[0]["state"] == "delivered", 30,
                   "the delivery after the restart (once the dead process's lease expired)")
    finally:
        _end(second)
    assert set(receiver.ids()) == {row["id"]}  # one webhook-id, whatever the attempts
    assert len(receiver.requests) == 2
    assert receiver.requests[-1].json()["data"]["message_id"] == message
    receiver.stop()


def test_two_supervisor_processes_send_every_delivery_and_none_at_the_same_time(pg, pool, tmp_path):
    tenant = new_tenant(pool)
    bot = new_bot(pool, tenant)
    receivers = [Receiver() for _ in range(3)]
    endpoints = [new_endpoint(pool, tenant, r.url())[0] for r in receivers]
    procs = [_supervisor(pg, str(tmp_path), tmp_path / f"sup{i}.log") for i in range(2)]
    try:
        for i in range(150):
            inbound(pool, tenant, bot, f"message {i}")
        wait_until(lambda: all(d["state"] == "delivered" for e in endpoints for d in deliveries(pool, tenant, e)),
                   60, "every delivery delivered", interval=0.2)
    finally:
        for proc in procs:
            _end(proc)
    for receiver, endpoint in zip(receivers, endpoints):
        ids = receiver.ids()
        assert sorted(ids) == sorted(d["id"] for d in deliveries(pool, tenant, endpoint))
        assert len(ids) == len(set(ids)) == 150
        assert receiver.concurrent_ids == [] and receiver.max_in_flight <= 4
        receiver.stop()
    assert all(proc.returncode == 0 for proc in procs)

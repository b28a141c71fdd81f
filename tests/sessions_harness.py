"""Test harness for bot sessions: an embedded simulator, a supervision root over the shared database,
and an event log the tests wait on (published events, not sleeps)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

from actors.supervision import Supervision
from core import config
from db import bots as bots_db
from db import tenants
from tests.fakes import FakeRoot
from tests.waiting import wait_until


class EventLog:
    """Collects published events; ``wait_for`` waits until a condition holds (or the timeout), and its
    failure shows the last events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str, dict]] = []

    def publish(self, tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> None:
        self.events.append((tenant_id, bot_id, event_type, dict(payload)))

    def states(self, bot_id: str) -> list[str]:
        return [p["state"] for _, b, t, p in self.events if b == bot_id and t == "bot.state"]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what, detail=lambda: f"events: {self.events[-12:]}")

    def wait_state(self, bot_id: str, state: str, timeout: float = 10.0, after: int = 0) -> None:
        self.wait_for(lambda: state in self.states(bot_id)[after:], timeout, f"{bot_id} to reach {state}")


def session_settings(pg: Any, data_dir: str, sim_address: str, **extra: str) -> Any:
    env = {
        "DATABASE_URL": pg.app_url,
        "DATABASE_OWNER_URL": pg.owner_url,
        "DATA_DIR": data_dir,
        "WA_TRANSPORT": "simulator",
        "WA_SIMULATOR_ADDR": sim_address,
        "WA_RECONNECT_BASE_DELAY": "0.2",
        "WA_RECONNECT_MAX_DELAY": "1",
        "WA_RECONNECT_MAX_ATTEMPTS": "5",
        "WA_RECONNECT_STABLE_AFTER": "2",
        "WA_LEASE_TTL": "3",
        "WA_CONNECT_RATE": "50",
    }
    env.update(extra)
    return config.load(env)


@contextlib.contextmanager
def supervision(settings: Any, pool: Any, log: EventLog, **kwargs: Any):
    root = FakeRoot(settings, pool, publish=log.publish)
    sup = Supervision(root, listen_dsn=settings.database_url, **kwargs)
    try:
        yield sup
    finally:
        sup.stop()


def new_tenant(pool: Any) -> str:
    tenant_id, _ = tenants.create_tenant(pool, f"t-{uuid.uuid4().hex[:6]}")
    return tenant_id


def new_bot(pool: Any, tenant_id: str, running: bool = True, **options: Any) -> str:
    bot = bots_db.create(pool, tenant_id, f"bot-{uuid.uuid4().hex[:6]}", options)
    if running:
        bots_db.set_desired(pool, tenant_id, bot["id"], "running")
    return bot["id"]

"""What the webhook tests share: endpoints and facts written straight to the database (a fact is a
committed row, as the pipeline writes it), and a dispatcher on a fake or real clock."""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from typing import Any

from actors.base import actor_of
from actors.timers import ManualTimers
from actors.webhooks import WebhookDeps, WebhookDispatcher
from core import config
from db import bots as bots_db
from db import tenants
from sansio import webhook_dispatch as wd
from sansio import webhooks


def new_tenant(pool: Any) -> str:
    return tenants.create_tenant(pool, f"t-{uuid.uuid4().hex[:6]}")[0]


def new_bot(pool: Any, tenant_id: str) -> str:
    return bots_db.create(pool, tenant_id, f"bot-{uuid.uuid4().hex[:6]}", {})["id"]


def new_endpoint(pool: Any, tenant_id: str, url: str, *, types: tuple[str, ...] = (), bots: list[str] | None = None,
                 secret: str | None = None) -> tuple[str, str]:
    """(endpoint id, secret)."""
    secret = secret or webhooks.new_secret()
    rows = pool.query(tenant_id, "INSERT INTO webhook_endpoints (url, secret, event_types, bot_ids)"
                      " VALUES (%s, %s, %s::text[], %s::uuid[]) RETURNING id", (url, secret, list(types), bots))
    return str(rows[0][0]), secret


def inbound(pool: Any, tenant_id: str, bot_id: str, text: str = "hello",
            jid: str = "4915100000001@s.whatsapp.net") -> str:
    """Commit an inbound message as the pipeline does (contact upsert, message insert); its id."""
    rows = pool.query(
        tenant_id,
        "WITH c AS (INSERT INTO contacts (bot_id, jid) VALUES (%s, %s)"
        " ON CONFLICT (bot_id, jid) DO UPDATE SET last_message_at = now() RETURNING id)"
        " INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, body)"
        " SELECT %s, c.id, 'in', %s, %s FROM c RETURNING id",
        (bot_id, jid, bot_id, uuid.uuid4().hex, text),
    )
    return str(rows[0][0])


def deliveries(pool: Any, tenant_id: str, endpoint_id: str) -> list[dict]:
    rows = pool.query(tenant_id, "SELECT id, state, attempts, next_attempt_at, last_status, last_error, type"
                      " FROM webhook_deliveries WHERE endpoint_id = %s ORDER BY created_at, id", (endpoint_id,))
    keys = ("id", "state", "attempts", "next_attempt_at", "last_status", "last_error", "type")
    return [dict(zip(keys, r)) for r in rows]


def attempts(pool: Any, tenant_id: str, delivery_id: str) -> list[dict]:
    rows = pool.query(tenant_id, "SELECT attempted_at, status_code, error, duration_ms, response_head"
                      " FROM webhook_attempts WHERE delivery_id = %s ORDER BY id", (delivery_id,))
    keys = ("attempted_at", "status_code", "error", "duration_ms", "response_head")
    return [dict(zip(keys, r)) for r in rows]


class Published:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str, dict]] = []

    def __call__(self, tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> None:
        self.events.append((tenant_id, bot_id, event_type, payload))


@contextlib.contextmanager
def dispatcher(settings: Any, pool: Any, *, fake_clock: bool = False, owner: str | None = None,
               listen: bool = False, metrics: Any = None, listen_dsn: str | None = None, poll: float | None = None,
               **changes: Any):
    """A running dispatcher (``WEBHOOKS_ALLOW_HTTP`` and ``WEBHOOKS_ALLOW_PRIVATE`` on unless changed);
    yields ``(actor, published, timers)`` (timers None on the real clock)."""
    changes = {"webhooks_allow_http": True, "webhooks_allow_private": True, **changes}
    settings = config.replace(settings, **changes)
    published = Published()
    timers = ManualTimers(start=time.time()) if fake_clock else None
    extra: dict[str, Any] = {"clock": timers.now, "timers": timers} if timers is not None else {}
    deps = WebhookDeps(settings=settings, pool=pool, owner=owner or f"test-{uuid.uuid4().hex[:6]}", publish=published,
                       listen_dsn=listen_dsn or (pool.config.dsn if listen else None), rng=random.Random(7),
                       dispatch=wd.Settings(poll=poll or (0.05 if not fake_clock else 1.0)), metrics=metrics, **extra)
    ref = WebhookDispatcher.start(deps)
    try:
        yield actor_of(ref), published, timers
    finally:
        ref.stop(timeout=10)


def clear_webhooks(owner_url: str) -> None:
    """Remove every endpoint (and so every delivery): a dispatcher claims across tenants, so one test's
    leftovers would be another's traffic."""
    import psycopg2

    conn = psycopg2.connect(owner_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM webhook_endpoints")
    finally:
        conn.close()

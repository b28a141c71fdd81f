"""Event ids never come back after a crash (migration 0015, found by the soak): notices are written
without waiting for the flush, so an immediate stop can lose the last ones and the sequence's advance
with them; the ids jump ahead after every server restart, so a lost id a subscriber saw live is never
handed out again."""

import pytest

from db import events as events_db
from tests.sessions_harness import new_tenant
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _publish(pool, tenant, kind):
    def attempt():
        try:
            return events_db.publish_many(pool, tenant, [(None, kind, {})])[0]
        except Exception:  # noqa: BLE001 - the server is coming back; the pool reconnects
            return None

    return wait_until(attempt, 30, "a publish after the restart", interval=0.1)


def test_event_ids_jump_ahead_after_a_server_restart_and_not_otherwise(pg, pool):
    tenant = new_tenant(pool)
    first = _publish(pool, tenant, "test.before")
    assert _publish(pool, tenant, "test.next") == first + 1  # no restart: no jump
    pg.restart_server("immediate")
    after = _publish(pool, tenant, "test.after")
    assert after > first + 1_000_000
    assert _publish(pool, tenant, "test.after.next") == after + 1


def test_the_application_role_cannot_change_the_restart_marker(pool):
    import psycopg2

    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        pool.execute(None, "UPDATE event_id_epoch SET server_started_at = now()")

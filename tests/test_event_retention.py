"""The event log's retention against the real PostgreSQL: ``db.events.prune`` removes what is older
than the retention and nothing newer (the range is found through a BRIN index on created_at)."""

import psycopg2

from db import events as events_db
from tests.sessions_harness import new_tenant


def test_pruning_removes_the_events_older_than_the_retention_and_keeps_the_rest(pg, pool):
    tenant = new_tenant(pool)
    ids = events_db.publish_many(pool, tenant, [(None, "test.old", {"n": 1}), (None, "test.old", {"n": 2}),
                                                (None, "test.new", {"n": 3})])
    owner = psycopg2.connect(pg.owner_url)
    try:
        with owner, owner.cursor() as cur:  # row-level security binds the owner too: as the tenant
            cur.execute("SELECT set_config('app.current_tenant', %s, true)", (tenant,))
            cur.execute("UPDATE events SET created_at = now() - interval '2 hours' WHERE id = ANY(%s)", (ids[:2],))
    finally:
        owner.close()
    assert events_db.prune(pool, 3600) >= 2
    left = events_db.for_tenant(pool, tenant, 0, 2**62, None, None)
    assert [e.type for e in left] == ["test.new"]

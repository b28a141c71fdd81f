-- The outbox's index on (tenant_id, state) goes the way of migration 0007's tenant-only indexes.
--
-- Row-level security adds `tenant_id = current_tenant()` to every statement. For a tenant whose
-- rows arrived after the table was last analysed (a new tenant, or one growing fast) the statistics
-- put that tenant's share at about one row, so the planner led with this index and joined by
-- scanning every outbox row of the tenant: marking five rows sent read 7,700 rows and took 13 ms at
-- 300 messages/s (bench/pipeline.py, with perf), growing with the table. Marking rows sent looks
-- them up by id; claiming due rows uses outbox_due_idx.
DROP INDEX outbox_tenant_idx;

-- Listing a state (the dead letters, newest first) and the outbox depth and age per state. State
-- leads, so no statement that names rows by id or bot can be planned through it.
CREATE INDEX outbox_state_idx ON outbox (state, created_at);

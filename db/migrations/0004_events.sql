-- The event log behind live streams.
--
-- Events are inserted by the app role under the tenant's RLS (db/events.py) while holding a
-- transaction-level advisory lock, so ids commit in id order: a reader that has seen id N has seen
-- every event below N. Each process's dispatcher reads new events across tenants through
-- events_after(), which runs as the owner; subscribers only ever get their own tenant's events.

CREATE POLICY owner_fanout ON events FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_prune ON events FOR DELETE TO CURRENT_USER USING (true);

CREATE FUNCTION events_after(after_id bigint, max_rows integer)
    RETURNS TABLE (id bigint, tenant_id uuid, bot_id uuid, type text, payload jsonb, created_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT e.id, e.tenant_id, e.bot_id, e.type, e.payload, e.created_at FROM events e
         WHERE e.id > after_id ORDER BY e.id LIMIT max_rows
    $$;

CREATE FUNCTION events_high_water() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT coalesce(max(id), 0) FROM events $$;

CREATE FUNCTION prune_events(keep_seconds double precision) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH gone AS (
            DELETE FROM events WHERE created_at < now() - make_interval(secs => keep_seconds) RETURNING 1
        )
        SELECT count(*) FROM gone
    $$;

REVOKE ALL ON FUNCTION events_after(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION events_high_water() FROM PUBLIC;
REVOKE ALL ON FUNCTION prune_events(double precision) FROM PUBLIC;

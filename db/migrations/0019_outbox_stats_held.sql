-- Tenant quotas (issue 16): the outbox metrics (outbox_messages, outbox_oldest_seconds) count the
-- bots' answers held by the daily message quota too, so an operator sees answers waiting and for
-- how long. Same signature, owner and grants as in 0005; only the states counted change.
CREATE OR REPLACE FUNCTION outbox_stats()
    RETURNS TABLE (state text, messages bigint, oldest_seconds double precision)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT o.state, count(*), coalesce(extract(epoch FROM now() - min(o.created_at)), 0)
          FROM outbox o WHERE o.state IN ('pending', 'sending', 'dead', 'held') GROUP BY o.state
    $$;
REVOKE ALL ON FUNCTION outbox_stats() FROM PUBLIC;

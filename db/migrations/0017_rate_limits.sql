-- Request limits (issue 16): GCRA state per API key or dashboard session and request class, and per
-- sign-in email and client address, shared by every web process.
--
-- A row holds the subject's "theoretical arrival time" (tat, epoch seconds: when its bucket is full
-- again). One statement per request moves it (sansio/rate_limit.py has the same arithmetic and the
-- reasoning); a refused request leaves it as it was and records that it was refused. A row whose tat
-- is in the past is a full bucket, the same as no row: prune_rate_limits() deletes such rows.
-- No session state anywhere, so it works through PgBouncer in transaction mode.

CREATE TABLE rate_limits (
    tenant_id  uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    -- 'key:<first 32 hex digits of the key's SHA-256>' or 'session:<web session id>'
    subject    text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    kind       text NOT NULL CHECK (kind IN ('reads', 'writes')),
    tat        double precision NOT NULL,
    allowed    boolean NOT NULL,          -- the last request's outcome
    decided_at double precision NOT NULL, -- the clock that request was decided at
    PRIMARY KEY (tenant_id, subject, kind)
) WITH (fillfactor = 70);  -- every request updates its row: room for HOT updates (no index on tat)

ALTER TABLE rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rate_limits
    USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());
-- prune_rate_limits() (the owner's) deletes idle rows of every tenant.
CREATE POLICY owner_rate_limits ON rate_limits TO CURRENT_USER USING (true) WITH CHECK (true);

-- Sign-in attempts per email tried and per client address: no tenant is known yet, so, like
-- sign_in_failures, reached only through the owner's function below.
CREATE TABLE sign_in_limits (
    key        text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 200),
    tat        double precision NOT NULL,
    allowed    boolean NOT NULL,
    decided_at double precision NOT NULL
) WITH (fillfactor = 70);
ALTER TABLE sign_in_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE sign_in_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON sign_in_limits TO CURRENT_USER USING (true) WITH CHECK (true);

-- One GCRA step (sansio.rate_limit.take): the state after a request at `clock`, or NULL when the
-- request is refused. `step` is the emission interval (60 / per minute), `room` the tolerance
-- (burst x step); 1e-6 is sansio.rate_limit.EPSILON.
CREATE FUNCTION rate_limit_after(state double precision, clock double precision, step double precision,
                                 room double precision)
    RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT CASE WHEN greatest(coalesce(state, clock), clock) + step - clock <= room + 1e-6
                    THEN greatest(coalesce(state, clock), clock) + step END
    $$;

-- A request of the current tenant's `who` in class `what`: (allowed, the state after it, the clock it
-- was decided at). `clock` NULL: the database's now() (one clock for every web process); tests pass
-- their own.
CREATE FUNCTION rate_limit_take(who text, what text, step double precision, room double precision,
                                clock double precision DEFAULT NULL)
    RETURNS TABLE (allowed boolean, tat double precision, decided_at double precision)
    LANGUAGE sql VOLATILE
    AS $$
        INSERT INTO rate_limits AS r (subject, kind, tat, allowed, decided_at)
        SELECT who, what, rate_limit_after(NULL, c.at, step, room), true, c.at
          FROM (SELECT coalesce(clock, extract(epoch FROM now())::double precision) AS at) c
        ON CONFLICT (tenant_id, subject, kind) DO UPDATE SET
            allowed = rate_limit_after(r.tat, EXCLUDED.decided_at, step, room) IS NOT NULL,
            tat = coalesce(rate_limit_after(r.tat, EXCLUDED.decided_at, step, room), r.tat),
            decided_at = EXCLUDED.decided_at
        RETURNING r.allowed, r.tat, r.decided_at
    $$;

-- A sign-in attempt for each of `keys` ('email:<hash>', 'addr:<address>'), each decided on its own.
CREATE FUNCTION sign_in_limit_take(keys text[], step double precision, room double precision,
                                   clock double precision DEFAULT NULL)
    RETURNS TABLE (key text, allowed boolean, tat double precision, decided_at double precision)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        INSERT INTO sign_in_limits AS l (key, tat, allowed, decided_at)
        SELECT DISTINCT k.key, rate_limit_after(NULL, c.at, step, room), true, c.at
          FROM unnest(keys) AS k(key),
               (SELECT coalesce(clock, extract(epoch FROM now())::double precision) AS at) c
        ON CONFLICT (key) DO UPDATE SET
            allowed = rate_limit_after(l.tat, EXCLUDED.decided_at, step, room) IS NOT NULL,
            tat = coalesce(rate_limit_after(l.tat, EXCLUDED.decided_at, step, room), l.tat),
            decided_at = EXCLUDED.decided_at
        RETURNING l.key, l.allowed, l.tat, l.decided_at
    $$;

-- Rows whose bucket has been full again for `idle_seconds`: gone (no row means the same).
CREATE FUNCTION prune_rate_limits(idle_seconds double precision) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH cutoff AS (SELECT extract(epoch FROM now())::double precision - idle_seconds AS at),
             keys AS (DELETE FROM rate_limits WHERE tat < (SELECT at FROM cutoff) RETURNING 1),
             sign_ins AS (DELETE FROM sign_in_limits WHERE tat < (SELECT at FROM cutoff) RETURNING 1)
        SELECT (SELECT count(*) FROM keys) + (SELECT count(*) FROM sign_ins)
    $$;

REVOKE ALL ON FUNCTION sign_in_limit_take(text[], double precision, double precision, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION prune_rate_limits(double precision) FROM PUBLIC;

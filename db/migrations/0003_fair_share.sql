-- Supervisor processes share the running bots fairly.
--
-- Each supervisor heartbeats a row here on every lease round. A round claims free bots only up to
-- the supervisor's fair share (running bots / live supervisors, rounded up) and returns that share,
-- so a supervisor holding more — say it started first and took everything — hands the excess back
-- and a newly started process picks it up.

CREATE TABLE supervisors (
    owner       text PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
-- Not tenant data: only the lease functions (running as the owner) touch it.
REVOKE ALL ON supervisors FROM PUBLIC;

DROP FUNCTION lease_bots(text, double precision, integer);

CREATE FUNCTION lease_bots(owner text, ttl_seconds double precision, max_new integer)
    RETURNS TABLE (bot_id uuid, tenant_id uuid, desired_state text, fair_share integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        live integer;
        total integer;
        share integer;
        mine integer;
    BEGIN
        INSERT INTO supervisors AS s (owner, expires_at)
             VALUES (owner, now() + make_interval(secs => ttl_seconds))
        ON CONFLICT ON CONSTRAINT supervisors_pkey DO UPDATE SET expires_at = excluded.expires_at;
        DELETE FROM supervisors s WHERE s.expires_at < now() - interval '1 hour';
        SELECT count(*) INTO live FROM supervisors s WHERE s.expires_at > now();
        SELECT count(*) INTO total FROM bots b WHERE b.desired_state = 'running';
        share := ceil(total::numeric / greatest(live, 1));

        UPDATE bots b SET lease_expires_at = now() + make_interval(secs => ttl_seconds)
         WHERE b.lease_owner = owner AND b.lease_expires_at > now();
        SELECT count(*) INTO mine FROM bots b WHERE b.lease_owner = owner AND b.lease_expires_at > now();

        UPDATE bots b SET lease_owner = owner, lease_expires_at = now() + make_interval(secs => ttl_seconds)
         WHERE b.id IN (
               SELECT c.id FROM bots c
                WHERE c.desired_state = 'running'
                  AND (c.lease_owner IS NULL OR c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
                ORDER BY c.lease_expires_at NULLS FIRST, c.id
                LIMIT greatest(0, least(max_new, share - mine))
                FOR UPDATE SKIP LOCKED);
        RETURN QUERY
            SELECT b.id, b.tenant_id, b.desired_state, share FROM bots b
             WHERE b.lease_owner = owner AND b.lease_expires_at > now();
    END
    $$;
REVOKE ALL ON FUNCTION lease_bots(text, double precision, integer) FROM PUBLIC;

CREATE FUNCTION leave_supervision(owner text) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        UPDATE bots SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = owner;
        DELETE FROM supervisors s WHERE s.owner = leave_supervision.owner;
    $$;
REVOKE ALL ON FUNCTION leave_supervision(text) FROM PUBLIC;

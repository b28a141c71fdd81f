-- Bot sessions: what the user asked for, what the session reports, and which supervisor runs it.
--
-- The web process never talks to a session directly: it records the user's intent on the bot's row
-- (desired_state, a command with a sequence number, a pair-code request) and notifies; the supervisor
-- process holding the bot's lease carries it out and writes the outcome back.

ALTER TABLE bots
    ADD COLUMN command        text CHECK (command IN ('restart', 'logout')),
    ADD COLUMN command_seq    bigint NOT NULL DEFAULT 0,
    ADD COLUMN command_done   bigint NOT NULL DEFAULT 0,
    ADD COLUMN qr_code        text,
    ADD COLUMN qr_updated_at  timestamptz,
    ADD COLUMN pair_phone     text,
    ADD COLUMN pair_seq       bigint NOT NULL DEFAULT 0,
    ADD COLUMN pair_code      text,
    ADD COLUMN pair_error     text,
    ADD COLUMN pair_done      bigint NOT NULL DEFAULT 0,
    ADD COLUMN paired         boolean NOT NULL DEFAULT false;

CREATE INDEX bots_lease_idx ON bots (lease_expires_at) WHERE desired_state = 'running';

-- Supervisors see bots across tenants only through the functions below, which run as the owner.
CREATE POLICY owner_supervision ON bots TO CURRENT_USER USING (true) WITH CHECK (true);

-- Renew the leases this supervisor holds, claim running bots whose lease is free or expired (up to
-- max_new), and return every bot it holds with its tenant. SKIP LOCKED keeps two supervisors from
-- claiming the same row at once; a lease is only ever taken when free or expired.
CREATE FUNCTION lease_bots(owner text, ttl_seconds double precision, max_new integer)
    RETURNS TABLE (bot_id uuid, tenant_id uuid, desired_state text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        UPDATE bots b SET lease_expires_at = now() + make_interval(secs => ttl_seconds)
         WHERE b.lease_owner = owner AND b.lease_expires_at > now();
        UPDATE bots b SET lease_owner = owner, lease_expires_at = now() + make_interval(secs => ttl_seconds)
         WHERE b.id IN (
               SELECT c.id FROM bots c
                WHERE c.desired_state = 'running'
                  AND (c.lease_owner IS NULL OR c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
                ORDER BY c.lease_expires_at NULLS FIRST, c.id
                LIMIT max_new
                FOR UPDATE SKIP LOCKED);
        RETURN QUERY
            SELECT b.id, b.tenant_id, b.desired_state FROM bots b
             WHERE b.lease_owner = owner AND b.lease_expires_at > now();
    END
    $$;

CREATE FUNCTION release_bot_lease(owner text, bot uuid) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        UPDATE bots SET lease_owner = NULL, lease_expires_at = NULL WHERE id = bot AND lease_owner = owner
    $$;

REVOKE ALL ON FUNCTION lease_bots(text, double precision, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION release_bot_lease(text, uuid) FROM PUBLIC;

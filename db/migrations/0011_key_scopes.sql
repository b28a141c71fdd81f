-- API keys limited to scopes: read, send, manage. NULL (every key made before, and a key made
-- without scopes) is full access. Authentication returns the scopes with the tenant.

ALTER TABLE api_keys ADD COLUMN scopes text[]
    CHECK (scopes IS NULL OR scopes <@ ARRAY['read', 'send', 'manage']::text[]);

CREATE FUNCTION authenticate_api_key_scopes(candidate bytea) RETURNS TABLE (tenant_id uuid, scopes text[])
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        -- As authenticate_api_key: last_used_at is refreshed at most once a minute.
        WITH hit AS (
            SELECT id, tenant_id, scopes, last_used_at FROM api_keys
             WHERE key_hash = candidate AND revoked_at IS NULL
        ), touched AS (
            UPDATE api_keys k SET last_used_at = now() FROM hit
             WHERE k.id = hit.id AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '1 minute')
        )
        SELECT tenant_id, scopes FROM hit
    $$;
REVOKE ALL ON FUNCTION authenticate_api_key_scopes(bytea) FROM PUBLIC;

-- One round trip for an API request's key and its request limit (issue 16): the key's lookup
-- (authenticate_api_key_status, migration 0024) and, when the key is valid and its tenant enabled, the
-- request counted against the key's limit (rate_limit_take, migration 0017, under the key's tenant).
-- `what` NULL: nothing is counted (limits off, or the class unlimited). The subject is the one
-- web.rate_limits.key_subject names: 'key:' and the first 128 bits of the key's hash. The key's id,
-- prefix and name come along: the audit log records changes as the key (db.audit.Actor).
CREATE FUNCTION authenticate_api_key_limited(candidate bytea, what text, step double precision,
                                             room double precision)
    RETURNS TABLE (tenant_id uuid, scopes text[], disabled boolean, allowed boolean, tat double precision,
                   decided_at double precision, key_id uuid, key_prefix text, key_name text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        k record;
        a record;
    BEGIN
        SELECT * INTO k FROM authenticate_api_key_status(candidate) LIMIT 1;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        SELECT id, prefix, name INTO a FROM api_keys WHERE key_hash = candidate AND revoked_at IS NULL;
        IF k.disabled OR what IS NULL THEN
            RETURN QUERY SELECT k.tenant_id, k.scopes, k.disabled, NULL::boolean, NULL::float8, NULL::float8,
                                a.id, a.prefix, a.name;
            RETURN;
        END IF;
        -- rate_limit_take writes the current tenant's row: this transaction's tenant is the key's.
        PERFORM set_config('app.current_tenant', k.tenant_id::text, true);
        RETURN QUERY
            SELECT k.tenant_id, k.scopes, false, t.allowed, t.tat, t.decided_at, a.id, a.prefix, a.name
              FROM rate_limit_take('key:' || left(encode(candidate, 'hex'), 32), what, step, room) t;
    END
    $$;
REVOKE ALL ON FUNCTION authenticate_api_key_limited(bytea, text, double precision, double precision) FROM PUBLIC;

-- A tenant's lifecycle (issue 16): the operator disables a tenant (its keys and sessions are refused
-- with a clear message, its bots stopped, its data kept) and enables it again (the bots that were
-- running start again). Export and deletion need no schema: every tenant table cascades from tenants.

ALTER TABLE tenants ADD COLUMN disabled_at timestamptz;
-- The bots whose desired state was 'running' when the tenant was disabled: enabling starts them again.
ALTER TABLE tenants ADD COLUMN disabled_bots uuid[];

-- As authenticate_api_key_scopes (migration 0011), and whether the key's tenant is disabled, so the
-- API can refuse it with that reason in the same round trip. A disabled tenant's key is not touched.
CREATE FUNCTION authenticate_api_key_status(candidate bytea)
    RETURNS TABLE (tenant_id uuid, scopes text[], disabled boolean)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH hit AS (
            SELECT k.id, k.tenant_id, k.scopes, k.last_used_at, t.disabled_at IS NOT NULL AS disabled
              FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = candidate AND k.revoked_at IS NULL
        ), touched AS (
            UPDATE api_keys k SET last_used_at = now() FROM hit
             WHERE k.id = hit.id AND NOT hit.disabled
               AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '1 minute')
        )
        SELECT tenant_id, scopes, disabled FROM hit
    $$;
REVOKE ALL ON FUNCTION authenticate_api_key_status(bytea) FROM PUBLIC;

-- auth_session_get (migration 0010) with one more column: whether the session's tenant is disabled
-- (the person may be a member of several, some disabled). Earlier readers of its first nine columns
-- are unaffected.
DROP FUNCTION auth_session_get(bytea, double precision, double precision);
CREATE FUNCTION auth_session_get(token bytea, idle double precision, touch_after double precision)
    RETURNS TABLE (session_id uuid, account_id uuid, email text, display_name text, tenant_id uuid,
                   tenant_name text, role text, csrf_token text, created_at timestamptz, tenant_disabled boolean)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        UPDATE web_sessions s SET last_seen_at = now()
         WHERE s.token_hash = token AND s.revoked_at IS NULL AND s.expires_at > now()
           AND s.last_seen_at > now() - make_interval(secs => idle)
           AND s.last_seen_at < now() - make_interval(secs => touch_after);
        RETURN QUERY
            SELECT s.id, a.id, a.email, a.display_name, s.tenant_id, t.name, u.role, s.csrf_token, s.created_at,
                   t.disabled_at IS NOT NULL
              FROM web_sessions s
              JOIN accounts a ON a.id = s.account_id
              LEFT JOIN users u ON u.account_id = s.account_id AND u.tenant_id = s.tenant_id
              LEFT JOIN tenants t ON t.id = s.tenant_id
             WHERE s.token_hash = token AND s.revoked_at IS NULL AND s.expires_at > now()
               AND s.last_seen_at > now() - make_interval(secs => idle);
    END
    $$;
REVOKE ALL ON FUNCTION auth_session_get(bytea, double precision, double precision) FROM PUBLIC;

-- People who sign in to the dashboard, their sessions, one-time links, sign-in throttling, and the
-- hold a conversation gets when the owner answers from the paired phone.
--
-- A person has one account (email, argon2 password hash) across tenants; a membership is a row of
-- the tenant-owned `users` table linked to the account, with the person's role in that tenant.
-- Accounts, sessions and throttle counters belong to no tenant: row-level security is forced on
-- them with no policy for the app role, so the app reaches them only through the SECURITY DEFINER
-- functions below (owned by the schema owner), the way API keys are authenticated. One-time links
-- are tenant-owned (an admin lists and issues them under the tenant's RLS); only reading one by its
-- token and completing it happen before a tenant is known, through functions.

CREATE TABLE accounts (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320),
    display_name        text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    password_hash       text NOT NULL,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- A membership: the tenant's user row, linked to the person's account once they accepted.
ALTER TABLE users ADD COLUMN account_id uuid REFERENCES accounts (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX users_account_idx ON users (account_id, tenant_id) WHERE account_id IS NOT NULL;

CREATE TABLE web_sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash   bytea NOT NULL UNIQUE,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE SET NULL,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    user_agent   text NOT NULL DEFAULT '',
    client_addr  text NOT NULL DEFAULT ''
);
CREATE INDEX web_sessions_account_idx ON web_sessions (account_id);

CREATE TABLE auth_links (
    token_hash  bytea PRIMARY KEY,
    tenant_id   uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose IN ('invite', 'reset')),
    created_by  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX auth_links_user_idx ON auth_links (user_id);

CREATE TABLE sign_in_failures (
    key      text PRIMARY KEY,
    failures integer NOT NULL,
    first_at timestamptz NOT NULL,
    last_at  timestamptz NOT NULL
);
CREATE INDEX sign_in_failures_last_idx ON sign_in_failures (last_at);

-- The owner wrote to the customer from the paired phone: the bot holds off until then.
ALTER TABLE contacts ADD COLUMN phone_hold_until timestamptz;

-- Row-level security: tenant-owned links as every tenant table; the rest fail closed for the app.
ALTER TABLE auth_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON auth_links
    USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());
CREATE POLICY owner_links ON auth_links TO CURRENT_USER USING (true) WITH CHECK (true);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'web_sessions', 'sign_in_failures'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY owner_only ON %I TO CURRENT_USER USING (true) WITH CHECK (true)', t);
    END LOOP;
END $$;

-- The functions read memberships and tenant names across tenants (a person's tenants).
CREATE POLICY owner_memberships ON users TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY owner_tenant_names ON tenants FOR SELECT TO CURRENT_USER USING (true);

-- -- accounts ---------------------------------------------------------------------------------------

CREATE FUNCTION auth_account_by_email(candidate text)
    RETURNS TABLE (id uuid, password_hash text, display_name text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT a.id, a.password_hash, a.display_name FROM accounts a WHERE a.email = lower(candidate) $$;

CREATE FUNCTION auth_memberships(account uuid)
    RETURNS TABLE (tenant_id uuid, tenant_name text, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT u.tenant_id, t.name, u.role FROM users u JOIN tenants t ON t.id = u.tenant_id
         WHERE u.account_id = account ORDER BY lower(t.name), t.id
    $$;

-- A signed-in person changes their own password or name (the app verified the current password).
CREATE FUNCTION auth_account_update(account uuid, new_hash text, new_name text, keep_session bytea)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        IF new_hash IS NOT NULL THEN
            UPDATE accounts SET password_hash = new_hash, password_changed_at = now() WHERE id = account;
            -- A new password ends every other session of the person.
            UPDATE web_sessions SET revoked_at = now()
             WHERE account_id = account AND revoked_at IS NULL AND token_hash IS DISTINCT FROM keep_session;
        END IF;
        IF new_name IS NOT NULL THEN
            UPDATE accounts SET display_name = new_name WHERE id = account;
            UPDATE users SET display_name = new_name WHERE account_id = account;
        END IF;
    END
    $$;

-- -- sessions ---------------------------------------------------------------------------------------

CREATE FUNCTION auth_session_open(token bytea, account uuid, tenant uuid, csrf text, max_age double precision,
                                  agent text, addr text)
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE sid uuid;
    BEGIN
        IF tenant IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users WHERE account_id = account AND tenant_id = tenant) THEN
            RAISE EXCEPTION 'not a member of that tenant' USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- The person's ended sessions are of no use to anyone: keep the table small.
        DELETE FROM web_sessions WHERE account_id = account AND (expires_at < now() OR revoked_at IS NOT NULL);
        INSERT INTO web_sessions (token_hash, account_id, tenant_id, csrf_token, expires_at, user_agent, client_addr)
             VALUES (token, account, tenant, csrf, now() + make_interval(secs => max_age), left(agent, 300),
                     left(addr, 100))
          RETURNING id INTO sid;
        RETURN sid;
    END
    $$;

-- The live session behind a cookie: not revoked, within its absolute expiry and not idle longer
-- than `idle` seconds. last_seen_at is written at most every `touch_after` seconds, so a signed-in
-- page is not a write per request. `role` is NULL when the person is no longer a member of the
-- session's tenant (removed: the app then treats the session as signed out of that tenant).
CREATE FUNCTION auth_session_get(token bytea, idle double precision, touch_after double precision)
    RETURNS TABLE (session_id uuid, account_id uuid, email text, display_name text, tenant_id uuid,
                   tenant_name text, role text, csrf_token text, created_at timestamptz)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        UPDATE web_sessions s SET last_seen_at = now()
         WHERE s.token_hash = token AND s.revoked_at IS NULL AND s.expires_at > now()
           AND s.last_seen_at > now() - make_interval(secs => idle)
           AND s.last_seen_at < now() - make_interval(secs => touch_after);
        RETURN QUERY
            SELECT s.id, a.id, a.email, a.display_name, s.tenant_id, t.name, u.role, s.csrf_token, s.created_at
              FROM web_sessions s
              JOIN accounts a ON a.id = s.account_id
              LEFT JOIN users u ON u.account_id = s.account_id AND u.tenant_id = s.tenant_id
              LEFT JOIN tenants t ON t.id = s.tenant_id
             WHERE s.token_hash = token AND s.revoked_at IS NULL AND s.expires_at > now()
               AND s.last_seen_at > now() - make_interval(secs => idle);
    END
    $$;

CREATE FUNCTION auth_session_switch(token bytea, tenant uuid) RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH s AS (
            UPDATE web_sessions s SET tenant_id = tenant
             WHERE s.token_hash = token AND s.revoked_at IS NULL AND s.expires_at > now()
               AND EXISTS (SELECT 1 FROM users u WHERE u.account_id = s.account_id AND u.tenant_id = tenant)
            RETURNING 1
        )
        SELECT count(*) = 1 FROM s
    $$;

CREATE FUNCTION auth_session_close(token bytea) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ UPDATE web_sessions SET revoked_at = now() WHERE token_hash = token AND revoked_at IS NULL $$;

CREATE FUNCTION auth_sessions_close_all(account uuid) RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH s AS (UPDATE web_sessions SET revoked_at = now() WHERE account_id = account AND revoked_at IS NULL
                   RETURNING 1)
        SELECT count(*)::integer FROM s
    $$;

-- A removed member is signed out of that tenant at once, whichever way the membership went (the
-- dashboard, the API's DELETE /users/<id>, or the tenant itself).
CREATE FUNCTION auth_membership_removed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        IF OLD.account_id IS NOT NULL THEN
            UPDATE web_sessions SET revoked_at = now()
             WHERE account_id = OLD.account_id AND tenant_id = OLD.tenant_id AND revoked_at IS NULL;
        END IF;
        RETURN OLD;
    END
    $$;
CREATE TRIGGER users_signed_out AFTER DELETE ON users FOR EACH ROW EXECUTE FUNCTION auth_membership_removed();

-- -- one-time links ---------------------------------------------------------------------------------

CREATE FUNCTION auth_link_peek(token bytea)
    RETURNS TABLE (purpose text, email text, tenant_id uuid, tenant_name text, role text, account_id uuid,
                   expires_at timestamptz, used_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT l.purpose, u.email, l.tenant_id, t.name, u.role,
               coalesce(u.account_id, (SELECT a.id FROM accounts a WHERE a.email = lower(u.email))),
               l.expires_at, l.used_at
          FROM auth_links l JOIN users u ON u.id = l.user_id JOIN tenants t ON t.id = l.tenant_id
         WHERE l.token_hash = token
    $$;

-- Complete a link once: set the password (an invite for a new person, or a reset), or — an invite
-- for someone who already has an account — add the membership to the account whose password the
-- app verified (`verified_account`). Returns the account, or NULL when the link is unknown, used,
-- expired, or the completion does not fit it. A new password ends the person's other sessions.
CREATE FUNCTION auth_link_complete(token bytea, new_hash text, new_name text, verified_account uuid)
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        link auth_links%ROWTYPE;
        member users%ROWTYPE;
        acct uuid;
    BEGIN
        SELECT * INTO link FROM auth_links l WHERE l.token_hash = token FOR UPDATE;
        IF NOT FOUND OR link.used_at IS NOT NULL OR link.expires_at <= now() THEN
            RETURN NULL;
        END IF;
        SELECT * INTO member FROM users u WHERE u.id = link.user_id FOR UPDATE;
        acct := coalesce(member.account_id, (SELECT a.id FROM accounts a WHERE a.email = lower(member.email)));
        IF acct IS NOT NULL AND link.purpose = 'invite' THEN
            -- An existing account joins by proving its password, never by a new one set through a
            -- link another tenant's admin made.
            IF verified_account IS DISTINCT FROM acct THEN
                RETURN NULL;
            END IF;
        ELSIF new_hash IS NULL THEN
            RETURN NULL;
        ELSIF acct IS NULL THEN
            INSERT INTO accounts (email, display_name, password_hash)
                 VALUES (lower(member.email), coalesce(nullif(new_name, ''), member.display_name), new_hash)
              RETURNING id INTO acct;
        ELSE
            UPDATE accounts SET password_hash = new_hash, password_changed_at = now(),
                                display_name = coalesce(nullif(new_name, ''), display_name)
             WHERE id = acct;
            UPDATE web_sessions SET revoked_at = now() WHERE account_id = acct AND revoked_at IS NULL;
        END IF;
        UPDATE users SET account_id = acct,
                         display_name = coalesce(nullif(new_name, ''), nullif(display_name, ''),
                                                 (SELECT a.display_name FROM accounts a WHERE a.id = acct))
         WHERE id = member.id;
        UPDATE auth_links SET used_at = now() WHERE token_hash = token;
        DELETE FROM auth_links WHERE user_id = member.id AND used_at IS NULL;
        RETURN acct;
    END
    $$;

-- How many tenants an account belongs to (a tenant admin may reset only a person who is theirs alone).
CREATE FUNCTION auth_account_tenants(account uuid) RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT count(*)::integer FROM users WHERE account_id = account $$;

-- -- sign-in throttling -----------------------------------------------------------------------------

CREATE FUNCTION auth_throttle_read(keys text[])
    RETURNS TABLE (key text, failures integer, first_at double precision, last_at double precision,
                   now double precision)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT k.key, coalesce(f.failures, 0), extract(epoch FROM f.first_at), extract(epoch FROM f.last_at),
               extract(epoch FROM now())
          FROM unnest(keys) AS k(key) LEFT JOIN sign_in_failures f ON f.key = k.key
    $$;

-- One more failure for each key; a count whose last failure is older than `window` starts again.
CREATE FUNCTION auth_throttle_fail(keys text[], window_seconds double precision) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        DELETE FROM sign_in_failures WHERE last_at < now() - make_interval(secs => greatest(window_seconds, 86400));
        INSERT INTO sign_in_failures AS f (key, failures, first_at, last_at)
             SELECT k, 1, now(), now() FROM unnest(keys) AS k
        ON CONFLICT (key) DO UPDATE SET
            failures = CASE WHEN f.last_at < now() - make_interval(secs => window_seconds) THEN 1 ELSE f.failures + 1 END,
            first_at = CASE WHEN f.last_at < now() - make_interval(secs => window_seconds) THEN now() ELSE f.first_at END,
            last_at = now();
    $$;

CREATE FUNCTION auth_throttle_clear(keys text[]) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ DELETE FROM sign_in_failures WHERE key = ANY(keys) $$;

-- -- the status page --------------------------------------------------------------------------------

-- Supervisors alive and how many of the *calling tenant's* bots each runs (other tenants' bots are
-- not counted: their number is theirs).
CREATE FUNCTION supervisors_for_tenant(tenant uuid)
    RETURNS TABLE (owner text, started_at timestamptz, expires_at timestamptz, alive boolean, bots bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT s.owner, s.started_at, s.expires_at, s.expires_at > now(),
               (SELECT count(*) FROM bots b WHERE b.tenant_id = tenant AND b.lease_owner = s.owner
                   AND b.lease_expires_at > now())
          FROM supervisors s ORDER BY s.started_at, s.owner
    $$;

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'auth_account_by_email(text)', 'auth_memberships(uuid)', 'auth_account_update(uuid, text, text, bytea)',
        'auth_session_open(bytea, uuid, uuid, text, double precision, text, text)',
        'auth_session_get(bytea, double precision, double precision)', 'auth_session_switch(bytea, uuid)',
        'auth_session_close(bytea)', 'auth_sessions_close_all(uuid)', 'auth_membership_removed()',
        'auth_link_peek(bytea)', 'auth_link_complete(bytea, text, text, uuid)', 'auth_account_tenants(uuid)',
        'auth_throttle_read(text[])', 'auth_throttle_fail(text[], double precision)',
        'auth_throttle_clear(text[])', 'supervisors_for_tenant(uuid)'] LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;

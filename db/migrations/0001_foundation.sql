-- Foundation schema: tenants and everything they own, each tenant-owned table under row-level security.
--
-- Every policy reads nullif(current_setting('app.current_tenant', true), ''): a unit of work that has
-- not named a tenant sees zero rows and cannot write (fail closed). FORCE makes the policies apply to
-- the table owner too. tenant_id defaults to the current tenant so inserts need not repeat it.

CREATE FUNCTION current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.current_tenant', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    email       text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    role        text NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'agent', 'viewer')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE bots (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    transport_options jsonb NOT NULL DEFAULT '{}'::jsonb,
    desired_state     text NOT NULL DEFAULT 'stopped' CHECK (desired_state IN ('running', 'stopped')),
    state             text NOT NULL DEFAULT 'stopped',
    reason            text NOT NULL DEFAULT '',
    attempt           integer NOT NULL DEFAULT 0,
    next_retry_at     timestamptz,
    banned_until      timestamptz,
    jid               text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bots_tenant_idx ON bots (tenant_id);

CREATE TABLE contacts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    bot_id          uuid NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    jid             text NOT NULL,
    name            text NOT NULL DEFAULT '',
    paused          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_message_at timestamptz,
    UNIQUE (bot_id, jid)
);
CREATE INDEX contacts_tenant_idx ON contacts (tenant_id);

CREATE TABLE messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    bot_id          uuid NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    contact_id      uuid NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    direction       text NOT NULL CHECK (direction IN ('in', 'out')),
    wa_message_id   text NOT NULL,
    kind            text NOT NULL DEFAULT 'text',
    body            text NOT NULL DEFAULT '',
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'stored',
    quoted_wa_id    text,
    media_key       text,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bot_id, wa_message_id)
);
CREATE INDEX messages_conversation_idx ON messages (contact_id, created_at DESC);
CREATE INDEX messages_tenant_idx ON messages (tenant_id);

CREATE TABLE outbox (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    bot_id          uuid NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    to_jid          text NOT NULL,
    wa_message_id   text NOT NULL,
    kind            text NOT NULL DEFAULT 'text',
    body            text NOT NULL DEFAULT '',
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (bot_id, wa_message_id)
);
CREATE INDEX outbox_due_idx ON outbox (bot_id, next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX outbox_tenant_idx ON outbox (tenant_id, state);

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    bot_id      uuid,
    type        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant_idx ON events (tenant_id, id);
CREATE INDEX events_created_idx ON events (created_at);

-- Row-level security, fail closed, on every tenant-owned table.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = current_tenant()) WITH CHECK (id = current_tenant());

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'api_keys', 'bots', 'contacts', 'messages', 'outbox', 'events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant()) '
                       'WITH CHECK (tenant_id = current_tenant())', t);
    END LOOP;
END $$;

-- Authenticating a request must find a key before the tenant is known. Only this function, which
-- runs as the schema owner, may look keys up across tenants; the app role cannot.
CREATE POLICY owner_key_lookup ON api_keys FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_key_touch ON api_keys FOR UPDATE TO CURRENT_USER USING (true) WITH CHECK (true);

CREATE FUNCTION authenticate_api_key(candidate bytea) RETURNS uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        -- last_used_at is refreshed at most once a minute so authentication is not a write per request.
        WITH hit AS (
            SELECT id, tenant_id, last_used_at FROM api_keys
             WHERE key_hash = candidate AND revoked_at IS NULL
        ), touched AS (
            UPDATE api_keys k SET last_used_at = now() FROM hit
             WHERE k.id = hit.id AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '1 minute')
        )
        SELECT tenant_id FROM hit
    $$;
REVOKE ALL ON FUNCTION authenticate_api_key(bytea) FROM PUBLIC;

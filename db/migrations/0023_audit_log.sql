-- The audit log (issue 16): who changed what in a tenant, when, from where. Append-only for the
-- application: the app role may INSERT and SELECT (db/migrate.py revokes UPDATE, DELETE and TRUNCATE
-- after granting data rights), and the triggers below refuse UPDATE, TRUNCATE and any DELETE that does
-- not run as the table's owner, whatever privileges someone grants later.
--
-- Rows leave in two ways only, both as the owner: prune_audit_log() (the app may call it; it deletes
-- only rows older than the retention the owner stored in audit_settings, so the app cannot choose a
-- shorter one), and a tenant's deletion (ON DELETE CASCADE from tenants: PostgreSQL runs a
-- foreign key's cascade as the owner of the referencing table, whoever deleted the tenant).

CREATE TABLE audit_log (
    -- Chosen by the writer, so a write retried after a lost answer is written once.
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),  -- set by the server (trigger below)
    actor_kind     text NOT NULL CHECK (actor_kind IN ('member', 'api_key', 'operator')),
    -- member: the account's id; api_key: the key's id; operator: NULL
    actor_id       text CHECK (length(actor_id) <= 100),
    -- member: the email; api_key: the key's prefix (wbk_ and 6 characters); operator: what ran it ('cli')
    actor_label    text NOT NULL DEFAULT '' CHECK (length(actor_label) <= 320),
    -- member: the display name; api_key: the key's name
    actor_name     text NOT NULL DEFAULT '' CHECK (length(actor_name) <= 200),
    action         text NOT NULL CHECK (action ~ '^[a-z][a-z_]*(\.[a-z][a-z_]*)+$' AND length(action) <= 64),
    object_type    text NOT NULL CHECK (object_type ~ '^[a-z][a-z_]*$' AND length(object_type) <= 64),
    object_id      text CHECK (length(object_id) <= 200),
    -- Small values only (rules, AI settings, roles), secrets redacted by the writer (sansio/audit.py).
    before         jsonb CHECK (pg_column_size(before) <= 65536),
    after          jsonb CHECK (pg_column_size(after) <= 65536),
    request_id     text CHECK (length(request_id) <= 128),
    client_address text CHECK (length(client_address) <= 100)
);
-- The log newest first (the API's and the dashboard's keyset paging), and retention.
CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant_id, at DESC, id DESC);
CREATE INDEX audit_log_object_idx ON audit_log (tenant_id, object_type, object_id, at DESC);
CREATE INDEX audit_log_at_idx ON audit_log (at);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());
-- The owner (retention, a tenant's deletion, the operator's own tools) works across tenants.
CREATE POLICY owner_audit ON audit_log TO CURRENT_USER USING (true) WITH CHECK (true);

-- Whether the statement runs as the table's owner (the operator's role, the owner's functions, a
-- foreign key's cascade). Invoker's rights on purpose: current_user is whoever runs the statement.
CREATE FUNCTION audit_log_by_owner(rel oid) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = public, pg_temp
    AS $$ SELECT current_user = (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = rel) $$;

-- The time is the server's, whatever the application's insert says (a back-dated row would be pruned
-- early); the owner may give one (restoring an exported log, the tests of retention).
CREATE FUNCTION audit_log_stamp() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
    BEGIN
        IF NOT audit_log_by_owner(TG_RELID) THEN
            NEW.at := clock_timestamp();
        END IF;
        RETURN NEW;
    END
    $$;
CREATE TRIGGER audit_log_stamp BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_stamp();

-- Belt and braces besides the privileges: rows never change, and only the table's owner removes them.
CREATE FUNCTION audit_log_refuse() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND audit_log_by_owner(TG_RELID) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT
    EXECUTE FUNCTION audit_log_refuse();

-- How long rows are kept (AUDIT_RETENTION), stored by the owner when migrations run (db/migrate.py):
-- the app role cannot read or change it (revoked in db/migrate.py), only prune by it.
CREATE TABLE audit_settings (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    retention interval NOT NULL CHECK (retention >= interval '1 day')
);
INSERT INTO audit_settings (retention) VALUES (interval '365 days');
ALTER TABLE audit_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON audit_settings TO CURRENT_USER USING (true) WITH CHECK (true);

-- Every tenant's rows older than the stored retention; the number removed.
CREATE FUNCTION prune_audit_log() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH gone AS (
            DELETE FROM audit_log WHERE at < now() - (SELECT retention FROM audit_settings) RETURNING 1
        )
        SELECT count(*) FROM gone
    $$;
REVOKE ALL ON FUNCTION prune_audit_log() FROM PUBLIC;

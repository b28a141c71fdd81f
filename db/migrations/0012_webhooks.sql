-- Outbound webhooks: a tenant's endpoints, one delivery row per (event, endpoint) written by
-- triggers in the same transaction as the fact it reports, and each attempt's outcome.
--
-- Why triggers: the live event log is a notice stream (written after the fact, without waiting for
-- the flush, dropped under overload). A delivery written by the statement that commits the fact
-- exists exactly when the fact does, whichever code path wrote it and whenever the process dies.

CREATE TABLE webhook_endpoints (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    url                   text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    description           text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- Same syntax as the live streams' filter: exact types or 'prefix.*'; empty means every type.
    event_types           text[] NOT NULL DEFAULT '{}',
    bot_ids               uuid[],  -- NULL: every bot
    enabled               boolean NOT NULL DEFAULT true,
    -- Standard Webhooks secret ('whsec_' + base64). Kept readable: signing needs it.
    secret                text NOT NULL,
    -- After a rotation the old secret signs too, until previous_secret_until.
    previous_secret       text,
    previous_secret_until timestamptz,
    failing_since         timestamptz,  -- first failure since the last success
    disabled_at           timestamptz,
    disabled_reason       text NOT NULL DEFAULT '',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, created_at);

CREATE TABLE webhook_deliveries (
    -- Also the request's webhook-id: stable across attempts and replays.
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The fact this delivery reports ('message.in:<message id>', ...): one delivery per fact and endpoint.
    event_key        text NOT NULL,
    type             text NOT NULL,
    bot_id           uuid,
    data             jsonb NOT NULL,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_key)
);
-- Due rows of one endpoint, in the order they came due (the claim).
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE state = 'pending';
-- Requests in flight per endpoint, and leases to reclaim.
CREATE INDEX webhook_deliveries_leased_idx ON webhook_deliveries (lease_expires_at) WHERE state = 'delivering';
-- The log, newest first, and retention.
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, created_at DESC);
CREATE INDEX webhook_deliveries_created_idx ON webhook_deliveries (created_at);

CREATE TABLE webhook_attempts (
    id            bigserial PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL,
    duration_ms   double precision NOT NULL,
    status_code   integer,
    error         text,
    response_head text NOT NULL DEFAULT ''  -- the first 1 KB of the response body
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'webhook_deliveries', 'webhook_attempts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant()) '
                       'WITH CHECK (tenant_id = current_tenant())', t);
        -- The owner's functions below (triggers, the workers' claim and record) work across tenants.
        EXECUTE format('CREATE POLICY owner_webhooks ON %I TO CURRENT_USER USING (true) WITH CHECK (true)', t);
    END LOOP;
END $$;

-- The streams' filter: exact, or 'prefix.*'; no patterns means every type.
CREATE FUNCTION webhook_type_matches(patterns text[], event_type text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT cardinality(patterns) = 0 OR EXISTS (
            SELECT 1 FROM unnest(patterns) p
             WHERE p = event_type
                OR (right(p, 2) = '.*' AND left(event_type, length(p) - 1) = left(p, length(p) - 1)))
    $$;

-- One delivery for every enabled endpoint of the tenant that wants the event; a notification wakes
-- the workers (a cue only: they also poll).
CREATE FUNCTION webhook_fan_out(tenant uuid, bot uuid, event_type text, fact text, payload jsonb,
                                at timestamptz) RETURNS integer
    LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
    AS $$
    DECLARE made integer;
    BEGIN
        INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_key, type, bot_id, data, occurred_at,
                                        next_attempt_at)
        SELECT e.tenant_id, e.id, fact, event_type, bot, payload, at, at
          FROM webhook_endpoints e
         WHERE e.tenant_id = tenant AND e.enabled
           AND (e.bot_ids IS NULL OR bot = ANY (e.bot_ids))
           AND webhook_type_matches(e.event_types, event_type)
        ON CONFLICT (endpoint_id, event_key) DO NOTHING;
        GET DIAGNOSTICS made = ROW_COUNT;
        IF made > 0 THEN
            PERFORM pg_notify('wabot_webhooks', '');
        END IF;
        RETURN made;
    END
    $$;

-- Called from the triggers' WHEN clauses, so a tenant without endpoints pays one index probe per
-- row and never enters a trigger function. Invoker's rights: the app role sees its own tenant's
-- endpoints only, and facts are written under the tenant's row-level security; the cross-tenant
-- writers (the owner's functions) see all.
CREATE FUNCTION webhook_wanted(tenant uuid) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT EXISTS (SELECT 1 FROM public.webhook_endpoints e WHERE e.tenant_id = tenant AND e.enabled) $$;

-- messages: an inbound message stored (message.in); an outgoing one on the network (message.out:
-- inserted as sent when it came from the paired phone, or moved to sent); delivered or read
-- (message.status).
CREATE FUNCTION webhook_message_fact() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        jid text;
        src text;
    BEGIN
        SELECT c.jid INTO jid FROM contacts c WHERE c.id = NEW.contact_id;
        IF NEW.direction = 'in' THEN
            PERFORM webhook_fan_out(NEW.tenant_id, NEW.bot_id, 'message.in', 'message.in:' || NEW.id,
                jsonb_build_object('message_id', NEW.id, 'bot_id', NEW.bot_id, 'contact_id', NEW.contact_id,
                    'from', jid, 'kind', NEW.kind, 'text', NEW.body, 'wa_message_id', NEW.wa_message_id,
                    'status', NEW.status, 'correlation_id', NEW.correlation_id, 'created_at', NEW.created_at),
                now());
        ELSIF NEW.status = 'sent' THEN
            SELECT o.source INTO src FROM outbox o WHERE o.id = NEW.outbox_id;
            PERFORM webhook_fan_out(NEW.tenant_id, NEW.bot_id, 'message.out', 'message.out:' || NEW.id,
                jsonb_build_object('message_id', NEW.id, 'bot_id', NEW.bot_id, 'contact_id', NEW.contact_id,
                    'outbox_id', NEW.outbox_id, 'to', jid, 'kind', NEW.kind, 'text', NEW.body,
                    'wa_message_id', NEW.wa_message_id, 'source', coalesce(src, 'phone'),
                    'correlation_id', NEW.correlation_id, 'created_at', NEW.created_at),
                now());
        ELSE
            PERFORM webhook_fan_out(NEW.tenant_id, NEW.bot_id, 'message.status',
                'message.status:' || NEW.id || ':' || NEW.status,
                jsonb_build_object('message_id', NEW.id, 'bot_id', NEW.bot_id, 'contact_id', NEW.contact_id,
                    'outbox_id', NEW.outbox_id, 'to', jid, 'wa_message_id', NEW.wa_message_id,
                    'status', NEW.status, 'correlation_id', NEW.correlation_id),
                now());
        END IF;
        RETURN NULL;
    END
    $$;

CREATE TRIGGER webhook_message_in AFTER INSERT ON messages FOR EACH ROW
    WHEN ((NEW.direction = 'in' OR NEW.status = 'sent') AND webhook_wanted(NEW.tenant_id))
    EXECUTE FUNCTION webhook_message_fact();
CREATE TRIGGER webhook_message_status AFTER UPDATE OF status ON messages FOR EACH ROW
    WHEN (NEW.direction = 'out' AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('sent', 'delivered', 'read') AND webhook_wanted(NEW.tenant_id))
    EXECUTE FUNCTION webhook_message_fact();

-- outbox: a dead letter (outbox.dead); a dead letter retried and dead again is a new fact.
CREATE FUNCTION webhook_dead_letter_fact() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        PERFORM webhook_fan_out(NEW.tenant_id, NEW.bot_id, 'outbox.dead',
                'outbox.dead:' || NEW.id || ':' || NEW.attempts,
                jsonb_build_object('outbox_id', NEW.id, 'bot_id', NEW.bot_id, 'contact_id', NEW.contact_id,
                    'to', NEW.to_jid, 'text', NEW.body, 'error', NEW.last_error, 'attempts', NEW.attempts,
                    'source', NEW.source, 'correlation_id', NEW.correlation_id),
                now());
        RETURN NULL;
    END
    $$;

CREATE TRIGGER webhook_dead_letter AFTER UPDATE OF state ON outbox FOR EACH ROW
    WHEN (NEW.state = 'dead' AND OLD.state IS DISTINCT FROM 'dead' AND webhook_wanted(NEW.tenant_id))
    EXECUTE FUNCTION webhook_dead_letter_fact();

-- bots: the session's state changed (bot.state). Each change is its own fact.
CREATE FUNCTION webhook_bot_state_fact() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        PERFORM webhook_fan_out(NEW.tenant_id, NEW.id, 'bot.state', 'bot.state:' || gen_random_uuid(),
                jsonb_build_object('bot_id', NEW.id, 'state', NEW.state, 'previous_state', OLD.state,
                    'reason', NEW.reason, 'attempt', NEW.attempt, 'next_retry_at', NEW.next_retry_at,
                    'banned_until', NEW.banned_until, 'jid', NEW.jid),
                now());
        RETURN NULL;
    END
    $$;

CREATE TRIGGER webhook_bot_state AFTER UPDATE OF state ON bots FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND webhook_wanted(NEW.tenant_id))
    EXECUTE FUNCTION webhook_bot_state_fact();

-- The workers (supervisor processes, no tenant): claim due deliveries under a lease, at most
-- max_in_flight leased per endpoint across every process. Each endpoint is locked (try-lock:
-- another process claiming for that endpoint just now skips it) before its requests in flight are
-- counted, in a later statement, so the count sees every claim committed before the lock was had.
-- Time comes from the caller's clock.
CREATE FUNCTION webhook_claim(owner text, at timestamptz, lease_seconds double precision, max_in_flight integer,
                              max_rows integer)
    RETURNS TABLE (id uuid, tenant_id uuid, endpoint_id uuid, url text, secret text, previous_secret text,
                   previous_secret_until timestamptz, failing_since timestamptz, type text, data jsonb,
                   occurred_at timestamptz, attempts integer, created_at timestamptz)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE eps uuid[];
    BEGIN
        -- Leases of a process that died (or stalled) with requests in flight: due again.
        UPDATE webhook_deliveries d SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL
         WHERE d.state = 'delivering' AND d.lease_expires_at <= at;
        -- An advisory lock per endpoint (until this transaction ends), not FOR UPDATE: locking the
        -- rows would write to every endpoint's row on every claim.
        SELECT array_agg(x.id) INTO eps FROM (
            SELECT due.id FROM (
                SELECT e.id FROM webhook_endpoints e
                 WHERE e.enabled AND EXISTS (
                     SELECT 1 FROM webhook_deliveries d
                      WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.next_attempt_at <= at)
                OFFSET 0) due
             WHERE pg_try_advisory_xact_lock(7283904, hashtext(due.id::text))) x;
        IF eps IS NULL THEN
            RETURN;
        END IF;
        RETURN QUERY
        WITH room AS (
            SELECT e.id AS endpoint, max_in_flight - (
                SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'delivering'
            ) AS free
              FROM webhook_endpoints e WHERE e.id = ANY (eps)
        ), pick AS (
            SELECT p.id FROM room r CROSS JOIN LATERAL (
                SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
                 WHERE d.endpoint_id = r.endpoint AND d.state = 'pending' AND d.next_attempt_at <= at
                 ORDER BY d.next_attempt_at LIMIT greatest(r.free, 0)) p
             ORDER BY p.next_attempt_at LIMIT max_rows
        )
        UPDATE webhook_deliveries d
           SET state = 'delivering', lease_owner = owner,
               lease_expires_at = at + make_interval(secs => lease_seconds)
          FROM pick, webhook_endpoints e
         -- The state again: a row changed since this statement's snapshot (a replay, a record) is
         -- checked anew before it is leased.
         WHERE d.id = pick.id AND e.id = d.endpoint_id AND d.state = 'pending'
        RETURNING d.id, d.tenant_id, d.endpoint_id, e.url, e.secret, e.previous_secret, e.previous_secret_until,
                  e.failing_since, d.type, d.data, d.occurred_at, d.attempts, d.created_at;
    END
    $$;

-- The outcome of attempts, many at once. A row whose lease this owner no longer holds keeps its
-- state (another process has it now); its attempt is logged all the same.
-- outcome: 'delivered' | 'retry' | 'failed' | 'gone' (410: the endpoint is disabled) ;
-- disable_reason non-empty disables the endpoint (410, or failing for too long).
CREATE FUNCTION webhook_record(owner text, ids uuid[], outcomes text[], next_at timestamptz[],
                               attempted_at timestamptz[], durations double precision[], statuses integer[],
                               errors text[], heads text[], disable_reasons text[])
    RETURNS TABLE (endpoint_id uuid, tenant_id uuid, disabled_reason text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        INSERT INTO webhook_attempts (tenant_id, delivery_id, attempted_at, duration_ms, status_code, error,
                                      response_head)
        SELECT d.tenant_id, d.id, r.at, r.ms, r.status, r.error, coalesce(r.head, '')
          FROM unnest(ids, attempted_at, durations, statuses, errors, heads) AS r (id, at, ms, status, error, head)
          JOIN webhook_deliveries d ON d.id = r.id;
        UPDATE webhook_deliveries d
           SET state = CASE r.outcome WHEN 'delivered' THEN 'delivered' WHEN 'retry' THEN 'pending' ELSE 'failed' END,
               attempts = d.attempts + 1,
               next_attempt_at = coalesce(r.next_at, d.next_attempt_at),
               delivered_at = CASE WHEN r.outcome = 'delivered' THEN r.at ELSE d.delivered_at END,
               last_status = r.status, last_error = r.error, lease_owner = NULL, lease_expires_at = NULL
          FROM unnest(ids, outcomes, next_at, attempted_at, statuses, errors)
               AS r (id, outcome, next_at, at, status, error)
         WHERE d.id = r.id AND d.state = 'delivering' AND d.lease_owner = owner;
        -- Each endpoint's latest outcome in this batch decides whether it is failing; a reason
        -- disables it (returned once, when it was enabled until now).
        RETURN QUERY
        WITH r AS (
            SELECT d.endpoint_id AS endpoint, r.outcome, r.at, nullif(r.why, '') AS why
              FROM unnest(ids, outcomes, attempted_at, disable_reasons) AS r (id, outcome, at, why)
              JOIN webhook_deliveries d ON d.id = r.id
        ), latest AS (
            SELECT DISTINCT ON (r.endpoint) r.endpoint, r.outcome, r.at FROM r ORDER BY r.endpoint, r.at DESC
        ), disabling AS (
            SELECT DISTINCT ON (r.endpoint) r.endpoint, r.why, r.at FROM r WHERE r.why IS NOT NULL
             ORDER BY r.endpoint, r.at
        ), was AS (
            SELECT e.id, e.enabled FROM webhook_endpoints e JOIN latest l ON l.endpoint = e.id
        )
        UPDATE webhook_endpoints e
           SET failing_since = CASE WHEN l.outcome = 'delivered' THEN NULL ELSE coalesce(e.failing_since, l.at) END,
               enabled = e.enabled AND x.why IS NULL,
               disabled_at = CASE WHEN x.why IS NOT NULL AND w.enabled THEN x.at ELSE e.disabled_at END,
               disabled_reason = CASE WHEN x.why IS NOT NULL AND w.enabled THEN x.why ELSE e.disabled_reason END,
               updated_at = CASE WHEN x.why IS NOT NULL AND w.enabled THEN now() ELSE e.updated_at END
          FROM latest l JOIN was w ON w.id = l.endpoint LEFT JOIN disabling x ON x.endpoint = l.endpoint
         WHERE e.id = l.endpoint
        RETURNING e.id, e.tenant_id, CASE WHEN x.why IS NOT NULL AND w.enabled THEN x.why END;
    END
    $$;

-- Queue depth and the oldest due delivery per endpoint, and disabled endpoints: metrics only.
CREATE FUNCTION webhook_stats()
    RETURNS TABLE (endpoint_id uuid, tenant_id uuid, state text, deliveries bigint, oldest_seconds double precision)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT d.endpoint_id, d.tenant_id, d.state, count(*),
               coalesce(extract(epoch FROM now() - min(d.created_at)), 0)
          FROM webhook_deliveries d WHERE d.state IN ('pending', 'delivering')
         GROUP BY d.endpoint_id, d.tenant_id, d.state
    $$;

CREATE FUNCTION webhook_endpoints_disabled() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT count(*) FROM webhook_endpoints WHERE NOT enabled AND disabled_at IS NOT NULL $$;

-- Retention: finished deliveries (and any left behind by a disabled endpoint) older than keep_seconds.
CREATE FUNCTION prune_webhook_deliveries(keep_seconds double precision) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH gone AS (
            DELETE FROM webhook_deliveries
             WHERE created_at < now() - make_interval(secs => keep_seconds) AND state <> 'delivering'
            RETURNING 1)
        SELECT count(*) FROM gone
    $$;

REVOKE ALL ON FUNCTION webhook_claim(text, timestamptz, double precision, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhook_record(text, uuid[], text[], timestamptz[], timestamptz[], double precision[],
                                      integer[], text[], text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhook_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhook_endpoints_disabled() FROM PUBLIC;
REVOKE ALL ON FUNCTION prune_webhook_deliveries(double precision) FROM PUBLIC;

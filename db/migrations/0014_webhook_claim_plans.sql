-- The webhook claim and record, planned so their cost does not grow with the queue (bench/webhooks.py,
-- docs/performance.md "Webhooks"): measured at 1,000 deliveries/s, PostgreSQL spent ~180 ms per claim.
--
-- 1. "Which endpoints have due rows" was planned as a hash of every due row of every endpoint (a
--    hanging endpoint's whole backlog included) on a table without statistics: now one LIMIT 1 probe of
--    the due index per enabled endpoint.
-- 2. The requests in flight per endpoint were counted through the lease index (it does not lead with
--    the endpoint), scanning every leased row and its dead entries for each endpoint: now one
--    GROUP BY over an index of in-flight rows by endpoint.
-- 3. PL/pgSQL switches a function's statements to generic plans after five calls; for statements over
--    the arrays a call passes in (ids, endpoints) the generic plan joined them against the whole table,
--    so a record of 20 outcomes cost more as the table grew (0.10 -> 0.39 ms per delivery over 60,000
--    deliveries in a replay of claims and records, flat at 0.15 ms with custom plans). Both functions
--    plan every call for its own arguments.
-- 4. The record rewrote every endpoint row of its batch (failing_since NULL to NULL): a new row version
--    per endpoint per record. It now writes an endpoint only when its failing spell starts or ends, or
--    when it is disabled.

CREATE INDEX webhook_deliveries_in_flight_idx ON webhook_deliveries (endpoint_id) WHERE state = 'delivering';

CREATE OR REPLACE FUNCTION webhook_claim(owner text, at timestamptz, lease_seconds double precision,
                                         max_in_flight integer, max_rows integer)
    RETURNS TABLE (id uuid, tenant_id uuid, endpoint_id uuid, url text, secret text, previous_secret text,
                   previous_secret_until timestamptz, failing_since timestamptz, type text, data jsonb,
                   occurred_at timestamptz, attempts integer, created_at timestamptz)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    SET plan_cache_mode = force_custom_plan
    AS $$
    DECLARE eps uuid[];
    BEGIN
        UPDATE webhook_deliveries d SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL
         WHERE d.state = 'delivering' AND d.lease_expires_at <= at;
        SELECT array_agg(x.id) INTO eps FROM (
            SELECT due.id FROM (
                SELECT e.id FROM webhook_endpoints e
                 CROSS JOIN LATERAL (
                     SELECT 1 FROM webhook_deliveries d
                      WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.next_attempt_at <= at
                      LIMIT 1) p
                 WHERE e.enabled
                OFFSET 0) due
             WHERE pg_try_advisory_xact_lock(7283904, hashtext(due.id::text))) x;
        IF eps IS NULL THEN
            RETURN;
        END IF;
        RETURN QUERY
        WITH busy AS (
            SELECT d.endpoint_id AS endpoint, count(*) AS n FROM webhook_deliveries d
             WHERE d.state = 'delivering' AND d.endpoint_id = ANY (eps)
             GROUP BY d.endpoint_id
        ), room AS (
            SELECT e.endpoint, max_in_flight - coalesce(b.n, 0) AS free
              FROM unnest(eps) AS e (endpoint) LEFT JOIN busy b ON b.endpoint = e.endpoint
        ), pick AS (
            SELECT p.id FROM room r CROSS JOIN LATERAL (
                SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
                 WHERE d.endpoint_id = r.endpoint AND d.state = 'pending' AND d.next_attempt_at <= at
                 ORDER BY d.next_attempt_at LIMIT greatest(r.free, 0)) p
             WHERE r.free > 0
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

CREATE OR REPLACE FUNCTION webhook_record(owner text, ids uuid[], outcomes text[], next_at timestamptz[],
                                          attempted_at timestamptz[], durations double precision[],
                                          statuses integer[], errors text[], heads text[], disable_reasons text[])
    RETURNS TABLE (endpoint_id uuid, tenant_id uuid, disabled_reason text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    SET plan_cache_mode = force_custom_plan
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
        -- disables it (returned once, when it was enabled until now). Endpoints whose state this
        -- changes nothing in are not written.
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
            SELECT e.id, e.enabled, e.failing_since FROM webhook_endpoints e JOIN latest l ON l.endpoint = e.id
        )
        UPDATE webhook_endpoints e
           SET failing_since = CASE WHEN l.outcome = 'delivered' THEN NULL ELSE coalesce(e.failing_since, l.at) END,
               enabled = e.enabled AND x.why IS NULL,
               disabled_at = CASE WHEN x.why IS NOT NULL AND w.enabled THEN x.at ELSE e.disabled_at END,
               disabled_reason = CASE WHEN x.why IS NOT NULL AND w.enabled THEN x.why ELSE e.disabled_reason END,
               updated_at = CASE WHEN x.why IS NOT NULL AND w.enabled THEN now() ELSE e.updated_at END
          FROM latest l JOIN was w ON w.id = l.endpoint LEFT JOIN disabling x ON x.endpoint = l.endpoint
         WHERE e.id = l.endpoint
           AND ((x.why IS NOT NULL AND w.enabled)
                OR (l.outcome = 'delivered') IS DISTINCT FROM (w.failing_since IS NULL))
        RETURNING e.id, e.tenant_id, CASE WHEN x.why IS NOT NULL AND w.enabled THEN x.why END;
    END
    $$;

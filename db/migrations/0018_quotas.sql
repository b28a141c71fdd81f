-- Tenant quotas (issue 16): limits the operator sets per tenant (bots, messages per UTC day, media
-- bytes stored; NULL = no limit, the default) and the count of the day's messages.
--
-- A message counts on the UTC day it is admitted to the send queue: an API send when it is queued
-- (refused when the day's quota is used up), a bot's answer when it is written — or, written past the
-- quota, as 'held' and counted on the day a claim releases it (the next UTC day, or once the operator
-- raised the quota). The count lives in the tenant's one row here, changed only by
-- quota_take_messages(), which locks that row: two processes cannot both take the last message.

CREATE TABLE tenant_quotas (
    tenant_id            uuid PRIMARY KEY DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    max_bots             integer CHECK (max_bots > 0),
    max_messages_per_day integer CHECK (max_messages_per_day > 0),
    max_media_bytes      bigint CHECK (max_media_bytes > 0),
    messages_day         date,  -- the UTC day messages_sent counts
    messages_sent        integer NOT NULL DEFAULT 0 CHECK (messages_sent >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_quotas ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_quotas FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_quotas
    USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());

-- A bot's answer past the daily quota waits in the outbox as 'held': no claim takes it until it is
-- released (pending again, counted). Its last_error says why it waits.
ALTER TABLE outbox DROP CONSTRAINT outbox_state_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_state_check
    CHECK (state IN ('pending', 'sending', 'sent', 'dead', 'held')) NOT VALID;
ALTER TABLE outbox VALIDATE CONSTRAINT outbox_state_check;
-- Held rows per bot and customer, in commit order: releasing them oldest first, and keeping a
-- customer's later messages behind them. Empty for a tenant within its quota.
CREATE INDEX outbox_held_idx ON outbox (bot_id, to_jid, created_at, id) WHERE state = 'held';

-- Up to `wanted` messages for today, as the quota allows: how many were granted (and counted).
CREATE FUNCTION quota_take_messages(wanted integer) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        today date := (now() AT TIME ZONE 'UTC')::date;
        q tenant_quotas;
        used integer;
        granted integer;
    BEGIN
        IF wanted IS NULL OR wanted <= 0 THEN
            RETURN 0;
        END IF;
        -- Creates the row or locks it, and returns its latest committed version either way.
        INSERT INTO tenant_quotas AS t (tenant_id, messages_day) VALUES (current_tenant(), today)
        ON CONFLICT (tenant_id) DO UPDATE SET messages_day = t.messages_day
        RETURNING * INTO q;
        used := CASE WHEN q.messages_day = today THEN q.messages_sent ELSE 0 END;
        granted := CASE WHEN q.max_messages_per_day IS NULL THEN wanted
                        ELSE least(wanted, greatest(q.max_messages_per_day - used, 0)) END;
        UPDATE tenant_quotas SET messages_day = today, messages_sent = used + granted
         WHERE tenant_id = q.tenant_id;
        RETURN granted;
    END
    $$;

-- Release the held rows of these bots that today's quota allows, oldest first (counted now);
-- returns how many. Costs one probe of an empty index when nothing is held.
CREATE FUNCTION quota_release_held(bots uuid[]) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        waiting integer;
        granted integer;
    BEGIN
        SELECT count(*) INTO waiting FROM outbox WHERE bot_id = ANY(bots) AND state = 'held';
        IF waiting = 0 THEN
            RETURN 0;
        END IF;
        granted := quota_take_messages(waiting);
        IF granted > 0 THEN
            UPDATE outbox SET state = 'pending', last_error = NULL, next_attempt_at = now()
             WHERE id IN (SELECT id FROM outbox WHERE bot_id = ANY(bots) AND state = 'held'
                           ORDER BY created_at, id LIMIT granted);
        END IF;
        RETURN granted;
    END
    $$;

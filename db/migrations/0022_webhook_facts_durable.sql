-- A fact that makes a webhook delivery commits durably, whatever its transaction asked for. Receipts and
-- "sent" marks commit without waiting for the flush (a receipt lost in a crash only leaves a status one
-- step behind); but once such a commit carried a delivery, a worker could send it at once and a crash of
-- the server a moment later could lose both: the receiver had been told of a fact the database then
-- forgot (the third 30-minute soak: requests whose webhook-id no longer existed, after immediate stops).
-- synchronous_commit is read at commit time, so turning it on here, for this transaction only, makes the
-- commit wait for the flush exactly when a delivery was made.
CREATE OR REPLACE FUNCTION webhook_fan_out(tenant uuid, bot uuid, event_type text, fact text, payload jsonb,
                                           at timestamptz) RETURNS integer
    LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
    AS $$
    DECLARE made integer;
    BEGIN
        INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_key, type, bot_id, data, occurred_at,
                                        next_attempt_at)
        SELECT webhook_delivery_id(e.id, fact), e.tenant_id, e.id, fact, event_type, bot, payload, at, at
          FROM webhook_endpoints e
         WHERE e.tenant_id = tenant AND e.enabled
           AND (e.bot_ids IS NULL OR bot = ANY (e.bot_ids))
           AND webhook_type_matches(e.event_types, event_type)
        ON CONFLICT (endpoint_id, event_key) DO NOTHING;
        GET DIAGNOSTICS made = ROW_COUNT;
        IF made > 0 THEN
            -- This transaction now carries a delivery: it commits only once it is on disk.
            PERFORM set_config('synchronous_commit', 'on', true);
            PERFORM pg_notify('wabot_webhooks', '');
        END IF;
        RETURN made;
    END
    $$;

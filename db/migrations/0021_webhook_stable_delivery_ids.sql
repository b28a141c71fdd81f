-- A delivery's id (the request's webhook-id) is derived from its endpoint and the fact it reports, no
-- longer drawn at random. Some facts commit without waiting for the WAL flush (a send marked sent, a
-- receipt: db/pipeline_store.py, db/conversations.py); the 30-minute soak found that a crash of the
-- server right after such a commit can lose the fact and its delivery after a worker had already
-- sent it. The fact is then written again (the network is asked first) and its delivery made again:
-- with a random id the receiver got the same event twice under two webhook-ids, which no consumer
-- deduplicating by webhook-id (as the Standard Webhooks spec asks) can recognise. Derived, the second
-- delivery carries the first one's id.
CREATE OR REPLACE FUNCTION webhook_delivery_id(endpoint uuid, fact text) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT md5(endpoint::text || '/' || fact)::uuid $$;

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
            PERFORM pg_notify('wabot_webhooks', '');
        END IF;
        RETURN made;
    END
    $$;

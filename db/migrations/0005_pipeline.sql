-- The bot's work: replies (rules, AI), conversations that humans can take over, media, and the
-- outbox's links to what caused each outgoing message.

ALTER TABLE bots
    ADD COLUMN rules jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN ai jsonb NOT NULL DEFAULT '{}'::jsonb;

ALTER TABLE contacts
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN paused_by text;

-- Inbound rows: status stored -> answered | ignored (paused, no rule/AI, unsupported type).
-- Outbound rows: status pending -> sent -> delivered -> read, or failed (dead letter).
ALTER TABLE messages
    ADD COLUMN answered_at timestamptz,
    ADD COLUMN outbox_id uuid;
CREATE INDEX messages_unanswered_idx ON messages (bot_id, created_at)
    WHERE direction = 'in' AND status = 'stored';

ALTER TABLE outbox
    ADD COLUMN contact_id uuid REFERENCES contacts (id) ON DELETE SET NULL,
    ADD COLUMN media_id uuid,
    ADD COLUMN cause_message_id uuid,
    ADD COLUMN source text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'rule', 'ai', 'fallback'));

CREATE TABLE media (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL DEFAULT current_tenant() REFERENCES tenants (id) ON DELETE CASCADE,
    bot_id      uuid REFERENCES bots (id) ON DELETE SET NULL,
    backend     text NOT NULL CHECK (backend IN ('local', 's3')),
    object_key  text NOT NULL,
    mime_type   text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes  bigint NOT NULL,
    sha256      text NOT NULL,
    filename    text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_tenant_idx ON media (tenant_id);
ALTER TABLE media ENABLE ROW LEVEL SECURITY;
ALTER TABLE media FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON media
    USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());

-- Outbox depth and age across tenants, for metrics only (counts, no content).
CREATE POLICY owner_outbox_stats ON outbox FOR SELECT TO CURRENT_USER USING (true);
CREATE FUNCTION outbox_stats()
    RETURNS TABLE (state text, messages bigint, oldest_seconds double precision)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT o.state, count(*), coalesce(extract(epoch FROM now() - min(o.created_at)), 0)
          FROM outbox o WHERE o.state IN ('pending', 'sending', 'dead') GROUP BY o.state
    $$;
REVOKE ALL ON FUNCTION outbox_stats() FROM PUBLIC;

-- Outgoing message rows are found by their outbox row when a send completes (mark_sent, dead
-- letters, retries); without this index each lookup read the tenant's whole message table.
CREATE INDEX messages_outbox_idx ON messages (outbox_id) WHERE outbox_id IS NOT NULL;

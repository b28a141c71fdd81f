-- Plans for the pipeline's hot statements at volume.
--
-- Every query runs under row-level security, which adds `tenant_id = current_tenant()`. With an
-- index on tenant_id alone, the planner (before statistics exist, and whenever it misjudges the
-- tenant's share) combined it with the selective index (outbox id, conversation) in a BitmapAnd:
-- each lookup then read every row id of the tenant, so the cost of marking one message sent or
-- reading one conversation's history grew with the table (bench/pipeline.py: 7 ms per lookup at
-- 70,000 rows). No query looks messages up by tenant alone; deleting a tenant removes its bots and
-- with them their messages through messages.bot_id (the tenant key's own cascade then scans, once
-- per deleted tenant).
DROP INDEX messages_tenant_idx;

-- A customer's unanswered messages, found without walking the bot's (or the conversation's) older
-- rows; the entries leave the index as messages are answered.
CREATE INDEX messages_contact_unanswered_idx ON messages (contact_id, created_at)
    WHERE direction = 'in' AND status = 'stored';

-- The same for contacts: an answer finds its contact by id, and was planned as a scan of the
-- tenant's contacts. Contacts are looked up by id or by (bot, jid), never by tenant alone.
DROP INDEX contacts_tenant_idx;

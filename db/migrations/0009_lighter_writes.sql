-- Two indexes every message paid for on insert that served only rare work.
--
-- events_created_idx (a btree on created_at) served only the retention prune, a range delete over
-- rows appended in time order; a BRIN index serves that with one summary per block range and nothing
-- to add per insert while the newest range is open. Two events per message (in, out) each paid a
-- btree insert for it.
DROP INDEX events_created_idx;
CREATE INDEX events_created_brin ON events USING brin (created_at);

-- messages_unanswered_idx (bot_id, created_at) served only the recovery's list of a bot's contacts
-- with unanswered messages, which now walks the bot's contacts and probes
-- messages_contact_unanswered_idx (same predicate) for each.
DROP INDEX messages_unanswered_idx;

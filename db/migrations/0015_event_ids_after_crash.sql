-- Event ids never come back after a crash (issue 15, found by the soak).
--
-- Notices are written without waiting for the flush (synchronous_commit off), so a crash of the server
-- (an immediate stop) can lose the last ones after their live delivery — by design. But it also loses
-- the sequence's advance with them, and the next events took the lost ids again: a subscriber that had
-- seen id N live resumed after N and never got the new event N (of its tenant or another's), and the
-- subscribers of the tenant whose event N was lost had seen "N" meaning something else.
--
-- Every publish (under the event log's advisory lock) first calls event_ids_after_restart(): when the
-- server started since the last publish, the sequence jumps a million ids ahead of anything a lost
-- commit can have handed out (async commit loses at most 3 x wal_writer_delay of work), before the
-- first new id. A clean restart jumps too: gaps in ids mean nothing to readers.
CREATE TABLE event_id_epoch (
    only_row          boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    server_started_at timestamptz NOT NULL
);
INSERT INTO event_id_epoch (server_started_at) VALUES (pg_postmaster_start_time());

CREATE FUNCTION event_ids_after_restart() RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        UPDATE event_id_epoch SET server_started_at = pg_postmaster_start_time()
         WHERE server_started_at <> pg_postmaster_start_time();
        IF FOUND THEN
            PERFORM setval('events_id_seq', (SELECT last_value FROM events_id_seq) + 1000000);
        END IF;
    END
    $$;

REVOKE ALL ON FUNCTION event_ids_after_restart() FROM PUBLIC;

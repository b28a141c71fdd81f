"""The pipeline's multi-row statements (db.pipeline_store) against the real PostgreSQL: many calls in
one statement keep every guarantee the single-row ones gave."""

import time
import uuid

import gevent
import gevent.event
import psycopg2

from db import conversations as conv
from db import pipeline_store as ps
from tests.sessions_harness import new_bot, new_tenant
from transports.events import MessageReceived


def _msg(chat="111@s.whatsapp.net", text="hi", wa=None, ts=None):
    return MessageReceived(wa or uuid.uuid4().hex.upper(), chat, chat, ts or time.time(), text=text)


def _wait_for_a_lock_wait(pool, timeout=10.0):
    """Until some backend of ours waits for a row lock (the claim, behind the open transaction)."""
    with gevent.Timeout(timeout, AssertionError("no statement came to wait for a lock")):
        while not pool.query(None, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                   " AND usename = current_user")[0][0]:
            gevent.sleep(0.01)


def _setup(pool):
    tenant = new_tenant(pool)
    return tenant, new_bot(pool, tenant, running=False)


def test_many_inbound_messages_of_several_bots_are_stored_in_one_statement_with_replays_marked(pool):
    tenant, bot = _setup(pool)
    other = new_bot(pool, tenant, running=False)
    first = _msg(text="one")
    stored = ps.store_many(pool, tenant, [(bot, first, "c1"), (other, _msg(text="two"), "c2"),
                                          (bot, first, "c1"), (bot, _msg(chat="222@s.whatsapp.net"), None)])
    assert stored[0].message_id is not None
    assert stored[1].message_id is not None
    assert stored[2].message_id is None  # the same delivery twice in one batch
    assert stored[2].contact_id == stored[0].contact_id
    assert stored[3].contact_id != stored[0].contact_id
    again = ps.store_many(pool, tenant, [(bot, first, "c1")])
    assert again[0].message_id is None
    count = pool.query(tenant, "SELECT count(*) FROM messages WHERE bot_id = %s AND direction = 'in'", (bot,))
    assert count[0][0] == 2


def test_prompt_inputs_give_each_contact_its_unanswered_messages_and_the_history_before_them(pool):
    tenant, bot = _setup(pool)
    now = time.time()
    a, b = "111@s.whatsapp.net", "222@s.whatsapp.net"
    old = ps.store_many(pool, tenant, [(bot, _msg(a, "earlier", ts=now - 10), None)])
    ps.answer_many(pool, tenant, [(bot, old[0].contact_id, [old[0].message_id], "reply", "rule", None, False)])
    ps.store_many(pool, tenant, [(bot, _msg(a, "now one", ts=now - 2), None),
                                 (bot, _msg(a, "now two", ts=now - 1), None),
                                 (bot, _msg(b, "other", ts=now), None)])
    contact_b = pool.query(tenant, "SELECT id FROM contacts WHERE jid = %s", (b,))[0][0]
    inputs = ps.prompt_inputs_many(pool, tenant, [(bot, old[0].contact_id, 10), (bot, str(contact_b), 0)])
    pending_a, history_a = inputs[0]
    assert [p[2] for p in pending_a] == ["now one", "now two"]
    assert history_a == [("in", "earlier"), ("out", "reply")]
    assert [p[2] for p in inputs[1][0]] == ["other"] and inputs[1][1] == []


def test_storing_with_prompt_inputs_returns_what_the_separate_read_returns_after_the_commit(pool):
    tenant, bot = _setup(pool)
    now = time.time()
    a, b, c = "111@s.whatsapp.net", "222@s.whatsapp.net", "333@s.whatsapp.net"
    old = ps.store_many(pool, tenant, [(bot, _msg(a, "earlier", ts=now - 10), None)])
    ps.answer_many(pool, tenant, [(bot, old[0].contact_id, [old[0].message_id], "reply", "rule", None, False)])
    ps.store_many(pool, tenant, [(bot, _msg(a, "waiting", ts=now - 5), None)])
    replay = _msg(b, "seen before", ts=now - 4)
    ps.store_many(pool, tenant, [(bot, replay, None)])
    stored = ps.store_many(pool, tenant, [
        (bot, _msg(a, "now one", ts=now - 2), None, 10), (bot, _msg(a, "now two", ts=now - 1), None, 10),
        (bot, replay, None, 1), (bot, _msg(c, "not asked", ts=now), None, -1),
    ])
    pending_a, history_a = stored[0].prompt
    assert [p[2] for p in pending_a] == ["waiting", "now one", "now two"]  # stored before, and just now
    assert history_a == [("in", "earlier"), ("out", "reply")]
    assert stored[1].prompt == stored[0].prompt
    assert stored[2].message_id is None and [p[2] for p in stored[2].prompt[0]] == ["seen before"]
    assert stored[3].prompt is None
    separate = ps.prompt_inputs_many(pool, tenant, [(bot, stored[0].contact_id, 10), (bot, stored[2].contact_id, 1)])
    assert separate == [stored[0].prompt, stored[2].prompt]


def test_storing_without_asking_for_prompt_inputs_reads_none(pool):
    tenant, bot = _setup(pool)
    stored = ps.store_many(pool, tenant, [(bot, _msg(), None), (bot, _msg(), None, -1)])
    assert [s.prompt for s in stored] == [None, None]


def test_the_contacts_with_unanswered_messages_are_those_of_the_bot_with_a_stored_inbound_message(pool):
    tenant, bot = _setup(pool)
    other = new_bot(pool, tenant, running=False)
    a, b, c = "111@s.whatsapp.net", "222@s.whatsapp.net", "333@s.whatsapp.net"
    stored = ps.store_many(pool, tenant, [(bot, _msg(a), None), (bot, _msg(b), None), (other, _msg(c), None)])
    ps.answer_many(pool, tenant, [(bot, stored[1].contact_id, [stored[1].message_id], "r", "rule", None, False)])
    assert conv.contacts_with_unanswered(pool, tenant, bot) == [(stored[0].contact_id, False, False)]
    pool.execute(tenant, "UPDATE contacts SET paused = true, phone_hold_until = now() + interval '1 minute'"
                         " WHERE id = %s", (stored[0].contact_id,))
    assert conv.contacts_with_unanswered(pool, tenant, bot) == [(stored[0].contact_id, True, True)]


def _mine(chat="111@s.whatsapp.net", text="I'll handle this", wa=None, **fields):
    return MessageReceived(wa or uuid.uuid4().hex.upper(), chat, "4930555000111@s.whatsapp.net", time.time(),
                           text=text, from_me=True, **fields)


def _rows(pool, tenant, contact_id):
    return pool.query(tenant, "SELECT direction, body, status, payload, wa_message_id FROM messages"
                              " WHERE contact_id = %s ORDER BY created_at, id", (contact_id,))


def test_a_message_from_the_phone_is_stored_outgoing_and_holds_the_conversation(pool):
    tenant, bot = _setup(pool)
    now = time.time()
    waiting = ps.store_many(pool, tenant, [(bot, _msg(text="anyone?", ts=now - 5), None)])[0]
    other = ps.store_many(pool, tenant, [(bot, _msg("222@s.whatsapp.net", ts=now - 5), None)])[0]
    assert not waiting.held
    phone = conv.store_from_phone(pool, tenant, bot, _mine(wa="PHONE1"), "cid-1", 60.0)
    assert phone.message_id is not None and phone.contact_id == waiting.contact_id
    assert phone.jid == "111@s.whatsapp.net" and not phone.paused and phone.paused_at is None
    assert phone.ignored == (waiting.message_id,)
    in_db = pool.query(tenant, "SELECT phone_hold_until, extract(epoch FROM phone_hold_until - now())"
                               " FROM contacts WHERE id = %s", (phone.contact_id,))[0]
    assert in_db[0] == phone.phone_hold_until and 55 < in_db[1] <= 60
    rows = _rows(pool, tenant, phone.contact_id)
    assert [(r[0], r[1], r[2]) for r in rows] == [("in", "anyone?", "ignored"), ("out", "I'll handle this", "sent")]
    assert rows[0][3]["ignored"] == conv.ANSWERED_FROM_PHONE
    assert rows[1][3] == {"source": "phone", "original_kind": "text"} and rows[1][4] == "PHONE1"
    # The other customer's conversation is untouched; this one's next message is stored as held.
    assert [r[2] for r in _rows(pool, tenant, other.contact_id)] == ["stored"]
    after = ps.store_many(pool, tenant, [(bot, _msg(text="thanks"), None), (bot, _msg("222@s.whatsapp.net"), None)])
    assert (after[0].held, after[1].held) == (True, False)


def test_a_message_from_the_phone_already_stored_changes_nothing(pool):
    tenant, bot = _setup(pool)
    first = conv.store_from_phone(pool, tenant, bot, _mine(wa="PHONE2"), None, 0.0)
    assert first.message_id is not None and first.phone_hold_until is None  # no hold asked for
    waiting = ps.store_many(pool, tenant, [(bot, _msg(text="hello"), None)])[0]
    again = conv.store_from_phone(pool, tenant, bot, _mine(wa="PHONE2"), None, 60.0)
    assert again.message_id is None and again.phone_hold_until is None and again.ignored == ()
    assert [r[2] for r in _rows(pool, tenant, waiting.contact_id)] == ["sent", "stored"]


def test_media_from_the_phone_keeps_its_caption_and_media_details(pool):
    tenant, bot = _setup(pool)
    event = _mine(text="", kind="image", caption="our menu", mime_type="image/jpeg", media_ref="m-1")
    phone = conv.store_from_phone(pool, tenant, bot, event, None, 60.0)
    kind, body, payload = pool.query(tenant, "SELECT kind, body, payload FROM messages WHERE id = %s",
                                     (phone.message_id,))[0]
    assert (kind, body) == ("image", "our menu")
    assert payload == {"source": "phone", "caption": "our menu", "mime_type": "image/jpeg", "media_ref": "m-1",
                       "original_kind": "image"}


def test_storing_later_hands_the_stored_rows_to_the_callback_once_committed(pool):
    tenant, bot = _setup(pool)
    store = ps.PipelineStore(pool)
    outcome = gevent.event.AsyncResult()
    store.store_later(tenant, bot, [(_msg(text="later"), "c")], None,
                      lambda stored, error: outcome.set((stored, error)))
    stored, error = outcome.get(timeout=10)
    assert error is None and len(stored) == 1 and stored[0].message_id is not None
    assert pool.query(tenant, "SELECT body FROM messages WHERE id = %s", (stored[0].message_id,)) == [("later",)]


def test_two_answers_to_the_same_message_in_one_statement_queue_one_outbox_row(pool):
    tenant, bot = _setup(pool)
    stored = ps.store_many(pool, tenant, [(bot, _msg(), None)])[0]
    results = ps.answer_many(pool, tenant, [(bot, stored.contact_id, [stored.message_id], "first", "ai", "c", False),
                                            (bot, stored.contact_id, [stored.message_id], "second", "ai", "c", False)])
    assert sum(r is not None for r in results) == 1
    late = (bot, stored.contact_id, [stored.message_id], "late", "ai", None, False)
    assert ps.answer_many(pool, tenant, [late]) == [None]
    rows = pool.query(tenant, "SELECT count(*) FROM outbox WHERE bot_id = %s", (bot,))
    assert rows[0][0] == 1


def test_a_claim_counts_the_attempt_and_says_which_rows_had_an_attempt_of_unknown_outcome(pool):
    tenant, bot = _setup(pool)
    stored = ps.store_many(pool, tenant, [(bot, _msg(text=str(i)), None) for i in range(3)])
    for s in stored:
        ps.answer_many(pool, tenant, [(bot, s.contact_id, [s.message_id], "r", "rule", None, False)])
    first = ps.claim_many(pool, tenant, [(bot, 2, ())])[0]
    assert len(first) == 2 and all(r.state == "pending" and r.attempts == 0 for r in first)
    ps.release(pool, tenant, first[1:])
    second = ps.claim_many(pool, tenant, [(bot, 10, ())])[0]
    states = {r.id: (r.state, r.attempts) for r in second}
    assert states[first[0].id] == ("sending", 1)  # claimed before and never marked: ask the network
    assert states[first[1].id] == ("pending", 0)  # released: as if never claimed
    assert len(second) == 3


def test_marking_sent_does_not_move_a_message_back_from_a_later_receipt(pool):
    tenant, bot = _setup(pool)
    s = ps.store_many(pool, tenant, [(bot, _msg(), None)])[0]
    ps.answer_many(pool, tenant, [(bot, s.contact_id, [s.message_id], "r", "rule", None, False)])
    row = ps.claim_many(pool, tenant, [(bot, 1, ())])[0][0]
    conv.record_receipt(pool, tenant, bot, [row.wa_message_id], "delivered")
    ps.mark_sent_many(pool, tenant, [(row.id, None)])
    status = pool.query(tenant, "SELECT status FROM messages WHERE outbox_id = %s AND direction = 'out'",
                        (row.id,))[0][0]
    state = pool.query(tenant, "SELECT state FROM outbox WHERE id = %s", (row.id,))[0][0]
    assert (status, state) == ("delivered", "sent")


def test_concurrent_calls_from_many_greenlets_share_statements_and_each_gets_its_own_rows(pool):
    tenant, bot = _setup(pool)
    statements = []
    store = ps.PipelineStore(pool, observe=lambda name, rows: statements.append((name, rows)))
    events = [_msg(chat=f"{i}@s.whatsapp.net", text=str(i)) for i in range(40)]
    jobs = [gevent.spawn(store.store_inbound, tenant, bot, [(e, None)]) for e in events]
    gevent.joinall(jobs, raise_error=True)
    ids = [job.value[0].message_id for job in jobs]
    assert len(set(ids)) == 40 and None not in ids
    texts = dict(pool.query(tenant, "SELECT id::text, body FROM messages WHERE id = ANY(%s::uuid[])", (ids,)))
    assert [texts[i] for i in ids] == [str(i) for i in range(40)]
    assert len(statements) < 40


def test_an_answer_sent_at_once_is_written_claimed_with_its_attempt_counted(pool):
    tenant, bot = _setup(pool)
    s = ps.store_many(pool, tenant, [(bot, _msg(), None)])[0]
    ((outbox_id, row),) = ps.answer_many(pool, tenant, [(bot, s.contact_id, [s.message_id], "now", "ai", "c", True)])
    assert row.id == outbox_id and row.body == "now" and row.to_jid == "111@s.whatsapp.net"
    assert (row.state, row.attempts) == ("pending", 0)  # as from a claim: the state before it
    stored = pool.query(tenant, "SELECT state, attempts FROM outbox WHERE id = %s", (outbox_id,))
    assert stored == [("sending", 1)]
    ps.release(pool, tenant, [row])
    assert pool.query(tenant, "SELECT state, attempts FROM outbox WHERE id = %s", (outbox_id,)) == [("pending", 0)]


def test_a_claim_leaves_out_the_rows_it_is_told_are_being_recorded_and_takes_the_next(pool):
    tenant, bot = _setup(pool)
    stored = ps.store_many(pool, tenant, [(bot, _msg(text=str(i)), None) for i in range(3)])
    for s in stored:
        ps.answer_many(pool, tenant, [(bot, s.contact_id, [s.message_id], "r", "rule", None, False)])
    first = ps.claim_many(pool, tenant, [(bot, 1, ())])[0]
    again = ps.claim_many(pool, tenant, [(bot, 1, (first[0].id,))])[0]
    assert len(again) == 1 and again[0].id != first[0].id and again[0].state == "pending"


def test_a_claim_does_not_turn_a_row_recorded_as_sent_back_to_sending(pool):
    tenant, bot = _setup(pool)
    s = ps.store_many(pool, tenant, [(bot, _msg(), None)])[0]
    ps.answer_many(pool, tenant, [(bot, s.contact_id, [s.message_id], "r", "rule", None, False)])
    (row,) = ps.claim_many(pool, tenant, [(bot, 1, ())])[0]
    # The record of the send holds the row while a claim starts: the claim reads the row as
    # 'sending' in its snapshot, waits for the lock, and must then see it is 'sent'.
    with pool.unit(tenant) as unit:
        unit.execute("UPDATE outbox SET state = 'sent' WHERE id = %s", (row.id,))
        claim = gevent.spawn(ps.claim_many, pool, tenant, [(bot, 1, ())])
        _wait_for_a_lock_wait(pool)
        assert not claim.ready()
    assert claim.get(timeout=10) == [[]]
    assert pool.query(tenant, "SELECT state FROM outbox WHERE id = %s", (row.id,)) == [("sent",)]


def test_a_new_tenants_rows_are_marked_sent_by_id_even_when_the_statistics_do_not_know_the_tenant(pool, pg):
    # An established tenant with a large outbox, analysed: the statistics know only the tenants then.
    old, old_bot = _setup(pool)
    pool.execute(old, "INSERT INTO outbox (bot_id, to_jid, wa_message_id, state)"
                      " SELECT %s, 'x', 'w' || g, 'sent' FROM generate_series(1, 3000) g", (old_bot,))
    owner = psycopg2.connect(pg.owner_url)
    try:
        owner.autocommit = True
        with owner.cursor() as cur:
            cur.execute("ANALYZE outbox")
    finally:
        owner.close()
    # A tenant whose rows came after that: the planner puts its share of the table at about one row.
    new, new_bot = _setup(pool)
    pool.execute(new, "INSERT INTO outbox (bot_id, to_jid, wa_message_id, state)"
                      " SELECT %s, 'x', 'w' || g, 'sending' FROM generate_series(1, 500) g", (new_bot,))
    ids = [r[0] for r in pool.query(new, "SELECT id::text FROM outbox WHERE bot_id = %s LIMIT 5", (new_bot,))]
    plan = "\n".join(r[0] for r in pool.query(new, "EXPLAIN " + ps._MARK_SENT, (ids, [None] * len(ids))))
    # Each row found through its key, not by reading the tenant's rows (cost growing with its outbox).
    assert "Index Scan using outbox_pkey on outbox" in plan, plan


def _answers(pool, tenant, bot, chats):
    """One stored message and its queued ('pending') answer per chat, in order; the outbox ids."""
    ids = []
    for chat in chats:
        s = ps.store_many(pool, tenant, [(bot, _msg(chat=chat), None)])[0]
        answer = (bot, s.contact_id, [s.message_id], chat, "rule", None, False)
        ((outbox_id, _),) = ps.answer_many(pool, tenant, [answer])
        ids.append(outbox_id)
    return ids


def test_a_claim_passes_over_a_customers_messages_while_an_older_one_to_them_waits_for_its_retry(pool):
    # Found by the soak: the customer's later messages went out while the one before waited for its
    # retry, so they arrived out of their order.
    tenant, bot = _setup(pool)
    a, b = "111@s.whatsapp.net", "222@s.whatsapp.net"
    first, second, other = _answers(pool, tenant, bot, [a, a, b])
    conv.mark_failed(pool, tenant, first, "timed out", 60)
    claimed = ps.claim_many(pool, tenant, [(bot, 10, ())])[0]
    assert [r.id for r in claimed] == [other]
    pool.execute(tenant, "UPDATE outbox SET next_attempt_at = now() WHERE id = %s", (first,))
    ps.release(pool, tenant, claimed)
    assert [r.id for r in ps.claim_many(pool, tenant, [(bot, 10, ())])[0]] == [first, second, other]


def test_a_claim_says_when_the_next_row_waiting_for_its_retry_is_due_by_the_databases_clock(pool):
    # Found by the soak (the fourth 30-minute run): the pipeline timed a retry by its own clock, its
    # claim came a moment before the row's next_attempt_at (set from the database's now()), and
    # nothing timed another claim.
    tenant, bot = _setup(pool)
    other = new_bot(pool, tenant, running=False)
    first, second, due = _answers(pool, tenant, bot, ["111@s.whatsapp.net"] * 2 + ["222@s.whatsapp.net"])
    conv.mark_failed(pool, tenant, first, "not connected (backing_off)", 60)
    conv.mark_failed(pool, tenant, second, "not connected (backing_off)", 30)
    mine, others = ps.claim_many(pool, tenant, [(bot, 10, ()), (other, 10, ())])
    assert [r.id for r in mine] == [due]
    assert 29 < mine.due_in <= 30 and mine.held_for is None
    assert others.due_in is None and others == []
    ps.release(pool, tenant, mine)
    pool.execute(tenant, "UPDATE outbox SET next_attempt_at = now() WHERE id IN (%s, %s)", (first, second))
    everything = ps.claim_many(pool, tenant, [(bot, 10, ())])[0]
    assert [r.id for r in everything] == [first, second, due] and everything.due_in is None


def test_an_answer_asked_to_go_at_once_waits_in_the_outbox_behind_an_older_unsent_message_to_the_customer(pool):
    tenant, bot = _setup(pool)
    (waiting,) = _answers(pool, tenant, bot, ["111@s.whatsapp.net"])
    conv.mark_failed(pool, tenant, waiting, "timed out", 60)
    s = ps.store_many(pool, tenant, [(bot, _msg(), None)])[0]
    ((outbox_id, row),) = ps.answer_many(pool, tenant, [(bot, s.contact_id, [s.message_id], "now", "ai", "c", True)])
    assert row is None  # not to be sent at once: a claim sends it, after the older one
    assert pool.query(tenant, "SELECT state, attempts FROM outbox WHERE id = %s", (outbox_id,)) == [("pending", 0)]
    other = ps.store_many(pool, tenant, [(bot, _msg(chat="222@s.whatsapp.net"), None)])[0]
    ((_, direct),) = ps.answer_many(pool, tenant, [(bot, other.contact_id, [other.message_id], "now", "ai", "c",
                                                    True)])
    assert direct is not None  # another customer's answer still goes at once


def test_an_answer_that_waited_behind_an_api_send_to_the_customer_sees_it_and_does_not_overtake_it(pool, pg):
    """The fifth 30-minute soak: the answer's statement took its snapshot, then waited for the tenant's
    quota row held by an API send to the same customer; it did not see that send, went out at once and
    arrived first. Now the row is locked before the answer's statement begins."""
    from db.bots import NOTIFY_CHANNEL

    tenant, bot = _setup(pool)
    s = ps.store_many(pool, tenant, [(bot, _msg(), None)])[0]
    conn = psycopg2.connect(pg.app_url)
    try:
        with conn.cursor() as cur:  # an API send to the same customer, not yet committed
            cur.execute("SELECT set_config('app.current_tenant', %s, false)", (tenant,))
            cur.execute(conv._ENQUEUE, {"bot": bot, "to": "111@s.whatsapp.net", "wa": conv.new_message_id(),
                                        "kind": "text", "text": "from the API", "cid": None, "media": None,
                                        "channel": NOTIFY_CHANNEL, "by": None})
            (api_row,) = cur.fetchone()[:1]
        answering = gevent.spawn(ps.answer_many, pool, tenant,
                                 [(bot, s.contact_id, [s.message_id], "the answer", "rule", "c", True)])
        _wait_for_a_lock_wait(pool)
        conn.commit()
        ((answer_row, sent_at_once),) = answering.get(timeout=10)
    finally:
        conn.close()
    assert sent_at_once is None  # it waits in the outbox behind the API's message
    rows = pool.query(tenant, "SELECT id::text, state FROM outbox WHERE bot_id = %s ORDER BY created_at, id", (bot,))
    assert rows == [(str(api_row), "pending"), (answer_row, "pending")]

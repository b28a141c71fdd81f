"""The pipeline machine (``sansio.pipeline_machine``) on fake time, without a database: each race the
pipeline has had reproduced as a transition, then random interleavings against a small model of the
world (the database, the AI, the network), checked against the pipeline's promises."""

from __future__ import annotations

import itertools
import random

import psycopg2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.conversations import OWNER_ON_PHONE, Outgoing, PhoneStored, Stored
from sansio import pipeline_machine as pm
from transports.base import TransportError
from transports.events import MessageReceived

PRICE_RULE = [{"match": "keyword", "pattern": "price", "reply": "10 EUR"}]
AI_ON = {"enabled": True, "history": 5}
AI_WITH_FALLBACK = {"enabled": True, "history": 5, "fallback_reply": "We will get back to you."}

_ids = itertools.count(1)


def message(text: str = "hello", contact: str = "c1", wa: str | None = None, kind: str = "text",
            from_me: bool = False) -> MessageReceived:
    return MessageReceived(message_id=wa or f"WA-{next(_ids)}", chat=contact, sender=contact, timestamp=0.0,
                           kind=kind, text=text, from_me=from_me)


def row(outbox_id: str, state: str = "pending", attempts: int = 0, to: str = "c1") -> Outgoing:
    return Outgoing(outbox_id, f"{to}@s.whatsapp.net", f"3EB0{outbox_id}", "text", "an answer", state, attempts,
                    f"cid-{outbox_id}", None)


def of(effects: list, kind: type) -> list:
    return [effect for effect in effects if type(effect) is kind]


def one(effects: list, kind: type):
    found = of(effects, kind)
    assert len(found) == 1, f"expected one {kind.__name__} in {effects}"
    return found[0]


class Bot:
    """One bot's machine driven by hand: ``feed`` an input at the current fake time, get its effects."""

    def __init__(self, **settings: object) -> None:
        self.now = 100.0
        self.rng = random.Random(7)
        self.state = pm.PipelineState.initial(pm.Settings(**settings), self.now)

    def feed(self, event: object) -> list:
        self.state, effects = pm.transition(self.state, event, self.now, self.rng)
        return effects

    def ready(self, rules: list = (), ai: dict | None = None) -> Bot:
        """Reply settings loaded, connected, and the first claim (after the link came up) found nothing."""
        self.feed(pm.ConfigLoaded(list(rules), ai or {}, True))
        assert of(self.feed(pm.LinkUp(True)), pm.Claim)
        self.feed(pm.Claimed(()))
        return self

    def store(self, *events: MessageReceived) -> pm.StoreBatch:
        """Customer messages arrive; the store they start (the first's, if one is already in flight)."""
        batches = [effect for event in events for effect in self.feed(pm.Inbound(event, f"cid-{event.message_id}"))
                   if type(effect) is pm.StoreBatch]
        return batches[0] if batches else None

    def stored(self, batch: pm.StoreBatch, prompt: object = None, **flags: bool) -> list:
        """The store of ``batch`` commits: each message new, its contact the chat."""
        results = [Stored(f"m-{event.message_id}", event.chat, flags.get("paused", False), prompt,
                          flags.get("held", False)) for event, _ in batch.items]
        return self.feed(pm.StoreDone(results))

    def answered(self, write: pm.WriteAnswer, outbox_id: str = "o1", nothing_left: bool = False) -> list:
        """The answer ``write`` commits (as pending, or claimed for sending if it was sent at once)."""
        result = None if nothing_left else (outbox_id, row(outbox_id) if write.send_now else None)
        return self.feed(pm.Answered(write.contact_id, write.send_now, result, None, write.cid))


# -- inbound ---------------------------------------------------------------------------------------


def test_one_store_is_in_flight_at_a_time_and_what_arrives_meanwhile_goes_in_the_next_batch():
    bot = Bot().ready(ai=AI_ON)
    first = bot.store(message("a"))
    assert bot.store(message("b"), message("c")) is None  # waiting for the first store
    effects = bot.stored(first)
    second = one(effects, pm.StoreBatch)
    assert [event.text for event, _ in second.items] == ["b", "c"]


def test_messages_are_acked_only_once_their_store_has_committed():
    bot = Bot().ready(rules=PRICE_RULE)
    event = message("price?")
    effects = bot.feed(pm.Inbound(event, "cid"))
    assert of(effects, pm.Ack) == []
    assert one(bot.stored(one(effects, pm.StoreBatch)), pm.Ack) == pm.Ack((event.message_id,))


def test_a_replayed_delivery_is_acked_again_but_neither_announced_nor_answered():
    bot = Bot().ready(rules=PRICE_RULE)
    event = message("price?")
    batch = bot.store(event)
    effects = bot.feed(pm.StoreDone([Stored(None, "c1", False)]))
    assert one(effects, pm.Ack) == pm.Ack((event.message_id,))
    assert of(effects, pm.Publish) == [] and of(effects, pm.WriteAnswer) == []
    assert batch.items == ((event, "cid-" + event.message_id),)


def test_a_store_that_fails_on_an_outage_is_retried_with_the_store_backoff_and_keeps_the_order():
    bot = Bot().ready(ai=AI_ON)
    bot.store(message("a"))
    delays = []
    for _ in range(6):
        effects = bot.feed(pm.StoreDone(None, psycopg2.OperationalError("server closed the connection")))
        timer = one(effects, pm.ScheduleTimer)
        delays.append(round(timer.at - bot.now, 6))
        bot.store(message("later"))  # arrives during the wait: no store starts before the timer
        bot.now = timer.at
        retry = one(bot.feed(timer.event), pm.StoreBatch)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.0, 3.0]  # 0.2 s doubling, capped at 3 s
    assert [event.text for event, _ in retry.items] == ["a"] + ["later"] * 6


def test_a_timer_that_fired_after_it_was_replaced_changes_nothing():
    bot = Bot().ready(ai=AI_ON)
    bot.store(message("a"))
    old = one(bot.feed(pm.StoreDone(None, psycopg2.OperationalError("gone"))), pm.ScheduleTimer)
    bot.now = old.at
    one(bot.feed(old.event), pm.StoreBatch)
    one(bot.feed(pm.StoreDone(None, psycopg2.OperationalError("gone"))), pm.ScheduleTimer)
    assert bot.feed(old.event) == []  # the first retry's timer, delivered twice


def test_a_batch_that_fails_on_bad_data_is_stored_one_by_one_and_the_bad_message_is_left_unacked():
    bot = Bot().ready(rules=PRICE_RULE)
    bad, good = message("price?"), message("price again")
    first = bot.store(message("first"))
    bot.store(bad, good)
    batch = one(bot.stored(first), pm.StoreBatch)
    assert len(batch.items) == 2
    alone = one(bot.feed(pm.StoreDone(None, psycopg2.DataError("invalid byte sequence"))), pm.StoreBatch)
    assert [event for event, _ in alone.items] == [bad]
    effects = bot.feed(pm.StoreDone(None, psycopg2.DataError("invalid byte sequence")))
    assert one(effects, pm.Capture).where == "store_inbound"
    assert of(effects, pm.Ack) == []
    assert [event for event, _ in one(effects, pm.StoreBatch).items] == [good]
    assert one(bot.stored(pm.StoreBatch(((good, "cid"),), None)), pm.Ack) == pm.Ack((good.message_id,))


def test_the_backlog_is_capped_and_a_message_beyond_it_is_left_to_the_network():
    bot = Bot(max_waiting=3).ready(ai=AI_ON)
    for text in "abc":
        bot.store(message(text))
    effects = bot.feed(pm.Inbound(message("d"), "cid"))
    assert one(effects, pm.Log).message == "inbound backlog full; message left to the network"
    assert len(bot.state.waiting) + len(bot.state.storing.items) == 3


# -- the owner on the phone (9109629) -----------------------------------------------------------------


def _phone_stored(contact: str = "c1", new: bool = True) -> PhoneStored:
    return PhoneStored("m-phone" if new else None, contact, contact + "@s.whatsapp.net", False, None, None, None, ())


def test_the_owners_message_from_the_phone_is_stored_alone_and_in_arrival_order():
    bot = Bot(phone_takeover=60).ready(ai=AI_ON)
    first = bot.store(message("a"))
    owner = message("the owner writes", from_me=True)
    bot.store(message("b"), owner, message("c"))
    before = one(bot.stored(first), pm.StoreBatch)
    assert [event.text for event, _ in before.items] == ["b"]  # the batch ends before the owner's message
    phone = one(bot.stored(before), pm.StorePhone)
    assert phone.event is owner and phone.hold == 60
    effects = bot.feed(pm.StoreDone([_phone_stored()]))
    assert one(effects, pm.Ack) == pm.Ack((owner.message_id,))
    assert [event.text for event, _ in one(effects, pm.StoreBatch).items] == ["c"]


def test_a_new_message_from_the_phone_drops_the_customers_debounce():
    bot = Bot(ai_debounce=2, phone_takeover=60).ready(ai=AI_ON)
    debounce = one(bot.stored(bot.store(message("hi"))), pm.ScheduleTimer)
    bot.store(message("the owner answers", from_me=True))
    effects = bot.feed(pm.StoreDone([_phone_stored()]))
    assert pm.CancelTimer(pm.debounce_timer("c1")) in effects
    assert {p.event_type for p in of(effects, pm.Publish)} == {"message.out", "conversation.state"}
    bot.now = debounce.at
    assert bot.feed(debounce.event) == []  # fired before it was cancelled: nothing to answer


def test_the_echo_of_a_message_the_platform_sent_holds_nothing():
    bot = Bot(ai_debounce=2, phone_takeover=60).ready(ai=AI_ON)
    one(bot.stored(bot.store(message("hi"))), pm.ScheduleTimer)
    bot.store(message("our own answer", from_me=True))
    effects = bot.feed(pm.StoreDone([_phone_stored(new=False)]))
    assert of(effects, pm.CancelTimer) == [] and of(effects, pm.Publish) == []
    assert bot.state.contact("c1").state == "debouncing"


def test_a_customer_message_stored_during_the_hold_is_ignored():
    bot = Bot(phone_takeover=60, held_reason=OWNER_ON_PHONE).ready(ai=AI_ON)
    effects = bot.stored(bot.store(message("hello?")), held=True)
    assert one(effects, pm.Ignore).reason == OWNER_ON_PHONE
    assert of(effects, pm.StartAi) == [] and of(effects, pm.WriteAnswer) == []


def test_a_message_of_a_paused_conversation_is_ignored():
    bot = Bot().ready(rules=PRICE_RULE, ai=AI_ON)
    effects = bot.stored(bot.store(message("price?")), paused=True)
    assert one(effects, pm.Ignore).reason == pm.PAUSED
    assert of(effects, pm.WriteAnswer) == []


# -- answering ---------------------------------------------------------------------------------------


def test_rules_answer_at_once_and_the_ai_is_not_asked():
    bot = Bot().ready(rules=PRICE_RULE, ai=AI_ON)
    effects = bot.stored(bot.store(message("what is the price")))
    write = one(effects, pm.WriteAnswer)
    assert (write.text, write.source) == ("10 EUR", "rule")
    assert of(effects, pm.StartAi) == []


def test_without_a_rule_or_ai_a_message_is_ignored():
    bot = Bot().ready(rules=PRICE_RULE)
    assert one(bot.stored(bot.store(message("hello"))), pm.Ignore).reason == pm.NO_ANSWER


def test_messages_within_the_debounce_get_one_ai_call():
    bot = Bot(ai_debounce=2).ready(ai=AI_ON)
    first = one(bot.stored(bot.store(message("hi"))), pm.ScheduleTimer)
    bot.now += 1
    second = one(bot.stored(bot.store(message("I need help"))), pm.ScheduleTimer)
    assert second.key == first.key and second.at == first.at + 1  # replaces the first
    bot.now = first.at
    assert bot.feed(first.event) == []
    bot.now = second.at
    call = one(bot.feed(second.event), pm.StartAi)
    assert call.contact_id == "c1" and call.prompt is None  # the call reads the conversation itself


def test_without_debounce_the_ai_uses_the_prompt_inputs_the_store_read():
    bot = Bot().ready(ai=AI_ON)
    batch = bot.store(message("hi"))
    assert batch.wants == (5,)
    prompt = ([("m-1", "text", "hi")], [])
    assert one(bot.stored(batch, prompt=prompt), pm.StartAi).prompt == prompt


def test_a_message_a_rule_answers_is_not_asked_for_prompt_inputs():
    bot = Bot().ready(rules=PRICE_RULE, ai=AI_ON)
    assert bot.store(message("price?")).wants == (-1,)


def test_prompt_inputs_read_by_a_store_are_dropped_when_the_customer_was_answered_while_it_ran():
    # 3afb875: the store read m1 as unanswered; the AI's answer to m1 was written while it ran.
    bot = Bot().ready(ai=AI_ON)
    call = one(bot.stored(bot.store(message("m1")), prompt=([("m-1", "text", "m1")], [])), pm.StartAi)
    second = bot.store(message("m2"))
    write = one(bot.feed(pm.AiDone("c1", ("m-1",), "answer to m1", None, "ai", call.cid)), pm.WriteAnswer)
    bot.answered(write)
    stale = ([("m-1", "text", "m1"), ("m-2", "text", "m2")], [])
    assert one(bot.stored(second, prompt=stale), pm.StartAi).prompt is None  # read again


def test_a_debounce_that_ends_while_a_rule_answer_is_being_written_waits_for_it():
    # adf42ca: the AI call would have read the message being answered as unanswered.
    bot = Bot(ai_debounce=2).ready(rules=PRICE_RULE, ai=AI_ON)
    debounce = one(bot.stored(bot.store(message("hi"))), pm.ScheduleTimer)
    write = one(bot.stored(bot.store(message("and the price?"))), pm.WriteAnswer)
    bot.now = debounce.at
    assert of(bot.feed(debounce.event), pm.StartAi) == []
    again = one(bot.answered(write), pm.ScheduleTimer)  # debounced again once the answer is written
    bot.now = again.at
    assert one(bot.feed(again.event), pm.StartAi).contact_id == "c1"


def test_no_ai_call_starts_for_a_customer_whose_answer_is_being_written():
    # b0e8c5d: the call would see the messages being answered as unanswered.
    bot = Bot().ready(rules=PRICE_RULE, ai=AI_ON)
    write = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    assert of(bot.stored(bot.store(message("thanks, and when do you open?"))), pm.StartAi) == []
    assert bot.state.contact("c1").again
    assert one(bot.answered(write), pm.StartAi).contact_id == "c1"


def test_one_ai_call_per_customer_and_what_arrives_meanwhile_is_answered_after_it():
    bot = Bot().ready(ai=AI_ON)
    call = one(bot.stored(bot.store(message("hi"))), pm.StartAi)
    assert of(bot.stored(bot.store(message("anyone?"))), pm.StartAi) == []
    effects = bot.feed(pm.AiDone("c1", ("m-1",), "Hello!", None, "ai", call.cid))
    assert one(effects, pm.WriteAnswer).text == "Hello!"
    assert of(effects, pm.StartAi) == []  # after the answer is written
    assert one(bot.answered(one(effects, pm.WriteAnswer)), pm.StartAi).contact_id == "c1"


def test_while_the_ai_fails_the_fallback_reply_is_written_and_the_failure_published():
    bot = Bot().ready(ai=AI_WITH_FALLBACK)
    call = one(bot.stored(bot.store(message("hi"))), pm.StartAi)
    effects = bot.feed(pm.AiDone("c1", ("m-1",), None, "provider down", "ai", call.cid))
    assert one(effects, pm.WriteAnswer).source == "fallback"
    assert one(effects, pm.Publish).event_type == "ai.error"


def test_without_a_fallback_a_failed_ai_call_ignores_the_messages():
    bot = Bot().ready(ai=AI_ON)
    call = one(bot.stored(bot.store(message("hi"))), pm.StartAi)
    effects = bot.feed(pm.AiDone("c1", ("m-1",), None, "provider down", "ai", call.cid))
    assert one(effects, pm.Ignore) == pm.Ignore(("m-1",), pm.AI_UNAVAILABLE)


def test_when_the_conversation_cannot_be_read_the_ai_is_asked_again_after_a_second():
    bot = Bot().ready(ai=AI_ON)
    call = one(bot.stored(bot.store(message("hi"))), pm.StartAi)
    timer = one(bot.feed(pm.AiDone("c1", (), None, None, "retry", call.cid)), pm.ScheduleTimer)
    assert timer.at == bot.now + 1.0
    bot.now = timer.at
    assert one(bot.feed(timer.event), pm.StartAi).prompt is None


def test_an_input_that_needs_the_reply_settings_waits_for_them_and_is_handled_once_they_are_loaded():
    bot = Bot().ready(rules=PRICE_RULE)
    bot.feed(pm.Wake())  # the rules may have changed
    bot.feed(pm.Claimed(()))
    batch = bot.store(message("price?"))
    assert batch.wants is None  # the store does not wait for the settings
    assert bot.stored(batch) == [pm.LoadConfig()]
    effects = bot.feed(pm.ConfigLoaded(PRICE_RULE, {}, True))
    assert one(effects, pm.WriteAnswer).text == "10 EUR"
    assert one(effects, pm.Ack) and bot.state.awaiting_config == ()


def test_stored_rules_that_are_invalid_are_logged_and_answering_goes_on_without_them():
    bot = Bot()
    effects = bot.feed(pm.ConfigLoaded([{"match": "regex", "pattern": "(a+)+", "reply": "x"}], AI_ON, True))
    assert one(effects, pm.Log).level == "error"
    assert bot.state.config.rules == () and bot.state.config.ai_on


def test_after_a_restart_waiting_messages_of_paused_or_held_conversations_are_ignored_not_answered():
    bot = Bot().ready(rules=PRICE_RULE, ai=AI_ON)
    assert bot.feed(pm.Start()) == [pm.Recover()]
    effects = bot.feed(pm.Recovered((
        ("paused", True, False, (("m-p", "text", "price?"),)),
        ("held", False, True, (("m-h", "text", "price?"),)),
        ("open", False, False, (("m-o1", "text", "price?"), ("m-o2", "text", "hello"))),
    ), 30.0))
    assert of(effects, pm.Ignore) == [pm.Ignore(("m-p",), pm.PAUSED), pm.Ignore(("m-h",), pm.Settings().held_reason)]
    assert [(w.contact_id, w.message_ids) for w in of(effects, pm.WriteAnswer)] == [("open", ("m-o1",))]
    assert bot.state.contact("open").again  # its other message goes to the AI once the rule's answer is written
    assert one(effects, pm.ScheduleTimer).at == bot.now + 30.0  # the retry the last incarnation left


def test_after_a_restart_waiting_messages_no_rule_matches_are_ignored_when_the_ai_is_off():
    # Before: answered by neither, and left 'stored' for good (the store's own path ignores them).
    bot = Bot().ready(rules=PRICE_RULE)
    bot.feed(pm.Start())
    effects = bot.feed(pm.Recovered((("c1", False, False, (("m-1", "text", "price?"), ("m-2", "text", "hello"))),),
                                    None))
    assert [w.message_ids for w in of(effects, pm.WriteAnswer)] == [("m-1",)]
    assert of(effects, pm.Ignore) == [pm.Ignore(("m-2",), pm.NO_ANSWER)]
    assert of(effects, pm.StartAi) == [] and of(effects, pm.ScheduleTimer) == []


# -- delivery ----------------------------------------------------------------------------------------


def test_an_answer_is_written_claimed_and_sent_at_once_when_nothing_older_is_due():
    # c34af55: no claim statement for it.
    bot = Bot().ready(rules=PRICE_RULE)
    write = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    assert write.send_now
    effects = bot.answered(write)
    assert one(effects, pm.Send).row.id == "o1" and of(effects, pm.Claim) == []
    effects = bot.feed(pm.SendOk(one(effects, pm.Send).row, "NET-1"))
    assert one(effects, pm.MarkSent) == pm.MarkSent((("o1", "NET-1"),))
    assert one(effects, pm.Publish).event_type == "message.out"


def test_an_answer_waits_for_a_claim_while_rows_may_be_due_that_no_claim_has_seen():
    bot = Bot()
    bot.feed(pm.ConfigLoaded(PRICE_RULE, {}, True))
    bot.feed(pm.LinkUp(True))  # claiming: rows may be due
    write = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    assert not write.send_now


def test_an_answer_is_not_sent_at_once_beyond_the_send_rate():
    bot = Bot(send_rate=1 / 60, send_burst=1).ready(rules=PRICE_RULE)
    first = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    second = one(bot.stored(bot.store(message("price?", contact="c2"))), pm.WriteAnswer)
    assert first.send_now and not second.send_now  # one token, and the first answer will take it


def test_a_delivery_deferred_for_answers_in_flight_keeps_later_answers_from_being_sent_at_once():
    # 335b7c0: the pending answer waits for the deferred claim; a later answer, once the bucket has
    # refilled, would have been sent at once ahead of it.
    bot = Bot(send_rate=0.5, send_burst=2).ready(rules=PRICE_RULE)
    spent = one(bot.answered(one(bot.stored(bot.store(message("price?", contact="c0"))), pm.WriteAnswer)), pm.Send)
    bot.feed(pm.SendOk(spent.row, None))  # one token left
    now = one(bot.stored(bot.store(message("price?", contact="c1"))), pm.WriteAnswer)
    pending = one(bot.stored(bot.store(message("price?", contact="c2"))), pm.WriteAnswer)
    assert now.send_now and not pending.send_now
    assert of(bot.answered(pending, "o2"), pm.Claim) == []  # deferred: the first answer is in flight
    bot.now += 10  # the bucket is full again
    later = one(bot.stored(bot.store(message("price?", contact="c3"))), pm.WriteAnswer)
    assert not later.send_now


def test_no_claim_runs_while_an_answer_written_for_sending_at_once_is_in_flight():
    # b0e8c5d: the claim could take that row too and send it twice.
    bot = Bot().ready(rules=PRICE_RULE)
    write = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    assert of(bot.feed(pm.Wake()), pm.Claim) == []
    assert bot.state.delivery == "deferred"
    effects = bot.answered(write)
    assert one(effects, pm.Claim)  # the deferred delivery, once the answer is no longer in flight
    assert one(effects, pm.Release).rows == (row("o1"),)  # see the next test for why it goes back


def test_an_answer_written_for_sending_at_once_does_not_overtake_rows_that_became_due_meanwhile():
    # Found by the property test: an API message was committed (and woke the pipeline) while the
    # answer was being written; sent at once, the answer would have gone out before it. It goes back
    # unclaimed, and the claim takes both, oldest first.
    bot = Bot().ready(rules=PRICE_RULE)
    write = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    assert write.send_now
    bot.feed(pm.Wake())  # the API's row
    effects = bot.answered(write)
    assert of(effects, pm.Send) == []
    assert [type(effect) for effect in effects if type(effect) in (pm.Release, pm.Claim)] == [pm.Release, pm.Claim]


def test_an_answer_written_while_the_bucket_was_empty_is_not_overtaken_by_a_later_one():
    # Found by the property test below: the first answer waits in the outbox ('pending'); once the
    # bucket refills, a later answer must not be sent at once ahead of it.
    bot = Bot(send_rate=1.0, send_burst=1).ready(rules=PRICE_RULE)
    bot.feed(pm.SendOk(one(bot.answered(one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)),
                           pm.Send).row, None))  # the one token is spent
    waiting = one(bot.stored(bot.store(message("price?", contact="c2"))), pm.WriteAnswer)
    assert not waiting.send_now
    bot.now += 5  # the bucket is full again
    later = one(bot.stored(bot.store(message("price?", contact="c3"))), pm.WriteAnswer)
    assert not later.send_now


def test_a_wait_for_the_next_token_always_ends_with_a_whole_token():
    # Found by the property test: at 0.5 tokens/s from 0.2 s, a send every 2 s; at 8.2 s the refill
    # (8.2 - 6.2) * 0.5 came to 0.9999999999999996 tokens, whose wait (1e-15 s) did not move the
    # clock: the delivery timer fired at once, forever.
    bot = Bot(send_rate=0.5, send_burst=1)
    bot.now = 0.2
    bot.state = pm.PipelineState.initial(bot.state.settings, bot.now)
    bot.ready()
    effects = bot.feed(pm.Wake())
    for n in range(10):
        effects = bot.feed(pm.SendOk(one(bot.feed(pm.Claimed((row(f"o{n}"),))), pm.Send).row, None))
        timer = one(bot.feed(one(effects, pm.Later).event), pm.ScheduleTimer)  # the claim was full
        assert timer.at - bot.now > 1.9
        bot.now = timer.at
        one(bot.feed(timer.event), pm.Claim)


def test_a_claim_leaves_out_rows_whose_sent_record_is_still_being_written():
    # 7d217c3: a claim would take them as 'sending' and ask the network about them again.
    bot = Bot().ready()
    claim = one(bot.feed(pm.Wake()), pm.Claim)
    assert claim.leave_out == frozenset()
    rows = (row("o1"), row("o2"))
    effects = bot.feed(pm.Claimed(rows))
    effects = bot.feed(pm.SendOk(one(effects, pm.Send).row, None))
    effects = bot.feed(pm.SendOk(one(effects, pm.Send).row, None))
    assert one(effects, pm.MarkSent).items == (("o1", None), ("o2", None))
    assert one(bot.feed(pm.Wake()), pm.Claim).leave_out == {"o1", "o2"}
    bot.feed(pm.Claimed(()))
    bot.feed(pm.Recorded(("o1", "o2"), True))
    assert one(bot.feed(pm.Wake()), pm.Claim).leave_out == frozenset()


def test_a_failed_sent_record_makes_a_claim_within_a_second_that_asks_the_network():
    bot = Bot().ready()
    bot.feed(pm.Wake())
    effects = bot.feed(pm.SendOk(one(bot.feed(pm.Claimed((row("o1"),))), pm.Send).row, None))
    timer = one(bot.feed(pm.Recorded(("o1",), False)), pm.ScheduleTimer)
    assert timer.at == bot.now + 1.0 and of(effects, pm.MarkSent)
    bot.now = timer.at
    claim = one(bot.feed(timer.event), pm.Claim)
    assert "o1" not in claim.leave_out  # it is due again: still 'sending' as far as the table knows
    check = one(bot.feed(pm.Claimed((row("o1", state="sending", attempts=1),))), pm.CheckReceived)
    effects = bot.feed(pm.Received(check.row, True))
    assert of(effects, pm.Send) == [] and one(effects, pm.MarkSent).items == (("o1", None),)


def test_a_row_the_network_does_not_have_after_an_unknown_attempt_is_sent_again():
    bot = Bot().ready()
    bot.feed(pm.Wake())
    check = one(bot.feed(pm.Claimed((row("o1", state="sending", attempts=1),))), pm.CheckReceived)
    assert one(bot.feed(pm.Received(check.row, False)), pm.Send).row is check.row


def test_rows_claimed_but_not_tried_because_the_link_went_down_are_released():
    bot = Bot().ready(rules=PRICE_RULE)
    write = one(bot.stored(bot.store(message("price?"))), pm.WriteAnswer)
    assert write.send_now
    bot.feed(pm.LinkUp(False))
    effects = bot.answered(write)
    assert one(effects, pm.Release).rows == (row("o1"),) and of(effects, pm.Send) == []


def test_a_full_claim_asks_for_more_behind_what_waits_in_the_mailbox():
    bot = Bot(delivery_batch=2).ready()
    bot.feed(pm.Wake())
    effects = bot.feed(pm.Claimed((row("o1"), row("o2"))))
    effects = bot.feed(pm.SendOk(one(effects, pm.Send).row, None))
    effects = bot.feed(pm.SendOk(one(effects, pm.Send).row, None))
    assert one(effects, pm.Later) == pm.Later(pm.DeliverMore())
    assert one(bot.feed(pm.DeliverMore()), pm.Claim).limit == 2


def test_a_failed_send_is_retried_after_the_outbox_backoff_and_the_next_row_is_tried():
    base = 2.0
    bot = Bot(send_retry=pm.BackoffPolicy(base=base, cap=300, jitter="equal"), outbox_max_attempts=8).ready()
    bot.feed(pm.Wake())
    effects = bot.feed(pm.Claimed((row("o1", attempts=2), row("o2", to="c2"))))
    effects = bot.feed(pm.SendFailed(one(effects, pm.Send).row, TransportError("timed out")))
    failed = one(effects, pm.MarkFailed)
    assert failed.outbox_id == "o1" and failed.error == "timed out"
    assert base * 4 / 2 <= failed.retry_in <= base * 4  # the third attempt: [d/2, d] with d = 2 * 2**2
    assert one(effects, pm.ScheduleTimer).at == bot.now + failed.retry_in
    assert one(effects, pm.Send).row.id == "o2"


def test_a_failed_send_holds_back_the_same_customers_later_messages_in_hand_and_sends_the_others():
    # Found by the soak: a customer's next message went out while the one before waited for its
    # retry, so the customer got them out of their order.
    bot = Bot().ready()
    bot.feed(pm.Wake())
    effects = bot.feed(pm.Claimed((row("o1"), row("o2"), row("o3", to="c2"), row("o4"))))
    effects = bot.feed(pm.SendFailed(one(effects, pm.Send).row, TransportError("timed out")))
    assert [r.id for r in one(effects, pm.Release).rows] == ["o2", "o4"]
    third = one(effects, pm.Send).row
    assert third.id == "o3"
    effects = bot.feed(pm.SendOk(third, None))
    assert not of(effects, pm.Send) and [i for i, _ in one(effects, pm.MarkSent).items] == ["o3"]


def test_a_dead_letter_lets_the_same_customers_next_message_go():
    bot = Bot(outbox_max_attempts=1).ready()
    bot.feed(pm.Wake())
    effects = bot.feed(pm.Claimed((row("o1"), row("o2"))))
    effects = bot.feed(pm.SendFailed(one(effects, pm.Send).row, TransportError("timed out")))
    assert one(effects, pm.MarkFailed).retry_in is None and not of(effects, pm.Release)
    assert one(effects, pm.Send).row.id == "o2"


def test_a_retry_is_not_forgotten_when_a_sooner_claim_is_timed():
    # Found by the property test: one delivery timer, moved to the sooner time of a failed 'sent'
    # record, forgot the retry due later; that row then waited for something else to wake the pipeline.
    bot = Bot().ready()
    bot.feed(pm.Wake())
    effects = bot.feed(pm.Claimed((row("o1"), row("o2", to="c2"))))
    effects = bot.feed(pm.SendFailed(one(effects, pm.Send).row, TransportError("timed out")))
    retry = one(effects, pm.ScheduleTimer)
    bot.feed(pm.SendOk(one(effects, pm.Send).row, None))
    sooner = one(bot.feed(pm.Recorded(("o2",), False)), pm.ScheduleTimer)
    assert sooner.at == bot.now + 1.0 < retry.at and sooner.key == retry.key
    bot.now = sooner.at
    effects = bot.feed(sooner.event)
    assert one(effects, pm.Claim) and one(effects, pm.ScheduleTimer) == retry  # the retry is timed again
    bot.feed(pm.Claimed(()))
    bot.now = retry.at
    assert one(bot.feed(retry.event), pm.Claim)


def test_a_retry_whose_claim_came_a_moment_early_is_claimed_when_the_database_says_it_is_due():
    # Found by the soak (the fourth 30-minute run): a row's retry time is the database's now() of its
    # 'failed' record plus the delay, a moment after the machine took its own time for the timer; the
    # timer's claim came first, found nothing due, and nothing timed another: the row (and the
    # customer's later ones, behind it) stayed 'pending' once no new message woke the pipeline.
    bot = Bot().ready()
    bot.feed(pm.Wake())
    send = one(bot.feed(pm.Claimed((row("o1"),))), pm.Send)
    retry = one(bot.feed(pm.SendFailed(send.row, TransportError("not connected (backing_off)"))), pm.ScheduleTimer)
    bot.now = retry.at
    assert one(bot.feed(retry.event), pm.Claim)
    effects = bot.feed(pm.Claimed((), due_in=0.004))  # o1 is due 4 ms from now, by the database's clock
    again = one(effects, pm.ScheduleTimer)
    assert again.key == pm.DELIVER_TIMER and again.at == bot.now + 0.004
    bot.now = again.at
    assert one(bot.feed(again.event), pm.Claim)
    assert of(bot.feed(pm.Claimed((row("o1", attempts=1),))), pm.Send)


def test_a_claim_already_timed_just_after_the_databases_due_time_is_not_timed_twice():
    bot = Bot().ready()
    bot.feed(pm.Wake())
    assert one(bot.feed(pm.Claimed((), due_in=30.0)), pm.ScheduleTimer).at == bot.now + 30.0
    bot.now += 1.0
    bot.feed(pm.Wake())
    assert of(bot.feed(pm.Claimed((), due_in=28.99)), pm.ScheduleTimer) == []  # 10 ms before the one timed
    assert bot.state.deliver_at == (bot.now + 29.0,)


def test_a_send_refused_permanently_becomes_a_dead_letter():
    bot = Bot().ready()
    bot.feed(pm.Wake())
    send = one(bot.feed(pm.Claimed((row("o1"),))), pm.Send)
    effects = bot.feed(pm.SendFailed(send.row, TransportError("invalid recipient", permanent=True)))
    assert one(effects, pm.MarkFailed) == pm.MarkFailed("o1", "invalid recipient", None)
    dead = one(effects, pm.Publish)
    assert (dead.event_type, dead.metric, dead.payload["attempts"]) == ("outbox.dead", "dead", 1)


def test_a_send_that_fails_its_last_allowed_attempt_becomes_a_dead_letter():
    bot = Bot(outbox_max_attempts=3).ready()
    bot.feed(pm.Wake())
    send = one(bot.feed(pm.Claimed((row("o1", attempts=2),))), pm.Send)
    assert one(bot.feed(pm.SendFailed(send.row, TransportError("timed out"))), pm.MarkFailed).retry_in is None


def test_with_the_bucket_empty_delivery_waits_for_the_next_token():
    bot = Bot(send_rate=0.5, send_burst=1).ready()
    bot.feed(pm.Wake())
    bot.feed(pm.SendOk(one(bot.feed(pm.Claimed((row("o1"),))), pm.Send).row, None))
    effects = bot.feed(pm.Wake())
    assert of(effects, pm.Claim) == []
    assert one(effects, pm.ScheduleTimer).at == bot.now + 2.0


def test_a_receipt_publishes_the_status_of_each_message_it_moved_under_that_messages_correlation_id():
    bot = Bot().ready()
    assert bot.feed(pm.Receipt(("3EB0o1",), "read")) == [pm.RecordReceipt(("3EB0o1",), "read")]
    effects = bot.feed(pm.ReceiptsRecorded("read", (("m-out", "o1", "cid-o1"),)))
    assert one(effects, pm.Publish).payload == {"message_id": "m-out", "outbox_id": "o1", "status": "read",
                                                 "correlation_id": "cid-o1"}
    assert one(effects, pm.Log).cid == "cid-o1"


def test_a_claim_that_finds_answers_held_by_the_daily_quota_times_a_claim_for_the_next_utc_day():
    bot = Bot()
    bot.feed(pm.ConfigLoaded([], {}, True))
    assert of(bot.feed(pm.LinkUp(True)), pm.Claim)
    effects = bot.feed(pm.Claimed((), held_for=3600.0))  # held answers; the day ends in an hour
    at = bot.now + 3600.0 + pm.HELD_MARGIN
    assert one(effects, pm.ScheduleTimer) == pm.ScheduleTimer(pm.HELD_TIMER, at, pm.HeldDue(at))
    assert of(effects, pm.Send) == []
    bot.now = at  # the new day: the timer fires
    claim = one(bot.feed(pm.HeldDue(at)), pm.Claim)
    assert claim.limit >= 1
    released = row("held-1")
    effects = bot.feed(pm.Claimed((released,)))  # the claim released the held answer: sent now
    assert one(effects, pm.Send) == pm.Send(released)
    assert [t for t in of(effects, pm.ScheduleTimer) if t.key == pm.HELD_TIMER] == []  # none held any more


# -- the persistent queue ------------------------------------------------------------------------------


def test_the_waiting_queue_is_persistent_so_an_old_state_never_changes():
    empty = pm.Fifo()
    one_item = empty.append(1)
    two = one_item.append(2)
    assert list(empty) == [] and list(one_item) == [1] and list(two) == [1, 2]
    rest = two.normal().drop(1)
    assert list(rest) == [2] and list(two) == [1, 2]
    assert list(rest.prepend((0, 1))) == [0, 1, 2] and len(rest.prepend((0, 1))) == 3


def test_records_of_different_kinds_with_the_same_fields_are_not_equal():
    assert pm.Ack(("x",)) != pm.Release(("x",))
    assert pm.Wake() != pm.DeliverMore() and pm.Wake() == pm.Wake()


# -- random interleavings against a model of the world ---------------------------------------------------


DB_CLOCK_LAG = 0.01  # seconds between the machine's now and the database's when a failure is recorded


class Violation(AssertionError):
    pass


class World:
    """What the pipeline's actor and the outside world would answer, as data: the messages and outbox
    tables (claims, answers and ignores change only rows still in the state the SQL requires), the
    store and answer statements (one store in flight; answers commit in the order written, as the
    coalescer runs them), AI calls (any order), sent records, the network, and timers on fake time.
    It checks the pipeline's promises as effects come."""

    CONTACTS = ("c1", "c2", "c3")

    def __init__(self, config: dict, rnd: random.Random) -> None:
        self.config = config
        self.rnd = rnd
        self.now = 0.0
        self.messages: dict[str, dict] = {}  # message id -> contact, status, text, wa, ends
        self.by_wa: dict[str, str] = {}
        self.arrived: list[str] = []  # WhatsApp ids of customer messages, in arrival order
        self.acked: list[str] = []
        self.outbox: dict[str, dict] = {}  # outbox id -> seq, state, attempts, due_at, failed, covers
        self.seq = itertools.count()
        self.network: list[str] = []
        self.held: set[str] = set()
        self.paused: set[str] = set()
        self.store: tuple | None = None  # ("batch", items, wants) or ("phone", event, hold)
        self.answers: list[pm.WriteAnswer] = []  # in flight, committed in this order
        self.calls: dict[str, dict] = {}  # contact -> the AI call in flight
        self.records: list[pm.MarkSent] = []
        self.timers: dict[object, tuple[float, object]] = {}
        self.later: list[object] = []  # mailed to itself
        self.untried: set[str] = set()  # claimed rows neither tried nor released
        self.connected = False
        self.wa_ids = itertools.count(1)

    # -- the effects -------------------------------------------------------------------------------

    def execute(self, effect: object) -> object:
        kind = type(effect)
        if kind is pm.StoreBatch or kind is pm.StorePhone:
            if self.store is not None:
                raise Violation("a second store started while one was in flight")
            self.store = effect
        elif kind is pm.Ack:
            for wa in effect.message_ids:
                if wa not in self.by_wa and not wa.startswith("PHONE"):
                    raise Violation(f"{wa} acked before it was stored")
            self.acked.extend(wa for wa in effect.message_ids if not wa.startswith("PHONE"))
        elif kind is pm.LoadConfig:
            return pm.ConfigLoaded(PRICE_RULE, self.config, True)
        elif kind is pm.StartAi:
            if any(w.contact_id == effect.contact_id for w in self.answers):
                raise Violation(f"an AI call started for {effect.contact_id} while its answer is in flight")
            if effect.contact_id in self.calls:
                raise Violation(f"a second AI call for {effect.contact_id}")
            self.calls[effect.contact_id] = {"effect": effect, "read": effect.prompt}
        elif kind is pm.WriteAnswer:
            self.answers.append(effect)
        elif kind is pm.Ignore:
            for message_id in effect.message_ids:
                self._end(message_id, "ignored")
        elif kind is pm.Claim:
            if any(w.send_now for w in self.answers):
                raise Violation("a claim ran while an answer written for sending at once was in flight")
            rows = self._claim(effect.limit, effect.leave_out)
            waiting = [e["due_at"] - self.now for e in self.outbox.values()
                       if e["state"] in ("pending", "sending") and e["due_at"] > self.now]
            return pm.Claimed(rows, None, min(waiting) if waiting else None)
        elif kind is pm.CheckReceived:
            self.untried.discard(effect.row.id)
            return pm.Received(effect.row, effect.row.id in self.network)
        elif kind is pm.Send:
            return self._send(effect.row)
        elif kind is pm.Release:
            for released in effect.rows:
                if released.id not in self.untried:
                    raise Violation(f"{released.id} released but it was not claimed and untried")
                self.untried.discard(released.id)
                entry = self.outbox[released.id]
                entry["state"], entry["attempts"] = released.state, max(0, entry["attempts"] - 1)
        elif kind is pm.MarkSent:
            self.records.append(effect)
        elif kind is pm.MarkFailed:
            entry = self.outbox[effect.outbox_id]
            entry["failed"] = True
            if effect.retry_in is None:
                entry["state"] = "dead"
            else:
                # As next_attempt_at: the database's now() of the record, a moment after the
                # machine took its time for the retry's timer.
                entry["state"], entry["due_at"] = "pending", self.now + DB_CLOCK_LAG + effect.retry_in
        elif kind is pm.ScheduleTimer:
            self.timers[effect.key] = (effect.at, effect.event)
        elif kind is pm.CancelTimer:
            self.timers.pop(effect.key, None)
        elif kind is pm.Later:
            self.later.append(effect.event)
        elif kind is pm.Fail:
            raise Violation(f"the actor failed: {effect.error!r}")
        return None

    def _end(self, message_id: str, how: str) -> bool:
        entry = self.messages[message_id]
        if entry["status"] != "stored":
            return False  # as the SQL: only rows still 'stored' change
        entry["status"] = how
        entry["ends"] += 1
        return True

    def _claim(self, limit: int, leave_out: frozenset) -> tuple:
        due = sorted((e["seq"], oid) for oid, e in self.outbox.items()
                     if e["state"] in ("pending", "sending") and e["due_at"] <= self.now and oid not in leave_out)
        rows = []
        for _, oid in due[:limit]:
            entry = self.outbox[oid]
            rows.append(row(oid, entry["state"], entry["attempts"]))
            entry["state"], entry["attempts"] = "sending", entry["attempts"] + 1
            self.untried.add(oid)
        return tuple(rows)

    def _send(self, sent: Outgoing) -> object:
        self.untried.discard(sent.id)
        if sent.id in self.network:
            raise Violation(f"{sent.id} sent twice")
        if not self.connected or self.rnd.random() < 0.1:
            return pm.SendFailed(sent, TransportError("not connected" if not self.connected else "timed out"))
        mine = self.outbox[sent.id]
        for oid, entry in self.outbox.items():
            if (entry["seq"] < mine["seq"] and oid not in self.network and not entry["failed"]
                    and not mine["failed"] and entry["state"] != "dead"):
                raise Violation(f"{sent.id} sent before {oid}, committed before it and never failed")
        self.network.append(sent.id)
        return pm.SendOk(sent, None)

    # -- what happens next (each returns the input to feed, or None) -------------------------------

    def customer_writes(self, contact: str, text: str, replay: bool) -> object:
        wa = self.arrived[-1] if replay and self.arrived else f"WA{next(self.wa_ids)}"
        self.arrived.append(wa)
        return pm.Inbound(message(text, contact, wa), f"cid-{wa}")

    def owner_writes(self, contact: str) -> object:
        return pm.Inbound(message("the owner writes", contact, f"PHONE{next(self.wa_ids)}", from_me=True), None)

    def api_message(self) -> object:
        self._commit_row("pending", covers=())
        return pm.Wake()

    def store_finishes(self, fail: bool) -> object:
        store, self.store = self.store, None
        if store is None:
            return None
        if fail:
            return pm.StoreDone(None, psycopg2.OperationalError("the database went away"))
        if type(store) is pm.StorePhone:
            contact = store.event.chat
            new = store.event.message_id not in self.by_wa
            self.by_wa.setdefault(store.event.message_id, "phone")
            if new and store.hold > 0:
                self.held.add(contact)
                for message_id, entry in self.messages.items():
                    if entry["contact"] == contact:
                        self._end(message_id, "ignored")
            return pm.StoreDone([PhoneStored("m-phone" if new else None, contact, contact, False, None, None, None,
                                             ())])
        results = []
        for (event, _), want in zip(store.items, store.wants or itertools.repeat(-1)):
            if event.message_id in self.by_wa:
                results.append(Stored(None, event.chat, False))
                continue
            message_id = f"m{len(self.messages) + 1}"
            self.by_wa[event.message_id] = message_id
            answerable = event.kind in pm.Settings().answerable_kinds
            self.messages[message_id] = {"contact": event.chat, "status": "stored" if answerable else "ignored",
                                         "text": event.text, "ends": 0 if answerable else 1}
            prompt = self._pending(event.chat) if want >= 0 else None
            results.append(Stored(message_id, event.chat, event.chat in self.paused, prompt, event.chat in self.held))
        return pm.StoreDone(results)

    def _pending(self, contact: str) -> tuple:
        return ([(mid, "text", e["text"]) for mid, e in self.messages.items()
                 if e["contact"] == contact and e["status"] == "stored"], [])

    def ai_step(self, pick: int, outcome: int) -> object:
        if not self.calls:
            return None
        contact = sorted(self.calls)[pick % len(self.calls)]
        call = self.calls[contact]
        if call["read"] is None:  # the call reads the conversation first
            if outcome % 7 == 0:
                del self.calls[contact]
                return pm.AiDone(contact, (), None, None, "retry", call["effect"].cid)
            call["read"] = self._pending(contact)
            return None
        del self.calls[contact]
        pending = call["read"][0]
        if not pending:
            return pm.AiDone(contact, (), None, None, "none", call["effect"].cid)
        ids = tuple(mid for mid, _, _ in pending)
        if outcome % 5 == 0:
            return pm.AiDone(contact, ids, None, "provider down", "ai", call["effect"].cid)
        return pm.AiDone(contact, ids, "an AI answer", None, "ai", call["effect"].cid)

    def answer_commits(self) -> object:
        if not self.answers:
            return None
        write = self.answers.pop(0)
        claimed = [mid for mid in write.message_ids if self._end(mid, "answered")]
        if not claimed:
            return pm.Answered(write.contact_id, write.send_now, None, None, write.cid)
        oid = self._commit_row("sending" if write.send_now else "pending", covers=tuple(claimed))
        if write.send_now:
            self.untried.add(oid)
            return pm.Answered(write.contact_id, True, (oid, row(oid)), None, write.cid)
        return pm.Answered(write.contact_id, False, (oid, None), None, write.cid)

    def _commit_row(self, state: str, covers: tuple) -> str:
        oid = f"o{len(self.outbox) + 1}"
        self.outbox[oid] = {"seq": next(self.seq), "state": state, "attempts": 1 if state == "sending" else 0,
                            "due_at": self.now, "failed": False, "covers": covers}
        return oid

    def record_finishes(self, fail: bool) -> object:
        if not self.records:
            return None
        record = self.records.pop(0)
        ids = tuple(oid for oid, _ in record.items)
        if not fail:
            for oid in ids:
                self.outbox[oid]["state"] = "sent"
        return pm.Recorded(ids, not fail)

    def timer_fires(self) -> object:
        if not self.timers:
            return None
        key = min(self.timers, key=lambda k: self.timers[k][0])
        at, event = self.timers.pop(key)
        self.now = max(self.now, at)
        return event


class Pipeline:
    """The machine run as the actor runs it: effects in order, an outcome fed back before the next."""

    def __init__(self, world: World, **settings_: object) -> None:
        self.world = world
        self.rng = random.Random(3)
        self.state = pm.PipelineState.initial(pm.Settings(**settings_), world.now)

    def feed(self, event: object) -> None:
        before, contacts = self.state, dict(self.state.contacts)
        self.state, effects = pm.transition(self.state, event, self.world.now, self.rng)
        if dict(before.contacts) != contacts:
            raise Violation("the transition changed the state it was given")
        for effect in effects:
            outcome = self.world.execute(effect)
            if outcome is not None:
                self.feed(outcome)

    def step(self, event: object) -> None:
        """One thing happens; then what the actor would do at once is done, and the promises hold."""
        if event is not None:
            self.feed(event)
        while self.world.later:
            self.feed(self.world.later.pop(0))
        if self.world.untried:
            raise Violation(f"claimed rows neither tried nor released: {sorted(self.world.untried)}")


ACTIONS = ("customer", "customer", "customer", "owner", "link", "api", "store", "store", "ai", "ai", "ai",
           "answer", "answer", "record", "timer", "time")


def _act(pipeline: Pipeline, world: World, action: str, a: int, b: int) -> object:
    if action == "customer":
        text = ("price?", "hello", "hi there", "a sticker")[b % 4]
        return world.customer_writes(World.CONTACTS[a % 3], text, replay=b % 11 == 0)
    if action == "owner":
        return world.owner_writes(World.CONTACTS[a % 3])
    if action == "link":
        world.connected = not world.connected
        return pm.LinkUp(world.connected)
    if action == "api":
        return world.api_message()
    if action == "store":
        return world.store_finishes(fail=b % 4 == 0)
    if action == "ai":
        return world.ai_step(a, b)
    if action == "answer":
        return world.answer_commits()
    if action == "record":
        return world.record_finishes(fail=b % 6 == 0)
    if action == "timer":
        return world.timer_fires()
    world.now += 0.5 + b % 3  # time passes; timers due meanwhile fire
    due = [key for key, (at, _) in world.timers.items() if at <= world.now]
    for key in sorted(due, key=lambda k: world.timers[k][0]):
        pipeline.step(world.timers.pop(key)[1])
    return None


def _settle(pipeline: Pipeline, world: World) -> None:
    """The world calms down: the link is up, nothing fails any more, every outcome arrives and every
    timer fires, until nothing is left to happen."""
    world.rnd = random.Random(0)
    world.rnd.random = lambda: 1.0  # type: ignore[method-assign] - sends stop failing
    if not world.connected:
        world.connected = True
        pipeline.step(pm.LinkUp(True))
    for _ in range(2000):
        if world.store is not None:
            pipeline.step(world.store_finishes(fail=False))
        elif world.calls:
            contact = sorted(world.calls)[0]
            pipeline.step(world.ai_step(0, 1))
            if contact in world.calls:
                pipeline.step(world.ai_step(0, 1))
        elif world.answers:
            pipeline.step(world.answer_commits())
        elif world.records:
            pipeline.step(world.record_finishes(fail=False))
        elif world.timers:
            pipeline.step(world.timer_fires())
        else:
            return
    raise Violation("the pipeline never came to rest")


world_settings = st.fixed_dictionaries({
    "ai_debounce": st.sampled_from([0.0, 2.0]),
    "send_rate": st.sampled_from([0.0, 0.5]),
    "send_burst": st.sampled_from([1, 5]),
    "phone_takeover": st.sampled_from([0.0, 60.0]),
    "outbox_max_attempts": st.sampled_from([2, 8]),
})
steps = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 5), st.integers(0, 43)), min_size=20, max_size=80)


# derandomize: the same 500 interleavings on every run (a few seconds), so CI is deterministic; a wider
# search is the same test under other settings (each bug it found is a unit test above).
@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(machine_settings=world_settings, ai=st.sampled_from([AI_ON, AI_WITH_FALLBACK, {}]), script=steps,
       seed=st.integers(0, 2**16))
def test_random_interleavings_keep_every_promise_of_the_pipeline(machine_settings, ai, script, seed):
    world = World(ai, random.Random(seed))
    pipeline = Pipeline(world, **machine_settings)
    pipeline.step(pm.Start())
    pipeline.step(pm.Recovered((), None))
    for action, a, b in script:
        pipeline.step(_act(pipeline, world, action, a, b))
    _settle(pipeline, world)

    # Every stored inbound message ends answered or ignored, exactly once.
    for message_id, entry in world.messages.items():
        assert entry["status"] in ("answered", "ignored") and entry["ends"] == 1, (message_id, entry)
    covered = [mid for entry in world.outbox.values() for mid in entry["covers"]]
    assert len(covered) == len(set(covered)), "a message answered by two outbox rows"
    # Every outgoing row reached the network once (or is a dead letter), and its record committed.
    for oid, entry in world.outbox.items():
        assert (entry["state"] == "dead") != (oid in world.network), (oid, entry)
        assert entry["state"] in ("sent", "dead"), (oid, entry)
    assert len(world.network) == len(set(world.network))
    # Messages are acked in arrival order, each only after its store committed.
    arrived_once = list(dict.fromkeys(world.arrived))
    acked_once = list(dict.fromkeys(world.acked))
    assert acked_once == [wa for wa in arrived_once if wa in set(acked_once)]
    # At rest nothing is left in flight.
    state = pipeline.state
    assert state.storing is None and not state.waiting and state.answers_now == state.answers_later == 0
    assert dict(state.contacts) == {} and state.recording == frozenset() and state.phase is pm.Phase.IDLE

"""The soak's history checker finds each kind of violation, and none in a clean history."""

from bench._history import Accepted, Delivery, Handed, Sent, Stored, StreamLog, WebhookLog, check
from sansio.pipeline_machine import PAUSED

A, B = "tenant-a", "tenant-b"


def _clean():
    handed = [Handed("bot1", "w1", "c1"), Handed("bot1", "w2", "c1"), Handed("bot1", "w3", "c2")]
    stored = [Stored("bot1", "w1", "m1", "c1", "answered", created_seq=1),
              Stored("bot1", "w2", "m2", "c1", "answered", created_seq=2),
              Stored("bot1", "w3", "m3", "c2", "ignored", PAUSED, created_seq=1)]
    sent = [Sent("bot1", "n1", "c1", 10.0, "o1", "m1", 1), Sent("bot1", "n2", "c1", 11.0, "o2", "m2", 2),
            Sent("bot1", "n3", "c2", 12.0, "o3", None, 1)]
    events = {A: [1, 2, 4, 6], B: [3, 5]}
    streams = [StreamLog("s1", A, ((2, A), (4, A), (6, A))), StreamLog("s2", B, ((3, B), (5, B)))]
    deliveries = [Delivery("d1", "e1", "delivered"), Delivery("d2", "e1", "delivered")]
    webhooks = [WebhookLog("e1", frozenset({"d1", "d2"}))]
    return dict(handed=handed, stored=stored, sent=sent, events=events, streams=streams, deliveries=deliveries,
                webhooks=webhooks)


def _violations(**changes):
    history = {**_clean(), **changes}
    return {k: v for k, v in check(**history).violations.items() if v}


def test_a_clean_history_has_no_violations_and_counts_what_it_checked():
    report = check(**_clean())
    assert report.ok
    assert report.summary()["inbound_stored_once"] == (3, 0)


def test_a_handed_message_never_stored_is_found():
    found = _violations(handed=[*_clean()["handed"], Handed("bot1", "w9", "c1")])
    assert list(found) == ["inbound_stored_once"]


def test_a_message_left_unanswered_or_ignored_without_a_documented_reason_is_found():
    stored = _clean()["stored"]
    found = _violations(stored=[stored[0], Stored("bot1", "w2", "m2", "c1", "stored", created_seq=2),
                                Stored("bot1", "w3", "m3", "c2", "ignored", "felt like it")])
    assert len(found["inbound_settled"]) == 2


def test_a_message_answered_twice_is_found():
    sent = [*_clean()["sent"], Sent("bot1", "n9", "c1", 13.0, "o9", "m1")]
    assert "m1 answered 2 times" in _violations(sent=sent)["no_double_answer"][0]


def test_one_outbox_row_reaching_the_customer_under_two_network_ids_is_found():
    sent = [*_clean()["sent"], Sent("bot1", "n1-again", "c2", 13.0, "o3", None)]
    assert "o3 reached the customer 2 times" in _violations(sent=sent)["no_double_answer"][0]


def test_messages_reaching_the_customer_out_of_their_commit_order_are_found():
    sent = _clean()["sent"]
    swapped = [Sent("bot1", "n1", "c1", 11.5, "o1", "m1", 1), sent[1], sent[2]]
    assert _violations(sent=swapped)["conversation_order"] == [
        "bot bot1 to c1: messages committed as [1, 2] arrived as [2, 1]"]


def test_a_subscriber_that_missed_saw_twice_or_saw_another_tenants_event_is_found():
    found = _violations(streams=[StreamLog("s1", A, ((2, A), (6, A))), StreamLog("s2", B, ((3, B), (3, B), (4, A)))])
    assert "missed 1 events" in found["stream_exactly_once"][0]
    assert "saw 1 events twice" in found["stream_exactly_once"][1]
    assert found["stream_tenant"] == ["s2 saw another tenant's events [4]"]


def test_a_webhook_never_received_or_failed_and_one_received_by_a_stranger_are_found():
    found = _violations(deliveries=[Delivery("d1", "e1", "delivered"), Delivery("d2", "e1", "pending"),
                                    Delivery("d3", "e1", "failed")],
                        webhooks=[WebhookLog("e1", frozenset({"d1", "x7"}))])
    assert len(found["webhook_at_least_once"]) == 2
    assert found["webhook_tenant"] == ["e1 got 1 deliveries not its own"]


def test_an_accepted_send_that_never_reached_the_customer_is_found_with_its_outbox_state():
    found = _violations(accepted=[Accepted("bot1", "o3"), Accepted("bot1", "o8")],
                        outbox={"o8": ("dead", "recipient refused")})
    assert found["send_delivered"] == ["outbox row o8 of bot bot1 never arrived (dead: recipient refused)"]


def test_a_committed_fact_without_a_delivery_is_found():
    found = _violations(facts_without_delivery=[(A, "message.in:m1")])
    assert found["webhook_at_least_once"] == ["message.in:m1 of tenant tenant-a has no delivery"]


def test_an_event_seen_live_that_the_log_lost_in_a_crash_is_counted_not_judged():
    report = check(**{**_clean(), "streams": [StreamLog("s1", A, ((2, A), (3, None), (4, A), (6, A)))]})
    assert report.ok and report.notes["stream_notices_lost"] == 1


def test_a_message_at_the_customer_that_the_database_does_not_know_is_found():
    sent = [*_clean()["sent"], Sent("bot1", "n9", "c1", 13.0, None, None)]
    assert "n9 reached c1 from bot bot1 but the database has no such outgoing message" in \
        _violations(sent=sent)["no_double_answer"][0]


def test_a_delivery_waiting_for_its_scheduled_retry_is_counted_not_judged():
    report = check(**{**_clean(), "deliveries": [*_clean()["deliveries"], Delivery("d3", "e1", "retrying")]})
    assert report.ok and report.notes["webhook_retries_scheduled"] == 1

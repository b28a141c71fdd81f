"""sansio/sse.py without a server: frames as the HTML standard's event-stream parser reads them back
(the test client's parser), resume positions, and the subscription filter."""

from __future__ import annotations

import json

import pytest

from sansio import sse
from tests.sse_client import Comment, Event, Retry, SSEParser


def parse(data: bytes) -> list:
    return SSEParser().feed(data, 0.0)


def test_a_frame_carries_its_id_type_and_json_data_and_ends_in_a_blank_line():
    raw = sse.frame(42, "bot.state", {"state": "pairing", "n": 1})
    assert raw == b'id: 42\nevent: bot.state\ndata: {"state":"pairing","n":1}\n\n'
    (event,) = parse(raw)
    assert (event.id, event.event, event.json()) == ("42", "bot.state", {"state": "pairing", "n": 1})


def test_a_frame_without_an_id_or_type_has_neither_field_and_reads_as_a_message():
    raw = sse.frame(None, None, "hello")
    assert raw == b"data: hello\n\n"
    (event,) = parse(raw)
    assert (event.id, event.event, event.data) == (None, "message", "hello")


@pytest.mark.parametrize(
    "text",
    ["two\nlines", "crlf\r\nline", "bare\rcr", "trailing\n", "\nleading", "", "a\n\nb", "mixed\r\n\r\n\rend"],
)
def test_line_breaks_inside_text_data_become_data_lines_and_read_back_as_lf(text):
    raw = sse.frame(1, "x", text)
    # No data line can end the frame early: the only blank line is the final one.
    assert raw.endswith(b"\n\n") and b"\n\n" not in raw[:-2] and b"\r" not in raw
    (event,) = parse(raw)
    assert event.data == text.replace("\r\n", "\n").replace("\r", "\n")


def test_line_breaks_in_json_strings_are_escaped_so_the_data_is_one_line():
    payload = {"text": "a\nb\r\nc", "emoji": "\u2028\U0001f600"}
    raw = sse.frame(7, "message.in", payload)
    assert raw.count(b"data: ") == 1
    (event,) = parse(raw)
    assert event.json() == payload


def test_line_breaks_in_an_event_type_cannot_inject_fields():
    raw = sse.frame(3, "evil\ndata: injected\r\n\r\nid: 999", {"ok": True})
    events = parse(raw)
    assert len(events) == 1
    assert events[0].id == "3" and events[0].json() == {"ok": True}


def test_a_comment_is_a_colon_line_and_dispatches_no_event():
    assert sse.comment("keepalive") == b": keepalive\n\n"
    assert sse.comment() == b": \n\n"
    items = parse(sse.comment("two\nlines"))
    assert items == [Comment("two lines", 0.0)]


def test_retry_is_an_integer_number_of_milliseconds():
    assert sse.retry(3000) == b"retry: 3000\n\n"
    assert parse(sse.retry(2500)) == [Retry(2500, 0.0)]


def test_the_parser_reassembles_frames_split_at_any_byte_including_between_cr_and_lf():
    raw = sse.retry(10) + sse.comment("connected") + sse.frame(1, "a", "x\r\ny") + sse.frame(2, "b", {"k": 1})
    raw = raw.replace(b"\n", b"\r\n")
    whole = parse(raw)
    for cut in range(1, len(raw)):
        parser = SSEParser()
        assert parser.feed(raw[:cut], 0.0) + parser.feed(raw[cut:], 0.0) == whole
    assert [type(i) for i in whole] == [Retry, Comment, Event, Event]
    assert whole[2].data == "x\ny"


def test_the_last_event_id_persists_across_frames_without_an_id():
    events = parse(sse.frame(5, "a", "1") + sse.frame(None, "stream.closed", {"reason": "x"}))
    assert [e.id for e in events] == ["5", None]
    assert [e.last_event_id for e in events] == ["5", "5"]


@pytest.mark.parametrize(
    "header, query, expected",
    [
        (None, None, None),
        ("", "", None),
        ("0", None, 0),
        (None, "17", 17),
        ("12", "99", 12),  # the header wins: it is what a browser sends when it reconnects
        ("", "99", 99),
        (" 8 ", None, 8),
        ("9" * 19, None, int("9" * 19)),
    ],
)
def test_the_resume_position_comes_from_the_header_else_the_query(header, query, expected):
    assert sse.resume_position(header, query) == expected


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", "1e3", "0x10", "9" * 20, "+3", "1 2"])
def test_a_resume_position_that_is_not_a_non_negative_integer_is_refused(bad):
    with pytest.raises(sse.BadResume):
        sse.resume_position(bad, None)
    with pytest.raises(sse.BadResume):
        sse.resume_position(None, bad)


@pytest.mark.parametrize("bad", ["\u00b2", "\u0661\u0662", "\U0001d7d9", "\uff11"])
def test_a_resume_position_of_non_ascii_digits_is_refused_not_a_crash_or_a_guess(bad):
    # str.isdigit() is true for these, but int() fails on "²" (a 500 from the endpoint) and reads
    # the others as numbers no server ever sent.
    with pytest.raises(sse.BadResume):
        sse.resume_position(bad, None)
    with pytest.raises(sse.BadResume):
        sse.resume_position(None, bad)


def test_an_empty_filter_matches_every_event():
    assert sse.Filter().matches(None, "anything") and sse.Filter().matches("b1", "bot.state")


def test_a_bot_filter_matches_only_those_bots_and_never_tenant_wide_events():
    flt = sse.Filter(bot_ids=frozenset({"b1", "b2"}))
    assert flt.matches("b1", "bot.state") and flt.matches("b2", "x")
    assert not flt.matches("b3", "bot.state")
    assert not flt.matches(None, "bot.state")


def test_a_type_filter_matches_exact_types_and_prefix_wildcards():
    flt = sse.Filter(types=frozenset({"message.in", "bot.*"}))
    assert flt.matches(None, "message.in")
    assert flt.matches(None, "bot.state") and flt.matches(None, "bot.qr.rotated")
    assert not flt.matches(None, "message.out")
    assert not flt.matches(None, "bot")  # the prefix is "bot.", dot included
    assert not flt.matches(None, "bots.state")
    assert not flt.matches(None, "robot.state")


def test_bot_and_type_filters_must_both_match():
    flt = sse.Filter(frozenset({"b1"}), frozenset({"bot.*"}))
    assert flt.matches("b1", "bot.state")
    assert not flt.matches("b2", "bot.state")
    assert not flt.matches("b1", "message.in")


def test_only_exact_type_filters_can_be_pushed_into_the_query():
    assert sse.Filter().exact_types is None
    assert sse.Filter(types=frozenset({"a", "b"})).exact_types == frozenset({"a", "b"})
    assert sse.Filter(types=frozenset({"a", "bot.*"})).exact_types is None


def test_list_parameters_split_on_commas_and_repeat():
    assert sse.split_list(["a,b", " c ", "", ",d,,"]) == ["a", "b", "c", "d"]
    assert sse.split_list([]) == []


def test_frames_are_bytes_of_utf8_text():
    raw = sse.frame(1, "t", {"name": "Zoë"})
    assert isinstance(raw, bytes)
    assert json.loads(raw.decode("utf-8").split("data: ", 1)[1]) == {"name": "Zoë"}

"""Reply rules and per-bot AI settings (sansio.rules): matching, first match wins, and validation
errors that name the offending field."""

import time

import pytest

from sansio.rules import (
    HAS_MATCH_TIMEOUT,
    MAX_TEXT,
    AiConfig,
    RuleError,
    first_match,
    validate_ai_config,
    validate_rules,
)


def rule(pattern, match="keyword", reply="r", **extra):
    return {"match": match, "pattern": pattern, "reply": reply, **extra}


def fires(pattern, text, match="keyword"):
    (compiled,) = validate_rules([rule(pattern, match)])
    return compiled.matches(text)


def error_of(obj, validate=validate_rules):
    with pytest.raises(RuleError) as info:
        validate(obj)
    return info.value


# -- keyword ------------------------------------------------------------------------------------------


def test_the_platform_matches_regex_rules_with_a_timeout():
    # regex is an install requirement (setup.cfg): without it a polynomial pattern could stall the hub.
    assert HAS_MATCH_TIMEOUT


def test_a_keyword_matches_a_whole_word_anywhere_in_the_text():
    assert fires("price", "what is the price of this?")


def test_a_keyword_does_not_match_inside_a_longer_word():
    assert not fires("hi", "this is nothing")


def test_a_keyword_ignores_case():
    assert fires("Price", "PRICE please")


def test_a_keyword_word_boundary_is_unicode_aware():
    assert not fires("hi", "hï there")
    assert fires("olá", "Olá, tudo bem?")


def test_a_keyword_matches_composed_and_decomposed_accents_alike():
    assert fires("café", "un CAFE\u0301 s'il vous plaît")
    assert not fires("cafe", "un cafe\u0301")


def test_a_keyword_uses_full_case_folding():
    assert fires("straße", "STRASSE 5")


def test_a_keyword_phrase_matches_across_any_whitespace():
    assert fires("opening hours", "your opening\n  hours?")


def test_a_keyword_with_punctuation_is_matched_literally():
    assert fires("c++", "do you teach c++?")
    assert not fires("a.b", "axb")


# -- regex --------------------------------------------------------------------------------------------


def test_a_regex_is_searched_anywhere_ignoring_case():
    assert fires(r"order\s+#?\d+", "About ORDER #123, where is it?", match="regex")


def test_a_regex_that_does_not_match_does_not_fire():
    assert not fires(r"^\d+$", "12a", match="regex")


def test_rules_look_only_at_the_start_of_a_very_long_message():
    assert not fires("needle", "x " * MAX_TEXT + "needle")


def test_a_regex_that_cannot_decide_in_time_counts_as_no_match():
    (slow,) = validate_rules([rule(r"\w*\w*\w*\w*\w*\W", "regex")])
    started = time.monotonic()
    assert first_match([slow], "a" * MAX_TEXT) is None
    assert time.monotonic() - started < 0.5  # unguarded, this search takes over a second


# -- first match --------------------------------------------------------------------------------------


def test_the_first_matching_rule_wins():
    rules = validate_rules([rule("hello", reply="first"), rule("hel+o", "regex", reply="second")])
    assert first_match(rules, "hello").reply == "first"


def test_a_disabled_rule_is_skipped():
    rules = validate_rules([rule("hello", reply="off", enabled=False), rule("hello", reply="on")])
    assert first_match(rules, "hello").reply == "on"


def test_no_matching_rule_gives_none():
    assert first_match(validate_rules([rule("hello")]), "bye") is None


def test_a_rule_is_enabled_unless_it_says_otherwise():
    assert validate_rules([rule("x")])[0].enabled is True


def test_validated_rules_turn_back_into_json_with_enabled_spelled_out():
    stored = [rule("x", enabled=False), rule("y+", "regex", reply="why")]
    assert [r.to_json() for r in validate_rules(stored)] == [stored[0], {**stored[1], "enabled": True}]


# -- rule validation ----------------------------------------------------------------------------------


def test_rules_must_be_a_list():
    assert error_of({"match": "keyword"}).field == "rules"


def test_more_than_200_rules_are_refused():
    assert error_of([rule("x")] * 201).field == "rules"


def test_a_rule_must_be_an_object():
    assert error_of([rule("x"), "y"]).field == "rules[1]"


def test_an_unknown_match_kind_is_named():
    assert error_of([rule("x"), rule("y", "glob")]).field == "rules[1].match"


def test_an_unknown_key_is_an_error():
    assert error_of([rule("x", enable=False)]).field == "rules[0].enable"


def test_a_missing_pattern_is_an_error():
    assert error_of([{"match": "keyword", "reply": "r"}]).field == "rules[0].pattern"


def test_a_blank_pattern_is_an_error():
    assert error_of([rule("   ")]).field == "rules[0].pattern"


def test_a_pattern_over_500_characters_is_an_error():
    assert error_of([rule("a" * 501)]).field == "rules[0].pattern"


def test_an_empty_reply_is_an_error():
    assert error_of([rule("x", reply="")]).field == "rules[0].reply"


def test_a_reply_over_4096_characters_is_an_error():
    assert error_of([rule("x", reply="r" * 4097)]).field == "rules[0].reply"


def test_a_reply_of_4096_characters_is_accepted():
    assert validate_rules([rule("x", reply="r" * 4096)])[0].reply == "r" * 4096


def test_enabled_must_be_a_boolean():
    assert error_of([rule("x", enabled=1)]).field == "rules[0].enabled"


def test_a_regex_that_does_not_compile_is_named_with_its_index():
    error = error_of([rule("x"), rule("y"), rule("(unclosed", "regex")])
    assert error.field == "rules[2].pattern"
    assert "not a valid regular expression" in error.reason


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\w+\s?)*!", r"(?:hi|hello)+", r"(a*)*b"])
def test_a_regex_that_can_backtrack_exponentially_is_refused(pattern):
    assert "exponential" in error_of([rule(pattern, "regex")]).reason


def test_a_regex_with_a_backreference_is_refused():
    assert "backreference" in error_of([rule(r"(a)\1", "regex")]).reason


def test_everyday_regexes_are_accepted():
    validate_rules([rule(p, "regex") for p in (r"^(hi|hello)\b", r"(a|b)+", r"[0-9]{4,}", r"(?=.*price)")])


def test_the_error_message_starts_with_the_field_path():
    assert str(error_of([rule("x", reply="")])).startswith("rules[0].reply: ")


# -- AI settings --------------------------------------------------------------------------------------


def test_empty_ai_settings_mean_ai_off_with_defaults():
    assert validate_ai_config({}) == AiConfig(enabled=False, system_prompt="", temperature=0.7, history=10)


def test_full_ai_settings_are_kept():
    obj = {"enabled": True, "system_prompt": "Be brief.", "temperature": 1, "history": 0,
           "model": "deepseek-reasoner", "fallback_reply": "Back soon."}
    assert validate_ai_config(obj).to_json() == {**obj, "temperature": 1.0}


def test_ai_settings_must_be_an_object():
    assert error_of([], validate_ai_config).field == "ai"


@pytest.mark.parametrize("value", [-0.1, 2.01, "0.5", True, float("nan")])
def test_a_temperature_outside_0_to_2_is_an_error(value):
    assert error_of({"temperature": value}, validate_ai_config).field == "ai.temperature"


@pytest.mark.parametrize("value", [-1, 51, 2.5, False])
def test_a_history_outside_0_to_50_is_an_error(value):
    assert error_of({"history": value}, validate_ai_config).field == "ai.history"


def test_a_system_prompt_over_8000_characters_is_an_error():
    assert error_of({"system_prompt": "p" * 8001}, validate_ai_config).field == "ai.system_prompt"


def test_a_model_name_over_100_characters_is_an_error():
    assert error_of({"model": "m" * 101}, validate_ai_config).field == "ai.model"


def test_a_fallback_reply_over_4096_characters_is_an_error():
    assert error_of({"fallback_reply": "f" * 4097}, validate_ai_config).field == "ai.fallback_reply"


def test_an_unknown_ai_key_is_an_error():
    assert error_of({"enabled": True, "temprature": 1}, validate_ai_config).field == "ai.temprature"


def test_ai_enabled_must_be_a_boolean():
    assert error_of({"enabled": "yes"}, validate_ai_config).field == "ai.enabled"


def test_a_null_model_means_the_platform_default():
    assert validate_ai_config({"model": None}).model is None

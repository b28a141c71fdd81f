"""A bot's reply rules and AI settings: validation of what tenants store in ``bots.rules`` and
``bots.ai`` (jsonb), and the matching of an incoming text against the rules.

A rule is ``{"match": "keyword" | "regex", "pattern": str, "reply": str, "enabled": bool = true}``:

- ``keyword``: the pattern occurs in the text as a whole word (or whole phrase), anywhere, ignoring
  case. Both sides are NFC-normalised and case-folded, so "Café" (composed or not) finds "café" and
  "STRASSE" finds "straße"; word boundaries are Unicode-aware (``\\w``), so "hi" does not fire on
  "this" or "hï". Spaces in a phrase match any run of whitespace.
- ``regex``: a Python ``re`` pattern, searched anywhere in the text with IGNORECASE.

``first_match`` returns the first enabled rule that matches, in the tenant's order.

Catastrophic regexes. A tenant's pattern runs inside our process, and under gevent a runaway match
blocks every bot in it, so three guards apply, and they are honest about their reach:

1. Validation rejects the shapes that backtrack exponentially in a backtracking engine: nested
   quantifiers (``(a+)+``, ``(\\w+\\s?)*``), a repeated alternation (``(a|ab)+``) and backreferences.
   The check walks the parse tree of the stdlib parser (``re._parser``, private but stable across
   3.11-3.13; a change there breaks the tests, not production silently).
2. Rules only look at the first ``MAX_TEXT`` (4096) characters of a message.
3. Patterns run on the third-party ``regex`` module (an install requirement) with a per-match timeout
   of ``MATCH_TIMEOUT``; a match that runs out of time counts as no match. Guards 1 and 2 alone remove
   exponential blow-ups but not polynomial ones (``a*a*a*a*a*[^a]`` passes validation and keeps stdlib
   ``re`` busy for minutes on 300 "a"s); should ``regex`` be missing, matching falls back to ``re``
   without a timeout and ``HAS_MATCH_TIMEOUT`` is false (a test fails on such an install).

Validation always compiles with stdlib ``re``, so what a tenant may store does not depend on whether
``regex`` is installed (its default V0 syntax is compatible with ``re``).

Errors are ``RuleError(field, reason)`` with a path such as ``rules[2].pattern`` or ``ai.temperature``
that the API can hand back to the client. Unknown keys are errors (a typo such as ``"enable"`` must
not silently leave a rule on).

Pure: no I/O, no clock (the ``regex`` timeout is the engine's own).
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

try:  # Python 3.11+: the parser behind re.compile; only read, to inspect a pattern's structure.
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older interpreters
    import sre_parse as _sre_parse

try:
    import regex as _regex_engine  # optional: gives matching a timeout
except ImportError:  # pragma: no cover - depends on the environment
    _regex_engine = None  # type: ignore[assignment]  # optional: None when regex is not installed

MAX_RULES = 200
MAX_PATTERN = 500
MAX_REPLY = 4096
MAX_TEXT = 4096  # rules see at most this many characters of a message
MATCH_TIMEOUT = 0.02  # seconds per regex match when the `regex` module is available
MAX_SYSTEM_PROMPT = 8000
MAX_MODEL = 100
MAX_HISTORY = 50
HAS_MATCH_TIMEOUT = _regex_engine is not None

KEYWORD = "keyword"
REGEX = "regex"
_MATCH_KINDS = (KEYWORD, REGEX)
_RULE_KEYS = frozenset({"match", "pattern", "reply", "enabled"})
_AI_KEYS = frozenset({"enabled", "system_prompt", "temperature", "history", "model", "fallback_reply"})


class RuleError(ValueError):
    """A stored rule or AI setting is invalid; ``field`` is a path like ``rules[2].pattern``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Rule:
    match: str
    pattern: str
    reply: str
    enabled: bool = True
    # The compiled matcher; built by validate_rules, never part of equality or repr.
    _search: Any = dataclasses.field(default=None, compare=False, repr=False)

    def matches(self, text: str) -> bool:
        """Whether this rule fires on ``text`` (ignores ``enabled``; ``first_match`` checks that)."""
        search = self._search or _compile(self.match, self.pattern)
        return search(_prepare(self.match, text))

    def to_json(self) -> dict[str, Any]:
        return {"match": self.match, "pattern": self.pattern, "reply": self.reply, "enabled": self.enabled}


@dataclasses.dataclass(frozen=True)
class AiConfig:
    enabled: bool = False  # the column's default is {}: no AI until a tenant turns it on
    system_prompt: str = ""
    temperature: float = 0.7
    history: int = 10  # past messages of the conversation sent along
    model: str | None = None  # None: the platform's AI_MODEL
    fallback_reply: str | None = None  # sent while the provider is unavailable; None: say nothing

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- matching ----------------------------------------------------------------------------------------


def first_match(rules: Iterable[Rule], text: str) -> Rule | None:
    """The first enabled rule that matches ``text``, or None."""
    for rule in rules:
        if rule.enabled and rule.matches(text):
            return rule
    return None


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _prepare(kind: str, text: str) -> str:
    text = _normalise(text[:MAX_TEXT])
    # Keywords compare case-folded text (full folding: "ß" ~ "ss"); regexes see the text as written.
    return text.casefold() if kind == KEYWORD else text


def _compile(kind: str, pattern: str) -> Any:
    """A function text -> bool for one rule. Raises re.error for a pattern that does not compile."""
    if kind == KEYWORD:
        words = _normalise(pattern).casefold().split()
        source = r"(?<!\w)" + r"\s+".join(re.escape(word) for word in words) + r"(?!\w)"
        compiled = re.compile(source)  # literal text between boundaries: linear, stdlib is enough
        return lambda text: compiled.search(text) is not None
    compiled = re.compile(pattern, re.IGNORECASE)
    if _regex_engine is not None:
        try:
            timed = _regex_engine.compile(pattern, _regex_engine.IGNORECASE | _regex_engine.V0)
        except _regex_engine.error:  # pragma: no cover - a V0 incompatibility: fall back to re
            timed = None
        if timed is not None:

            def search_timed(text: str) -> bool:
                try:
                    return timed.search(text, timeout=MATCH_TIMEOUT) is not None
                except TimeoutError:
                    return False  # a pattern that cannot decide in time does not fire

            return search_timed
    return lambda text: compiled.search(text) is not None


# -- validation: rules ---------------------------------------------------------------------------------


def validate_rules(obj: Any) -> list[Rule]:
    """The rules in ``obj`` (a JSON list), validated and compiled; raises RuleError."""
    if not isinstance(obj, list):
        raise RuleError("rules", "must be a list")
    if len(obj) > MAX_RULES:
        raise RuleError("rules", f"at most {MAX_RULES} rules")
    return [_validate_rule(item, f"rules[{index}]") for index, item in enumerate(obj)]


def _validate_rule(item: Any, path: str) -> Rule:
    if not isinstance(item, dict):
        raise RuleError(path, "must be an object")
    _reject_unknown(item, _RULE_KEYS, path)
    kind = item.get("match")
    if kind not in _MATCH_KINDS:
        raise RuleError(f"{path}.match", "must be 'keyword' or 'regex'")
    pattern = _text(item, "pattern", path, required=True, maximum=MAX_PATTERN)
    reply = _text(item, "reply", path, required=True, maximum=MAX_REPLY)
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(f"{path}.enabled", "must be true or false")
    if kind == REGEX:
        _check_regex(pattern, f"{path}.pattern")
    return Rule(kind, pattern, reply, enabled, _compile(kind, pattern))


def _check_regex(pattern: str, path: str) -> None:
    try:
        tree = _sre_parse.parse(pattern, re.IGNORECASE)
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise RuleError(path, f"not a valid regular expression: {exc}") from None
    except RecursionError:
        raise RuleError(path, "nested too deeply") from None
    problem = _dangerous(tree, inside_repeat=False)
    if problem:
        raise RuleError(path, problem)


_REPEATS = {_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT}
if hasattr(_sre_parse, "POSSESSIVE_REPEAT"):
    _REPEATS.add(_sre_parse.POSSESSIVE_REPEAT)


def _dangerous(tree: Any, inside_repeat: bool) -> str | None:
    """Why the parsed pattern may backtrack exponentially, or None.

    ``inside_repeat``: we are in the body of a quantifier that may repeat more than once.
    """
    for op, av in tree:
        if op in (_sre_parse.GROUPREF, _sre_parse.GROUPREF_EXISTS):
            return "backreferences are not allowed"
        if op in _REPEATS:
            _low, high, body = av
            repeats = high > 1
            if repeats and inside_repeat:
                return "nested quantifiers such as (a+)+ can take exponential time; simplify the pattern"
            problem = _dangerous(body, inside_repeat or repeats)
        elif op is _sre_parse.BRANCH:
            if inside_repeat:
                return "a repeated alternation such as (a|ab)+ can take exponential time; simplify the pattern"
            problem = _first(_dangerous(branch, inside_repeat) for branch in av[1])
        elif op is _sre_parse.SUBPATTERN:
            problem = _dangerous(av[-1], inside_repeat)
        elif op in (_sre_parse.ASSERT, _sre_parse.ASSERT_NOT):
            problem = _dangerous(av[1], inside_repeat)
        elif op is getattr(_sre_parse, "ATOMIC_GROUP", None):
            problem = _dangerous(av, inside_repeat)
        else:
            problem = None
        if problem:
            return problem
    return None


def _first(problems: Iterable[str | None]) -> str | None:
    return next((problem for problem in problems if problem), None)


# -- validation: AI settings ---------------------------------------------------------------------------


def validate_ai_config(obj: Any) -> AiConfig:
    """The per-bot AI settings in ``obj`` (a JSON object; ``{}`` means AI off); raises RuleError."""
    if not isinstance(obj, dict):
        raise RuleError("ai", "must be an object")
    _reject_unknown(obj, _AI_KEYS, "ai")
    defaults = AiConfig()
    enabled = obj.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        raise RuleError("ai.enabled", "must be true or false")
    system_prompt = _text(obj, "system_prompt", "ai", required=False, maximum=MAX_SYSTEM_PROMPT, blank_ok=True)
    temperature = obj.get("temperature", defaults.temperature)
    # bool is an int in Python; JSON true is not a temperature.
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise RuleError("ai.temperature", "must be a number from 0 to 2")
    if not 0 <= temperature <= 2:
        raise RuleError("ai.temperature", "must be a number from 0 to 2")
    history = obj.get("history", defaults.history)
    if isinstance(history, bool) or not isinstance(history, int) or not 0 <= history <= MAX_HISTORY:
        raise RuleError("ai.history", f"must be a whole number from 0 to {MAX_HISTORY}")
    return AiConfig(
        enabled=enabled,
        system_prompt=system_prompt or "",
        temperature=float(temperature),
        history=history,
        model=_text(obj, "model", "ai", required=False, maximum=MAX_MODEL),
        fallback_reply=_text(obj, "fallback_reply", "ai", required=False, maximum=MAX_REPLY),
    )


# -- shared checks -------------------------------------------------------------------------------------


def _reject_unknown(obj: dict[str, Any], known: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in known:
            raise RuleError(f"{path}.{key}", "unknown field")


def _text(obj: dict[str, Any], key: str, path: str, *, required: bool, maximum: int, blank_ok: bool = False) -> Any:
    """``obj[key]`` as a string of 1..maximum characters; missing or null is None unless required."""
    field = f"{path}.{key}"
    value = obj.get(key)
    if value is None:
        if required:
            raise RuleError(field, "is required")
        return None
    if not isinstance(value, str):
        raise RuleError(field, "must be a string")
    if not blank_ok and not value.strip():
        raise RuleError(field, "must not be blank")
    if len(value) > maximum:
        raise RuleError(field, f"at most {maximum} characters")
    if "\x00" in value:  # PostgreSQL's text (and jsonb) cannot hold NUL: refused, never a failed write
        raise RuleError(field, "must not contain NUL characters")
    return value

"""The one retry helper for transient faults, built on tenacity.

Callers say whether their unit of work may be repeated; only then is it retried, and only for faults
``sansio.retry_rules.is_transient`` accepts, with capped exponential backoff and jitter. tenacity runs
the loop (stop rules, the retry log); the delays come from the platform's one policy,
``sansio.backoff.BackoffPolicy`` (``policy(initial, maximum)``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TypeVar

import tenacity

from sansio.backoff import BackoffPolicy, Rng
from sansio.retry_rules import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "transient fault, retrying",
        extra={"attempt": state.attempt_number, "error": repr(exc), "sleep": round(state.upcoming_sleep, 3)},
    )


def policy(initial: float, maximum: float) -> BackoffPolicy:
    """The delays between attempts: retry n waits uniformly in ``[d/2, d]`` with ``d = min(maximum,
    2 * initial * 2**(n-1))``. So the first retry waits between ``initial`` and twice that, each later
    one at least ``initial * 2**(n-1)`` until the cap (the lower bounds of tenacity's
    ``wait_exponential_jitter(initial, maximum, jitter=initial)``, used here before), and none more
    than ``maximum``."""
    return BackoffPolicy(base=2 * initial, cap=maximum, jitter="equal")


def wait_of(backoff: BackoffPolicy, rng: Rng) -> Callable[[tenacity.RetryCallState], float]:
    """tenacity's ``wait``: after attempt k failed, the delay of retry k."""
    return lambda state: backoff.delay(state.attempt_number, rng)


def call(
    fn: Callable[[], T],
    *,
    repeatable: bool,
    attempts: int = 5,
    initial: float = 0.05,
    maximum: float = 2.0,
    deadline: float | None = 30.0,
    classify: Callable[[BaseException], bool] = is_transient,
    rng: Rng | None = None,
) -> T:
    """Run ``fn``; if ``repeatable``, run it again after transient faults (up to ``attempts`` times
    within ``deadline`` seconds). Non-repeatable work runs once and its fault propagates. ``rng``
    draws the jitter (a fresh ``random.Random`` when not given)."""
    if not repeatable:
        return fn()
    # Fast path: the first attempt runs without tenacity. Building and driving a tenacity.Retrying
    # costs ~45 µs a call (bench/db_pool.py), more than a pooled query's whole round trip.
    try:
        return fn()
    except Exception as exc:  # classified below
        if attempts <= 1 or not classify(exc):
            raise
        first_failure: list[BaseException] = [exc]

    def attempt() -> T:
        # Replay the failure already seen as tenacity's first attempt, so attempts, backoff and the
        # retry log stay exactly as they would be.
        if first_failure:
            raise first_failure.pop()
        return fn()

    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(attempts)
    if deadline is not None:
        stop = stop | tenacity.stop_after_delay(deadline)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(classify),
        stop=stop,
        wait=wait_of(policy(initial, maximum), rng or random.Random()),
        before_sleep=_log_retry,
        reraise=True,
    )
    return retrying(attempt)

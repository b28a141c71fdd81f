"""The one way a test waits: on a condition, with a deadline, never a bare sleep that hopes.

``wait_until(predicate, timeout=..., what=...)`` calls ``predicate`` until it returns something truthy
and returns that value; past the deadline it fails the test with ``what`` in the message (and, when
given, ``detail()``: what the test saw at the deadline, e.g. the last events received). Between
calls it yields with ``gevent.sleep`` (the test process is monkey-patched, so ``time.sleep`` would do
the same; the name says it). ``predicate`` may raise ``AssertionError`` to mean "not yet": the last
such error is chained to the timeout, so a failing wait says what it last saw.

To check that something does *not* happen, wait on the event that proves the system got past the
point where it would have happened (a later message, a metric, a log line), then assert; a sleep
followed by an assertion can pass on a slow machine for the wrong reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import gevent

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


def wait_until(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, what: str = "the condition",
               interval: float = 0.01, detail: Callable[[], str] | None = None) -> T:
    deadline = time.monotonic() + timeout
    last_error: AssertionError | None = None
    while True:
        try:
            value = predicate()
        except AssertionError as error:
            last_error, value = error, None  # type: ignore[assignment] - "not yet"
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}") from last_error
        gevent.sleep(interval)

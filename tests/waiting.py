"""Waiting in tests: on a condition, never for a fixed time and hoping."""

from __future__ import annotations

import time
from typing import Any, Callable

import gevent


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition",
               interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (fails
    naming ``what``). Yields to the hub between polls, so servers in the test process go on."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        gevent.sleep(interval)

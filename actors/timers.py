"""Time as something an actor is given rather than something it reads: a ``clock`` (a callable
returning monotonic seconds) and ``timers`` (``schedule(delay, fn) -> handle`` with ``cancel()``).

``GeventTimers`` is the real one: each timer is a greenlet started later by the hub. ``ManualTimers``
is a clock and timers moved by hand, so a test can say "five seconds pass" and see exactly the timers
that were due fire, in deadline order, without sleeping. Timer callbacks must be quick and must not
block (they tell an actor, set an event): they run on the hub's schedule or in the test's greenlet.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import gevent
import gevent.event

log = logging.getLogger(__name__)

Clock = Callable[[], float]
monotonic: Clock = time.monotonic


class TimerHandle(Protocol):
    def cancel(self) -> None:
        """Make sure the callback does not run (no effect once it has run)."""


class Timers(Protocol):
    def schedule(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        """Run ``fn()`` once, ``delay`` seconds from now."""


def _run_logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a timer has nobody to raise to
        log.exception("timer callback raised", extra={"callback": repr(fn)})


class _GeventTimer:
    __slots__ = ("_fn", "_cancelled", "_running", "_greenlet")

    def __init__(self, delay: float, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._cancelled = False
        self._running = False
        self._greenlet = gevent.spawn_later(max(0.0, delay), self._fire)

    def _fire(self) -> None:
        if self._cancelled:
            return
        self._running = True
        _run_logged(self._fn)

    def cancel(self) -> None:
        self._cancelled = True
        # Killing a greenlet that has not started just unschedules it (and frees it now rather than
        # at the deadline); one already in its callback is left to finish rather than cut in half.
        if not self._running:
            self._greenlet.kill(block=False)


class GeventTimers:
    """Real timers: a greenlet per pending timer, a few hundred bytes each until it fires."""

    def schedule(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return _GeventTimer(delay, fn)


class _ManualTimer:
    __slots__ = ("deadline", "seq", "fn", "cancelled")

    def __init__(self, deadline: float, seq: int, fn: Callable[[], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.fn = fn
        self.cancelled = False

    def __lt__(self, other: _ManualTimer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """A fake clock and its timers: nothing happens until ``advance`` is called.

    Pass ``timers.now`` as the clock and ``timers`` itself as the timers. Callbacks run inside
    ``advance``, in the caller's greenlet, each with the clock set to its own deadline.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._heap: list[_ManualTimer] = []
        self._seq = itertools.count()
        self._scheduled = gevent.event.Event()

    def now(self) -> float:
        return self._now

    def schedule(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(self._now + max(0.0, delay), next(self._seq), fn)
        heapq.heappush(self._heap, timer)
        self._scheduled.set()
        return timer

    def pending(self) -> list[float]:
        """Deadlines of the timers neither fired nor cancelled, earliest first."""
        return sorted(t.deadline for t in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> None:
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"time does not go backwards: {seconds}")
        target = self._now + seconds
        while self._heap and self._heap[0].deadline <= target:
            timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = timer.deadline
            _run_logged(timer.fn)
        self._now = target

    def wait_for_pending(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait (in real time, yielding) until at least ``count`` timers are pending.

        For a test that must let an actor schedule its timer before moving the clock past it.
        """
        deadline = time.monotonic() + timeout
        while len(self.pending()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._scheduled.clear()
            self._scheduled.wait(remaining)
        return True

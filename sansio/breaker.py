"""A circuit breaker: stop calling a provider that keeps failing, and probe it now and then.

States:

- ``closed``: calls go through. ``failures`` consecutive failures open it; any success resets the count.
- ``open``: calls are refused at once (the caller answers without waiting on a dead provider).
  ``reset`` seconds after it opened, it becomes half-open.
- ``half_open``: exactly one trial call is let through. Its success closes the breaker; its failure
  opens it again for another ``reset`` seconds. Other calls are refused while the trial is out.

A trial whose outcome never arrives (its caller was killed between ``allow`` and ``record_*``) would
leave the breaker half-open and refusing forever; so a trial older than ``reset`` seconds is treated
as lost and another one is let through.

Outcomes that arrive while the breaker is open come from calls allowed before it opened; they do not
change it (only a trial decides when to close).

Pure: the clock is passed in (monotonic seconds). Mutable, but no method blocks or yields, so under
gevent greenlets sharing one breaker never see it half-updated.
"""

from __future__ import annotations

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Breaker:
    def __init__(self, failures: int, reset: float) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if not reset > 0:
            raise ValueError("reset must be greater than 0")
        self.failures = failures
        self.reset = reset
        self._consecutive = 0
        self._opened_at: float | None = None  # set while open or half-open
        self._trial_at: float | None = None  # when the half-open trial was let through

    def state(self, now: float) -> str:
        """``closed``, ``open`` or ``half_open`` (the reset has passed: a trial may go, or is out)."""
        if self._opened_at is None:
            return CLOSED
        if now - self._opened_at < self.reset:
            return OPEN
        return HALF_OPEN

    def allow(self, now: float) -> bool:
        """Whether a call may go now; in half-open, True hands out the one trial."""
        state = self.state(now)
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        if self._trial_at is not None and now - self._trial_at < self.reset:
            return False  # the trial is out
        self._trial_at = now
        return True

    def record_success(self, now: float) -> None:
        if self.state(now) == OPEN:
            return  # a straggler from before the breaker opened
        self._consecutive = 0
        self._opened_at = None
        self._trial_at = None

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state == OPEN:
            return  # a straggler; the breaker is already open
        if state == HALF_OPEN:
            self._open(now)  # the trial failed
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._open(now)

    def retry_in(self, now: float) -> float:
        """Seconds until a trial may go (0 unless open)."""
        if self.state(now) != OPEN:
            return 0.0
        assert self._opened_at is not None
        return self.reset - (now - self._opened_at)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._trial_at = None
        self._consecutive = 0

"""Restart intensity: the decision, without I/O, whether a supervisor may restart one more child.

Erlang/OTP's rule: a supervisor may perform at most ``max_restarts`` restarts within any window of
``max_seconds``; the restart that would make it ``max_restarts + 1`` means the children keep failing
for a reason a restart does not cure, and the supervisor gives up so that its own parent can act.
The caller passes the time in (monotonic seconds), so this is tested without clocks or sleeps.
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple


class IntensityVerdict(NamedTuple):
    allowed: bool
    restarts_in_window: int
    """Restarts inside the window, this one included (for logs and the give-up reason)."""


class RestartIntensity:
    """Sliding window of restart times. Not thread-safe: one supervisor owns one instance."""

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if not max_seconds > 0 or math.isnan(max_seconds):
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._times: collections.deque[float] = collections.deque()

    def record(self, now: float) -> IntensityVerdict:
        """Count a restart at ``now``; ``allowed`` is False once the window holds too many.

        A restart exactly ``max_seconds`` old still counts (OTP keeps restarts with
        ``time >= now - period``). A refused restart stays recorded: the supervisor ends anyway, and
        a caller that keeps asking is refused again rather than let through by its own refusals
        ageing out.
        """
        # The clock is monotonic, but a caller mixing clocks must not make old restarts look new.
        if self._times and now < self._times[-1]:
            now = self._times[-1]
        threshold = now - self.max_seconds
        while self._times and self._times[0] < threshold:
            self._times.popleft()
        self._times.append(now)
        count = len(self._times)
        return IntensityVerdict(count <= self.max_restarts, count)

    def in_window(self, now: float) -> int:
        """Restarts that would still count against a restart at ``now`` (read-only)."""
        threshold = now - self.max_seconds
        return sum(1 for t in self._times if t >= threshold)

"""The process-wide limit on how many sessions may start connecting per second.

A sliding-window log, not a token bucket: a bucket of size ``b`` refilled at ``r``/s lets ``b + r``
attempts through in one second, and the point of this limit is that the network never sees more
than ``rate`` logins from us in any one-second window, however the attempts bunch up.

``reserve(now)`` hands out the earliest slot that keeps every half-open window ``[t, t + 1)`` at no
more than ``floor(rate)`` starts (for a rate below 1: one start per ``1 / rate`` seconds) and records
it; the caller waits until that time and then dials. Slots are handed out in call order and never
before an earlier one, so every caller gets one and no one starves. ``burst`` optionally also limits
how many may start back to back: at most ``burst`` in any ``burst / rate`` seconds.

Pure: the clock is passed in. One instance is shared by the process (owned by one actor, or used
from one hub thread); it is not thread-safe.
"""

from __future__ import annotations

import collections
import math

ADMIT_MARGIN = 0.01


class ConnectRateLimiter:
    def __init__(self, rate: float, burst: int | None = None) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError("rate must be a finite number greater than 0")
        if burst is not None and burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        # (count, period): at most `count` starts in any `period` seconds.
        self._limits = [(math.floor(rate), 1.0) if rate >= 1 else (1, 1 / rate)]
        if burst is not None:
            self._limits.append((burst, burst / rate))
        self._granted: collections.deque[float] = collections.deque(maxlen=max(n for n, _ in self._limits))
        self._started: collections.deque[float] = collections.deque(maxlen=max(n for n, _ in self._limits))

    def reserve(self, now: float) -> float:
        """Claim the next slot at or after ``now``; returns the time the caller may connect."""
        at = max(now, self._granted[-1]) if self._granted else now
        for count, period in self._limits:
            if len(self._granted) >= count:
                # The count-th most recent start must have left the window before this one begins.
                at = max(at, self._granted[-count] + period)
        self._granted.append(at)
        return at

    def admit(self, now: float) -> float:
        """At the moment of the dial itself: 0 (and the dial is counted) if it keeps every window
        within the limit, else the seconds to wait. Reservations fix the order; this is what the
        network sees, so a dial that runs late behind a busy hub cannot push a window over."""
        wait = 0.0
        for count, period in self._limits:
            if len(self._started) >= count:
                # Ten milliseconds of margin: the dial itself happens a moment after this clock read
                # (longer if the OS deschedules the process in between); costs 1% of the rate.
                wait = max(wait, self._started[-count] + period + ADMIT_MARGIN - now)
        if wait > 0:
            return wait
        self._started.append(now)
        return 0.0

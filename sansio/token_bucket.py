"""A token bucket: ``rate`` tokens per second, holding at most ``burst``; pure, clock passed in.

Used for each bot's send rate (BOT_SEND_RATE per minute with a burst of BOT_SEND_BURST), which keeps a
number from looking like a spammer to WhatsApp: after a burst, sends are spaced at the rate. The
bucket is a value (the pipeline machine keeps it in its immutable state): each change returns a new
one. A rate of 0 means unlimited.
"""

from __future__ import annotations

from typing import NamedTuple


class Bucket(NamedTuple):
    tokens: float  # at ``at``
    at: float

    @classmethod
    def full(cls, burst: int, now: float) -> Bucket:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        return cls(float(burst), now)

    def refilled(self, rate: float, burst: int, now: float) -> Bucket:
        """The bucket at ``now``. Counted to a billionth: float sums of refills then reach whole
        tokens, where 0.99999...96 would ask for a wait too short to move the clock (and a timer that
        fires at once, forever)."""
        if rate <= 0 or now <= self.at:
            return self
        return Bucket(min(burst, round(self.tokens + (now - self.at) * rate, 9)), now)

    def available(self, rate: float, burst: int) -> int:
        """Whole tokens in this (refilled) bucket; ``burst`` when unlimited."""
        return burst if rate <= 0 else int(self.tokens)

    def wait_time(self, rate: float) -> float:
        """Seconds from this (refilled) bucket's time until a token is available (0 if one is)."""
        return 0.0 if rate <= 0 or self.tokens >= 1 else (1 - self.tokens) / rate

    def taken(self, rate: float) -> Bucket:
        """This (refilled) bucket less one token, if it has one (unchanged when unlimited)."""
        return self._replace(tokens=self.tokens - 1) if rate > 0 and self.tokens >= 1 else self

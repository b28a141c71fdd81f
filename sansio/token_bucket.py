"""A token bucket: ``rate`` tokens per second, holding at most ``burst``; pure, clock passed in.

Used for each bot's send rate (BOT_SEND_RATE per minute with a burst of BOT_SEND_BURST), which keeps a
number from looking like a spammer to WhatsApp: after a burst, sends are spaced at the rate.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate  # tokens per second; 0 means unlimited
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def available(self, now: float) -> int:
        """Whole tokens available now (``burst`` when unlimited)."""
        if self.rate == 0:
            return self.burst
        self._refill(now)
        return int(self._tokens)

    def take(self, now: float) -> bool:
        """Take a token if one is available."""
        if self.rate == 0:
            return True
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

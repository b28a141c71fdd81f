"""The one backoff policy of the platform: exponential delays with a cap, jitter, an optional limit on
attempts, and (for connections) a reset once a connection has proved stable.

Every retry loop uses it: a bot session's reconnects, the pool's and the listener's reconnects, the
outbox's send retries, the pipeline's store retries, supervision's restarts and the AI provider's
retries. What differs between them is data (``base``, ``cap``, ``jitter``, ``max_attempts``), mostly
from their documented settings.

Delays for retry ``attempt`` n (from 1), with ``d = min(cap, base * 2**(n-1))``
(``BackoffPolicy.bounds(n)`` returns the same ``(lo, hi)``):

- ``jitter="full-first"`` (the default; bot sessions): n = 1 uniform in ``[0, min(base, cap)]`` ("full
  jitter"), n >= 2 uniform in ``[d/2, d]`` ("equal jitter"). When the network drops a thousand bots at
  one instant, their first retries spread evenly over the base delay instead of all landing together;
  later retries still grow exponentially, never drop back towards zero, and stay spread out.
- ``jitter="equal"``: every attempt uniform in ``[d/2, d]`` (one caller's retries, where the first
  retry should not come at once).
- ``jitter="none"``: exactly ``d`` (supervision's restart spacing, whose randomness is elsewhere).

With ``max_attempts`` set, after that many scheduled retries without a stable connection
``next_delay`` answers ``None``: the session should be marked failed (``None``: never gives up). The
count resets only on a disconnect that follows a connection that stayed up at least ``stable_after``
seconds, so a link that flaps (up for a few seconds, down again) still runs out of attempts.

Pure: time and randomness are passed in; ``Backoff`` is an immutable value and every method returns a
new one. A loop that keeps its own attempt count can call ``BackoffPolicy.delay(n, rng)`` directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

# 2**64 times any sane base is far above any cap; stops float overflow for absurd attempt numbers.
_MAX_EXPONENT = 64


Jitter = Literal["full-first", "equal", "none"]


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclasses.dataclass(frozen=True)
class BackoffPolicy:
    base: float  # seconds; upper bound of the first delay
    cap: float  # seconds; no delay exceeds this
    max_attempts: int | None = None  # retries before giving up; None: never
    stable_after: float = 0.0  # seconds a connection must stay up for the count to reset
    jitter: Jitter = "full-first"

    def __post_init__(self) -> None:
        if not self.base > 0 or not self.cap > 0:
            raise ValueError("base and cap must be greater than 0")
        if (self.max_attempts is not None and self.max_attempts < 0) or self.stable_after < 0:
            raise ValueError("max_attempts and stable_after must not be negative")
        if self.jitter not in ("full-first", "equal", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> BackoffPolicy:
        return cls(
            base=settings.wa_reconnect_base_delay,
            cap=settings.wa_reconnect_max_delay,
            max_attempts=settings.wa_reconnect_max_attempts,
            stable_after=settings.wa_reconnect_stable_after,
        )

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The closed interval ``(lo, hi)`` every delay for retry number ``attempt`` (from 1) lies in."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        d = min(self.cap, self.base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
        if self.jitter == "none":
            return d, d
        if attempt == 1 and self.jitter == "full-first":
            return 0.0, d
        return d / 2, d

    def delay(self, attempt: int, rng: Rng) -> float:
        lo, hi = self.bounds(attempt)
        if lo == hi:
            return lo
        # Clamped because uniform(a, b) may round to just outside [a, b] by its own documentation.
        return min(hi, max(lo, rng.uniform(lo, hi)))


@dataclasses.dataclass(frozen=True)
class Backoff:
    policy: BackoffPolicy
    attempt: int = 0  # retries scheduled since the last stable connection
    connected_since: float | None = None  # epoch seconds while connected, else None

    def next_delay(self, rng: Rng) -> tuple[float | None, Backoff]:
        """The delay before the next retry and the state that counts it, or ``(None, self)`` once
        ``max_attempts`` retries have been spent."""
        if self.exhausted:
            return None, self
        attempt = self.attempt + 1
        return self.policy.delay(attempt, rng), dataclasses.replace(self, attempt=attempt)

    def on_connected(self, now: float) -> Backoff:
        return dataclasses.replace(self, connected_since=now)

    def on_disconnected(self, now: float) -> Backoff:
        stable = self.connected_since is not None and now - self.connected_since >= self.policy.stable_after
        return dataclasses.replace(self, attempt=0 if stable else self.attempt, connected_since=None)

    def reset(self) -> Backoff:
        """A fresh count, for when the user (re)starts the session."""
        return Backoff(self.policy)

    @property
    def exhausted(self) -> bool:
        return self.policy.max_attempts is not None and self.attempt >= self.policy.max_attempts

"""Request limits as GCRA (the generic cell rate algorithm): a token bucket kept as one number. Pure:
the clock is passed in, nothing is stored here.

A policy lets a subject (an API key, a dashboard session, a sign-in email or address) make ``burst``
requests back to back, then ``per_minute`` a minute. Its state is the *theoretical arrival time*
(``tat``, epoch seconds): when the subject's bucket is full again. A request at ``now`` moves it to
``max(tat, now) + T`` (``T = 60 / per_minute``, the emission interval) and is allowed while that is
at most ``burst · T`` ahead of ``now``; a refused request changes nothing. A ``tat`` in the past is a
full bucket, the same as no state at all, so idle state can be deleted at any time.

``take`` is the decision. ``db.rate_limits`` runs the same arithmetic in one SQL statement against a
row per subject (so every web process shares it) and hands back what ``take`` would have returned;
``observed`` turns that into the same ``Decision``. Both compare with ``EPSILON`` of slack, so the
request that lands exactly on the limit is allowed whatever the float rounding of ``burst`` sums of
``T`` made of it.

``headers`` renders draft-ietf-httpapi-ratelimit-headers (structured fields: ``RateLimit-Policy:
"writes";q=600;w=60`` and ``RateLimit: "writes";r=0;t=3``); ``Retry-After`` goes with a refusal.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

EPSILON = 1e-6
"""Seconds of slack in the comparison with the tolerance (float sums of the emission interval)."""

PRUNE_CHANCE = 0.001
"""The share of requests that also delete idle rows (their buckets are full again): no timer, no
process state, and each deletion stays small."""

IDLE_AFTER = 60.0
"""Seconds after its bucket is full again that a row may be deleted (a little slack over 'at once')."""


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str  # the policy's name in the RateLimit fields: "reads", "writes", "sign-in"
    per_minute: float  # the steady rate; 0: unlimited
    burst: int  # requests allowed back to back from a full bucket

    def __post_init__(self) -> None:
        if self.per_minute < 0 or self.burst < 1:
            raise ValueError("a policy needs per_minute >= 0 and burst >= 1")

    @property
    def unlimited(self) -> bool:
        return self.per_minute <= 0

    @property
    def emission(self) -> float:
        """Seconds one request costs (T)."""
        return 60.0 / self.per_minute

    @property
    def tolerance(self) -> float:
        """How far ahead of now ``tat`` may be after an allowed request (burst · T)."""
        return self.burst * self.emission


class Decision(NamedTuple):
    allowed: bool
    tat: float  # the state after this request (unchanged when refused)
    remaining: int  # requests that could follow at once
    retry_after: float  # seconds until a request would be allowed (0 when allowed)
    reset: float  # seconds until the whole burst is back


def take(policy: Policy, tat: float | None, now: float) -> Decision:
    """One request at ``now`` against the state ``tat`` (None: no state yet, a full bucket)."""
    if policy.unlimited:
        return Decision(True, now, policy.burst, 0.0, 0.0)
    start = now if tat is None else max(tat, now)
    after = start + policy.emission
    allowed = after - now <= policy.tolerance + EPSILON
    return observed(policy, allowed, after if allowed else (now if tat is None else tat), now)


def observed(policy: Policy, allowed: bool, tat: float, now: float) -> Decision:
    """The decision behind a stored outcome: whether the request was allowed, the state after it,
    and the clock it was decided at (the database's, for ``db.rate_limits``)."""
    if policy.unlimited:
        return Decision(True, now, policy.burst, 0.0, 0.0)
    ahead = max(0.0, tat - now)
    room = policy.tolerance - ahead
    remaining = max(0, min(policy.burst, math.floor(room / policy.emission + EPSILON)))
    if allowed:
        return Decision(True, tat, remaining, 0.0, ahead)
    # The next request would take tat + T; it is allowed once that is within the tolerance.
    wait = max(0.0, tat + policy.emission - policy.tolerance - now)
    return Decision(False, tat, 0, wait, ahead)


def whole_seconds(seconds: float) -> int:
    """Seconds as Retry-After and the ``t`` parameter give them: whole, rounded up (never 0 for a wait)."""
    return max(0, math.ceil(seconds - EPSILON))


def headers(policy: Policy, decision: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit for one policy, plus Retry-After on a refusal. ``t`` is the time
    until the whole burst is back; on a refusal it names the same moment as Retry-After, as the
    draft asks."""
    reset = decision.retry_after if not decision.allowed else decision.reset
    found = {
        "RateLimit-Policy": f'"{policy.name}";q={_whole(policy.per_minute)};w=60;wabot-burst={policy.burst}',
        "RateLimit": f'"{policy.name}";r={decision.remaining};t={whole_seconds(reset)}',
    }
    if not decision.allowed:
        found["Retry-After"] = str(max(1, whole_seconds(decision.retry_after)))
    return found


def _whole(value: float) -> str:
    return str(int(value)) if value == int(value) else str(math.floor(value))


def refusal(policy: Policy, decision: Decision, who: str) -> str:
    """What a refused request is told: which limit, and when to try again."""
    wait = max(1, whole_seconds(decision.retry_after))
    return (f"too many {policy.name} for {who}: at most {_whole(policy.per_minute)} a minute after a burst of"
            f" {policy.burst}; retry in {wait} second{'s' if wait != 1 else ''}")


def prune_due(draw: float) -> bool:
    """Whether this request also deletes idle rows; ``draw`` is uniform in [0, 1)."""
    return draw < PRUNE_CHANCE

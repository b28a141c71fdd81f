"""Slowing, then refusing, repeated failed sign-ins (no I/O: counts and times are passed in).

Failures are counted per key — the email that was tried (whether or not an account has it, so the
answer never tells which emails exist) and the client address — in PostgreSQL, so every web process
sees the same counts. For each key, under a policy:

- the first ``free`` failures cost nothing;
- after that, each further attempt must wait 2, 4, 8 … seconds (capped at ``max_delay``) after the
  last failure: slowed, for a person who mistyped, and ruinous for a guesser;
- from ``lock_after`` failures the key is refused for ``lockout`` seconds after the last failure.

A count whose last failure is older than ``window`` starts again (the database resets it on the
next failure; ``wait`` treats it as zero already). A successful sign-in clears the email's count.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Policy:
    free: int
    lock_after: int
    lockout: float
    max_delay: float = 30.0
    window: float = 900.0


def email_policy(lockout: float) -> Policy:
    return Policy(free=3, lock_after=10, lockout=lockout, window=max(900.0, lockout))


def address_policy(lockout: float) -> Policy:
    # An office behind one NAT shares an address: more room than for one email.
    return Policy(free=20, lock_after=100, lockout=lockout, window=max(900.0, lockout))


def wait(policy: Policy, failures: int, last_at: float | None, now: float) -> float:
    """Seconds before the next attempt for this key may be made (0: now)."""
    if not failures or last_at is None or now - last_at > policy.window:
        return 0.0
    if failures >= policy.lock_after:
        delay = policy.lockout
    elif failures > policy.free:
        delay = min(policy.max_delay, 2.0 ** (failures - policy.free))
    else:
        return 0.0
    return max(0.0, last_at + delay - now)


def refusal(seconds: float) -> str:
    """The message a refused sign-in shows: the same whatever the email."""
    seconds = max(1, math.ceil(seconds))
    if seconds >= 120:
        when = f"{math.ceil(seconds / 60)} minutes"
    else:
        when = f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"Too many failed sign-ins. Try again in {when}."

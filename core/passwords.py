"""Password hashing for dashboard accounts: argon2id through ``argon2-cffi``, off the gevent hub.

One argon2 hash with the library's default parameters (64 MiB, 3 passes, 4 lanes) takes ~0.2 s of
CPU here. Run on the hub it would stop every greenlet of the process — live streams, the pipeline,
other requests — for that long, so hashing and verifying run on a small pool of real OS threads of
their own (cffi releases the GIL inside the C call). Not gevent's hub threadpool: it is shared with
the DNS resolver (see runtime-pitfalls.md). Two threads bound the memory (2 × 64 MiB) and the CPU
sign-ins can take from everything else.

An unknown email is verified against a dummy hash, so a sign-in for an account that does not exist
costs the same time as one that does: the answer's timing does not tell which emails have accounts.
"""

from __future__ import annotations

from typing import Any

import gevent.threadpool
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 256  # argon2 takes any length; a cap keeps a hostile form post from being a CPU sink


class PasswordRejected(ValueError):
    """A new password that does not meet the rules; the message says which."""


def check_new(password: str, email: str = "") -> str:
    """The password if it may be used, else ``PasswordRejected`` with a sentence for the form."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise PasswordRejected(f"must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"must be at most {MAX_LENGTH} characters")
    if "\x00" in password:
        raise PasswordRejected("must not contain NUL characters")
    if email and password.strip().lower() == email.strip().lower():
        raise PasswordRejected("must not be your email address")
    return password


class Passwords:
    """Hash and verify on the pool's threads; the calling greenlet waits, the hub does not."""

    def __init__(self, threads: int = 2, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._threads = threads
        self._pool: gevent.threadpool.ThreadPool | None = None
        self._dummy: str | None = None

    def _run(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            self._pool = gevent.threadpool.ThreadPool(self._threads)
        return self._pool.apply(fn, args)

    def hash(self, password: str) -> str:
        return self._run(self._hasher.hash, password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; with ``stored`` None (no such account) the same
        work is done against a dummy hash and the answer is False."""
        if len(password) > MAX_LENGTH:
            return False
        target = stored if stored is not None else self._dummy_hash()
        return self._run(self._verify, target, password) and stored is not None

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self.hash("not a password anyone has: timing equaliser")
        return self._dummy

    def close(self) -> None:
        if self._pool is not None:
            self._pool.kill()
            self._pool = None

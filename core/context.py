"""The work context that follows a unit of work across greenlets and actors.

A correlation id names one HTTP request or one inbound WhatsApp event; tenant and bot ids say whose
work it is. They live in context variables; ``actors.base`` snapshots them when a message is sent and
restores them while the receiving actor handles it, so logs and Sentry events carry them everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from typing import Iterator, NamedTuple


class WorkContext(NamedTuple):
    correlation_id: str | None = None
    tenant_id: str | None = None
    bot_id: str | None = None


_current: contextvars.ContextVar[WorkContext] = contextvars.ContextVar("work_context", default=WorkContext())


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current() -> WorkContext:
    return _current.get()


def correlation_id() -> str | None:
    return _current.get().correlation_id


def set_current(ctx: WorkContext) -> contextvars.Token:
    return _current.set(ctx)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[WorkContext]:
    """Run a block with some fields of the work context replaced."""
    ctx = _current.get()._replace(**fields)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)

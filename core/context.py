"""The work context that follows a unit of work across greenlets and actors.

A correlation id names one HTTP request or one inbound WhatsApp event; tenant and bot ids say whose
work it is. They live in context variables; ``actors.base`` snapshots them when a message is sent and
restores them while the receiving actor handles it, so logs and Sentry events carry them everywhere.
"""

from __future__ import annotations

import contextvars
import uuid
from typing import NamedTuple


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


class bound:  # used like the function it replaced: ``with context.bound(...)``
    """Run a block with some fields of the work context replaced. A class rather than a generator
    context manager: it is entered several times per message on the pipeline's hot path."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = fields

    def __enter__(self) -> WorkContext:
        ctx = _current.get()._replace(**self._fields)
        self._token = _current.set(ctx)
        return ctx

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)

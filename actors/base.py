"""The base every actor of the platform derives from: pykka's ``ThreadingActor`` (a greenlet once gevent
has patched ``threading``) with three changes that the rest of the system relies on.

1. Containment. pykka answers a ``BaseException`` in a handler (gevent's ``GreenletExit`` or ``Timeout``)
   with ``ActorRegistry.stop_all()``, and lets one in ``on_start`` or while waiting for mail kill the
   thread without unregistering the actor. Here any way an actor can end stops that actor alone.
2. Death signals. ``watch(callback)`` registers ``callback(ref, reason)``, called exactly once when the
   actor has ended: ``reason`` is ``None`` for a normal stop, else the exception that ended it (an
   exception from ``on_stop`` included). ``kill()`` ends an actor from outside. Supervisors build
   on this.
3. Work context. Each message carries the correlation, tenant and bot ids of the code that sent it;
   the handler runs with them restored, so logs and Sentry events can be followed across actors.

A mailbox can be bounded (``mailbox_size``): sending to a full one raises ``MailboxFull`` at once
rather than blocking the sender, so a slow actor never slows the ones that talk to it. Stop requests
are always accepted.

A failure is logged and sent to Sentry once, here. Code that has already reported an exception itself
(a supervisor giving up, say) sets ``already_reported = True`` on it before raising it.
"""

from __future__ import annotations

import logging
import queue
import sys
from collections.abc import Callable
from typing import Any, Self, TypeVar, cast

import gevent
import gevent.event
import pykka
from pykka import messages as pykka_messages

from core import context, sentry

log = logging.getLogger(__name__)

DeathCallback = Callable[[pykka.ActorRef, "BaseException | None"], None]


class MailboxFull(queue.Full):
    """The receiving actor's bounded mailbox holds as many messages as it may."""


class ActorCrashed(RuntimeError):
    """An actor ended on a BaseException while answering an ``ask``; the original is the cause."""


class _ContextInbox(queue.Queue):
    """Unbounded queue underneath; the bound is enforced here so stop requests always get in. Holds
    ``(envelope, the sender's context.WorkContext)`` pairs."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if (
            self.bound
            and self.qsize() >= self.bound
            and not isinstance(item.message, pykka_messages._ActorStop)  # noqa: SLF001
            and not getattr(item.message, "bypasses_bound", False)
        ):
            raise MailboxFull(f"mailbox full ({self.bound} messages)")
        super().put((item, context.current()))


class GreenFuture(pykka.Future):
    """pykka's future for ``ask`` on a gevent event. pykka's ``ThreadingFuture`` waits on a
    ``threading.Condition``, which under the patched ``threading`` is pure Python and allocates a lock
    per wait: most of the cost of an ``ask``. Same contract: ``get`` raises ``pykka.Timeout`` after
    ``timeout`` seconds, re-raises what ``set_exception`` was given, and a value is set only once."""

    def __init__(self) -> None:
        super().__init__()
        self._done = gevent.event.Event()
        self._value: Any = None
        self._exc_info: Any = None

    def get(self, *, timeout: float | None = None) -> Any:
        if self._get_hook is not None:  # pykka's join, map, ...: the base class runs (and keeps) it
            return super().get(timeout=timeout)
        if not self._done.wait(timeout):
            raise pykka.Timeout(f"{timeout} seconds")
        if self._exc_info is not None:
            exc_type, exc_value, exc_traceback = self._exc_info
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not exc_traceback:
                raise exc_value.with_traceback(exc_traceback)
            raise exc_value
        return self._value

    def set(self, value: Any = None) -> None:
        if self._done.is_set() or self._get_hook is not None:
            raise queue.Full
        self._value = value
        self._done.set()

    def set_exception(self, exc_info: Any = None) -> None:
        if self._done.is_set() or self._get_hook is not None:
            raise queue.Full
        self._exc_info = exc_info if exc_info is not None else sys.exc_info()
        self._done.set()

    def set_get_hook(self, func: Any) -> None:
        if self._done.is_set():
            raise queue.Full
        self._get_hook = func


def current_greenlet() -> gevent.Greenlet:
    """``gevent.getcurrent()``, typed as what it is here: under monkey patching an actor's thread, and
    a request's handler that runs an actor inline, are gevent greenlets."""
    return cast(gevent.Greenlet, gevent.getcurrent())


class Actor(pykka.ThreadingActor):
    mailbox_size: int = 0
    """Largest number of queued messages; 0 means unbounded."""

    actor_inbox: _ContextInbox

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchers: list[DeathCallback] = []
        self._end_reason: BaseException | None = None
        self._ended = False
        self._greenlet: gevent.Greenlet | None = None
        self._stop_failure: Exception | None = None

    # -- death signals ---------------------------------------------------------------------------

    def watch(self, callback: DeathCallback) -> None:
        """Call ``callback(ref, reason)`` once this actor has ended (at once if it already has)."""
        if self._ended:
            callback(self.actor_ref, self._end_reason)
        else:
            self._watchers.append(callback)

    def kill(self) -> None:
        """End the actor now, from outside, whatever it is doing (raises GreenletExit inside it)."""
        if self._greenlet is not None and not self._ended:
            self._greenlet.kill(block=False)

    @property
    def mailbox_depth(self) -> int:
        return self.actor_inbox.qsize()

    # -- running inline ----------------------------------------------------------------------------

    def start_inline(self) -> pykka.ActorRef[Self]:
        """Bring the actor to life without a greenlet of its own: the calling greenlet becomes its
        thread and drives the mailbox with ``receive_inline``. Meant for an actor that exists to feed
        one connection (a stream subscriber), where the connection's greenlet would otherwise only wait
        on the actor: it saves a greenlet and two switches per message. End with ``finish_inline``."""
        self._greenlet = current_greenlet()
        pykka.ActorRegistry.register(self.actor_ref)
        self.on_start()
        return self.actor_ref

    def receive_inline(self, timeout: float | None) -> Any:
        """Handle the next message, waiting up to ``timeout`` (``queue.Empty`` if none came); returns
        what the handler returned. A stop request stops the actor and returns None."""
        envelope, ctx = self.actor_inbox.get(timeout=timeout)
        token = context.set_current(ctx)
        try:
            response = self._handle_receive(envelope.message)
        except Exception:
            if envelope.reply_to is None:
                raise
            envelope.reply_to.set_exception()
            return None
        finally:
            context.reset(token)
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)
        return response

    def finish_inline(self, reason: BaseException | None = None) -> None:
        if not self._ended:
            self._finish(reason)

    # -- pykka internals, replaced ----------------------------------------------------------------

    # pykka's is a staticmethod; this one reads the class's mailbox_size (pykka calls it on the instance).
    def _create_actor_inbox(self) -> _ContextInbox:  # type: ignore[override]
        return _ContextInbox(self.mailbox_size)

    @staticmethod
    def _create_future() -> pykka.Future:
        return GreenFuture()

    def _actor_loop(self) -> None:
        self._greenlet = current_greenlet()
        reason: BaseException | None = None
        try:
            try:
                self.on_start()
            except BaseException as exc:  # noqa: BLE001 - any start failure ends this actor alone
                reason = exc
                self._failed(exc, "on_start")
                return
            reason = self._receive_loop()
        except BaseException as exc:  # noqa: BLE001 - killed while waiting for mail
            reason = exc
            self._failed(exc, "mailbox wait")
        finally:
            self._finish(reason)

    def _receive_loop(self) -> BaseException | None:
        while not self.actor_stopped.is_set():
            envelope, ctx = self.actor_inbox.get()
            token = context.set_current(ctx)
            try:
                response = self._handle_receive(envelope.message)
                if envelope.reply_to is not None:
                    envelope.reply_to.set(response)
            except Exception as exc:  # noqa: BLE001 - an ask's error goes to its caller, a tell's fails the actor
                if envelope.reply_to is not None:
                    envelope.reply_to.set_exception()
                    continue
                self._failed(exc, type(envelope.message).__name__)
                return exc
            except BaseException as exc:  # noqa: BLE001 - GreenletExit, gevent.Timeout: contained
                if envelope.reply_to is not None:
                    crash = ActorCrashed(f"{self} ended on {exc!r}")
                    crash.__cause__ = exc
                    envelope.reply_to.set_exception(exc_info=(ActorCrashed, crash, None))
                self._failed(exc, type(envelope.message).__name__)
                return exc
            finally:
                context.reset(token)
        return self._stop_failure

    def _stop(self) -> None:
        # pykka's _stop logs an on_stop failure and carries on as if the stop had been clean; here it
        # becomes the end reason, so a watcher (a supervisor deciding on a transient child) sees it.
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception as exc:  # noqa: BLE001 - the stop goes on; the failure is the reason
            self._stop_failure = exc
            self._report(exc, "on_stop")

    def _report(self, exc: BaseException, where: str) -> None:
        if getattr(exc, "already_reported", False):
            return
        log.error(
            "actor failed",
            extra={"actor": type(self).__name__, "where": where, "error": repr(exc)},
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        sentry.capture(exc, actor=type(self).__name__)

    def _failed(self, exc: BaseException, where: str) -> None:
        self._report(exc, where)
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_failure(type(exc), exc, exc.__traceback__)
        except BaseException as hook_exc:  # noqa: BLE001
            log.error("on_failure raised", extra={"actor": type(self).__name__, "error": repr(hook_exc)})

    def _finish(self, reason: BaseException | None) -> None:
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._end_reason = reason
        self._ended = True
        while True:
            try:
                envelope, _ctx = self.actor_inbox.get_nowait()
            except queue.Empty:
                break
            if envelope.reply_to is None:
                continue
            if isinstance(envelope.message, pykka_messages._ActorStop):  # noqa: SLF001
                envelope.reply_to.set(None)
            else:
                dead = pykka.ActorDeadError(f"{self.actor_ref} stopped before handling the message")
                envelope.reply_to.set_exception(exc_info=(pykka.ActorDeadError, dead, None))
        watchers, self._watchers = self._watchers, []
        for callback in watchers:
            try:
                callback(self.actor_ref, reason)
            except Exception:  # a broken watcher must not hide the others
                log.exception("death watcher raised", extra={"actor": type(self).__name__})


A = TypeVar("A", bound=pykka.Actor)


def actor_of(ref: pykka.ActorRef[A]) -> A:
    """The actor object behind a ref, for the few in-process calls that must not queue (watch, kill).

    A ref holds its actor weakly (pykka 4); an actor that has ended and been collected is reported
    as ``pykka.ActorDeadError``. Whoever must watch or kill an actor later keeps the object itself.
    """
    actor = ref._actor_weakref()  # noqa: SLF001
    if actor is None:
        raise pykka.ActorDeadError(f"{ref} has ended and is gone")
    return actor

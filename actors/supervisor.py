"""Supervisors: actors that start other actors, watch them, and restart them when they end, with
Erlang/OTP's one-for-one semantics.

A supervisor starts its children in order and stops them in reverse order. When a child ends it is
restarted according to its ``restart`` type: ``permanent`` always, ``transient`` only after an
abnormal end (a reason other than ``None``), ``temporary`` never (and forgotten). A restart may wait
for a backoff (``restart_delay``). If restarts come faster than ``max_restarts`` in ``max_seconds``, a
restart would not help: the supervisor stops every child and ends itself with
``RestartIntensityExceeded``, so whoever watches it (its own supervisor) decides what to do next.

Children are ``actors.base.Actor``s; the supervisor learns of their end through ``watch`` (a death
signal, whatever ended them: a stop, an exception, a ``GreenletExit`` or ``gevent.Timeout``, a kill).
Callers find a child's current ref through ``Children`` (``supervisor.children``), a dict read that is
safe from any greenlet and never hands out the ref of a dead incarnation.

Management calls (``start_child``, ``stop_child``, ``restart_child``, ``delete_child``,
``which_children``) run inside the supervisor; call them through its proxy:
``sup.proxy().stop_child("db").get()``. Like OTP's, they are synchronous: stopping a child waits for
it to end (its ``shutdown`` seconds, then a kill), and starting one waits for its ``on_start`` to
finish, so a child's ``on_start`` must not ask its own supervisor anything (it would wait forever).
Any ask to a supervisor is answered only after all its initial children are up.

Time is injected (``clock``, ``timers``; see ``actors.timers``) and events are reported through an
``on_event(kind, child)`` hook, so the supervisor holds no global state and tests run on fake time.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import gevent
import gevent.event
import pykka
from pykka import messages as pykka_messages

from actors.base import Actor, MailboxFull, actor_of
from actors.timers import Clock, GeventTimers, TimerHandle, Timers, monotonic
from core import sentry
from sansio.restart_intensity import IntensityVerdict, RestartIntensity

log = logging.getLogger(__name__)

RestartType = Literal["permanent", "transient", "temporary"]
RESTART_TYPES = ("permanent", "transient", "temporary")

EventHook = Callable[[str, str], None]
"""``on_event(kind, child)``. Kinds: ``started``, ``exit``, ``restart``, ``start_failed``, ``stopped``,
``killed``, ``abandoned``, ``intensity_exceeded``."""

RestartDelay = Callable[[str, int], float]
"""``restart_delay(child_name, restart_count) -> seconds``; ``restart_count`` is 1 for the child's first
automatic restart and keeps growing, so a backoff built on it should have a ceiling."""


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    name: str
    start: Callable[[], pykka.ActorRef]
    """Builds and starts the child (an ``actors.base.Actor``) and returns its ref."""
    restart: RestartType = "permanent"
    shutdown: float = 5.0
    """Seconds a child gets to stop before it is killed; 0 kills at once, ``math.inf`` waits forever
    (OTP's ``brutal_kill`` and ``infinity``: use ``inf`` for a child that is itself a supervisor)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"child name must be a non-empty string, got {self.name!r}")
        if self.restart not in RESTART_TYPES:
            raise ValueError(f"restart must be one of {RESTART_TYPES}, got {self.restart!r}")
        if not callable(self.start):
            raise ValueError(f"start of {self.name!r} must be callable")
        if math.isnan(self.shutdown) or self.shutdown < 0:
            raise ValueError(f"shutdown of {self.name!r} must be >= 0 seconds, got {self.shutdown!r}")


class RestartIntensityExceeded(Exception):
    """A supervisor gave up: its children needed more restarts than it may make in its window."""

    def __init__(
        self,
        supervisor: str,
        child: str,
        restarts: int,
        max_restarts: int,
        max_seconds: float,
        last_reason: BaseException | None,
    ) -> None:
        self.supervisor = supervisor
        self.child = child
        self.restarts = restarts
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.last_reason = last_reason
        super().__init__(
            f"supervisor {supervisor!r} gave up: restarting child {child!r} (which ended with "
            f"{last_reason!r}) would be restart {restarts} within {max_seconds:g} s, "
            f"more than max_restarts={max_restarts}"
        )


class ChildNotFound(LookupError):
    """No child of that name under this supervisor."""


class ChildRunning(RuntimeError):
    """The operation needs the child to be down, and it is running."""


class ChildStartFailed(RuntimeError):
    """A child started on request (``start_child``, ``restart_child``) did not come up; see the cause."""


class ChildExited(NamedTuple):
    """Death signal of one incarnation of a child, sent by the watcher to its supervisor."""

    name: str
    ref: pykka.ActorRef
    reason: BaseException | None


class _RestartDue(NamedTuple):
    name: str
    generation: int


# Answered by pykka's own dispatch, never by the child's on_receive: once the reply comes, the child's
# on_start has finished, so the next child starts after this one is really up (OTP's start_link).
_READY_PROBE = pykka_messages.ProxyGetAttr(attr_path=("actor_urn",))
_STARTED = object()


class Children:
    """The current ref of each child by name: what callers hold instead of refs that go stale.

    Written only by the supervisor; read from anywhere with a dict lookup. ``ref_of`` returns
    ``None`` while a child is down, starting, stopping or waiting for a delayed restart, and checks
    the ref is alive, so even before the supervisor has handled a death it does not return the
    dead incarnation.
    """

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef] = {}

    def ref_of(self, name: str) -> pykka.ActorRef | None:
        ref = self._refs.get(name)
        if ref is None or not ref.is_alive():
            return None
        return ref

    def names(self) -> list[str]:
        """Names of the children that are up now."""
        return [name for name, ref in list(self._refs.items()) if ref.is_alive()]

    def _publish(self, name: str, ref: pykka.ActorRef) -> None:
        self._refs[name] = ref

    def _withdraw(self, name: str) -> None:
        self._refs.pop(name, None)


@dataclasses.dataclass(eq=False)
class _Incarnation:
    """One run of a child, from its start to its death signal."""

    ref: pykka.ActorRef
    # The actor object itself: a ref holds it weakly, and a supervisor must still be able to kill a
    # child or learn its end reason after everyone else has dropped it.
    actor: Actor
    ended: gevent.event.Event = dataclasses.field(default_factory=gevent.event.Event)
    reason: BaseException | None = None


@dataclasses.dataclass(eq=False)
class _Child:
    spec: ChildSpec
    incarnation: _Incarnation | None = None
    restart_count: int = 0
    pending: TimerHandle | None = None
    # Bumped whenever a scheduled restart is made obsolete, so its late _RestartDue is ignored.
    generation: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


class Supervisor(Actor):
    """One-for-one supervisor. Start with ``Supervisor.start(specs, name=..., ...)``."""

    def __init__(
        self,
        specs: Iterable[ChildSpec] = (),
        *,
        name: str = "supervisor",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        clock: Clock = monotonic,
        timers: Timers | None = None,
        restart_delay: RestartDelay | None = None,
        on_event: EventHook | None = None,
        kill_grace: float = 5.0,
    ) -> None:
        super().__init__()
        specs = list(specs)
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate child names: {duplicates}")
        self.name = name
        self.children = Children()
        self._order: list[_Child] = [_Child(spec) for spec in specs]
        self._by_name: dict[str, _Child] = {child.name: child for child in self._order}
        self._intensity = RestartIntensity(max_restarts, max_seconds)
        self._clock = clock
        self._timers: Timers = timers if timers is not None else GeventTimers()
        self._restart_delay = restart_delay
        self._on_event = on_event
        self._kill_grace = kill_grace

    # -- lookups, safe from any greenlet ----------------------------------------------------------

    def ref_of(self, name: str) -> pykka.ActorRef | None:
        """The current ref of a child, or None while it is down (a dict read, no ask)."""
        return self.children.ref_of(name)

    # -- lifecycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        for child in list(self._order):
            self._start_initial(child)

    def on_stop(self) -> None:
        self._terminate_all()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # Whatever ended the supervisor (a bug here, a kill, giving up), its children must not
        # outlive it unsupervised.
        self._terminate_all()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildExited):
            self._child_exited(message)
        elif isinstance(message, _RestartDue):
            self._restart_due(message)
        else:
            log.warning(
                "supervisor got an unexpected message",
                extra={"supervisor": self.name, "message_type": type(message).__name__},
            )

    # -- management calls (through the proxy) -------------------------------------------------------

    def start_child(self, spec: ChildSpec) -> pykka.ActorRef:
        """Add a child after the others and start it; if it does not come up it is not kept."""
        if spec.name in self._by_name:
            raise ValueError(f"supervisor {self.name!r} already has a child named {spec.name!r}")
        child = _Child(spec)
        # Registered before the start so that, should the supervisor be killed meanwhile, its
        # shutdown still finds and stops the half-started child.
        self._order.append(child)
        self._by_name[spec.name] = child
        outcome = self._start(child)
        if outcome is not _STARTED:
            self._forget(child)
            raise ChildStartFailed(f"child {spec.name!r} did not start: {outcome!r}") from outcome
        assert child.incarnation is not None
        return child.incarnation.ref

    def stop_child(self, name: str) -> None:
        """Stop a child (shutdown time, then kill) and keep its spec, except a temporary one's."""
        child = self._get(name)
        self._cancel_pending(child)
        self._terminate(child)
        if child.spec.restart == "temporary":
            self._forget(child)

    def restart_child(self, name: str) -> pykka.ActorRef:
        """Start a child that is down now (stopped, ended, or waiting for a delayed restart)."""
        child = self._get(name)
        if child.incarnation is not None:
            raise ChildRunning(f"child {name!r} of {self.name!r} is running")
        self._cancel_pending(child)
        outcome = self._start(child)
        if outcome is not _STARTED:
            raise ChildStartFailed(f"child {name!r} did not start: {outcome!r}") from outcome
        assert child.incarnation is not None
        return child.incarnation.ref

    def delete_child(self, name: str) -> None:
        """Forget a child that is down; a running one must be stopped first."""
        child = self._get(name)
        if child.incarnation is not None:
            raise ChildRunning(f"child {name!r} of {self.name!r} is running; stop it first")
        self._cancel_pending(child)
        self._forget(child)

    def which_children(self) -> list[tuple[str, bool, int]]:
        """(name, alive, restart_count) of each child, in start order."""
        return [
            (child.name, self.children.ref_of(child.name) is not None, child.restart_count)
            for child in self._order
        ]

    # -- starting -------------------------------------------------------------------------------

    def _start_initial(self, child: _Child) -> None:
        # Restarts here happen in place, not through the mailbox, so that a child never starts
        # before the ones listed ahead of it are up (or given up on).
        outcome = self._start(child)
        while outcome is not _STARTED:
            delay = self._restart_decision(child, outcome)
            if delay is None:
                return
            if delay > 0:
                self._pause(child, delay)
            outcome = self._start(child)

    def _start(self, child: _Child) -> Any:
        """Start one incarnation; ``_STARTED``, or the reason it did not come up (None: it stopped)."""
        name = child.name
        try:
            ref = child.spec.start()
        except gevent.GreenletExit:
            raise  # the supervisor itself is being killed
        except (Exception, gevent.Timeout) as exc:  # noqa: BLE001 - a failed start is the child's failure
            self._start_failed(child, exc)
            return exc
        try:
            actor = actor_of(ref)
        except pykka.ActorDeadError as exc:
            # It ended inside start() and was collected before we could watch it: the reason is lost.
            self._start_failed(child, exc)
            return exc
        if not isinstance(actor, Actor):
            ref.stop(block=False)
            wrong = TypeError(f"child {name!r} is a {type(actor).__name__}, not an actors.base.Actor")
            self._start_failed(child, wrong)
            return wrong
        incarnation = _Incarnation(ref, actor)
        child.incarnation = incarnation
        actor.watch(functools.partial(self._death_signal, name, incarnation))
        try:
            ref.ask(_READY_PROBE)
        except pykka.ActorDeadError:
            incarnation.ended.wait()  # the death signal comes in the same turn as this error
            child.incarnation = None
            if incarnation.reason is not None:
                self._start_failed(child, incarnation.reason)
            return incarnation.reason
        except MailboxFull:
            pass  # busy already, so on_start is over
        self.children._publish(name, ref)  # noqa: SLF001
        log.info("child started", extra={"supervisor": self.name, "child": name, "child_ref": str(ref)})
        self._emit("started", name)
        return _STARTED

    def _start_failed(self, child: _Child, exc: BaseException) -> None:
        log.error(
            "child failed to start",
            extra={"supervisor": self.name, "child": child.name, "error": repr(exc)},
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        self._emit("start_failed", child.name)

    def _death_signal(
        self, name: str, incarnation: _Incarnation, ref: pykka.ActorRef, reason: BaseException | None
    ) -> None:
        # Runs in the dying child's greenlet (or in ours, if it was already dead when watched):
        # record and hand over, nothing that could block or fail there.
        incarnation.reason = reason
        incarnation.ended.set()
        self._tell_self(ChildExited(name, ref, reason))

    def _tell_self(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # the supervisor has ended: its children are stopped, nothing left to decide

    # -- exits and restarts (only from on_start and told messages: giving up raises) ---------------

    def _child_exited(self, message: ChildExited) -> None:
        child = self._by_name.get(message.name)
        if child is None or child.incarnation is None or child.incarnation.ref is not message.ref:
            return  # a stale signal: that incarnation was stopped, replaced, or the child deleted
        child.incarnation = None
        self.children._withdraw(child.name)  # noqa: SLF001
        reason = message.reason
        extra = {"supervisor": self.name, "child": child.name, "reason": repr(reason)}
        if reason is None:
            log.info("child exited", extra=extra)
        else:
            log.warning("child exited abnormally", extra=extra)
        self._emit("exit", child.name)
        delay = self._restart_decision(child, reason)
        if delay is None:
            return
        if delay > 0:
            self._schedule_restart(child, delay)
        else:
            self._restart(child)

    def _restart_due(self, message: _RestartDue) -> None:
        child = self._by_name.get(message.name)
        if child is None or child.generation != message.generation or child.incarnation is not None:
            return
        child.pending = None
        self._restart(child)

    def _restart(self, child: _Child) -> None:
        outcome = self._start(child)
        if outcome is _STARTED:
            return
        delay = self._restart_decision(child, outcome)
        if delay is not None:
            # Again through the mailbox rather than a loop here: a child whose start keeps failing
            # slowly must not keep the supervisor from its other mail (stop requests included).
            self._schedule_restart(child, delay)

    def _restart_decision(self, child: _Child, reason: BaseException | None) -> float | None:
        """Seconds to wait before restarting ``child``, or None if it is not to be restarted."""
        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and reason is None):
            if restart == "temporary":
                self._forget(child)
            return None
        verdict = self._intensity.record(self._clock())
        if not verdict.allowed:
            self._give_up(child, reason, verdict)
        child.restart_count += 1
        delay = self._delay_for(child)
        log.info(
            "restarting child",
            extra={
                "supervisor": self.name,
                "child": child.name,
                "restart_count": child.restart_count,
                "restarts_in_window": verdict.restarts_in_window,
                "delay_s": delay,
            },
        )
        self._emit("restart", child.name)
        return delay

    def _delay_for(self, child: _Child) -> float:
        if self._restart_delay is None:
            return 0.0
        try:
            delay = float(self._restart_delay(child.name, child.restart_count))
        except Exception:  # a broken backoff must not stop supervision
            log.exception("restart_delay raised; restarting at once", extra={"child": child.name})
            return 0.0
        if not math.isfinite(delay) or delay < 0:
            log.warning("restart_delay gave %r; restarting at once", delay, extra={"child": child.name})
            return 0.0
        return delay

    def _schedule_restart(self, child: _Child, delay: float) -> None:
        self._cancel_pending(child)
        message = _RestartDue(child.name, child.generation)
        if delay > 0:
            child.pending = self._timers.schedule(delay, functools.partial(self._tell_self, message))
        else:
            self._tell_self(message)

    def _pause(self, child: _Child, delay: float) -> None:
        self._cancel_pending(child)
        due = gevent.event.Event()
        child.pending = self._timers.schedule(delay, due.set)
        try:
            due.wait()
        finally:
            child.pending = None

    def _cancel_pending(self, child: _Child) -> None:
        child.generation += 1
        if child.pending is not None:
            child.pending.cancel()
            child.pending = None

    def _give_up(self, child: _Child, reason: BaseException | None, verdict: IntensityVerdict) -> None:
        exc = RestartIntensityExceeded(
            self.name,
            child.name,
            verdict.restarts_in_window,
            self._intensity.max_restarts,
            self._intensity.max_seconds,
            reason,
        )
        exc.__cause__ = reason
        log.error(
            "restart intensity exceeded; stopping all children and giving up",
            extra={
                "supervisor": self.name,
                "child": child.name,
                "reason": repr(reason),
                "restarts_in_window": verdict.restarts_in_window,
                "max_restarts": self._intensity.max_restarts,
                "max_seconds": self._intensity.max_seconds,
            },
        )
        self._emit("intensity_exceeded", child.name)
        sentry.capture(exc, supervisor=self.name, child=child.name)
        exc.already_reported = True  # type: ignore[attr-defined]  # actors.base must not report it again
        self._terminate_all()
        raise exc

    # -- stopping -----------------------------------------------------------------------------------

    def _terminate_all(self) -> None:
        for child in self._order:
            self._cancel_pending(child)
        for child in reversed(list(self._order)):
            try:
                self._terminate(child)
            except Exception:  # the other children must still be stopped
                log.exception("stopping a child failed", extra={"supervisor": self.name, "child": child.name})

    def _terminate(self, child: _Child) -> None:
        """Stop a child and wait for its death signal: ``shutdown`` seconds, then a kill."""
        self.children._withdraw(child.name)  # noqa: SLF001
        incarnation = child.incarnation
        if incarnation is None:
            return
        extra = {"supervisor": self.name, "child": child.name}
        shutdown = child.spec.shutdown
        if not incarnation.ended.is_set():
            if shutdown > 0:
                incarnation.ref.stop(block=False)  # never raises: a dead actor answers the future
            if not self._wait_for_end(incarnation, shutdown):
                log.warning("child did not stop in time; killing it", extra={**extra, "shutdown_s": shutdown})
                self._emit("killed", child.name)
                incarnation.actor.kill()
                if not self._wait_for_end(incarnation, self._kill_grace):
                    # Its greenlet swallowed GreenletExit: nothing more can be done from here, and
                    # waiting forever would take the whole subtree down with it.
                    exc = RuntimeError(f"child {child.name!r} of {self.name!r} survived a kill; abandoned")
                    log.error("child survived a kill; abandoned", extra=extra)
                    self._emit("abandoned", child.name)
                    sentry.capture(exc, supervisor=self.name, child=child.name)
        # Only now: if the supervisor is killed while waiting, its on_failure finds the child again.
        child.incarnation = None
        log.info("child stopped", extra={**extra, "reason": repr(incarnation.reason)})
        self._emit("stopped", child.name)

    def _wait_for_end(self, incarnation: _Incarnation, seconds: float) -> bool:
        if incarnation.ended.is_set():
            return True
        if seconds <= 0:
            return False
        if math.isinf(seconds):
            incarnation.ended.wait()
            return True
        expired = gevent.event.Event()
        timer = self._timers.schedule(seconds, expired.set)
        try:
            gevent.wait([incarnation.ended, expired], count=1)
        finally:
            timer.cancel()
        return incarnation.ended.is_set()

    # -- helpers ------------------------------------------------------------------------------------

    def _get(self, name: str) -> _Child:
        child = self._by_name.get(name)
        if child is None:
            raise ChildNotFound(f"supervisor {self.name!r} has no child named {name!r}")
        return child

    def _forget(self, child: _Child) -> None:
        self._cancel_pending(child)
        self.children._withdraw(child.name)  # noqa: SLF001
        if self._by_name.get(child.name) is child:
            del self._by_name[child.name]
        if child in self._order:
            self._order.remove(child)

    def _emit(self, kind: str, child: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, child)
        except Exception:  # metrics must never break supervision
            log.exception("on_event hook raised", extra={"supervisor": self.name, "kind": kind})


def children_of(supervisor: pykka.ActorRef) -> Children:
    """The ``Children`` registry of a running supervisor, to hold and read from anywhere."""
    actor = actor_of(supervisor)
    if not isinstance(actor, Supervisor):
        raise TypeError(f"{supervisor} is not a Supervisor")
    return actor.children

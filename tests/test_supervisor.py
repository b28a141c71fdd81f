"""The supervisor, in the manner of Erlang's supervisor_SUITE: restart types against normal and
abnormal exits, restart intensity, start and stop order, shutdown timeouts, dynamic children and
the name lookup, all on a hand-moved clock (``ManualTimers``) and a seeded random source.

Nothing here sleeps: a test waits for a supervisor event (the ``on_event`` hook), a death signal or
an ask. An ask to the supervisor is a barrier: it is answered only after the supervisor has finished
the message before it (a child's exit and its restart are handled in one message).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import gevent
import gevent.event
import pykka
import pytest

from actors.base import Actor, actor_of
from actors.supervisor import (
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildStartFailed,
    RestartIntensityExceeded,
    Supervisor,
    children_of,
)
from actors.timers import ManualTimers
from core import sentry
from tests.waiting import wait_until

WAIT = 2.0
SEED = 1234


@pytest.fixture(autouse=True)
def _stop_every_actor():
    yield
    for _ in range(3):
        # In registration order: a supervisor stops its own children before the fixture gets to
        # them, rather than restarting the ones the fixture stopped under it.
        for ref in pykka.ActorRegistry.get_all():
            try:
                ref.stop(block=True, timeout=WAIT)
            except pykka.Timeout:
                actor_of(ref).kill()
    assert pykka.ActorRegistry.get_all() == []


# -- test actors and helpers ----------------------------------------------------------------------


class Crash(NamedTuple):
    error: BaseException


EXIT = "exit"  # the child stops itself: a normal end
PING = "ping"
BLOCK = "block"  # the handler never returns


class Worker(Actor):
    """A child that writes its starts and stops to a shared journal and obeys test commands."""

    def __init__(
        self,
        worker_name: str,
        journal: list[tuple[str, str]],
        fail_on_start: BaseException | None = None,
        yield_in_start: bool = False,
        blocked: gevent.event.Event | None = None,
    ) -> None:
        super().__init__()
        self.worker_name = worker_name
        self.journal = journal
        self.fail_on_start = fail_on_start
        self.yield_in_start = yield_in_start
        self.blocked = blocked or gevent.event.Event()

    def on_start(self) -> None:
        self.journal.append(("start", self.worker_name))
        if self.yield_in_start:
            gevent.idle()  # as if it did I/O before failing: the failure comes after start() returned
        if self.fail_on_start is not None:
            raise self.fail_on_start

    def on_stop(self) -> None:
        self.journal.append(("stop", self.worker_name))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise message.error
        if message == EXIT:
            self.stop()
        elif message == PING:
            return "pong"
        elif message == BLOCK:
            self.blocked.set()
            gevent.event.Event().wait()
        return None


class Events:
    """The supervisor's on_event hook: records (kind, child) and lets a test wait for some."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, kind: str, child: str) -> None:
        self.seen.append((kind, child))

    def count(self, kind: str, child: str) -> int:
        return self.seen.count((kind, child))

    def wait_for(self, kind: str, child: str, count: int = 1, timeout: float = WAIT) -> None:
        """Wait until ``count`` (kind, child) events were recorded; fails the test otherwise."""
        wait_until(lambda: self.count(kind, child) >= count, timeout, f"{count} {kind!r} event(s) of {child!r}",
                   detail=lambda: f"seen: {self.seen}")


class Harness:
    """One supervisor under test with its fake clock, event log and children journal."""

    def __init__(self) -> None:
        self.timers = ManualTimers()
        self.events = Events()
        self.journal: list[tuple[str, str]] = []
        self.sup: pykka.ActorRef | None = None

    def spec(self, name: str, restart: str = "permanent", shutdown: float = 1.0, **worker: Any) -> ChildSpec:
        return ChildSpec(name, lambda: Worker.start(name, self.journal, **worker), restart, shutdown)

    def start(self, specs: list[ChildSpec], **options: Any) -> pykka.ActorRef:
        options.setdefault("max_restarts", 3)
        options.setdefault("max_seconds", 5.0)
        self.sup = Supervisor.start(
            specs, clock=self.timers.now, timers=self.timers, on_event=self.events, **options
        )
        return self.sup

    @property
    def proxy(self) -> Any:
        return self.sup.proxy()

    @property
    def children(self):
        return children_of(self.sup)

    def barrier(self) -> list[tuple[str, bool, int]]:
        """Wait until the supervisor has handled everything sent to it so far."""
        return self.proxy.which_children().get(timeout=WAIT)

    def ref(self, name: str) -> pykka.ActorRef:
        ref = self.children.ref_of(name)
        assert ref is not None, f"{name} is not up"
        return ref


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


def watch_death(ref: pykka.ActorRef) -> gevent.event.AsyncResult:
    died = gevent.event.AsyncResult()
    actor_of(ref).watch(lambda _ref, reason: died.set(reason))
    return died


def end_child(h: Harness, name: str, how: str) -> pykka.ActorRef:
    """End a child normally or abnormally and wait until the supervisor has dealt with it."""
    old = h.ref(name)
    exits = h.events.count("exit", name)
    old.tell(EXIT if how == "normal" else Crash(ValueError(f"{name} broke")))
    h.events.wait_for("exit", name, exits + 1)
    h.barrier()
    return old


# -- start and stop order -------------------------------------------------------------------------


def test_children_start_in_the_order_given_and_stop_in_reverse_order(h):
    sup = h.start([h.spec("a"), h.spec("b", yield_in_start=True), h.spec("c")])
    assert [name for name, alive, _ in h.barrier() if alive] == ["a", "b", "c"]
    assert h.journal == [("start", "a"), ("start", "b"), ("start", "c")]
    sup.stop(block=True, timeout=WAIT)
    assert h.journal[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_a_child_is_reachable_by_name_once_the_supervisor_has_started(h):
    h.start([h.spec("a"), h.spec("b")])
    h.barrier()
    assert h.ref("a").ask(PING, timeout=WAIT) == "pong"
    assert h.children.names() == ["a", "b"]
    assert h.children.ref_of("nobody") is None


def test_duplicate_child_names_are_rejected_when_the_supervisor_is_built(h):
    with pytest.raises(ValueError, match="duplicate"):
        h.start([h.spec("a"), h.spec("a")])


@pytest.mark.parametrize(
    "fields",
    [
        {"restart": "sometimes"},
        {"shutdown": -1.0},
        {"name": ""},
    ],
)
def test_a_nonsensical_child_spec_is_rejected(fields):
    base = {"name": "x", "start": lambda: None, "restart": "permanent", "shutdown": 1.0}
    with pytest.raises(ValueError):
        ChildSpec(**{**base, **fields})


# -- restart types ----------------------------------------------------------------------------------


def test_a_permanent_child_is_restarted_after_a_normal_exit(h):
    h.start([h.spec("a", restart="permanent")])
    h.barrier()
    old = end_child(h, "a", "normal")
    assert h.events.count("started", "a") == 2
    assert h.ref("a") is not old
    assert h.barrier() == [("a", True, 1)]


def test_a_permanent_child_is_restarted_after_an_abnormal_exit(h):
    h.start([h.spec("a", restart="permanent")])
    h.barrier()
    old = end_child(h, "a", "abnormal")
    assert h.ref("a") is not old
    assert h.barrier() == [("a", True, 1)]


def test_a_transient_child_is_not_restarted_after_a_normal_exit(h):
    h.start([h.spec("a", restart="transient")])
    h.barrier()
    end_child(h, "a", "normal")
    assert h.events.count("started", "a") == 1
    assert h.children.ref_of("a") is None
    assert h.barrier() == [("a", False, 0)]


def test_a_transient_child_is_restarted_after_an_abnormal_exit(h):
    h.start([h.spec("a", restart="transient")])
    h.barrier()
    old = end_child(h, "a", "abnormal")
    assert h.ref("a") is not old
    assert h.barrier() == [("a", True, 1)]


def test_a_temporary_child_is_not_restarted_after_a_normal_exit_and_is_forgotten(h):
    h.start([h.spec("a", restart="temporary"), h.spec("b")])
    h.barrier()
    end_child(h, "a", "normal")
    assert h.events.count("started", "a") == 1
    assert h.barrier() == [("b", True, 0)]


def test_a_temporary_child_is_not_restarted_after_an_abnormal_exit_and_is_forgotten(h):
    h.start([h.spec("a", restart="temporary"), h.spec("b")])
    h.barrier()
    end_child(h, "a", "abnormal")
    assert h.events.count("started", "a") == 1
    assert h.barrier() == [("b", True, 0)]


def test_a_crashing_child_is_restarted_alone_and_its_siblings_keep_their_refs(h):
    h.start([h.spec("a"), h.spec("b"), h.spec("c")])
    h.barrier()
    a, c = h.ref("a"), h.ref("c")
    end_child(h, "b", "abnormal")
    assert h.ref("a") is a and h.ref("c") is c
    assert h.journal.count(("start", "b")) == 2
    assert h.journal.count(("start", "a")) == 1


# -- BaseExceptions are contained -------------------------------------------------------------------


@pytest.mark.parametrize("error", [gevent.GreenletExit(), gevent.Timeout()], ids=["GreenletExit", "Timeout"])
def test_a_base_exception_in_one_childs_handler_restarts_that_child_alone_and_an_unrelated_actor_keeps_running(
    h, monkeypatch, error
):
    stop_all_calls: list[Any] = []
    monkeypatch.setattr(pykka.ActorRegistry, "stop_all", lambda *a, **k: stop_all_calls.append(a))
    bystander = Worker.start("bystander", [])
    h.start([h.spec("a"), h.spec("b")])
    h.barrier()
    a, b = h.ref("a"), h.ref("b")
    died = watch_death(b)
    b.tell(Crash(error))
    assert died.get(timeout=WAIT) is error
    h.events.wait_for("started", "b", 2)
    assert h.ref("b") is not b
    assert h.ref("a") is a
    assert bystander.ask(PING, timeout=WAIT) == "pong"
    assert h.sup.is_alive()
    assert stop_all_calls == []


# -- failures in on_start ------------------------------------------------------------------------------


def failing_then_working(h: Harness, name: str, errors: list[BaseException | None], **worker: Any) -> ChildSpec:
    """A spec whose successive incarnations fail in on_start with ``errors`` (None: it works)."""
    plan = iter(errors)
    return ChildSpec(name, lambda: Worker.start(name, h.journal, fail_on_start=next(plan, None), **worker))


@pytest.mark.parametrize("yield_in_start", [False, True], ids=["at-once", "after-yielding"])
def test_an_exception_in_a_childs_on_start_at_supervisor_start_is_a_death_signal_and_the_child_is_restarted(
    h, yield_in_start
):
    h.start([failing_then_working(h, "a", [RuntimeError("no db yet")], yield_in_start=yield_in_start), h.spec("b")])
    assert h.barrier() == [("a", True, 1), ("b", True, 0)]
    # b waited for a: a's failed start, its restart, then b
    assert h.journal == [("start", "a"), ("start", "a"), ("start", "b")]
    assert h.events.count("start_failed", "a") == 1


def test_an_exception_in_a_childs_on_start_after_a_restart_is_a_death_signal_too(h):
    h.start([failing_then_working(h, "a", [None, RuntimeError("still broken"), None])])
    h.barrier()
    old = h.ref("a")
    old.tell(Crash(ValueError("first crash")))
    h.events.wait_for("started", "a", 2)
    assert h.events.count("start_failed", "a") == 1
    assert h.barrier() == [("a", True, 2)]
    assert h.ref("a") is not old


def test_a_start_function_that_raises_counts_as_a_failure_of_that_child(h):
    calls = []

    def start():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused")
        return Worker.start("a", h.journal)

    h.start([ChildSpec("a", start)])
    assert h.barrier() == [("a", True, 1)]
    assert h.events.count("start_failed", "a") == 1


def test_a_child_that_keeps_failing_to_start_makes_the_supervisor_give_up_at_start_stopping_earlier_children(h):
    sup = h.start(
        [h.spec("a"), h.spec("b"), h.spec("c", fail_on_start=RuntimeError("never works")), h.spec("d")],
        max_restarts=2,
    )
    died = watch_death(sup)
    reason = died.get(timeout=WAIT)
    assert isinstance(reason, RestartIntensityExceeded)
    assert reason.child == "c"
    assert h.journal.count(("start", "c")) == 3  # the first start and two restarts
    assert ("start", "d") not in h.journal
    assert [entry for entry in h.journal if entry[0] == "stop"] == [("stop", "b"), ("stop", "a")]


# -- restart intensity ------------------------------------------------------------------------------------


def test_restarts_up_to_the_intensity_limit_are_allowed(h):
    sup = h.start([h.spec("a")], max_restarts=3, max_seconds=5)
    h.barrier()
    for _ in range(3):
        end_child(h, "a", "abnormal")
    assert sup.is_alive()
    assert h.barrier() == [("a", True, 3)]
    assert h.events.count("intensity_exceeded", "a") == 0


def test_restarts_spread_out_beyond_the_window_never_exhaust_the_intensity(h):
    sup = h.start([h.spec("a")], max_restarts=2, max_seconds=5)
    h.barrier()
    for _ in range(10):
        end_child(h, "a", "abnormal")
        h.timers.advance(2.6)  # at most two restarts in any 5 s
    assert sup.is_alive()
    assert h.barrier() == [("a", True, 10)]


def test_exceeding_the_intensity_stops_all_children_in_reverse_order_and_tells_the_watcher_why(
    h, monkeypatch, caplog
):
    reported: list[tuple[BaseException, dict]] = []
    monkeypatch.setattr(sentry, "capture", lambda exc, **tags: reported.append((exc, tags)))
    sup = h.start([h.spec("a"), h.spec("b"), h.spec("c")], name="bots", max_restarts=2, max_seconds=5)
    h.barrier()
    died = watch_death(sup)
    for _ in range(2):
        end_child(h, "b", "abnormal")
    h.journal.clear()
    with caplog.at_level(logging.ERROR, logger="actors.supervisor"):
        h.ref("b").tell(Crash(ValueError("third time")))
        reason = died.get(timeout=WAIT)

    assert isinstance(reason, RestartIntensityExceeded)
    assert (reason.supervisor, reason.child, reason.restarts, reason.max_restarts) == ("bots", "b", 3, 2)
    assert isinstance(reason.last_reason, ValueError)
    assert "gave up" in str(reason)
    # b died by itself (no on_stop after a crash); c then a were stopped by the supervisor
    assert h.journal == [("stop", "c"), ("stop", "a")]
    assert pykka.ActorRegistry.get_all() == []
    assert h.events.count("intensity_exceeded", "b") == 1
    # reported to Sentry once, by the supervisor with its tags (actors.base does not repeat it)
    assert [(exc, tags) for exc, tags in reported if isinstance(exc, RestartIntensityExceeded)] == [
        (reason, {"supervisor": "bots", "child": "b"})
    ]
    [record] = [r for r in caplog.records if "restart intensity exceeded" in r.getMessage()]
    assert (record.supervisor, record.child, record.max_restarts) == ("bots", "b", 2)


def test_a_parent_supervisor_restarts_a_child_supervisor_that_gave_up(h):
    inner_timers = ManualTimers()
    inner_events = Events()
    inner_refs: list[pykka.ActorRef] = []

    def start_inner() -> pykka.ActorRef:
        ref = Supervisor.start(
            [h.spec("worker")],
            name="inner",
            max_restarts=0,
            max_seconds=1,
            clock=inner_timers.now,
            timers=inner_timers,
            on_event=inner_events,
        )
        inner_refs.append(ref)
        return ref

    h.start([ChildSpec("inner", start_inner, "permanent", shutdown=float("inf"))], name="outer")
    h.barrier()
    first_inner = h.ref("inner")
    inner_died = watch_death(first_inner)
    children_of(first_inner).ref_of("worker").tell(Crash(RuntimeError("bad")))

    assert isinstance(inner_died.get(timeout=WAIT), RestartIntensityExceeded)
    h.events.wait_for("started", "inner", 2)
    second_inner = h.ref("inner")
    assert second_inner is not first_inner
    assert children_of(second_inner).ref_of("worker").ask(PING, timeout=WAIT) == "pong"
    assert h.barrier() == [("inner", True, 1)]


def test_a_killed_supervisor_still_stops_its_children_in_reverse_order(h):
    sup = h.start([h.spec("a"), h.spec("b")])
    h.barrier()
    died = watch_death(sup)
    actor_of(sup).kill()
    assert isinstance(died.get(timeout=WAIT), gevent.GreenletExit)
    assert h.journal[2:] == [("stop", "b"), ("stop", "a")]
    assert pykka.ActorRegistry.get_all() == []


# -- shutdown ------------------------------------------------------------------------------------------------


def test_a_child_that_ignores_stop_is_killed_after_its_shutdown_timeout(h):
    blocked = gevent.event.Event()
    h.start([h.spec("stuck", shutdown=3.0, blocked=blocked)])
    h.barrier()
    stuck = h.ref("stuck")
    died = watch_death(stuck)
    stuck.tell(BLOCK)
    assert blocked.wait(WAIT)

    stopping = h.proxy.stop_child("stuck")
    assert h.timers.wait_for_pending(1)
    assert h.timers.pending() == [3.0]
    h.timers.advance(2.9)
    assert not died.ready()
    h.timers.advance(0.1)
    stopping.get(timeout=WAIT)
    assert isinstance(died.get(timeout=WAIT), gevent.GreenletExit)
    assert h.events.count("killed", "stuck") == 1
    assert ("stop", "stuck") not in h.journal
    assert h.barrier() == [("stuck", False, 0)]  # stopped on request: not restarted


def test_a_child_with_zero_shutdown_is_killed_at_once(h):
    blocked = gevent.event.Event()
    h.start([h.spec("brutal", shutdown=0.0, blocked=blocked)])
    h.barrier()
    h.ref("brutal").tell(BLOCK)
    assert blocked.wait(WAIT)
    h.proxy.stop_child("brutal").get(timeout=WAIT)
    assert h.events.count("killed", "brutal") == 1
    assert h.timers.pending() == []


class SwallowsOneKill(Actor):
    """A badly written child: it catches GreenletExit once and keeps blocking until released."""

    def __init__(self, blocked: gevent.event.Event, release: gevent.event.Event) -> None:
        super().__init__()
        self.blocked = blocked
        self.release = release

    def on_receive(self, message: Any) -> None:
        self.blocked.set()
        try:
            gevent.event.Event().wait()
        except gevent.GreenletExit:
            self.release.wait()


def test_a_child_that_survives_a_kill_is_abandoned_after_the_kill_grace_so_the_supervisor_goes_on(h):
    blocked, release = gevent.event.Event(), gevent.event.Event()
    h.start(
        [ChildSpec("bad", lambda: SwallowsOneKill.start(blocked, release), shutdown=1.0), h.spec("good")],
        kill_grace=2.0,
    )
    h.barrier()
    h.ref("bad").tell("block")
    assert blocked.wait(WAIT)
    stopping = h.proxy.stop_child("bad")
    assert h.timers.wait_for_pending(1)
    h.timers.advance(1.0)  # shutdown over: kill, which it swallows
    assert h.timers.wait_for_pending(1)
    h.timers.advance(2.0)  # kill grace over
    stopping.get(timeout=WAIT)
    assert h.events.count("abandoned", "bad") == 1
    assert h.ref("good").ask(PING, timeout=WAIT) == "pong"
    release.set()


# -- delayed restarts -------------------------------------------------------------------------------------------


def test_a_restart_waits_for_its_backoff_on_the_clock(h, rng):
    delays: list[float] = []

    def backoff(name: str, count: int) -> float:
        delay = min(30.0, 2.0**count) * rng.uniform(0.5, 1.0)
        delays.append(delay)
        return delay

    h.start([h.spec("a")], restart_delay=backoff)
    h.barrier()
    end_child(h, "a", "abnormal")
    [delay] = delays
    assert 1.0 <= delay <= 2.0
    assert h.timers.pending() == [delay]
    assert h.children.ref_of("a") is None
    assert h.barrier() == [("a", False, 1)]

    h.timers.advance(delay - 0.01)
    assert h.barrier() == [("a", False, 1)]
    h.timers.advance(0.01)
    h.events.wait_for("started", "a", 2)
    assert h.ref("a").ask(PING, timeout=WAIT) == "pong"


def test_the_backoff_sees_the_restart_count_of_each_child(h):
    seen: list[tuple[str, int]] = []

    def backoff(name: str, count: int) -> float:
        seen.append((name, count))
        return 0.0

    h.start([h.spec("a"), h.spec("b")], restart_delay=backoff, max_restarts=10)
    h.barrier()
    end_child(h, "a", "abnormal")
    end_child(h, "b", "abnormal")
    end_child(h, "a", "normal")
    assert seen == [("a", 1), ("b", 1), ("a", 2)]


def test_a_pending_delayed_restart_is_cancelled_when_the_supervisor_stops(h):
    sup = h.start([h.spec("a"), h.spec("b")], restart_delay=lambda name, count: 5.0)
    h.barrier()
    end_child(h, "a", "abnormal")
    assert h.timers.pending() == [5.0]
    sup.stop(block=True, timeout=WAIT)
    assert h.timers.pending() == []
    h.timers.advance(10.0)
    assert h.events.count("started", "a") == 1
    assert pykka.ActorRegistry.get_all() == []


def test_stopping_a_child_that_waits_for_a_delayed_restart_cancels_the_restart(h):
    h.start([h.spec("a")], restart_delay=lambda name, count: 5.0)
    h.barrier()
    end_child(h, "a", "abnormal")
    h.proxy.stop_child("a").get(timeout=WAIT)
    h.timers.advance(10.0)
    assert h.barrier() == [("a", False, 1)]
    assert h.events.count("started", "a") == 1


def test_restarting_a_child_by_hand_while_it_waits_for_a_delayed_restart_starts_it_now_and_once(h):
    h.start([h.spec("a")], restart_delay=lambda name, count: 5.0)
    h.barrier()
    end_child(h, "a", "abnormal")
    ref = h.proxy.restart_child("a").get(timeout=WAIT)
    assert ref is h.ref("a")
    h.timers.advance(10.0)
    assert h.barrier() == [("a", True, 1)]
    assert h.events.count("started", "a") == 2
    assert h.ref("a") is ref


def test_the_real_gevent_timers_drive_delayed_restarts_and_shutdown_kills():
    # The one test on real time: tiny delays, waits on events with generous timeouts.
    events = Events()
    journal: list[tuple[str, str]] = []
    blocked = gevent.event.Event()
    sup = Supervisor.start(
        [ChildSpec("a", lambda: Worker.start("a", journal, blocked=blocked), shutdown=0.05)],
        restart_delay=lambda name, count: 0.02,
        on_event=events,
    )
    sup.proxy().which_children().get(timeout=WAIT)
    children = children_of(sup)
    old = children.ref_of("a")
    old.tell(Crash(ValueError("x")))
    events.wait_for("started", "a", 2)
    assert children.ref_of("a") not in (None, old)
    children.ref_of("a").tell(BLOCK)
    assert blocked.wait(WAIT)
    sup.proxy().stop_child("a").get(timeout=WAIT)
    assert events.count("killed", "a") == 1


def test_a_delayed_restart_during_supervisor_start_holds_back_the_later_children(h):
    h.start([failing_then_working(h, "a", [RuntimeError("not yet")]), h.spec("b")], restart_delay=lambda n, c: 1.0)
    assert h.timers.wait_for_pending(1)
    assert h.journal == [("start", "a")]
    h.timers.advance(1.0)
    assert h.barrier() == [("a", True, 1), ("b", True, 0)]
    assert h.journal == [("start", "a"), ("start", "a"), ("start", "b")]


# -- the name lookup ------------------------------------------------------------------------------------------------


def test_the_lookup_by_name_never_returns_a_dead_ref_after_a_restart(h):
    h.start([h.spec("a")])
    h.barrier()
    children = h.children
    old = children.ref_of("a")
    seen_in_death: list[Any] = []
    # Runs in the dying child's greenlet, before the supervisor has even read its exit
    actor_of(old).watch(lambda ref, reason: seen_in_death.append(children.ref_of("a")))
    old.tell(Crash(ValueError("x")))
    h.events.wait_for("started", "a", 2)
    assert seen_in_death == [None]
    new = children.ref_of("a")
    assert new is not None and new is not old and new.is_alive()
    assert new.ask(PING, timeout=WAIT) == "pong"


def test_the_lookup_returns_none_while_a_child_waits_for_its_restart_and_the_new_ref_after(h):
    h.start([h.spec("a")], restart_delay=lambda name, count: 1.0)
    h.barrier()
    children = h.children
    old = end_child(h, "a", "abnormal")
    assert children.ref_of("a") is None
    h.timers.advance(1.0)
    h.events.wait_for("started", "a", 2)
    assert children.ref_of("a") not in (None, old)


def test_under_seeded_random_crashes_the_lookup_only_ever_gives_live_refs_and_restart_counts_add_up(h, rng):
    names = ["a", "b", "c", "d"]
    h.start([h.spec(name) for name in names], max_restarts=1000, max_seconds=1)
    h.barrier()
    children = h.children
    expected = dict.fromkeys(names, 0)
    errors: list[Callable[[], BaseException]] = [
        lambda: ValueError("v"),
        lambda: gevent.GreenletExit(),
        lambda: gevent.Timeout(),
        lambda: KeyError("k"),
    ]
    for _ in range(60):
        name = rng.choice(names)
        ref = children.ref_of(name)
        assert ref is not None and ref.is_alive()
        exits = h.events.count("exit", name)
        if rng.random() < 0.25:
            ref.tell(EXIT)
        else:
            ref.tell(Crash(rng.choice(errors)()))
        for other in names:
            current = children.ref_of(other)
            assert current is None or current.is_alive()
        expected[name] += 1
        h.events.wait_for("exit", name, exits + 1)
        if rng.random() < 0.3:
            h.timers.advance(rng.choice([0.0, 0.5, 2.0]))
        assert h.barrier() == [(n, True, expected[n]) for n in names]


# -- dynamic children -----------------------------------------------------------------------------------------------


def test_children_can_be_added_stopped_restarted_and_deleted_while_running(h):
    h.start([h.spec("a")])
    h.barrier()
    ref = h.proxy.start_child(h.spec("b")).get(timeout=WAIT)
    assert ref is h.ref("b")
    assert h.barrier() == [("a", True, 0), ("b", True, 0)]

    h.proxy.stop_child("b").get(timeout=WAIT)
    assert ("stop", "b") in h.journal
    assert h.barrier() == [("a", True, 0), ("b", False, 0)]  # a stopped child is not restarted

    with pytest.raises(ChildRunning):
        h.proxy.delete_child("a").get(timeout=WAIT)
    with pytest.raises(ChildRunning):
        h.proxy.restart_child("a").get(timeout=WAIT)

    again = h.proxy.restart_child("b").get(timeout=WAIT)
    assert again is h.ref("b") and again is not ref
    h.proxy.stop_child("b").get(timeout=WAIT)
    h.proxy.delete_child("b").get(timeout=WAIT)
    assert h.barrier() == [("a", True, 0)]
    with pytest.raises(ChildNotFound):
        h.proxy.stop_child("b").get(timeout=WAIT)


def test_a_dynamic_child_with_a_taken_name_is_refused(h):
    h.start([h.spec("a")])
    with pytest.raises(ValueError, match="already has a child"):
        h.proxy.start_child(h.spec("a")).get(timeout=WAIT)


def test_a_dynamic_child_that_fails_to_start_is_reported_to_the_caller_and_not_kept(h):
    h.start([h.spec("a")])
    with pytest.raises(ChildStartFailed) as failed:
        h.proxy.start_child(h.spec("b", fail_on_start=RuntimeError("nope"))).get(timeout=WAIT)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert h.barrier() == [("a", True, 0)]


def test_dynamic_children_stop_before_the_initial_ones_when_the_supervisor_stops(h):
    sup = h.start([h.spec("a"), h.spec("b")])
    h.proxy.start_child(h.spec("c")).get(timeout=WAIT)
    sup.stop(block=True, timeout=WAIT)
    assert [entry for entry in h.journal if entry[0] == "stop"] == [("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_a_child_that_is_not_a_base_actor_is_a_start_failure(h):
    class Plain(pykka.ThreadingActor):
        pass

    h.start([ChildSpec("plain", Plain.start, "temporary")])
    assert h.barrier() == []
    assert h.events.count("start_failed", "plain") == 1


def test_a_broken_event_hook_does_not_break_supervision(h):
    def broken(kind: str, child: str) -> None:
        raise RuntimeError("metrics down")

    sup = Supervisor.start([h.spec("a")], on_event=broken, clock=h.timers.now, timers=h.timers)
    sup.proxy().which_children().get(timeout=WAIT)
    old = children_of(sup).ref_of("a")
    died = watch_death(old)
    old.tell(Crash(ValueError("x")))
    died.get(timeout=WAIT)
    # The exit and the restart are handled in one message, queued before this ask.
    assert sup.proxy().which_children().get(timeout=WAIT) == [("a", True, 1)]
    assert children_of(sup).ref_of("a") not in (None, old)

"""The base actor's promises, tested directly: work context reaches handlers, a bounded mailbox
refuses mail but never a stop, death watchers fire exactly once with the reason, and a BaseException
in one actor ends that actor alone."""

from __future__ import annotations

import gc
import queue

import gevent
import gevent.event
import pykka
import pytest

from actors import base
from actors.base import Actor, ActorCrashed, MailboxFull, actor_of
from core import context

WAIT = 2.0


@pytest.fixture(autouse=True)
def _stop_every_actor():
    yield
    refs = pykka.ActorRegistry.get_all()
    stops = [(ref, ref.stop(block=False)) for ref in reversed(refs)]
    for ref, stop in stops:
        try:
            stop.get(timeout=WAIT)
        except pykka.Timeout:
            actor_of(ref).kill()
    assert pykka.ActorRegistry.get_all() == []


class Echo(Actor):
    def on_receive(self, message):
        if callable(message):
            return message()
        return message


class Died(gevent.event.AsyncResult):
    """Receives (ref, reason) when the actor ends; ``calls`` lists every call, for checking it came
    once (an assertion in the watcher could not fail a test: the actor logs what its watchers raise)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []


def watch_death(ref) -> Died:
    died = Died()

    def on_death(dead_ref, reason):
        died.calls.append((dead_ref, reason))
        if not died.ready():
            died.set((dead_ref, reason))

    actor_of(ref).watch(on_death)
    return died


def test_the_senders_work_context_is_restored_in_an_asked_handler():
    ref = Echo.start()
    with context.bound(correlation_id="c-1", tenant_id="t-1", bot_id="b-1"):
        seen = ref.ask(context.current, timeout=WAIT)
    assert seen == context.WorkContext("c-1", "t-1", "b-1")
    assert context.current() == context.WorkContext()


def test_the_senders_work_context_is_restored_in_a_told_handler_and_not_leaked_to_the_next():
    seen: list[context.WorkContext] = []
    done = gevent.event.Event()

    def record():
        seen.append(context.current())
        if len(seen) == 2:
            done.set()

    ref = Echo.start()
    with context.bound(correlation_id="c-2", tenant_id="t-2"):
        ref.tell(record)
    ref.tell(record)
    assert done.wait(WAIT)
    assert seen == [context.WorkContext("c-2", "t-2", None), context.WorkContext()]


class Gated(Actor):
    mailbox_size = 2

    def __init__(self, entered: gevent.event.Event, gate: gevent.event.Event) -> None:
        super().__init__()
        self.entered = entered
        self.gate = gate

    def on_receive(self, message):
        self.entered.set()
        self.gate.wait()


def test_a_full_bounded_mailbox_raises_mailbox_full_at_once_but_still_accepts_stop():
    entered, gate = gevent.event.Event(), gevent.event.Event()
    ref = Gated.start(entered, gate)
    ref.tell("first")
    assert entered.wait(WAIT)  # "first" is out of the mailbox, in the handler
    ref.tell("second")
    ref.tell("third")
    assert actor_of(ref).mailbox_depth == 2
    with pytest.raises(MailboxFull):
        ref.tell("fourth")
    with pytest.raises(MailboxFull):
        ref.ask("fifth", block=False)
    stopping = ref.stop(block=False)
    gate.set()
    assert stopping.get(timeout=WAIT) is True
    assert not ref.is_alive()


def test_death_watchers_fire_once_with_none_after_a_normal_stop():
    ref = Echo.start()
    died = watch_death(ref)
    ref.stop(block=True, timeout=WAIT)
    assert died.get(timeout=WAIT) == (ref, None)
    ref.stop(block=True, timeout=WAIT)  # a second stop must not signal again
    gevent.idle()  # whatever the second stop set going has run
    assert died.calls == [(ref, None)]


def test_death_watchers_fire_once_with_the_exception_that_ended_a_told_handler():
    ref = Echo.start()
    died = watch_death(ref)
    boom = ValueError("boom")

    def fail():
        raise boom

    ref.tell(fail)
    assert died.get(timeout=WAIT) == (ref, boom)
    gevent.idle()
    assert died.calls == [(ref, boom)]


def test_an_exception_in_an_asked_handler_goes_back_to_the_caller_and_the_actor_lives():
    ref = Echo.start()
    died = watch_death(ref)

    def fail():
        raise KeyError("nope")

    with pytest.raises(KeyError):
        ref.ask(fail, timeout=WAIT)
    assert ref.ask("still here", timeout=WAIT) == "still here"
    assert not died.ready()


def test_watching_an_actor_that_has_already_ended_calls_back_at_once_with_its_reason():
    ref = Echo.start()
    first = watch_death(ref)
    ref.tell(lambda: 1 / 0)
    _, reason = first.get(timeout=WAIT)
    late = watch_death(ref)
    assert late.ready()
    assert late.get() == (ref, reason)
    assert isinstance(reason, ZeroDivisionError)


class FailsToStart(Actor):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def on_start(self):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("no db"), gevent.GreenletExit(), gevent.Timeout()])
def test_an_exception_in_on_start_is_a_death_signal_and_unregisters_the_actor(error):
    ref = FailsToStart.start(error)
    died = watch_death(ref)
    assert died.get(timeout=WAIT) == (ref, error)
    assert ref not in pykka.ActorRegistry.get_all()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("anything", timeout=WAIT)


class Raises(Actor):
    def on_receive(self, message):
        raise message


@pytest.mark.parametrize("error", [gevent.GreenletExit(), gevent.Timeout()], ids=["GreenletExit", "Timeout"])
def test_a_base_exception_in_a_told_handler_ends_that_actor_alone(monkeypatch, error):
    stop_all_calls: list[object] = []
    monkeypatch.setattr(pykka.ActorRegistry, "stop_all", lambda *a, **k: stop_all_calls.append(a))
    bystander = Echo.start()
    victim = Raises.start()
    died = watch_death(victim)
    victim.tell(error)
    assert died.get(timeout=WAIT) == (victim, error)
    assert stop_all_calls == []
    assert bystander.ask("alive", timeout=WAIT) == "alive"


def test_a_base_exception_in_an_asked_handler_is_returned_as_actor_crashed_and_ends_that_actor_alone(
    monkeypatch,
):
    stop_all_calls: list[object] = []
    monkeypatch.setattr(pykka.ActorRegistry, "stop_all", lambda *a, **k: stop_all_calls.append(a))
    bystander = Echo.start()
    victim = Raises.start()
    died = watch_death(victim)
    with pytest.raises(ActorCrashed) as crashed:
        victim.ask(gevent.GreenletExit(), timeout=WAIT)
    assert isinstance(crashed.value.__cause__, gevent.GreenletExit)
    assert isinstance(died.get(timeout=WAIT)[1], gevent.GreenletExit)
    assert stop_all_calls == []
    assert bystander.ask("alive", timeout=WAIT) == "alive"


class Blocks(Actor):
    def __init__(self, entered: gevent.event.Event) -> None:
        super().__init__()
        self.entered = entered

    def on_receive(self, message):
        self.entered.set()
        gevent.event.Event().wait()


def test_kill_ends_an_actor_stuck_in_a_handler_with_greenlet_exit():
    entered = gevent.event.Event()
    ref = Blocks.start(entered)
    died = watch_death(ref)
    ref.tell("block")
    assert entered.wait(WAIT)
    actor_of(ref).kill()
    _, reason = died.get(timeout=WAIT)
    assert isinstance(reason, gevent.GreenletExit)
    assert ref not in pykka.ActorRegistry.get_all()


def test_kill_ends_an_actor_whose_on_start_is_stuck():
    stuck = gevent.event.Event()

    class SlowStart(Actor):
        def on_start(self):
            stuck.set()
            gevent.event.Event().wait()

    ref = SlowStart.start()  # returns once on_start yields: start() waits for the greenlet to run
    assert stuck.is_set()
    died = watch_death(ref)
    actor_of(ref).kill()
    _, reason = died.get(timeout=WAIT)
    assert isinstance(reason, gevent.GreenletExit)
    assert ref not in pykka.ActorRegistry.get_all()


def test_an_exception_in_on_stop_makes_the_end_abnormal():
    class BadStop(Actor):
        def on_stop(self):
            raise OSError("flush failed")

    ref = BadStop.start()
    died = watch_death(ref)
    assert ref.stop(block=True, timeout=WAIT) is True
    _, reason = died.get(timeout=WAIT)
    assert isinstance(reason, OSError)


def test_a_watcher_that_raises_does_not_keep_the_others_from_being_told():
    ref = Echo.start()

    def broken(_ref, _reason):
        raise RuntimeError("broken watcher")

    actor_of(ref).watch(broken)
    died = watch_death(ref)
    ref.stop(block=True, timeout=WAIT)
    assert died.get(timeout=WAIT) == (ref, None)


def test_actor_of_finds_the_actor_behind_a_ref_and_reports_a_collected_one_as_dead():
    ref = Echo.start()
    assert isinstance(actor_of(ref), Echo)
    ref.stop(block=True, timeout=WAIT)
    gevent.idle()
    gc.collect()
    with pytest.raises(pykka.ActorDeadError):
        actor_of(ref)


def test_an_exception_marked_already_reported_is_not_sent_to_sentry_twice(monkeypatch):
    captured: list[BaseException] = []
    monkeypatch.setattr(base.sentry, "capture", lambda exc, **tags: captured.append(exc))
    ref = Echo.start()
    died = watch_death(ref)
    reported = RuntimeError("told Sentry already")
    reported.already_reported = True
    fresh = RuntimeError("not yet")

    def raise_(exc):
        def fail():
            raise exc

        return fail

    ref.tell(raise_(reported))
    died.get(timeout=WAIT)
    other = Echo.start()
    other_died = watch_death(other)
    other.tell(raise_(fresh))
    other_died.get(timeout=WAIT)
    assert captured == [fresh]


def test_an_inline_actor_is_driven_by_the_calling_greenlet_and_ends_with_one_death_signal():
    from actors.base import Actor, MailboxFull

    class Echo(Actor):
        mailbox_size = 2

        def on_receive(self, message):
            return ("handled", message)

    echo = Echo()
    ref = echo.start_inline()
    assert pykka.ActorRegistry.get_by_urn(ref.actor_urn) is ref
    ref.tell("a")
    ref.tell("b")
    with pytest.raises(MailboxFull):
        ref.tell("c")
    assert echo.receive_inline(1) == ("handled", "a")
    assert echo.receive_inline(1) == ("handled", "b")
    ended = []
    echo.watch(lambda r, reason: ended.append(reason))
    echo.finish_inline()
    echo.finish_inline()
    assert ended == [None]
    assert not ref.is_alive() and pykka.ActorRegistry.get_by_urn(ref.actor_urn) is None


def test_an_ask_that_gets_no_answer_in_time_raises_pykka_timeout_and_the_answer_is_not_lost_to_a_later_get():
    release = gevent.event.Event()
    ref = Echo.start()
    future = ref.ask(lambda: release.wait() and "late", block=False)
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.05)
    release.set()
    assert future.get(timeout=WAIT) == "late"


def test_a_future_is_answered_once():
    future = Echo._create_future()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    with pytest.raises(queue.Full):
        future.set_exception((ValueError, ValueError("no"), None))
    assert future.get(timeout=0) == 1


def test_pykkas_combinators_work_on_the_futures_of_asks():
    refs = [Echo.start() for _ in range(3)]
    futures = [ref.ask(n, block=False) for n, ref in enumerate(refs)]
    assert pykka.get_all(futures, timeout=WAIT) == [0, 1, 2]
    assert futures[0].join(futures[1], futures[2]).get(timeout=WAIT) == [0, 1, 2]
    assert refs[0].ask(20, block=False).map(lambda v: v + 1).get(timeout=WAIT) == 21

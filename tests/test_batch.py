"""``db.batch.Coalescer`` on its own: how calls are grouped into statements (alone when quiet, together
while one is in flight, per tenant, at most ``max_batch`` rows), how faults reach the callers (a bad
call isolated, an outage shared, a wrong answer refused), ``submit``'s queueing and bound, ``stop``,
and a killed flusher.

The operation is a plain function injected into the coalescer (``FakeRun``): it records every batch
it gets and answers ``"<tenant>:<item>"`` per item. It can hold a tenant's next batch mid-statement,
which is how a test puts "a statement in flight" on the table and queues calls behind it. Tests wait
on events, never on time.
"""

from __future__ import annotations

import logging

import gevent
import gevent.event
import psycopg2
import pytest

from db.batch import Coalescer, Overflow
from tests.waiting import wait_until

TIMEOUT = 5


class FakeRun:
    """``run(tenant, items)`` for a coalescer: records each batch, answers one result per item, raises
    ``fault(items)`` when that returns an exception, and makes a held tenant's next batch wait."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list]] = []
        self.fault = lambda items: None
        self.answer = lambda tenant, items: [f"{tenant}:{item}" for item in items]
        self._gates: dict[str, gevent.event.Event] = {}
        self._entered: dict[str, gevent.event.Event] = {}

    def hold(self, tenant: str) -> None:
        """The next batch of ``tenant`` waits, once it has started, until ``release(tenant)``."""
        self._gates[tenant] = gevent.event.Event()
        self._entered[tenant] = gevent.event.Event()

    def wait_in_flight(self, tenant: str) -> None:
        assert self._entered[tenant].wait(TIMEOUT), f"no batch of {tenant} started"

    def release(self, tenant: str) -> None:
        self._gates.pop(tenant).set()

    def __call__(self, tenant: str, items: list) -> list:
        self.batches.append((tenant, list(items)))
        gate = self._gates.get(tenant)
        if gate is not None and not self._entered[tenant].is_set():
            self._entered[tenant].set()
            gate.wait()
        fault = self.fault(items)
        if fault is not None:
            raise fault
        return self.answer(tenant, items)

    def items_of(self, tenant: str) -> list[list]:
        return [items for t, items in self.batches if t == tenant]


@pytest.fixture
def run() -> FakeRun:
    return FakeRun()


@pytest.fixture
def coalescer(run) -> Coalescer:
    return Coalescer("test.op", run)


def start_call(coalescer: Coalescer, tenant: str, items: list) -> gevent.Greenlet:
    """A caller greenlet that has queued its call when this returns.

    ``call`` queues before it first yields, and ``begun.set()`` only wakes this greenlet once the
    caller has yielded, so by then the call is queued and the caller is waiting for its results."""
    begun = gevent.event.Event()

    def caller() -> list:
        begun.set()
        return coalescer.call(tenant, items)

    greenlet = gevent.spawn(caller)
    assert begun.wait(TIMEOUT)
    return greenlet


def in_flight(coalescer: Coalescer, run: FakeRun, tenant: str, items: list) -> gevent.Greenlet:
    """A call of ``tenant`` whose statement has started and is held until ``run.release(tenant)``."""
    run.hold(tenant)
    caller = start_call(coalescer, tenant, items)
    run.wait_in_flight(tenant)
    return caller


def result_of(caller: gevent.Greenlet):
    return caller.get(timeout=TIMEOUT)


def failure_of(caller: gevent.Greenlet) -> BaseException:
    caller.join(timeout=TIMEOUT)
    assert caller.dead, "the caller is still waiting"
    assert caller.exception is not None, f"the caller got {caller.value!r}"
    return caller.exception


# -- grouping -----------------------------------------------------------------------------------------


def test_a_lone_call_runs_at_once_in_a_statement_of_its_own(coalescer, run):
    assert coalescer.call("t", [1, 2]) == ["t:1", "t:2"]
    assert run.batches == [("t", [1, 2])]


def test_calls_arriving_while_a_statement_is_in_flight_run_together_each_getting_its_own_results(coalescer, run):
    first = in_flight(coalescer, run, "t", [0])
    waiting = [start_call(coalescer, "t", items) for items in ([1], [2, 3], [4])]
    assert run.batches == [("t", [0])]  # nothing starts while the first statement runs

    run.release("t")

    assert result_of(first) == ["t:0"]
    assert [result_of(c) for c in waiting] == [["t:1"], ["t:2", "t:3"], ["t:4"]]
    assert run.batches == [("t", [0]), ("t", [1, 2, 3, 4])]


def test_one_tenants_statement_in_flight_does_not_delay_another_tenants_call(coalescer, run):
    held = in_flight(coalescer, run, "a", [1])

    assert coalescer.call("b", [2]) == ["b:2"]
    assert not held.dead

    run.release("a")
    assert result_of(held) == ["a:1"]


def test_calls_of_different_tenants_never_share_a_statement(coalescer, run):
    firsts = [in_flight(coalescer, run, tenant, [0]) for tenant in ("a", "b")]
    waiting = [start_call(coalescer, tenant, [n]) for n in (1, 2) for tenant in ("a", "b")]

    run.release("a")
    run.release("b")

    assert [result_of(c) for c in firsts + waiting] == [["a:0"], ["b:0"], ["a:1"], ["b:1"], ["a:2"], ["b:2"]]
    assert run.items_of("a") == [[0], [1, 2]]
    assert run.items_of("b") == [[0], [1, 2]]


def test_max_batch_bounds_the_rows_of_one_statement_without_splitting_a_call(run):
    coalescer = Coalescer("test.op", run, max_batch=3)
    first = in_flight(coalescer, run, "t", [0])
    waiting = [start_call(coalescer, "t", items) for items in ([1, 2], [3], [4, 5], [6])]

    run.release("t")

    assert result_of(first) == ["t:0"]
    assert [result_of(c) for c in waiting] == [["t:1", "t:2"], ["t:3"], ["t:4", "t:5"], ["t:6"]]
    assert run.items_of("t") == [[0], [1, 2, 3], [4, 5, 6]]


def test_a_call_larger_than_max_batch_runs_whole_in_one_statement(run):
    coalescer = Coalescer("test.op", run, max_batch=2)

    assert coalescer.call("t", [1, 2, 3]) == ["t:1", "t:2", "t:3"]
    assert run.batches == [("t", [1, 2, 3])]


def test_each_statement_is_reported_to_observe_with_its_row_count(run):
    seen = []
    coalescer = Coalescer("test.op", run, observe=lambda name, rows: seen.append((name, rows)))
    first = in_flight(coalescer, run, "t", [0])
    waiting = [start_call(coalescer, "t", [n]) for n in (1, 2)]

    run.release("t")
    for caller in [first, *waiting]:
        result_of(caller)

    assert seen == [("test.op", 1), ("test.op", 2)]


# -- faults -------------------------------------------------------------------------------------------


def test_a_bad_call_in_a_combined_statement_fails_alone_after_each_call_is_run_on_its_own(coalescer, run):
    run.fault = lambda items: psycopg2.IntegrityError("duplicate key") if "bad" in items else None
    first = in_flight(coalescer, run, "t", [0])
    good, bad, other = (start_call(coalescer, "t", items) for items in ([1], ["bad"], [2]))

    run.release("t")

    assert result_of(good) == ["t:1"]
    assert isinstance(failure_of(bad), psycopg2.IntegrityError)
    assert result_of(other) == ["t:2"]
    assert result_of(first) == ["t:0"]
    assert run.items_of("t") == [[0], [1, "bad", 2], [1], ["bad"], [2]]


def test_a_transient_fault_fails_every_call_of_the_statement_without_running_them_again(coalescer, run):
    outage = psycopg2.OperationalError("server closed the connection unexpectedly")
    run.fault = lambda items: outage if 0 not in items else None
    first = in_flight(coalescer, run, "t", [0])
    waiting = [start_call(coalescer, "t", [n]) for n in (1, 2, 3)]

    run.release("t")

    assert [failure_of(c) for c in waiting] == [outage, outage, outage]
    assert result_of(first) == ["t:0"]
    assert run.items_of("t") == [[0], [1, 2, 3]]


def test_a_lone_call_that_fails_is_not_run_again(coalescer, run):
    run.fault = lambda items: ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        coalescer.call("t", [1])
    assert run.batches == [("t", [1])]


def test_an_operation_answering_the_wrong_number_of_results_fails_its_callers(coalescer, run):
    run.answer = lambda tenant, items: ["only one"]

    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        coalescer.call("t", [1, 2])


# -- submit -------------------------------------------------------------------------------------------


def test_submit_returns_before_its_statement_has_run(coalescer, run):
    run.hold("t")

    assert coalescer.submit("t", [1]) is None
    assert run.batches == []

    run.wait_in_flight("t")
    run.release("t")
    assert coalescer.flush(TIMEOUT)
    assert run.batches == [("t", [1])]


def test_a_submitted_calls_failure_is_logged_not_raised(coalescer, run, caplog):
    caplog.set_level(logging.WARNING, logger="db.batch")
    run.fault = lambda items: ValueError("bad input")

    coalescer.submit("t", [1])
    assert coalescer.flush(TIMEOUT)

    (record,) = [r for r in caplog.records if r.name == "db.batch"]
    assert record.getMessage() == "queued work failed"
    assert record.operation == "test.op" and record.items == 1 and "bad input" in record.error


def test_a_submitted_calls_outcome_goes_to_its_callback_success_or_failure_and_nothing_is_logged(coalescer, run,
                                                                                                  caplog):
    caplog.set_level(logging.WARNING, logger="db.batch")
    outcomes = []
    coalescer.submit("t", [1], on_done=outcomes.append)
    assert coalescer.flush(TIMEOUT)
    run.fault = lambda items: ValueError("bad input")
    coalescer.submit("t", [2], on_done=outcomes.append)
    assert coalescer.flush(TIMEOUT)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad input"
    assert [r for r in caplog.records if r.name == "db.batch"] == []


def test_a_submitted_call_with_results_gets_its_own_results_or_its_failure(coalescer, run):
    first = in_flight(coalescer, run, "t", [0])
    outcomes = []
    coalescer.submit("t", [1, 2], on_done=lambda results, error: outcomes.append((results, error)),
                     with_results=True)
    coalescer.submit("t", [3], on_done=lambda results, error: outcomes.append((results, error)), with_results=True)
    run.release("t")
    assert result_of(first) == ["t:0"]
    assert coalescer.flush(TIMEOUT)
    assert outcomes == [(["t:1", "t:2"], None), (["t:3"], None)]
    run.fault = lambda items: ValueError("bad input") if 4 in items else None
    coalescer.submit("t", [4], on_done=lambda results, error: outcomes.append((results, error)), with_results=True)
    assert coalescer.flush(TIMEOUT)
    assert outcomes[2][0] is None and str(outcomes[2][1]) == "bad input"


def test_a_callback_that_raises_does_not_keep_the_other_calls_of_its_statement_from_their_results(coalescer, run):
    first = in_flight(coalescer, run, "t", [0])
    told = []

    def broken(outcome):
        raise RuntimeError("callback bug")

    coalescer.submit("t", [1], on_done=broken)
    coalescer.submit("t", [2], on_done=told.append)
    waiter = start_call(coalescer, "t", [3])
    run.release("t")

    assert result_of(first) == ["t:0"]
    assert result_of(waiter) == ["t:3"]
    assert coalescer.flush(TIMEOUT) and told == [None]
    assert run.items_of("t") == [[0], [1, 2, 3]]


def test_submitted_work_gathers_for_a_while_and_then_runs_as_one_statement(run):
    coalescer = Coalescer("test.op", run, gather=0.2)
    told = []
    coalescer.submit("t", [1], on_done=told.append)
    wait_until(lambda: "t" in coalescer._gathering, what="the flusher to gather")
    coalescer.submit("t", [2], on_done=told.append)
    assert run.batches == []  # still gathering
    assert coalescer.flush(TIMEOUT)
    assert run.items_of("t") == [[1, 2]] and told == [None, None]


def test_a_waiting_call_ends_the_gathering_at_once(run):
    coalescer = Coalescer("test.op", run, gather=60)
    coalescer.submit("t", [1])
    wait_until(lambda: "t" in coalescer._gathering, what="the flusher to gather")
    with gevent.Timeout(TIMEOUT):
        assert coalescer.call("t", [2]) == ["t:2"]
    assert run.items_of("t") == [[1, 2]]


def test_submit_beyond_limit_raises_overflow_and_queues_nothing(run):
    coalescer = Coalescer("test.op", run, limit=3)
    first = in_flight(coalescer, run, "t", [0])  # in flight: no longer counted as waiting
    coalescer.submit("t", [1, 2])

    with pytest.raises(Overflow):
        coalescer.submit("t", [3, 4])
    coalescer.submit("t", [3])  # exactly at the limit
    assert coalescer.queued == 3

    run.release("t")
    assert coalescer.flush(TIMEOUT)
    assert result_of(first) == ["t:0"]
    assert run.items_of("t") == [[0], [1, 2, 3]]


# -- stopping -----------------------------------------------------------------------------------------


def test_after_stop_calls_and_submits_raise_at_once(coalescer, run):
    coalescer.stop()

    with pytest.raises(RuntimeError, match="stopped"):
        coalescer.call("t", [1])
    with pytest.raises(RuntimeError, match="stopped"):
        coalescer.submit("t", [1])
    assert run.batches == []


def test_stop_lets_the_statement_in_flight_and_calls_already_queued_finish(coalescer, run):
    first = in_flight(coalescer, run, "t", [0])
    queued = start_call(coalescer, "t", [1])

    coalescer.stop()
    run.release("t")

    assert result_of(first) == ["t:0"]
    assert result_of(queued) == ["t:1"]


def test_killing_a_flusher_fails_its_callers_in_flight_and_waiting_instead_of_leaving_them_hanging(coalescer, run):
    first = in_flight(coalescer, run, "t", [0])
    waiting = start_call(coalescer, "t", [1])

    coalescer._flushers["t"].kill(block=True, timeout=TIMEOUT)  # the greenlet has no public handle

    assert isinstance(failure_of(first), RuntimeError)
    assert isinstance(failure_of(waiting), RuntimeError)
    assert coalescer.queued == 0
    assert coalescer.call("t", [2]) == ["t:2"]  # the tenant is not wedged behind the dead flusher


def test_killing_a_flusher_before_it_first_ran_fails_its_callers_too(coalescer, run):
    caller = start_call(coalescer, "t", [1])  # queued; the flusher it spawned has not run yet
    assert run.batches == []

    coalescer._flushers["t"].kill(block=True, timeout=TIMEOUT)

    assert isinstance(failure_of(caller), RuntimeError)
    assert run.batches == []
    assert coalescer.call("t", [2]) == ["t:2"]

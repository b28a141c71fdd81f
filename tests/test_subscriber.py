"""The stream subscriber actor's cut-off: a writer that takes the closing notice in time is left alone;
one that does not is killed after the grace."""

import gevent
import gevent.event

from actors.subscriber import Closing, Subscriber


def start_writer(subscriber: Subscriber, body) -> gevent.Greenlet:
    """A connection's greenlet, bound to the subscriber as its writer before this returns."""
    bound = gevent.event.Event()

    def writer() -> object:
        subscriber.start_inline()
        subscriber.bind_writer()
        bound.set()
        try:
            return body()
        finally:  # as close_subscription does once the response is over, killed or not
            subscriber.end()

    greenlet = gevent.spawn(writer)
    assert bound.wait(timeout=5), "the writer did not start"
    return greenlet


def test_a_writer_that_ends_within_the_grace_is_not_killed_when_the_grace_is_over():
    subscriber = Subscriber("tenant", mailbox_size=4, grace=0.05)
    ended, carry_on = gevent.event.Event(), gevent.event.Event()

    def body() -> str:
        while not isinstance(subscriber.next(timeout=5), Closing):
            pass
        subscriber.end()
        ended.set()
        carry_on.wait()  # as a keep-alive connection's greenlet serving its next request
        return "served the next request"

    writer = start_writer(subscriber, body)
    subscriber.close_stream("server shutting down")
    assert ended.wait(timeout=5)
    gevent.sleep(0.1)  # the subject: time past the grace, in which a leftover timer would fire
    carry_on.set()
    assert writer.get(timeout=5) == "served the next request"


def test_a_writer_that_does_not_take_the_closing_notice_is_killed_after_the_grace():
    subscriber = Subscriber("tenant", mailbox_size=4, grace=0.05)
    writer = start_writer(subscriber, lambda: gevent.sleep(30) or "wrote")  # a client that never reads
    subscriber.close_stream("too slow", too_slow=True)
    assert isinstance(writer.get(timeout=5), gevent.GreenletExit)
    assert subscriber.closed_reason == "too slow"

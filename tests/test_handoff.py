"""The reader's hand-over of a batch to the dispatcher thread (``dispatch="thread"``).

At the end of a batch the reader gives an idle dispatcher the batch (waiting for it a
bounded time) and frees the events it delivered; see :meth:`Dispatcher.flush`. What must
hold whatever the threads' timing: every event delivered once, in order, and no
delivered event kept alive by the dispatcher once the feed has gone quiet.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import List

import pytest

from brokerfeeds.dispatch import CallbackRegistry, Dispatcher
from brokerfeeds.redact import RedactingLogger, Redactor
from helpers import wait_until


class _Item:
    """An event stand-in that can be watched with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n


def _dispatcher(callbacks: CallbackRegistry) -> Dispatcher:
    return Dispatcher("thread", callbacks, RedactingLogger(logging.getLogger("brokerfeeds"), Redactor()), "handoff")


def _burst(dispatcher: Dispatcher, first: int, count: int, frames_per_batch: int) -> List["weakref.ref[_Item]"]:
    """Hand over ``count`` events the way the reader does (one per frame)."""
    refs = []
    for i in range(first, first + count):
        item = _Item(i)
        refs.append(weakref.ref(item))
        more = (i - first + 1) % frames_per_batch != 0 and i != first + count - 1
        ends = dispatcher.batch(more_coming=more)
        dispatcher.put("notice", item)
        del item
        if ends:
            dispatcher.flush()
    return refs


@pytest.mark.parametrize("slow", [False, True], ids=["fast callbacks", "callbacks slower than the hand-off wait"])
def test_a_burst_is_delivered_in_order_and_nothing_delivered_stays_alive(slow: bool) -> None:
    callbacks = CallbackRegistry()
    dispatcher = _dispatcher(callbacks)
    seen: List[int] = []

    def callback(item: _Item) -> None:
        if slow and item.n % 50 == 0:
            time.sleep(0.05)  # the reader stops waiting and goes on: the dispatcher is busy
        seen.append(item.n)

    callbacks.add("notice", callback)
    dispatcher.start()
    try:
        refs = _burst(dispatcher, 0, 500, frames_per_batch=30)
        refs += _burst(dispatcher, 500, 7, frames_per_batch=100)  # a short tail, then quiet
        wait_until(lambda: len(seen) == 507, timeout=20)
        assert seen == list(range(507))
        # Quiet now: no reader comes to free what was delivered last; the dispatcher must not keep it.
        wait_until(lambda: all(ref() is None for ref in refs), timeout=5,
                   message="delivered events are still referenced after the feed went quiet")
    finally:
        assert dispatcher.stop(5.0)


def test_a_stopping_dispatcher_releases_a_reader_waiting_for_its_batch() -> None:
    """The reader waits for an idle dispatcher's delivery of its batch; if that thread ends
    instead (stop), the reader goes on and the events left are dropped and counted."""
    callbacks = CallbackRegistry()
    dispatcher = _dispatcher(callbacks)
    dispatcher.handoff_wait = 30.0  # only a release by the ending thread frees the reader in time
    started = threading.Event()
    release = threading.Event()

    def callback(item: _Item) -> None:
        started.set()
        release.wait(10)

    callbacks.add("notice", callback)
    lane = dispatcher.start()
    wait_until(lambda: lane.waiting)
    reader = threading.Thread(target=_burst, args=(dispatcher, 0, 3, 10), daemon=True)
    reader.start()
    assert started.wait(10)
    dispatcher.begin_stop(lane, deadline=0.0)  # past: what still waits is dropped
    release.set()
    reader.join(10)
    assert not reader.is_alive(), "the reader still waits for a dispatcher thread that ended"
    assert dispatcher.finish_stop(lane, time.monotonic() + 5.0)
    assert dispatcher.dropped_at_stop == 2

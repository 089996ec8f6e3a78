"""One run of a feed, and what happens to feeds still running at interpreter exit.

A feed's threads belong to a :class:`Run` (``start()`` creates one, ``stop()`` ends it), so
a thread that outlives ``stop()`` never touches the next run. Feeds still running when the
interpreter exits are stopped by an :mod:`atexit` hook, which logs what they dropped.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import Lane
    from .feed import Feed
    from .scheduler import RestScheduler
    from .supervisor import Supervisor

__all__ = ["Run", "running", "EXIT_TIMEOUT"]


class Run:
    """One run of a feed, from ``start()`` until it has stopped, and the threads serving it.

    A thread of a run that is over may outlive it (a callback or an HTTP call that did not
    return within ``stop()``'s timeout): it holds its own run's stop event and lane, and
    what it reports afterwards is ignored, so it never touches the next run.
    """

    __slots__ = ("stop_event", "supervisor", "scheduler", "lane", "deadline", "waited", "__weakref__")

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.supervisor: Optional["Supervisor"] = None
        self.scheduler: Optional["RestScheduler"] = None
        self.lane: Optional["Lane"] = None
        #: When stop()'s time is up (monotonic): the earliest of every stop() call's.
        self.deadline = float("inf")
        #: A stop() caller (not a feed thread) waits for this run's threads and finishes.
        self.waited = False

    def threads(self) -> List[threading.Thread]:
        """This run's threads that were started."""
        candidates = (
            self.supervisor.thread if self.supervisor is not None else None,
            self.scheduler.thread if self.scheduler is not None else None,
            self.lane.thread if self.lane is not None else None,
        )
        return [t for t in candidates if t is not None]


#: Feeds started and not yet stopped. Weak: it never keeps a feed alive by itself.
running: "weakref.WeakSet[Feed[Any]]" = weakref.WeakSet()

#: Seconds the interpreter-exit hook gives each running feed to deliver what waits.
EXIT_TIMEOUT = 1.0


def stop_running_feeds() -> None:
    """At interpreter exit, stop every feed still running.

    Feed threads are daemons: without this, callbacks still queued would vanish silently
    when the interpreter ends. Each feed gets :data:`EXIT_TIMEOUT` seconds; what it drops
    is logged.
    """
    for feed in list(running):
        try:
            feed._stop_at_exit(EXIT_TIMEOUT)
        except Exception:  # noqa: BLE001 - one feed's trouble must not keep the others running
            pass


atexit.register(stop_running_feeds)

"""The one owner of a broker adapter's state, and the order in which its events leave.

Two threads have news for an adapter: the I/O thread (frames, timer ticks) and the REST
thread (reconciliation snapshots, polls, credentials); user threads add subscriptions.
Every one of them goes through :meth:`AdapterOwner.drive`, which holds one lock from the
adapter call until every output has been handed over (events queued to the dispatcher in
order, frames written to the socket). So the order in which events are delivered is the
order in which the adapter's state changed, under any interleaving of threads: a REST
snapshot applied between two socket frames is delivered between their events, never
after a later one.

Why one lock rather than handing REST results to the I/O thread as messages: the I/O
thread sleeps in ``recv`` on a socket, and waking it for a REST result would need a
second file descriptor to select on (and TLS sockets buffer data that ``select`` cannot
see). The lock is uncontended on the hot path (one acquire per frame), REST results are
rare, and the discipline is the same for every input: adapter call and hand-over are one
step. The I/O thread remains the main driver; nothing else touches adapter attributes.

In ``dispatch="inline"`` mode callbacks run inside that step, on the thread that drove
the adapter (that is what keeps their order); they may subscribe, unsubscribe and call
``stop()``, which never waits for a feed thread when called from one.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, List, Optional, Sequence, TypeVar

from .errors import ProtocolError
from .protocol import Control, Output, Protocol

__all__ = ["AdapterOwner", "P"]

P = TypeVar("P", bound=Protocol)
T = TypeVar("T")


class AdapterOwner(Generic[P]):
    """Holds one run's adapter, its ``ready`` flag, and the lock every input takes.

    ``hand_over(outputs)`` is supplied by the feed: it queues events and acts on control
    outputs (it runs under the lock and returns the controls that must run after the
    lock is released: reconnect requests and fatal errors, which may join threads).
    """

    def __init__(self, hand_over: Callable[[Sequence[Output]], List[Control]],
                 after_hand_over: Callable[[List[Control]], None]) -> None:
        self.lock = threading.RLock()
        self._adapter: Optional[P] = None
        self._hand_over = hand_over
        self._after = after_hand_over
        #: Whether the current connection is authenticated (subscriptions may be sent).
        self.ready = False

    # ------------------------------------------------------------------ lifecycle
    def install(self, adapter: P) -> None:
        """Use ``adapter`` for a new run of the feed."""
        with self.lock:
            self._adapter = adapter
            self.ready = False

    @property
    def adapter(self) -> Optional[P]:
        """The current adapter (read it only through :meth:`drive` or :meth:`query`)."""
        return self._adapter

    # ------------------------------------------------------------------ inputs
    def drive(self, fn: Callable[[P], Sequence[Output]]) -> bool:
        """Give the adapter one input (``fn(adapter)`` returns its outputs) and hand the
        outputs over before any other input can run. False if there is no adapter."""
        with self.lock:
            adapter = self._adapter
            if adapter is None:
                return False
            outputs = fn(adapter)
            self.between_change_and_hand_over()
            late = self._hand_over(outputs) if outputs else None
        if late:
            self._after(late)
        return True

    def query(self, fn: Callable[[P], T], default: T) -> T:
        """``fn(adapter)`` under the lock, for reading adapter state (``default`` if none)."""
        with self.lock:
            adapter = self._adapter
            return default if adapter is None else fn(adapter)

    def between_change_and_hand_over(self) -> None:
        """Test hook: runs after the adapter changed state, before its outputs leave.

        A test widens the race window here (e.g. with a sleep) to prove that delivery
        order equals state-change order whatever the threads do meanwhile.
        """


def protocol_error(exc: BaseException, what: str, item: object = None) -> ProtocolError:
    """Any exception raised by an adapter input, as the :class:`ProtocolError` to report."""
    if isinstance(exc, ProtocolError):
        return exc
    error = ProtocolError(f"{what}: {type(exc).__name__}: {exc}", item)
    error.__cause__ = exc
    return error

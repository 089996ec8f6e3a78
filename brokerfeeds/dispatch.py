"""Where and when user callbacks run.

A feed's threads hand every event to its :class:`Dispatcher`, which runs the registered
callbacks in one of three ways (the feed's ``dispatch=`` argument):

``"thread"`` (default)
    One dispatcher thread per feed runs callbacks one at a time, in arrival order. The
    reader thread never runs user code, so a slow callback cannot delay heartbeats (by
    more than :attr:`Dispatcher.handoff_wait` once: at the end of a burst's batch the
    reader gives an idle dispatcher that long to deliver it, see :meth:`Dispatcher.flush`).
``"inline"``
    Callbacks run on the feed thread that produced the event (the reader for socket
    events). Lowest latency; callbacks must be fast.
``"queue"``
    Nothing runs by itself: the application calls :meth:`Dispatcher.process` (through
    ``feed.process_events()``) from its own thread, e.g. a Tk ``after`` or Qt ``QTimer``.

Account events (orders, fills, positions, P&L, balances, ...) are never dropped while the
feed runs: a consumer slower than the feed makes the backlog (and memory) grow. Past
``max_pending_events`` waiting events the dispatcher says so once — a WARNING log and a
:class:`~brokerfeeds.errors.BacklogWarning` to ``on_error``, delivered ahead of the
backlog — and says it again only after the backlog fell under half of that.

Quotes are the only events that may be coalesced or dropped, and at most
``max_pending_quotes`` of them ever wait, however many instruments stream. Once that many
wait, a new quote for an instrument that already has one waiting replaces it in place
(quotes are full merged snapshots, so only intermediate ticks are lost;
``quotes_coalesced``), and a quote for an instrument with none waiting takes the place in
line of the oldest waiting quote of another instrument, whose snapshot is dropped
(``quotes_dropped``; that instrument's next tick brings it up to date). Either way a quote
may be delivered earlier than account events that arrived before it.

Callbacks are user code and never end a feed thread: anything they raise, ``SystemExit``
and ``KeyboardInterrupt`` included, is logged and passed to ``on_error`` as a
:class:`~brokerfeeds.errors.CallbackError`. The one exception is ``"queue"`` mode, where
callbacks run on the application's own thread inside ``process_events()``: there
``KeyboardInterrupt`` and ``SystemExit`` propagate to its caller as if it had called the
callback itself (the event counts as delivered, its remaining callbacks are skipped, and
the events still waiting are delivered by the next call).

Each run of a feed (``start()`` to ``stop()``) has its own :class:`Lane`: its queue, its
quote slots and, in ``"thread"`` mode, its own dispatcher thread. Stopping a lane delivers
what waits until the stop deadline, then closes it: no callback starts any more and what
is left is dropped and counted (``dropped_at_stop``). A restarted feed opens a new lane at
once; its thread first waits for the previous run's thread to return from the callback it
may still be running, so callbacks of one feed never run two at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from _thread import allocate_lock
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .errors import BacklogWarning, BrokerFeedsError, CallbackError
from .events import Event
from .redact import RedactingLogger, safe_repr

__all__ = ["Dispatcher", "CallbackRegistry", "EventIterator", "Lane", "DISPATCH_MODES"]

DISPATCH_MODES = ("thread", "inline", "queue")

Callback = Callable[..., Any]
_monotonic = time.monotonic
#: What a callback may raise that, in "queue" mode, belongs to the application's thread.
_INTERRUPTS = (KeyboardInterrupt, SystemExit)


class CallbackRegistry:
    """Callbacks per kind (``"order"``, ``"connect"``, ...). Safe to change from any thread.

    Lists are replaced, never mutated, so the dispatcher reads them without a lock.
    """

    def __init__(self) -> None:
        self._by_kind: Dict[str, Tuple[Callback, ...]] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, fn: Callback) -> Callback:
        """Register ``fn`` for ``kind``; returns ``fn`` (decorator-friendly)."""
        if not callable(fn):
            raise TypeError(f"callback for {kind!r} must be callable, got {fn!r}")
        with self._lock:
            self._by_kind[kind] = self._by_kind.get(kind, ()) + (fn,)
        return fn

    def remove(self, fn: Callback) -> bool:
        """Unregister ``fn`` from every kind; True if it was registered anywhere."""
        found = False
        with self._lock:
            for kind, fns in list(self._by_kind.items()):
                if fn in fns:
                    found = True
                    self._by_kind[kind] = tuple(f for f in fns if f is not fn and f != fn)
        return found

    def get(self, kind: str) -> Tuple[Callback, ...]:
        """The callbacks registered for ``kind`` (possibly empty)."""
        return self._by_kind.get(kind, ())


class _QuoteSlot:
    """A queue entry for a quote that a newer quote may overwrite (see the module docs)."""

    __slots__ = ("instrument", "event")

    def __init__(self, instrument: str, event: Any) -> None:
        self.instrument = instrument
        self.event = event


class Lane:
    """One run's line of events: its queue, its quote slots and (``"thread"`` mode) the
    thread that empties it. Only the dispatcher reads or writes its fields."""

    __slots__ = ("queue", "wake", "waiting", "slots", "pending_quotes", "thread", "previous",
                 "stopping", "closed", "deadline", "handoff", "spent")

    def __init__(self, previous: Optional[threading.Thread] = None) -> None:
        self.queue: Deque[Any] = deque()
        self.wake = threading.Event()
        self.waiting = False
        #: The newest waiting slot of each instrument, oldest instrument first.
        self.slots: Dict[str, _QuoteSlot] = {}
        self.pending_quotes = 0
        self.thread: Optional[threading.Thread] = None
        #: The previous run's dispatcher thread, if it was still in a callback at start().
        self.previous = previous
        #: stop() began: deliver what waits until ``deadline``, then close.
        self.stopping = False
        #: No callback starts any more; whatever waits is dropped.
        self.closed = False
        self.deadline = float("inf")
        #: Released by the consumer once the queue is empty (see Dispatcher.flush).
        self.handoff: Any = None
        #: Entries delivered by the consumer, freed by the producer (see Dispatcher._run).
        self.spent: List[Any] = []


class Dispatcher:
    """Runs callbacks for events handed over by a feed's threads.

    ``on_crash(lane, exc)`` is told if a dispatcher thread ever dies of something other
    than a callback (a bug): the feed reports it and stops, rather than keep a connection
    whose events nobody delivers. It runs on the dying thread and must not raise.
    """

    def __init__(
        self,
        mode: str,
        callbacks: CallbackRegistry,
        log: RedactingLogger,
        name: str,
        max_pending_quotes: int = 10_000,
        max_pending_events: int = 100_000,
        on_crash: Optional[Callable[[Lane, BaseException], None]] = None,
    ) -> None:
        if mode not in DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {mode!r}")
        if max_pending_quotes < 1:
            raise ValueError(f"max_pending_quotes must be >= 1, got {max_pending_quotes!r}")
        if max_pending_events < 1:
            raise ValueError(f"max_pending_events must be >= 1, got {max_pending_events!r}")
        self.mode = mode
        self._callbacks = callbacks
        self._log = log
        self._name = name
        self._max_pending_quotes = max_pending_quotes
        self._max_pending_events = max_pending_events
        self._on_crash = on_crash
        self._lane = Lane()
        self._quote_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._sinks: List[Any] = []
        self._delivered = [0]
        self._backlog_warned = False
        self.callback_errors = 0
        self.quotes_coalesced = 0
        self.quotes_dropped = 0
        self.dropped_at_stop = 0

    # ------------------------------------------------------------------ producers
    def put(self, kind: str, item: Any) -> None:
        """Hand over one event (``kind`` selects the callbacks)."""
        if not self._callbacks.get(kind) and not (self._sinks and kind not in _NOT_SINK_KINDS):
            return  # nobody listens: skip the queue (raw messages, usually)
        lane = self._lane
        if self.mode == "inline":
            if lane.closed:  # a feed thread that outlived stop(): no callback starts after it
                self._dropped(1)
                return
            self._deliver(kind, item)
            return
        lane.queue.append((kind, item))
        if lane.waiting and not self.defer:
            lane.wake.set()

    def put_quote(self, instrument: str, quote: Any) -> None:
        """Hand over a quote; at most ``max_pending_quotes`` wait (see the module docs)."""
        lane = self._lane
        if self.mode == "inline":
            if lane.closed:
                self._dropped(1)
                return
            self._deliver("quote", quote)
            return
        with self._quote_lock:
            slots = lane.slots
            if lane.pending_quotes >= self._max_pending_quotes:
                slot = slots.get(instrument)
                if slot is not None:
                    slot.event = quote
                    self.quotes_coalesced += 1
                    return
                # Never more slots than the budget: the oldest waiting quote gives its
                # place in line to this instrument (its own snapshot is dropped).
                oldest = next(iter(slots.values()))
                del slots[oldest.instrument]
                oldest.instrument = instrument
                oldest.event = quote
                slots[instrument] = oldest
                self.quotes_dropped += 1
                return
            slot = _QuoteSlot(instrument, quote)
            slots[instrument] = slot
            lane.pending_quotes += 1
        lane.queue.append(slot)
        if lane.waiting and not self.defer:
            lane.wake.set()

    #: Seconds the idle consumer sleeps between looks at the queue when nobody wakes it:
    #: a safety net only, every hand-over wakes it.
    idle_poll = 1.0

    #: Set by the feed's reader while more frames are already buffered: events are
    #: queued without waking the consumer, then :meth:`flush` wakes it once for the
    #: whole batch (a wake-up per event costs two thread switches under a burst).
    defer = False

    #: A batch ends at this many waiting events even while more frames are buffered.
    #: Small enough that a batch's events (and the pending count of the cyclic garbage
    #: collector) stay small: see :meth:`flush`.
    max_batch = 64

    def batch(self, more_coming: bool) -> bool:
        """Called by the reader before it hands over a frame's events: they are queued
        without waking the consumer. Returns whether the frame ends the batch (nothing
        more buffered, or ``max_batch`` events wait): then the reader calls :meth:`flush`
        once the frame's events are handed over.

        Also where the backlog is watched: once per frame, not once per event."""
        lane = self._lane
        waiting = len(lane.queue)
        if waiting > self._max_pending_events or self._backlog_warned:
            self.check_backlog()
        self.defer = True
        if lane.spent and len(lane.spent) >= self.max_batch:
            lane.spent = []
        return not more_coming or waiting >= self.max_batch

    #: At the end of a batch, how long (seconds) the reader waits at most for an idle
    #: consumer to deliver it (0: it does not wait). See :meth:`flush`.
    handoff_wait = 0.005

    #: Whether the consumer leaves the entries it delivered for the reader to free.
    free_on_reader = True

    def flush(self) -> None:
        """End :attr:`defer` and wake the consumer if events wait. Called by the reader
        (never under the adapter owner's lock: callbacks may need it).

        ``"thread"`` mode: if the consumer was idle, the reader then waits (at most
        :attr:`handoff_wait`) until it delivered the batch, and frees the delivered
        events itself. Without that wait both threads run at once, taking turns at the
        GIL only every switch interval (5 ms): the backlog grows to hundreds of events,
        enough for the cyclic garbage collector to run over and over (its young
        generation counts live container objects), and events made on one CPU core are
        freed on the other, whose caches then bounce back and forth. Measured on Clear
        Street's replay: a fifth of the throughput. A callback slower than the wait
        delays the reader by that much once; the reader never waits for a busy consumer.
        """
        self.defer = False
        lane = self._lane
        if lane.waiting and lane.queue:
            wait = self.handoff_wait
            if wait > 0 and lane.thread is not None:
                handoff = allocate_lock()
                handoff.acquire()
                lane.handoff = handoff
                lane.wake.set()
                handoff.acquire(True, wait)
            else:
                lane.wake.set()
        if lane.spent:
            lane.spent = []

    def check_backlog(self) -> None:
        """Warn once when more than ``max_pending_events`` wait; re-arm under half of it."""
        lane = self._lane
        waiting = len(lane.queue)
        limit = self._max_pending_events
        if waiting <= limit:
            if self._backlog_warned and waiting < limit // 2:
                self._backlog_warned = False
            return
        if self._backlog_warned or lane.closed:
            return
        self._backlog_warned = True
        text = (f"{waiting} events wait for callbacks (more than max_pending_events={limit}): callbacks "
                f"are slower than the feed; nothing is dropped, the backlog keeps growing in memory")
        self._log.warning("%s", text)
        if self._callbacks.get("error"):
            # Ahead of the backlog: a notice about the queue is no use at its end.
            lane.queue.appendleft(("error", BacklogWarning(text, pending=waiting, limit=limit)))
            if lane.waiting:
                lane.wake.set()

    # ------------------------------------------------------------------ consumers
    @property
    def pending(self) -> int:
        """Events waiting to be delivered."""
        return len(self._lane.queue)

    def add_sink(self, sink: Any) -> None:
        """Also put every data event into ``sink`` (anything with ``put``), for iterators."""
        self._sinks = self._sinks + [sink]

    def remove_sink(self, sink: Any) -> None:
        """Stop feeding ``sink``."""
        self._sinks = [s for s in self._sinks if s is not sink]

    def process(self, max_events: Optional[int] = None, timeout: float = 0.0) -> int:
        """Run callbacks for waiting events on the calling thread; returns how many ran.

        Waits up to ``timeout`` seconds for the first event when none is waiting. In
        ``"queue"`` mode a callback's ``KeyboardInterrupt`` / ``SystemExit`` propagates.
        """
        lane = self._lane
        ran = 0
        while max_events is None or ran < max_events:
            if lane.closed:
                break
            entry = self._pop(lane)
            if entry is None:
                if ran or timeout <= 0 or not self._wait(lane, timeout):
                    break
                timeout = 0.0
                continue
            self._deliver(*entry)
            ran += 1
        return ran

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Lane:
        """Open a new lane for a new run (and its thread, in ``"thread"`` mode).

        Whatever the previous run left undelivered is dropped (and counted); its thread,
        if still in a callback, is waited for by the new thread before its first delivery.
        """
        old = self._lane
        self.close(old, why="they were not pumped with process_events() before the feed started again")
        previous = old.thread if old.thread is not None and old.thread.is_alive() else None
        lane = Lane(previous)
        self._backlog_warned = False
        self.defer = False
        self._lane = lane
        if self.mode == "thread":
            lane.thread = threading.Thread(
                target=self._run, args=(lane,), name=f"brokerfeeds-{self._name}-dispatch", daemon=True
            )
            lane.thread.start()
        return lane

    def begin_stop(self, lane: Lane, deadline: float) -> None:
        """Deliver what waits in ``lane`` until ``deadline`` (monotonic), then close it.

        Returns at once: the lane's thread enforces the deadline itself between events.
        """
        if deadline < lane.deadline:
            lane.deadline = deadline
        lane.stopping = True
        lane.wake.set()

    def finish_stop(self, lane: Lane, deadline: float) -> bool:
        """Wait until ``lane``'s thread ended or ``deadline`` passed, then close the lane
        (``"queue"`` mode: left open, the application may still pump what waits). True
        if the thread ended (or there is none)."""
        self.begin_stop(lane, deadline)
        thread = lane.thread
        mine = thread is threading.current_thread()
        if thread is not None and not mine:
            _join(thread, deadline)
        if self.mode != "queue":
            self.close(lane)
            if thread is not None and not mine and thread.is_alive():
                thread.join(0.02)  # it was between two events: closing ends it at once
        return thread is None or (not mine and not thread.is_alive())

    def stop(self, timeout: Optional[float]) -> bool:
        """Deliver what is waiting (until ``timeout``), then close the current lane;
        True if its thread ended in time."""
        deadline = float("inf") if timeout is None else _monotonic() + timeout
        return self.finish_stop(self._lane, deadline)

    def close(self, lane: Lane, popped: int = 0,
              why: str = "callbacks did not keep up within the stop timeout") -> None:
        """No callback of ``lane`` starts from now on; what waits is dropped, counted and
        logged (``popped``: events its thread had already taken off the queue)."""
        with self._close_lock:
            if lane.closed:
                self.dropped_at_stop += popped
                return
            lane.closed = True
        lane.stopping = True
        lane.wake.set()
        dropped = popped
        while self._pop(lane) is not None:
            dropped += 1
        if dropped:
            self._dropped(dropped)
            self._log.warning("%d undelivered event(s) dropped at stop: %s", dropped, why)

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The current run's dispatcher thread (``"thread"`` mode, once started)."""
        return self._lane.thread

    @property
    def lane(self) -> Lane:
        """The current run's lane."""
        return self._lane

    def _dropped(self, count: int) -> None:
        with self._close_lock:
            self.dropped_at_stop += count

    def _run(self, lane: Lane) -> None:
        try:
            previous = lane.previous
            if previous is not None:
                self._await_previous(lane, previous)
            pop = self._pop
            deliver = self._deliver
            keep = self.free_on_reader
            limit = 4 * self.max_batch
            while True:
                entry = pop(lane)
                if entry is None:
                    if lane.stopping:
                        return
                    if lane.spent and lane.handoff is None:
                        lane.spent = []  # no reader is about to free them (see flush)
                    self._wait(lane, self.idle_poll)
                    continue
                if lane.stopping and (lane.closed or _monotonic() >= lane.deadline):
                    self.close(lane, popped=1)
                    return
                deliver(*entry)
                if keep:  # (no local name for the list: it would keep it alive while idle)
                    lane.spent.append(entry)
                    if len(lane.spent) >= limit:  # a long backlog: the reader is not keeping up
                        lane.spent = []
        except BaseException as exc:  # noqa: BLE001 - a bug must stop the feed, never leave a zombie
            crashed = self._on_crash
            try:
                if crashed is not None:
                    crashed(lane, exc)
                else:
                    self._log.error("dispatch thread crashed: %s", safe_repr(exc), exc_info=exc)
                self.close(lane, why="the dispatch thread crashed")
            except BaseException:  # noqa: BLE001 - the thread is ending; nothing may escape it
                pass
        finally:
            lane.spent = []
            handoff, lane.handoff = lane.handoff, None
            if handoff is not None:
                handoff.release()  # a reader waiting for this thread stops waiting

    def _await_previous(self, lane: Lane, previous: threading.Thread) -> None:
        """One callback at a time: the previous run's thread returns from its callback
        (then ends without delivering more) before this run delivers anything."""
        lane.previous = None
        looks = 0
        while previous.is_alive() and not lane.closed:
            previous.join(0.1)
            looks += 1
            if looks == 50:
                self._log.warning("a callback of the previous run has not returned for 5s: this run's "
                                  "events wait for it (callbacks never run two at a time)")

    def _wait(self, lane: Lane, timeout: float) -> bool:
        lane.waiting = True
        try:
            if lane.queue or lane.stopping:
                return True
            handoff = lane.handoff
            if handoff is not None:
                lane.handoff = None
                handoff.release()
            fired = lane.wake.wait(timeout)
            lane.wake.clear()
            return fired
        finally:
            lane.waiting = False

    def _pop(self, lane: Lane) -> Optional[Tuple[str, Any]]:
        try:
            entry = lane.queue.popleft()
        except IndexError:
            return None
        if type(entry) is _QuoteSlot:
            with self._quote_lock:
                lane.pending_quotes -= 1
                if lane.slots.get(entry.instrument) is entry:
                    del lane.slots[entry.instrument]
                return ("quote", entry.event)
        return entry  # type: ignore[no-any-return]  # the deque holds (kind, event) tuples and slots

    @property
    def delivered(self) -> int:
        """Events delivered so far."""
        return self._delivered[0]

    def _deliver(self, kind: str, item: Any) -> None:
        # Counted in a list of its own: writing an attribute of this object from the
        # consumer for every event would bounce the cache lines the producer reads
        # between CPU cores (measured: a third of the throughput in "thread" mode).
        self._delivered[0] += 1
        for fn in self._callbacks.get(kind):
            try:
                fn(item)
            except BaseException as exc:  # noqa: BLE001 - user code must never kill a feed thread
                if self.mode == "queue" and isinstance(exc, _INTERRUPTS):
                    raise  # process_events() runs on the application's thread: its Ctrl-C, its exit
                self._callback_failed(kind, fn, item, exc)
        if self._sinks and kind not in _NOT_SINK_KINDS:
            for sink in self._sinks:
                sink.put(item)

    def _callback_failed(self, kind: str, fn: Callback, item: Any, exc: BaseException) -> None:
        """Log a callback's exception and pass it to on_error; never raises (whatever
        ``repr(exc)`` or the handlers do)."""
        self.callback_errors += 1
        try:
            name = _callback_name(fn)
            text = safe_repr(exc)
            self._log.error("callback %s for %s raised %s", name, kind, text, exc_info=exc)
            if kind == "error":
                return  # an on_error callback that raises is only logged: no loop
            error = CallbackError(self._log.redactor.redact(f"callback {name} for {kind} raised {text}"),
                                  callback=fn, event=item)
            error.__cause__ = exc
        except BaseException:  # noqa: BLE001 - reporting must never raise; the log above is robust
            return
        self.notify_error(error)

    def notify_error(self, error: BrokerFeedsError) -> None:
        """Call the ``on_error`` callbacks with ``error`` here and now; one that raises is
        only logged (in ``"queue"`` mode its KeyboardInterrupt / SystemExit propagate)."""
        for handler in self._callbacks.get("error"):
            try:
                handler(error)
            except BaseException as inner:  # noqa: BLE001
                if self.mode == "queue" and isinstance(inner, _INTERRUPTS):
                    raise
                try:
                    self._log.error("on_error callback %s raised %s", _callback_name(handler),
                                    safe_repr(inner), exc_info=inner)
                except BaseException:  # noqa: BLE001 - nothing left to tell
                    pass


def _callback_name(fn: Any) -> str:
    try:
        name = getattr(fn, "__qualname__", None)
        return name if isinstance(name, str) else safe_repr(fn)
    except BaseException:  # noqa: BLE001 - a hostile __getattr__
        return safe_repr(fn)


def _join(thread: threading.Thread, deadline: float) -> None:
    if deadline == float("inf"):
        thread.join()
    else:
        thread.join(max(0.0, deadline - _monotonic()))


#: Kinds that ``feed.events()`` does not yield: lifecycle and raw messages, not data.
_NOT_SINK_KINDS = frozenset({"connect", "disconnect", "error", "message"})


class EventIterator:
    """What ``Feed.events()`` returns: a sink fed by the dispatcher, read by the caller."""

    def __init__(self, dispatcher: Dispatcher, stopped: Callable[[], bool], timeout: Optional[float]) -> None:
        self._dispatcher = dispatcher
        self._stopped = stopped
        self._timeout = timeout
        self._sink: "queue.SimpleQueue[Event]" = queue.SimpleQueue()
        self._pump = dispatcher.mode == "queue"
        self._open = True
        dispatcher.add_sink(self._sink)

    def __iter__(self) -> "EventIterator":
        return self

    def __next__(self) -> Event:
        last = _monotonic()
        while self._open:
            if self._pump:
                self._dispatcher.process(timeout=0.05)
            try:
                return self._sink.get(timeout=0.0 if self._pump else 0.1)
            except queue.Empty:
                pass
            if self._stopped() and not self._dispatcher.pending:
                break
            if self._timeout is not None and _monotonic() - last >= self._timeout:
                break
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Stop receiving events."""
        if self._open:
            self._open = False
            self._dispatcher.remove_sink(self._sink)

    def __del__(self) -> None:
        self.close()

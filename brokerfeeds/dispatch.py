"""Where and when user callbacks run.

A feed's threads hand every event to its :class:`Dispatcher`, which runs the registered
callbacks in one of three ways (the feed's ``dispatch=`` argument):

``"thread"`` (default)
    One dispatcher thread per feed runs callbacks one at a time, in arrival order. The
    reader thread never runs user code, so a slow callback cannot delay heartbeats.
``"inline"``
    Callbacks run on the feed thread that produced the event (the reader for socket
    events). Lowest latency; callbacks must be fast.
``"queue"``
    Nothing runs by itself: the application calls :meth:`Dispatcher.process` (through
    ``feed.process_events()``) from its own thread, e.g. a Tk ``after`` or Qt ``QTimer``.

Account events (orders, fills, positions, P&L, balances, ...) are never dropped. Quotes
are the only events that may be coalesced: once ``max_pending_quotes`` quotes wait
undelivered, a new quote for an instrument that already has one waiting replaces it in
place (quotes are full merged snapshots, so only intermediate ticks are lost), and the
``quotes_coalesced`` counter goes up.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .errors import CallbackError
from .redact import RedactingLogger

__all__ = ["Dispatcher", "CallbackRegistry", "DISPATCH_MODES"]

DISPATCH_MODES = ("thread", "inline", "queue")

Callback = Callable[..., Any]


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
    """A queue entry for a quote that a newer quote of the same instrument may overwrite."""

    __slots__ = ("instrument", "event")

    def __init__(self, instrument: str, event: Any) -> None:
        self.instrument = instrument
        self.event = event


class Dispatcher:
    """Runs callbacks for events handed over by a feed's threads."""

    def __init__(
        self,
        mode: str,
        callbacks: CallbackRegistry,
        log: RedactingLogger,
        name: str,
        max_pending_quotes: int = 10_000,
    ) -> None:
        if mode not in DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {mode!r}")
        self.mode = mode
        self._callbacks = callbacks
        self._log = log
        self._name = name
        self._max_pending_quotes = max_pending_quotes
        self._queue: Deque[Any] = deque()
        self._wake = threading.Event()
        self._waiting = False
        self._quote_lock = threading.Lock()
        self._quote_slots: Dict[str, _QuoteSlot] = {}
        self._pending_quotes = 0
        self._sinks: List[Any] = []
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._delivered = [0]
        self.callback_errors = 0
        self.quotes_coalesced = 0

    # ------------------------------------------------------------------ producers
    def put(self, kind: str, item: Any) -> None:
        """Hand over one event (``kind`` selects the callbacks)."""
        if not self._callbacks.get(kind) and not (self._sinks and kind not in _NOT_SINK_KINDS):
            return  # nobody listens: skip the queue (raw messages, usually)
        if self.mode == "inline":
            self._deliver(kind, item)
            return
        self._queue.append((kind, item))
        if self._waiting and not self.defer:
            self._wake.set()

    def put_quote(self, instrument: str, quote: Any) -> None:
        """Hand over a quote, coalescing it with a waiting one when the backlog is full."""
        if self.mode == "inline":
            self._deliver("quote", quote)
            return
        with self._quote_lock:
            slot = self._quote_slots.get(instrument)
            if slot is not None and self._pending_quotes >= self._max_pending_quotes:
                slot.event = quote
                self.quotes_coalesced += 1
                return
            slot = _QuoteSlot(instrument, quote)
            self._quote_slots[instrument] = slot
            self._pending_quotes += 1
        self._queue.append(slot)
        if self._waiting and not self.defer:
            self._wake.set()

    #: Seconds the idle consumer sleeps between looks at the queue when nobody wakes it:
    #: a safety net only, every hand-over wakes it.
    idle_poll = 1.0

    #: Set by the feed's reader while more frames are already buffered: events are
    #: queued without waking the consumer, then :meth:`flush` wakes it once for the
    #: whole batch (a wake-up per event costs two thread switches under a burst).
    defer = False

    #: A batch ends at this many waiting events even while more frames are buffered.
    max_batch = 256

    def batch(self, more_coming: bool) -> None:
        """Called by the reader before it hands over a frame's events: defer the wake-up
        while ``more_coming`` (more frames already buffered), else end the batch."""
        if more_coming and len(self._queue) < self.max_batch:
            self.defer = True
        elif self.defer:
            # Ended here, not when the next event is put: this frame's events may all
            # go unlistened (never queued), and the batch must not wait for the next frame.
            self.flush()

    def flush(self) -> None:
        """End :attr:`defer` and wake the consumer if events wait."""
        self.defer = False
        if self._waiting and self._queue:
            self._wake.set()

    # ------------------------------------------------------------------ consumers
    @property
    def pending(self) -> int:
        """Events waiting to be delivered."""
        return len(self._queue)

    def add_sink(self, sink: Any) -> None:
        """Also put every data event into ``sink`` (anything with ``put``), for iterators."""
        self._sinks = self._sinks + [sink]

    def remove_sink(self, sink: Any) -> None:
        """Stop feeding ``sink``."""
        self._sinks = [s for s in self._sinks if s is not sink]

    def process(self, max_events: Optional[int] = None, timeout: float = 0.0) -> int:
        """Run callbacks for waiting events on the calling thread; returns how many ran.

        Waits up to ``timeout`` seconds for the first event when none is waiting.
        """
        ran = 0
        while max_events is None or ran < max_events:
            entry = self._pop()
            if entry is None:
                if ran or timeout <= 0 or not self._wait(timeout):
                    break
                timeout = 0.0
                continue
            self._deliver(*entry)
            ran += 1
        return ran

    def start(self) -> None:
        """Start the dispatcher thread (``"thread"`` mode only)."""
        self._stopping = False
        if self.mode != "thread":
            return
        self._thread = threading.Thread(
            target=self._run, name=f"brokerfeeds-{self._name}-dispatch", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: Optional[float]) -> bool:
        """Deliver what is waiting, then end the thread; True if it ended in time."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The dispatcher thread, while it runs."""
        return self._thread

    def _run(self) -> None:
        while True:
            entry = self._pop()
            if entry is not None:
                self._deliver(*entry)
                continue
            if self._stopping:
                return
            self._wait(self.idle_poll)

    def _wait(self, timeout: float) -> bool:
        self._waiting = True
        try:
            if self._queue or self._stopping:
                return True
            fired = self._wake.wait(timeout)
            self._wake.clear()
            return fired
        finally:
            self._waiting = False

    def _pop(self) -> Optional[Tuple[str, Any]]:
        try:
            entry = self._queue.popleft()
        except IndexError:
            return None
        if type(entry) is _QuoteSlot:
            with self._quote_lock:
                self._pending_quotes -= 1
                if self._quote_slots.get(entry.instrument) is entry:
                    del self._quote_slots[entry.instrument]
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
            except Exception as exc:  # noqa: BLE001 - user code must never kill the feed
                self._callback_failed(kind, fn, item, exc)
        if self._sinks and kind not in _NOT_SINK_KINDS:
            for sink in self._sinks:
                sink.put(item)

    def _callback_failed(self, kind: str, fn: Callback, item: Any, exc: Exception) -> None:
        self.callback_errors += 1
        name = getattr(fn, "__qualname__", repr(fn))
        self._log.error("callback %s for %s raised %r", name, kind, exc, exc_info=exc)
        if kind == "error":
            return  # an on_error callback that raises is only logged: no loop
        error = CallbackError(f"callback {name} for {kind} raised {exc!r}", callback=fn, event=item)
        error.__cause__ = exc
        for handler in self._callbacks.get("error"):
            try:
                handler(error)
            except Exception as inner:  # noqa: BLE001
                self._log.error("on_error callback raised %r", inner, exc_info=inner)


#: Kinds that ``feed.events()`` does not yield: lifecycle and raw messages, not data.
_NOT_SINK_KINDS = frozenset({"connect", "disconnect", "error", "message"})

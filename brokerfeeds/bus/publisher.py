"""The publisher: a feed's events appended to Redis Streams, off the feed's I/O thread.

How an event travels
--------------------
``publish(event)`` runs on the feed thread that produced the event (the I/O thread, under
the feed's adapter lock): it appends the event object to an in-memory queue and, only if
the publisher thread sleeps, wakes it. Nothing else: no encoding, no socket, no lock.

The publisher's own thread (``brokerfeeds-<name>-publish``) takes events off that queue,
encodes each one once (the event's JSON form, :func:`brokerfeeds.events.to_json`, with its
stream, type and the next sequence number, as ready-to-send RESP bytes) and writes them to
Redis in batches of up to ``batch_size``. A batch is one call of a small Lua script that
runs ``XADD`` for each entry: one write and one reply per batch (parsing a reply per entry
cost about a fifth of the thread's time; the JSON encoding is most of the rest, so the
next batch is encoded while Redis works on the current one). Where Redis refuses scripts
(an ACL without ``@scripting``) the batch is sent as pipelined ``XADD`` commands instead,
with one reply per entry; a flushed script cache (``NOSCRIPT``) is loaded again. A batch
goes as soon as the thread is free; with ``linger`` > 0, while events keep coming, the
thread first waits up to ``linger`` for more to share the round trip.

A batch whose reply was lost with its connection is *uncertain*: Redis may have applied
it. After reconnecting, the publisher reads the newest entries of the streams concerned
and drops from its retry whatever Redis already holds (same run id and sequence number),
so a retry does not append duplicates; consumers de-duplicate by ``(run, seq)`` anyway
(:class:`~brokerfeeds.bus.RedisEvents`), for what this check cannot see. Entries Redis
refuses for good (``WRONGTYPE``: the key holds something else) are dropped and reported;
other refusals (``OOM``, ``READONLY``...) are retried with backoff, reported once.

Entry format
------------
Every entry has four fields: ``run`` (a random id, new at every start of the publisher,
i.e. every run of its feed), ``type`` (the JSON ``"type"`` of the event: ``"order"``,
``"trade"``, ...), ``seq`` (1, 2, 3... within the run, in the order the feed produced the
events) and ``event`` (the JSON form, :func:`brokerfeeds.events.to_json`). Account events go
to ``stream.format(broker=..., account=...)`` (``"_"`` for an event without an account),
quotes (only with ``quotes=True``) to ``quote_stream``. Each ``XADD`` carries
``MAXLEN ~ maxlen`` (exactly ``maxlen`` with ``approximate=False``; no trimming with None).
The stream's entry ids are Redis's own (``*``).

While Redis is unreachable
--------------------------
Events wait, encoded (the event objects are released), in a buffer of at most
``max_buffer`` events; they are published in order once Redis is back. The outage is
reported once (log and ``on_error``). Under pressure quotes go first: quotes are always
coalesced to the newest per instrument while they wait, and once the buffer is full every
waiting quote is dropped before any account event is. Then the *oldest* account events
are dropped (orders are full snapshots: the newest state matters most): the first drop is
logged at once, and the count is reported once to ``on_error`` as :class:`BusDropped`
when Redis is back (or at ``stop()``). Nothing is ever dropped silently; ``stats`` counts
everything.

Stopping
--------
``stop(timeout)`` (or the feed's ``stop()``, for a publisher attached with
``feed.add_publisher``) publishes what waits while time remains, then drops the rest,
logging and reporting how many events could not be published and why.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import attrs

from .. import events as ev
from ..dispatch import CallbackRegistry
from ..errors import BrokerFeedsError
from ..reconnect import Backoff, ReconnectPolicy
from ..redact import safe_repr, safe_str
from ._common import (
    DEFAULT_QUOTE_STREAM,
    DEFAULT_STREAM,
    DEFAULT_URL,
    F_RUN,
    F_SEQ,
    NO_ACCOUNT,
    BusAuthenticationError,
    BusConnectionFailed,
    BusDropped,
    BusError,
    check_template,
)
from ._redis import Endpoint, redis

__all__ = ["RedisPublisher", "PublisherStats", "DEFAULT_MAXLEN", "DEFAULT_MAX_BUFFER"]

#: Default ``maxlen`` of every stream (approximate trimming).
DEFAULT_MAXLEN = 1_000_000
#: Default number of events that may wait while Redis is unreachable.
DEFAULT_MAX_BUFFER = 1_000_000

_monotonic = time.monotonic
_Quote = ev.Quote
_NETWORK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
#: A batch sent less than this long ago means events are flowing: ``linger`` applies.
_BUSY = 0.01
#: The publishing script: one call appends a whole batch (one reply instead of one per
#: entry: measured, parsing a reply per entry cost the publisher about a fifth of its time).
#: KEYS: the batch's streams. ARGV: run id, maxlen ("" for none), "~" or "=", then four per
#: entry: stream, type, seq, JSON. Returns the refused entries: index (from 1), error, ...
_SCRIPT = b"""
local run, maxlen, how = ARGV[1], ARGV[2], ARGV[3]
local failed = {}
local n = 0
for i = 4, #ARGV, 4 do
  n = n + 1
  local reply
  if maxlen == '' then
    reply = redis.pcall('XADD', ARGV[i], '*', 'run', run, 'type', ARGV[i + 1], 'seq', ARGV[i + 2],
                        'event', ARGV[i + 3])
  else
    reply = redis.pcall('XADD', ARGV[i], 'MAXLEN', how, maxlen, '*', 'run', run, 'type', ARGV[i + 1],
                        'seq', ARGV[i + 2], 'event', ARGV[i + 3])
  end
  if type(reply) == 'table' and reply.err then
    failed[#failed + 1] = n
    failed[#failed + 1] = reply.err
  end
end
return failed
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT).hexdigest().encode()

#: The JSON "type" of each event class (the ``type`` field of every entry).
_TYPE_NAMES: Dict[type, bytes] = {cls: name.encode() for name, cls in ev.EVENT_TYPES.items()}


@attrs.frozen(slots=True, kw_only=True)
class PublisherStats:
    """A snapshot of a publisher's counters (``publisher.stats``).

    ``published``: entries Redis acknowledged. ``pending``: events waiting now (encoded or
    not). ``dropped``: account events dropped because the buffer was full while Redis was
    unreachable; ``quotes_dropped`` / ``quotes_coalesced``: the same for quotes / quotes
    replaced by a newer one of the same instrument while waiting. ``unflushed_at_stop``:
    events still waiting when a ``stop()`` deadline passed. ``rejected``: entries Redis
    refused for good (the stream key holds another type). ``unencodable``: events with no
    JSON form. ``batches``: round trips that carried entries to Redis.
    ``connects`` / ``outages``: connections made / lost or failed.
    ``duplicates_avoided``: entries of an interrupted batch found in Redis after
    reconnecting, hence not sent again.
    """

    state: str
    run_id: Optional[str]
    published: int
    pending: int
    dropped: int
    quotes_dropped: int
    quotes_coalesced: int
    unflushed_at_stop: int
    rejected: int
    unencodable: int
    batches: int
    connects: int
    outages: int
    duplicates_avoided: int


class _Run:
    """One run of the publisher thread (``start()`` to ``stop()``)."""

    __slots__ = ("run_id", "stopping", "deadline", "thread", "finished", "complete", "abandoned")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.stopping = False
        self.deadline = float("inf")
        self.thread: Optional[threading.Thread] = None
        self.finished = threading.Event()
        self.complete = True  # every event was published (set False when some were dropped at stop)
        self.abandoned = False  # stop() gave up waiting for the thread: it must touch nothing


class _Signal:
    """A wake-up flag on one raw lock (held: not set) whose ``wait()`` consumes it, unlike
    :class:`threading.Event`: after a producer woke the thread, the ``linger`` wait that
    follows is ended only by a new ``set()`` (``stop()``), never by the old one, and a
    ``stop()`` racing with it is never lost. ``set()`` runs on the feed's I/O thread: one
    C call, no Condition."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Set the flag (wakes a waiting thread); safe from any thread, idempotent."""
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def clear(self) -> None:
        """Clear the flag."""
        self._lock.acquire(False)

    def wait(self, timeout: float) -> bool:
        """Wait until the flag is set or ``timeout`` passes; True if it was set. Consumes
        the flag: callers clear it before waiting anyway."""
        return self._lock.acquire(True, max(0.0, timeout))


class _Broken(Exception):
    """The connection failed mid-batch; the first ``uncertain`` entries of the outbox may be in Redis."""

    def __init__(self, cause: BaseException, uncertain: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.uncertain = uncertain


class _Refused(Exception):
    """Redis answered some entries with an error that may pass (OOM, READONLY, NOPERM...);
    ``at_once``: retry now (the script was missing, or scripts are refused)."""

    def __init__(self, cause: BaseException, at_once: bool = False) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.at_once = at_once


class RedisPublisher:
    """Publishes a feed's events to Redis Streams; attach it with ``feed.add_publisher(p)``.

    ``url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix://path``. ``stream`` / ``quote_stream``: stream-name templates (``{broker}``,
    ``{account}``). ``maxlen``: trim each stream to about that many entries (None: never
    trim; ``approximate=False``: exactly). ``quotes``: publish quotes too (default: account
    events only: orders, fills, positions, P&L, holdings, balances, notices and the broker
    specific ones). ``max_buffer``: events that may wait while Redis is unreachable.
    ``batch_size``: most entries per pipelined round trip. ``linger``: while events keep
    coming (a batch went out less than 10 ms ago), wait up to this long (seconds) for more
    to join the next batch: fewer round trips for at most ``linger`` of added latency; the
    first event after a quiet spell goes at once. Default 0: a batch goes as soon as the
    thread is free (lowest latency). Measured at 2,000 events/s (benchmarks/README.md),
    ``linger=0.001`` takes about a third off the publisher's CPU and adds ~1-2 ms.

    Construction does no I/O; a bad URL raises ValueError at once (never showing the
    password). One publisher may serve several feeds (its thread runs while any of them
    does). Used alone: ``start()``, ``publish(event)``, ``stop()`` (or ``with``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        stream: str = DEFAULT_STREAM,
        *,
        maxlen: Optional[int] = DEFAULT_MAXLEN,
        approximate: bool = True,
        quotes: bool = False,
        quote_stream: str = DEFAULT_QUOTE_STREAM,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        batch_size: int = 1_000,
        linger: float = 0.0,
        connect_timeout: float = 5.0,
        socket_timeout: float = 5.0,
        reconnect: Optional[ReconnectPolicy] = None,
        name: str = "bus",
        logger: Optional[logging.Logger] = None,
    ) -> None:
        check_template(stream, "stream")
        check_template(quote_stream, "quote_stream")
        if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 1):
            raise ValueError(f"maxlen must be a positive int or None, got {maxlen!r}")
        if not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be a positive int, got {max_buffer!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(linger, (int, float)) or isinstance(linger, bool) or not 0 <= linger <= 1:
            raise ValueError(f"linger must be a number of seconds from 0 to 1, got {linger!r}")
        self.name = name
        self._endpoint = Endpoint(url, connect_timeout=connect_timeout, socket_timeout=socket_timeout,
                                  logger=logger, prefix=f"[{name}] ")
        self._log = self._endpoint.log
        #: The Redis URL, its password masked.
        self.url = self._endpoint.shown
        self.stream = stream
        self.quote_stream = quote_stream
        self.maxlen = maxlen
        self.approximate = approximate
        self.quotes = quotes
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.linger = float(linger)
        self.reconnect_policy = reconnect or ReconnectPolicy(initial=0.1, maximum=5.0)
        self._trim: List[bytes] = [] if maxlen is None else \
            [b"MAXLEN", b"~" if approximate else b"=", str(maxlen).encode()]
        self._script_trim = _bulk(b"" if maxlen is None else str(maxlen).encode()) + \
            _bulk(b"~" if approximate else b"=")
        self._scripted = True  # False once Redis refused scripts: plain pipelined XADDs
        self._script_loaded = False
        # Producer side (feed threads): append only. Consumer side: the publisher thread.
        self._incoming: Deque[ev.Event] = deque()
        self._sleeping = False
        self._wake = _Signal()
        # The publisher thread's own (encoded entries, the quotes waiting, the entry prefixes).
        self._outbox: Deque[bytes] = deque()
        self._quote_box: Dict[Tuple[str, str], ev.Event] = {}
        self._prefixes: Dict[Tuple[type, str, Optional[str]], bytes] = {}
        self._uncertain = 0
        self._inflight = 0
        self._seq = 0
        # Lifecycle.
        self._lock = threading.Lock()
        self._run: Optional[_Run] = None
        self._users = 0
        self._manual = False
        self._state = "idle"
        self._state_cond = threading.Condition()
        self._last_error: Optional[BusError] = None
        self._callbacks = CallbackRegistry()
        self._reporters: Tuple[Callable[[BrokerFeedsError], None], ...] = ()
        # Counters (each written by one thread).
        self._published = 0
        self._dropped_on_entry = 0  # feed threads
        self._quotes_dropped_on_entry = 0  # feed threads
        self._dropped_in_buffer = 0  # publisher thread
        self._quotes_dropped = 0
        self._quotes_coalesced = 0
        self._drops_reported = 0
        self._drop_warned = False
        self._unflushed_at_stop = 0
        self._rejected = 0
        self._unencodable = 0
        self._unencodable_types: Set[type] = set()
        self._batches = 0
        self._last_batch = -1.0  # time.monotonic() of the last batch sent
        self._connects = 0
        self._outages = 0
        self._duplicates_avoided = 0

    # ================================================================ the producer side
    def publish(self, event: ev.Event) -> None:
        """Queue ``event`` for Redis. Never blocks and never raises; safe from any thread.

        Quotes are ignored unless the publisher was made with ``quotes=True``.
        """
        if event.__class__ is _Quote and not self.quotes:
            return
        incoming = self._incoming
        if len(incoming) >= self.max_buffer:  # the publisher thread is far behind: drop here
            if event.__class__ is _Quote:
                self._quotes_dropped_on_entry += 1
            else:
                self._dropped_on_entry += 1
            return
        incoming.append(event)
        if self._sleeping:
            self._wake.set()

    # ================================================================ hooks for Feed.add_publisher
    def feed_attached(self, report: Callable[[BrokerFeedsError], None]) -> None:
        """Called by ``feed.add_publisher``: report errors through the feed too (its log and
        ``on_error``)."""
        self._reporters = self._reporters + (report,)

    def feed_started(self) -> None:
        """Called by a feed's ``start()``: the publisher runs while any of its feeds does."""
        with self._lock:
            self._users += 1
            self._start_locked()

    def feed_stopping(self, deadline: float) -> None:
        """Called by a feed's ``stop()`` once that feed produces no more events: the last
        feed using the publisher makes it publish what waits until ``deadline``
        (``time.monotonic()``), then stop. Returns at once."""
        with self._lock:
            if self._users > 0:
                self._users -= 1
            if self._users == 0 and not self._manual:
                self._begin_stop(deadline)

    def feed_stopped(self, deadline: float) -> bool:
        """Called by a feed's ``stop()`` after :meth:`feed_stopping`: wait (until ``deadline``)
        for the publisher to finish; True if every event was published (or the publisher
        keeps running for another feed)."""
        run = self._run
        if run is None or not run.stopping:
            return True
        return self._finish_stop(run, deadline)

    # ================================================================ public: lifecycle
    def start(self) -> "RedisPublisher":
        """Start the publisher thread (idempotent). A feed does this itself (``add_publisher``)."""
        with self._lock:
            self._manual = True
            self._start_locked()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Publish what waits for at most ``timeout`` seconds, then stop.

        Returns True if every event was published. Otherwise the rest is dropped: logged
        with the count and the reason, reported to ``on_error`` (:class:`BusDropped`) and
        counted in ``stats.unflushed_at_stop``. Idempotent; safe from any thread.
        """
        deadline = _monotonic() + max(0.0, timeout)
        with self._lock:
            self._users = 0
            self._manual = False
            run = self._begin_stop(deadline)
        if run is None:
            return True
        return self._finish_stop(run, deadline)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything published so far is in Redis (True), or ``timeout`` passes."""
        deadline = _monotonic() + timeout
        while self.pending:
            if _monotonic() >= deadline or self._run is None or self._run.finished.is_set():
                return not self.pending
            time.sleep(0.005)
        return True

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until connected to Redis (True) or ``timeout`` passes (False).

        Raises :class:`BusAuthenticationError` if Redis refused the credentials (the
        publisher keeps buffering and retrying, slowly, in case they are fixed).
        """
        deadline = None if timeout is None else _monotonic() + timeout
        with self._state_cond:
            while self._state != "connected":
                if isinstance(self._last_error, BusAuthenticationError):
                    raise self._last_error
                if self._state in ("idle", "stopped"):
                    return False
                remaining = None if deadline is None else deadline - _monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._state_cond.wait(remaining)
        return True

    @property
    def state(self) -> str:
        """``"idle"``, ``"connecting"``, ``"connected"``, ``"disconnected"`` or ``"stopped"``."""
        return self._state

    @property
    def run_id(self) -> Optional[str]:
        """The id of the current run (in every entry's ``run`` field), None before ``start()``."""
        run = self._run
        return run.run_id if run is not None else None

    @property
    def error(self) -> Optional[BusError]:
        """The last connection error (None once connected again)."""
        return self._last_error

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by Redis (queued, encoded or in flight)."""
        return len(self._incoming) + len(self._outbox) + len(self._quote_box) + self._inflight

    @property
    def stats(self) -> PublisherStats:
        """Counters: published, pending, dropped, ..."""
        return PublisherStats(
            state=self._state,
            run_id=self.run_id,
            published=self._published,
            pending=self.pending,
            dropped=self._dropped_on_entry + self._dropped_in_buffer,
            quotes_dropped=self._quotes_dropped + self._quotes_dropped_on_entry,
            quotes_coalesced=self._quotes_coalesced,
            unflushed_at_stop=self._unflushed_at_stop,
            rejected=self._rejected,
            unencodable=self._unencodable,
            batches=self._batches,
            connects=self._connects,
            outages=self._outages,
            duplicates_avoided=self._duplicates_avoided,
        )

    def on_error(self, fn: Callable[[BrokerFeedsError], Any]) -> Callable[[BrokerFeedsError], Any]:
        """Call ``fn(error)`` for every problem (on the publisher's thread). A publisher
        attached to a feed also reports to the feed's ``on_error``."""
        self._callbacks.add("error", fn)
        return fn

    def remove_callback(self, fn: Callable[..., Any]) -> bool:
        """Unregister ``fn``; True if it was registered."""
        return self._callbacks.remove(fn)

    def __enter__(self) -> "RedisPublisher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisPublisher(url={self.url!r}, stream={self.stream!r}, state={self._state!r})"

    # ================================================================ lifecycle internals
    def _start_locked(self) -> None:
        run = self._run
        if run is not None and not run.stopping:
            return
        run = _Run(uuid.uuid4().hex[:16])
        self._run = run
        self._seq = 0
        self._prefixes.clear()
        self._uncertain = 0
        self._last_error = None
        self._set_state("connecting", restart=True)
        run.thread = threading.Thread(target=self._serve, args=(run,), name=f"brokerfeeds-{self.name}-publish",
                                      daemon=True)
        run.thread.start()

    def _begin_stop(self, deadline: float) -> Optional[_Run]:
        run = self._run
        if run is None:
            return None
        if not run.stopping or deadline < run.deadline:
            run.deadline = deadline
        run.stopping = True
        self._wake.set()
        return run

    def _finish_stop(self, run: _Run, deadline: float) -> bool:
        thread = run.thread
        if thread is threading.current_thread():
            return False  # stop() from an on_error callback: the thread finishes by itself
        run.finished.wait(max(0.0, deadline - _monotonic()))
        if run.finished.is_set():
            if thread is not None:
                thread.join(max(0.0, deadline - _monotonic()))
            return run.complete
        # The thread is stuck in a Redis call (a stalled server): account for it here.
        run.abandoned = True
        self._drop_rest(run, "the publisher thread was stuck in a Redis call")
        self._log.warning("stop(): the publisher thread did not end in time; left behind, it ends by itself "
                          "when its current Redis call returns (within socket_timeout)")
        self._set_state("stopped")
        return False

    def _set_state(self, state: str, restart: bool = False) -> None:
        with self._state_cond:
            if self._state == "stopped" and not restart:
                return
            self._state = state
            self._state_cond.notify_all()

    # ================================================================ the publisher thread
    def _serve(self, run: _Run) -> None:
        conn: Any = None
        backoff = Backoff(self.reconnect_policy)
        next_try = 0.0
        outage: Optional[BusError] = None
        refusing = False
        try:
            while not run.abandoned:
                now = _monotonic()
                connected = conn is not None and now >= next_try
                # Connected: encode no more than the next batch needs (the rest is encoded
                # while Redis works on that batch). Disconnected: everything (the bound holds).
                self._drain(max(0, self.batch_size - len(self._outbox)) if connected else None)
                if run.stopping and (not self.pending or now >= run.deadline):
                    break
                if conn is None:
                    if now < next_try:
                        self._nap(run, min(next_try, run.deadline) - now)
                        continue
                    self._set_state("connecting")
                    try:
                        conn = self._endpoint.connection()
                        self._scripted, self._script_loaded = True, False
                        if self._uncertain:
                            self._reconcile(conn, run)
                    except (BusError, *_NETWORK_ERRORS, redis.RedisError) as exc:
                        _close(conn)
                        conn = None
                        error = exc if isinstance(exc, BusError) else self._endpoint.error(exc)
                        backoff = backoff.increment()
                        auth = isinstance(error, BusAuthenticationError)
                        next_try = _monotonic() + (self.reconnect_policy.maximum if auth else backoff.delay)
                        if outage is None or type(outage) is not type(error):
                            self._outages += outage is None
                            self._report_outage(error)
                        outage = error
                        self._last_error = error
                        self._set_state("disconnected")
                        continue
                    backoff = backoff.reset()
                    self._connects += 1
                    self._last_error = None
                    if outage is not None:
                        self._log.info("Redis at %s is reachable again: publishing %d waiting event(s)",
                                       self.url, self.pending)
                        outage = None
                    self._report_drops()
                    self._set_state("connected")
                    continue
                if now < next_try:  # Redis refused entries a moment ago: give it time
                    self._nap(run, min(next_try, run.deadline) - now)
                    continue
                if not self._outbox and not self._quote_box:
                    if not run.stopping:
                        self._idle(run)
                    continue
                try:
                    self._load_script(conn)
                    self._send_batch(conn, run)
                    refusing = False
                except _Broken as broken:
                    _close(conn)
                    conn = None
                    if run.abandoned:
                        break
                    self._uncertain = broken.uncertain
                    error = self._endpoint.error(broken.cause, "publish to")
                    backoff = backoff.increment()
                    next_try = _monotonic() + backoff.delay
                    self._outages += 1
                    self._report_outage(error)
                    outage = self._last_error = error
                    self._set_state("disconnected")
                except _Refused as refused:
                    if run.abandoned:
                        break
                    if refused.at_once:
                        continue
                    backoff = backoff.increment()
                    next_try = _monotonic() + backoff.delay
                    if not refusing:
                        refusing = True
                        self._report(BusError(f"Redis at {self.url} refused events (retrying): "
                                              f"{self._endpoint.redactor.redact(safe_str(refused.cause))}"))
        except BaseException as exc:  # noqa: BLE001 - a bug: say so, lose nothing silently
            self._log.error("publisher thread crashed: %s", safe_repr(exc), exc_info=exc)
            self._report(BusError(f"internal error: the publisher thread crashed: {safe_repr(exc)}"))
        finally:
            _close(conn)
            if not run.abandoned:
                self._drop_rest(run, "Redis was unreachable" if outage is not None else "stop()'s time ran out")
                self._report_drops()
                self._set_state("stopped")
            run.finished.set()

    def _idle(self, run: _Run) -> None:
        """Sleep until a feed publishes (or ``stop()``); checked again before sleeping."""
        self._sleeping = True
        self._wake.clear()
        if not self._incoming and not run.stopping:
            self._wake.wait(1.0)
        self._sleeping = False
        # Events keep coming (a batch went out moments ago): let the next few join this one.
        # Measured at 2,000 events/s, a round trip per event or two was most of the
        # publisher's time; 1 ms of lingering took a third off its CPU per event.
        if self.linger and not run.stopping and len(self._incoming) < self.batch_size and \
                _monotonic() - self._last_batch < _BUSY:
            self._wake.wait(self.linger)  # only stop() sets it now: producers see us awake

    def _nap(self, run: _Run, seconds: float) -> None:
        """While Redis is away: sleep (at most 50 ms, so arriving events get encoded and the
        buffer bound holds), unless stop() wakes us."""
        if seconds > 0 and not run.stopping:
            self._wake.clear()
            self._wake.wait(min(seconds, 0.05))

    def _drain(self, limit: Optional[int]) -> None:
        """Encode up to ``limit`` (None: all) queued events into the outbox; keep the bound."""
        incoming = self._incoming
        count = len(incoming) if limit is None else min(len(incoming), limit)
        if count:
            outbox_append = self._outbox.append
            quote_box = self._quote_box
            encode = self._encode
            popleft = incoming.popleft
            for _ in range(count):
                event = popleft()
                if event.__class__ is _Quote:
                    key = (event.broker, event.instrument)
                    if key in quote_box:
                        self._quotes_coalesced += 1
                    quote_box[key] = event
                    continue
                packed = encode(event)
                if packed is not None:
                    outbox_append(packed)
        if len(self._outbox) + len(self._quote_box) + len(incoming) > self.max_buffer:
            self._shed()

    def _shed(self) -> None:
        """The buffer is over ``max_buffer``: quotes go first, then the oldest account events."""
        if self._quote_box:
            self._quotes_dropped += len(self._quote_box)
            self._quote_box.clear()
        excess = len(self._outbox) + len(self._incoming) - self.max_buffer
        if excess <= 0:
            return
        outbox = self._outbox
        drop = min(excess, len(outbox))
        for _ in range(drop):
            outbox.popleft()
        self._uncertain = max(0, self._uncertain - drop)
        self._dropped_in_buffer += drop
        if not self._drop_warned:
            self._drop_warned = True
            self._log.warning("the buffer is full (%d events) while Redis at %s is unreachable: dropping the "
                              "oldest account events (the count is reported when Redis is back)",
                              self.max_buffer, self.url)

    def _encode(self, event: ev.Event) -> Optional[bytes]:
        """``event`` as one encoded entry (stream, type, sequence number, JSON: four RESP
        bulk strings), with the next sequence number."""
        cls = event.__class__
        account = getattr(event, "account", None)
        key = (cls, event.broker, account)
        prefix = self._prefixes.get(key)
        try:
            if prefix is None:
                prefix = self._prefix(event, account)
                self._prefixes[key] = prefix
            data = ev.to_json_bytes(event)
        except Exception as exc:  # noqa: BLE001 - an event with no JSON form must not stop the others
            self._unencodable += 1
            if cls not in self._unencodable_types:
                self._unencodable_types.add(cls)
                self._report(BusError(f"{cls.__name__} events cannot be published (no JSON form): "
                                      f"{safe_repr(exc)}"))
            return None
        self._seq += 1
        seq = b"%d" % self._seq
        return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (prefix, len(seq), seq, len(data), data)

    def _prefix(self, event: ev.Event, account: Optional[str]) -> bytes:
        cls = event.__class__
        type_name = _TYPE_NAMES.get(cls)
        if type_name is None:
            raise TypeError(f"{cls.__name__} has no JSON form")
        template = self.quote_stream if cls is _Quote else self.stream
        stream = template.format(broker=event.broker, account=account or NO_ACCOUNT).encode()
        return _bulk(stream) + _bulk(type_name)

    def _send_batch(self, conn: Any, run: _Run) -> None:
        """Write one batch, encode the next meanwhile, read the reply (raises _Broken / _Refused).

        What Redis did not take goes back to the front of the outbox, unless ``stop()``
        gave up on this thread meanwhile (it counted the batch as dropped)."""
        outbox = self._outbox
        batch = [outbox.popleft() for _ in range(min(len(outbox), self.batch_size))]
        if self._quote_box:
            quotes, self._quote_box = self._quote_box, {}
            for quote in quotes.values():
                packed = self._encode(quote)
                if packed is not None:
                    batch.append(packed)
        self._inflight = len(batch)
        self._batches += 1
        self._last_batch = _monotonic()
        run_id = _bulk(run.run_id.encode())
        scripted = self._scripted
        try:
            try:
                command = self._script_command(batch, run_id) if scripted else self._xadd_commands(batch, run_id)
                conn.send_packed_command([command], check_health=False)
            except _NETWORK_ERRORS as exc:
                self._requeue(run, batch)
                raise _Broken(exc, len(batch)) from None
            if self._incoming and len(outbox) < self.batch_size:
                # Encode the next batch while Redis works on this one (measured: the
                # encoding is ~3/4 of the thread's time; Redis runs on another core).
                self._drain(self.batch_size - len(outbox))
            if scripted:
                failures = self._read_script_reply(conn, run, batch)
            else:
                failures = self._read_xadd_replies(conn, run, batch)
        finally:
            self._inflight = 0
        failed: List[bytes] = []
        refusal: Optional[str] = None
        for index, text in failures:
            if text.startswith(("WRONGTYPE", "ERR")):
                self._rejected += 1
                self._report(BusDropped(f"Redis at {self.url} refused an entry for good, dropped: {text}",
                                        dropped=1, reason="refused"))
            else:
                failed.append(batch[index])
                refusal = refusal or text
        self._published += len(batch) - len(failures)
        if failed:
            self._requeue(run, failed)
            raise _Refused(RuntimeError(refusal))

    def _script_command(self, batch: List[bytes], run_id: bytes) -> bytes:
        """One EVALSHA of the publishing script: the whole batch, one reply."""
        streams = list(dict.fromkeys(map(_first_bulk, batch)))
        head = [b"EVALSHA", _SCRIPT_SHA, b"%d" % len(streams), *streams]
        args = len(head) + 3 + 4 * len(batch)
        return (b"*%d\r\n" % args + b"".join(_bulk(arg) for arg in head) + run_id + self._script_trim
                + b"".join(batch))

    def _xadd_commands(self, batch: List[bytes], run_id: bytes) -> bytes:
        """The batch as plain pipelined XADD commands (when Redis refuses scripts)."""
        head = b"*%d\r\n$4\r\nXADD\r\n" % (11 + len(self._trim))
        trim = b"".join(_bulk(arg) for arg in self._trim) + b"$1\r\n*\r\n$3\r\nrun\r\n" + run_id
        out = []
        for entry in batch:
            stream, type_name, seq, data = _bulks(entry)
            out.append(b"".join((head, stream, trim, b"$4\r\ntype\r\n", type_name, b"$3\r\nseq\r\n", seq,
                                 b"$5\r\nevent\r\n", data)))
        return b"".join(out)

    def _read_script_reply(self, conn: Any, run: _Run, batch: List[bytes]) -> List[Tuple[int, str]]:
        """The script's reply: the entries Redis refused (index, error), usually none."""
        try:
            reply = conn.read_response()
        except redis.ResponseError as exc:
            # Nothing ran. NOSCRIPT: the script cache was flushed (load it again). Anything
            # else (scripts not allowed, OOM, BUSY...): plain XADDs, whose per-entry replies
            # tell what can be retried.
            text = safe_str(exc)
            self._script_loaded = False
            if "NOSCRIPT" not in text:
                self._scripted = False
                self._log.info("the publishing script failed (%s): publishing with plain pipelined XADD "
                               "commands", text)
            self._requeue(run, batch)
            raise _Refused(exc, at_once=True) from None
        except _NETWORK_ERRORS as exc:
            self._requeue(run, batch)
            raise _Broken(exc, len(batch)) from None
        pairs = list(reply or ())
        return [(int(pairs[i]) - 1, safe_str(_text(pairs[i + 1]))) for i in range(0, len(pairs) - 1, 2)]

    def _read_xadd_replies(self, conn: Any, run: _Run, batch: List[bytes]) -> List[Tuple[int, str]]:
        failures: List[Tuple[int, str]] = []
        read = conn.read_response
        for index in range(len(batch)):
            try:
                read()
            except redis.ResponseError as exc:
                failures.append((index, safe_str(exc)))
            except _NETWORK_ERRORS as exc:
                done = index - len(failures)
                self._published += done
                unsent = [batch[i] for i, _ in failures] + batch[index:]
                self._requeue(run, unsent)
                raise _Broken(exc, len(unsent)) from None
        return failures

    def _requeue(self, run: _Run, entries: List[bytes]) -> None:
        """Put entries back at the front of the outbox, in order."""
        if not run.abandoned:
            self._outbox.extendleft(reversed(entries))

    def _load_script(self, conn: Any) -> None:
        """On every connection: make sure Redis has the publishing script, or use plain XADDs."""
        if not self._scripted or self._script_loaded:
            return
        try:
            conn.send_command("SCRIPT", "LOAD", _SCRIPT, check_health=False)
            sha = conn.read_response()
        except _NETWORK_ERRORS as exc:
            raise _Broken(exc, 0) from None
        except redis.ResponseError as exc:
            self._scripted = False
            self._log.info("Redis refuses scripts (%s): publishing with plain pipelined XADD commands",
                           safe_str(exc))
            return
        if _text(sha).encode() != _SCRIPT_SHA:
            self._scripted = False
            return
        self._script_loaded = True

    def _reconcile(self, conn: Any, run: _Run) -> None:
        """After a connection broke mid-batch: drop from the retry what Redis already has."""
        count = min(self._uncertain, len(self._outbox))
        front = list(itertools.islice(self._outbox, 0, count))
        keys = [_entry_key(packed) for packed in front]
        per_stream: Dict[bytes, int] = {}
        for stream, _ in keys:
            per_stream[stream] = per_stream.get(stream, 0) + 1
        run_id = run.run_id.encode()
        present: Set[Tuple[bytes, bytes]] = set()
        for stream, n in per_stream.items():
            conn.send_command("XREVRANGE", stream, "+", "-", "COUNT", n + 100, check_health=False)
            for _entry_id, fields in conn.read_response() or ():
                values = dict(zip(fields[::2], fields[1::2]))
                if values.get(F_RUN) == run_id:
                    present.add((stream, values.get(F_SEQ, b"")))
        keep = [packed for packed, key in zip(front, keys) if key not in present]
        for _ in range(count):
            self._outbox.popleft()
        self._outbox.extendleft(reversed(keep))
        already = count - len(keep)
        self._published += already
        self._duplicates_avoided += already
        self._uncertain = 0
        if already:
            self._log.info("%d entr%s of the interrupted batch had reached Redis: not sent again",
                           already, "y" if already == 1 else "ies")

    def _drop_rest(self, run: _Run, reason: str) -> None:
        """At stop: drop and report whatever still waits."""
        left = len(self._incoming) + len(self._outbox) + len(self._quote_box) + self._inflight
        self._incoming.clear()
        self._outbox.clear()
        self._quote_box.clear()
        self._uncertain = 0
        if not left:
            return
        run.complete = False
        self._unflushed_at_stop += left
        self._report(BusDropped(f"stop(): {left} event(s) could not be published to Redis at {self.url} "
                                f"({reason}): dropped", dropped=left, reason="stop"))

    # ================================================================ reporting
    def _report_outage(self, error: BusError) -> None:
        if isinstance(error, BusAuthenticationError):
            self._report(error)
        else:
            self._report(BusConnectionFailed(f"{error}; buffering events (up to {self.max_buffer:,}) and retrying"))

    def _report_drops(self) -> None:
        """Report, once, how many account events were dropped since the last report."""
        total = self._dropped_on_entry + self._dropped_in_buffer
        new = total - self._drops_reported
        self._drop_warned = False
        if new <= 0:
            return
        self._drops_reported = total
        self._report(BusDropped(f"{new} account event(s) were dropped: the buffer of {self.max_buffer:,} events "
                                f"was full while Redis at {self.url} was unreachable", dropped=new, reason="buffer"))

    def _report(self, error: BrokerFeedsError) -> None:
        """Log ``error`` (or let the feeds it is attached to log it) and pass it to ``on_error``."""
        self._endpoint.redactor.redact_error(error)
        if self._reporters:
            for report in self._reporters:
                try:
                    report(error)
                except Exception:  # noqa: BLE001 - reporting must not take the thread down
                    pass
        else:
            self._log.warning("%s: %s", type(error).__name__, safe_str(error))
        for fn in self._callbacks.get("error"):
            try:
                fn(error)
            except Exception as exc:  # noqa: BLE001 - user code
                self._log.error("on_error callback %s raised %s", safe_repr(fn), safe_repr(exc))


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.disconnect()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _first_bulk(entry: bytes) -> bytes:
    """The value of the first bulk string of ``entry`` (its stream)."""
    end = entry.index(b"\r\n")
    size = int(entry[1:end])
    return entry[end + 2:end + 2 + size]


def _bulks(entry: bytes) -> List[bytes]:
    """The bulk strings of an encoded entry, each still in its RESP form."""
    out: List[bytes] = []
    pos = 0
    while pos < len(entry):
        end = entry.index(b"\r\n", pos)
        stop = end + 2 + int(entry[pos + 1:end]) + 2
        out.append(entry[pos:stop])
        pos = stop
    return out


def _entry_key(entry: bytes) -> Tuple[bytes, bytes]:
    """The (stream, seq) of an encoded entry."""
    stream, _type, seq, _data = _bulks(entry)
    return _first_bulk(stream), _first_bulk(seq)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

"""The public front of every broker feed: callbacks, subscriptions, lifecycle, stats.

Written once for every broker. A broker's feed class subclasses :class:`Feed` with its
sans-I/O adapter class as the type parameter (``class IbkrFeed(Feed[IbkrProtocol])``) and
supplies a few hooks: where to connect, what to reconcile after a connect, what to poll.

Where things live (one obvious place each):

* :mod:`brokerfeeds.feed` (here) — the front: callbacks, ``subscribe_*`` plumbing,
  ``start``/``stop``, ``stats``, and the hand-over of adapter outputs to the dispatcher.
* :mod:`brokerfeeds.supervisor` — the ``io`` thread: connect, serve, liveness, backoff.
* :mod:`brokerfeeds.owner` — the one owner of adapter state, and why events leave in
  the order the state changed.
* :mod:`brokerfeeds.subscriptions` — the subscription book re-sent after every reconnect.
* :mod:`brokerfeeds.scheduler` — the ``rest`` thread: keep-alives, polls, reconciliation.
* :mod:`brokerfeeds.dispatch` — where and when user callbacks run.

Threads of a running feed (all named ``brokerfeeds-<name>-...``): ``io`` (always),
``rest`` (feeds with a REST side), ``dispatch`` (``dispatch="thread"``, the default).

Lifetime (the contract with users):

* Call ``stop()`` — or use ``with feed:`` — when done. ``stop(timeout)`` delivers what
  waits until ``timeout``, then drops the rest (counted in ``stats.dropped_at_stop`` and
  logged once); after it returns no callback starts. A thread it could not end in time (a
  callback, an HTTP call or a token provider that did not return) is named in a warning
  and ends by itself when that call returns, without touching the feed again.
* A running feed is referenced by its own threads, so dropping the last reference to it
  does NOT stop it or free it: its connection and threads live on. At interpreter exit a
  hook stops every feed still running, giving each one second to deliver what waits and
  logging what it had to drop (the threads are daemons: without the hook, queued
  callbacks would vanish silently).
* A feed thread never dies of user code (see :mod:`brokerfeeds.dispatch`). If one dies
  of anything else (a bug), the feed reports it (log and ``on_error``) and stops with that
  error (``feed.error``; ``run_forever`` raises it) — never a feed that says "connected"
  while nothing is read or delivered.
* Publishers added with ``add_publisher`` (e.g. to Redis, :mod:`brokerfeeds.bus`) run
  while the feed does; ``stop(timeout)`` gives them the same deadline to publish what waits.
* Secrets the feed knows (tokens, session ids, keys) are masked in every log line and in
  the message of every error it reports or raises, whoever built it, and in
  :class:`~brokerfeeds.events.Notice` text. ``raw`` (the broker's message) stays raw.
"""

from __future__ import annotations

import abc
import datetime as _dt
import logging
import threading
import time
import urllib.parse
import weakref
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Generic,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
    cast,
)
from typing import Protocol as Structural

import attrs

from . import events as ev
from . import lifecycle
from .callbacks import EventCallbacks
from .dispatch import CallbackRegistry, Dispatcher, EventIterator, Lane
from .errors import BrokerFeedsError, ProtocolError
from .lifecycle import Run
from .owner import AdapterOwner, P, protocol_error
from .protocol import (
    Control,
    Fatal,
    NotReady,
    Output,
    RawMessage,
    Ready,
    Reconnect,
    Refresh,
    Report,
    Send,
    Subscription,
    excerpt,
)
from .reconnect import ReconnectPolicy
from .redact import Redactor, RedactingLogger, safe_repr, safe_str
from .rest import RestClient
from .scheduler import PeriodicJob, RestScheduler
from .subscriptions import SubscriptionBook
from .supervisor import Supervisor
from .transport import ConnectTarget, check_ws_url

__all__ = ["Feed", "FeedStats", "STATES", "PeriodicJob", "EventPublisher"]

STATES = ("idle", "connecting", "connected", "reconnecting", "stopped")
_monotonic = time.monotonic

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
ConnectHandler = TypeVar("ConnectHandler", bound=Callable[[ev.Connected], Any])
DisconnectHandler = TypeVar("DisconnectHandler", bound=Callable[[ev.Disconnected], Any])
MessageHandler = TypeVar("MessageHandler", bound=Callable[[Any], Any])


class EventPublisher(Structural):
    """What :meth:`Feed.add_publisher` needs: something that forwards a feed's events
    elsewhere, e.g. :class:`brokerfeeds.bus.RedisPublisher` (Redis Streams)."""

    def feed_attached(self, report: Callable[[BrokerFeedsError], None]) -> None:
        """Added to a feed: ``report(error)`` logs and passes an error to the feed's ``on_error``."""

    def feed_started(self) -> None:
        """The feed starts (before it connects)."""

    def publish(self, event: ev.Event) -> None:
        """One data event, on the feed thread that produced it, in order: must never block."""

    def feed_stopping(self, deadline: float) -> None:
        """The feed produces no more events: publish what waits until ``deadline``
        (``time.monotonic()``). Must return at once."""

    def feed_stopped(self, deadline: float) -> bool:
        """Wait, at most until ``deadline``, for that; True if every event was published."""


@attrs.frozen(slots=True, kw_only=True)
class FeedStats:
    """A snapshot of a feed's counters (``feed.stats``).

    ``pending_events``: events waiting for callbacks now. ``quotes_coalesced`` /
    ``quotes_dropped``: quotes replaced by a newer one of the same instrument / dropped to
    keep at most ``max_pending_quotes`` waiting. ``dropped_at_stop``: events still
    undelivered when a ``stop()`` deadline passed (the only account events ever dropped).
    """

    state: str
    messages: int
    events: int
    malformed: int
    connects: int
    reconnects: int
    callback_errors: int
    quotes_coalesced: int
    pending_events: int
    quotes_dropped: int = 0
    dropped_at_stop: int = 0
    last_message_at: Optional[_dt.datetime]
    connected_since: Optional[_dt.datetime]
    extra: Mapping[str, int] = attrs.field(factory=dict)


class Feed(EventCallbacks, abc.ABC, Generic[P]):
    """Base class of every broker feed. See the package README for the full contract.

    Construction never does I/O. Timing knobs (seconds) exist so tests can run fast;
    the defaults are the brokers' documented cadences (subclasses set their own).
    ``max_message_size`` bounds what one message from the server may cost in memory:
    a larger one fails the connection (reported to ``on_error``) and the feed reconnects.

    Memory under a slow consumer: at most ``max_pending_quotes`` quotes ever wait (older
    ones are coalesced or dropped, see :mod:`brokerfeeds.dispatch`); account events are
    never dropped, so their backlog grows with memory. Past ``max_pending_events`` waiting
    events the feed logs a WARNING once and passes a :class:`BacklogWarning` to
    ``on_error`` (again only after the backlog fell under half of it); nothing else changes.

    Lifetime: call :meth:`stop` (or use ``with``). A running feed is kept alive by its own
    threads — dropping every reference to it does not stop it; at interpreter exit a hook
    stops it (one second to deliver what waits; what is dropped is logged).
    """

    broker: ClassVar[str] = "generic"
    #: Event class → callback kind, for the events every broker shares. A broker feed
    #: with its own event classes extends it (``{**Feed.EVENT_KINDS, GttOrder: "gtt_order"}``).
    EVENT_KINDS: ClassVar[Mapping[type, str]] = {
        ev.Order: "order",
        ev.Trade: "trade",
        ev.Position: "position",
        ev.PnL: "pnl",
        ev.Holding: "holding",
        ev.Balance: "balance",
        ev.Quote: "quote",
        ev.Notice: "notice",
    }
    #: Least seconds between two REST refreshes of the same thing (see :class:`Refresh`).
    refresh_interval: float = 1.0

    def __init__(
        self,
        *,
        url: str,
        rest_url: Optional[str] = None,
        reconnect: Optional[ReconnectPolicy] = None,
        dispatch: str = "thread",
        verify: Union[bool, str] = True,
        logger: Optional[logging.Logger] = None,
        heartbeat_interval: float = 30.0,
        stale_after: float = 60.0,
        connect_timeout: float = 10.0,
        auth_timeout: float = 30.0,
        ping_interval: Optional[float] = None,
        rest_timeout: float = 10.0,
        max_pending_quotes: int = 10_000,
        max_pending_events: int = 100_000,
        max_message_size: int = 16 * 1024 * 1024,
        name: Optional[str] = None,
    ) -> None:
        for knob, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("stale_after", stale_after),
            ("connect_timeout", connect_timeout),
            ("auth_timeout", auth_timeout),
            ("rest_timeout", rest_timeout),
            ("max_message_size", max_message_size),
        ):
            if value <= 0:
                raise ValueError(f"{knob} must be > 0, got {value!r}")
        if ping_interval is not None and ping_interval <= 0:
            raise ValueError(f"ping_interval must be > 0 or None, got {ping_interval!r}")
        check_ws_url(url)
        if rest_url is not None:
            _check_rest_url(rest_url)
        self.url = url
        self.rest_url = rest_url
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.verify = verify
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self.name = name or self.broker
        self._redactor = Redactor()
        self._log = RedactingLogger(
            logger or logging.getLogger("brokerfeeds"), self._redactor, prefix=f"[{self.name}] "
        )
        self._callbacks = CallbackRegistry()
        self._dispatcher = Dispatcher(dispatch, self._callbacks, self._log, self.name, max_pending_quotes,
                                      max_pending_events, on_crash=self._dispatcher_crashed)
        self._rest: Optional[RestClient] = (
            RestClient(rest_url, verify=verify, timeout=rest_timeout, redactor=self._redactor,
                       error_text=self._rest_error_text)
            if rest_url
            else None
        )
        self._kinds: Dict[type, str] = dict(self.EVENT_KINDS)
        self._owner: AdapterOwner[P] = AdapterOwner(self._hand_over, self._after_hand_over)
        self._book = SubscriptionBook()  # changed only under the owner's lock
        # The current run and its parts (the supervisor, scheduler and stop event are the
        # current run's; threads of earlier runs hold their own).
        self._run: Optional[Run] = None
        self._thread_runs: "weakref.WeakKeyDictionary[threading.Thread, Run]" = weakref.WeakKeyDictionary()
        self._supervisor: Optional[Supervisor] = None
        self._scheduler: Optional[RestScheduler] = None
        self._refresh_pending: Set[str] = set()
        self._refresh_last: Dict[str, float] = {}
        self._publishers: Tuple[EventPublisher, ...] = ()
        self._publishing: Tuple[EventPublisher, ...] = ()  # started for the current run
        # Lifecycle.
        self._state = "idle"
        self._state_cond = threading.Condition()
        self._start_lock = threading.Lock()
        self._idle_stop = threading.Event()  # what _stop_event is before the first start()
        self._fatal_error: Optional[BrokerFeedsError] = None
        self._warned_insecure = False
        # Counters (written by one thread each; read for stats).
        self._messages = 0
        self._events = 0
        self._malformed = 0
        self._connects = 0
        self._reconnects = 0
        self._last_message_at: Optional[float] = None
        self._connected_since: Optional[float] = None

    # ================================================================ public: callbacks
    # on, remove_callback, on_order, on_trade, ... on_error: see brokerfeeds.callbacks.EventCallbacks

    def on_connect(self, fn: ConnectHandler) -> ConnectHandler:
        """Call ``fn(connected: Connected)`` once connected and subscriptions are sent."""
        return self.on("connect", fn)

    def on_disconnect(self, fn: DisconnectHandler) -> DisconnectHandler:
        """Call ``fn(disconnected: Disconnected)`` when a connection ends (with the reason)."""
        return self.on("disconnect", fn)

    def on_message(self, fn: MessageHandler) -> MessageHandler:
        """Call ``fn(message)`` with every decoded broker message (dict/list/str), raw."""
        return self.on("message", fn)

    def add_publisher(self, publisher: EventPublisher) -> EventPublisher:
        """Also hand every data event to ``publisher`` (e.g. a
        :class:`brokerfeeds.bus.RedisPublisher`, for other programs to read); returns it.

        It gets the events callbacks get (quotes included; notices masked), in the same
        order, on the feed thread that produced them, and must never block there. It runs
        while the feed does: ``start()`` starts it, and ``stop(timeout)`` lets it publish
        what waits within the same timeout (``stop()`` returns False if it could not).
        Add publishers before ``start()``.
        """
        publisher.feed_attached(self._report)
        self._publishers = self._publishers + (publisher,)
        if self._state not in ("idle", "stopped"):
            self._publishing = self._publishing + (publisher,)
            publisher.feed_started()
        return publisher

    # ================================================================ public: lifecycle
    @property
    def state(self) -> str:
        """``"idle"``, ``"connecting"``, ``"connected"``, ``"reconnecting"`` or ``"stopped"``."""
        return self._state

    @property
    def subscriptions(self) -> Tuple[Subscription, ...]:
        """What the feed keeps subscribed (and re-sends after every reconnect)."""
        with self._owner.lock:
            return self._book.all()

    @property
    def error(self) -> Optional[BrokerFeedsError]:
        """The fatal error that stopped the feed, if one did."""
        return self._fatal_error

    @property
    def stats(self) -> FeedStats:
        """Counters: messages, events, reconnects, callback errors, ...

        ``extra`` holds broker counters, among them ``stale_order_updates``: order
        updates refused because they would have moved an order backwards.
        """
        extra: Dict[str, int] = dict(self._extra_stats())
        none: Mapping[str, int] = {}
        extra.update(self._owner.query(lambda adapter: adapter.counters(), none))
        return FeedStats(
            state=self._state,
            messages=self._messages,
            events=self._events,
            malformed=self._malformed,
            connects=self._connects,
            reconnects=self._reconnects,
            callback_errors=self._dispatcher.callback_errors,
            quotes_coalesced=self._dispatcher.quotes_coalesced,
            pending_events=self._dispatcher.pending,
            quotes_dropped=self._dispatcher.quotes_dropped,
            dropped_at_stop=self._dispatcher.dropped_at_stop,
            last_message_at=_wall(self._last_message_at),
            connected_since=_wall(self._connected_since),
            extra=extra,
        )

    def start(self) -> "Feed[P]":
        """Start the feed's threads and return at once (idempotent while running).

        A stopped feed starts again at once, even while a thread of its previous run is
        still finishing (a callback or an HTTP call that outlived ``stop()``'s timeout):
        that thread ends by itself and never touches the new run, and the new run's first
        callback waits until the old run's running callback returned (callbacks of one
        feed never run two at a time).
        """
        with self._start_lock:
            if self._state not in ("idle", "stopped"):
                return self
            run = Run()
            self._run = run
            self._fatal_error = None
            self._refresh_pending.clear()
            self._owner.install(self._new_protocol())
            self._set_state("connecting", restart=True)
            if self.verify is False and not self._warned_insecure:
                self._warned_insecure = True
                self._log.warning("TLS certificate verification is OFF (verify=False)")
            run.lane = self._dispatcher.start()
            if self._rest is not None:
                run.scheduler = RestScheduler(f"brokerfeeds-{self.name}-rest", self._periodic_jobs(),
                                              lambda: self._owner.ready, self._job_failed,
                                              lambda exc: self._thread_crashed("rest", exc))
            self._scheduler = run.scheduler
            self._supervisor = run.supervisor = Supervisor(self, run)
            self._publishing = self._publishers
            for publisher in self._publishing:
                publisher.feed_started()
            lifecycle.running.add(self)
            if run.scheduler is not None:
                run.scheduler.start()  # idle until the io thread connects
            # Known as this run's threads before the io thread can act (it may fail at once).
            for thread in run.threads():
                self._thread_runs[thread] = run
            run.supervisor.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the feed; True if every thread it started ended within ``timeout`` seconds.

        Idempotent, and safe from any thread. Events already queued are still delivered
        while time remains; when ``timeout`` has passed, those not delivered yet are
        dropped — counted in ``stats.dropped_at_stop`` and logged once with the count —
        and **after stop() returns no callback starts** (one already running may finish).
        In ``dispatch="queue"`` mode nothing is dropped: what was queued stays for
        ``process_events()`` until the next ``start()``.

        A REST call in flight on the feed's own REST client is cut at once (its socket is
        shut down). It never waits past ``timeout``: a thread still busy then (a slow
        callback or token provider, a call it could not cut) is named in a warning,
        ``stop()`` returns False, and that thread ends by itself as soon as its call
        returns (what it reports afterwards is ignored). The feed is "stopped" either way
        and may be started again at once.

        Called from one of the feed's own threads (inside a callback), it cannot wait for
        that thread: it starts the shutdown and returns False at once; the feed finishes
        stopping (within ``timeout``) as soon as the callback returns.

        Publishers (:meth:`add_publisher`) publish what waits within the same ``timeout``;
        one that could not publish everything says so itself, and makes this return False.
        """
        deadline = _monotonic() + max(0.0, timeout)
        run = self._run
        if run is None:
            self._set_state("stopped")
            return True
        if deadline < run.deadline:
            run.deadline = deadline
        run.stop_event.set()
        supervisor, scheduler, lane = run.supervisor, run.scheduler, run.lane
        if supervisor is not None:
            supervisor.abort()
        if scheduler is not None:
            scheduler.stop()
        self._abort_rest_calls()
        me = threading.current_thread()
        if me in self._thread_runs or me in run.threads():
            return False  # the io thread completes the shutdown (Feed._finish_run)
        run.waited = True
        io = supervisor.thread if supervisor is not None else None
        if io is not None:
            io.join(max(0.0, deadline - _monotonic()))
        if lane is not None:
            # The io thread's last act starts this; if it is stuck, start it here.
            self._dispatcher.begin_stop(lane, run.deadline)
        self._stop_publishers(run)
        if scheduler is not None:
            scheduler.join(max(0.0, deadline - _monotonic()))
        if lane is not None:
            self._dispatcher.finish_stop(lane, min(deadline, run.deadline))
        published = self._publishers_stopped(min(deadline, run.deadline))
        return self._settle(run, f"within stop({timeout:g})") and published

    def run_forever(self) -> None:
        """Start (if needed) and block until the feed stops; raises its fatal error, if any.

        Ctrl-C stops the feed cleanly and re-raises :class:`KeyboardInterrupt`.
        """
        self.start()
        try:
            with self._state_cond:
                while self._state != "stopped":
                    self._state_cond.wait(0.5)
        except KeyboardInterrupt:
            self.stop()
            raise
        if self._fatal_error is not None:
            raise self._fatal_error

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until connected (True) or ``timeout`` passes (False).

        Raises the feed's fatal error if it stopped because of one.
        """
        deadline = None if timeout is None else _monotonic() + timeout
        with self._state_cond:
            while self._state != "connected":
                if self._state == "stopped":
                    if self._fatal_error is not None:
                        raise self._fatal_error
                    return False
                remaining = None if deadline is None else deadline - _monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._state_cond.wait(remaining)
        return True

    def process_events(self, max_events: Optional[int] = None, timeout: float = 0.0) -> int:
        """Run pending callbacks on the calling thread (``dispatch="queue"``); returns the count.

        Call it from a GUI timer (Tk ``after``, Qt ``QTimer``). ``timeout`` waits for the
        first event when none is pending.
        """
        if self._dispatcher.mode != "queue":
            raise RuntimeError('process_events() is for dispatch="queue" feeds')
        return self._dispatcher.process(max_events, timeout)

    def events(self, timeout: Optional[float] = None) -> Iterator[ev.Event]:
        """An iterator over data events (orders, fills, quotes, notices, ...) as they arrive.

        It sees every event from the moment ``events()`` is called (call it before
        ``start()`` to miss nothing). Iteration ends when the feed stops, or when no event
        arrives for ``timeout`` seconds. Callbacks still run as usual; in ``"queue"``
        mode the iterator pumps them.
        """
        return EventIterator(self._dispatcher, lambda: self._state == "stopped", timeout)

    def __enter__(self) -> "Feed[P]":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._redactor.redact(self.url)!r}, state={self._state!r})"

    # ================================================================ subscriptions (for subclasses)
    def _subscribe(self, sub: Subscription) -> Subscription:
        """Add ``sub`` to the desired set and send it now if the session is ready."""
        self._subscribe_many([sub])
        return sub

    def _unsubscribe(self, kind: str, key: str = "") -> bool:
        """Remove ``(kind, key)`` from the desired set (and end it now if connected)."""
        return bool(self._unsubscribe_many([(kind, key)]))

    def _subscribe_many(self, subs: Sequence[Subscription]) -> List[Subscription]:
        """Add several subscriptions at once: a ready session gets them in ONE
        ``subscribe`` call (one frame, for brokers that batch). Returns the new ones."""
        added: List[Subscription] = []

        def add(adapter: P) -> Sequence[Output]:
            added.extend(self._book.add(subs))
            return adapter.subscribe(added, _monotonic()) if added and self._owner.ready else ()

        if not self._owner.drive(add):
            with self._owner.lock:  # not started yet: only the book changes
                added.extend(self._book.add(subs))
        if added:
            self._log.info("subscribe %s", ", ".join(str(s) for s in added))
        return added

    def _unsubscribe_many(self, idents: Sequence[Tuple[str, str]]) -> List[Subscription]:
        """Remove several ``(kind, key)`` at once (one ``unsubscribe`` call). Returns the removed ones."""
        removed: List[Subscription] = []

        def remove(adapter: P) -> Sequence[Output]:
            removed.extend(self._book.remove(idents))
            return adapter.unsubscribe(removed, _monotonic()) if removed and self._owner.ready else ()

        if not self._owner.drive(remove):
            with self._owner.lock:
                removed.extend(self._book.remove(idents))
        if removed:
            self._log.info("unsubscribe %s", ", ".join(str(s) for s in removed))
        return removed

    # ================================================================ hooks for subclasses
    @abc.abstractmethod
    def _new_protocol(self) -> P:
        """A fresh protocol adapter for one run of the feed."""

    def _connect_target(self) -> ConnectTarget:
        """Where to connect now (runs on the io thread before every attempt; may call REST).

        Raise :class:`AuthenticationError` for rejected credentials, or
        :class:`ConnectionFailed` / :class:`RateLimited` to retry later.
        """
        return ConnectTarget(self.url)

    def _retry_auth(self, error: BaseException) -> bool:
        """After a rejection: True to try again at once (e.g. a refreshed token)."""
        return False

    def _abort_rest_calls(self) -> None:
        """At stop(): make every REST call in flight fail now (reconciliation, tickle,
        polls), so the threads making them end. Extend for a broker's other clients."""
        if self._rest is not None:
            self._rest.abort()

    def _auth_refusal_fatal(self, error: BaseException) -> bool:
        """The socket handshake was refused (and retried, where :meth:`_retry_auth` said
        so): True stops the feed with ``error``; False reports it and reconnects with
        backoff, as after a lost connection (a session that can come back by itself)."""
        return True

    def _credentials_refused(self) -> None:
        """The server refused the credentials of the last connection (a
        :class:`Reconnect` with ``fresh_credentials``): forget cached ones."""

    def _after_ready(self, reconnect: bool) -> None:
        """Runs on the REST thread after each (re)connect's subscriptions were sent.

        Reconcile here: fetch a REST snapshot and give it to the adapter with
        :meth:`_apply` (only what changed while away produces events).
        """

    def _refresh(self, what: str) -> None:
        """Runs on the REST thread when the adapter asked for a :class:`Refresh` of ``what``."""

    def _periodic_jobs(self) -> Sequence[PeriodicJob]:
        """Jobs for the REST thread (keep-alives, polls)."""
        return ()

    def _rest_error_text(self, body: Any) -> Optional[str]:
        """The broker's explanation inside a REST error body, if any."""
        return None

    def _extra_stats(self) -> Mapping[str, int]:
        """Broker-specific counters for :attr:`stats` (the adapter's are added)."""
        return {}

    # ================================================================ helpers for subclasses
    @property
    def rest(self) -> RestClient:
        """The REST client (only for feeds constructed with ``rest_url``)."""
        if self._rest is None:
            raise RuntimeError(f"{type(self).__name__} has no rest_url")
        return self._rest

    def _apply(self, fn: Callable[[P], Sequence[Output]]) -> bool:
        """Give the adapter an input (``fn(adapter)`` calls one of its input methods) and
        deliver its outputs in order; False if the feed has no adapter (never started).

        An exception other than :class:`ProtocolError` raised by the adapter is turned
        into one and re-raised, so callers handle only that. Called on a thread of a run
        that is over (a slow REST call that outlived ``stop()``), it changes nothing and
        returns False: the next run reconciles for itself.
        """
        if self._stale():
            self._log.debug("a late result of a stopped run was ignored")
            return False
        try:
            driven = self._owner.drive(fn)
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - only ProtocolError leaves an adapter
            raise protocol_error(exc, "adapter rejected a REST result") from exc
        self._dispatcher.check_backlog()  # a REST snapshot may bring many events at once
        return driven

    def _query(self, fn: Callable[[P], T], default: T) -> T:
        """Read adapter state: ``fn(adapter)`` under the owner's lock (``default`` if none)."""
        return self._owner.query(fn, default)

    def _register_secret(self, *secrets: Any) -> None:
        """Mask these values in every log line, repr, error and notice text from now on."""
        self._redactor.add(*secrets)

    def _request_reconnect(self, reason: str, immediate: bool = False) -> None:
        """Ask the io thread to drop the connection and reconnect."""
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.request_reconnect(Reconnect(reason, immediate))

    def _report(self, error: BrokerFeedsError, level: int = logging.WARNING) -> None:
        """Log ``error`` and pass it to ``on_error``, its message masked (in place: type
        and attributes kept). Ignored on a thread of a run that is over."""
        if self._stale():
            return
        self._redactor.redact_error(error)
        self._log.log(level, "%s: %s", type(error).__name__, safe_str(error))
        self._dispatcher.put("error", error)

    # ================================================================ adapter outputs
    def _hand_over(self, outputs: Sequence[Output], late: Optional[List[Control]] = None) -> List[Control]:
        """Queue events and act on controls, under the owner's lock (see :mod:`brokerfeeds.owner`).

        Returns the controls that must run after the lock is released (reconnect
        requests and fatal errors, which may wake or join other threads).
        """
        if late is None:
            late = []
        kinds = self._kinds
        dispatcher = self._dispatcher
        publishers = self._publishers
        for out in outputs:
            kind = kinds.get(type(out))
            if kind is not None:
                self._events += 1
                if kind == "quote" and isinstance(out, ev.Quote):
                    dispatcher.put_quote(out.instrument, out)
                elif kind == "notice" and isinstance(out, ev.Notice):
                    out = self._masked(out)
                    dispatcher.put(kind, out)
                else:
                    dispatcher.put(kind, out)
                if publishers:
                    for publisher in publishers:
                        publisher.publish(cast(ev.Event, out))
            elif isinstance(out, RawMessage):
                dispatcher.put("message", out.message)
            elif isinstance(out, Send):
                supervisor = self._supervisor
                if supervisor is not None:
                    if self._log.isEnabledFor(logging.DEBUG):
                        self._log.debug("send %s", excerpt(out.frame))
                    supervisor.send(out.frame)
            elif isinstance(out, Report):
                self._report(out.error)
            elif isinstance(out, Ready):
                self._on_ready(late)
            elif isinstance(out, NotReady):
                self._owner.ready = False
                self._log.warning("session not usable: %s", out.reason)
                self._set_state("reconnecting")
            elif isinstance(out, Refresh):
                self._on_refresh(out.what)
            elif isinstance(out, (Reconnect, Fatal)):
                late.append(out)
            elif isinstance(out, ev.Event):  # an event class this feed did not register
                dispatcher.put("message", out)
            else:
                raise TypeError(f"unknown adapter output {out!r}")
        return late

    def _after_hand_over(self, late: List[Control]) -> None:
        for out in late:
            if isinstance(out, Reconnect):
                supervisor = self._supervisor
                if supervisor is not None:
                    supervisor.request_reconnect(out)
            elif isinstance(out, Fatal):
                self._fail(out.error)

    def _masked(self, notice: ev.Notice) -> ev.Notice:
        """``notice`` with known secrets masked in its text (``raw`` stays raw)."""
        text = self._redactor.redact(notice.text)
        return notice if text == notice.text else attrs.evolve(notice, text=text)

    def _on_ready(self, late: List[Control]) -> None:
        """The session became usable: send the whole book, then say so (under the lock)."""
        owner = self._owner
        adapter = owner.adapter
        owner.ready = True
        subs = self._book.all()
        if subs and adapter is not None:
            self._hand_over(adapter.subscribe(subs, _monotonic()), late)
        supervisor = self._supervisor
        reconnect = supervisor is not None and supervisor.has_connected
        if supervisor is not None:
            supervisor.has_connected = True
        self._connects += 1
        self._connected_since = _monotonic()
        self._log.info("%s; %s %d subscription(s)", "reconnected" if reconnect else "connected",
                       "re-sent" if reconnect else "sent", len(subs))
        self._set_state("connected")
        self._dispatcher.put("connect", ev.Connected(broker=self.broker, reconnect=reconnect,
                                                      subscriptions=len(subs)))
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.submit("reconciliation", lambda: self._after_ready(reconnect))

    def _on_refresh(self, what: str) -> None:
        """Coalesce refresh requests: one pending REST refresh per ``what``."""
        scheduler = self._scheduler
        if scheduler is None or what in self._refresh_pending:
            return
        self._refresh_pending.add(what)
        scheduler.submit(f"{what} refresh", lambda: self._run_refresh(what))

    def _run_refresh(self, what: str) -> None:
        wait = self._refresh_last.get(what, float("-inf")) + self.refresh_interval - _monotonic()
        if wait > 0 and self._stop_event.wait(wait):
            return
        with self._owner.lock:
            # Taken off before the call: a request made while it runs gets its own refresh.
            self._refresh_pending.discard(what)
        self._refresh_last[what] = _monotonic()
        self._refresh(what)

    # ================================================================ failures and shutdown
    def _fail(self, error: BrokerFeedsError) -> None:
        """Stop the feed because of ``error`` (reported to on_error and run_forever)."""
        if self._stale():
            return
        self._redactor.redact_error(error)
        if self._fatal_error is None:
            self._fatal_error = error
        self._report(error, logging.ERROR)
        self.stop()  # from a feed thread: starts the shutdown, the io thread completes it

    def _thread_crashed(self, which: str, exc: BaseException) -> None:
        """A feed thread died of an unexpected exception (a bug): say so and stop. Never raises."""
        try:
            text = safe_repr(exc)
            self._log.error("%s thread crashed: %s", which, text, exc_info=exc)
            error = BrokerFeedsError(f"internal error: the {which} thread crashed: {text}")
            error.__cause__ = exc
            self._fail(error)
        except BaseException:  # noqa: BLE001 - the thread is ending; this is the last word
            pass

    def _dispatcher_crashed(self, lane: Lane, exc: BaseException) -> None:
        """The dispatch thread died (a bug). It is the thread that runs on_error, so the
        error is delivered here and now, on the dying thread; then the feed stops."""
        try:
            text = safe_repr(exc)
            self._log.error("dispatch thread crashed: %s", text, exc_info=exc)
            run = self._run
            if run is None or run.lane is not lane or run.stop_event.is_set():
                return
            error = BrokerFeedsError(f"internal error: the dispatch thread crashed: {text}")
            error.__cause__ = exc
            self._redactor.redact_error(error)
            if self._fatal_error is None:
                self._fatal_error = error
            self._dispatcher.notify_error(error)
            self.stop()
        except BaseException:  # noqa: BLE001 - the thread is ending; this is the last word
            pass

    def _finish_run(self, run: "Run") -> None:
        """The io thread's last act: end the run's other threads and say "stopped"."""
        run.stop_event.set()
        if run.deadline == float("inf"):
            run.deadline = _monotonic() + 5.0
        scheduler, lane = run.scheduler, run.lane
        if scheduler is not None:
            scheduler.stop()
        if lane is not None:
            self._dispatcher.begin_stop(lane, run.deadline)
        self._stop_publishers(run)
        if run.waited:
            return  # a stop() caller waits for the threads and finishes the shutdown
        # Nobody waits (a fatal error, or stop() from inside a callback): finish here, no
        # later than the deadline, unless a stop() caller arrives and takes over.
        me = threading.current_thread()
        others = [t for t in run.threads() if t is not me]
        while not run.waited and any(t.is_alive() for t in others):
            remaining = run.deadline - _monotonic()
            if remaining <= 0:
                break
            for thread in others:
                thread.join(min(0.05, remaining))
        if run.waited:
            return
        if lane is not None:
            self._dispatcher.finish_stop(lane, run.deadline)
        self._publishers_stopped(run.deadline)
        self._settle(run, "by the stop deadline")

    def _stop_publishers(self, run: "Run") -> None:
        """The run produces no more events: publishers publish what waits by its deadline
        (once per run: a publisher may serve other feeds, and counts them)."""
        publishing, self._publishing = self._publishing, ()
        for publisher in publishing:
            publisher.feed_stopping(run.deadline)

    def _publishers_stopped(self, deadline: float) -> bool:
        ok = True
        for publisher in self._publishers:
            ok = publisher.feed_stopped(deadline) and ok
        return ok

    def _settle(self, run: "Run", when: str) -> bool:
        """The last step of stopping ``run``: say "stopped" and name any thread left behind."""
        if run is self._run:
            if self._rest is not None:
                self._rest.close()
            self._set_state("stopped")
            lifecycle.running.discard(self)
        me = threading.current_thread()
        left = [t.name for t in run.threads() if t is not me and t.is_alive()]
        if left:
            self._log.warning("stop(): %s did not end %s; left behind, it ends by itself when its "
                              "current call returns (no callback starts, nothing it reports is used)",
                              ", ".join(left), when)
        return not left

    def _job_failed(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, BrokerFeedsError):
            self._report(exc)
            return
        if self._stale():
            return
        try:
            text = safe_repr(exc)
            self._log.error("%s failed: %s", name, text, exc_info=exc)
            error = BrokerFeedsError(f"{name} failed: {text}")
            self._dispatcher.put("error", self._redactor.redact_error(error))
        except BaseException:  # noqa: BLE001 - reporting a failure must not fail the thread
            pass

    def _bad_frame(self, data: bytes, exc: BaseException) -> None:
        self._malformed += 1
        if isinstance(exc, ProtocolError):
            error = exc
        else:
            error = ProtocolError(f"could not decode frame: {type(exc).__name__}: {exc}", excerpt(data))
            error.__cause__ = exc
        error.frame = self._redactor.redact(excerpt(data))
        self._redactor.redact_error(error)
        self._log.warning("bad frame ignored (%s): %s", safe_str(error), error.frame)
        self._dispatcher.put("error", error)

    # ================================================================ internals
    def _stop_at_exit(self, timeout: float) -> None:
        """The interpreter is exiting with this feed still running: stop it, say what was lost."""
        dispatcher = self._dispatcher
        before, waiting = dispatcher.dropped_at_stop, dispatcher.pending
        self.stop(timeout)
        dropped = dispatcher.dropped_at_stop - before
        unpumped = dispatcher.pending if dispatcher.mode == "queue" else 0
        self._log.warning("stopped at interpreter exit (call stop() or use `with`): %d event(s) were "
                          "waiting, %d dropped", waiting, dropped + unpumped)

    def _threads(self) -> List[threading.Thread]:
        """The current run's threads."""
        return self._run.threads() if self._run is not None else []

    @property
    def _stop_event(self) -> threading.Event:
        """Set once the run is stopping: the calling thread's own run (a REST job of a run
        that is over sees its run's event set, and ends early), else the current run's."""
        run = self._thread_runs.get(threading.current_thread()) or self._run
        return run.stop_event if run is not None else self._idle_stop

    def _is_current(self, run: "Run") -> bool:
        return run is self._run

    def _stale(self) -> bool:
        """True on a thread of this feed whose run is over or ending: what it reports now
        (late REST results, errors of a connection being closed) must not reach the feed."""
        run = self._thread_runs.get(threading.current_thread())
        return run is not None and (run is not self._run or run.stop_event.is_set())

    def _set_state(self, state: str, restart: bool = False) -> None:
        if state != "stopped" and not restart and self._stale():
            return  # a run that is over or ending never moves the state again
        with self._state_cond:
            if self._state == "stopped" and not restart:
                return  # only start() leaves "stopped"
            if self._state != state:
                self._state = state
                self._state_cond.notify_all()


def _check_rest_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"rest_url must be an http:// or https:// URL, got {parts.scheme or 'no'} scheme")


def _wall(mono: Optional[float]) -> Optional[_dt.datetime]:
    """Convert a monotonic timestamp to wall-clock UTC."""
    if mono is None:
        return None
    return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=_monotonic() - mono)

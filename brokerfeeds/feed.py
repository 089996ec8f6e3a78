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
"""

from __future__ import annotations

import abc
import datetime as _dt
import logging
import queue
import threading
import time
import urllib.parse
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
)

import attrs

from . import events as ev
from .dispatch import CallbackRegistry, Dispatcher
from .errors import BrokerFeedsError, ProtocolError
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
from .redact import Redactor, RedactingLogger
from .rest import RestClient
from .scheduler import PeriodicJob, RestScheduler
from .subscriptions import SubscriptionBook
from .supervisor import Supervisor
from .transport import ConnectTarget, check_ws_url

__all__ = ["Feed", "FeedStats", "STATES", "PeriodicJob"]

STATES = ("idle", "connecting", "connected", "reconnecting", "stopped")
_monotonic = time.monotonic

F = TypeVar("F", bound=Callable[..., Any])
OrderHandler = TypeVar("OrderHandler", bound=Callable[[ev.Order], Any])
TradeHandler = TypeVar("TradeHandler", bound=Callable[[ev.Trade], Any])
PositionHandler = TypeVar("PositionHandler", bound=Callable[[ev.Position], Any])
PnLHandler = TypeVar("PnLHandler", bound=Callable[[ev.PnL], Any])
HoldingHandler = TypeVar("HoldingHandler", bound=Callable[[ev.Holding], Any])
BalanceHandler = TypeVar("BalanceHandler", bound=Callable[[ev.Balance], Any])
QuoteHandler = TypeVar("QuoteHandler", bound=Callable[[ev.Quote], Any])
NoticeHandler = TypeVar("NoticeHandler", bound=Callable[[ev.Notice], Any])
ConnectHandler = TypeVar("ConnectHandler", bound=Callable[[ev.Connected], Any])
DisconnectHandler = TypeVar("DisconnectHandler", bound=Callable[[ev.Disconnected], Any])
ErrorHandler = TypeVar("ErrorHandler", bound=Callable[[BrokerFeedsError], Any])
MessageHandler = TypeVar("MessageHandler", bound=Callable[[Any], Any])


@attrs.frozen(slots=True, kw_only=True)
class FeedStats:
    """A snapshot of a feed's counters (``feed.stats``)."""

    state: str
    messages: int
    events: int
    malformed: int
    connects: int
    reconnects: int
    callback_errors: int
    quotes_coalesced: int
    pending_events: int
    last_message_at: Optional[_dt.datetime]
    connected_since: Optional[_dt.datetime]
    extra: Mapping[str, int] = attrs.field(factory=dict)


class Feed(abc.ABC, Generic[P]):
    """Base class of every broker feed. See the package README for the full contract.

    Construction never does I/O. Timing knobs (seconds) exist so tests can run fast;
    the defaults are the brokers' documented cadences (subclasses set their own).
    ``max_message_size`` bounds what one message from the server may cost in memory:
    a larger one fails the connection (reported to ``on_error``) and the feed reconnects.
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
        self._dispatcher = Dispatcher(dispatch, self._callbacks, self._log, self.name, max_pending_quotes)
        self._rest: Optional[RestClient] = (
            RestClient(rest_url, verify=verify, timeout=rest_timeout, redactor=self._redactor,
                       error_text=self._rest_error_text)
            if rest_url
            else None
        )
        self._kinds: Dict[type, str] = dict(self.EVENT_KINDS)
        self._owner: AdapterOwner[P] = AdapterOwner(self._hand_over, self._after_hand_over)
        self._book = SubscriptionBook()  # changed only under the owner's lock
        self._supervisor: Optional[Supervisor] = None
        self._scheduler: Optional[RestScheduler] = None
        self._refresh_pending: Set[str] = set()
        self._refresh_last: Dict[str, float] = {}
        # Lifecycle.
        self._state = "idle"
        self._state_cond = threading.Condition()
        self._start_lock = threading.Lock()
        self._stop_event = threading.Event()
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
    def on(self, kind: str, fn: F) -> F:
        """Register ``fn`` for callback kind ``kind`` (``"order"``, ``"error"``, ...)."""
        self._callbacks.add(kind, fn)
        return fn

    def on_order(self, fn: OrderHandler) -> OrderHandler:
        """Call ``fn(order: Order)`` with the full, merged order after every change."""
        return self.on("order", fn)

    def on_trade(self, fn: TradeHandler) -> TradeHandler:
        """Call ``fn(trade: Trade)`` for every fill."""
        return self.on("trade", fn)

    def on_position(self, fn: PositionHandler) -> PositionHandler:
        """Call ``fn(position: Position)`` when a position changes."""
        return self.on("position", fn)

    def on_pnl(self, fn: PnLHandler) -> PnLHandler:
        """Call ``fn(pnl: PnL)`` when account P&L figures change."""
        return self.on("pnl", fn)

    def on_holding(self, fn: HoldingHandler) -> HoldingHandler:
        """Call ``fn(holding: Holding)`` when a holding changes."""
        return self.on("holding", fn)

    def on_balance(self, fn: BalanceHandler) -> BalanceHandler:
        """Call ``fn(balance: Balance)`` when cash / buying power figures change."""
        return self.on("balance", fn)

    def on_quote(self, fn: QuoteHandler) -> QuoteHandler:
        """Call ``fn(quote: Quote)`` with the merged snapshot after every tick."""
        return self.on("quote", fn)

    def on_notice(self, fn: NoticeHandler) -> NoticeHandler:
        """Call ``fn(notice: Notice)`` for broker messages meant for humans."""
        return self.on("notice", fn)

    def on_connect(self, fn: ConnectHandler) -> ConnectHandler:
        """Call ``fn(connected: Connected)`` once connected and subscriptions are sent."""
        return self.on("connect", fn)

    def on_disconnect(self, fn: DisconnectHandler) -> DisconnectHandler:
        """Call ``fn(disconnected: Disconnected)`` when a connection ends (with the reason)."""
        return self.on("disconnect", fn)

    def on_error(self, fn: ErrorHandler) -> ErrorHandler:
        """Call ``fn(error: BrokerFeedsError)`` for every problem (the feed carries on
        unless the error is fatal, e.g. :class:`AuthenticationError`)."""
        return self.on("error", fn)

    def on_message(self, fn: MessageHandler) -> MessageHandler:
        """Call ``fn(message)`` with every decoded broker message (dict/list/str), raw."""
        return self.on("message", fn)

    def remove_callback(self, fn: Callable[..., Any]) -> bool:
        """Unregister ``fn`` from every kind; True if it was registered."""
        return self._callbacks.remove(fn)

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
            last_message_at=_wall(self._last_message_at),
            connected_since=_wall(self._connected_since),
            extra=extra,
        )

    def start(self) -> "Feed[P]":
        """Start the feed's threads and return at once (idempotent while running)."""
        with self._start_lock:
            if self._state not in ("idle", "stopped"):
                return self
            if any(t.is_alive() for t in self._threads()):
                raise RuntimeError("the previous run of this feed is still stopping")
            self._stop_event.clear()
            self._fatal_error = None
            self._refresh_pending.clear()
            self._owner.install(self._new_protocol())
            self._set_state("connecting", restart=True)
            if self.verify is False and not self._warned_insecure:
                self._warned_insecure = True
                self._log.warning("TLS certificate verification is OFF (verify=False)")
            self._dispatcher.start()
            if self._rest is not None:
                self._scheduler = RestScheduler(f"brokerfeeds-{self.name}-rest", self._periodic_jobs(),
                                                lambda: self._owner.ready, self._job_failed)
                self._scheduler.start()
            self._supervisor = Supervisor(self)
            self._supervisor.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join every thread the feed started; True if all ended in time.

        Idempotent, and safe from any thread. Events already queued are delivered first.
        Called from one of the feed's own threads (inside a callback), it cannot wait
        for that thread: it starts the shutdown, returns False at once, and the feed
        finishes stopping as soon as the callback returns. A stopped feed can be
        started again.
        """
        deadline = _monotonic() + timeout
        self._stop_event.set()
        supervisor, scheduler = self._supervisor, self._scheduler
        if supervisor is not None:
            supervisor.abort()
        if scheduler is not None:
            scheduler.stop()
        if threading.current_thread() in self._threads():
            return False  # the io thread completes the shutdown (Feed._finish_run)
        ended = True
        io = supervisor.thread if supervisor is not None else None
        if io is not None:
            io.join(max(0.0, deadline - _monotonic()))
            ended = not io.is_alive()
        if scheduler is not None:
            ended = scheduler.join(max(0.0, deadline - _monotonic())) and ended
        ended = self._dispatcher.stop(max(0.0, deadline - _monotonic())) and ended
        if self._rest is not None:
            self._rest.close()
        self._set_state("stopped")
        if not ended:
            self._log.warning("stop(): some threads did not end within %.1fs", timeout)
        return ended

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
        return _EventIterator(self._dispatcher, lambda: self._state == "stopped", timeout)

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
        into one and re-raised, so callers handle only that.
        """
        try:
            return self._owner.drive(fn)
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - only ProtocolError leaves an adapter
            raise protocol_error(exc, "adapter rejected a REST result") from exc

    T = TypeVar("T")

    def _query(self, fn: Callable[[P], "Feed.T"], default: "Feed.T") -> "Feed.T":
        """Read adapter state: ``fn(adapter)`` under the owner's lock (``default`` if none)."""
        return self._owner.query(fn, default)

    def _register_secret(self, *secrets: Any) -> None:
        """Mask these values in every log line, repr and error from now on."""
        self._redactor.add(*secrets)

    def _request_reconnect(self, reason: str, immediate: bool = False) -> None:
        """Ask the io thread to drop the connection and reconnect."""
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.request_reconnect(Reconnect(reason, immediate))

    def _report(self, error: BrokerFeedsError, level: int = logging.WARNING) -> None:
        """Log ``error`` and pass it to ``on_error``."""
        self._log.log(level, "%s: %s", type(error).__name__, error)
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
        for out in outputs:
            kind = kinds.get(type(out))
            if kind is not None:
                self._events += 1
                if kind == "quote" and isinstance(out, ev.Quote):
                    dispatcher.put_quote(out.instrument, out)
                else:
                    dispatcher.put(kind, out)
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
        if self._fatal_error is None:
            self._fatal_error = error
        self._report(error, logging.ERROR)
        self.stop()  # from a feed thread: starts the shutdown, the io thread completes it

    def _finish_run(self) -> None:
        """The io thread's last act: end the other threads and say "stopped"."""
        self._stop_event.set()
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.stop()
            scheduler.join(5.0)
        self._dispatcher.stop(5.0)
        if self._rest is not None:
            self._rest.close()
        self._set_state("stopped")

    def _job_failed(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, BrokerFeedsError):
            self._report(exc)
            return
        self._log.error("%s failed: %r", name, exc, exc_info=exc)
        self._dispatcher.put("error", BrokerFeedsError(self._redactor.redact(f"{name} failed: {exc!r}")))

    def _bad_frame(self, data: bytes, exc: BaseException) -> None:
        self._malformed += 1
        if isinstance(exc, ProtocolError):
            error = exc
        else:
            error = ProtocolError(f"could not decode frame: {type(exc).__name__}: {exc}", excerpt(data))
            error.__cause__ = exc
        error.frame = self._redactor.redact(excerpt(data))
        self._log.warning("bad frame ignored (%s): %s", error, error.frame)
        self._dispatcher.put("error", error)

    # ================================================================ internals
    def _threads(self) -> List[threading.Thread]:
        threads = [self._dispatcher.thread]
        if self._supervisor is not None:
            threads.append(self._supervisor.thread)
        if self._scheduler is not None:
            threads.append(self._scheduler.thread)
        return [t for t in threads if t is not None]

    def _set_state(self, state: str, restart: bool = False) -> None:
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


class _EventIterator:
    """What :meth:`Feed.events` returns: a sink fed by the dispatcher, read by the caller."""

    def __init__(self, dispatcher: Dispatcher, stopped: Callable[[], bool], timeout: Optional[float]) -> None:
        self._dispatcher = dispatcher
        self._stopped = stopped
        self._timeout = timeout
        self._sink: "queue.SimpleQueue[ev.Event]" = queue.SimpleQueue()
        self._pump = dispatcher.mode == "queue"
        self._open = True
        dispatcher.add_sink(self._sink)

    def __iter__(self) -> "_EventIterator":
        return self

    def __next__(self) -> ev.Event:
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


def _wall(mono: Optional[float]) -> Optional[_dt.datetime]:
    """Convert a monotonic timestamp to wall-clock UTC."""
    if mono is None:
        return None
    return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=_monotonic() - mono)

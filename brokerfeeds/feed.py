"""The Feed engine: lifecycle, reconnects, heartbeats, subscriptions, dispatch.

Written once for every broker. A broker's feed class subclasses :class:`Feed` and
supplies a sans-I/O :class:`~brokerfeeds.protocol.Protocol` plus a few REST hooks
(where to connect, what to reconcile after a reconnect, what to poll).

Threads of a running feed (all named ``brokerfeeds-<name>-...``):

``io``
    Connects, reads frames, answers pings, sends heartbeats on time, decodes frames into
    events, detects dead connections and reconnects with backoff. Never runs user code
    unless ``dispatch="inline"``.
``rest``
    The broker's REST side: keep-alives, reconciliation after each (re)connect, polls.
    Blocking HTTP calls never delay the socket.
``dispatch``
    Runs user callbacks in arrival order (``dispatch="thread"``, the default).
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import threading
import time
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import attrs

from . import events as ev
from .dispatch import CallbackRegistry, Dispatcher
from .errors import (
    AuthenticationError,
    BrokerFeedsError,
    ConnectionFailed,
    ProtocolError,
    RateLimited,
)
from .protocol import (
    Fatal,
    NotReady,
    Output,
    Protocol,
    RawMessage,
    Ready,
    Reconnect,
    Report,
    Send,
    Subscription,
    excerpt,
)
from .reconnect import ReconnectPolicy
from .redact import Redactor, RedactingLogger
from .rest import RestClient
from .transport import FRAME_BINARY, FRAME_TEXT, Closed, Connection, ConnectTarget

__all__ = ["Feed", "FeedStats", "STATES"]

STATES = ("idle", "connecting", "connected", "reconnecting", "stopped")
F = TypeVar("F", bound=Callable[..., Any])
_monotonic = time.monotonic


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


@attrs.define(slots=True)
class _Periodic:
    interval: float
    job: Callable[[], Sequence[Output]]
    name: str
    when_ready: bool
    due: float = 0.0


class Feed:
    """Base class of every broker feed. See the package README for the full contract.

    Construction never does I/O. Timing knobs (seconds) exist so tests can run fast;
    the defaults are the brokers' documented cadences (subclasses set their own).
    """

    broker: ClassVar[str] = "generic"
    #: Event class → callback kind. Subclasses extend it with their own event classes.
    EVENT_KINDS: ClassVar[Dict[type, str]] = {
        ev.Order: "order",
        ev.Trade: "trade",
        ev.Position: "position",
        ev.PnL: "pnl",
        ev.Holding: "holding",
        ev.Balance: "balance",
        ev.Quote: "quote",
        ev.Notice: "notice",
        ev.GttOrder: "gtt_order",
        ev.LocateInventory: "locate",
        ev.ReplayComplete: "replay_complete",
    }

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
        name: Optional[str] = None,
    ) -> None:
        for knob, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("stale_after", stale_after),
            ("connect_timeout", connect_timeout),
            ("auth_timeout", auth_timeout),
            ("rest_timeout", rest_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{knob} must be > 0, got {value!r}")
        if ping_interval is not None and ping_interval <= 0:
            raise ValueError(f"ping_interval must be > 0 or None, got {ping_interval!r}")
        self.url = url
        self.rest_url = rest_url
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.verify = verify
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self.ping_interval = ping_interval
        self.name = name or self.broker
        self._redactor = Redactor()
        self._log = RedactingLogger(
            logger or logging.getLogger("brokerfeeds"), self._redactor, prefix=f"[{self.name}] "
        )
        self._callbacks = CallbackRegistry()
        self._dispatcher = Dispatcher(
            dispatch, self._callbacks, self._log, self.name, max_pending_quotes
        )
        self._rest: Optional[RestClient] = (
            RestClient(
                rest_url,
                verify=verify,
                timeout=rest_timeout,
                redactor=self._redactor,
                error_text=self._rest_error_text,
            )
            if rest_url
            else None
        )
        # Everything below is guarded by self._lock (protocol state included).
        self._lock = threading.RLock()
        self._desired: Dict[Tuple[str, str], Subscription] = {}
        self._protocol: Optional[Protocol] = None
        self._ready = False
        self._conn: Optional[Connection] = None
        self._reconnect_request: Optional[Reconnect] = None
        # Lifecycle.
        self._state = "idle"
        self._state_cond = threading.Condition()
        self._stop_event = threading.Event()
        self._io_thread: Optional[threading.Thread] = None
        self._rest_thread: Optional[threading.Thread] = None
        self._rest_jobs: "queue.SimpleQueue[Optional[Callable[[], Sequence[Output]]]]" = queue.SimpleQueue()
        self._fatal_error: Optional[BrokerFeedsError] = None
        self._has_connected = False
        self._self_stop = False  # the feed stopped itself (fatal error): the I/O thread cleans up
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
        return self._callbacks.add(kind, fn)  # type: ignore[return-value]

    def on_order(self, fn: F) -> F:
        """Call ``fn(order: Order)`` with the full, merged order after every change."""
        return self.on("order", fn)

    def on_trade(self, fn: F) -> F:
        """Call ``fn(trade: Trade)`` for every fill."""
        return self.on("trade", fn)

    def on_position(self, fn: F) -> F:
        """Call ``fn(position: Position)`` when a position changes."""
        return self.on("position", fn)

    def on_pnl(self, fn: F) -> F:
        """Call ``fn(pnl: PnL)`` when account P&L figures change."""
        return self.on("pnl", fn)

    def on_holding(self, fn: F) -> F:
        """Call ``fn(holding: Holding)`` when a holding changes."""
        return self.on("holding", fn)

    def on_balance(self, fn: F) -> F:
        """Call ``fn(balance: Balance)`` when cash / buying power figures change."""
        return self.on("balance", fn)

    def on_quote(self, fn: F) -> F:
        """Call ``fn(quote: Quote)`` with the merged snapshot after every tick."""
        return self.on("quote", fn)

    def on_notice(self, fn: F) -> F:
        """Call ``fn(notice: Notice)`` for broker messages meant for humans."""
        return self.on("notice", fn)

    def on_connect(self, fn: F) -> F:
        """Call ``fn(connected: Connected)`` once connected and subscriptions are sent."""
        return self.on("connect", fn)

    def on_disconnect(self, fn: F) -> F:
        """Call ``fn(disconnected: Disconnected)`` when a connection ends (with the reason)."""
        return self.on("disconnect", fn)

    def on_error(self, fn: F) -> F:
        """Call ``fn(error: BrokerFeedsError)`` for every problem (the feed carries on
        unless the error is fatal, e.g. :class:`AuthenticationError`)."""
        return self.on("error", fn)

    def on_message(self, fn: F) -> F:
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
        with self._lock:
            return tuple(self._desired.values())

    @property
    def error(self) -> Optional[BrokerFeedsError]:
        """The fatal error that stopped the feed, if one did."""
        return self._fatal_error

    @property
    def stats(self) -> FeedStats:
        """Counters: messages, events, reconnects, callback errors, ..."""
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
            extra=self._extra_stats(),
        )

    def start(self) -> "Feed":
        """Start the feed's threads and return at once (idempotent while running)."""
        with self._state_cond:
            if self._state not in ("idle", "stopped"):
                return self
            alive = [t for t in self._threads() if t.is_alive()]
            if alive:
                raise RuntimeError("the previous run of this feed is still stopping")
            self._stop_event.clear()
            self._fatal_error = None
            self._has_connected = False
            with self._lock:
                self._protocol = self._new_protocol()
                self._ready = False
                self._reconnect_request = None
            self._self_stop = False
            self._set_state("connecting", restart=True)
        if self.verify is False and not self._warned_insecure:
            self._warned_insecure = True
            self._log.warning("TLS certificate verification is OFF (verify=False)")
        self._dispatcher.start()
        if self._rest is not None:
            self._rest_thread = threading.Thread(
                target=self._run_rest, name=f"brokerfeeds-{self.name}-rest", daemon=True
            )
            self._rest_thread.start()
        self._io_thread = threading.Thread(
            target=self._run_io, name=f"brokerfeeds-{self.name}-io", daemon=True
        )
        self._io_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join every thread the feed started; True if all ended in time.

        Idempotent, and safe from any thread, including from inside a callback (the
        calling thread then ends right after the callback returns). Events already
        queued are delivered first. A stopped feed can be started again.
        """
        deadline = _monotonic() + timeout
        self._stop_event.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.abort()
        self._rest_jobs.put(None)
        me = threading.current_thread()
        ended = True
        for thread in (self._io_thread, self._rest_thread):
            if thread is not None and thread is not me:
                thread.join(max(0.0, deadline - _monotonic()))
                ended = ended and not thread.is_alive()
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

    def __enter__(self) -> "Feed":
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
        ``protocol.subscribe`` call (one frame, for brokers that batch). Returns the new ones."""
        with self._lock:
            fresh: Dict[Tuple[str, str], Subscription] = {}
            for sub in subs:
                if self._desired.get(sub.ident) != sub:
                    fresh[sub.ident] = sub
            self._desired.update(fresh)
            added = list(fresh.values())
            outputs = self._protocol.subscribe(added, _monotonic()) if added and self._ready and self._protocol else []
        if added:
            self._log.info("subscribe %s", ", ".join(str(s) for s in added))
        self._handle(outputs)
        return added

    def _unsubscribe_many(self, idents: Sequence[Tuple[str, str]]) -> List[Subscription]:
        """Remove several ``(kind, key)`` at once (one ``protocol.unsubscribe`` call). Returns the removed ones."""
        with self._lock:
            removed = [s for s in (self._desired.pop(i, None) for i in dict.fromkeys(idents)) if s is not None]
            outputs = self._protocol.unsubscribe(removed, _monotonic()) if removed and self._ready and self._protocol else []
        if removed:
            self._log.info("unsubscribe %s", ", ".join(str(s) for s in removed))
        self._handle(outputs)
        return removed

    # ================================================================ hooks for subclasses
    def _new_protocol(self) -> Protocol:
        """A fresh protocol adapter for one run of the feed."""
        raise NotImplementedError

    def _connect_target(self) -> ConnectTarget:
        """Where to connect now (runs before every attempt; may call REST).

        Raise :class:`AuthenticationError` for rejected credentials, or
        :class:`ConnectionFailed` / :class:`RateLimited` to retry later.
        """
        return ConnectTarget(self.url)

    def _retry_auth(self, error: AuthenticationError) -> bool:
        """After a rejection: True to try again at once (e.g. a refreshed token)."""
        return False

    def _after_ready(self, reconnect: bool) -> Sequence[Output]:
        """Runs on the REST thread after each (re)connect's subscriptions were sent.

        Reconcile here (REST snapshot → events for what changed while away).
        """
        return ()

    def _periodic_jobs(self) -> Sequence[Tuple[float, Callable[[], Sequence[Output]], str, bool]]:
        """``(interval, job, name, when_ready)`` jobs for the REST thread (keep-alives, polls)."""
        return ()

    def _rest_error_text(self, body: Any) -> Optional[str]:
        """The broker's explanation inside a REST error body, if any."""
        return None

    def _extra_stats(self) -> Dict[str, int]:
        """Broker-specific counters for :attr:`stats`."""
        return {}

    # ================================================================ helpers for subclasses
    @property
    def rest(self) -> RestClient:
        """The REST client (only for feeds constructed with ``rest_url``)."""
        if self._rest is None:
            raise RuntimeError(f"{type(self).__name__} has no rest_url")
        return self._rest

    def _apply(self, fn: Callable[[Protocol], Sequence[Output]]) -> None:
        """Run ``fn(protocol)`` under the feed's lock and act on its outputs.

        How REST results (reconciliation, polls) enter protocol state from the REST
        thread without racing the reader.
        """
        with self._lock:
            if self._protocol is None:
                return
            outputs = fn(self._protocol)
        self._handle(outputs)

    def _register_secret(self, *secrets: Any) -> None:
        """Mask these values in every log line, repr and error from now on."""
        self._redactor.add(*secrets)

    def _request_reconnect(self, reason: str, immediate: bool = False) -> None:
        """Ask the reader thread to drop the connection and reconnect."""
        self._control(Reconnect(reason, immediate))

    def _report(self, error: BrokerFeedsError, level: int = logging.WARNING) -> None:
        """Log ``error`` and pass it to ``on_error``."""
        self._log.log(level, "%s: %s", type(error).__name__, error)
        self._dispatcher.put("error", error)

    # ================================================================ output handling
    def _handle(self, outputs: Sequence[Output]) -> None:
        kinds = self.EVENT_KINDS
        put = self._dispatcher.put
        for out in outputs:
            kind = kinds.get(type(out))
            if kind is None:
                self._control(out)
                continue
            self._events += 1
            if kind == "quote":
                self._dispatcher.put_quote(out.instrument, out)
            else:
                put(kind, out)

    def _control(self, out: Output) -> None:
        kind = type(out)
        if kind is Send:
            conn = self._conn
            if conn is not None:
                if self._debug:
                    self._log.debug("send %s", excerpt(out.frame))
                try:
                    conn.send(out.frame)
                except Closed:
                    pass  # the reader notices and reconnects; subscriptions are re-sent then
        elif kind is RawMessage:
            self._dispatcher.put("message", out.message)
        elif kind is Report:
            self._report(out.error)
        elif kind is Ready:
            self._on_ready()
        elif kind is NotReady:
            with self._lock:
                self._ready = False
            self._unready_since = _monotonic()
            self._log.warning("session not usable: %s", out.reason)
            self._set_state("connecting")
        elif kind is Reconnect:
            with self._lock:
                self._reconnect_request = out
                conn = self._conn
            if conn is not None:
                conn.abort()
        elif kind is Fatal:
            self._fail(out.error)
        elif isinstance(out, ev.Event):  # an event class a subclass did not register
            self._dispatcher.put("message", out)
        else:
            raise TypeError(f"unknown protocol output {out!r}")

    def _on_ready(self) -> None:
        with self._lock:
            self._ready = True
            subs = list(self._desired.values())
            protocol = self._protocol
            outputs = protocol.subscribe(subs, _monotonic()) if subs and protocol else []
        reconnect = self._has_connected
        self._has_connected = True
        self._connects += 1
        self._connected_since = _monotonic()
        self._handle(outputs)
        self._log.info("%s; %s %d subscription(s)", "reconnected" if reconnect else "connected",
                       "re-sent" if reconnect else "sent", len(subs))
        self._set_state("connected")
        self._dispatcher.put("connect", ev.Connected(broker=self.broker, reconnect=reconnect,
                                                      subscriptions=len(subs)))
        if self._rest_thread is not None:
            self._rest_jobs.put(lambda: self._after_ready(reconnect))

    def _fail(self, error: BrokerFeedsError) -> None:
        """Stop the feed because of ``error`` (reported to on_error and run_forever)."""
        if self._fatal_error is None:
            self._fatal_error = error
        self._report(error, logging.ERROR)
        on_feed_thread = threading.current_thread() in (self._io_thread, self._rest_thread)
        self._self_stop = on_feed_thread
        self._stop_event.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.abort()
        if not on_feed_thread:
            self.stop()
        # Otherwise the I/O thread notices the stop event and finishes the shutdown.

    # ================================================================ the I/O thread
    def _run_io(self) -> None:
        policy = self.reconnect_policy
        failures = 0
        try:
            while not self._stop_event.is_set():
                try:
                    conn = self._open()
                except AuthenticationError as exc:
                    self._fail(exc)
                    break
                except BrokerFeedsError as exc:
                    if self._stop_event.is_set():
                        break
                    failures += 1
                    self._report(exc)
                    if policy.gives_up(failures):
                        self._fail(ConnectionFailed(f"gave up after {failures} failed attempts: {exc}"))
                        break
                    delay = policy.delay(failures - 1)
                    if isinstance(exc, RateLimited) and exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                    self._log.info("reconnecting in %.2fs (attempt %d)", delay, failures + 1)
                    self._stop_event.wait(delay)
                    continue
                opened = _monotonic()
                reason, immediate = self._serve(conn)
                healthy = _monotonic() - opened >= policy.reset_after
                failures = 0 if healthy else failures
                if self._stop_event.is_set():
                    if self._has_connected:
                        why = str(self._fatal_error) if self._fatal_error is not None else "stopped"
                        self._dispatcher.put("disconnect", ev.Disconnected(
                            broker=self.broker, reason=why, will_reconnect=False))
                    break
                self._reconnects += 1
                self._log.info("connection lost: %s", reason)
                self._dispatcher.put("disconnect", ev.Disconnected(broker=self.broker, reason=reason))
                if immediate:
                    continue
                delay = policy.delay(failures)
                failures += 1
                if policy.gives_up(failures) and not healthy:
                    self._fail(ConnectionFailed(f"gave up after {failures} failed attempts: {reason}"))
                    break
                self._log.info("reconnecting in %.2fs", delay)
                self._stop_event.wait(delay)
        except Exception as exc:  # noqa: BLE001 - a bug must surface, not kill silently
            self._log.error("I/O thread crashed: %r", exc, exc_info=exc)
            self._fail(BrokerFeedsError(self._redactor.redact(f"internal error: {exc!r}")))
        finally:
            if self._self_stop:
                # The feed stopped itself (fatal error): nobody else will join the threads.
                self._finish_from_io()

    def _finish_from_io(self) -> None:
        self._rest_jobs.put(None)
        rest = self._rest_thread
        if rest is not None and rest is not threading.current_thread():
            rest.join(5.0)
        self._dispatcher.stop(5.0)
        if self._rest is not None:
            self._rest.close()
        self._set_state("stopped")

    def _open(self) -> Connection:
        """One connection attempt (with one immediate retry after a refreshed credential)."""
        self._set_state("reconnecting" if self._has_connected else "connecting")
        for _ in range(2):
            try:
                target = self._connect_target()
                self._log.info("connecting to %s", self._redactor.redact(target.url))
                conn = Connection.open(target, timeout=self.connect_timeout, verify=self.verify,
                                       started=self._connecting)
            except BrokerFeedsError as exc:
                with self._lock:
                    self._conn = None
                if not isinstance(exc, AuthenticationError) or self._stop_event.is_set() or not self._retry_auth(exc):
                    raise
                self._log.info("credentials rejected; retrying with refreshed credentials")
                continue
            with self._lock:
                if self._stop_event.is_set():
                    conn.close()
                    raise ConnectionFailed("stopped while connecting")
                self._conn = conn
            return conn
        raise AuthenticationError("credentials rejected again after a refresh")

    def _connecting(self, conn: Connection) -> None:
        """Remember a connection still in its handshake, so stop() can abort it."""
        with self._lock:
            self._conn = conn
        if self._stop_event.is_set():
            conn.abort()

    def _serve(self, conn: Connection) -> Tuple[str, bool]:
        """Read frames until the connection ends; returns ``(reason, immediate)``."""
        protocol = self._protocol
        assert protocol is not None
        lock = self._lock
        handle = self._handle
        dispatcher = self._dispatcher
        self._debug = self._log.isEnabledFor(logging.DEBUG)
        now = _monotonic()
        last_rx = now
        tick = max(0.02, min(1.0, self.stale_after / 5, self.heartbeat_interval / 2,
                             self.ping_interval / 2 if self.ping_interval else 1.0))
        next_tick = now + tick
        next_heartbeat = now + self.heartbeat_interval
        next_ping = now + (self.ping_interval or 0)
        self._unready_since = now
        reason = "closed"
        with lock:
            outputs = protocol.on_open(now)
        handle(outputs)
        try:
            while not self._stop_event.is_set():
                if now >= next_tick:
                    next_tick = now + tick
                    if now - last_rx > self.stale_after:
                        reason = f"no data for {now - last_rx:.1f}s (stale connection)"
                        break
                    if self._reconnect_request is not None:
                        break
                    if not self._ready and now - self._unready_since > self.auth_timeout:
                        reason = f"not authenticated within {self.auth_timeout:g}s"
                        break
                    with lock:
                        outputs = protocol.maintain(now)
                        if now >= next_heartbeat:
                            next_heartbeat = now + self.heartbeat_interval
                            outputs = list(outputs) + protocol.heartbeat(now)
                    if outputs:
                        handle(outputs)
                    if self.ping_interval and now >= next_ping:
                        next_ping = now + self.ping_interval
                        conn.ping()
                if dispatcher.defer and not conn.buffered:
                    dispatcher.flush()  # about to wait for the socket: deliver the batch
                frame = conn.recv(max(0.005, next_tick - now))
                now = _monotonic()
                if frame is None:
                    continue
                last_rx = now
                opcode, data = frame
                if opcode != FRAME_TEXT and opcode != FRAME_BINARY:
                    continue  # ping / pong: alive, nothing to decode
                self._messages += 1
                self._last_message_at = now
                if self._debug:
                    self._log.debug("recv %s", excerpt(data))
                try:
                    with lock:
                        outputs = protocol.on_frame(data, opcode == FRAME_BINARY, now)
                except Exception as exc:  # noqa: BLE001 - bad input must never kill the reader
                    self._bad_frame(data, exc)
                    continue
                if outputs:
                    dispatcher.batch(more_coming=conn.buffered)
                    handle(outputs)
        except Closed as closed:
            reason = closed.reason
        finally:
            dispatcher.flush()
            with lock:
                self._conn = None
                self._ready = False
                request, self._reconnect_request = self._reconnect_request, None
                protocol.on_close()
            self._connected_since = None
            conn.close(1000 if self._stop_event.is_set() else 1001)
        if request is not None:
            return request.reason, request.immediate
        return reason, False

    def _bad_frame(self, data: bytes, exc: Exception) -> None:
        self._malformed += 1
        if isinstance(exc, ProtocolError):
            error = exc
        else:
            error = ProtocolError(f"could not decode frame: {type(exc).__name__}: {exc}", excerpt(data))
            error.__cause__ = exc
        error.frame = self._redactor.redact(excerpt(data))
        self._log.warning("bad frame ignored (%s): %s", error, error.frame)
        self._dispatcher.put("error", error)

    # ================================================================ the REST thread
    def _run_rest(self) -> None:
        jobs = [_Periodic(interval, job, name, when_ready)
                for interval, job, name, when_ready in self._periodic_jobs()]
        now = _monotonic()
        for job in jobs:
            job.due = now + job.interval
        while not self._stop_event.is_set():
            now = _monotonic()
            wait = min((j.due for j in jobs), default=now + 1.0) - now
            try:
                one_off = self._rest_jobs.get(timeout=max(0.0, min(wait, 1.0)))
            except queue.Empty:
                one_off = None
            else:
                if one_off is None:
                    continue
                self._run_job(one_off, "reconcile")
            now = _monotonic()
            for job in jobs:
                if now >= job.due:
                    job.due = now + job.interval
                    if job.when_ready and not self._ready:
                        continue
                    self._run_job(job.job, job.name)

    def _run_job(self, job: Callable[[], Sequence[Output]], name: str) -> None:
        if self._stop_event.is_set():
            return
        try:
            outputs = job()
        except BrokerFeedsError as exc:
            self._report(exc)
            return
        except Exception as exc:  # noqa: BLE001
            self._log.error("%s failed: %r", name, exc, exc_info=exc)
            self._dispatcher.put("error", BrokerFeedsError(self._redactor.redact(f"{name} failed: {exc!r}")))
            return
        if outputs:
            self._handle(outputs)

    # ================================================================ internals
    _debug = False
    _unready_since = 0.0

    def _threads(self) -> List[threading.Thread]:
        return [t for t in (self._io_thread, self._rest_thread, self._dispatcher.thread) if t is not None]

    def _set_state(self, state: str, restart: bool = False) -> None:
        with self._state_cond:
            if self._state == "stopped" and not restart:
                return  # only start() leaves "stopped"
            if self._state != state:
                self._state = state
                self._state_cond.notify_all()


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
